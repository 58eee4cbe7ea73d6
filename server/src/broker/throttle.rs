//! Token buckets per throttle key, shared by every queue of the broker.
//!
//! A message may be delivered only when every one of its throttle keys has a
//! token; delivering takes one from each. Keys without a configured limit are
//! unlimited and cost nothing. Buckets refill lazily from the clock when they
//! are looked at, so idle keys cost no work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::ThrottleLimit;
use crate::fast_map::FastMap;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: ThrottleLimit,
    tokens: f64,
    refilled_at: Instant,
    /// Times a delivery was held back because this bucket was empty.
    blocked: u64,
    /// Deliveries that took a token.
    passed: u64,
}

impl TokenBucket {
    /// A new bucket starts full.
    pub fn new(limit: ThrottleLimit, now: Instant) -> Self {
        TokenBucket { limit, tokens: limit.burst, refilled_at: now, blocked: 0, passed: 0 }
    }

    pub fn limit(&self) -> ThrottleLimit {
        self.limit
    }

    pub fn blocked(&self) -> u64 {
        self.blocked
    }

    pub fn passed(&self) -> u64 {
        self.passed
    }

    /// Changes the limit, keeping the tokens (capped at the new burst).
    pub fn set_limit(&mut self, limit: ThrottleLimit, now: Instant) {
        self.refill(now);
        self.limit = limit;
        self.tokens = self.tokens.min(limit.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.rate_per_second).min(self.limit.burst);
        self.refilled_at = now;
    }

    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// How long until a token is available (zero if one is), without
    /// counting a block; for explaining, not for deciding.
    pub fn time_to_token(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.limit.rate_per_second)
    }

    /// `Ok` if a token is available now, else how long until one is.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        let wait = self.time_to_token(now);
        if wait.is_zero() {
            return Ok(());
        }
        self.blocked += 1;
        // Rounded up so the wake-up never comes before the token.
        Err(wait + Duration::from_micros(1))
    }

    /// Takes one token; call only after a successful [`TokenBucket::check`].
    pub fn take(&mut self) {
        self.tokens -= 1.0;
        self.passed += 1;
    }

    /// Returns the token of a delivery that was never sent (capped at the
    /// burst). `passed` stays as it is: it is exported as a counter.
    pub fn give_back(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.limit.burst);
    }
}

/// All configured buckets.
#[derive(Debug, Default)]
pub struct Throttles {
    buckets: FastMap<Arc<str>, TokenBucket>,
}

impl Throttles {
    pub fn set(&mut self, key: &str, limit: ThrottleLimit, now: Instant) {
        match self.buckets.get_mut(key) {
            Some(bucket) => bucket.set_limit(limit, now),
            None => {
                self.buckets.insert(Arc::from(key), TokenBucket::new(limit, now));
            }
        }
    }

    /// Removes a limit; returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        self.buckets.remove(key).is_some()
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut TokenBucket> {
        self.buckets.get_mut(key)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut TokenBucket)> {
        self.buckets.iter_mut()
    }

    /// `Ok` if every key has a token now; otherwise the longest wait among
    /// the empty buckets (all of them must refill before delivery).
    pub fn check(&mut self, keys: &[Arc<str>], now: Instant) -> Result<(), Duration> {
        let mut wait = None;
        for key in keys {
            if let Some(bucket) = self.buckets.get_mut(key) {
                if let Err(w) = bucket.check(now) {
                    wait = Some(wait.map_or(w, |v: Duration| v.max(w)));
                }
            }
        }
        wait.map_or(Ok(()), Err)
    }

    /// Takes one token from each key; call after a successful check.
    pub fn take(&mut self, keys: &[Arc<str>]) {
        for key in keys {
            if let Some(bucket) = self.buckets.get_mut(key) {
                bucket.take();
            }
        }
    }

    /// Gives back the tokens a delivery took from each of its keys that is
    /// still limited; returns whether any bucket got one.
    pub fn give_back(&mut self, keys: &[Arc<str>], now: Instant) -> bool {
        let mut any = false;
        for key in keys {
            if let Some(bucket) = self.buckets.get_mut(key) {
                bucket.give_back(now);
                any = true;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: f64, burst: f64) -> ThrottleLimit {
        ThrottleLimit::new(rate, burst).unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(10.0, 3.0), t0);
        for _ in 0..3 {
            assert!(b.check(t0).is_ok());
            b.take();
        }
        let wait = b.check(t0).unwrap_err();
        assert!(wait >= Duration::from_millis(100) && wait < Duration::from_millis(101), "{wait:?}");
        assert_eq!(b.blocked(), 1);
        assert!(b.check(t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn over_ten_seconds_a_key_delivers_rate_times_ten_plus_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(7.5, 4.0), t0);
        let mut delivered = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            match b.check(now) {
                Ok(()) => {
                    b.take();
                    delivered += 1;
                }
                Err(wait) => now += wait,
            }
        }
        assert!((75..=79).contains(&delivered), "{delivered}");
    }

    #[test]
    fn a_message_needs_a_token_from_every_key() {
        let t0 = Instant::now();
        let mut t = Throttles::default();
        t.set("provider", limit(1.0, 1.0), t0);
        t.set("tenant", limit(2.0, 2.0), t0);
        let both: Vec<Arc<str>> = vec!["provider".into(), "tenant".into(), "unlimited".into()];
        assert!(t.check(&both, t0).is_ok());
        t.take(&both);
        let wait = t.check(&both, t0).unwrap_err();
        assert!(wait >= Duration::from_secs(1), "waits for the slowest bucket: {wait:?}");
        assert!(t.check(&["tenant".into()], t0).is_ok(), "the other bucket still has a token");
        assert!(t.check(&["unlimited".into()], t0).is_ok());
    }

    #[test]
    fn changing_a_limit_keeps_tokens_within_the_new_burst() {
        let t0 = Instant::now();
        let mut t = Throttles::default();
        t.set("k", limit(1.0, 10.0), t0);
        t.set("k", limit(1.0, 2.0), t0);
        assert_eq!(t.get_mut("k").unwrap().tokens(t0), 2.0);
        assert!(t.remove("k"));
        assert!(!t.remove("k"));
    }

    #[test]
    fn a_token_given_back_can_be_taken_again_but_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut t = Throttles::default();
        t.set("k", limit(0.001, 2.0), t0);
        let keys: Vec<Arc<str>> = vec!["k".into(), "unlimited".into()];
        t.take(&keys);
        t.take(&keys);
        assert!(t.check(&keys, t0).is_err());
        assert!(t.give_back(&keys, t0));
        assert!(t.check(&keys, t0).is_ok());
        t.give_back(&keys, t0);
        t.give_back(&keys, t0);
        assert_eq!(t.get_mut("k").unwrap().tokens(t0), 2.0);
        assert_eq!(t.get_mut("k").unwrap().passed(), 2, "passes stay a counter");
        assert!(!t.give_back(&["unlimited".into()], t0), "no limit, nothing to give back");
    }
}
