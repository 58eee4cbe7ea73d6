//! What happens to a message after a failed attempt (a nack or an expired
//! lease) when no script decides: retry with exponential backoff, and
//! dead-letter after the queue's maximum number of attempts, so a poison
//! message cannot loop forever.

use std::time::Duration;

/// Delay before the first retry; each further failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    Retry { delay: Duration },
    DeadLetter,
}

/// The default decision after `failures` failed attempts (this one
/// included). Queues without a dead-letter queue (dead-letter queues
/// themselves) always retry.
pub fn default_action(failures: u32, max_attempts: u32, has_dead_letter_queue: bool) -> FailureAction {
    if has_dead_letter_queue && failures >= max_attempts {
        return FailureAction::DeadLetter;
    }
    FailureAction::Retry { delay: backoff(failures) }
}

/// `BACKOFF_BASE × 2^(failures − 1)`, at most `BACKOFF_MAX`.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }

    #[test]
    fn dead_letters_after_max_attempts_when_there_is_somewhere_to_go() {
        assert_eq!(default_action(2, 3, true), FailureAction::Retry { delay: backoff(2) });
        assert_eq!(default_action(3, 3, true), FailureAction::DeadLetter);
        assert!(matches!(default_action(50, 3, false), FailureAction::Retry { .. }));
    }
}
