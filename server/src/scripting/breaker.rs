//! The circuit breaker and counters of one queue's hook.
//!
//! After `threshold` consecutive failed calls (error, timeout, memory or an
//! invalid return) the breaker opens: the hook is not called for
//! `cooldown`, and callers get `BreakerOpen` and apply their defaults. The
//! first call after the cool-down is a trial (half-open): success closes the
//! breaker, failure opens it for another cool-down. Time is passed in, so the
//! logic is tested without sleeping.

use std::time::{Duration, Instant};

/// Whether a hook is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the cool-down has passed.
    Open,
    /// The cool-down has passed: the next call is a trial, which closes the
    /// breaker if it succeeds and reopens it if it fails.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Counters of one queue's hook, for metrics. All count since the script
/// was compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookStats {
    /// Calls of the hook (calls skipped by an open breaker are not counted).
    pub calls: u64,
    /// Calls that raised a Lua error.
    pub errors: u64,
    /// Calls that returned an invalid decision.
    pub bad_returns: u64,
    /// Calls stopped for exceeding the time budget.
    pub timeouts: u64,
    /// Calls stopped for exceeding the memory limit.
    pub memory_errors: u64,
    /// Calls skipped because the breaker was open.
    pub skipped: u64,
    /// Failures in a row since the last success.
    pub consecutive_failures: u32,
    pub breaker: BreakerState,
}

/// How a call ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Success,
    Error,
    BadReturn,
    Timeout,
    Memory,
}

#[derive(Debug, Clone)]
pub(super) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: BreakerState,
    open_until: Option<Instant>,
    stats: HookStats,
}

impl Breaker {
    pub(super) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: BreakerState::Closed,
            open_until: None,
            stats: HookStats {
                calls: 0,
                errors: 0,
                bad_returns: 0,
                timeouts: 0,
                memory_errors: 0,
                skipped: 0,
                consecutive_failures: 0,
                breaker: BreakerState::Closed,
            },
        }
    }

    /// Whether the hook may be called now (`now` is called only if the
    /// breaker is open). Moves an open breaker whose cool-down has passed to
    /// half-open; counts a skipped call otherwise.
    pub(super) fn admit(&mut self, now: impl FnOnce() -> Instant) -> bool {
        if self.state == BreakerState::Open {
            match self.open_until {
                Some(until) if now() < until => {
                    self.stats.skipped += 1;
                    return false;
                }
                _ => self.set_state(BreakerState::HalfOpen),
            }
        }
        true
    }

    /// Records the outcome of an admitted call (`now` is called only for a
    /// failure).
    pub(super) fn record(&mut self, outcome: Outcome, now: impl FnOnce() -> Instant) {
        self.stats.calls += 1;
        match outcome {
            Outcome::Success => {
                self.stats.consecutive_failures = 0;
                self.open_until = None;
                self.set_state(BreakerState::Closed);
                return;
            }
            Outcome::Error => self.stats.errors += 1,
            Outcome::BadReturn => self.stats.bad_returns += 1,
            Outcome::Timeout => self.stats.timeouts += 1,
            Outcome::Memory => self.stats.memory_errors += 1,
        }
        self.stats.consecutive_failures = self.stats.consecutive_failures.saturating_add(1);
        if self.state == BreakerState::HalfOpen || self.stats.consecutive_failures >= self.threshold {
            self.open_until = Some(now() + self.cooldown);
            self.set_state(BreakerState::Open);
        }
    }

    /// The counters, and the breaker's state as of `now`: an open breaker
    /// whose cool-down has passed shows as half-open (its next call is the
    /// trial).
    pub(super) fn stats(&self, now: Instant) -> HookStats {
        let mut stats = self.stats;
        if self.state == BreakerState::Open && self.open_until.is_some_and(|until| now >= until) {
            stats.breaker = BreakerState::HalfOpen;
        }
        stats
    }

    fn set_state(&mut self, state: BreakerState) {
        self.state = state;
        self.stats.breaker = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOLDOWN);
        for outcome in [Outcome::Error, Outcome::Timeout] {
            assert!(b.admit(|| t0));
            b.record(outcome, || t0);
            assert_eq!(b.stats(t0).breaker, BreakerState::Closed);
        }
        assert!(b.admit(|| t0));
        b.record(Outcome::Memory, || t0);
        let stats = b.stats(t0);
        assert_eq!(stats.breaker, BreakerState::Open);
        assert_eq!((stats.calls, stats.errors, stats.timeouts, stats.memory_errors), (3, 1, 1, 1));
        assert!(!b.admit(|| t0 + COOLDOWN - Duration::from_millis(1)));
        assert_eq!(b.stats(t0).skipped, 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOLDOWN);
        for outcome in [Outcome::Error, Outcome::BadReturn, Outcome::Success, Outcome::Error, Outcome::Error] {
            assert!(b.admit(|| t0));
            b.record(outcome, || t0);
        }
        assert_eq!(b.stats(t0).breaker, BreakerState::Closed);
        assert_eq!(b.stats(t0).consecutive_failures, 2);
    }

    #[test]
    fn half_open_after_cooldown_one_trial_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOLDOWN);
        for _ in 0..3 {
            b.admit(|| t0);
            b.record(Outcome::Error, || t0);
        }
        let t1 = t0 + COOLDOWN;
        assert_eq!(b.stats(t1 - Duration::from_millis(1)).breaker, BreakerState::Open);
        // Once the cool-down is over the breaker shows half-open: the next
        // call is the trial.
        assert_eq!(b.stats(t1).breaker, BreakerState::HalfOpen);
        // Trial fails: open for another full cool-down from the trial.
        assert!(b.admit(|| t1));
        b.record(Outcome::Error, || t1);
        assert_eq!(b.stats(t1).breaker, BreakerState::Open);
        assert!(!b.admit(|| t1 + COOLDOWN / 2));
        // Trial succeeds: closed.
        let t2 = t1 + COOLDOWN;
        assert_eq!(b.stats(t2).breaker, BreakerState::HalfOpen);
        assert!(b.admit(|| t2));
        b.record(Outcome::Success, || t2);
        assert_eq!(b.stats(t2).breaker, BreakerState::Closed);
        assert_eq!(b.stats(t2).consecutive_failures, 0);
        assert!(b.admit(|| t2));
    }
}
