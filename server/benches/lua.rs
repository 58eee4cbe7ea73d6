//! Per-call cost of queue scripts: `on_enqueue` and `on_failure` with
//! realistic ~10-line scripts (read headers, decode a small JSON payload,
//! read runtime configuration, return a decision), and an empty
//! `on_enqueue` as the floor (building `msg`, calling, checking the result).
//! First a manual loop of 100,000 timed calls per script prints
//! p50/p90/p99/p99.9/max, which is what the target (p99 < 50 µs, aim
//! < 10 µs) is about; then Criterion reports mean and median.
//!
//!     cargo bench --profile dev -p fila-server --bench lua

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use fila_server::scripting::{FailureDecision, QueueScripts, ScriptHeaders, ScriptLimits, ScriptMessage};

/// Reads a header, decodes the JSON payload, reads runtime configuration
/// and returns a decision; fila-bench runs the same hook through the server.
const ON_ENQUEUE: &str = include_str!("on_enqueue_realistic.lua");

const ON_FAILURE: &str = r#"
function on_failure(msg, attempts, err)
  local max = tonumber(fila.get("max_attempts." .. msg.queue) or "5")
  if attempts >= max or err:find("permanent", 1, true) then
    return { action = "dlq" }
  end
  local base = tonumber(fila.get("retry_base_ms") or "100")
  local delay = math.min(base * 2 ^ (attempts - 1), 60000)
  if msg.headers["x-priority"] == "high" then delay = delay // 2 end
  return { action = "retry", delay_ms = math.floor(delay) }
end
"#;

const PAYLOAD: &[u8] =
    br#"{"order_id":"ord_8c1f2a","provider":"stripe","amount":4200,"currency":"EUR","items":[{"sku":"A1","qty":2}]}"#;

const EMPTY: &str = "function on_enqueue(msg) end";

struct Fixture {
    scripts: QueueScripts,
    headers: HashMap<String, String>,
    config: HashMap<String, String>,
}

fn fixture(on_enqueue: &str) -> Fixture {
    let scripts = QueueScripts::compile(Some(on_enqueue), Some(ON_FAILURE), ScriptLimits::default()).expect("compiles");
    let headers =
        [("x-tenant", "acme"), ("x-priority", "high"), ("content-type", "application/json"), ("trace", "4bf92f35")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let config = [("plan.acme", "pro"), ("max_attempts.orders", "8"), ("retry_base_ms", "250")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Fixture { scripts, headers, config }
}

impl Fixture {
    fn enqueue(&mut self) {
        let msg = ScriptMessage { queue: "orders", headers: ScriptHeaders::Map(&self.headers), payload: PAYLOAD };
        black_box(self.scripts.on_enqueue(&msg, &self.config).expect("decides"));
    }

    fn failure(&mut self, attempts: u32) {
        let msg = ScriptMessage { queue: "orders", headers: ScriptHeaders::Map(&self.headers), payload: PAYLOAD };
        let decision = self.scripts.on_failure(&msg, attempts, "upstream timed out", &self.config).expect("decides");
        black_box(decision);
    }
}

fn per_call(c: &mut Criterion) {
    let mut f = fixture(ON_ENQUEUE);
    c.bench_function("lua/on_enqueue", |b| b.iter(|| f.enqueue()));
    let mut attempts = 0;
    c.bench_function("lua/on_failure", |b| {
        b.iter(|| {
            attempts = attempts % 7 + 1;
            f.failure(attempts)
        })
    });
    let mut empty = fixture(EMPTY);
    c.bench_function("lua/empty_on_enqueue", |b| b.iter(|| empty.enqueue()));
}

/// Times `n` single calls and prints their percentiles.
fn percentiles(name: &str, n: usize, mut call: impl FnMut(usize)) {
    for i in 0..n / 10 {
        call(i); // warm-up
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        call(i);
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "{name}: {n} calls: p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, p99.9 {:.2?}, max {:.2?}",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        samples[n - 1]
    );
}

criterion_group!(benches, per_call);

fn main() {
    let mut f = fixture(ON_ENQUEUE);
    let msg = ScriptMessage { queue: "orders", headers: ScriptHeaders::Map(&f.headers), payload: PAYLOAD };
    let decision = f.scripts.on_enqueue(&msg, &f.config).expect("decides");
    assert_eq!(
        (decision.fairness_key.as_deref(), decision.weight, decision.throttle_keys.as_deref()),
        (Some("acme"), Some(5), Some(&["tenant:acme".to_owned(), "provider:stripe".to_owned()][..]))
    );
    let decision = f.scripts.on_failure(&msg, 1, "upstream timed out", &f.config).expect("decides");
    assert_eq!(decision, Some(FailureDecision::Retry { delay: Duration::from_millis(125) }));
    let decision = f.scripts.on_failure(&msg, 8, "upstream timed out", &f.config).expect("decides");
    assert_eq!(decision, Some(FailureDecision::DeadLetter));
    percentiles("on_enqueue", 100_000, |_| f.enqueue());
    percentiles("on_failure", 100_000, |i| f.failure((i % 7) as u32 + 1));
    let mut empty = fixture(EMPTY);
    percentiles("empty on_enqueue (floor)", 100_000, |_| empty.enqueue());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
