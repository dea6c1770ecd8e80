//! `type` → backend. Each backend is behind its cargo feature; asking for one that is not
//! compiled in is an error naming the feature.

use std::sync::Arc;

use cache_core::semantic::SemanticLayer;
use cache_core::{CacheError, Result, SharedBackend};

use crate::config::CacheConfig;

/// The error for a backend whose feature is off.
pub(crate) fn feature_off(backend_type: &str, feature: &str) -> CacheError {
    CacheError::Config(format!(
        "cache_params.type: `{backend_type}` needs the cargo feature `{feature}` of the llm-cache crate, \
         which this build does not have (enable `{feature}` or `full`; the llm-cache binary has them all)"
    ))
}

pub(crate) async fn build(config: &CacheConfig) -> Result<SharedBackend> {
    match config.backend_type() {
        "local" => Ok(Arc::new(config.memory_backend()?)),
        #[cfg(feature = "disk")]
        "disk" => Ok(Arc::new(
            cache_disk::DiskBackend::open_async(cache_disk::DiskConfig::from_params(
                config.params(),
            )?)
            .await?,
        )),
        #[cfg(feature = "redis")]
        "redis" => Ok(Arc::new(
            cache_redis::RedisBackend::from_params(config.params()).await?,
        )),
        #[cfg(feature = "s3")]
        "s3" => Ok(Arc::new(
            cache_object_store::from_params("s3", config.params()).await?,
        )),
        #[cfg(feature = "gcs")]
        "gcs" => Ok(Arc::new(
            cache_object_store::from_params("gcs", config.params()).await?,
        )),
        #[cfg(feature = "azure")]
        "azure-blob" => Ok(Arc::new(
            cache_object_store::from_params("azure-blob", config.params()).await?,
        )),
        // Semantic types: the exact tier (looked up first) is the same Redis...
        #[cfg(feature = "redis-semantic")]
        "redis-semantic" => Ok(Arc::new(
            cache_redis::RedisBackend::from_params(config.params()).await?,
        )),
        // ... and in memory for Qdrant (which is no key-value store) and the in-process index.
        #[cfg(feature = "qdrant-semantic")]
        "qdrant-semantic" => Ok(Arc::new(config.memory_backend()?)),
        #[cfg(feature = "local-semantic")]
        "local-semantic" => Ok(Arc::new(config.memory_backend()?)),
        other => Err(feature_off(other, feature_of(other))),
    }
}

/// The semantic layer for semantic types (`None` for exact types).
pub(crate) async fn build_semantic(config: &CacheConfig) -> Result<Option<Arc<dyn SemanticLayer>>> {
    build_semantic_with(config, None).await
}

/// [`build_semantic`] with the embedding model resolved through `resolver` first (the proxy's
/// `model_list`).
#[allow(unused_variables)]
pub(crate) async fn build_semantic_with(
    config: &CacheConfig,
    resolver: Option<crate::EmbeddingResolver>,
) -> Result<Option<Arc<dyn SemanticLayer>>> {
    match config.backend_type() {
        #[cfg(feature = "redis-semantic")]
        "redis-semantic" => {
            let p = config.params();
            let policy = cache_semantic::config::semantic_config(p)?;
            let embedder = semantic_embedder(p, "redis_semantic_cache_embedding_model", resolver)?;
            let backend =
                cache_semantic::redis::RedisSemanticBackend::from_params(p, embedder.dimensions())
                    .await?;
            Ok(Some(Arc::new(cache_semantic::SemanticCache::new(
                embedder,
                Arc::new(backend),
                policy,
            ))))
        }
        #[cfg(feature = "qdrant-semantic")]
        "qdrant-semantic" => {
            let p = config.params();
            let policy = cache_semantic::config::semantic_config(p)?;
            let embedder = semantic_embedder(p, "qdrant_semantic_cache_embedding_model", resolver)?;
            // A new collection gets the embedder's size unless one is configured; a configured
            // size that the embedder does not produce is an error now, not silent misses later.
            let key = "qdrant_semantic_cache_vector_size";
            let params = match (p.u64(key)?, embedder.dimensions()) {
                (Some(size), Some(dims)) if size as usize != dims => {
                    return Err(p.error(
                        key,
                        format!(
                            "is {size}, but the embedding model `{}` produces {dims}-dimension vectors",
                            embedder.model()
                        ),
                    ));
                }
                (None, Some(dims)) if std::env::var("QDRANT_VECTOR_SIZE").is_err() => {
                    let mut map = p.map().clone();
                    map.insert(key.to_owned(), serde_json::Value::from(dims as u64));
                    cache_core::params::Params::new(map, "cache_params")
                }
                _ => p.clone(),
            };
            let backend = cache_semantic::qdrant::QdrantBackend::from_params(&params).await?;
            Ok(Some(Arc::new(cache_semantic::SemanticCache::new(
                embedder,
                Arc::new(backend),
                policy,
            ))))
        }
        #[cfg(feature = "local-semantic")]
        "local-semantic" => {
            let p = config.params();
            let policy = cache_semantic::config::semantic_config(p)?;
            let embedder = semantic_embedder(p, "semantic_cache_embedding_model", resolver)?;
            let mut bounds = cache_semantic::MemorySemanticConfig::default();
            if let Some(n) = p.u64("semantic_cache_max_entries")? {
                bounds = bounds.with_max_entries(n as usize);
            }
            Ok(Some(Arc::new(cache_semantic::SemanticCache::new(
                embedder,
                Arc::new(cache_semantic::MemorySemanticBackend::new(bounds)),
                policy,
            ))))
        }
        #[cfg(not(feature = "local-semantic"))]
        "local-semantic" => Err(feature_off("local-semantic", "local-semantic")),
        #[cfg(not(feature = "redis-semantic"))]
        "redis-semantic" => Err(feature_off("redis-semantic", "redis-semantic")),
        #[cfg(not(feature = "qdrant-semantic"))]
        "qdrant-semantic" => Err(feature_off("qdrant-semantic", "qdrant-semantic")),
        _ => Ok(None),
    }
}

/// The embedder of a semantic type: a resolved `model_list` entry, the bundled local model, or
/// an OpenAI-compatible API (see `cache_semantic::config`).
#[cfg(any(
    feature = "redis-semantic",
    feature = "qdrant-semantic",
    feature = "local-semantic"
))]
fn semantic_embedder(
    params: &cache_core::params::Params,
    model_key: &str,
    resolver: Option<crate::EmbeddingResolver>,
) -> Result<Arc<dyn cache_core::semantic::Embedder>> {
    let resolve = resolver.map(|r| {
        move |name: &str| {
            r(name).map(|e| {
                let mut c = cache_semantic::HttpEmbedderConfig::new(e.api_base, e.model)
                    .with_api_key(e.api_key)
                    .with_azure(e.azure);
                for (k, v) in e.headers {
                    c = c.with_header(k, v);
                }
                for (k, v) in e.query {
                    c = c.with_query(k, v);
                }
                c
            })
        }
    });
    cache_semantic::config::embedder(
        params,
        model_key,
        resolve
            .as_ref()
            .map(|f| f as &cache_semantic::config::EmbeddingResolver),
    )
}

/// The `type`s this build can construct (each backend's arm adds its types under its feature).
pub fn available_types() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut types = vec!["local"];
    // One line per backend feature, e.g. `#[cfg(feature = "disk")] types.push("disk");`
    #[cfg(feature = "disk")]
    types.push("disk");
    #[cfg(feature = "redis")]
    types.push("redis");
    #[cfg(feature = "s3")]
    types.push("s3");
    #[cfg(feature = "gcs")]
    types.push("gcs");
    #[cfg(feature = "azure")]
    types.push("azure-blob");
    #[cfg(feature = "redis-semantic")]
    types.push("redis-semantic");
    #[cfg(feature = "qdrant-semantic")]
    types.push("qdrant-semantic");
    #[cfg(feature = "local-semantic")]
    types.push("local-semantic");
    types
}

/// The cargo feature that provides a `type`.
pub fn feature_of(backend_type: &str) -> &'static str {
    match backend_type {
        "redis" => "redis",
        "disk" => "disk",
        "s3" => "s3",
        "gcs" => "gcs",
        "azure-blob" => "azure",
        "redis-semantic" => "redis-semantic",
        "qdrant-semantic" => "qdrant-semantic",
        "local-semantic" => "local-semantic",
        _ => "default",
    }
}
