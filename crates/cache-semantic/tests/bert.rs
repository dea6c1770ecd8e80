//! The `bert` embedder with all-MiniLM-L6-v2 (384 dimensions), whose files `cargo xtask services
//! up minilm` fetches into `.test-services/minilm/all-MiniLM-L6-v2` (or `LLM_CACHE_BERT_MODEL_DIR`).

use std::path::PathBuf;
use std::sync::Arc;

use cache_core::semantic::{Embedder, SemanticLayer, SemanticRequest};
use cache_core::testing::{runtime, service_unavailable};
use cache_core::{Bytes, CallKind};
use cache_semantic::embed::{BertEmbedder, cosine};
use cache_semantic::{MemorySemanticBackend, SemanticCache, SemanticConfig};
use serde_json::json;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var("LLM_CACHE_BERT_MODEL_DIR").map_or_else(
        |_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.test-services/minilm/all-MiniLM-L6-v2")
        },
        PathBuf::from,
    );
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    service_unavailable(
        "minilm",
        &format!("no all-MiniLM-L6-v2 files in {}", dir.display()),
    )
}

fn texts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
#[ignore = "needs the minilm test service: `cargo xtask services up minilm`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn minilm_embeds_meaning() {
    runtime().block_on(async {
        let Some(dir) = model_dir() else { return };
        let e = BertEmbedder::from_folder(&dir).expect("load");
        assert_eq!(e.dimensions(), Some(384));
        assert_eq!(e.model(), "bert/all-MiniLM-L6-v2");
        let v = e
            .embed(&texts(&[
                "How do I cancel my gym membership?",
                "how can i cancel my gym membership",
                "What is the capital of Peru?",
                "",
            ]))
            .await
            .expect("embed");
        assert_eq!(v.len(), 4);
        for x in &v {
            assert_eq!(x.len(), 384);
            let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        }
        let para = cosine(&v[0], &v[1]);
        let unrelated = cosine(&v[0], &v[2]);
        assert!(para > 0.9, "paraphrase {para}");
        assert!(unrelated < 0.3, "unrelated {unrelated}");
        // One text alone or in a batch: the same vector (no padding enters the mean).
        let alone = e
            .embed(&texts(&["How do I cancel my gym membership?"]))
            .await
            .expect("embed");
        assert!(cosine(&alone[0], &v[0]) > 0.99999);
    });
}

#[test]
#[ignore = "needs the minilm test service: `cargo xtask services up minilm`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn minilm_serves_semantic_hits() {
    runtime().block_on(async {
        let Some(dir) = model_dir() else { return };
        let layer = SemanticCache::new(
            Arc::new(BertEmbedder::from_folder(&dir).expect("load")),
            Arc::new(MemorySemanticBackend::default()),
            SemanticConfig::new(0.85).expect("threshold"),
        );
        let ask = |q: &str| json!({"model": "m", "messages": [{"role": "user", "content": q}]});
        let (stored, similar, other) = (
            ask("How do I cancel my gym membership?"),
            ask("how can i cancel my gym membership"),
            ask("What is the capital of Peru?"),
        );
        let req = |v| SemanticRequest::new(CallKind::Chat, v, None, Some("bert"), None);
        layer
            .store(&req(&stored), Bytes::from_static(b"{}"), None)
            .await
            .expect("store");
        let hit = layer.lookup(&req(&similar)).await.expect("lookup");
        assert!(hit.is_some_and(|h| h.similarity > 0.85));
        assert!(layer.lookup(&req(&other)).await.expect("lookup").is_none());
    });
}

#[test]
fn a_missing_folder_is_a_clear_error() {
    let err = BertEmbedder::from_folder(std::path::Path::new("/nonexistent/minilm"))
        .expect_err("no files")
        .to_string();
    assert!(
        err.contains("/nonexistent/minilm") && err.contains("config.json"),
        "{err}"
    );
}

/// The scores sentence-transformers documents for all-MiniLM-L6-v2 (sbert.net, "Semantic
/// Textual Similarity"): the candle pipeline reproduces them.
#[test]
#[ignore = "needs the minilm test service: `cargo xtask services up minilm`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn minilm_matches_sentence_transformers_reference_scores() {
    runtime().block_on(async {
        let Some(dir) = model_dir() else { return };
        let e = BertEmbedder::from_folder(&dir).expect("load");
        for (a, b, want) in [
            (
                "The cat sits outside",
                "The dog plays in the garden",
                0.2838f32,
            ),
            ("A man is playing guitar", "A woman watches TV", -0.0327),
            (
                "The new movie is awesome",
                "The new movie is so great",
                0.8939,
            ),
        ] {
            let v = e.embed(&texts(&[a, b])).await.expect("embed");
            let got = cache_semantic::embed::dot(&v[0], &v[1]);
            assert!(
                (got - want).abs() < 0.005,
                "{a} / {b}: {got}, reference {want}"
            );
        }
    });
}

/// `local-semantic` with no embedding model configured picks all-MiniLM-L6-v2 when its files
/// are in `LLM_CACHE_BERT_MODEL_DIR`, and the verifier serves a misspelt repeat below the
/// documented threshold for MiniLM (0.75) while rejecting a swapped possessor.
#[test]
#[ignore = "needs the minilm test service: `cargo xtask services up minilm`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn local_semantic_defaults_to_minilm_when_its_files_are_there() {
    runtime().block_on(async {
        let Some(dir) = model_dir() else { return };
        let path = dir.display().to_string();
        let env = |k: &str| (k == cache_semantic::config::MINILM_DIR_ENV).then(|| path.clone());
        let embedder = cache_semantic::config::local_default_embedder(env)
            .expect("loads")
            .expect("an embedder");
        assert_eq!(embedder.model(), "bert/all-MiniLM-L6-v2");
        let layer = SemanticCache::new(
            embedder,
            Arc::new(MemorySemanticBackend::default()),
            SemanticConfig::new(0.75).expect("threshold"),
        );
        let ask = |q: &str| json!({"model": "m", "messages": [{"role": "user", "content": q}]});
        let req = |v| SemanticRequest::new(CallKind::Chat, v, None, Some("default"), None);
        let stored = ask("How do I renew my parking permit?");
        layer
            .store(&req(&stored), Bytes::from_static(b"{}"), None)
            .await
            .expect("store");
        let typo = ask("hi, how do i renew my parkng permmit please");
        assert!(layer.lookup(&req(&typo)).await.expect("lookup").is_some());
        let other = ask("How do I renew my neighbour's parking permit?");
        assert!(layer.lookup(&req(&other)).await.expect("lookup").is_none());
    });
}
