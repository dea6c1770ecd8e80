//! The real proxy serves hits from S3, GCS and Azure Blob (the local emulators of `cargo xtask
//! services up moto fake-gcs azurite`) with `cache_params` that use only LiteLLM's names.
//! GCS writes go through the test-only XML-upload adapter (docs/backends/object-stores.md).

use std::time::Duration;

use cache_core::testing::{service_unavailable, unique_namespace};
use llm_cache_tests::{FakeUpstream, Proxy, cache_status, config};
use objstore_test_support as ts;
use serde_json::{Value, json};

/// Fails the test, naming the emulator and how to start it, when it does not answer.
fn require(what: &str, url: &str) {
    if let Err(why) = ts::reachable(url) {
        let _: Option<()> = service_unavailable(what, &why);
    }
}

async fn chat(proxy: &Proxy, body: &Value) -> (u16, String, bytes::Bytes) {
    let r = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let cache_status = cache_status(&r);
    (status, cache_status, r.bytes().await.expect("body"))
}

/// A miss that is stored in the bucket, then the same request served from it.
async fn serves_hits(cache_params: &str) {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&upstream, cache_params, None)).await;
    let req =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "from a bucket"}]});
    let (status, cache_status, first) = chat(&proxy, &req).await;
    assert_eq!(status, 200);
    assert_eq!(cache_status, "llm-cache; fwd=miss; stored");
    // The write runs off the response path.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, cache_status, second) = chat(&proxy, &req).await;
    assert_eq!(status, 200);
    assert_eq!(
        cache_status, "llm-cache; hit",
        "served from the object store"
    );
    assert_eq!(upstream.chat_calls(), 1);
    assert_eq!(first, second, "byte for byte");
}

#[tokio::test]
#[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn s3_hits_with_litellm_names() {
    let endpoint = ts::s3_endpoint();
    require("moto (S3 emulator)", &endpoint);
    let ns = unique_namespace("proxy-s3");
    serves_hits(&format!(
        "{{type: s3, namespace: {ns}, ttl: 600, s3_bucket_name: {}, s3_region_name: us-east-1, \
         s3_endpoint_url: \"{endpoint}\", s3_aws_access_key_id: test, s3_aws_secret_access_key: test, \
         s3_path: proxy-tests}}",
        ts::BUCKET
    ))
    .await;
}

#[tokio::test]
#[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn gcs_hits_with_litellm_names() {
    let endpoint = ts::gcs_endpoint();
    require("fake-gcs-server (GCS emulator)", &endpoint);
    let adapter = ts::GcsXmlUploadAdapter::shared(&endpoint);
    let sa = ts::gcs_service_account_file(&adapter.url());
    let ns = unique_namespace("proxy-gcs");
    serves_hits(&format!(
        "{{type: gcs, namespace: {ns}, ttl: 600, gcs_bucket_name: {}, \
         gcs_path_service_account: \"{}\", gcs_path: proxy-tests}}",
        ts::BUCKET,
        sa.display()
    ))
    .await;
}

#[tokio::test]
#[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn azure_blob_hits_with_litellm_names() {
    let endpoint = ts::azurite_endpoint();
    require("Azurite (Azure Blob emulator)", &endpoint);
    let ns = unique_namespace("proxy-azure");
    serves_hits(&format!(
        "{{type: azure-blob, namespace: {ns}, ttl: 600, \
         azure_account_url: \"{}/devstoreaccount1\", azure_blob_container: {}}}",
        endpoint.trim_end_matches('/'),
        ts::BUCKET
    ))
    .await;
}
