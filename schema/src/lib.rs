pub mod hook;
pub mod tables;

/// The gRPC API (package `loupe.v1`), generated from `proto/loupe/v1`.
#[cfg(feature = "grpc")]
pub mod proto {
    pub mod v1 {
        tonic::include_proto!("loupe.v1");

        /// Encoded descriptors of the API, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loupe_v1_descriptor");
    }
}
