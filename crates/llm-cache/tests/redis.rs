//! `type: redis` through the façade: built from `cache_params` or (LiteLLM's `cache: true`) from
//! `REDIS_*` variables, against the shared standalone Redis (`cargo xtask services up redis`).
#![cfg(feature = "redis")]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use llm_cache::{CacheConfig, CacheControl, CallKind};
use serde_json::{Value, json};

const PORT: u16 = 17001;

/// Fails the test, naming the service and how to start it, when the shared Redis does not answer.
fn require_redis() {
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        panic!(
            "redis (127.0.0.1:{PORT}) is not reachable ({e}): start it with `cargo xtask services up redis` (or run `cargo xtask test`)"
        );
    }
}

fn request(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
}

async fn call_twice(cache: &llm_cache::Cache, text: &str) {
    let req = request(text);
    let call = || async {
        Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "hello"}}]}))
    };
    let first = cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), call)
        .await
        .unwrap();
    assert!(!first.status.is_hit());
    cache.flush(Duration::from_secs(5)).await.unwrap();
    let second = cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), call)
        .await
        .unwrap();
    assert!(second.status.is_hit(), "{:?}", second.status);
    assert_eq!(first.value, second.value);
}

#[test]
fn type_redis_is_available() {
    assert!(llm_cache::available_types().contains(&"redis"));
}

#[tokio::test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn type_redis_from_cache_params() {
    require_redis();
    let ns = format!("facade-{}", std::process::id());
    let yaml =
        format!("type: redis\nhost: 127.0.0.1\nport: \"{PORT}\"\nnamespace: {ns}\nttl: 60\n");
    let cache = CacheConfig::from_yaml(&yaml)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(cache.engine().unwrap().backend().name(), "redis");
    // The first commands may race the connection: give it a moment, as a starting app would.
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        match cache.ping().await {
            Ok(r) if r.set_ok => break r,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("ping: {other:?}"),
        }
    };
    assert_eq!(report.health.details["topology"], "standalone");
    call_twice(&cache, "facade").await;
    assert!(
        cache.clear(None).await.unwrap() >= 1,
        "clear removes the namespace"
    );
}

#[tokio::test]
async fn bad_redis_settings_name_the_key() {
    let err = CacheConfig::from_yaml("type: redis\nhost: h\nport: lots\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cache_params.port"), "{err}");
}

/// LiteLLM's `cache: true` (no `cache_params`): Redis from `REDIS_*`. Environment variables can
/// only be set for a child process here (edition 2024 `set_var` is unsafe), so the test runs
/// again as its own child.
#[tokio::test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn cache_true_uses_redis_env() {
    const MARK: &str = "LLM_CACHE_REDIS_ENV_CHILD";
    if std::env::var(MARK).is_err() {
        require_redis();
        let run = |with_host: bool| {
            let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
            // The test is `#[ignore]`d: the child must ask for it.
            cmd.args([
                "--exact",
                "cache_true_uses_redis_env",
                "--include-ignored",
                "--nocapture",
            ])
            .env(MARK, if with_host { "host" } else { "none" });
            for var in [
                "REDIS_HOST",
                "REDIS_PORT",
                "REDIS_URL",
                "REDIS_CLUSTER_NODES",
                "REDIS_SENTINEL_NODES",
            ] {
                cmd.env_remove(var);
            }
            if with_host {
                cmd.env("REDIS_HOST", "127.0.0.1")
                    .env("REDIS_PORT", PORT.to_string());
            }
            cmd.status().unwrap()
        };
        assert!(run(true).success(), "child run with REDIS_HOST failed");
        assert!(run(false).success(), "child run without REDIS_* failed");
        return;
    }
    if std::env::var(MARK).as_deref() == Ok("none") {
        // Without REDIS_* the config is refused when loaded, naming what is missing.
        let err = CacheConfig::redis_from_env().unwrap_err().to_string();
        assert!(err.contains("REDIS_HOST"), "{err}");
        return;
    }
    let config = CacheConfig::redis_from_env().unwrap();
    let cache = config.build().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cache.ping().await.is_ok_and(|r| r.set_ok) {
        assert!(
            Instant::now() < deadline,
            "no connection from REDIS_HOST/REDIS_PORT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call_twice(&cache, &format!("env-{}", std::process::id())).await;
}

/// Redis down when the app starts: building the cache neither blocks nor fails, and calls are
/// served (as misses) within the read deadline (LiteLLM #3400).
#[tokio::test]
async fn redis_down_at_startup_is_degraded_not_fatal() {
    // Nothing listens on this port (17999 is reserved for this check in the 17000-17999 range).
    let start = Instant::now();
    let cache = CacheConfig::from_yaml("type: redis\nhost: 127.0.0.1\nport: 17999\n")
        .unwrap()
        .build()
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let req = request("down");
    let t = Instant::now();
    let reply = cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), || async {
            Ok::<Value, std::io::Error>(json!({"ok": true}))
        })
        .await
        .unwrap();
    assert!(!reply.status.is_hit());
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}
