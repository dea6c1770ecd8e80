//! A minimal third-party backend for llm-cache: a `HashMap` behind a mutex, with TTLs checked on
//! read. It depends on `cache-core` alone, and `tests/conformance.rs` proves it with the
//! conformance kit in one line. Copy this crate to start a real backend.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cache_core::backend::key_in_namespace;
use cache_core::{Bytes, CacheBackend, Capabilities, Health, Result, async_trait};

/// A process-local map with per-entry expiry.
#[derive(Debug, Default)]
pub struct HashMapBackend {
    map: Mutex<HashMap<String, (Bytes, Option<Instant>)>>,
}

impl HashMapBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
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
        self.map
            .lock()
            .expect("poisoned")
            .insert(key.to_owned(), (value, deadline));
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
