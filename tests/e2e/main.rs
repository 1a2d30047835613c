//! End-to-end scenarios across crates (one test binary, as lance's integration tests):
//! real stores, real servers on loopback ports, real gRPC clients. Shared fixtures are in
//! the `loupe_tests` library (`tests/src/lib.rs`). They need the default model and the demo
//! corpus: `scripts/setup.sh` fetches both (CI always runs it).

mod deployment;
mod faults;
mod labels;
mod limits;
mod monitor_service;
mod monitoring;
mod object_storage;
mod reflection;
mod request_fuzz;
mod security;
mod service;
mod soak;
mod steering;
