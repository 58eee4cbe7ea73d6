//! Errors of queue scripts (the Lua `on_enqueue` and `on_failure` hooks).
//!
//! Two families: a script that is *rejected when submitted* (it does not
//! compile, its top-level code fails, or it lacks its hook function) is the
//! submitter's input error; a script that *fails when called* (runtime error,
//! time or memory budget exceeded, invalid return value, or skipped because
//! its circuit breaker is open) is reported to the broker, which applies the
//! safe default for that message.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use super::error::ErrorKind;

/// Which hook of a queue a script implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptHook {
    /// Runs for every message enqueued; may set its fairness key, weight and
    /// throttle keys.
    OnEnqueue,
    /// Runs after a failed attempt (nack or expired lease); decides between a
    /// retry after a delay and the dead-letter queue.
    OnFailure,
}

impl ScriptHook {
    /// The hook's name, which is also the name of the global function the
    /// script must define.
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptHook::OnEnqueue => "on_enqueue",
            ScriptHook::OnFailure => "on_failure",
        }
    }
}

impl fmt::Display for ScriptHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A script that could not be loaded, or a call of it that did not produce a
/// decision.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ScriptError {
    /// The script does not compile (the message is Lua's and names the line,
    /// e.g. `on_enqueue:3: '=' expected near 'x'`), or its top-level code
    /// failed while it was loaded.
    #[error("the {hook} script was rejected: {message}")]
    Compile { hook: ScriptHook, message: String },
    /// The script loaded but defines no global function named after its hook.
    #[error("the {hook} script must define a global function named {hook}, e.g. `function {hook}(msg) ... end`")]
    MissingHook { hook: ScriptHook },
    /// The hook raised a Lua error.
    #[error("the {hook} script failed: {message}")]
    Runtime { hook: ScriptHook, message: String },
    /// The hook ran longer than its time budget and was stopped.
    #[error("the {hook} script ran longer than its limit of {limit:?} and was stopped")]
    Timeout { hook: ScriptHook, limit: Duration },
    /// The script's VM needed more memory than its limit.
    #[error("the {hook} script needed more than its memory limit of {limit} bytes and was stopped")]
    Memory { hook: ScriptHook, limit: usize },
    /// The hook returned something that is not a valid decision.
    #[error("the {hook} script returned an invalid value: {message}")]
    BadReturn { hook: ScriptHook, message: String },
    /// The hook failed repeatedly and is not called until its cool-down has
    /// passed; the caller applies the safe default.
    #[error(
        "the {hook} script is paused after repeated failures (circuit breaker open); defaults apply until it recovers"
    )]
    BreakerOpen { hook: ScriptHook },
}

impl ScriptError {
    /// Which hook the error is about.
    pub fn hook(&self) -> ScriptHook {
        match self {
            ScriptError::Compile { hook, .. }
            | ScriptError::MissingHook { hook }
            | ScriptError::Runtime { hook, .. }
            | ScriptError::Timeout { hook, .. }
            | ScriptError::Memory { hook, .. }
            | ScriptError::BadReturn { hook, .. }
            | ScriptError::BreakerOpen { hook } => *hook,
        }
    }

    /// Rejections at submission are the submitter's invalid input. Failures
    /// of a call are `FailedPrecondition`, not `Internal`: the broker works
    /// as designed, it is the script (or the configuration it reads) that
    /// must change before the same call can succeed, which is what that code
    /// tells a client (do not retry until the state is fixed). They reach a
    /// client only through the admin "try a script" call; on the message
    /// path the broker applies defaults instead of failing the request.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ScriptError::Compile { .. } | ScriptError::MissingHook { .. } => ErrorKind::InvalidArgument,
            ScriptError::Runtime { .. }
            | ScriptError::Timeout { .. }
            | ScriptError::Memory { .. }
            | ScriptError::BadReturn { .. }
            | ScriptError::BreakerOpen { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_errors_are_invalid_arguments_and_call_failures_preconditions() {
        let hook = ScriptHook::OnEnqueue;
        assert_eq!(ScriptError::Compile { hook, message: "x".into() }.kind(), ErrorKind::InvalidArgument);
        assert_eq!(ScriptError::MissingHook { hook }.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            ScriptError::Timeout { hook, limit: Duration::from_millis(5) }.kind(),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(ScriptError::BreakerOpen { hook }.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(ScriptError::Memory { hook, limit: 1 }.hook(), hook);
    }

    #[test]
    fn messages_name_the_hook() {
        let e = ScriptError::MissingHook { hook: ScriptHook::OnFailure };
        assert!(e.to_string().contains("function named on_failure"), "{e}");
    }
}
