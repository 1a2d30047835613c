//! Server reflection answers in both protocol versions: v1 (grpcurl) and v1alpha (Python's
//! grpcio-reflection, several GUI clients), listing the services and serving the split
//! descriptors with their imports.

use loupe_query::Limits;
use loupe_tests::{channel, private_store, start_server};

/// Lists the services, fetches the file declaring `loupe.v1.Features` and the shared file it
/// imports, through one reflection version's generated client.
macro_rules! reflect {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new($channel);
        let requests = vec![
            ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) },
            ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::FileContainingSymbol("loupe.v1.Features".into())) },
            ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::FileByFilename("loupe/v1/common.proto".into())) },
        ];
        let mut answers = client.server_reflection_info(tokio_stream::iter(requests)).await.expect("reflection answers").into_inner();
        let mut services = Vec::new();
        let mut files = Vec::new();
        while let Some(answer) = answers.message().await.expect("a reflection response") {
            match answer.message_response.expect("a response body") {
                MessageResponse::ListServicesResponse(list) => services.extend(list.service.into_iter().map(|s| s.name)),
                MessageResponse::FileDescriptorResponse(file) => files.extend(file.file_descriptor_proto),
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
        (services, files)
    }};
}

fn mentions(files: &[Vec<u8>], name: &str) -> bool {
    files.iter().any(|f| f.windows(name.len()).any(|w| w == name.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let server = start_server(&store, Limits::default(), false).await;
    let channel = channel(&server.addr).await;
    let (v1_services, v1_files) = reflect!(v1, channel.clone());
    let (alpha_services, alpha_files) = reflect!(v1alpha, channel);
    for services in [&v1_services, &alpha_services] {
        for name in ["loupe.v1.Features", "loupe.v1.Internals", "grpc.health.v1.Health"] {
            assert!(services.iter().any(|s| s == name), "{name} missing from {services:?}");
        }
    }
    for files in [&v1_files, &alpha_files] {
        // The file of the service and the shared messages it imports.
        assert!(mentions(files, "loupe/v1/features.proto") && mentions(files, "loupe/v1/common.proto"), "{} descriptors", files.len());
    }
}
