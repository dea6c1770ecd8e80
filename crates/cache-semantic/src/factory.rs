//! The semantic `type`s' factories (see `cache_core::registry`): `local-semantic` (always),
//! `redis-semantic` (feature `redis-semantic`), `qdrant-semantic` (feature `qdrant-semantic`).
//!
//! Each builds two tiers: the exact tier (looked up first: the same Redis for
//! `redis-semantic`, process memory otherwise) and the semantic layer.

use std::sync::Arc;
#[cfg(any(feature = "redis-semantic", feature = "qdrant-semantic"))]
use std::time::Duration;

use cache_core::params::Params;
use cache_core::registry::{BackendFactory, BuildContext, MEMORY_KEYS, TypeProfile};
use cache_core::semantic::{Embedder, SemanticLayer};
use cache_core::{MemoryBackend, MemoryConfig, Result, SharedBackend, async_trait};

use crate::{MemorySemanticBackend, MemorySemanticConfig, SemanticCache, config};

/// Keys every semantic `type` reads (besides its model and store keys).
pub const COMMON_KEYS: &[&str] = &[
    "similarity_threshold",
    "semantic_cache_embedding_timeout",
    "semantic_cache_embedding_max_input_tokens",
    "semantic_cache_scope",
    "semantic_embedding_api_base",
    "semantic_embedding_api_key",
    "semantic_embedding_dimensions",
    "semantic_embed_all_messages",
    "semantic_guard",
    "semantic_shadow_mode",
];

/// LiteLLM keys of its `valkey-semantic` type: accepted with a warning.
pub const LITELLM_IGNORED_KEYS: &[&str] = &[
    "valkey_semantic_cache_embedding_model",
    "valkey_semantic_cache_index_name",
];

/// LiteLLM keys `redis-semantic` accepts with a warning: its Redis caches' and `valkey-semantic`'s.
#[cfg(feature = "redis-semantic")]
pub const REDIS_SEMANTIC_IGNORED_KEYS: &[&str] = &[
    "valkey_semantic_cache_embedding_model",
    "valkey_semantic_cache_index_name",
    "redis_flush_size",
    "gcp_service_account",
    "gcp_ssl_ca_certs",
    "health_check_interval",
    "ssl_cert_reqs",
    "retry_on_timeout",
    "socket_keepalive",
    "client_name",
];

/// Remote semantic stores answer in milliseconds, plus an embedding call.
#[cfg(any(feature = "redis-semantic", feature = "qdrant-semantic"))]
const REMOTE_READ_TIMEOUT: Duration = Duration::from_secs(1);

fn layer(
    params: &Params,
    backend: Arc<dyn cache_core::semantic::SemanticBackend>,
    embedder: Arc<dyn Embedder>,
) -> Result<Arc<dyn SemanticLayer>> {
    Ok(Arc::new(SemanticCache::new(
        embedder,
        backend,
        config::semantic_config(params)?,
    )))
}

fn embedder(params: &Params, model_key: &str, ctx: &BuildContext) -> Result<Arc<dyn Embedder>> {
    config::embedder(params, model_key, ctx.embedding_resolver.as_ref())
}

/// `type: local-semantic`: the in-process semantic index with an offline embedder (the bundled
/// one by default), the exact tier in memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSemanticFactory;

#[async_trait]
impl BackendFactory for LocalSemanticFactory {
    fn types(&self) -> &'static [&'static str] {
        &["local-semantic"]
    }

    fn keys(&self, _type_name: &str) -> Vec<&'static str> {
        let mut keys = COMMON_KEYS.to_vec();
        keys.extend([
            "semantic_cache_embedding_model",
            "semantic_cache_max_entries",
        ]);
        keys.extend(MEMORY_KEYS);
        keys
    }

    fn ignored_keys(&self, _type_name: &str) -> &'static [&'static str] {
        LITELLM_IGNORED_KEYS
    }

    fn profile(&self, _type_name: &str) -> TypeProfile {
        TypeProfile::new()
            .with_ttl_keys(&["default_in_memory_ttl"])
            .with_default_ttl(Some(cache_core::memory::DEFAULT_MEMORY_TTL))
            .in_memory()
    }

    fn validate(&self, _type_name: &str, params: &Params) -> Result<()> {
        config::semantic_config(params)?;
        MemoryConfig::from_params(params)?;
        params.u64("semantic_cache_max_entries").map(|_| ())
    }

    async fn build(&self, _: &str, params: &Params, _: &BuildContext) -> Result<SharedBackend> {
        Ok(Arc::new(MemoryBackend::new(local_exact_config(params)?)))
    }

    async fn build_semantic(
        &self,
        _: &str,
        params: &Params,
        ctx: &BuildContext,
    ) -> Result<Option<Arc<dyn SemanticLayer>>> {
        let key = "semantic_cache_embedding_model";
        let mut bounds = MemorySemanticConfig::default();
        if let Some(n) = params.u64("semantic_cache_max_entries")? {
            bounds = bounds.with_max_entries(n as usize);
        }
        let backend = Arc::new(MemorySemanticBackend::new(bounds));
        let configured = params.string(key)?.is_some_and(|m| !m.trim().is_empty());
        let default = if configured {
            None
        } else {
            config::local_default_embedder(|k| std::env::var(k).ok())?
        };
        // Configured, or no default in this build (the generic path names what to configure).
        let embedder = match default {
            Some(e) => e,
            None => embedder(params, key, ctx)?,
        };
        layer(params, backend, embedder).map(Some)
    }
}

/// The exact tier of `local-semantic`: sized like the semantic index (`semantic_cache_max_entries`,
/// default 100 000) unless `max_size_in_memory` says otherwise. With `type: local`'s default of
/// 200 items, an exact repeat of an older question fell through to the semantic index.
fn local_exact_config(params: &Params) -> Result<MemoryConfig> {
    let config = MemoryConfig::from_params(params)?;
    if params.u64("max_size_in_memory")?.is_some() {
        return Ok(config);
    }
    let entries = match params.u64("semantic_cache_max_entries")? {
        Some(n) => n.max(1),
        None => MemorySemanticConfig::default().max_entries as u64,
    };
    Ok(config.with_max_items(Some(entries)))
}

/// `type: redis-semantic`: a RediSearch vector index, the exact tier on the same Redis.
#[cfg(feature = "redis-semantic")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisSemanticFactory;

#[cfg(feature = "redis-semantic")]
#[async_trait]
impl BackendFactory for RedisSemanticFactory {
    fn types(&self) -> &'static [&'static str] {
        &["redis-semantic"]
    }

    fn keys(&self, _type_name: &str) -> Vec<&'static str> {
        let mut keys = COMMON_KEYS.to_vec();
        keys.extend([
            "redis_semantic_cache_embedding_model",
            "redis_semantic_cache_index_name",
            "redis_semantic_ef_runtime",
        ]);
        keys.extend(cache_redis::factory::KEYS);
        keys
    }

    fn ignored_keys(&self, _type_name: &str) -> &'static [&'static str] {
        REDIS_SEMANTIC_IGNORED_KEYS
    }

    fn profile(&self, _type_name: &str) -> TypeProfile {
        TypeProfile::new()
            .with_read_timeout(REMOTE_READ_TIMEOUT)
            .with_ttl_keys(cache_redis::factory::TTL_KEYS)
    }

    fn validate(&self, _type_name: &str, params: &Params) -> Result<()> {
        config::semantic_config(params)?;
        cache_redis::RedisConfig::from_params(params).map(|_| ())
    }

    async fn build(&self, _: &str, params: &Params, _: &BuildContext) -> Result<SharedBackend> {
        Ok(Arc::new(
            cache_redis::RedisBackend::from_params(params).await?,
        ))
    }

    async fn build_semantic(
        &self,
        _: &str,
        params: &Params,
        ctx: &BuildContext,
    ) -> Result<Option<Arc<dyn SemanticLayer>>> {
        let key = "redis_semantic_cache_embedding_model";
        let embedder = embedder(params, key, ctx)?;
        let backend =
            crate::redis::RedisSemanticBackend::from_params(params, embedder.dimensions()).await?;
        layer(params, Arc::new(backend), embedder).map(Some)
    }
}

/// `type: qdrant-semantic`: a Qdrant collection over gRPC, the exact tier in memory (Qdrant is
/// no key-value store).
#[cfg(feature = "qdrant-semantic")]
#[derive(Debug, Clone, Copy, Default)]
pub struct QdrantSemanticFactory;

#[cfg(feature = "qdrant-semantic")]
#[async_trait]
impl BackendFactory for QdrantSemanticFactory {
    fn types(&self) -> &'static [&'static str] {
        &["qdrant-semantic"]
    }

    fn keys(&self, _type_name: &str) -> Vec<&'static str> {
        let mut keys = COMMON_KEYS.to_vec();
        keys.extend([
            "qdrant_api_base",
            "qdrant_api_key",
            "qdrant_collection_name",
            "qdrant_quantization_config",
            "qdrant_semantic_cache_embedding_model",
            "qdrant_semantic_cache_vector_size",
            "qdrant_grpc_url",
            "qdrant_cleanup_interval",
            "qdrant_timeout",
        ]);
        keys.extend(MEMORY_KEYS);
        keys
    }

    fn ignored_keys(&self, _type_name: &str) -> &'static [&'static str] {
        LITELLM_IGNORED_KEYS
    }

    fn profile(&self, _type_name: &str) -> TypeProfile {
        TypeProfile::new()
            .with_read_timeout(REMOTE_READ_TIMEOUT)
            .in_memory()
    }

    fn validate(&self, _type_name: &str, params: &Params) -> Result<()> {
        config::semantic_config(params)?;
        MemoryConfig::from_params(params).map(|_| ())
    }

    async fn build(&self, _: &str, params: &Params, _: &BuildContext) -> Result<SharedBackend> {
        Ok(Arc::new(MemoryBackend::new(MemoryConfig::from_params(
            params,
        )?)))
    }

    async fn build_semantic(
        &self,
        _: &str,
        params: &Params,
        ctx: &BuildContext,
    ) -> Result<Option<Arc<dyn SemanticLayer>>> {
        let model_key = "qdrant_semantic_cache_embedding_model";
        let embedder = embedder(params, model_key, ctx)?;
        // A new collection gets the embedder's size unless one is configured; a configured
        // size that the embedder does not produce is an error now, not silent misses later.
        let key = "qdrant_semantic_cache_vector_size";
        let params = match (params.u64(key)?, embedder.dimensions()) {
            (Some(size), Some(dims)) if size as usize != dims => {
                return Err(params.error(
                    key,
                    format!(
                        "is {size}, but the embedding model `{}` produces {dims}-dimension vectors",
                        embedder.model()
                    ),
                ));
            }
            (None, Some(dims)) if std::env::var("QDRANT_VECTOR_SIZE").is_err() => {
                let mut map = params.map().clone();
                map.insert(key.to_owned(), serde_json::Value::from(dims as u64));
                Params::new(map, "cache_params")
            }
            _ => params.clone(),
        };
        let backend = crate::qdrant::QdrantBackend::from_params(&params).await?;
        layer(&params, Arc::new(backend), embedder).map(Some)
    }
}

#[cfg(test)]
mod local_tests {
    use super::*;
    use crate::config::tests::params;

    #[test]
    fn local_semantic_sizes_its_exact_tier_like_its_index() {
        let default = local_exact_config(&params(serde_json::json!({}))).unwrap();
        assert_eq!(default.max_items, Some(100_000));
        let sized = local_exact_config(&params(serde_json::json!({
            "semantic_cache_max_entries": 5000
        })))
        .unwrap();
        assert_eq!(sized.max_items, Some(5000));
        let explicit = local_exact_config(&params(serde_json::json!({
            "semantic_cache_max_entries": 5000,
            "max_size_in_memory": 300
        })))
        .unwrap();
        assert_eq!(explicit.max_items, Some(300));
    }
}

#[cfg(all(test, feature = "redis-semantic"))]
mod tests {
    #[test]
    fn redis_semantic_ignores_what_redis_and_valkey_ignore() {
        for k in cache_redis::factory::LITELLM_IGNORED_KEYS
            .iter()
            .chain(super::LITELLM_IGNORED_KEYS)
        {
            assert!(super::REDIS_SEMANTIC_IGNORED_KEYS.contains(k), "{k}");
        }
    }
}
