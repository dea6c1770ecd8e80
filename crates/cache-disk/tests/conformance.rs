//! The conformance kit against a fresh disk cache per check (each in its own temporary
//! directory, removed afterwards).

use std::time::Duration;

use cache_core::{Bytes, CacheBackend, Capabilities, Health, Result, async_trait};
use cache_disk::{DiskBackend, DiskConfig, DiskEngine};

/// A disk backend that owns its temporary directory.
#[derive(Debug)]
struct TempDisk {
    backend: DiskBackend,
    // Dropped after the backend (declaration order): the database closes first.
    _dir: tempfile::TempDir,
}

impl TempDisk {
    fn new(engine: DiskEngine) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = DiskConfig::new(dir.path())
            .with_engine(engine)
            .with_max_bytes(64 << 20)
            .with_sweep_interval(Duration::from_millis(200));
        TempDisk {
            backend: DiskBackend::open(config).expect("open"),
            _dir: dir,
        }
    }
}

#[async_trait]
impl CacheBackend for TempDisk {
    fn name(&self) -> &str {
        self.backend.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.backend.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.backend.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.backend.delete(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        self.backend.get_many(keys).await
    }
    async fn set_many(&self, entries: Vec<(String, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        self.backend.set_many(entries, ttl).await
    }
    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        self.backend.clear(namespace).await
    }
    async fn ping(&self) -> Result<Health> {
        self.backend.ping().await
    }
    async fn flush(&self) -> Result<()> {
        self.backend.flush().await
    }
}

mod sled {
    use super::*;
    cache_core::cache_conformance!(backend = async { TempDisk::new(DiskEngine::Sled) });
}

mod log {
    use super::*;
    cache_core::cache_conformance!(backend = async { TempDisk::new(DiskEngine::Log) });
}
