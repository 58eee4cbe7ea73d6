//! Thin gRPC adapters: decode requests, call the broker, encode answers.
//! All policy lives in `broker` and `domain`.

mod admin;
mod convert;
mod rpc_metrics;
mod service;
pub mod status;

pub use admin::AdminApi;
pub use rpc_metrics::RpcMetricsLayer;
pub use service::HotPathApi;
