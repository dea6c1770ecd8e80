//! `type: disk` for the backend registry (see `cache_core::registry`).

use std::sync::Arc;

use cache_core::params::Params;
use cache_core::registry::{BackendFactory, BuildContext};
use cache_core::{Result, SharedBackend, async_trait};

use crate::{DiskBackend, DiskConfig};

/// The `cache_params` keys of `type: disk`.
pub const KEYS: &[&str] = &[
    "disk_cache_dir",
    "disk_cache_max_bytes",
    "disk_cache_flush_interval",
    "disk_cache_sweep_interval",
    "disk_cache_memory_bytes",
    "disk_cache_on_corruption",
    "disk_cache_open_timeout",
    "disk_cache_engine",
];

/// `type: disk`: the embedded persistent cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFactory;

#[async_trait]
impl BackendFactory for DiskFactory {
    fn types(&self) -> &'static [&'static str] {
        &["disk"]
    }

    fn keys(&self, _type_name: &str) -> Vec<&'static str> {
        KEYS.to_vec()
    }

    fn validate(&self, _type_name: &str, params: &Params) -> Result<()> {
        DiskConfig::from_params(params).map(|_| ())
    }

    async fn build(&self, _: &str, params: &Params, _: &BuildContext) -> Result<SharedBackend> {
        Ok(Arc::new(
            DiskBackend::open_async(DiskConfig::from_params(params)?).await?,
        ))
    }
}
