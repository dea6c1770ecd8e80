//! `type: s3`, `type: gcs`, `type: azure-blob` through the façade, configured with LiteLLM's
//! `cache_params` names only, against the shared emulators (`cargo xtask services up moto
//! fake-gcs azurite`). GCS writes go through the test-only XML-upload adapter of
//! `objstore-test-support` (fake-gcs-server has no XML upload; see docs/backends/object-stores.md).
#![cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]

use std::time::Duration;

use llm_cache::{CacheConfig, CacheControl, CallKind};
use objstore_test_support as ts;
use serde_json::{Value, json};

/// Fails the test, naming the emulator and how to start it, when it does not answer.
fn require(what: &str, service: &str, url: &str) {
    if let Err(why) = ts::reachable(url) {
        panic!(
            "{what} is not reachable ({why}): start it with `cargo xtask services up {service}` (or run `cargo xtask test`)"
        );
    }
}

fn namespace(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{what}-{}-{nanos:x}", std::process::id())
}

/// A miss that is stored, then a byte-identical hit from the store, then `clear`.
async fn miss_then_hit(yaml: &str, ns: &str) {
    let config = CacheConfig::from_yaml(yaml).expect("LiteLLM names only");
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    let settings = config.settings().unwrap();
    assert_eq!(
        settings.read_timeout,
        Duration::from_secs(1),
        "object stores get a 1 s read deadline"
    );
    let cache = config.build().await.expect("build");
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "object store?"}]});
    let fetch = |text: &'static str| {
        move || async move {
            Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": text}}]}))
        }
    };
    let first = cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), fetch("first"))
        .await
        .unwrap();
    assert!(!first.status.is_hit());
    cache.flush(Duration::from_secs(10)).await.unwrap();
    let second = cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), fetch("second"))
        .await
        .unwrap();
    assert!(second.status.is_hit(), "{:?}", second.status);
    assert_eq!(second.value, first.value);
    let report = cache.ping().await.expect("ping");
    assert!(format!("{report:?}").contains("writable"), "{report:?}");
    assert!(cache.clear(Some(ns)).await.unwrap() >= 1);
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn s3_with_litellm_names() {
    let endpoint = ts::s3_endpoint();
    require("moto (S3 emulator)", "moto", &endpoint);
    let ns = namespace("facade-s3");
    let yaml = format!(
        "type: s3\nnamespace: {ns}\nttl: 600\ns3_bucket_name: {}\ns3_region_name: us-east-1\n\
         s3_endpoint_url: {endpoint}\ns3_aws_access_key_id: test\ns3_aws_secret_access_key: test\n\
         s3_path: facade-tests/\ns3_use_ssl: false\ns3_verify: false\n",
        ts::BUCKET
    );
    miss_then_hit(&yaml, &ns).await;
}

#[cfg(feature = "gcs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn gcs_with_litellm_names() {
    let endpoint = ts::gcs_endpoint();
    require("fake-gcs-server (GCS emulator)", "fake-gcs", &endpoint);
    let adapter = ts::GcsXmlUploadAdapter::shared(&endpoint);
    let sa = ts::gcs_service_account_file(&adapter.url());
    let ns = namespace("facade-gcs");
    let yaml = format!(
        "type: gcs\nnamespace: {ns}\nttl: 600\ngcs_bucket_name: {}\ngcs_path_service_account: {}\ngcs_path: facade-tests\n",
        ts::BUCKET,
        sa.display()
    );
    miss_then_hit(&yaml, &ns).await;
}

/// LiteLLM's `GCS_BUCKET_NAME` / `GCS_PATH_SERVICE_ACCOUNT` fallbacks. Setting variables is
/// unsafe in edition 2024 (and unsafe code is forbidden), so the test re-runs itself in a child
/// process that has them; the child writes the service-account file the variable names.
#[cfg(feature = "gcs")]
#[test]
#[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn gcs_from_litellm_environment_variables() {
    let endpoint = ts::gcs_endpoint();
    require("fake-gcs-server (GCS emulator)", "fake-gcs", &endpoint);
    let Ok(sa_path) = std::env::var("GCS_PATH_SERVICE_ACCOUNT") else {
        let sa_path = std::env::temp_dir().join(format!(
            "llm-cache-test-gcs-env-{}.json",
            std::process::id()
        ));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            // The test is `#[ignore]`d: the child must ask for it.
            .args([
                "--exact",
                "gcs_from_litellm_environment_variables",
                "--include-ignored",
            ])
            .env("GCS_BUCKET_NAME", ts::BUCKET)
            .env("GCS_PATH_SERVICE_ACCOUNT", &sa_path)
            .status()
            .unwrap();
        let _ = std::fs::remove_file(&sa_path);
        assert!(status.success(), "child run failed");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let adapter = ts::GcsXmlUploadAdapter::shared(&endpoint);
        std::fs::copy(ts::gcs_service_account_file(&adapter.url()), &sa_path).unwrap();
        let ns = namespace("facade-gcs-env");
        // No gcs_* key at all: bucket and credentials come from the environment.
        miss_then_hit(&format!("type: gcs\nnamespace: {ns}\n"), &ns).await;
    });
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn azure_with_litellm_names() {
    let endpoint = ts::azurite_endpoint();
    require("Azurite (Azure Blob emulator)", "azurite", &endpoint);
    let ns = namespace("facade-azure");
    // LiteLLM's two names only: the emulator account's well-known key is the default
    // credential for `devstoreaccount1`.
    let yaml = format!(
        "type: azure-blob\nnamespace: {ns}\nttl: 600\nazure_account_url: {}\nazure_blob_container: {}\n",
        format_args!("{}/devstoreaccount1", endpoint.trim_end_matches('/')),
        ts::BUCKET
    );
    miss_then_hit(&yaml, &ns).await;
}

#[test]
fn object_store_types_are_available() {
    let types = llm_cache::available_types();
    for (feature, ty) in [("s3", "s3"), ("gcs", "gcs"), ("azure", "azure-blob")] {
        let on = match feature {
            "s3" => cfg!(feature = "s3"),
            "gcs" => cfg!(feature = "gcs"),
            _ => cfg!(feature = "azure"),
        };
        assert_eq!(types.contains(&ty), on, "{ty}");
    }
}
