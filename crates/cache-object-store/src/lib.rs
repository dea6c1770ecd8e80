//! # cache-object-store
//!
//! llm-cache backends on object stores, built on the [`object_store`] crate: shared, durable,
//! cheap caches for teams that already keep data in a bucket.
//!
//! | `type` | feature | configuration | store |
//! |---|---|---|---|
//! | `s3` | `s3` | [`S3Config`] (`s3_*`, AWS environment) | Amazon S3, R2, B2, MinIO, ... |
//! | `gcs` | `gcs` | [`GcsConfig`] (`gcs_*`, `GCS_*` environment) | Google Cloud Storage |
//! | `azure-blob` | `azure` | [`AzureConfig`] (`azure_*`) | Azure Blob Storage, Azurite |
//!
//! Every type is one [`ObjectStoreBackend`] over an `Arc<dyn ObjectStore>`: each cache entry is
//! one JSON object named `prefix/namespace/hash` ([`ObjectNaming`]); the TTL is checked on
//! read (expired objects are misses and are deleted in the background) and bucket lifecycle
//! rules reclaim what nobody reads again. `docs/backends/object-stores.md` has the details.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::CacheError> {
//! use cache_core::params::Params;
//! use serde_json::json;
//!
//! let params = json!({
//!     "s3_bucket_name": "my-cache",
//!     "s3_region_name": "eu-west-1",
//!     "s3_path": "llm-cache",
//! });
//! let params = Params::new(params.as_object().unwrap().clone(), "cache_params");
//! let backend = cache_object_store::from_params("s3", &params).await?;
//! let cache = cache_core::CacheBuilder::new(backend).build();
//! # let _ = cache; Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod backend;
mod error;
pub mod factory;
mod naming;
mod settings;

#[cfg(feature = "azure")]
mod azure;
#[cfg(feature = "gcs")]
mod gcs;
#[cfg(feature = "s3")]
mod s3;

pub use backend::{BINARY_CONTENT_TYPE, CONTENT_TYPE, EXPIRES_AT_METADATA, ObjectStoreBackend};
pub use factory::ObjectStoreFactory;
pub use naming::ObjectNaming;
pub use settings::{ClientSettings, DEFAULT_MAX_CONCURRENCY, Secret};

#[cfg(feature = "azure")]
pub use azure::{AzureConfig, EMULATOR_ACCOUNT, emulator_account_url};
#[cfg(feature = "gcs")]
pub use gcs::GcsConfig;
#[cfg(feature = "s3")]
pub use s3::{S3Config, TlsVerify};

/// Re-exported so users can wrap or build stores with the same version.
pub use object_store;

use cache_core::params::Params;
use cache_core::{CacheError, Result};

/// Installs ring as the process's rustls crypto provider unless one is installed: object_store's
/// HTTP client (reqwest) is built without a provider of its own, and ring is the one provider of
/// llm-cache's builds.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `type`s this build supports.
pub const TYPES: &[&str] = &[
    #[cfg(feature = "s3")]
    "s3",
    #[cfg(feature = "gcs")]
    "gcs",
    #[cfg(feature = "azure")]
    "azure-blob",
];

/// Builds the backend for `backend_type` (`s3`, `gcs`, `azure-blob`) from LiteLLM-style
/// `cache_params`.
///
/// # Errors
/// A configuration error naming the key, or a type this build does not include.
pub async fn from_params(backend_type: &str, params: &Params) -> Result<ObjectStoreBackend> {
    let _ = params;
    match backend_type {
        #[cfg(feature = "s3")]
        "s3" => S3Config::from_params(params)?.connect(),
        #[cfg(feature = "gcs")]
        "gcs" => GcsConfig::from_params(params)?.connect(),
        #[cfg(feature = "azure")]
        "azure-blob" => AzureConfig::from_params(params)?.connect().await,
        other => Err(CacheError::Config(format!(
            "cache_params.type: `{other}` is not an object-store type of this build (available: {})",
            TYPES.join(", ")
        ))),
    }
}
