//! A minimal third-party backend for llm-cache: a `HashMap` behind a mutex, with TTLs checked on
//! read. It depends on `cache-core` alone:
//!
//! * [`HashMapBackend`] implements the backend trait; `tests/conformance.rs` proves it with the
//!   conformance kit in one line.
//! * [`HashMapFactory`] makes it `type: hashmap` in a LiteLLM-style `cache_params`, with its own
//!   key `hashmap_max_entries`; `examples/hashmap-proxy` serves it from the llm-cache proxy.
//!
//! Copy this crate to start a real backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::backend::key_in_namespace;
use cache_core::params::Params;
use cache_core::registry::{BackendFactory, BuildContext};
use cache_core::{Bytes, CacheBackend, Capabilities, Health, Result, SharedBackend, async_trait};

/// A process-local map with per-entry expiry, bounded by a number of entries.
#[derive(Debug)]
pub struct HashMapBackend {
    map: Mutex<HashMap<String, (Bytes, Option<Instant>)>>,
    max_entries: usize,
}

impl Default for HashMapBackend {
    fn default() -> Self {
        Self::with_max_entries(10_000)
    }
}

impl HashMapBackend {
    /// An empty backend holding up to 10,000 entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty backend holding up to `max_entries` entries (at least one). When full, expired
    /// entries go first, then an arbitrary one.
    pub fn with_max_entries(max_entries: usize) -> Self {
        HashMapBackend {
            map: Mutex::default(),
            max_entries: max_entries.max(1),
        }
    }

    fn live(entry: &(Bytes, Option<Instant>)) -> bool {
        entry.1.is_none_or(|deadline| Instant::now() < deadline)
    }
}

#[async_trait]
impl CacheBackend for HashMapBackend {
    fn name(&self) -> &str {
        "hashmap"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::local()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let map = self.map.lock().expect("poisoned");
        Ok(map
            .get(key)
            .filter(|e| Self::live(e))
            .map(|(v, _)| v.clone()))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let deadline = ttl.map(|t| Instant::now() + t);
        let mut map = self.map.lock().expect("poisoned");
        if map.len() >= self.max_entries && !map.contains_key(key) {
            map.retain(|_, e| Self::live(e));
            if map.len() >= self.max_entries
                && let Some(victim) = map.keys().next().cloned()
            {
                map.remove(&victim);
            }
        }
        map.insert(key.to_owned(), (value, deadline));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.map.lock().expect("poisoned").remove(key).is_some())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let mut map = self.map.lock().expect("poisoned");
        let before = map.len();
        match namespace {
            Some(ns) => map.retain(|k, _| !key_in_namespace(k, ns)),
            None => map.clear(),
        }
        Ok((before - map.len()) as u64)
    }

    async fn ping(&self) -> Result<Health> {
        let start = Instant::now();
        let n = self.map.lock().expect("poisoned").len();
        Ok(Health::new("hashmap", start.elapsed()).with_detail("entries", n.to_string()))
    }
}

/// `type: hashmap` for llm-cache's backend registry: register it and a LiteLLM-style
/// `cache_params: {type: hashmap, hashmap_max_entries: 1000}` selects this backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashMapFactory;

#[async_trait]
impl BackendFactory for HashMapFactory {
    fn types(&self) -> &'static [&'static str] {
        &["hashmap"]
    }

    fn keys(&self, _type_name: &str) -> Vec<&'static str> {
        vec!["hashmap_max_entries"]
    }

    fn validate(&self, _type_name: &str, params: &Params) -> Result<()> {
        match params.u64("hashmap_max_entries")? {
            Some(0) => Err(params.error("hashmap_max_entries", "must be at least 1")),
            _ => Ok(()),
        }
    }

    async fn build(
        &self,
        type_name: &str,
        params: &Params,
        _: &BuildContext,
    ) -> Result<SharedBackend> {
        self.validate(type_name, params)?;
        let max = params.u64("hashmap_max_entries")?.unwrap_or(10_000);
        Ok(Arc::new(HashMapBackend::with_max_entries(max as usize)))
    }
}
