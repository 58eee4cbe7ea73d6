//! Queue scripts: Lua policies that run inside the broker.
//!
//! A queue may carry two scripts, each defining one global function:
//!
//! - `on_enqueue(msg)` runs for every message enqueued and returns `nil` (no
//!   change) or a table with any of `fairness_key` (string, 1 to 256 bytes),
//!   `weight` (integer, 1 to 1,000,000) and `throttle_keys` (array of at most
//!   16 strings of 1 to 256 bytes; `{}` means none). See [`EnqueueDecision`].
//! - `on_failure(msg, attempts, error)` runs after a failed attempt (a nack or
//!   an expired lease); `attempts` counts the failed attempts so far and
//!   `error` is the nack's text or the expiry reason. It returns
//!   `{ action = "retry", delay_ms = N }` (N from 0 to 7 days in ms),
//!   `{ action = "dlq" }`, or `nil` to leave the decision to the queue's
//!   default policy. See [`FailureDecision`].
//!
//! `msg` is a fresh table per call: `msg.queue` (string), `msg.headers`
//! (table of strings), `msg.payload_size` (bytes) and, only if the script
//! opts in by setting the global `wants_payload = true` in its top-level
//! code, `msg.payload` (string). Without the opt-in the payload is never
//! copied into Lua.
//!
//! Helpers, in the global table `fila`:
//! - `fila.get(key)`: a runtime configuration value (string) or `nil`, read
//!   through the [`ConfigSource`] passed with each call;
//! - `fila.json_decode(text)`: JSON to Lua values (see `json.rs`); invalid
//!   JSON raises a Lua error.
//!
//! # Sandbox
//!
//! Each script runs in a Lua 5.4 VM of its own (one per queue and hook), so
//! globals and library changes of one script are invisible to every other.
//! The VM has the `string` (without `string.dump`), `table`, `math` and
//! `utf8` libraries, `os.time` and `os.clock`, and the safe base functions;
//! it has no `io`, `os.execute`/`getenv`/`remove`..., `require`/`package`,
//! `load`/`loadstring`/`dofile`/`loadfile`, `debug`, `collectgarbage`,
//! `print` or `coroutine`: a script cannot read files, open sockets or run
//! programs. Only source text is accepted (no precompiled bytecode).
//! Globals a script sets persist between calls of that script (a cache, for
//! instance) but not across broker restarts or recompilation.
//!
//! # Limits
//!
//! Every call (and the top-level code when a script is loaded) has a time
//! budget and every VM a memory limit ([`ScriptLimits`]); a call over either
//! is stopped. The budget is checked every 1,000 VM instructions, which
//! never happens inside a library function written in C, so the library
//! functions that could loop in C for a length a script chooses are
//! replaced: `string.find`/`match`/`gmatch`/`gsub` by a port of Lua's
//! matcher that checks the budget as it goes (`patterns.rs`; Lua's
//! backtracks, and one pattern could run for minutes), `table.insert`,
//! `remove` and `move` by Lua versions, and `table.sort` of more than 4,096
//! elements compares in Lua. What remains in C does work linear in the
//! memory limit (a few milliseconds at 8 MiB). `pcall` cannot catch the
//! time-budget error, and `__gc` finalizers (which would run outside any
//! call) cannot be set.
//!
//! # Circuit breaker
//!
//! Per queue and hook: after [`ScriptLimits::breaker_failures`] consecutive
//! failures (error, timeout, memory or invalid return) the hook is skipped
//! for [`ScriptLimits::breaker_cooldown`] and calls answer
//! [`ScriptError::BreakerOpen`]; then one trial call decides (success closes
//! the breaker, failure reopens it). On any error the caller applies its
//! safe default for the message. [`QueueScripts::stats`] exposes counters.
//!
//! # Threads and cost
//!
//! [`QueueScripts`] stays on the thread that compiled it (the broker's
//! scheduler thread, which compiles scripts at recovery and when a queue's
//! scripts change): it is not `Send`, which lets mlua (built without its
//! `send` feature) skip the lock and the atomic reference counts it would
//! otherwise pay on every Lua operation, about a fifth of a call
//! (`benches/lua.rs`: p50 4.2 µs with `send`, 3.5 µs without). Calls take
//! `&mut self`: the owner serialises them. A script is compiled
//! once, in [`QueueScripts::compile`] (about 120 µs per script: a new VM,
//! the sandbox, the script's top-level code); a call only builds the `msg`
//! table, runs the already-loaded function and validates its result (a few
//! microseconds for a 10-line script; see `benches/lua.rs`). A script's VM
//! holds about 40 KiB when idle.

mod breaker;
mod convert;
mod json;
mod patterns;
mod sandbox;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use self::breaker::{Breaker, Outcome};
pub use self::breaker::{BreakerState, HookStats};
use self::sandbox::Vm;
pub use crate::domain::{ScriptError, ScriptHook};

/// Default time budget of one call: 5 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);
/// Default memory limit of one script's VM: 8 MiB (an empty sandboxed VM
/// uses about 30 KiB).
pub const DEFAULT_MEMORY_BYTES: usize = 8 * 1024 * 1024;
/// Default number of consecutive failures that opens a hook's breaker: 3.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;
/// Default time an open breaker skips its hook: 10 s.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(10);
/// Longest retry delay `on_failure` may ask for: 7 days.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Budgets of a script and its circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Longest a single call (or a script's top-level code) may run.
    /// Default [`DEFAULT_TIMEOUT`] (5 ms).
    pub timeout: Duration,
    /// Most memory one script's VM may hold, libraries and globals included.
    /// Default [`DEFAULT_MEMORY_BYTES`] (8 MiB).
    pub memory_bytes: usize,
    /// Consecutive failures that open the breaker (at least 1).
    /// Default [`DEFAULT_BREAKER_FAILURES`] (3).
    pub breaker_failures: u32,
    /// How long an open breaker skips the hook before a trial call.
    /// Default [`DEFAULT_BREAKER_COOLDOWN`] (10 s).
    pub breaker_cooldown: Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
        }
    }
}

/// Where `fila.get(key)` reads runtime configuration. Passed with each call
/// and borrowed only for its duration, so the broker can hand in the map it
/// keeps up to date without sharing or locking it.
pub trait ConfigSource {
    fn get(&self, key: &str) -> Option<&str>;
}

impl ConfigSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }
}

impl ConfigSource for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }
}

/// No configuration: `fila.get` always answers `nil`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConfig;

impl ConfigSource for NoConfig {
    fn get(&self, _key: &str) -> Option<&str> {
        None
    }
}

/// The message a hook sees. Borrowed, so calling a hook copies nothing the
/// caller already holds (the payload is copied into Lua only for scripts that
/// set `wants_payload = true`).
#[derive(Debug, Clone, Copy)]
pub struct ScriptMessage<'a> {
    pub queue: &'a str,
    pub headers: ScriptHeaders<'a>,
    pub payload: &'a [u8],
}

/// A message's headers, as the caller holds them: a map, or name-value pairs
/// (read in place from a stored record; of repeated names the last counts).
#[derive(Debug, Clone, Copy)]
pub enum ScriptHeaders<'a> {
    Map(&'a HashMap<String, String>),
    Pairs(&'a [(&'a str, &'a str)]),
}

/// What `on_enqueue` decided. `None` leaves the producer's value; the values
/// present are validated (ranges as for a producer's message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueDecision {
    pub fairness_key: Option<String>,
    pub weight: Option<u32>,
    /// `Some(vec![])` removes the producer's throttle keys.
    pub throttle_keys: Option<Vec<String>>,
}

/// What `on_failure` decided for a failed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureDecision {
    /// Make the message ready again after `delay` (at most [`MAX_RETRY_DELAY`]).
    Retry { delay: Duration },
    /// Move the message to the queue's dead-letter queue.
    DeadLetter,
}

/// A loaded hook: its VM and its breaker.
struct CompiledHook {
    vm: Vm,
    breaker: Breaker,
}

/// The compiled scripts of one queue.
pub struct QueueScripts {
    on_enqueue: Option<CompiledHook>,
    on_failure: Option<CompiledHook>,
}

impl std::fmt::Debug for QueueScripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueScripts")
            .field("on_enqueue", &self.on_enqueue.is_some())
            .field("on_failure", &self.on_failure.is_some())
            .finish()
    }
}

impl QueueScripts {
    /// Validates and loads a queue's scripts: each must compile, its
    /// top-level code must run within the limits, and it must define its
    /// hook function. Errors are [`ScriptError::Compile`] (with Lua's
    /// message, which names the line) or [`ScriptError::MissingHook`].
    pub fn compile(
        on_enqueue: Option<&str>,
        on_failure: Option<&str>,
        limits: ScriptLimits,
    ) -> Result<QueueScripts, ScriptError> {
        let load = |hook, source: Option<&str>| -> Result<Option<CompiledHook>, ScriptError> {
            source
                .map(|source| {
                    Ok(CompiledHook {
                        vm: Vm::load(hook, source, &limits)?,
                        breaker: Breaker::new(limits.breaker_failures, limits.breaker_cooldown),
                    })
                })
                .transpose()
        };
        Ok(QueueScripts {
            on_enqueue: load(ScriptHook::OnEnqueue, on_enqueue)?,
            on_failure: load(ScriptHook::OnFailure, on_failure)?,
        })
    }

    /// Whether the queue has a script for `hook`.
    pub fn has(&self, hook: ScriptHook) -> bool {
        self.hook(hook).is_some()
    }

    /// Whether the script for `hook` reads `msg.payload` (declared
    /// `wants_payload = true`); `false` without a script.
    pub fn wants_payload(&self, hook: ScriptHook) -> bool {
        self.hook(hook).is_some_and(|h| h.vm.wants_payload())
    }

    /// Counters and breaker state of `hook`; `None` without a script.
    pub fn stats(&self, hook: ScriptHook) -> Option<HookStats> {
        self.hook(hook).map(|h| h.breaker.stats(Instant::now()))
    }

    /// Runs `on_enqueue` for `msg`. Without an `on_enqueue` script the
    /// decision is empty (nothing changes). On any error the caller keeps
    /// the producer's values.
    pub fn on_enqueue(
        &mut self,
        msg: &ScriptMessage<'_>,
        config: &dyn ConfigSource,
    ) -> Result<EnqueueDecision, ScriptError> {
        let Some(hook) = self.on_enqueue.as_mut() else {
            return Ok(EnqueueDecision::default());
        };
        guarded(hook, ScriptHook::OnEnqueue, |vm| run_on_enqueue(vm, msg, config))
    }

    /// Runs `on_failure` after a failed attempt. `Ok(None)` (no script, or
    /// the script returned `nil`) means: apply the queue's default policy,
    /// as the caller also does on any error.
    pub fn on_failure(
        &mut self,
        msg: &ScriptMessage<'_>,
        attempts: u32,
        error: &str,
        config: &dyn ConfigSource,
    ) -> Result<Option<FailureDecision>, ScriptError> {
        let Some(hook) = self.on_failure.as_mut() else {
            return Ok(None);
        };
        guarded(hook, ScriptHook::OnFailure, |vm| run_on_failure(vm, msg, attempts, error, config))
    }

    fn hook(&self, hook: ScriptHook) -> Option<&CompiledHook> {
        match hook {
            ScriptHook::OnEnqueue => self.on_enqueue.as_ref(),
            ScriptHook::OnFailure => self.on_failure.as_ref(),
        }
    }
}

/// Tries `source`'s `on_enqueue` once against a sample message, without any
/// queue state or breaker (for the admin "try a script" call). Compile
/// errors and call failures are returned as for a real queue.
pub fn test_on_enqueue(
    source: &str,
    sample: &ScriptMessage<'_>,
    config: &dyn ConfigSource,
    limits: ScriptLimits,
) -> Result<EnqueueDecision, ScriptError> {
    let vm = Vm::load(ScriptHook::OnEnqueue, source, &limits)?;
    run_on_enqueue(&vm, sample, config)
}

/// Tries `source`'s `on_failure` once; see [`test_on_enqueue`]. `Ok(None)`:
/// the script returned `nil` (the default policy would apply).
pub fn test_on_failure(
    source: &str,
    sample: &ScriptMessage<'_>,
    attempts: u32,
    error: &str,
    config: &dyn ConfigSource,
    limits: ScriptLimits,
) -> Result<Option<FailureDecision>, ScriptError> {
    let vm = Vm::load(ScriptHook::OnFailure, source, &limits)?;
    run_on_failure(&vm, sample, attempts, error, config)
}

fn run_on_enqueue(vm: &Vm, msg: &ScriptMessage<'_>, config: &dyn ConfigSource) -> Result<EnqueueDecision, ScriptError> {
    vm.call(config, msg, None, convert::enqueue_decision)
}

fn run_on_failure(
    vm: &Vm,
    msg: &ScriptMessage<'_>,
    attempts: u32,
    error: &str,
    config: &dyn ConfigSource,
) -> Result<Option<FailureDecision>, ScriptError> {
    vm.call(config, msg, Some((attempts, error)), convert::failure_decision)
}

/// Applies the breaker around one call and counts its outcome.
fn guarded<R>(
    hook: &mut CompiledHook,
    name: ScriptHook,
    call: impl FnOnce(&Vm) -> Result<R, ScriptError>,
) -> Result<R, ScriptError> {
    // The breaker reads the clock only when it needs the time (an open
    // breaker, a failure), which most calls do not.
    if !hook.breaker.admit(Instant::now) {
        return Err(ScriptError::BreakerOpen { hook: name });
    }
    let result = call(&hook.vm);
    let outcome = match &result {
        Ok(_) => Outcome::Success,
        Err(ScriptError::Timeout { .. }) => Outcome::Timeout,
        Err(ScriptError::Memory { .. }) => Outcome::Memory,
        Err(ScriptError::BadReturn { .. }) => Outcome::BadReturn,
        Err(_) => Outcome::Error,
    };
    hook.breaker.record(outcome, Instant::now);
    result
}
