//! Resolving the semantic cache's embedding model through the caller's model list.
//!
//! LiteLLM's proxy sends the semantic cache's embedding call through its router, so
//! `redis_semantic_cache_embedding_model: my-embedder` uses the `model_list` entry named
//! `my-embedder` (its `api_base`, `api_key`, ...). [`CacheConfig::build_with_embedding_resolver`]
//! does the same: the proxy passes a resolver over its `model_list`. The endpoint type is
//! `cache-core`'s, the one every embedder client uses.

use std::sync::Arc;

use cache_core::registry::BuildContext;
use cache_core::{Cache, CacheEngine, Result};

use crate::config::CacheConfig;

pub use cache_core::semantic::{EmbeddingEndpoint, EmbeddingResolver};

impl CacheConfig {
    /// [`CacheConfig::build_engine`] with the semantic cache's embedding model resolved through
    /// `resolver` first (an explicit `semantic_embedding_api_base` still wins).
    ///
    /// # Errors
    /// As [`CacheConfig::build_engine`].
    pub async fn build_engine_with_embedding_resolver(
        &self,
        resolver: EmbeddingResolver,
    ) -> Result<Arc<CacheEngine>> {
        self.build_engine_with(&BuildContext::default().with_embedding_resolver(Some(resolver)))
            .await
    }

    /// [`CacheConfig::build`] with an embedding-model resolver (see
    /// [`CacheConfig::build_engine_with_embedding_resolver`]).
    ///
    /// # Errors
    /// As [`CacheConfig::build_engine`].
    pub async fn build_with_embedding_resolver(
        &self,
        resolver: EmbeddingResolver,
    ) -> Result<Cache> {
        Ok(Cache::new(Some(
            self.build_engine_with_embedding_resolver(resolver).await?,
        )))
    }
}
