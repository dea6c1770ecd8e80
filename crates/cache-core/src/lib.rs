//! # cache-core
//!
//! The core of llm-cache: everything a backend or an LLM client needs, and nothing that needs a
//! server.
//!
//! * [`key`]: canonical, versioned cache keys (blake3) — spec in `docs/key-spec.md`.
//! * [`directives`]: per-request [`CacheControl`] (LiteLLM's `cache: {...}` and `Cache-Control`).
//! * [`envelope`]: the stored [`Entry`] format; corrupt or foreign values decode to errors.
//! * [`backend`]: the object-safe [`CacheBackend`] trait every store implements.
//! * [`semantic`]: the traits semantic caching plugs in through.
//! * [`memory`]: the in-memory backend (`type: local`), also the L1 tier.
//! * [`Cache`]: the orchestration — gates, deadlines, circuit breaker, tiers, single-flight,
//!   per-input embedding caching, events and counters.
//! * `testing` (feature `testing`): the conformance kit and [`cache_conformance!`].
//!
//! ```
//! use cache_core::{Cache, CacheControl, CallKind};
//! use serde_json::{json, Value};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cache = Cache::in_memory();
//! let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "2+2?"}]});
//! let answer = cache
//!     .get_or_fetch(CallKind::Chat, &request, &CacheControl::none(), || async {
//!         // call your LLM client here
//!         Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "4"}}]}))
//!     })
//!     .await
//!     .unwrap();
//! println!("{} ({})", answer.value["choices"][0]["message"]["content"], answer.status.header_value("llm-cache"));
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod backend;
mod breaker;
mod cache;
pub mod coordination;
pub mod directives;
mod embeddings;
pub mod envelope;
pub mod error;
mod flight;
pub mod key;
pub mod memory;
pub mod output;
pub mod params;
pub mod registry;
pub mod semantic;
pub mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use async_trait::async_trait;
pub use backend::{CacheBackend, Capabilities, Health, SharedBackend};
pub use breaker::{BreakerConfig, BreakerState};
pub use cache::{
    Cache, CacheBuilder, CacheEngine, CacheMode, CacheSettings, CacheStatus, Cached, CallError,
    Coordinated, DEFAULT_L1_MAX_BYTES, Hit, L1Config, Led, Lookup, MissReason, PingReport,
    Prepared, RequestContext, StoreFailure, StoreOutcome, Tier,
};
pub use coordination::{Coordinator, Invalidation, InvalidationSink, Lease, LeaseAttempt};
pub use directives::{CacheControl, DirectiveError};
pub use embeddings::EmbeddingOutcome;
pub use envelope::{Encoding, Entry, Usage};
pub use error::{BoxError, CacheError, Result};
pub use key::{CacheKey, CallKind, KeyBuilder, KeyContext, KeyOptions};
pub use memory::{MemoryBackend, MemoryConfig};
pub use registry::{BackendFactory, BuildContext, Registry, TypeProfile};
pub use stats::{CacheEvent, CacheObserver, EventKind, Stats};

/// Re-exported so backends and tests use the same versions as the core.
pub use bytes::Bytes;
