//! Backend factories, and the registry that maps a `cache_params.type` to one.
//!
//! Each backend crate owns its `type` names, its configuration keys (LiteLLM's names where
//! LiteLLM has them), their validation and its constructor, behind one [`BackendFactory`].
//! A configuration layer (the `llm-cache` façade, the proxy) looks `type` up in a [`Registry`]
//! and never needs to know the backend: a third-party crate registers its own factory and is
//! selected by `type` like a built-in one.
//!
//! ```
//! use std::sync::Arc;
//! use cache_core::registry::{BackendFactory, BuildContext, Registry};
//! use cache_core::params::Params;
//! use cache_core::{MemoryBackend, Result, SharedBackend, async_trait};
//!
//! #[derive(Debug)]
//! struct Scratch;
//!
//! #[async_trait]
//! impl BackendFactory for Scratch {
//!     fn types(&self) -> &'static [&'static str] {
//!         &["scratch"]
//!     }
//!     fn keys(&self, _type_name: &str) -> Vec<&'static str> {
//!         vec!["scratch_size"]
//!     }
//!     async fn build(&self, _type_name: &str, params: &Params, _ctx: &BuildContext) -> Result<SharedBackend> {
//!         let items = params.u64("scratch_size")?.unwrap_or(100);
//!         let config = cache_core::MemoryConfig::default().with_max_items(Some(items));
//!         Ok(Arc::new(MemoryBackend::new(config)))
//!     }
//! }
//!
//! let registry = Registry::new().with(Scratch);
//! assert!(registry.get("scratch").is_some());
//! assert!(registry.get("local").is_some(), "the in-memory backend is always there");
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::SharedBackend;
use crate::error::Result;
use crate::memory::{DEFAULT_MEMORY_TTL, MemoryBackend, MemoryConfig};
use crate::params::Params;
use crate::semantic::{EmbeddingResolver, SemanticLayer};

/// What a factory may need besides its parameters.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct BuildContext {
    /// Resolves the semantic cache's embedding model name through the caller's model list (the
    /// proxy's `model_list`), as LiteLLM routes that call. `None`: parameters alone decide.
    pub embedding_resolver: Option<EmbeddingResolver>,
}

impl BuildContext {
    /// A context with an embedding-model resolver.
    pub fn with_embedding_resolver(mut self, resolver: Option<EmbeddingResolver>) -> Self {
        self.embedding_resolver = resolver;
        self
    }
}

impl fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("embedding_resolver", &self.embedding_resolver.is_some())
            .finish()
    }
}

/// How a `type` behaves when the configuration does not say: what the configuration layer
/// derives the cache's settings from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TypeProfile {
    /// Read deadline when `cache_read_timeout` is not set (a remote object store needs longer
    /// than a Redis on the same network).
    pub read_timeout: Duration,
    /// Type-specific TTL keys, read in order before `ttl` (`default_in_memory_ttl`,
    /// `default_in_redis_ttl`).
    pub ttl_keys: &'static [&'static str],
    /// TTL when none is configured (`None`: entries live until deleted or evicted).
    pub default_ttl: Option<Duration>,
    /// The exact tier lives in process memory: an L1 tier in front of it is pointless.
    pub in_memory: bool,
}

impl Default for TypeProfile {
    fn default() -> Self {
        TypeProfile {
            read_timeout: Duration::from_millis(50),
            ttl_keys: &[],
            default_ttl: None,
            in_memory: false,
        }
    }
}

impl TypeProfile {
    /// A profile with the default read deadline (50 ms), no TTL, not in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the default read deadline.
    pub fn with_read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }

    /// Sets the type-specific TTL keys.
    pub fn with_ttl_keys(mut self, keys: &'static [&'static str]) -> Self {
        self.ttl_keys = keys;
        self
    }

    /// Sets the TTL used when none is configured.
    pub fn with_default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Marks an in-process exact tier.
    pub fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }
}

/// Builds backends of one or more `type`s from `cache_params`.
///
/// Only [`types`](BackendFactory::types), [`keys`](BackendFactory::keys) and
/// [`build`](BackendFactory::build) are required.
#[async_trait]
pub trait BackendFactory: Send + Sync + fmt::Debug + 'static {
    /// The `cache_params.type` names this factory builds (`["redis"]`, `["s3", "gcs"]`).
    fn types(&self) -> &'static [&'static str];

    /// The `cache_params` keys a `type` reads, besides the cache's own (`ttl`, `namespace`,
    /// ...). Any other key is an error with a "did you mean".
    fn keys(&self, type_name: &str) -> Vec<&'static str>;

    /// LiteLLM keys of this backend that are accepted but not implemented: a warning, not an
    /// error.
    fn ignored_keys(&self, _type_name: &str) -> &'static [&'static str] {
        &[]
    }

    /// Defaults of a `type`.
    fn profile(&self, _type_name: &str) -> TypeProfile {
        TypeProfile::default()
    }

    /// Checks parameters without connecting anywhere: called when a configuration is loaded, so
    /// a bad value fails at load time, not at the first request.
    ///
    /// # Errors
    /// [`crate::CacheError::Config`] naming the key.
    fn validate(&self, _type_name: &str, _params: &Params) -> Result<()> {
        Ok(())
    }

    /// Builds the backend (the exact tier).
    ///
    /// # Errors
    /// A configuration error naming the key, or a connection error.
    async fn build(
        &self,
        type_name: &str,
        params: &Params,
        ctx: &BuildContext,
    ) -> Result<SharedBackend>;

    /// Builds the semantic layer of a semantic `type` (consulted after an exact miss); `None`
    /// for exact types.
    ///
    /// # Errors
    /// As [`BackendFactory::build`].
    async fn build_semantic(
        &self,
        _type_name: &str,
        _params: &Params,
        _ctx: &BuildContext,
    ) -> Result<Option<Arc<dyn SemanticLayer>>> {
        Ok(None)
    }
}

/// `type: local`: the in-memory backend (moka), LiteLLM's names for its bounds.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryFactory;

/// The keys of the in-memory backend (also the exact tier of in-process semantic types).
pub const MEMORY_KEYS: &[&str] = &[
    "max_size_in_memory",
    "max_size_per_item",
    "max_size_in_memory_bytes",
    "default_in_memory_ttl",
];

#[async_trait]
impl BackendFactory for MemoryFactory {
    fn types(&self) -> &'static [&'static str] {
        &["local"]
    }

    fn keys(&self, _type_name: &str) -> Vec<&'static str> {
        MEMORY_KEYS.to_vec()
    }

    fn profile(&self, _type_name: &str) -> TypeProfile {
        TypeProfile::new()
            .with_ttl_keys(&["default_in_memory_ttl"])
            .with_default_ttl(Some(DEFAULT_MEMORY_TTL))
            .in_memory()
    }

    fn validate(&self, _type_name: &str, params: &Params) -> Result<()> {
        MemoryConfig::from_params(params).map(|_| ())
    }

    async fn build(
        &self,
        _type_name: &str,
        params: &Params,
        _ctx: &BuildContext,
    ) -> Result<SharedBackend> {
        Ok(Arc::new(MemoryBackend::new(MemoryConfig::from_params(
            params,
        )?)))
    }
}

/// Maps `type` names to factories. Always knows `local`; a later registration of a `type`
/// replaces an earlier one.
#[derive(Clone)]
pub struct Registry {
    factories: Vec<Arc<dyn BackendFactory>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.types()).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with the in-memory backend (`type: local`) only.
    pub fn new() -> Self {
        Registry {
            factories: vec![Arc::new(MemoryFactory)],
        }
    }

    /// Registers a factory.
    pub fn register(&mut self, factory: impl BackendFactory) -> &mut Self {
        self.register_shared(Arc::new(factory))
    }

    /// Registers a shared factory.
    pub fn register_shared(&mut self, factory: Arc<dyn BackendFactory>) -> &mut Self {
        self.factories.push(factory);
        self
    }

    /// [`Registry::register`], by value.
    pub fn with(mut self, factory: impl BackendFactory) -> Self {
        self.register(factory);
        self
    }

    /// The factory of a `type`.
    pub fn get(&self, type_name: &str) -> Option<&Arc<dyn BackendFactory>> {
        self.factories
            .iter()
            .rev()
            .find(|f| f.types().contains(&type_name))
    }

    /// Every registered `type`, in registration order, each once.
    pub fn types(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for f in &self.factories {
            for t in f.types() {
                if !out.contains(t) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Every key some registered `type` reads (for suggestions).
    pub fn all_keys(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for t in self.types() {
            if let Some(f) = self.get(t) {
                for k in f.keys(t) {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Other;

    #[async_trait]
    impl BackendFactory for Other {
        fn types(&self) -> &'static [&'static str] {
            &["local", "other"]
        }
        fn keys(&self, _: &str) -> Vec<&'static str> {
            vec!["other_key"]
        }
        async fn build(&self, _: &str, _: &Params, _: &BuildContext) -> Result<SharedBackend> {
            Ok(Arc::new(MemoryBackend::default()))
        }
    }

    #[test]
    fn later_registrations_win_and_types_are_listed_once() {
        let r = Registry::new();
        assert_eq!(r.get("local").unwrap().keys("local"), MEMORY_KEYS);
        let r = r.with(Other);
        assert_eq!(r.types(), ["local", "other"]);
        assert_eq!(r.get("local").unwrap().keys("local"), ["other_key"]);
        assert!(r.get("nope").is_none());
        assert!(r.all_keys().contains(&"other_key"));
    }
}
