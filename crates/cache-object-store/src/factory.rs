//! `type: s3`, `type: gcs`, `type: azure-blob` for the backend registry (see
//! `cache_core::registry`): the types of the provider features this build has.

use std::sync::Arc;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::registry::{BackendFactory, BuildContext, TypeProfile};
use cache_core::{CacheError, Result, SharedBackend, async_trait};

/// Keys every object-store type reads.
pub const COMMON_KEYS: &[&str] = &[
    "object_store_max_concurrency",
    "object_store_max_retries",
    "object_store_retry_timeout",
    "object_store_request_timeout",
    "object_store_connect_timeout",
];

/// Keys of `type: s3` (LiteLLM's names, reference §4.4).
pub const S3_KEYS: &[&str] = &[
    "s3_bucket_name",
    "s3_region_name",
    "s3_endpoint_url",
    "s3_aws_access_key_id",
    "s3_aws_secret_access_key",
    "s3_aws_session_token",
    "s3_path",
    "s3_use_ssl",
    "s3_verify",
];

/// Keys of `type: gcs` (reference §4.5).
pub const GCS_KEYS: &[&str] = &["gcs_bucket_name", "gcs_path_service_account", "gcs_path"];

/// Keys of `type: azure-blob` (reference §4.5).
pub const AZURE_KEYS: &[&str] = &[
    "azure_account_url",
    "azure_blob_container",
    "azure_account_key",
    "azure_sas_token",
    "azure_create_container",
    "azure_blob_path",
];

/// Object stores answer in tens of milliseconds, not one.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The object-store types of this build.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectStoreFactory;

#[async_trait]
impl BackendFactory for ObjectStoreFactory {
    fn types(&self) -> &'static [&'static str] {
        crate::TYPES
    }

    fn keys(&self, type_name: &str) -> Vec<&'static str> {
        let own: &[&str] = match type_name {
            "s3" => S3_KEYS,
            "gcs" => GCS_KEYS,
            "azure-blob" => AZURE_KEYS,
            _ => &[],
        };
        own.iter().chain(COMMON_KEYS).copied().collect()
    }

    fn ignored_keys(&self, type_name: &str) -> &'static [&'static str] {
        match type_name {
            "s3" => &["s3_api_version", "s3_config"],
            _ => &[],
        }
    }

    fn profile(&self, _type_name: &str) -> TypeProfile {
        TypeProfile::new().with_read_timeout(READ_TIMEOUT)
    }

    fn validate(&self, type_name: &str, params: &Params) -> Result<()> {
        let _ = params;
        match type_name {
            #[cfg(feature = "s3")]
            "s3" => crate::S3Config::from_params(params).map(|_| ()),
            #[cfg(feature = "gcs")]
            "gcs" => crate::GcsConfig::from_params(params).map(|_| ()),
            #[cfg(feature = "azure")]
            "azure-blob" => crate::AzureConfig::from_params(params).map(|_| ()),
            other => Err(CacheError::Config(format!(
                "cache_params.type: `{other}` is not an object-store type of this build"
            ))),
        }
    }

    async fn build(
        &self,
        type_name: &str,
        params: &Params,
        _: &BuildContext,
    ) -> Result<SharedBackend> {
        Ok(Arc::new(crate::from_params(type_name, params).await?))
    }
}
