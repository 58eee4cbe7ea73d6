//! Broker vocabulary shared by storage, scheduler and transport: names,
//! messages, leases, limits and the errors they can produce. Nothing here
//! knows about gRPC or RocksDB.

pub mod error;
pub mod lane;
pub mod lease;
pub mod limits;
pub mod message;
pub mod queue;
pub mod record_view;
pub mod runtime_config;
pub mod script;
pub mod throttle;

pub use error::{
    BrokerError, ConfigError, ErrorKind, LeaseError, QueueError, StorageError, ThrottleError, ValidationError,
};
pub use lane::{Lane, ThrottleSet};
pub use lease::LeaseToken;
pub use limits::Limits;
pub use message::{MessageId, NewMessage, DEFAULT_FAIRNESS_KEY};
pub use queue::{QueueId, QueueName, QueueSettings, ScriptSources};
pub use script::{ScriptError, ScriptHook};
pub use throttle::ThrottleLimit;
