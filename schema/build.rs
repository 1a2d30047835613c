//! Generates the gRPC code from proto/loupe/v1 when the `grpc` feature is on (needs protoc,
//! Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["proto/loupe/v1/common.proto", "proto/loupe/v1/features.proto", "proto/loupe/v1/internals.proto", "proto/loupe/v1/steering.proto", "proto/loupe/v1/monitoring.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("loupe_v1_descriptor.bin"))
        // Requests that do not decode are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::proto::codec::Codec")
        // Written by hand, so that stored dashboards go out as their encoded bytes.
        .extern_path(".loupe.v1.GetFeatureResponse", "crate::proto::dashboard_reply::GetFeatureResponse")
        // Written by hand, so that cached search answers go out as their encoded bytes.
        .extern_path(".loupe.v1.SearchFeaturesResponse", "crate::proto::search_reply::SearchFeaturesResponse")
        // `--json` output of the CLI (and any other JSON view) comes from the messages.
        .type_attribute(".loupe.v1", "#[derive(serde::Serialize)]")
        .field_attribute(".loupe.v1.Dictionary.manifest_json", "#[serde(rename = \"manifest\", serialize_with = \"crate::proto::embedded_json\")]")
        .field_attribute(".loupe.v1.VectorInfo.provenance_json", "#[serde(rename = \"provenance\", serialize_with = \"crate::proto::embedded_json\")]")
        .field_attribute(".loupe.v1.Calibration.details_json", "#[serde(rename = \"details\", serialize_with = \"crate::proto::embedded_json\")]")
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
