//! The one place where broker errors become gRPC statuses and per-item
//! error codes.

use fila_proto::v1::{ErrorCode, ItemError};
use tonic::{Code, Status};

use crate::domain::{BrokerError, ErrorKind};

fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

fn item_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        ErrorKind::ResourceExhausted => ErrorCode::ResourceExhausted,
        ErrorKind::FailedPrecondition => ErrorCode::FailedPrecondition,
        ErrorKind::Unavailable => ErrorCode::Unavailable,
        ErrorKind::Internal => ErrorCode::Internal,
    }
}

/// A whole-call failure.
pub fn to_status(error: BrokerError) -> Status {
    Status::new(code(error.kind()), error.to_string())
}

/// A per-item failure inside a batch answer.
pub fn to_item_error(error: &BrokerError) -> ItemError {
    ItemError { code: item_code(error.kind()) as i32, message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LeaseError, QueueError};

    #[test]
    fn item_codes_equal_grpc_codes() {
        for error in [
            BrokerError::Queue(QueueError::NotFound("q".into())),
            BrokerError::Lease(LeaseError::Ended("m".into())),
            BrokerError::Lease(LeaseError::MalformedToken("t".into())),
            BrokerError::ShuttingDown,
        ] {
            assert_eq!(to_item_error(&error).code, to_status(error.clone()).code() as i32, "{error}");
        }
    }

    #[test]
    fn status_carries_the_readable_message() {
        let status = to_status(QueueError::NotFound("orders".into()).into());
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "queue 'orders' does not exist");
    }
}
