//! `redis-semantic` against a real Redis Stack (RediSearch) on 127.0.0.1:17701
//! (`cargo xtask services up redis-stack`): the conformance kit, plus start-up checks.

use std::sync::Arc;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::semantic::{SemanticBackend, SemanticRecord};
use cache_core::testing::{runtime, service_unavailable, unique_namespace};
use cache_redis::RedisConfig;
use cache_semantic::redis::{RedisSemanticBackend, RedisSemanticConfig};
use serde_json::json;

const STACK_PORT: u16 = 17701;
/// The plain Redis 7 (no search module) of `cargo xtask services up redis`.
const PLAIN_PORT: u16 = 17001;

fn config(port: u16, index: &str) -> RedisSemanticConfig {
    RedisSemanticConfig::new(
        RedisConfig::standalone("127.0.0.1", port).with_connect_timeout(Duration::from_secs(1)),
    )
    .with_index_name(index)
}

async fn reachable(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

async fn stack(index: &str, dims: Option<usize>) -> Option<RedisSemanticBackend> {
    if !reachable(STACK_PORT).await {
        return service_unavailable("redis-stack", "nothing listens on 127.0.0.1:17701");
    }
    let b = RedisSemanticBackend::connect(config(STACK_PORT, index).with_dimensions(dims))
        .await
        .expect("connect to redis-stack");
    b.ping().await.expect("ping redis-stack");
    Some(b)
}

cache_semantic::semantic_conformance!(
    service = "redis-stack",
    optional_backend = stack("llm_cache_conformance", Some(cache_semantic::testing::DIMS))
);

fn record(ns: &str, prompt: &str, dims: usize, ttl: Option<Duration>) -> SemanticRecord {
    let mut v = vec![0.0f32; dims];
    v[0] = 1.0;
    SemanticRecord::new(
        blake3::hash(ns.as_bytes()).to_hex().to_string(),
        Some(ns.to_owned()),
        prompt.to_owned(),
        v,
        cache_core::Bytes::from_static(b"{}"),
        ttl,
    )
}

#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn a_redis_without_the_search_module_is_an_error_at_start() {
    runtime().block_on(async {
        if !reachable(PLAIN_PORT).await {
            let _: Option<()> = service_unavailable("redis", "nothing listens on 127.0.0.1:17001");
        }
        let err = RedisSemanticBackend::connect(config(PLAIN_PORT, "llm_cache_nomodule"))
            .await
            .expect_err("plain Redis has no FT.* commands");
        let msg = err.to_string();
        assert!(msg.contains("search module"), "{msg}");
        assert!(!err.is_transient());
    });
}

#[test]
#[ignore = "needs the redis-stack test service: `cargo xtask services up redis-stack`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn an_index_of_another_dimension_is_an_error_at_start() {
    runtime().block_on(async {
        let index = format!("llm_cache_dims_{}", std::process::id());
        let Some(b) = stack(&index, Some(8)).await else {
            return;
        };
        let ns = unique_namespace("dims");
        b.store(record(&ns, "eight", 8, None)).await.expect("store");
        let err =
            RedisSemanticBackend::connect(config(STACK_PORT, &index).with_dimensions(Some(64)))
                .await
                .expect_err("a 64-dimension embedder against an 8-dimension index");
        let msg = err.to_string();
        assert!(
            msg.contains("64") && msg.contains('8') && msg.contains(&index),
            "{msg}"
        );
        // The same dimension starts fine.
        RedisSemanticBackend::connect(config(STACK_PORT, &index).with_dimensions(Some(8)))
            .await
            .expect("matching dimension");
        drop_index(&index).await;
    });
}

async fn drop_index(index: &str) {
    let _ = tokio::process::Command::new("redis-cli")
        .args(["-p", &STACK_PORT.to_string(), "FT.DROPINDEX", index, "DD"])
        .output()
        .await;
}

async fn redis_cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &STACK_PORT.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
#[ignore = "needs the redis-stack test service: `cargo xtask services up redis-stack`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn ttl_is_a_key_expiry_and_keys_live_under_the_index_prefix() {
    runtime().block_on(async {
        let index = "llm_cache_conformance";
        let Some(b) = stack(index, Some(64)).await else {
            return;
        };
        let ns = unique_namespace("pttl");
        b.store(record(&ns, "with ttl", 64, Some(Duration::from_secs(30))))
            .await
            .expect("store");
        b.store(record(&ns, "without ttl", 64, None))
            .await
            .expect("store");
        let scope = blake3::hash(ns.as_bytes()).to_hex().to_string();
        let keys = redis_cli(&["--scan", "--pattern", &format!("{index}:{scope}:*")]).await;
        let keys: Vec<&str> = keys.lines().collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let mut ttls: Vec<i64> = Vec::new();
        for k in keys {
            ttls.push(redis_cli(&["PTTL", k]).await.parse().expect("PTTL"));
        }
        ttls.sort_unstable();
        assert_eq!(ttls[0], -1, "no TTL: no expiry");
        assert!(ttls[1] > 25_000 && ttls[1] <= 30_000, "{ttls:?}");
        assert_eq!(b.clear(Some(&ns)).await.expect("clear"), 2);
    });
}

#[test]
fn redis_down_at_start_is_degraded_not_fatal() {
    runtime().block_on(async {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let b = RedisSemanticBackend::connect(config(closed, "llm_cache_down"))
            .await
            .expect("a Redis that is down is not a configuration error");
        let err = b
            .search(&"a".repeat(64), &[1.0; 64], 0.5, 1)
            .await
            .expect_err("no connection");
        assert!(err.is_transient(), "{err}");
    });
}

#[test]
fn litellm_names_configure_the_backend() {
    let c = RedisSemanticConfig::from_params(&litellm_params()).expect("config");
    assert_eq!(c.index_name, "llm_cache_litellm_names");
    let bad = Params::new(
        json!({"host": "127.0.0.1", "redis_semantic_cache_index_name": "no spaces"})
            .as_object()
            .cloned()
            .expect("object"),
        "cache_params",
    );
    let err = RedisSemanticConfig::from_params(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cache_params.redis_semantic_cache_index_name"),
        "{err}"
    );
}

/// `cache_params` with LiteLLM's names, for an index named `llm_cache_litellm_names`.
fn litellm_params() -> Params {
    Params::new(
        json!({
            "type": "redis-semantic",
            "host": "127.0.0.1",
            "port": STACK_PORT,
            "similarity_threshold": 0.9,
            "redis_semantic_cache_index_name": "llm_cache_litellm_names"
        })
        .as_object()
        .cloned()
        .expect("object"),
        "cache_params",
    )
}

#[test]
#[ignore = "needs the redis-stack test service: `cargo xtask services up redis-stack`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn litellm_names_configure_a_working_backend() {
    runtime().block_on(async {
        if !reachable(STACK_PORT).await {
            let _: Option<()> = service_unavailable("redis-stack", "127.0.0.1:17701");
        }
        let params = litellm_params();
        let b = Arc::new(
            RedisSemanticBackend::from_params(&params, Some(64))
                .await
                .expect("backend"),
        );
        let h = b.ping().await.expect("ping");
        assert_eq!(
            h.details.get("index").map(String::as_str),
            Some("llm_cache_litellm_names")
        );
    });
}
