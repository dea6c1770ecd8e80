//! `type: gcs`: Google Cloud Storage.

use std::sync::Arc;

use cache_core::params::Params;
use cache_core::{CacheError, Result};
use object_store::gcp::GoogleCloudStorageBuilder;

use crate::backend::ObjectStoreBackend;
use crate::naming::ObjectNaming;
use crate::settings::{ClientSettings, build_error, optional, required};

/// Configuration of a GCS backend, with LiteLLM's `cache_params` names.
///
/// Without `gcs_path_service_account`, credentials come from `object_store`'s chain:
/// `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_SERVICE_ACCOUNT_PATH`, then Application Default
/// Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, or the file `gcloud auth
/// application-default login` writes), then the metadata server of GCE/GKE/Cloud Run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GcsConfig {
    /// `gcs_bucket_name` (else `GCS_BUCKET_NAME`; required).
    pub bucket: String,
    /// `gcs_path_service_account` (else `GCS_PATH_SERVICE_ACCOUNT`): path of a service-account
    /// JSON key file. The path is not a secret; the file's contents are never logged.
    pub service_account_path: Option<String>,
    /// `gcs_path`: prefix of every object name.
    pub prefix: Option<String>,
    /// `object_store_*` settings.
    pub client: ClientSettings,
}

impl GcsConfig {
    /// A configuration for `bucket` with every other setting at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        GcsConfig {
            bucket: bucket.into(),
            service_account_path: None,
            prefix: None,
            client: ClientSettings::default(),
        }
    }

    /// Reads LiteLLM's `gcs_*` keys (and the `object_store_*` ones), with LiteLLM's
    /// `GCS_BUCKET_NAME` / `GCS_PATH_SERVICE_ACCOUNT` environment fallbacks.
    ///
    /// # Errors
    /// A missing bucket or a wrong type, naming the key.
    pub fn from_params(p: &Params) -> Result<Self> {
        let bucket = required(p, "gcs_bucket_name", Some("GCS_BUCKET_NAME"), "gcs")?;
        let service_account_path = p
            .string_or_env("gcs_path_service_account", "GCS_PATH_SERVICE_ACCOUNT")?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        let prefix = optional(p, "gcs_path")?;
        ObjectNaming::new(prefix.as_deref()).map_err(|m| p.error("gcs_path", m))?;
        Ok(GcsConfig {
            bucket,
            service_account_path,
            prefix,
            client: ClientSettings::from_params(p)?,
        })
    }

    /// The `object_store` builder for this configuration (environment first, then these
    /// settings on top).
    pub fn builder(&self) -> GoogleCloudStorageBuilder {
        let mut b = GoogleCloudStorageBuilder::from_env()
            .with_client_options(
                self.client
                    .client_options()
                    .with_allow_http(self.plain_http_base_url()),
            )
            .with_retry(self.client.retry_config())
            .with_bucket_name(&self.bucket);
        if let Some(path) = &self.service_account_path {
            b = b.with_service_account_path(path);
        }
        b
    }

    /// Whether the service-account file points `object_store` at a plain-HTTP endpoint
    /// (`"gcs_base_url": "http://..."`, as for an emulator). Only then is HTTP allowed.
    fn plain_http_base_url(&self) -> bool {
        let Some(path) = &self.service_account_path else {
            return false;
        };
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v.get("gcs_base_url")?
                    .as_str()
                    .map(|u| u.starts_with("http://"))
            })
            .unwrap_or(false)
    }

    /// Connects (reads the service-account file; no network round trip).
    ///
    /// # Errors
    /// An unreadable service-account file, or a configuration `object_store` rejects.
    pub fn connect(&self) -> Result<ObjectStoreBackend> {
        crate::install_crypto_provider();
        if let Some(path) = &self.service_account_path
            && let Err(e) = std::fs::metadata(path)
        {
            return Err(CacheError::Config(format!(
                "cache_params.gcs_path_service_account: cannot read {path}: {e}"
            )));
        }
        let store = self.builder().build().map_err(|e| build_error("gcs", e))?;
        let naming = ObjectNaming::new(self.prefix.as_deref())
            .map_err(|m| CacheError::Config(format!("cache_params.gcs_path: {m}")))?;
        Ok(ObjectStoreBackend::new("gcs", Arc::new(store), naming)
            .with_max_concurrency(self.client.max_concurrency)
            .with_detail("bucket", &self.bucket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn p(v: Value) -> Params {
        Params::new(v.as_object().unwrap().clone(), "cache_params")
    }

    #[test]
    fn litellm_names() {
        let dir = tempfile::tempdir().unwrap();
        let sa = dir.path().join("sa.json");
        std::fs::write(
            &sa,
            r#"{"gcs_base_url":"http://127.0.0.1:1","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}"#,
        )
        .unwrap();
        let c = GcsConfig::from_params(&p(json!({
            "gcs_bucket_name": "b",
            "gcs_path_service_account": sa.to_str().unwrap(),
            "gcs_path": "/cache/",
        })))
        .unwrap();
        assert_eq!(c.bucket, "b");
        let backend = c.connect().unwrap();
        assert_eq!(backend.object_path("ns:k").as_ref(), "cache/ns/k");
    }

    #[test]
    fn errors_name_the_key() {
        if std::env::var("GCS_BUCKET_NAME").is_err() {
            let err = GcsConfig::from_params(&p(json!({})))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cache_params.gcs_bucket_name") && err.contains("GCS_BUCKET_NAME"),
                "{err}"
            );
        }
        let err = GcsConfig::from_params(&p(json!({"gcs_bucket_name": "b", "gcs_path": ".."})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache_params.gcs_path"), "{err}");
        let c = GcsConfig::from_params(&p(json!({
            "gcs_bucket_name": "b", "gcs_path_service_account": "/nonexistent/sa.json"
        })))
        .unwrap();
        let err = c.connect().unwrap_err().to_string();
        assert!(
            err.contains("cache_params.gcs_path_service_account"),
            "{err}"
        );
    }
}
