//! Why a command failed, as one line for a person and a documented exit
//! status for scripts (see docs/cli.md).

use std::error::Error as StdError;
use std::fmt::Display;
use std::io;
use std::time::Duration;

use fila_sdk::Code;

/// Exit status: the broker refused the request (or answered unexpectedly).
pub const EXIT_REFUSED: u8 = 1;
/// Exit status: the command line is wrong, or an input file cannot be read.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the broker cannot be reached, went away, or is unavailable.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit status: interrupted with Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Refused(String),
    Usage(String),
    Unreachable(String),
    /// Ctrl-C: stop quietly.
    Interrupted,
    /// Standard output was closed (for example piped into `head`): stop quietly.
    OutputClosed,
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused(_) => EXIT_REFUSED,
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Unreachable(_) => EXIT_UNREACHABLE,
            Failure::Interrupted => EXIT_INTERRUPTED,
            Failure::OutputClosed => 0,
        }
    }

    /// The line to print after `fila: `, if any.
    pub fn message(&self) -> Option<&str> {
        match self {
            Failure::Refused(m) | Failure::Usage(m) | Failure::Unreachable(m) => Some(m),
            Failure::Interrupted | Failure::OutputClosed => None,
        }
    }

    /// Prefixes the message with what was being done, for failures whose
    /// message alone would not say it.
    pub fn context(self, context: impl Display) -> Self {
        match self {
            Failure::Refused(m) => Failure::Refused(format!("{context}: {m}")),
            other => other,
        }
    }

    /// Maps an SDK error to a failure; `addr` is the broker's address as
    /// given on the command line.
    pub fn from_sdk(error: fila_sdk::Error, addr: &str) -> Self {
        match error {
            fila_sdk::Error::Connect(e) => connect_failure(&e, addr),
            fila_sdk::Error::Status(status) => from_code(status.code(), status.message(), addr),
            fila_sdk::Error::Item(item) => from_code(item.code, &item.message, addr),
            fila_sdk::Error::Protocol(m) => {
                Failure::Refused(format!("unexpected answer from the broker at {addr}: {m}"))
            }
        }
    }

    pub fn connect_timeout(addr: &str, timeout: Duration) -> Self {
        Failure::Unreachable(format!(
            "cannot reach the broker at {addr}: no answer within {}",
            humantime::format_duration(timeout)
        ))
    }
}

/// An error writing standard output.
impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::OutputClosed
        } else {
            Failure::Refused(format!("cannot write the output: {e}"))
        }
    }
}

/// A gRPC status (of a whole call or of one item) in words. The broker's own
/// messages are written for people, so they are kept as they are.
pub fn from_code(code: Code, message: &str, addr: &str) -> Failure {
    let message = if message.is_empty() { code.description() } else { message };
    match code {
        Code::Unavailable => Failure::Unreachable(format!("the broker at {addr} is unavailable: {message}")),
        Code::DeadlineExceeded => Failure::Unreachable(format!("the broker at {addr} did not answer in time")),
        Code::Unknown if is_transport_failure(message) => {
            Failure::Unreachable(format!("lost the connection to the broker at {addr}: {message}"))
        }
        Code::Unimplemented => Failure::Refused(format!(
            "the broker at {addr} does not support this request (is it an older fila-server?): {message}"
        )),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            Failure::Refused(format!("the broker at {addr} failed: {message}"))
        }
        _ => Failure::Refused(message.to_owned()),
    }
}

/// tonic reports a connection that broke during a call as `UNKNOWN` with the
/// transport's words.
fn is_transport_failure(message: &str) -> bool {
    ["transport error", "h2 protocol error", "connection", "broken pipe"]
        .iter()
        .any(|needle| message.to_ascii_lowercase().contains(needle))
}

fn connect_failure(error: &(dyn StdError + 'static), addr: &str) -> Failure {
    if error.to_string() == "invalid URI" {
        return Failure::Usage(format!(
            "'{addr}' is not a valid broker address (expected HOST:PORT, for example 127.0.0.1:5555)"
        ));
    }
    let mut cause: &(dyn StdError + 'static) = error;
    loop {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::ConnectionRefused {
                return Failure::Unreachable(format!("cannot reach the broker at {addr} (is fila-server running?)"));
            }
        }
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    Failure::Unreachable(format!("cannot reach the broker at {addr}: {cause}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_messages_are_kept() {
        let f = from_code(Code::NotFound, "queue 'orders' does not exist", "h:1");
        assert_eq!(f, Failure::Refused("queue 'orders' does not exist".into()));
        assert_eq!(f.exit_code(), EXIT_REFUSED);
    }

    #[test]
    fn unavailable_and_lost_connections_are_unreachable() {
        let f = from_code(Code::Unavailable, "the broker is shutting down", "h:1");
        assert_eq!(f.message(), Some("the broker at h:1 is unavailable: the broker is shutting down"));
        assert_eq!(f.exit_code(), EXIT_UNREACHABLE);
        let f = from_code(Code::Unknown, "h2 protocol error: error reading a body from connection", "h:1");
        assert_eq!(f.exit_code(), EXIT_UNREACHABLE);
        let f = from_code(Code::Unknown, "script raised an error", "h:1");
        assert_eq!(f.exit_code(), EXIT_REFUSED);
    }

    #[test]
    fn empty_messages_get_the_code_description() {
        let f = from_code(Code::PermissionDenied, "", "h:1");
        assert_eq!(f.message(), Some(Code::PermissionDenied.description()));
    }

    #[test]
    fn context_only_prefixes_refusals() {
        let f = Failure::Refused("gone".into()).context("cannot ack message 1");
        assert_eq!(f.message(), Some("cannot ack message 1: gone"));
        let f = Failure::Unreachable("down".into()).context("cannot ack message 1");
        assert_eq!(f.message(), Some("down"));
    }

    #[test]
    fn connection_refused_is_found_in_the_cause_chain() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            connect_failure(&refused, "h:1").message(),
            Some("cannot reach the broker at h:1 (is fila-server running?)")
        );
        let other = Wrapper(io::Error::other("no route to host"));
        assert_eq!(connect_failure(&other, "h:1").message(), Some("cannot reach the broker at h:1: no route to host"));
    }

    #[test]
    fn broken_pipe_is_quiet() {
        let f = Failure::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!((f.exit_code(), f.message()), (0, None));
    }
}
