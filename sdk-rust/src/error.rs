use tonic::Code;

/// Why one item of a batch call was refused. The other items are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct ItemError {
    /// Same meaning as the gRPC status code of that name.
    pub code: Code,
    /// A sentence a person can act on.
    pub message: String,
}

impl ItemError {
    pub(crate) fn from_proto(e: fila_proto::v1::ItemError) -> Self {
        ItemError { code: Code::from_i32(e.code), message: e.message }
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect to the broker.
    #[error("cannot connect to the broker: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The broker refused the whole call.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The broker refused the single item of a single-item call.
    #[error(transparent)]
    Item(#[from] ItemError),
    /// The broker answered something this client does not understand.
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC code of the failure, if the broker answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            Error::Item(e) => Some(e.code),
            _ => None,
        }
    }
}
