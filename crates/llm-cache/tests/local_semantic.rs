//! `type: local-semantic` through the façade: an in-process semantic cache with the bundled
//! offline embedder; no server.
#![cfg(feature = "local-semantic")]

use std::time::Duration;

use llm_cache::core::Tier;
use llm_cache::{CacheConfig, CacheControl, CacheStatus, CallKind};
use serde_json::{Value, json};

async fn ask(cache: &llm_cache::Cache, model: &str, text: &str) -> CacheStatus {
    let req = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), || async {
            Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "answer"}}]}))
        })
        .await
        .expect("call")
        .status
}

#[tokio::test]
async fn local_semantic_serves_similar_requests_in_process() {
    assert!(llm_cache::available_types().contains(&"local-semantic"));
    let config = CacheConfig::from_yaml(
        "type: local-semantic\nsimilarity_threshold: 0.9\nsemantic_cache_max_entries: 1000\n",
    )
    .expect("config");
    assert_eq!(
        config.settings().expect("settings").default_ttl,
        Some(Duration::from_secs(600)),
        "in-memory default TTL, as type: local"
    );
    let cache = config.build().await.expect("build");
    let engine = cache.engine().expect("enabled");
    assert_eq!(engine.backend().name(), "memory");
    assert_eq!(
        engine.semantic().map(|s| s.name().to_owned()).as_deref(),
        Some("memory-semantic")
    );
    assert!(
        !ask(&cache, "m", "How do I cancel my gym membership?")
            .await
            .is_hit()
    );
    cache.flush(Duration::from_secs(5)).await.expect("flush");
    match ask(&cache, "m", "how can i cancel my gym membership").await {
        CacheStatus::Hit {
            tier: Tier::Semantic,
            similarity: Some(s),
            ..
        } => assert!(s >= 0.9, "{s}"),
        other => panic!("expected a semantic hit, got {other:?}"),
    }
    assert!(
        !ask(&cache, "other-model", "how can i cancel my gym membership")
            .await
            .is_hit()
    );
    let err = CacheConfig::from_yaml("type: local-semantic\n")
        .expect_err("threshold required at load")
        .to_string();
    assert!(err.contains("cache_params.similarity_threshold"), "{err}");
}
