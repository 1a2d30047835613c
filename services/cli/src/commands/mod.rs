pub mod access;
pub mod activations;
pub mod bench;
pub mod bench_index;
pub mod bench_monitor;
pub mod bench_serve;
pub mod bench_steer;
pub mod bench_store;
pub mod client;
pub mod cpu_steal;
pub mod dict;
pub mod eval_steer;
pub mod export;
pub mod generate;
pub mod index;
pub mod monitor;
pub mod probe;
pub mod score;
pub mod serve;
pub mod steer;
pub mod tokenize;
pub mod train;

/// A `--store` argument: a local folder or `s3://bucket/prefix` (S3 settings from the
/// `AWS_*` variables).
pub fn store_location(path: &std::path::Path) -> anyhow::Result<loupe_store::Location> {
    Ok(loupe_store::Location::from_arg(path, &Default::default())?)
}
