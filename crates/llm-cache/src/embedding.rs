//! Resolving the semantic cache's embedding model through the caller's model list.
//!
//! LiteLLM's proxy sends the semantic cache's embedding call through its router, so
//! `redis_semantic_cache_embedding_model: my-embedder` uses the `model_list` entry named
//! `my-embedder` (its `api_base`, `api_key`, ...). [`CacheConfig::build_with_embedding_resolver`]
//! does the same: the proxy passes a resolver over its `model_list`.

use std::fmt;
use std::sync::Arc;

use cache_core::{Cache, CacheBuilder, CacheEngine, Result};

use crate::config::CacheConfig;

/// An OpenAI-compatible embeddings endpoint: `POST {api_base}/embeddings`.
#[derive(Clone)]
#[non_exhaustive]
pub struct EmbeddingEndpoint {
    /// Base URL up to the version (`https://api.openai.com/v1`).
    pub api_base: String,
    /// API key (sent as a bearer token; also as `api-key` when `azure`).
    pub api_key: Option<String>,
    /// Model name sent upstream.
    pub model: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Extra query parameters (Azure's `api-version`).
    pub query: Vec<(String, String)>,
    /// Azure OpenAI (`api-key` header).
    pub azure: bool,
}

impl EmbeddingEndpoint {
    /// An endpoint without key, headers or query parameters.
    pub fn new(api_base: impl Into<String>, model: impl Into<String>) -> Self {
        EmbeddingEndpoint {
            api_base: api_base.into(),
            api_key: None,
            model: model.into(),
            headers: Vec::new(),
            query: Vec::new(),
            azure: false,
        }
    }

    /// Sets the API key.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a query parameter.
    pub fn with_query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Marks an Azure OpenAI endpoint.
    pub fn with_azure(mut self, azure: bool) -> Self {
        self.azure = azure;
        self
    }
}

impl fmt::Debug for EmbeddingEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddingEndpoint")
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("azure", &self.azure)
            .finish()
    }
}

/// Maps an embedding model name (as configured in `*_semantic_cache_embedding_model`) to an
/// endpoint; `None` for names it does not know (then `cache_params` decide).
pub type EmbeddingResolver = Arc<dyn Fn(&str) -> Option<EmbeddingEndpoint> + Send + Sync>;

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
        for w in self.warnings() {
            tracing::warn!("{w}");
        }
        let backend = self.build_backend().await?;
        let mut builder = CacheBuilder::from_shared(backend).settings(self.settings()?);
        if let Some(layer) = crate::backends::build_semantic_with(self, Some(resolver)).await? {
            builder = builder.semantic(layer);
        }
        Ok(builder.build_engine())
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
