//! Throttle limits as operators set them.

use super::error::ValidationError;
use super::limits::MAX_THROTTLE_KEY_BYTES;

/// Highest accepted rate or burst: far above anything one broker delivers,
/// low enough that arithmetic on it stays exact.
pub const MAX_THROTTLE_RATE: f64 = 1e9;

/// A validated token-bucket limit for one throttle key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleLimit {
    /// Tokens added per second (fractional allowed).
    pub rate_per_second: f64,
    /// Most tokens the bucket holds: how many deliveries may go out at once
    /// after a quiet period.
    pub burst: f64,
}

impl ThrottleLimit {
    /// Validates a limit; `burst` 0 means the default, `max(1, rate)`
    /// (one second's worth).
    pub fn new(rate_per_second: f64, burst: f64) -> Result<Self, ValidationError> {
        if !(rate_per_second.is_finite() && rate_per_second > 0.0 && rate_per_second <= MAX_THROTTLE_RATE) {
            return Err(ValidationError::ThrottleRateOutOfRange { rate: rate_per_second, max: MAX_THROTTLE_RATE });
        }
        let burst = if burst == 0.0 { rate_per_second.max(1.0) } else { burst };
        if !(burst.is_finite() && (1.0..=MAX_THROTTLE_RATE).contains(&burst)) {
            return Err(ValidationError::ThrottleBurstOutOfRange { burst, max: MAX_THROTTLE_RATE });
        }
        Ok(ThrottleLimit { rate_per_second, burst })
    }
}

/// Validates a throttle key named by an operator.
pub fn parse_throttle_key(key: &str) -> Result<&str, ValidationError> {
    if key.is_empty() || key.len() > MAX_THROTTLE_KEY_BYTES {
        return Err(ValidationError::BadThrottleKey { max: MAX_THROTTLE_KEY_BYTES });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_defaults_to_one_second_of_rate_and_at_least_one() {
        assert_eq!(ThrottleLimit::new(50.0, 0.0).unwrap().burst, 50.0);
        assert_eq!(ThrottleLimit::new(0.2, 0.0).unwrap().burst, 1.0);
        assert_eq!(ThrottleLimit::new(0.2, 3.0).unwrap().burst, 3.0);
    }

    #[test]
    fn rejects_unusable_limits() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            assert!(ThrottleLimit::new(rate, 0.0).is_err(), "{rate}");
        }
        for burst in [0.5, -1.0, f64::NAN] {
            assert!(ThrottleLimit::new(1.0, burst).is_err(), "{burst}");
        }
        assert!(parse_throttle_key("").is_err());
        assert!(parse_throttle_key(&"k".repeat(MAX_THROTTLE_KEY_BYTES + 1)).is_err());
    }
}
