//! loupe-query: the tonic gRPC service over a loupe store and the model.

pub mod config;
mod convert;
pub mod error;
mod features;
mod internals;
pub mod labels;
mod rpc;
pub mod server;
pub mod state;
mod workers;

pub use config::{Limits, ServerConfig};
pub use error::ServiceError;
pub use server::{serve, serve_state};
