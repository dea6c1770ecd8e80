//! The in-memory backend (`type: local`, also the L1 tier) runs the whole conformance kit.

cache_core::cache_conformance!(
    backend = async {
        cache_core::MemoryBackend::new(
            cache_core::MemoryConfig::default().with_max_items(Some(100_000)),
        )
    }
);

/// The kit is honest: a backend whose `clear(None)` does nothing fails `clear_all`.
#[test]
fn the_kit_catches_a_no_op_clear_of_everything() {
    use cache_core::{Bytes, CacheBackend, Capabilities, Health, MemoryBackend, Result};
    use std::time::Duration;

    #[derive(Debug, Default)]
    struct NoOpClearAll(MemoryBackend);

    #[cache_core::async_trait]
    impl CacheBackend for NoOpClearAll {
        fn name(&self) -> &str {
            "no-op-clear-all"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::local()
        }
        async fn get(&self, key: &str) -> Result<Option<Bytes>> {
            self.0.get(key).await
        }
        async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
            self.0.set(key, value, ttl).await
        }
        async fn delete(&self, key: &str) -> Result<bool> {
            self.0.delete(key).await
        }
        async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
            match namespace {
                Some(ns) => self.0.clear(Some(ns)).await,
                None => Ok(0),
            }
        }
        async fn ping(&self) -> Result<Health> {
            self.0.ping().await
        }
    }

    let backend: cache_core::SharedBackend = std::sync::Arc::new(NoOpClearAll::default());
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache_core::testing::runtime().block_on(cache_core::testing::clear_all(&backend))
    }));
    assert!(caught.is_err(), "a no-op clear(None) passed the kit");
}
