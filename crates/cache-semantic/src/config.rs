//! Reading the semantic settings from LiteLLM-style `cache_params`.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `similarity_threshold` | lowest cosine similarity in [0, 1] that is a hit | required |
//! | `redis_semantic_cache_embedding_model` / `qdrant_semantic_cache_embedding_model` | embedding model (below) | the bundled potion-base-2M |
//! | `semantic_embedding_api_base`, `semantic_embedding_api_key` | an OpenAI-compatible endpoint for that model | `OPENAI_API_BASE`/`OPENAI_BASE_URL`, `OPENAI_API_KEY` |
//! | `semantic_embedding_dimensions` | `dimensions` sent to the API, and the expected size | the model's |
//! | `semantic_cache_embedding_timeout` | deadline of the embedding call *and* of the whole semantic lookup (seconds) | 1 |
//! | `semantic_cache_embedding_max_input_tokens` | longest text embedded (≈ 4 characters a token) | no limit |
//! | `semantic_embed_all_messages` | embed every message (LiteLLM) instead of the last user message | false |
//! | `semantic_guard` | `true` / `false` / `strict` (the guard and verifier; `strict` also rejects a substituted verb) | true |
//! | `semantic_shadow_mode` | count and log would-be hits, serve none | false |
//! | `semantic_cache_scope` | LiteLLM's `key` / `end_user`: both accepted; the tenant partition and the request's `user` are always in the scope | `key` |
//!
//! The embedding model: empty, `local`, `potion-base-2M` or `minishlab/potion-base-2M` select the
//! bundled offline model; `local/<folder>` loads a model2vec model from a folder; `bert/<folder>`
//! a sentence-transformers BERT model (feature `bert`); anything else
//! is an OpenAI-compatible model name — resolved first through the caller's resolver (the proxy
//! resolves it through its `model_list`, as LiteLLM does), else sent to
//! `semantic_embedding_api_base` (or OpenAI), with an `openai/` prefix stripped.

#[cfg(any(feature = "local-model", feature = "bert"))]
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::semantic::Embedder;
use cache_core::{CacheError, Result};

#[cfg(feature = "local-model")]
use crate::embed::LocalEmbedder;
use crate::embed::{HttpEmbedder, HttpEmbedderConfig};
use crate::guard::GuardConfig;
use crate::layer::SemanticConfig;
use crate::text::EmbedMode;

/// Environment variable naming the all-MiniLM-L6-v2 folder (`config.json`, `tokenizer.json`,
/// `model.safetensors`). Default: `$HOME/.cache/llm-cache/all-MiniLM-L6-v2`.
pub const MINILM_DIR_ENV: &str = "LLM_CACHE_BERT_MODEL_DIR";

/// Names that select all-MiniLM-L6-v2 from [`MINILM_DIR_ENV`] (feature `bert`).
pub const MINILM_ALIASES: &[&str] = &[
    "minilm",
    "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2",
];

/// Where all-MiniLM-L6-v2's files are looked for: [`MINILM_DIR_ENV`], else
/// `$HOME/.cache/llm-cache/all-MiniLM-L6-v2`.
pub fn minilm_dir(env: impl Fn(&str) -> Option<String>) -> Option<std::path::PathBuf> {
    if let Some(dir) = env(MINILM_DIR_ENV).filter(|d| !d.trim().is_empty()) {
        return Some(dir.into());
    }
    env("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/llm-cache/all-MiniLM-L6-v2"))
}

/// Loads a BERT model folder once per process: every cache built from it (one per tenant, one
/// per configuration reload) shares the weights instead of holding its own copy.
#[cfg(feature = "bert")]
fn load_bert(dir: &Path) -> Result<crate::embed::BertEmbedder> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static LOADED: OnceLock<Mutex<HashMap<std::path::PathBuf, crate::embed::BertEmbedder>>> =
        OnceLock::new();
    let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let loaded = LOADED.get_or_init(Default::default);
    if let Some(e) = loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(e.clone());
    }
    // Loading takes a while: not under the lock (two first loads at once both load).
    let e = crate::embed::BertEmbedder::from_folder(dir)?;
    loaded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, e.clone());
    Ok(e)
}

/// The embedder `local-semantic` uses when none is configured: all-MiniLM-L6-v2 when this build
/// has the feature `bert` and the model's files are in [`minilm_dir`] (it separates paraphrases
/// from traps best: docs/benchmarks.md), else the bundled potion-base-2M. `None` when neither
/// is available (a build without `local-model` and `bert`).
///
/// # Errors
/// [`CacheError::Config`] when the folder holds `model.safetensors` but does not load.
pub fn local_default_embedder(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn Embedder>>> {
    let dir = minilm_dir(env).filter(|d| d.join("model.safetensors").exists());
    #[cfg(feature = "bert")]
    if let Some(dir) = &dir {
        let e = load_bert(dir)?;
        tracing::info!(folder = %dir.display(), "local-semantic embeds with all-MiniLM-L6-v2");
        return Ok(Some(Arc::new(e)));
    }
    #[cfg(not(feature = "bert"))]
    if let Some(dir) = &dir {
        tracing::info!(
            folder = %dir.display(),
            "all-MiniLM-L6-v2 files found, but this build has no `bert` feature: \
             local-semantic uses the bundled potion-base-2M"
        );
    }
    #[cfg(feature = "local-model")]
    return Ok(Some(Arc::new(LocalEmbedder::potion_base_2m()?)));
    #[cfg(not(feature = "local-model"))]
    Ok(None)
}

/// Resolves an embedding model name to an endpoint (the proxy's `model_list`). `None`: not a
/// known name, use the parameters. The one endpoint type is `cache-core`'s.
pub use cache_core::semantic::EmbeddingResolver;

/// Default deadline of an embedding call (and of the semantic lookup).
pub const DEFAULT_EMBEDDING_TIMEOUT: Duration = Duration::from_secs(1);

/// The layer's policy from `cache_params`.
///
/// # Errors
/// [`CacheError::Config`] naming the key: a missing or out-of-range `similarity_threshold`, a
/// wrong type.
pub fn semantic_config(params: &Params) -> Result<SemanticConfig> {
    let threshold = match params.f64("similarity_threshold")? {
        Some(t) => t,
        None => {
            return Err(params.error(
                "similarity_threshold",
                "is required for semantic caching: the lowest cosine similarity in [0, 1] that \
                 counts as a hit (e.g. 0.9; LiteLLM's redis/qdrant semantic caches require it too)",
            ));
        }
    };
    if !(0.0..=1.0).contains(&threshold) {
        return Err(params.error(
            "similarity_threshold",
            format!(
                "expected a cosine similarity between 0 and 1, got {threshold} (it is a similarity, \
                 higher = stricter; RediSearch's distance is 1 - similarity)"
            ),
        ));
    }
    let guard = match params.get("semantic_guard") {
        None | Some(serde_json::Value::Null) => GuardConfig::default(),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("strict") => {
            GuardConfig::strict()
        }
        Some(_) => match params
            .bool("semantic_guard")
            .map_err(|_| params.error("semantic_guard", "expected true, false or `strict`"))?
        {
            Some(false) => GuardConfig::off(),
            _ => GuardConfig::default(),
        },
    };
    let mode = if params.bool("semantic_embed_all_messages")?.unwrap_or(false) {
        EmbedMode::AllMessages
    } else {
        EmbedMode::LastUserMessage
    };
    match params.string("semantic_cache_scope")?.as_deref() {
        // The tenant partition and the request's `user` (a keyed parameter) are always part
        // of the scope, which covers both of LiteLLM's values.
        None | Some("key" | "end_user") => {}
        Some(other) => {
            return Err(params.error(
                "semantic_cache_scope",
                format!("expected `key` or `end_user` (LiteLLM's values), got `{other}`"),
            ));
        }
    }
    let max_chars = params
        .u64("semantic_cache_embedding_max_input_tokens")?
        .map(|t| (t as usize).saturating_mul(4));
    Ok(SemanticConfig::new(threshold as f32)?
        .with_embed_mode(mode)
        .with_guard(guard)
        .with_shadow_mode(params.bool("semantic_shadow_mode")?.unwrap_or(false))
        .with_max_text_chars(max_chars))
}

/// The embedding deadline (`semantic_cache_embedding_timeout`).
///
/// # Errors
/// A wrong type, naming the key.
pub fn embedding_timeout(params: &Params) -> Result<Duration> {
    Ok(params
        .seconds("semantic_cache_embedding_timeout")?
        .unwrap_or(DEFAULT_EMBEDDING_TIMEOUT))
}

/// The embedder named by `model_key` (`redis_semantic_cache_embedding_model`, ...).
///
/// # Errors
/// [`CacheError::Config`] naming the key for a wrong type, an unreadable local model folder, or
/// an unusable API base.
pub fn embedder(
    params: &Params,
    model_key: &str,
    resolver: Option<&EmbeddingResolver>,
) -> Result<Arc<dyn Embedder>> {
    embedder_with_env(params, model_key, resolver, |k| std::env::var(k).ok())
}

/// As [`embedder`], reading environment variables through `env`.
///
/// # Errors
/// As [`embedder`].
pub fn embedder_with_env(
    params: &Params,
    model_key: &str,
    resolver: Option<&EmbeddingResolver>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Embedder>> {
    let model = params.string(model_key)?.filter(|m| !m.trim().is_empty());
    let timeout = embedding_timeout(params)?;
    let dims = params
        .u64("semantic_embedding_dimensions")?
        .map(|d| d as usize);
    let Some(model) = model else {
        #[cfg(feature = "local-model")]
        return Ok(Arc::new(LocalEmbedder::potion_base_2m()?));
        #[cfg(not(feature = "local-model"))]
        return Err(params.error(
            model_key,
            "no embedding model configured, and this build has no bundled one: name an \
             OpenAI-compatible embedding model (or a model_list entry), or enable the cargo \
             feature `local-model` of cache-semantic (llm-cache's semantic features do)",
        ));
    };
    #[cfg(feature = "local-model")]
    if LocalEmbedder::ALIASES.contains(&model.as_str()) {
        return Ok(Arc::new(LocalEmbedder::potion_base_2m()?));
    }
    if MINILM_ALIASES.contains(&model.as_str()) {
        let dir = minilm_dir(&env).ok_or_else(|| {
            params.error(
                model_key,
                format!("`{model}`: set {MINILM_DIR_ENV} to its folder"),
            )
        })?;
        #[cfg(feature = "bert")]
        return load_bert(&dir)
            .map(|e| Arc::new(e) as Arc<dyn Embedder>)
            .map_err(|e| {
                params.error(
                    model_key,
                    format!(
                        "{e} (put all-MiniLM-L6-v2's config.json, tokenizer.json and \
                         model.safetensors there, or set {MINILM_DIR_ENV}: see \
                         docs/backends/semantic.md)"
                    ),
                )
            });
        #[cfg(not(feature = "bert"))]
        return Err(params.error(
            model_key,
            format!(
                "`{model}` ({}) needs the cargo feature `bert` of cache-semantic, which this \
                 build does not have",
                dir.display()
            ),
        ));
    }
    if let Some(folder) = model.strip_prefix("bert/") {
        #[cfg(feature = "bert")]
        return load_bert(Path::new(folder))
            .map(|e| Arc::new(e) as Arc<dyn Embedder>)
            .map_err(|e| params.error(model_key, e));
        #[cfg(not(feature = "bert"))]
        return Err(params.error(
            model_key,
            format!(
                "`bert/{folder}` needs the cargo feature `bert` of cache-semantic (a local BERT \
                 model on candle), which this build does not have"
            ),
        ));
    }
    if let Some(folder) = model.strip_prefix("local/") {
        #[cfg(feature = "local-model")]
        return LocalEmbedder::from_folder(Path::new(folder))
            .map(|e| Arc::new(e) as Arc<dyn Embedder>)
            .map_err(|e| params.error(model_key, e));
        #[cfg(not(feature = "local-model"))]
        return Err(params.error(
            model_key,
            format!(
                "`local/{folder}` needs the cargo feature `local-model` of cache-semantic, \
                 which this build does not have"
            ),
        ));
    }
    let explicit_base = params.string("semantic_embedding_api_base")?;
    let explicit_key = params.string("semantic_embedding_api_key")?;
    let config = match (explicit_base, resolver.and_then(|r| r(&model))) {
        (None, Some(resolved)) => HttpEmbedderConfig::from_endpoint(resolved),
        (base, _) => {
            let base = base
                .or_else(|| env("OPENAI_API_BASE"))
                .or_else(|| env("OPENAI_BASE_URL"))
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
            let name = model.strip_prefix("openai/").unwrap_or(&model);
            HttpEmbedderConfig::new(base, name)
                .with_api_key(explicit_key.clone().or_else(|| env("OPENAI_API_KEY")))
        }
    };
    let mut config = config.with_timeout(timeout);
    if dims.is_some() {
        config = config.with_dimensions(dims);
    }
    if let Some(key) = explicit_key {
        config = config.with_api_key(Some(key));
    }
    HttpEmbedder::new(config)
        .map(|e| Arc::new(e) as Arc<dyn Embedder>)
        .map_err(|e| match e {
            CacheError::Config(m) => params.error(model_key, m),
            other => other,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// `cache_params` from a JSON object (shared with the factory's tests).
    pub(crate) fn params(v: serde_json::Value) -> Params {
        match v {
            serde_json::Value::Object(m) => Params::new(m, "cache_params"),
            _ => unreachable!(),
        }
    }

    #[test]
    fn local_semantic_defaults_to_minilm_only_where_its_files_are() {
        let empty =
            std::env::temp_dir().join(format!("llm-cache-no-minilm-{}", std::process::id()));
        let env = |dir: std::path::PathBuf| {
            move |k: &str| (k == MINILM_DIR_ENV).then(|| dir.display().to_string())
        };
        assert_eq!(
            minilm_dir(env(empty.clone())).as_deref(),
            Some(empty.as_path())
        );
        assert_eq!(
            minilm_dir(|k| (k == "HOME").then(|| "/home/u".to_owned())),
            Some("/home/u/.cache/llm-cache/all-MiniLM-L6-v2".into())
        );
        // No files: the bundled model (in builds that have it).
        let e = local_default_embedder(env(empty.clone())).expect("no error");
        #[cfg(feature = "local-model")]
        assert_eq!(e.expect("bundled").model(), LocalEmbedder::POTION_BASE_2M);
        #[cfg(not(feature = "local-model"))]
        assert!(e.is_none());
        // A folder whose weights do not load is a clear error in builds that can load them.
        let broken =
            std::env::temp_dir().join(format!("llm-cache-bad-minilm-{}", std::process::id()));
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("model.safetensors"), b"not a model").unwrap();
        let r = local_default_embedder(env(broken.clone()));
        #[cfg(feature = "bert")]
        assert!(
            r.as_ref()
                .is_err_and(|e| e.to_string().contains("llm-cache-bad-minilm")),
            "{:?}",
            r.as_ref().map(|e| e.as_ref().map(|e| e.model().to_owned()))
        );
        #[cfg(not(feature = "bert"))]
        assert!(r.is_ok());
        // Named explicitly and missing: the error says where it looked and how to set it.
        let err = embedder_with_env(
            &params(json!({"semantic_cache_embedding_model": "minilm"})),
            "semantic_cache_embedding_model",
            None,
            env(empty.clone()),
        )
        .expect_err("no files")
        .to_string();
        assert!(err.contains("semantic_cache_embedding_model"), "{err}");
        #[cfg(feature = "bert")]
        assert!(err.contains(MINILM_DIR_ENV), "{err}");
        std::fs::remove_dir_all(&broken).unwrap();
    }

    #[test]
    fn threshold_is_required_and_bounded() {
        let err = semantic_config(&params(json!({}))).unwrap_err().to_string();
        assert!(err.contains("cache_params.similarity_threshold"), "{err}");
        let err = semantic_config(&params(json!({"similarity_threshold": 1.5})))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("similarity_threshold") && err.contains("1.5"),
            "{err}"
        );
        let err = semantic_config(&params(json!({"similarity_threshold": "high"})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("similarity_threshold"), "{err}");
        let c = semantic_config(&params(json!({
            "similarity_threshold": 0.8,
            "semantic_guard": "strict",
            "semantic_shadow_mode": true,
            "semantic_embed_all_messages": true,
            "semantic_cache_embedding_max_input_tokens": 100
        })))
        .unwrap();
        assert_eq!(c.similarity_threshold, 0.8);
        assert_eq!(c.guard, GuardConfig::strict());
        assert!(c.shadow_mode);
        assert_eq!(c.embed_mode, EmbedMode::AllMessages);
        assert_eq!(c.max_text_chars, Some(400));
        let c = semantic_config(&params(
            json!({"similarity_threshold": 1, "semantic_guard": false}),
        ))
        .unwrap();
        assert_eq!(c.guard, GuardConfig::off());
        let err = semantic_config(&params(
            json!({"similarity_threshold": 0.9, "semantic_guard": "maybe"}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("semantic_guard"), "{err}");
    }

    #[test]
    fn embedder_selection() {
        let none = |_: &str| None;
        let e = embedder_with_env(&params(json!({})), "m", None, none).unwrap();
        assert_eq!(e.model(), LocalEmbedder::POTION_BASE_2M);
        assert_eq!(e.dimensions(), Some(64));
        let e =
            embedder_with_env(&params(json!({"m": "potion-base-2M"})), "m", None, none).unwrap();
        assert_eq!(e.model(), LocalEmbedder::POTION_BASE_2M);
        let err = embedder_with_env(
            &params(json!({"m": "local/does/not/exist"})),
            "m",
            None,
            none,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cache_params.m") && err.contains("does/not/exist"),
            "{err}"
        );
        let e = embedder_with_env(
            &params(
                json!({"m": "openai/text-embedding-3-small", "semantic_embedding_dimensions": 256}),
            ),
            "m",
            None,
            |k| (k == "OPENAI_API_KEY").then(|| "sk-x".to_owned()),
        )
        .unwrap();
        assert_eq!(e.model(), "text-embedding-3-small");
        assert_eq!(e.dimensions(), Some(256));
        assert!(!format!("{e:?}").contains("sk-x"));
        // The resolver wins over the OpenAI default, an explicit api base wins over the resolver.
        let resolver: EmbeddingResolver = std::sync::Arc::new(|name: &str| {
            (name == "my-embed").then(|| {
                cache_core::semantic::EmbeddingEndpoint::new("http://127.0.0.1:9/v1", "e5")
            })
        });
        let resolver = &resolver;
        let e = embedder_with_env(&params(json!({"m": "my-embed"})), "m", Some(resolver), none)
            .unwrap();
        assert_eq!(e.model(), "e5");
        let e = embedder_with_env(
            &params(
                json!({"m": "my-embed", "semantic_embedding_api_base": "http://127.0.0.1:8/v1"}),
            ),
            "m",
            Some(resolver),
            none,
        )
        .unwrap();
        assert_eq!(e.model(), "my-embed");
        let err = embedder_with_env(
            &params(json!({"m": "x", "semantic_embedding_api_base": "localhost:8"})),
            "m",
            None,
            none,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cache_params.m"), "{err}");
    }
}
