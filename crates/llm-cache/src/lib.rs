//! # llm-cache
//!
//! Response caching for LLM applications: answer a repeated request (or, with semantic caching,
//! a similar one) from a cache instead of the provider.
//!
//! This crate is the façade: it re-exports [`cache_core`] (keys, directives, the orchestration,
//! the in-memory backend), wires one cargo feature per backend, and builds a cache from a
//! LiteLLM-style `cache_params` mapping ([`CacheConfig`]).
//!
//! | `type` | feature | crate |
//! |---|---|---|
//! | `local` | (always) | [`cache_core::memory`] |
//! | `redis` (standalone, Cluster, Sentinel) | `redis` | `cache-redis` |
//! | `disk` | `disk` | `cache-disk` |
//! | `s3`, `gcs`, `azure-blob` | `s3`, `gcs`, `azure` | `cache-object-store` |
//! | `redis-semantic`, `qdrant-semantic`, `local-semantic` | `redis-semantic`, `qdrant-semantic`, `local-semantic` | `cache-semantic` |
//!
//! ```
//! use llm_cache::{CacheConfig, CacheControl, CallKind};
//! use serde_json::{json, Value};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = CacheConfig::from_yaml("type: local\nttl: 600\n")?.build().await?;
//! let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
//! let reply = cache
//!     .get_or_fetch(CallKind::Chat, &request, &CacheControl::none(), || async {
//!         Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "hello"}}]}))
//!     })
//!     .await?;
//! assert!(!reply.status.is_hit());
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod backends;
pub mod config;
mod embedding;

pub use backends::{BUILTIN_TYPES, available_types, builtin_registry, feature_of};
pub use config::CacheConfig;
pub use embedding::{EmbeddingEndpoint, EmbeddingResolver};

/// The disk backend (`type: disk`).
#[cfg(feature = "disk")]
pub use cache_disk::{self as disk, DiskBackend, DiskConfig};

/// The Redis backend (`type: redis`).
#[cfg(feature = "redis")]
pub use cache_redis::{self as redis, RedisBackend, RedisConfig};

/// The object-store backends (`type: s3`, `type: gcs`, `type: azure-blob`).
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
pub use cache_object_store::{self as object_stores, ObjectStoreBackend};

/// Semantic caching (`type: redis-semantic`, `type: qdrant-semantic`): the layer, embedders,
/// vector backends.
#[cfg(any(
    feature = "redis-semantic",
    feature = "qdrant-semantic",
    feature = "local-semantic"
))]
pub use cache_semantic::{self as semantic, SemanticCache, SemanticConfig};

#[doc(inline)]
pub use cache_core::registry::{BackendFactory, BuildContext, Registry, TypeProfile};
#[doc(inline)]
pub use cache_core::{
    self as core, Bytes, Cache, CacheBackend, CacheBuilder, CacheControl, CacheEngine, CacheError,
    CacheKey, CacheMode, CacheSettings, CacheStatus, Cached, CallError, CallKind, Capabilities,
    Entry, Health, KeyOptions, L1Config, MemoryBackend, MemoryConfig, RequestContext, Result,
    SharedBackend, Usage, async_trait,
};
