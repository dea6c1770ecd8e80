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
        other => Err(feature_off(other, feature_of(other))),
    }
}

/// The semantic layer for semantic types (`None` for exact types).
pub(crate) async fn build_semantic(config: &CacheConfig) -> Result<Option<Arc<dyn SemanticLayer>>> {
    match config.backend_type() {
        "redis-semantic" | "qdrant-semantic" => Err(feature_off(
            config.backend_type(),
            feature_of(config.backend_type()),
        )),
        _ => Ok(None),
    }
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
        _ => "default",
    }
}
