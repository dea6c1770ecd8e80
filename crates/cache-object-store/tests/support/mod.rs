//! Backends against the shared emulators of `cargo xtask services up` (moto, fake-gcs-server
//! behind the test-only XML-upload adapter, Azurite); the test fails, naming the emulator and
//! how to start it, when one is not running (the tests that need one are `#[ignore]`d).

#![allow(dead_code)]

use std::time::Duration;

use cache_core::params::Params;
use cache_core::testing::service_unavailable;
use cache_object_store::{AzureConfig, GcsConfig, ObjectStoreBackend, S3Config};
use objstore_test_support as ts;
use serde_json::{Value, json};

/// Prefix of every object the tests write (they also use random namespaces).
pub(crate) const PREFIX: &str = "llm-cache-tests";

pub(crate) fn params(v: Value) -> Params {
    Params::new(v.as_object().expect("an object").clone(), "cache_params")
}

/// Test settings: a failing request gives up fast instead of retrying for seconds.
fn quick(mut v: Value) -> Value {
    let m = v.as_object_mut().expect("an object");
    m.entry("object_store_max_retries").or_insert(json!(1));
    m.entry("object_store_retry_timeout").or_insert(json!(1));
    m.entry("object_store_request_timeout").or_insert(json!(5));
    v
}

pub(crate) fn s3_params(endpoint: &str, prefix: &str) -> Value {
    quick(json!({
        "s3_bucket_name": ts::BUCKET,
        "s3_endpoint_url": endpoint,
        "s3_region_name": "us-east-1",
        "s3_aws_access_key_id": "test",
        "s3_aws_secret_access_key": "test",
        "s3_path": prefix,
    }))
}

pub(crate) fn gcs_params(base_url: &str, prefix: &str) -> Value {
    quick(json!({
        "gcs_bucket_name": ts::BUCKET,
        "gcs_path_service_account": ts::gcs_service_account_file(base_url).to_str().unwrap(),
        "gcs_path": prefix,
    }))
}

pub(crate) fn azure_params(endpoint: &str, container: &str, prefix: &str) -> Value {
    quick(json!({
        "azure_account_url": cache_object_store::emulator_account_url(endpoint),
        "azure_blob_container": container,
        "azure_blob_path": prefix,
    }))
}

pub(crate) async fn s3_with_prefix(prefix: &str) -> Option<ObjectStoreBackend> {
    let endpoint = ts::s3_endpoint();
    if let Err(why) = ts::reachable(&endpoint) {
        return service_unavailable("moto (S3 emulator)", &why);
    }
    Some(
        S3Config::from_params(&params(s3_params(&endpoint, prefix)))
            .expect("S3 config")
            .connect()
            .expect("S3 backend"),
    )
}

pub(crate) async fn s3() -> Option<ObjectStoreBackend> {
    s3_with_prefix(PREFIX).await
}

/// The GCS adapter in front of the shared fake-gcs-server.
pub(crate) fn gcs_adapter() -> Option<&'static ts::GcsXmlUploadAdapter> {
    let endpoint = ts::gcs_endpoint();
    if let Err(why) = ts::reachable(&endpoint) {
        return service_unavailable("fake-gcs-server (GCS emulator)", &why);
    }
    Some(ts::GcsXmlUploadAdapter::shared(&endpoint))
}

pub(crate) async fn gcs_with_prefix(prefix: &str) -> Option<ObjectStoreBackend> {
    let adapter = gcs_adapter()?;
    Some(
        GcsConfig::from_params(&params(gcs_params(&adapter.url(), prefix)))
            .expect("GCS config")
            .connect()
            .expect("GCS backend"),
    )
}

pub(crate) async fn gcs() -> Option<ObjectStoreBackend> {
    gcs_with_prefix(PREFIX).await
}

/// A GCS backend reading fake-gcs-server directly (no adapter): reads need none.
pub(crate) async fn gcs_direct(prefix: &str) -> Option<ObjectStoreBackend> {
    let endpoint = ts::gcs_endpoint();
    if let Err(why) = ts::reachable(&endpoint) {
        return service_unavailable("fake-gcs-server (GCS emulator)", &why);
    }
    Some(
        GcsConfig::from_params(&params(gcs_params(&endpoint, prefix)))
            .expect("GCS config")
            .connect()
            .expect("GCS backend"),
    )
}

pub(crate) async fn azure_in(container: &str, prefix: &str) -> Option<ObjectStoreBackend> {
    let endpoint = ts::azurite_endpoint();
    if let Err(why) = ts::reachable(&endpoint) {
        return service_unavailable("Azurite (Azure Blob emulator)", &why);
    }
    Some(
        AzureConfig::from_params(&params(azure_params(&endpoint, container, prefix)))
            .expect("Azure config")
            .connect()
            .await
            .expect("Azure backend"),
    )
}

pub(crate) async fn azure() -> Option<ObjectStoreBackend> {
    azure_in(ts::BUCKET, PREFIX).await
}

/// A prefix unique to this process and call.
pub(crate) fn unique_prefix(what: &str) -> String {
    cache_core::testing::unique_namespace(what)
}

/// Waits until `cond` holds (polling), or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
