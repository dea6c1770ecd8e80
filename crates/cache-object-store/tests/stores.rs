//! Behaviour specific to the object-store backend, against each emulator: object layout and
//! content type, TTL metadata and the background delete of expired objects, one-to-one key
//! naming, `clear` scope, `ping`, error classification, per-input embedding caching (LiteLLM's
//! F16), and Azure container creation. The generic contract is in `conformance_*.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{Bytes, CacheBackend, CacheBuilder, CacheControl, CacheStatus, RequestContext};
use cache_object_store::{CONTENT_TYPE, EXPIRES_AT_METADATA, ObjectStoreBackend};
use object_store::path::Path;
use object_store::{Attribute, ObjectStoreExt};
use serde_json::{Value, json};
use support::eventually;

const TTL: Option<Duration> = Some(Duration::from_secs(60));

async fn object_layout_and_attributes(b: ObjectStoreBackend) {
    let ns = support::unique_prefix("layout");
    let key = format!("{ns}:sub:{}", "ab".repeat(32));
    b.set(&key, Bytes::from_static(b"{\"llmc\":1}"), TTL)
        .await
        .unwrap();
    let path = Path::from(format!("{}/{ns}/sub/{}", support::PREFIX, "ab".repeat(32)));
    assert_eq!(b.object_path(&key), path);
    let got = b
        .store()
        .get(&path)
        .await
        .expect("object at prefix/ns/sub/hash");
    assert_eq!(
        got.attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some(CONTENT_TYPE)
    );
    let exp: u64 = got
        .attributes
        .get(&Attribute::Metadata(EXPIRES_AT_METADATA.into()))
        .expect("expiry metadata")
        .as_ref()
        .parse()
        .unwrap();
    let now = cache_core::envelope::now_ms();
    assert!(exp > now + 55_000 && exp <= now + 60_000, "{exp} vs {now}");
    assert_eq!(
        got.bytes().await.unwrap(),
        Bytes::from_static(b"{\"llmc\":1}")
    );
    b.clear(Some(&ns)).await.unwrap();
}

async fn expired_objects_are_misses_and_deleted(b: ObjectStoreBackend) {
    let ns = support::unique_prefix("expiry");
    let key = format!("{ns}:k");
    b.set(
        &key,
        Bytes::from_static(b"v"),
        Some(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    assert!(
        b.get(&key).await.unwrap().is_some(),
        "present before expiry"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(b.get(&key).await.unwrap(), None, "expired: a miss");
    let path = b.object_path(&key);
    let store = b.store().clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let store = store.clone();
            let path = path.clone();
            async move {
                matches!(
                    store.head(&path).await,
                    Err(object_store::Error::NotFound { .. })
                )
            }
        })
        .await,
        "the expired object was not deleted in the background"
    );
}

async fn odd_keys_are_distinct_objects(b: ObjectStoreBackend) {
    let ns = support::unique_prefix("odd");
    let keys: Vec<String> = [
        "plain", "a/b", "a:b", "", "..", ".", "%empty", "%2F", "sp ace", "é✓", "x::y",
    ]
    .iter()
    .map(|k| format!("{ns}:{k}"))
    .collect();
    for (i, k) in keys.iter().enumerate() {
        b.set(k, Bytes::from(format!("v{i}")), TTL).await.unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            b.get(k).await.unwrap(),
            Some(Bytes::from(format!("v{i}"))),
            "{k:?}"
        );
    }
    // Keys outside the namespace that look alike.
    let outside = [ns.clone(), format!("{ns}x:a"), format!(":{ns}:a")];
    for k in &outside {
        b.set(k, Bytes::from_static(b"keep"), TTL).await.unwrap();
    }
    let n = b.clear(Some(&ns)).await.unwrap();
    assert_eq!(n, keys.len() as u64, "clear counts what it removed");
    for k in &keys {
        assert_eq!(b.get(k).await.unwrap(), None, "{k:?} must be cleared");
    }
    for k in &outside {
        assert!(b.get(k).await.unwrap().is_some(), "{k:?} must survive");
        b.delete(k).await.unwrap();
    }
}

async fn clear_all_stays_under_the_prefix(mine: ObjectStoreBackend, theirs: ObjectStoreBackend) {
    for k in ["a", "ns:b", "ns:sub:c"] {
        mine.set(k, Bytes::from_static(b"1"), TTL).await.unwrap();
        theirs.set(k, Bytes::from_static(b"2"), TTL).await.unwrap();
    }
    assert_eq!(mine.clear(None).await.unwrap(), 3);
    for k in ["a", "ns:b", "ns:sub:c"] {
        assert_eq!(mine.get(k).await.unwrap(), None);
        assert_eq!(theirs.get(k).await.unwrap().as_deref(), Some(&b"2"[..]));
    }
    assert_eq!(theirs.clear(None).await.unwrap(), 3);
}

async fn ping_writes_and_cleans_up(b: ObjectStoreBackend, detail: &str) {
    let h = b.ping().await.expect("ping");
    assert_eq!(h.backend, b.name());
    assert!(h.details.contains_key(detail), "{:?}", h.details);
    assert_eq!(h.details.get("writable").map(String::as_str), Some("true"));
    // The health object is gone again.
    let health_folder = Path::from_iter([support::PREFIX, "%llm-cache-health"]);
    let left: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(b.store().list(Some(&health_folder)))
            .await
            .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

async fn delete_reports_existence(b: ObjectStoreBackend) {
    let ns = support::unique_prefix("del");
    let key = format!("{ns}:k");
    b.set(&key, Bytes::from_static(b"v"), TTL).await.unwrap();
    assert!(b.delete(&key).await.unwrap(), "an existing key");
    assert_eq!(b.get(&key).await.unwrap(), None);
    // S3 does not say whether the key existed (true); Azure and GCS answer 404 (false).
    b.delete(&key)
        .await
        .expect("deleting a missing key is fine");
}

/// LiteLLM's F16: async embedding caching never hits on S3. Here each input is its own object
/// and a partial hit fetches only the missing inputs.
async fn embeddings_are_cached_per_input(b: ObjectStoreBackend) {
    let ns = support::unique_prefix("emb");
    let cache = CacheBuilder::new(b)
        .namespace(&ns)
        .configure(|s| {
            s.read_timeout = Duration::from_secs(5);
            s.write_timeout = Duration::from_secs(10);
        })
        .build();
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let upstream = |seen: Arc<Mutex<Vec<Value>>>| {
        move |r: Value| async move {
            seen.lock().unwrap().push(r["input"].clone());
            let inputs: Vec<String> = r["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": [s.len() as f64]}))
                .collect();
            let body = json!({"object": "list", "data": data, "model": "emb", "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}});
            Ok::<_, std::io::Error>(Bytes::from(serde_json::to_vec(&body).unwrap()))
        }
    };
    let ctx = RequestContext::default();
    let cc = CacheControl::none();
    let first = cache
        .embeddings(
            &json!({"model": "emb", "input": ["a", "bb"]}),
            &cc,
            &ctx,
            upstream(seen.clone()),
        )
        .await
        .unwrap();
    assert_eq!(first.fetched, 2);
    cache.flush(Duration::from_secs(10)).await.unwrap();
    let out = cache
        .embeddings(
            &json!({"model": "emb", "input": ["a", "ccc", "bb"]}),
            &cc,
            &ctx,
            upstream(seen.clone()),
        )
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().last().unwrap(), &json!(["ccc"]));
    assert!(
        matches!(
            out.status,
            CacheStatus::Partial {
                cached: 2,
                total: 3,
                ..
            }
        ),
        "{:?}",
        out.status
    );
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    let lens: Vec<f64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"][0].as_f64().unwrap())
        .collect();
    assert_eq!(lens, vec![1.0, 3.0, 2.0]);
    cache.flush(Duration::from_secs(10)).await.unwrap();
    let calls = seen.lock().unwrap().len();
    let all = cache
        .embeddings(
            &json!({"model": "emb", "input": ["bb", "ccc", "a"]}),
            &cc,
            &ctx,
            upstream(seen.clone()),
        )
        .await
        .unwrap();
    assert!(all.status.is_hit(), "{:?}", all.status);
    assert_eq!(seen.lock().unwrap().len(), calls, "no upstream call");
    cache.clear(Some(&ns)).await.unwrap();
}

async fn unreachable_store_is_transient_and_quick(b: ObjectStoreBackend) {
    let start = Instant::now();
    let err = b.get("ns:k").await.expect_err("nothing listens there");
    assert!(err.is_transient(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "retries must stay within the deadlines: {:?}",
        start.elapsed()
    );
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

mod s3 {
    use super::*;

    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn layout() {
        let Some(b) = support::s3().await else { return };
        object_layout_and_attributes(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn expiry() {
        let Some(b) = support::s3().await else { return };
        expired_objects_are_misses_and_deleted(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn odd_keys() {
        let Some(b) = support::s3().await else { return };
        odd_keys_are_distinct_objects(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn clear_all() {
        let (Some(a), Some(b)) = (
            support::s3_with_prefix(&support::unique_prefix("mine")).await,
            support::s3_with_prefix(&support::unique_prefix("theirs")).await,
        ) else {
            return;
        };
        clear_all_stays_under_the_prefix(a, b).await;
    }
    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn ping() {
        let Some(b) = support::s3().await else { return };
        ping_writes_and_cleans_up(b, "bucket").await;
    }
    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn delete() {
        let Some(b) = support::s3().await else { return };
        delete_reports_existence(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn embeddings() {
        let Some(b) = support::s3().await else { return };
        embeddings_are_cached_per_input(b).await;
    }
    #[tokio::test]
    async fn unreachable() {
        let p = support::s3_params(&closed_port(), "x");
        let b = cache_object_store::S3Config::from_params(&support::params(p))
            .unwrap()
            .connect()
            .unwrap();
        unreachable_store_is_transient_and_quick(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the moto test service: `cargo xtask services up moto`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn missing_bucket_is_a_permanent_error() {
        let Some(_) = support::s3().await else { return };
        let mut p = support::s3_params(&objstore_test_support::s3_endpoint(), "x");
        p["s3_bucket_name"] = json!("no-such-bucket-llm-cache");
        let b = cache_object_store::S3Config::from_params(&support::params(p))
            .unwrap()
            .connect()
            .unwrap();
        let err = b
            .set("k", Bytes::from_static(b"v"), None)
            .await
            .expect_err("no bucket");
        assert!(!err.is_transient(), "{err}");
        assert!(b.ping().await.is_err());
    }
}

mod gcs {
    use super::*;

    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn layout() {
        let Some(b) = support::gcs().await else {
            return;
        };
        object_layout_and_attributes(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn expiry() {
        let Some(b) = support::gcs().await else {
            return;
        };
        expired_objects_are_misses_and_deleted(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn odd_keys() {
        let Some(b) = support::gcs().await else {
            return;
        };
        odd_keys_are_distinct_objects(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn clear_all() {
        let (Some(a), Some(b)) = (
            support::gcs_with_prefix(&support::unique_prefix("mine")).await,
            support::gcs_with_prefix(&support::unique_prefix("theirs")).await,
        ) else {
            return;
        };
        clear_all_stays_under_the_prefix(a, b).await;
    }
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn ping() {
        let Some(b) = support::gcs().await else {
            return;
        };
        ping_writes_and_cleans_up(b, "bucket").await;
    }
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn delete() {
        let Some(b) = support::gcs().await else {
            return;
        };
        delete_reports_existence(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn embeddings() {
        let Some(b) = support::gcs().await else {
            return;
        };
        embeddings_are_cached_per_input(b).await;
    }
    #[tokio::test]
    async fn unreachable() {
        let p = support::gcs_params(&closed_port(), "x");
        let b = cache_object_store::GcsConfig::from_params(&support::params(p))
            .unwrap()
            .connect()
            .unwrap();
        unreachable_store_is_transient_and_quick(b).await;
    }
    /// What the adapter-backed writes stored is what fake-gcs-server serves to a client that
    /// talks to it directly: the adapter translates the upload, the emulator stores.
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn reads_without_the_adapter_see_the_writes() {
        let Some(writer) = support::gcs().await else {
            return;
        };
        let Some(reader) = support::gcs_direct(support::PREFIX).await else {
            return;
        };
        let ns = support::unique_prefix("direct");
        let key = format!("{ns}:k");
        let value = Bytes::from((0..=255u8).collect::<Vec<_>>());
        writer.set(&key, value.clone(), TTL).await.unwrap();
        assert_eq!(reader.get(&key).await.unwrap(), Some(value));
        let meta = reader
            .store()
            .head(&reader.object_path(&key))
            .await
            .unwrap();
        assert!(meta.version.is_some(), "generation from the emulator");
        // A second write is a new generation.
        writer
            .set(&key, Bytes::from_static(b"2"), TTL)
            .await
            .unwrap();
        let meta2 = reader
            .store()
            .head(&reader.object_path(&key))
            .await
            .unwrap();
        assert_ne!(meta.version, meta2.version);
        assert_eq!(reader.clear(Some(&ns)).await.unwrap(), 1);
        assert_eq!(writer.get(&key).await.unwrap(), None);
    }
    /// Without the adapter, writes fail: the gap the adapter closes is real.
    #[tokio::test]
    #[ignore = "needs the fake-gcs test service: `cargo xtask services up fake-gcs`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn the_emulator_alone_refuses_object_store_writes() {
        let Some(direct) = support::gcs_direct(support::PREFIX).await else {
            return;
        };
        let err = direct
            .set("gap:k", Bytes::from_static(b"v"), None)
            .await
            .expect_err("fake-gcs-server has no XML upload");
        assert!(err.to_string().contains("400"), "{err}");
        assert!(!err.is_transient(), "{err}");
    }
}

mod azure {
    use super::*;

    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn layout() {
        let Some(b) = support::azure().await else {
            return;
        };
        object_layout_and_attributes(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn expiry() {
        let Some(b) = support::azure().await else {
            return;
        };
        expired_objects_are_misses_and_deleted(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn odd_keys() {
        let Some(b) = support::azure().await else {
            return;
        };
        odd_keys_are_distinct_objects(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn clear_all() {
        let (Some(a), Some(b)) = (
            support::azure_in(
                objstore_test_support::BUCKET,
                &support::unique_prefix("mine"),
            )
            .await,
            support::azure_in(
                objstore_test_support::BUCKET,
                &support::unique_prefix("theirs"),
            )
            .await,
        ) else {
            return;
        };
        clear_all_stays_under_the_prefix(a, b).await;
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn ping() {
        let Some(b) = support::azure().await else {
            return;
        };
        ping_writes_and_cleans_up(b, "container").await;
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn delete() {
        let Some(b) = support::azure().await else {
            return;
        };
        delete_reports_existence(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn embeddings() {
        let Some(b) = support::azure().await else {
            return;
        };
        embeddings_are_cached_per_input(b).await;
    }
    #[tokio::test]
    async fn unreachable() {
        let p = support::azure_params(&closed_port(), "c", "x");
        let b = cache_object_store::AzureConfig::from_params(&support::params(p))
            .unwrap()
            .connect()
            .await
            .expect("an unreachable store does not stop start-up");
        unreachable_store_is_transient_and_quick(b).await;
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn creates_a_missing_container() {
        let container = support::unique_prefix("newc").to_ascii_lowercase();
        let Some(b) = support::azure_in(&container, "p").await else {
            return;
        };
        b.set("ns:k", Bytes::from_static(b"v"), TTL).await.unwrap();
        assert_eq!(b.get("ns:k").await.unwrap().as_deref(), Some(&b"v"[..]));
        b.ping().await.unwrap();
    }
    #[tokio::test]
    #[ignore = "needs the azurite test service: `cargo xtask services up azurite`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    async fn missing_container_without_creation_is_a_permanent_error() {
        if support::azure().await.is_none() {
            return;
        }
        let container = support::unique_prefix("nocreate").to_ascii_lowercase();
        let mut p =
            support::azure_params(&objstore_test_support::azurite_endpoint(), &container, "p");
        p["azure_create_container"] = json!(false);
        let b = cache_object_store::AzureConfig::from_params(&support::params(p))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let err = b
            .set("k", Bytes::from_static(b"v"), None)
            .await
            .expect_err("no container");
        assert!(!err.is_transient(), "{err}");
        assert_eq!(b.get("k").await.unwrap(), None);
    }
}
