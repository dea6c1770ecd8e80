//! Black-box tests of semantic caching in the `llm-cache` binary (`type: redis-semantic` on
//! Redis Stack, 127.0.0.1:17701: `cargo xtask services up redis-stack`): semantic hits carry
//! `x-litellm-semantic-similarity` and a `Cache-Status` saying so; the embedding model resolves
//! through `model_list`; shadow mode counts without serving; `type: local-semantic` needs no
//! server.

use std::time::Duration;

use cache_core::testing::service_unavailable;
use llm_cache_tests::{FakeUpstream, Proxy, config};
use serde_json::{Value, json};

const STACK: u16 = 17701;

/// Fails the test, naming the service and how to start it, when Redis Stack does not answer.
async fn require_stack() {
    if tokio::net::TcpStream::connect(("127.0.0.1", STACK))
        .await
        .is_err()
    {
        let _: Option<()> =
            service_unavailable("redis-stack", "nothing listens on 127.0.0.1:17701");
    }
}

fn params(index: &str, extra: &str) -> String {
    let ns = format!("proxy-semantic-{}-{index}", std::process::id());
    format!(
        "{{type: redis-semantic, host: 127.0.0.1, port: {STACK}, ttl: 120, namespace: {ns}, \
         similarity_threshold: 0.9, redis_semantic_cache_index_name: {index}{extra}}}"
    )
}

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

struct Answer {
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn ask(proxy: &Proxy, prompt: &str) -> Answer {
    let r = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat(prompt))
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success(), "{}", r.status());
    Answer {
        headers: r.headers().clone(),
        body: r.json().await.expect("json"),
    }
}

async fn metrics(proxy: &Proxy) -> String {
    reqwest::get(proxy.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
#[ignore = "needs the redis-stack test service: `cargo xtask services up redis-stack`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn semantic_hits_carry_the_similarity_and_cache_status() {
    require_stack().await;
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(
        &upstream,
        &params("llm_cache_proxy_local", ""),
        None,
    ))
    .await;
    let first = ask(&proxy, "How do I cancel my gym membership?").await;
    assert!(
        first.header("cache-status").contains("fwd=miss"),
        "{}",
        first.header("cache-status")
    );
    assert_eq!(upstream.chat_calls(), 1);
    settle().await;

    let similar = ask(&proxy, "how can i cancel my gym membership").await;
    assert_eq!(upstream.chat_calls(), 1, "served from the semantic cache");
    let status = similar.header("cache-status");
    assert!(
        status.contains("hit") && status.contains("detail=semantic"),
        "{status}"
    );
    let s: f32 = similar
        .header("x-litellm-semantic-similarity")
        .parse()
        .expect("x-litellm-semantic-similarity is a number");
    assert!((0.9..=1.0).contains(&s), "{s}");
    assert_eq!(similar.body["choices"], first.body["choices"]);

    let unrelated = ask(&proxy, "What's the best way to descale a kettle?").await;
    assert!(!unrelated.header("cache-status").contains("hit"));
    assert_eq!(upstream.chat_calls(), 2);
    // Another model never gets this model's answers.
    let r = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(&json!({"model": "text-test", "messages": [{"role": "user", "content": "how can i cancel my gym membership"}]}))
        .send()
        .await
        .expect("request");
    assert!(
        !r.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    let m = metrics(&proxy).await;
    assert!(
        m.contains("llm_cache_hits_total{tier=\"semantic\"} 1"),
        "{m}"
    );
    assert!(m.contains("llm_cache_semantic_hits_total 1"), "{m}");
}

#[tokio::test]
#[ignore = "needs the redis-stack test service: `cargo xtask services up redis-stack`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn the_embedding_model_resolves_through_model_list() {
    require_stack().await;
    let upstream = FakeUpstream::start().await;
    // `embed-test` is a model_list entry on the fake upstream (model `openai/fake-embed`, key
    // `sk-upstream`); its deterministic 3-dimension vectors depend on length and first letter.
    let proxy = Proxy::start(&config(
        &upstream,
        &params(
            "llm_cache_proxy_resolved",
            ", redis_semantic_cache_embedding_model: embed-test",
        ),
        None,
    ))
    .await;
    ask(&proxy, "How do I cancel my gym membership?").await;
    settle().await;
    let similar = ask(&proxy, "How do I cancel my gym membershiq?").await;
    assert!(
        similar.header("cache-status").contains("detail=semantic"),
        "{}",
        similar.header("cache-status")
    );
    assert_eq!(upstream.chat_calls(), 1);
    assert!(
        upstream.embedding_calls() >= 2,
        "the fake upstream embedded the prompts"
    );
    let bodies = upstream.bodies();
    let embed_bodies: Vec<&Value> = bodies.iter().filter(|b| b.get("input").is_some()).collect();
    assert!(!embed_bodies.is_empty());
    assert!(
        embed_bodies.iter().all(|b| b["model"] == "fake-embed"),
        "{embed_bodies:?}"
    );
    assert!(
        upstream
            .auth_headers()
            .iter()
            .all(|h| h.as_deref() == Some("Bearer sk-upstream")),
        "the model_list entry's key is used"
    );
}

#[tokio::test]
#[ignore = "needs the redis-stack test service: `cargo xtask services up redis-stack`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn shadow_mode_counts_and_serves_nothing() {
    require_stack().await;
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(
        &upstream,
        &params("llm_cache_proxy_shadow", ", semantic_shadow_mode: true"),
        None,
    ))
    .await;
    ask(&proxy, "How do I cancel my gym membership?").await;
    settle().await;
    let similar = ask(&proxy, "how can i cancel my gym membership").await;
    assert!(!similar.header("cache-status").contains("hit"));
    assert_eq!(upstream.chat_calls(), 2, "shadow mode never serves");
    // The exact repeat is still an exact hit.
    let exact = ask(&proxy, "How do I cancel my gym membership?").await;
    assert!(exact.header("cache-status").contains("hit"));
    let m = metrics(&proxy).await;
    assert!(m.contains("llm_cache_semantic_shadow_hits_total 1"), "{m}");
    assert!(m.contains("llm_cache_semantic_hits_total 0"), "{m}");
}

/// `type: local-semantic` needs no server: the proxy's in-process semantic cache.
#[tokio::test]
async fn local_semantic_needs_no_server() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(
        &upstream,
        "{type: local-semantic, similarity_threshold: 0.9}",
        None,
    ))
    .await;
    let first = ask(&proxy, "How do I cancel my gym membership?").await;
    assert!(!first.header("cache-status").contains("hit"));
    settle().await;
    let similar = ask(&proxy, "how can i cancel my gym membership").await;
    assert_eq!(upstream.chat_calls(), 1);
    assert!(
        similar.header("cache-status").contains("detail=semantic"),
        "{}",
        similar.header("cache-status")
    );
    let s: f32 = similar
        .header("x-litellm-semantic-similarity")
        .parse()
        .expect("similarity header");
    assert!(s >= 0.9, "{s}");
}
