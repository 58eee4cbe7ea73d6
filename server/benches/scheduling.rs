//! Micro-benchmarks of the two per-delivery scheduling decisions: a DRR pick
//! and a token-bucket check, at 10 and at 100,000 keys.
//!
//!     cargo bench --profile dev -p fila-server --bench scheduling

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fila_server::broker::drr::{Credit, Drr};
use fila_server::broker::throttle::Throttles;
use fila_server::domain::ThrottleLimit;

const KEY_COUNTS: [usize; 2] = [10, 100_000];

/// One delivery's DRR work: find the key whose turn it is, look up its
/// state, start its turn if needed, charge it (keys stay backlogged).
fn drr_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("drr_pick");
    for &n in &KEY_COUNTS {
        let mut drr = Drr::new(1);
        let mut credits: HashMap<Arc<str>, (Credit, u32)> = HashMap::new();
        for i in 0..n {
            let key: Arc<str> = Arc::from(format!("tenant-{i}"));
            credits.insert(Arc::clone(&key), (Credit::default(), (i % 5 + 1) as u32));
            drr.join(key);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let key = drr.front().expect("backlogged").clone();
                let (credit, weight) = credits.get_mut(&key).expect("state");
                drr.start_turn(credit, *weight);
                drr.charge_front(credit, true);
                black_box(key)
            })
        });
    }
    group.finish();
}

/// One delivery's throttle work: check a message's key and take a token.
/// Buckets are large and fast, so every decision passes and the cost
/// measured is lookup, refill and take.
fn token_bucket_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("token_bucket_decision");
    for &n in &KEY_COUNTS {
        let now = Instant::now();
        let mut throttles = Throttles::default();
        let keys: Vec<[Arc<str>; 1]> = (0..n).map(|i| [Arc::from(format!("provider:{i}"))]).collect();
        for [key] in &keys {
            throttles.set(key, ThrottleLimit::new(1e9, 1e9).unwrap(), now);
        }
        let mut i = 0;
        let mut t = now;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % n;
                t += Duration::from_nanos(100);
                let decision = throttles.check(&keys[i], t);
                if decision.is_ok() {
                    throttles.take(&keys[i]);
                }
                black_box(decision)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, drr_pick, token_bucket_decision);
criterion_main!(benches);
