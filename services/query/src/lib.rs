//! loupe-query: the services over a loupe store and the model. The logic lives in plain-Rust
//! services (`features`, `internals`, `steering`, `monitoring`: proto messages in, proto messages out, no tonic types),
//! which tests and benchmarks call directly; `grpc_adapter` puts them on tonic.

#![recursion_limit = "256"]

pub mod access;
pub mod config;
mod convert;
pub mod error;
pub mod features;
pub mod group_commit;
pub mod grpc_adapter;
pub mod internals;
pub mod labels;
pub mod monitoring;
pub mod response_cache;
mod rpc;
pub mod server;
pub mod state;
pub mod steering;
pub mod workers;

pub use config::{Limits, PinWorkers, ServeSettings, ServerConfig};
pub use error::ServiceError;
pub use features::FeaturesService;
pub use internals::InternalsService;
pub use monitoring::MonitoringService;
pub use server::{serve, serve_state};
pub use steering::SteeringService;
