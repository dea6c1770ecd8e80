//! # cache-semantic
//!
//! Semantic caching for llm-cache: answer a *similar* request from the cache, safely.
//!
//! The orchestration in `cache-core` looks a request up exactly first (its ordinary key); on an
//! exact miss it asks the [`SemanticCache`] layer, which
//!
//! 1. takes the **text to compare** — the last user message's text parts by default
//!    ([`EmbedMode`]) — and replaces it with a placeholder: the rest of the request (model
//!    group, every keyed parameter, system prompt, earlier turns, images, namespace, tenant
//!    partition) is hashed into an exact **scope** ([`text`]);
//! 2. embeds the text ([`embed`]: the bundled offline [`LocalEmbedder`] or any
//!    OpenAI-compatible [`HttpEmbedder`]);
//! 3. asks the vector backend for the nearest records **of that scope only** — the scope is a
//!    pre-filter inside the index (a RediSearch TAG, a Qdrant keyword payload, a partition of
//!    the in-process index), so a hit across models, parameters, conversations, namespaces or
//!    tenants cannot happen;
//! 4. keeps candidates whose cosine similarity reaches `similarity_threshold` (a per-request
//!    threshold can only raise it) and that pass the [`guard`] (numbers, negations, named
//!    entities must match);
//! 5. serves the best one — or, in **shadow mode**, only logs and counts it.
//!
//! Backends: [`MemorySemanticBackend`] (in-process), `redis::RedisSemanticBackend` (feature
//! `redis-semantic`, RediSearch HNSW), `qdrant::QdrantBackend` (feature `qdrant-semantic`).
//!
//! With the `local-model` feature (the bundled offline embedder):
//!
//! ```
//! # #[cfg(feature = "local-model")] mod example {
//! use std::sync::Arc;
//! use cache_core::{Cache, CacheControl, CallKind, MemoryBackend};
//! use cache_semantic::{LocalEmbedder, MemorySemanticBackend, SemanticCache, SemanticConfig};
//! use serde_json::{json, Value};
//!
//! # #[tokio::main(flavor = "current_thread")] pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = SemanticCache::new(
//!     Arc::new(LocalEmbedder::potion_base_2m()?),
//!     Arc::new(MemorySemanticBackend::default()),
//!     SemanticConfig::new(0.8)?,
//! );
//! let cache = Cache::builder(MemoryBackend::default()).semantic(Arc::new(layer)).build();
//! let ask = |q: &str| json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}]});
//! let call = || async { Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "Settings > Security."}}]})) };
//!
//! cache.get_or_fetch(CallKind::Chat, &ask("How do I reset my password?"), &CacheControl::none(), call).await?;
//! cache.flush(std::time::Duration::from_secs(1)).await?;
//! let again = cache
//!     .get_or_fetch(CallKind::Chat, &ask("how do i reset my password"), &CacheControl::none(), call)
//!     .await?;
//! assert!(again.status.is_hit()); // served by the semantic tier, with its similarity
//! # Ok(()) }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "local-model")]
//! #     example::main().unwrap();
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod config;
pub mod embed;
pub mod factory;
pub mod guard;
mod layer;
mod memory;
#[cfg(feature = "redis-semantic")]
pub mod redis;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod verify;

#[cfg(feature = "qdrant-semantic")]
pub mod qdrant;

pub use cache_core::semantic::{
    Embedder, SemanticBackend, SemanticHit, SemanticLayer, SemanticMatch, SemanticRecord,
    SemanticRequest, SemanticStats,
};
pub use config::EmbeddingResolver;
#[cfg(feature = "local-model")]
pub use embed::LocalEmbedder;
pub use embed::{EncodingFormat, HttpEmbedder, HttpEmbedderConfig};
pub use factory::LocalSemanticFactory;
#[cfg(feature = "qdrant-semantic")]
pub use factory::QdrantSemanticFactory;
#[cfg(feature = "redis-semantic")]
pub use factory::RedisSemanticFactory;
pub use guard::{GuardConfig, GuardReason, Relation};
pub use layer::{SemanticCache, SemanticConfig};
pub use memory::{MemorySemanticBackend, MemorySemanticConfig};
pub use text::EmbedMode;
