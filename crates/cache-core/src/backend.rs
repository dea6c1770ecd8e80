//! The backend contract: an object-safe async trait for exact key/value stores.
//!
//! Backends store opaque bytes (the [`crate::Entry`] envelope) under string keys. They know
//! nothing about LLM requests; the orchestration ([`crate::Cache`]) adds deadlines, the circuit
//! breaker, tiers and accounting around them. A third-party backend implements
//! [`CacheBackend`] against this crate alone and proves it with the conformance kit
//! (`cache_core::testing`, feature `testing`). See `docs/writing-a-backend.md`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::coordination::Coordinator;
use crate::error::Result;

/// What a backend can do. The orchestration and the conformance kit read these flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Shared between processes (Redis, object stores) rather than private to one.
    pub shared: bool,
    /// Survives a restart of the process (disk, Redis with persistence, object stores).
    pub persistent: bool,
    /// Expires entries itself. When false, expiry is still enforced on read from the
    /// envelope's `expires_at`, but storage is reclaimed only by [`CacheBackend::delete`],
    /// [`CacheBackend::clear`] or an external policy (a bucket lifecycle rule).
    pub native_ttl: bool,
    /// Supports [`CacheBackend::delete`].
    pub delete: bool,
    /// Supports [`CacheBackend::clear`].
    pub clear: bool,
    /// Largest value accepted, if limited.
    pub max_value_size: Option<usize>,
}

impl Capabilities {
    /// A process-local, volatile store with native TTL, delete and clear.
    pub const fn local() -> Self {
        Capabilities {
            shared: false,
            persistent: false,
            native_ttl: true,
            delete: true,
            clear: true,
            max_value_size: None,
        }
    }

    /// Sets [`Capabilities::shared`].
    pub const fn with_shared(mut self, v: bool) -> Self {
        self.shared = v;
        self
    }

    /// Sets [`Capabilities::persistent`].
    pub const fn with_persistent(mut self, v: bool) -> Self {
        self.persistent = v;
        self
    }

    /// Sets [`Capabilities::native_ttl`].
    pub const fn with_native_ttl(mut self, v: bool) -> Self {
        self.native_ttl = v;
        self
    }

    /// Sets [`Capabilities::delete`].
    pub const fn with_delete(mut self, v: bool) -> Self {
        self.delete = v;
        self
    }

    /// Sets [`Capabilities::clear`].
    pub const fn with_clear(mut self, v: bool) -> Self {
        self.clear = v;
        self
    }

    /// Sets [`Capabilities::max_value_size`].
    pub const fn with_max_value_size(mut self, v: Option<usize>) -> Self {
        self.max_value_size = v;
        self
    }
}

/// The result of a health check.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// Backend name.
    pub backend: String,
    /// Round-trip time of the check.
    pub latency: Duration,
    /// Backend-specific facts (server version, topology, directory, bucket, ...). Never secrets.
    pub details: BTreeMap<String, String>,
}

impl Health {
    /// A health report with no details.
    pub fn new(backend: impl Into<String>, latency: Duration) -> Self {
        Health {
            backend: backend.into(),
            latency,
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// An exact key/value store for cache entries.
///
/// Keys are UTF-8 strings of the form `namespace:hash` or `hash` (see [`crate::CacheKey`]);
/// values are opaque bytes. All methods take `&self` and may be called concurrently.
///
/// # Contract
/// * `get` after `set` returns the same bytes (binary-safe), until the TTL passes, the key is
///   overwritten, deleted or cleared, or the store evicts it under a size bound.
/// * `set` with `Some(ttl)` makes the value unreadable after `ttl` (the orchestration also checks
///   the envelope's expiry, so a backend without native TTL passes by storing the bytes);
///   `set` with `None` stores without expiry. A `set` replaces the value **and** the TTL.
/// * `delete` of a missing key is not an error.
/// * `clear(Some(ns))` removes exactly the keys that start with `ns:`, and nothing else;
///   `clear(None)` removes every entry this backend's configuration owns.
/// * Errors are [`crate::CacheError`]s naming the backend; transient ones say so.
#[async_trait]
pub trait CacheBackend: Send + Sync + Debug + 'static {
    /// Short name for logs and metrics (`memory`, `redis`, `disk`, `s3`, ...).
    fn name(&self) -> &str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Reads a value.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Writes a value, replacing any previous value and TTL.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()>;

    /// Deletes a key. Returns whether it existed, when the backend knows (else `true`).
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Reads several values; the result has one slot per key, in order.
    ///
    /// The default runs the gets concurrently; backends with a native batch read (MGET)
    /// override it.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        futures::future::try_join_all(keys.iter().map(|k| self.get(k))).await
    }

    /// Writes several values with one TTL.
    ///
    /// The default runs the sets concurrently; backends with pipelines override it.
    async fn set_many(&self, entries: Vec<(String, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        futures::future::try_join_all(
            entries
                .into_iter()
                .map(|(k, v)| async move { self.set(&k, v, ttl).await }),
        )
        .await
        .map(|_| ())
    }

    /// Removes every key in a namespace (`None`: every key this backend owns). Returns the
    /// number removed, when known.
    async fn clear(&self, namespace: Option<&str>) -> Result<u64>;

    /// Checks the store is reachable (and writable, where cheap to check).
    async fn ping(&self) -> Result<Health>;

    /// Makes every acknowledged write durable (disk backends flush). Default: nothing to do.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Cross-process coordination (leases for coalescing across replicas, L1 invalidation),
    /// when this shared store offers it. Default: none. See [`crate::coordination`].
    fn coordinator(&self) -> Option<Arc<dyn Coordinator>> {
        None
    }
}

/// Shared handle to a backend: the currency of the orchestration.
pub type SharedBackend = Arc<dyn CacheBackend>;

#[async_trait]
impl<T: CacheBackend + ?Sized> CacheBackend for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        (**self).get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        (**self).set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        (**self).delete(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        (**self).get_many(keys).await
    }
    async fn set_many(&self, entries: Vec<(String, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        (**self).set_many(entries, ttl).await
    }
    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        (**self).clear(namespace).await
    }
    async fn ping(&self) -> Result<Health> {
        (**self).ping().await
    }
    async fn flush(&self) -> Result<()> {
        (**self).flush().await
    }
    fn coordinator(&self) -> Option<Arc<dyn Coordinator>> {
        (**self).coordinator()
    }
}

/// Whether `key` belongs to namespace `ns` (starts with `ns:`).
pub fn key_in_namespace(key: &str, ns: &str) -> bool {
    key.len() > ns.len() && key.as_bytes()[ns.len()] == b':' && key.starts_with(ns)
}
