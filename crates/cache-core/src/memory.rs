//! The in-memory backend (`type: local`), on `moka`.
//!
//! * Bounded by item count and, optionally, by bytes (both at once: see [`MemoryConfig`]).
//! * Per-entry TTL; re-setting a key replaces its expiry (LiteLLM keeps the old one: F7).
//! * A per-item size limit that applies to every value (LiteLLM's never applies to envelopes: F8).
//! * Also the L1 tier in front of shared backends.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;
use moka::sync::Cache as Moka;

use crate::backend::{CacheBackend, Capabilities, Health, key_in_namespace};
use crate::error::{CacheError, Result};

/// LiteLLM's default item bound for the in-memory cache.
pub const DEFAULT_MAX_ITEMS: u64 = 200;
/// LiteLLM's default per-item limit: 1 MiB.
pub const DEFAULT_MAX_ITEM_BYTES: usize = 1024 * 1024;
/// LiteLLM's default TTL of in-memory entries (applied by the configuration layer).
pub const DEFAULT_MEMORY_TTL: Duration = Duration::from_secs(600);

/// Bounds of the in-memory backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Maximum number of entries (`max_size_in_memory`, default 200). `None`: unbounded count.
    pub max_items: Option<u64>,
    /// Maximum total bytes of keys and values (`max_size_in_memory_bytes`). `None`: no byte bound.
    ///
    /// With both bounds set, each entry is charged `ceil(size / (max_bytes / max_items))`
    /// slots of a `max_items`-slot budget, which enforces both bounds (slightly conservatively
    /// for entries just over a slot size).
    pub max_bytes: Option<u64>,
    /// Largest accepted key + value (`max_size_per_item`, default 1 MiB).
    pub max_item_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_items: Some(DEFAULT_MAX_ITEMS),
            max_bytes: None,
            max_item_bytes: DEFAULT_MAX_ITEM_BYTES,
        }
    }
}

impl MemoryConfig {
    /// Sets the item bound.
    pub fn with_max_items(mut self, n: Option<u64>) -> Self {
        self.max_items = n;
        self
    }

    /// Sets the byte bound.
    pub fn with_max_bytes(mut self, n: Option<u64>) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets the per-item limit.
    pub fn with_max_item_bytes(mut self, n: usize) -> Self {
        self.max_item_bytes = n;
        self
    }

    /// From LiteLLM's names in `cache_params`: `max_size_in_memory` (items),
    /// `max_size_per_item` (KiB), and llm-cache's `max_size_in_memory_bytes`.
    ///
    /// # Errors
    /// [`CacheError::Config`] naming a key with a wrong type.
    pub fn from_params(p: &crate::params::Params) -> Result<Self> {
        let mut m = MemoryConfig::default();
        if let Some(n) = p.u64("max_size_in_memory")? {
            m = m.with_max_items(Some(n));
        }
        if let Some(kb) = p.u64("max_size_per_item")? {
            m = m.with_max_item_bytes((kb as usize).saturating_mul(1024));
        }
        Ok(m.with_max_bytes(p.u64("max_size_in_memory_bytes")?))
    }
}

#[derive(Clone)]
struct Slot {
    value: Bytes,
    ttl: Option<Duration>,
}

struct SlotExpiry;

impl Expiry<String, Slot> for SlotExpiry {
    fn expire_after_create(&self, _key: &String, slot: &Slot, _now: Instant) -> Option<Duration> {
        slot.ttl
    }

    fn expire_after_update(
        &self,
        _key: &String,
        slot: &Slot,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        // A re-set replaces the expiry (fixes LiteLLM F7).
        slot.ttl
    }
}

/// The in-memory backend.
#[derive(Clone)]
pub struct MemoryBackend {
    cache: Moka<String, Slot>,
    config: MemoryConfig,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.config)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryBackend {
    /// Name used in logs and metrics.
    pub const NAME: &'static str = "memory";

    /// A backend with the given bounds.
    pub fn new(config: MemoryConfig) -> Self {
        let mut builder = Moka::builder().expire_after(SlotExpiry);
        match (config.max_items, config.max_bytes) {
            (Some(items), Some(bytes)) => {
                let slot = (bytes / items.max(1)).max(1);
                builder = builder
                    .max_capacity(items)
                    .weigher(move |k: &String, v: &Slot| {
                        let size = (k.len() + v.value.len()) as u64;
                        size.div_ceil(slot).clamp(1, u32::MAX as u64) as u32
                    });
            }
            (Some(items), None) => builder = builder.max_capacity(items),
            (None, Some(bytes)) => {
                builder = builder.max_capacity(bytes).weigher(|k: &String, v: &Slot| {
                    (k.len() + v.value.len()).clamp(1, u32::MAX as usize) as u32
                });
            }
            (None, None) => {}
        }
        MemoryBackend {
            cache: builder.build(),
            config,
        }
    }

    /// The configured bounds.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// Number of live entries (approximate until pending maintenance runs).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total weight in use (items, slots or bytes depending on the bounds).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Synchronous read (the L1 path uses it to avoid an async hop).
    pub fn get_sync(&self, key: &str) -> Option<Bytes> {
        self.cache.get(key).map(|s| s.value)
    }

    /// Synchronous write.
    pub fn set_sync(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let size = key.len() + value.len();
        if size > self.config.max_item_bytes {
            return Err(CacheError::ValueTooLarge {
                backend: Self::NAME.to_owned(),
                size,
                limit: self.config.max_item_bytes,
            });
        }
        if ttl == Some(Duration::ZERO) {
            self.cache.invalidate(key);
            return Ok(());
        }
        self.cache.insert(key.to_owned(), Slot { value, ttl });
        Ok(())
    }

    /// Synchronous delete.
    pub fn delete_sync(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    /// Synchronous clear.
    pub fn clear_sync(&self, namespace: Option<&str>) -> u64 {
        match namespace {
            None => {
                // The count is approximate until pending maintenance runs.
                self.cache.run_pending_tasks();
                let n = self.cache.entry_count();
                self.cache.invalidate_all();
                self.cache.run_pending_tasks();
                n
            }
            Some(ns) => {
                let keys: Vec<_> = self
                    .cache
                    .iter()
                    .filter(|(k, _)| key_in_namespace(k, ns))
                    .map(|(k, _)| k)
                    .collect();
                for k in &keys {
                    self.cache.invalidate(k.as_str());
                }
                keys.len() as u64
            }
        }
    }
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::local().with_max_value_size(Some(self.config.max_item_bytes))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_sync(key))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.set_sync(key, value, ttl)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.delete_sync(key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        Ok(keys.iter().map(|k| self.get_sync(k)).collect())
    }

    async fn set_many(&self, entries: Vec<(String, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        for (k, v) in entries {
            self.set_sync(&k, v, ttl)?;
        }
        Ok(())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        Ok(self.clear_sync(namespace))
    }

    async fn ping(&self) -> Result<Health> {
        let start = Instant::now();
        let n = self.len();
        Ok(Health::new(Self::NAME, start.elapsed())
            .with_detail("entries", n.to_string())
            .with_detail(
                "max_items",
                self.config
                    .max_items
                    .map_or("unbounded".to_owned(), |n| n.to_string()),
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn item_bound_applies() {
        let m = MemoryBackend::new(MemoryConfig::default().with_max_items(Some(10)));
        for i in 0..100 {
            m.set(&format!("k{i}"), Bytes::from_static(b"v"), None)
                .await
                .unwrap();
        }
        assert!(m.len() <= 10, "len {}", m.len());
    }

    #[tokio::test]
    async fn byte_bound_applies_with_item_bound() {
        let m = MemoryBackend::new(
            MemoryConfig::default()
                .with_max_items(Some(1000))
                .with_max_bytes(Some(10_000)),
        );
        for i in 0..100 {
            m.set(&format!("k{i}"), Bytes::from(vec![0u8; 1000]), None)
                .await
                .unwrap();
        }
        m.cache.run_pending_tasks();
        let total: usize = m.cache.iter().map(|(k, v)| k.len() + v.value.len()).sum();
        assert!(total <= 10_000, "total bytes {total}");
        assert!(
            m.len() >= 5,
            "should keep several entries, kept {}",
            m.len()
        );
    }

    #[tokio::test]
    async fn per_item_limit_applies() {
        let m = MemoryBackend::new(MemoryConfig::default().with_max_item_bytes(100));
        let err = m
            .set("k", Bytes::from(vec![0u8; 200]), None)
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::ValueTooLarge { size: 201, .. }));
        assert!(m.get("k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reset_replaces_expiry() {
        let m = MemoryBackend::default();
        m.set(
            "k",
            Bytes::from_static(b"1"),
            Some(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        m.set("k", Bytes::from_static(b"2"), Some(Duration::from_secs(60)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(m.get("k").await.unwrap().as_deref(), Some(&b"2"[..]));
        m.set(
            "k",
            Bytes::from_static(b"3"),
            Some(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(m.get("k").await.unwrap().is_none());
    }
}
