//! A recent-rate estimate that costs O(1) memory and time per event: an
//! exponentially decaying count, so "deliveries per second, mostly over the
//! last ~10 s" needs no window of timestamps.

use std::time::Instant;

/// Time constant of the decay: events older than this weigh 1/e as much.
const TAU_SECS: f64 = 10.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct DecayingRate {
    /// Events per second as of `at`.
    rate: f64,
    at: Option<Instant>,
}

impl DecayingRate {
    fn decayed(&self, now: Instant) -> f64 {
        match self.at {
            Some(at) => self.rate * (-now.saturating_duration_since(at).as_secs_f64() / TAU_SECS).exp(),
            None => 0.0,
        }
    }

    pub fn record(&mut self, now: Instant) {
        self.rate = self.decayed(now) + 1.0 / TAU_SECS;
        self.at = Some(now);
    }

    /// Events per second, weighted toward the last `TAU_SECS`.
    pub fn per_second(&self, now: Instant) -> f64 {
        self.decayed(now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_steady_stream_converges_to_its_rate_and_fades_when_it_stops() {
        let t0 = Instant::now();
        let mut rate = DecayingRate::default();
        // 50 events per second for 60 s.
        for i in 0..3000 {
            rate.record(t0 + Duration::from_millis(20 * i));
        }
        let end = t0 + Duration::from_secs(60);
        assert!((rate.per_second(end) - 50.0).abs() < 2.0, "{}", rate.per_second(end));
        assert!(rate.per_second(end + Duration::from_secs(60)) < 0.2);
    }
}
