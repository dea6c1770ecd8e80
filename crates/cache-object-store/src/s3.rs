//! `type: s3`: Amazon S3 and S3-compatible stores (Cloudflare R2, Backblaze B2, MinIO, ...).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use cache_core::params::Params;
use cache_core::{CacheError, Result};
use object_store::aws::AmazonS3Builder;
use serde_json::Value;

use crate::backend::ObjectStoreBackend;
use crate::naming::ObjectNaming;
use crate::settings::{ClientSettings, Secret, build_error, optional, required, secret};

/// How server certificates are checked (`s3_verify`, as boto3's `verify`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsVerify {
    /// Against the system's trust store (`s3_verify: true`, the default).
    #[default]
    System,
    /// Not at all (`s3_verify: false`): for test servers with self-signed certificates only.
    Disabled,
    /// Against the system's trust store plus the PEM bundle at this path (`s3_verify: <path>`).
    CaBundle(PathBuf),
}

/// Configuration of an S3 backend, with LiteLLM's `cache_params` names.
///
/// Credentials not given here come from the usual AWS environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
/// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, ...) and then the credential chain of
/// `object_store`: web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, as on EKS), ECS
/// container credentials, then EC2 instance metadata.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct S3Config {
    /// `s3_bucket_name` (required).
    pub bucket: String,
    /// `s3_region_name` (else `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// `s3_endpoint_url`: the endpoint of an S3-compatible store (`http://` is allowed).
    /// Requests use path-style addressing (`endpoint/bucket/key`), which MinIO, R2 and B2
    /// accept.
    pub endpoint: Option<String>,
    /// `s3_aws_access_key_id`.
    pub access_key_id: Option<Secret>,
    /// `s3_aws_secret_access_key`.
    pub secret_access_key: Option<Secret>,
    /// `s3_aws_session_token` (temporary credentials).
    pub session_token: Option<Secret>,
    /// `s3_path`: prefix of every object name.
    pub prefix: Option<String>,
    /// `s3_use_ssl` (default true). `false` without `s3_endpoint_url` talks plain HTTP to
    /// `http://s3.<region>.amazonaws.com`; with an endpoint, the endpoint's scheme decides.
    pub use_ssl: bool,
    /// `s3_verify`.
    pub verify: TlsVerify,
    /// `object_store_*` settings.
    pub client: ClientSettings,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("prefix", &self.prefix)
            .field("use_ssl", &self.use_ssl)
            .field("verify", &self.verify)
            .field("client", &self.client)
            .finish()
    }
}

impl S3Config {
    /// A configuration for `bucket` with every other setting at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            prefix: None,
            use_ssl: true,
            verify: TlsVerify::System,
            client: ClientSettings::default(),
        }
    }

    /// Reads LiteLLM's `s3_*` keys (and the `object_store_*` ones).
    ///
    /// # Errors
    /// A missing bucket, a wrong type, a malformed endpoint, or half a key pair, naming the key.
    pub fn from_params(p: &Params) -> Result<Self> {
        let bucket = required(p, "s3_bucket_name", None, "s3")?;
        let endpoint = optional(p, "s3_endpoint_url")?;
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(p.error(
                "s3_endpoint_url",
                format!("expected an http:// or https:// URL, got {e:?}"),
            ));
        }
        let access_key_id = secret(p, "s3_aws_access_key_id")?;
        let secret_access_key = secret(p, "s3_aws_secret_access_key")?;
        match (&access_key_id, &secret_access_key) {
            (Some(_), None) => {
                return Err(p.error(
                    "s3_aws_secret_access_key",
                    "required when s3_aws_access_key_id is set",
                ));
            }
            (None, Some(_)) => {
                return Err(p.error(
                    "s3_aws_access_key_id",
                    "required when s3_aws_secret_access_key is set",
                ));
            }
            _ => {}
        }
        let verify = match p.get("s3_verify") {
            None => TlsVerify::System,
            Some(Value::String(s)) if p.bool("s3_verify").is_err() => {
                TlsVerify::CaBundle(PathBuf::from(s))
            }
            Some(_) => match p.bool("s3_verify").map_err(|_| {
                p.error("s3_verify", "expected a boolean or the path of a CA bundle")
            })? {
                Some(false) => TlsVerify::Disabled,
                _ => TlsVerify::System,
            },
        };
        let prefix = optional(p, "s3_path")?;
        ObjectNaming::new(prefix.as_deref()).map_err(|m| p.error("s3_path", m))?;
        Ok(S3Config {
            bucket,
            region: optional(p, "s3_region_name")?,
            endpoint,
            access_key_id,
            secret_access_key,
            session_token: secret(p, "s3_aws_session_token")?,
            prefix,
            use_ssl: p.bool("s3_use_ssl")?.unwrap_or(true),
            verify,
            client: ClientSettings::from_params(p)?,
        })
    }

    /// The `object_store` builder for this configuration (environment first, then these
    /// settings on top).
    ///
    /// # Errors
    /// An unreadable CA bundle.
    pub fn builder(&self) -> Result<AmazonS3Builder> {
        let mut options = self.client.client_options();
        match &self.verify {
            TlsVerify::System => {}
            TlsVerify::Disabled => options = options.with_allow_invalid_certificates(true),
            TlsVerify::CaBundle(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    CacheError::Config(format!(
                        "cache_params.s3_verify: cannot read the CA bundle {}: {e}",
                        path.display()
                    ))
                })?;
                let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    CacheError::Config(format!(
                        "cache_params.s3_verify: {} is not a PEM bundle: {e}",
                        path.display()
                    ))
                })?;
                for c in certs {
                    options = options.with_root_certificate(c);
                }
            }
        }
        let mut b = AmazonS3Builder::from_env()
            .with_client_options(options)
            .with_retry(self.client.retry_config())
            .with_bucket_name(&self.bucket);
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        let endpoint = match (&self.endpoint, self.use_ssl) {
            (Some(e), _) => Some(e.trim_end_matches('/').to_owned()),
            (None, false) => Some(format!(
                "http://s3.{}.amazonaws.com",
                self.region.as_deref().unwrap_or("us-east-1")
            )),
            (None, true) => None,
        };
        if let Some(e) = endpoint {
            b = b
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false)
                .with_endpoint(e);
        }
        if let (Some(id), Some(key)) = (&self.access_key_id, &self.secret_access_key) {
            b = b
                .with_access_key_id(id.expose())
                .with_secret_access_key(key.expose());
        }
        if let Some(t) = &self.session_token {
            b = b.with_token(t.expose());
        }
        Ok(b)
    }

    /// Connects (no network round trip: the first request checks the bucket).
    ///
    /// # Errors
    /// A configuration `object_store` rejects.
    pub fn connect(&self) -> Result<ObjectStoreBackend> {
        crate::install_crypto_provider();
        let store = self.builder()?.build().map_err(|e| build_error("s3", e))?;
        let naming = ObjectNaming::new(self.prefix.as_deref())
            .map_err(|m| CacheError::Config(format!("cache_params.s3_path: {m}")))?;
        let mut backend = ObjectStoreBackend::new("s3", Arc::new(store), naming)
            .with_max_concurrency(self.client.max_concurrency)
            .with_detail("bucket", &self.bucket);
        if let Some(e) = &self.endpoint {
            backend = backend.with_detail("endpoint", e);
        }
        if let Some(r) = &self.region {
            backend = backend.with_detail("region", r);
        }
        Ok(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Params {
        Params::new(v.as_object().unwrap().clone(), "cache_params")
    }

    #[test]
    fn litellm_names() {
        let c = S3Config::from_params(&p(json!({
            "s3_bucket_name": "cache-bucket",
            "s3_region_name": "eu-west-1",
            "s3_endpoint_url": "http://127.0.0.1:9000",
            "s3_aws_access_key_id": "AKIAEXAMPLE",
            "s3_aws_secret_access_key": "very-secret",
            "s3_aws_session_token": "session-secret",
            "s3_path": "llm/",
            "s3_use_ssl": "false",
            "s3_verify": false,
        })))
        .unwrap();
        assert_eq!(c.bucket, "cache-bucket");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.prefix.as_deref(), Some("llm/"));
        assert!(!c.use_ssl);
        assert_eq!(c.verify, TlsVerify::Disabled);
        let debug = format!("{c:?}");
        for secret in ["AKIAEXAMPLE", "very-secret", "session-secret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        let backend = c.connect().unwrap();
        let debug = format!("{backend:?}");
        for secret in ["AKIAEXAMPLE", "very-secret", "session-secret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert_eq!(
            backend.object_path("ns:abc").as_ref(),
            "llm/ns/abc",
            "s3_path is the prefix"
        );
    }

    #[test]
    fn verify_accepts_a_ca_bundle_path() {
        let c = S3Config::from_params(&p(json!({
            "s3_bucket_name": "b", "s3_verify": "/etc/ssl/certs/ca-certificates.crt"
        })))
        .unwrap();
        assert_eq!(
            c.verify,
            TlsVerify::CaBundle("/etc/ssl/certs/ca-certificates.crt".into())
        );
        let c =
            S3Config::from_params(&p(json!({"s3_bucket_name": "b", "s3_verify": "true"}))).unwrap();
        assert_eq!(c.verify, TlsVerify::System);
        let c = S3Config::from_params(&p(json!({
            "s3_bucket_name": "b", "s3_verify": "/nonexistent/ca.pem"
        })))
        .unwrap();
        let err = c.connect().unwrap_err().to_string();
        assert!(err.contains("cache_params.s3_verify"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        for (params, key) in [
            (json!({}), "s3_bucket_name"),
            (json!({"s3_bucket_name": ""}), "s3_bucket_name"),
            (json!({"s3_bucket_name": 5.5, "s3_path": [1]}), "s3_path"),
            (
                json!({"s3_bucket_name": "b", "s3_endpoint_url": "127.0.0.1:9000"}),
                "s3_endpoint_url",
            ),
            (
                json!({"s3_bucket_name": "b", "s3_aws_access_key_id": "id"}),
                "s3_aws_secret_access_key",
            ),
            (
                json!({"s3_bucket_name": "b", "s3_aws_secret_access_key": "k"}),
                "s3_aws_access_key_id",
            ),
            (
                json!({"s3_bucket_name": "b", "s3_use_ssl": "maybe"}),
                "s3_use_ssl",
            ),
            (json!({"s3_bucket_name": "b", "s3_verify": 7}), "s3_verify"),
            (
                json!({"s3_bucket_name": "b", "s3_path": "a/../b"}),
                "s3_path",
            ),
        ] {
            let err = S3Config::from_params(&p(params.clone()))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("cache_params.{key}")),
                "{params}: {err}"
            );
        }
    }
}
