//! The semantic conformance kit (`cache_semantic::testing`) against the `qdrant-semantic`
//! backend, talking gRPC to the TEST-ONLY `qdrant-test-server` (Qdrant's engine qdrant-edge
//! 0.7.0 behind Qdrant's wire protocol; not a Qdrant server, see docs/backends/qdrant.md).

use std::sync::OnceLock;
use std::time::Duration;

use cache_semantic::qdrant::{QdrantBackend, QdrantConfig};
use qdrant_test_server::TestServer;

/// One server for every check. Each check runs on its own runtime, so the server gets a
/// runtime of its own on a thread that lives as long as the test binary.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            cache_core::testing::runtime().block_on(async move {
                let server = TestServer::start().await.expect("start the test server");
                tx.send(server.url()).expect("send the URL");
                std::future::pending::<()>().await;
                drop(server);
            });
        });
        rx.recv().expect("the test server started")
    })
}

async fn backend() -> QdrantBackend {
    // Every check shares one collection; checks use their own namespaces and scopes.
    let mut c = QdrantConfig::new(server_url(), "conformance");
    c.vector_size = Some(cache_semantic::testing::DIMS);
    c.timeout = Duration::from_secs(5);
    QdrantBackend::connect(c).await.expect("connect")
}

cache_semantic::semantic_conformance!(backend = backend());
