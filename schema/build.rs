//! Generates the gRPC code from proto/loupe/v1 when the `grpc` feature is on (needs protoc,
//! Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("loupe_v1_descriptor.bin"))
        .compile_protos(&["proto/loupe/v1/features.proto"], &["proto"])?;
    Ok(())
}
