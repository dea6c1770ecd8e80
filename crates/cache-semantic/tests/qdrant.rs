//! The `qdrant-semantic` backend against the TEST-ONLY gRPC server of `qdrant-test-server`
//! (Qdrant's wire protocol, backed by Qdrant's engine qdrant-edge 0.7.0, in process on a free
//! loopback port). What that server does and does not cover: docs/backends/qdrant.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::error::CacheError;
use cache_core::params::Params;
use cache_core::semantic::{SemanticBackend, SemanticRecord};
use cache_semantic::qdrant::{QdrantBackend, QdrantConfig, Quantization};
use qdrant_client::Qdrant;
use qdrant_client::qdrant as pb;
use qdrant_test_server::TestServer;
use serde_json::json;

const DIMS: usize = 8;

async fn server() -> TestServer {
    TestServer::start().await.expect("start the test server")
}

fn config(server: &TestServer, collection: &str) -> QdrantConfig {
    let mut c = QdrantConfig::new(server.url(), collection);
    c.vector_size = Some(DIMS);
    c.cleanup_interval = None;
    c.timeout = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(2);
    c
}

async fn backend(server: &TestServer, collection: &str) -> QdrantBackend {
    QdrantBackend::connect(config(server, collection))
        .await
        .expect("connect")
}

fn raw_client(server: &TestServer) -> Qdrant {
    Qdrant::from_url(&server.url())
        .skip_compatibility_check()
        .build()
        .expect("client")
}

/// A unit vector at cosine `cos` from axis `a`, rotated towards axis `b`.
fn at_cos(a: usize, b: usize, cos: f32) -> Vec<f32> {
    let mut v = vec![0.0; DIMS];
    v[a] = cos;
    v[b] = (1.0 - cos * cos).max(0.0).sqrt();
    v
}

fn axis(a: usize) -> Vec<f32> {
    at_cos(a, (a + 1) % DIMS, 1.0)
}

fn record(
    scope: &str,
    ns: Option<&str>,
    prompt: &str,
    vector: Vec<f32>,
    value: &str,
) -> SemanticRecord {
    SemanticRecord::new(
        scope.to_owned(),
        ns.map(str::to_owned),
        prompt.to_owned(),
        vector,
        Bytes::copy_from_slice(value.as_bytes()),
        None,
    )
}

fn with_ttl(mut r: SemanticRecord, ttl: Duration) -> SemanticRecord {
    r.ttl = Some(ttl);
    r
}

fn values(matches: &[cache_core::semantic::SemanticMatch]) -> Vec<String> {
    matches
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_the_collection_and_payload_indexes_when_missing() {
    let server = server().await;
    let raw = raw_client(&server);
    assert!(!raw.collection_exists("fresh").await.unwrap());
    let b = backend(&server, "fresh").await;
    assert_eq!(b.dimensions(), Some(DIMS));
    let info = raw.collection_info("fresh").await.unwrap().result.unwrap();
    let params = match info
        .config
        .unwrap()
        .params
        .unwrap()
        .vectors_config
        .unwrap()
        .config
    {
        Some(pb::vectors_config::Config::Params(p)) => p,
        other => panic!("unexpected vectors config {other:?}"),
    };
    assert_eq!(params.size, DIMS as u64);
    assert_eq!(params.distance, pb::Distance::Cosine as i32);
    let schema: HashMap<_, _> = info
        .payload_schema
        .iter()
        .map(|(k, v)| (k.as_str(), v.data_type))
        .collect();
    assert_eq!(
        schema.get("scope"),
        Some(&(pb::PayloadSchemaType::Keyword as i32))
    );
    assert_eq!(
        schema.get("namespace_path"),
        Some(&(pb::PayloadSchemaType::Keyword as i32))
    );
    assert_eq!(
        schema.get("expires_at"),
        Some(&(pb::PayloadSchemaType::Integer as i32))
    );
    // A second backend on the same collection reuses it (and adopts its size when none is set).
    let mut c = config(&server, "fresh");
    c.vector_size = None;
    let again = QdrantBackend::connect(c).await.unwrap();
    assert_eq!(again.dimensions(), Some(DIMS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_collection_of_another_size_is_a_clear_error() {
    let server = server().await;
    backend(&server, "sized").await;
    let mut c = config(&server, "sized");
    c.vector_size = Some(DIMS * 2);
    let err = QdrantBackend::connect(c).await.unwrap_err();
    assert!(matches!(err, CacheError::Config(_)), "{err:?}");
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains("8-dimensional") && msg.contains("16"), "{msg}");
    assert!(msg.contains("qdrant_semantic_cache_vector_size"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_of_another_size_is_an_error_not_a_miss() {
    let server = server().await;
    let b = backend(&server, "dims").await;
    let err = b.search("s", &[1.0, 0.0, 0.0], 0.5, 1).await.unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("3 dimensions"), "{err}");
    assert!(err.to_string().contains("has 8"), "{err}");
    let err = b
        .store(record("s", None, "p", vec![1.0; DIMS + 1], "v"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("9 dimensions"), "{err}");
    let err = b.search("s", &[f32::NAN; DIMS], 0.5, 1).await.unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    assert_eq!(server.points_count("dims"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_of_another_distance_or_layout_are_rejected() {
    let server = server().await;
    let raw = raw_client(&server);
    let params = |distance: pb::Distance| pb::VectorParams {
        size: DIMS as u64,
        distance: distance as i32,
        ..Default::default()
    };
    raw.create_collection(pb::CreateCollection {
        collection_name: "dot".into(),
        vectors_config: Some(pb::VectorsConfig {
            config: Some(pb::vectors_config::Config::Params(params(
                pb::Distance::Dot,
            ))),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = QdrantBackend::connect(config(&server, "dot"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Dot") && err.to_string().contains("Cosine"),
        "{err}"
    );

    raw.create_collection(pb::CreateCollection {
        collection_name: "named".into(),
        vectors_config: Some(pb::VectorsConfig {
            config: Some(pb::vectors_config::Config::ParamsMap(pb::VectorParamsMap {
                map: [("text".to_owned(), params(pb::Distance::Cosine))].into(),
            })),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = QdrantBackend::connect(config(&server, "named"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("named vectors"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_is_a_prefilter_never_a_postfilter() {
    let server = server().await;
    let b = backend(&server, "scoped").await;
    let q = axis(0);
    // Scope B has many points nearer to q than scope A's only point: with a post-filter on the
    // top result(s), A's point would never be found.
    let mut many = Vec::new();
    for i in 0..50 {
        many.push(record(
            "B",
            None,
            &format!("b{i}"),
            at_cos(0, 1 + i % 7, 0.999),
            "from B",
        ));
    }
    many.push(record("B", None, "exact", q.clone(), "from B exact"));
    b.store_many(many).await.unwrap();
    b.store(record("A", None, "a", at_cos(0, 1, 0.9), "from A"))
        .await
        .unwrap();

    let hits = b.search("A", &q, 0.8, 1).await.unwrap();
    assert_eq!(values(&hits), ["from A"]);
    assert!(
        (hits[0].similarity - 0.9).abs() < 1e-4,
        "{}",
        hits[0].similarity
    );
    assert_eq!(hits[0].prompt, "a");

    // Whatever the limit and threshold, another scope's records never come back.
    let hits = b.search("A", &q, 0.0, 100).await.unwrap();
    assert_eq!(values(&hits), ["from A"]);
    assert!(b.search("C", &q, 0.0, 100).await.unwrap().is_empty());
    let hits = b.search("B", &q, 0.5, 3).await.unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(values(&hits)[0], "from B exact");
    assert!(hits.iter().all(|h| h.value != "from A"));
    assert!(hits.windows(2).all(|w| w[0].similarity >= w[1].similarity));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_edges() {
    let server = server().await;
    let b = backend(&server, "edges").await;
    b.store(record("s", None, "p", at_cos(0, 1, 0.8), "v"))
        .await
        .unwrap();
    let q = axis(0);

    let hit = b.search("s", &q, 0.5, 1).await.unwrap();
    assert_eq!(hit.len(), 1);
    let score = hit[0].similarity;
    assert!((score - 0.8).abs() < 1e-5, "{score}");
    // Exactly at the reported similarity is a hit (Qdrant's own threshold is strict `>`).
    assert_eq!(b.search("s", &q, score, 1).await.unwrap().len(), 1);
    // Just above it is a miss.
    assert!(b.search("s", &q, score + 1e-4, 1).await.unwrap().is_empty());
    assert!(b.search("s", &q, 0.81, 1).await.unwrap().is_empty());
    // Above 1 nothing can match; limit 0 asks for nothing.
    assert!(b.search("s", &q, 1.01, 1).await.unwrap().is_empty());
    assert!(b.search("s", &q, 0.0, 0).await.unwrap().is_empty());

    // Cosine can be negative; similarities are clamped to [0, 1].
    let opposite: Vec<f32> = q.iter().map(|x| -x).collect();
    b.store(record("neg", None, "p", opposite, "far"))
        .await
        .unwrap();
    let far = b.search("neg", &q, 0.0, 1).await.unwrap();
    assert_eq!(far.len(), 1);
    assert_eq!(far[0].similarity, 0.0);
    assert!(b.search("neg", &q, 0.01, 1).await.unwrap().is_empty());
    // An identical vector is similarity 1 and passes a threshold of 1.
    b.store(record("same", None, "p", q.clone(), "same"))
        .await
        .unwrap();
    let same = b.search("same", &q, 1.0, 1).await;
    let same = same.unwrap();
    assert_eq!(same.len(), 1, "identical vector at threshold 1.0");
    assert!(same[0].similarity <= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_hides_expired_points_at_query_time_and_purge_removes_them() {
    let server = server().await;
    let b = backend(&server, "ttl").await;
    let q = axis(0);
    b.store(with_ttl(
        record("s", None, "short", q.clone(), "short"),
        Duration::from_millis(300),
    ))
    .await
    .unwrap();
    b.store(record("s", None, "forever", at_cos(0, 1, 0.95), "forever"))
        .await
        .unwrap();
    b.store(with_ttl(
        record("s", None, "long", at_cos(0, 2, 0.9), "long"),
        Duration::from_secs(3600),
    ))
    .await
    .unwrap();
    assert_eq!(
        values(&b.search("s", &q, 0.5, 10).await.unwrap()),
        ["short", "forever", "long"]
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    // The expired point is still stored (no cleanup task here) but never returned.
    assert_eq!(server.points_count("ttl"), Some(3));
    assert_eq!(
        values(&b.search("s", &q, 0.5, 10).await.unwrap()),
        ["forever", "long"]
    );
    assert_eq!(b.purge_expired().await.unwrap(), 1);
    assert_eq!(server.points_count("ttl"), Some(2));
    assert_eq!(b.purge_expired().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_task_deletes_expired_points_and_stops_on_drop() {
    let server = server().await;
    let mut c = config(&server, "cleanup");
    c.cleanup_interval = Some(Duration::from_millis(100));
    let b = QdrantBackend::connect(c).await.unwrap();
    for i in 0..3 {
        b.store(with_ttl(
            record("s", None, &format!("p{i}"), at_cos(0, 1 + i, 0.9), "x"),
            Duration::from_millis(50),
        ))
        .await
        .unwrap();
    }
    b.store(record("s", None, "kept", axis(0), "kept"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.points_count("cleanup") != Some(1) {
        assert!(
            Instant::now() < deadline,
            "cleanup did not run: {:?}",
            server.points_count("cleanup")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b);

    // With the only cleanup-enabled backend gone, expired points stay (filtered at query time).
    let quiet = backend(&server, "cleanup").await;
    quiet
        .store(with_ttl(
            record("s", None, "late", axis(1), "late"),
            Duration::from_millis(50),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(server.points_count("cleanup"), Some(2));
    assert!(
        quiet
            .search("s", &axis(1), 0.9, 1)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storing_the_same_prompt_again_overwrites() {
    let server = server().await;
    let b = backend(&server, "overwrite").await;
    let q = axis(0);
    b.store(record("s", Some("ns"), "same prompt", q.clone(), "old"))
        .await
        .unwrap();
    b.store(with_ttl(
        record("s", Some("ns"), "same prompt", q.clone(), "new"),
        Duration::from_secs(60),
    ))
    .await
    .unwrap();
    assert_eq!(server.points_count("overwrite"), Some(1));
    assert_eq!(values(&b.search("s", &q, 0.9, 10).await.unwrap()), ["new"]);
    // Another prompt, scope or namespace is another point.
    b.store(record("s", Some("ns"), "other prompt", q.clone(), "other"))
        .await
        .unwrap();
    b.store(record("t", Some("ns"), "same prompt", q.clone(), "t"))
        .await
        .unwrap();
    b.store(record("s", Some("ns2"), "same prompt", q.clone(), "ns2"))
        .await
        .unwrap();
    assert_eq!(server.points_count("overwrite"), Some(4));
    // Re-storing without a TTL drops the old expiry.
    b.store(with_ttl(
        record("u", None, "p", q.clone(), "short"),
        Duration::from_millis(100),
    ))
    .await
    .unwrap();
    b.store(record("u", None, "p", q.clone(), "kept"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(values(&b.search("u", &q, 0.9, 1).await.unwrap()), ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_by_namespace_removes_exactly_that_namespace_and_its_children() {
    let server = server().await;
    let b = backend(&server, "clear").await;
    let q = axis(0);
    b.store_many(vec![
        record("s", Some("a"), "1", q.clone(), "a"),
        record("s", Some("a:b"), "2", q.clone(), "a:b"),
        record("s", Some("a:b:c"), "3", q.clone(), "a:b:c"),
        record("s", Some("ab"), "4", q.clone(), "ab"),
        record("s", Some("b:a"), "5", q.clone(), "b:a"),
        record("s", None, "6", q.clone(), "none"),
    ])
    .await
    .unwrap();
    // A point written by something else (LiteLLM's layout) in the same collection.
    raw_client(&server)
        .upsert_points(pb::UpsertPoints {
            collection_name: "clear".into(),
            wait: Some(true),
            points: vec![pb::PointStruct::new(
                42u64,
                q.clone(),
                qdrant_client::Payload::from([
                    ("litellm_cache_key", pb::Value::from("k")),
                    ("text", pb::Value::from("t")),
                ]),
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(server.points_count("clear"), Some(7));

    assert_eq!(b.clear(Some("a:b")).await.unwrap(), 2);
    let mut left = values(&b.search("s", &q, 0.5, 10).await.unwrap());
    left.sort();
    assert_eq!(left, ["a", "ab", "b:a", "none"]);
    assert_eq!(b.clear(Some("a")).await.unwrap(), 1);
    assert_eq!(b.clear(Some("missing")).await.unwrap(), 0);
    assert_eq!(b.clear(None).await.unwrap(), 3);
    assert!(b.search("s", &q, 0.0, 10).await.unwrap().is_empty());
    // clear(None) removes what this backend owns, not the foreign point.
    assert_eq!(server.points_count("clear"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_round_trip() {
    let server = server().await;
    let b = backend(&server, "binary").await;
    let value = Bytes::from_static(&[0, 159, 146, 150, 255, b'{']);
    let mut r = record("s", None, "p", axis(0), "");
    r.value = value.clone();
    b.store(r).await.unwrap();
    let hit = b.search("s", &axis(0), 0.9, 1).await.unwrap();
    assert_eq!(hit[0].value, value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_gives_transient_errors_and_the_backend_reconnects() {
    let mut server = server().await;
    let b = backend(&server, "outage").await;
    let q = axis(0);
    b.store(record("s", None, "p", q.clone(), "v"))
        .await
        .unwrap();
    assert!(b.ping().await.is_ok());

    server.stop().await;
    let start = Instant::now();
    let err = b.search("s", &q, 0.5, 1).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.backend_name(), Some("qdrant-semantic"));
    let err = b
        .store(record("s", None, "p2", q.clone(), "v2"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(b.ping().await.unwrap_err().is_transient());
    assert!(b.clear(None).await.unwrap_err().is_transient());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    server.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match b.search("s", &q, 0.5, 1).await {
            Ok(hits) => {
                assert_eq!(values(&hits), ["v"]);
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                assert!(Instant::now() < deadline, "no reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_at_start_means_a_degraded_start_then_lazy_setup() {
    let mut server = server().await;
    server.stop().await;
    let start = Instant::now();
    let b = backend(&server, "late").await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(b.dimensions(), None);
    let err = b.search("s", &axis(0), 0.5, 1).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    server.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = b.store(record("s", None, "p", axis(0), "v")).await {
        assert!(e.is_transient() && Instant::now() < deadline, "{e:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.dimensions(), Some(DIMS));
    assert_eq!(server.points_count("late"), Some(1));
    assert_eq!(
        values(&b.search("s", &axis(0), 0.5, 1).await.unwrap()),
        ["v"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_times_out_transiently() {
    let server = server().await;
    let mut c = config(&server, "slow");
    c.timeout = Duration::from_millis(200);
    let b = QdrantBackend::connect(c).await.unwrap();
    server.set_latency(Duration::from_secs(2));
    let start = Instant::now();
    let err = b.search("s", &axis(0), 0.5, 1).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // qdrant-client retries a timed-out call once on a fresh connection.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    server.set_latency(Duration::ZERO);
    assert!(b.search("s", &axis(0), 0.5, 1).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_the_collection() {
    let server = server().await;
    let b = backend(&server, "health").await;
    let h = b.ping().await.unwrap();
    assert_eq!(h.backend, "qdrant-semantic");
    assert_eq!(
        h.details.get("collection").map(String::as_str),
        Some("health")
    );
    assert_eq!(h.details.get("dimensions").map(String::as_str), Some("8"));
    assert!(
        h.details
            .get("server")
            .is_some_and(|s| s.contains("qdrant-edge"))
    );
}

fn params(v: serde_json::Value) -> Params {
    match v {
        serde_json::Value::Object(m) => Params::new(m, "cache_params"),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_params_with_litellm_names() {
    let server = server().await;
    let b = QdrantBackend::from_params(&params(json!({
        "qdrant_api_base": server.url(),
        "qdrant_api_key": "sekrit-key",
        "qdrant_collection_name": "litellm",
        "qdrant_semantic_cache_vector_size": DIMS,
        "qdrant_quantization_config": "binary",
        "qdrant_cleanup_interval": 0,
    })))
    .await
    .unwrap();
    assert_eq!(b.dimensions(), Some(DIMS));
    let debug = format!("{b:?} {:?}", b.config());
    assert!(!debug.contains("sekrit"), "{debug}");
    assert_eq!(b.config().quantization, Quantization::Binary);
    assert_eq!(b.config().cleanup_interval, None);
    // The collection was created with LiteLLM's binary quantization, and searches on it work
    // (with rescoring on the original vectors).
    let info = raw_client(&server)
        .collection_info("litellm")
        .await
        .unwrap()
        .result
        .unwrap();
    let q = info.config.unwrap().quantization_config.unwrap();
    assert!(matches!(
        q.quantization,
        Some(pb::quantization_config::Quantization::Binary(_))
    ));
    b.store(record("s", None, "p", at_cos(0, 1, 0.9), "v"))
        .await
        .unwrap();
    let hit = b.search("s", &axis(0), 0.85, 1).await.unwrap();
    assert_eq!(values(&hit), ["v"]);
    assert!((hit[0].similarity - 0.9).abs() < 1e-4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_name_the_key() {
    let err = |v| {
        QdrantConfig::from_params(&params(v))
            .unwrap_err()
            .to_string()
    };
    let e = err(json!({"qdrant_api_base": "http://127.0.0.1:6333"}));
    assert!(e.contains("qdrant_collection_name"), "{e}");
    let e = err(json!({"qdrant_api_base": "127.0.0.1:6333", "qdrant_collection_name": "c"}));
    assert!(e.contains("qdrant_api_base"), "{e}");
    let e = err(json!({
        "qdrant_api_base": "http://h", "qdrant_collection_name": "c",
        "qdrant_quantization_config": "turbo"
    }));
    assert!(
        e.contains("qdrant_quantization_config") && e.contains("turbo"),
        "{e}"
    );
    let e = err(json!({
        "qdrant_api_base": "http://h", "qdrant_collection_name": "c",
        "qdrant_semantic_cache_vector_size": 0
    }));
    assert!(e.contains("qdrant_semantic_cache_vector_size"), "{e}");
    let e = err(json!({
        "qdrant_api_base": "http://h", "qdrant_collection_name": "c",
        "qdrant_semantic_cache_vector_size": "many"
    }));
    assert!(e.contains("qdrant_semantic_cache_vector_size"), "{e}");

    let ok = QdrantConfig::from_params(&params(json!({
        "qdrant_api_base": "http://qdrant.local:6333",
        "qdrant_collection_name": "c",
        "qdrant_quantization_config": "Scalar",
        "qdrant_timeout": 1.5,
    })))
    .unwrap();
    assert_eq!(ok.url, "http://qdrant.local:6334");
    assert!(
        matches!(ok.quantization, Quantization::Scalar { quantile } if (quantile - 0.99).abs() < 1e-6)
    );
    assert_eq!(ok.timeout, Duration::from_millis(1500));
    let grpc = QdrantConfig::from_params(&params(json!({
        "qdrant_api_base": "http://qdrant.local:6333",
        "qdrant_grpc_url": "https://grpc.example:443",
        "qdrant_collection_name": "c",
    })))
    .unwrap();
    assert_eq!(grpc.url, "https://grpc.example:443");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatch_found_after_a_degraded_start_is_reported_without_asking_again() {
    let mut server = server().await;
    // An 8-dimensional collection exists; the backend wants 16 but starts while Qdrant is down.
    backend(&server, "later-mismatch").await;
    server.stop().await;
    let mut c = config(&server, "later-mismatch");
    c.vector_size = Some(DIMS * 2);
    let b = QdrantBackend::connect(c).await.expect("degraded start");
    server.restart().await.unwrap();
    let q = vec![0.5; DIMS * 2];
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        let e = b.search("s", &q, 0.5, 1).await.unwrap_err();
        if !e.is_transient() {
            break e;
        }
        assert!(Instant::now() < deadline, "{e:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(matches!(err, CacheError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("8-dimensional"), "{err}");
    // The same error comes back at once, without a round trip to a (now slow) server.
    server.set_latency(Duration::from_secs(2));
    let start = Instant::now();
    let again = b
        .store(record("s", None, "p", q.clone(), "v"))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(again.to_string(), err.to_string());
}
