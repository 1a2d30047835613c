pub mod hook;
pub mod tables;

/// The gRPC API (package `loupe.v1`), generated from `proto/loupe/v1`.
#[cfg(feature = "grpc")]
pub mod proto {
    pub mod codec;
    pub mod dashboard_reply;
    pub mod search_reply;

    pub mod v1 {
        tonic::include_proto!("loupe.v1");
        pub use super::dashboard_reply::GetFeatureResponse;
        pub use super::search_reply::SearchFeaturesResponse;

        /// Encoded descriptors of the API, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loupe_v1_descriptor");
    }

    /// Serializes a string field that holds JSON (a manifest) as that JSON, not as a quoted
    /// string, in the messages' serde output; text that is not JSON stays a string.
    pub fn embedded_json<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => serde::Serialize::serialize(&value, serializer),
            Err(_) => serializer.serialize_str(text),
        }
    }
}
