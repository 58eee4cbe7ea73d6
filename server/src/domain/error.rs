//! Errors, typed per domain. Each one says which [`ErrorKind`] it is; the
//! transport maps kinds to wire codes in one place (`grpc::status`).

use thiserror::Error;

/// What kind of failure an error is, independent of any transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    ResourceExhausted,
    FailedPrecondition,
    Unavailable,
    Internal,
}

/// Input that is malformed or out of bounds; retrying it cannot succeed.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ValidationError {
    #[error("queue name must not be empty")]
    EmptyQueueName,
    #[error(
        "queue name '{name}' is invalid: use 1 to 128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
    )]
    BadQueueName { name: String },
    #[error("queue name '{name}' ends in '.dlq', which is reserved for dead-letter queues")]
    ReservedQueueName { name: String },
    #[error("payload is empty; a message needs at least one byte of payload")]
    EmptyPayload,
    #[error("payload is {size} bytes; the maximum is {max} bytes (server option --max-payload-bytes)")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("payload is {size} bytes; queue '{queue}' accepts at most {max} bytes (queue setting max_payload_bytes)")]
    PayloadTooLargeForQueue { queue: String, size: usize, max: u64 },
    #[error("headers take {size} bytes; the maximum is {max} bytes")]
    HeadersTooLarge { size: usize, max: usize },
    #[error("header names must not be empty")]
    EmptyHeaderName,
    #[error("fairness key is {len} bytes; the maximum is {max} bytes")]
    FairnessKeyTooLong { len: usize, max: usize },
    #[error("weight {weight} is out of range; use 1 to {max} (0 means 1)")]
    WeightOutOfRange { weight: u32, max: u32 },
    #[error("a message may carry at most {max} throttle keys; this one has {count}")]
    TooManyThrottleKeys { count: usize, max: usize },
    #[error("throttle keys must be 1 to {max} bytes long")]
    BadThrottleKey { max: usize },
    #[error("batch is empty; send at least one item")]
    EmptyBatch,
    #[error("batch has {size} items; the maximum is {max} (server option --max-batch)")]
    BatchTooLarge { size: usize, max: usize },
    #[error("{what} of {value} ms is out of range; use 1 to {max} ms (0 means the default)")]
    DurationOutOfRange { what: &'static str, value: u64, max: u64 },
    #[error("max_in_flight {value} is out of range; use 1 to {max} (0 means the default, {default})")]
    WindowOutOfRange { value: u32, max: u32, default: u32 },
    #[error("nack error text is {len} bytes; the maximum is {max} bytes")]
    NackErrorTooLong { len: usize, max: usize },
    #[error("page token '{token}' is invalid; pass the next_page_token of a previous response")]
    BadPageToken { token: String },
    #[error("page size {value} is out of range; use 1 to {max} (0 means the default)")]
    PageSizeOutOfRange { value: u32, max: u32 },
    #[error("throttle rate {rate} per second is out of range; use a number above 0 and at most {max}")]
    ThrottleRateOutOfRange { rate: f64, max: f64 },
    #[error("throttle burst {burst} is out of range; use 1 to {max} (0 means one second's worth of the rate)")]
    ThrottleBurstOutOfRange { burst: f64, max: f64 },
    #[error("quantum {value} is out of range; use 1 to {max} (0 means the default, 1)")]
    QuantumOutOfRange { value: u32, max: u32 },
    #[error("fairness key must be 1 to {max} bytes long")]
    BadFairnessKey { max: usize },
    #[error("max_attempts {value} is out of range; use 1 to {max} (0 means the default, 10)")]
    MaxAttemptsOutOfRange { value: u32, max: u32 },
    #[error("delay of {value} ms is out of range; the maximum is {max} ms")]
    DelayOutOfRange { value: u64, max: u64 },
    #[error("'{id}' is not a message id (a UUID such as 01890a5d-ac96-774b-bcce-b302099a8057)")]
    BadMessageId { id: String },
    #[error("say what to explain: a fairness_key or a message_id")]
    NothingToExplain,
    #[error("give the script to test: on_enqueue or on_failure")]
    NoScriptToTest,
    #[error("configuration keys must be 1 to {max} bytes long")]
    BadConfigKey { max: usize },
    #[error("configuration value is {size} bytes; the maximum is {max} bytes")]
    ConfigValueTooLarge { size: usize, max: usize },
}

/// Runtime configuration problems.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration key '{0}' is not set")]
    NotFound(String),
}

/// Throttle configuration problems.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ThrottleError {
    #[error("throttle key '{0}' has no rate set")]
    NotFound(String),
}

/// Queue existence problems.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue '{0}' does not exist")]
    NotFound(String),
    #[error("queue '{0}' already exists")]
    AlreadyExists(String),
    #[error("queue '{0}' was deleted")]
    Deleted(String),
}

/// Lease-token problems on Ack, Nack and ExtendLease.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("lease token '{0}' is malformed; pass the lease_token of a delivery unchanged")]
    MalformedToken(String),
    #[error("the lease of message {0} has ended (it expired, was nacked, or the message was delivered again); the message was not changed")]
    Ended(String),
    #[error("message {0} does not exist (it may have been acknowledged already, or its queue deleted)")]
    MessageNotFound(String),
}

/// Storage failures. The broker stops serving after one (see `broker`).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StorageError {
    #[error("storage failure: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Any error the broker reports to a caller.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum BrokerError {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Script(#[from] super::script::ScriptError),
    #[error("the broker is shutting down; retry against a running broker")]
    ShuttingDown,
    #[error("the broker stopped after a storage failure; restart it (it recovers from disk)")]
    Stopped,
}

impl BrokerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BrokerError::Validation(_) => ErrorKind::InvalidArgument,
            BrokerError::Queue(QueueError::NotFound(_) | QueueError::Deleted(_)) => ErrorKind::NotFound,
            BrokerError::Queue(QueueError::AlreadyExists(_)) => ErrorKind::AlreadyExists,
            BrokerError::Lease(LeaseError::MalformedToken(_)) => ErrorKind::InvalidArgument,
            BrokerError::Lease(LeaseError::Ended(_)) => ErrorKind::FailedPrecondition,
            BrokerError::Lease(LeaseError::MessageNotFound(_)) => ErrorKind::NotFound,
            BrokerError::Throttle(ThrottleError::NotFound(_)) => ErrorKind::NotFound,
            BrokerError::Config(ConfigError::NotFound(_)) => ErrorKind::NotFound,
            BrokerError::Storage(StorageError::Io(_)) => ErrorKind::Unavailable,
            BrokerError::Storage(StorageError::Corrupt(_)) => ErrorKind::Internal,
            BrokerError::Script(error) => error.kind(),
            BrokerError::ShuttingDown | BrokerError::Stopped => ErrorKind::Unavailable,
        }
    }
}
