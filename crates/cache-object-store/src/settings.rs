//! Settings shared by every object store: HTTP timeouts, retries, batch concurrency, and the
//! [`Secret`] wrapper that keeps credentials out of `Debug` output and logs.

use std::fmt;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::{CacheError, Result};

/// A credential. Its `Debug` and `Display` print `***`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself (only to hand it to the client library).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Default bound on concurrent requests of one batch (`object_store_max_concurrency`).
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;

/// HTTP client, retry and concurrency settings of an object-store backend.
///
/// The defaults keep a whole retry sequence inside the cache's deadlines (llm-cache's default
/// read deadline for object stores is 1 s, the write deadline 2 s): a request that cannot
/// succeed gives up, and the cache serves a miss, rather than retrying for minutes as
/// `object_store`'s own defaults would (10 retries, 3 minutes).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientSettings {
    /// Concurrent requests of one `get_many`/`set_many` batch (`object_store_max_concurrency`,
    /// default 16).
    pub max_concurrency: usize,
    /// Retries of a failed request: connection errors, timeouts, 5xx and 429 answers
    /// (`object_store_max_retries`, default 3).
    pub max_retries: usize,
    /// No retry starts after this much time since the first attempt
    /// (`object_store_retry_timeout`, seconds, default 1.5).
    pub retry_timeout: Duration,
    /// First backoff between retries; it doubles each time, up to 400 ms.
    pub initial_backoff: Duration,
    /// Deadline of one HTTP request, body included (`object_store_request_timeout`, seconds,
    /// default 5).
    pub request_timeout: Duration,
    /// Deadline of establishing a connection (`object_store_connect_timeout`, seconds,
    /// default 2).
    pub connect_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_retries: 3,
            retry_timeout: Duration::from_millis(1500),
            initial_backoff: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl ClientSettings {
    /// Reads the `object_store_*` keys.
    ///
    /// # Errors
    /// A wrong type or a zero concurrency or timeout, naming the key.
    pub fn from_params(p: &Params) -> Result<Self> {
        let d = ClientSettings::default();
        let max_concurrency = match p.u64("object_store_max_concurrency")? {
            None => d.max_concurrency,
            Some(0) => {
                return Err(p.error(
                    "object_store_max_concurrency",
                    "must be at least 1 (it bounds the concurrent requests of a batch)",
                ));
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let positive = |key: &str, default: Duration| -> Result<Duration> {
            match p.seconds(key)? {
                None => Ok(default),
                Some(t) if t.is_zero() => Err(p.error(key, "must be more than 0 seconds")),
                Some(t) => Ok(t),
            }
        };
        Ok(ClientSettings {
            max_concurrency,
            max_retries: p
                .u64("object_store_max_retries")?
                .map_or(d.max_retries, |n| n.min(100) as usize),
            retry_timeout: p
                .seconds("object_store_retry_timeout")?
                .unwrap_or(d.retry_timeout),
            initial_backoff: d.initial_backoff,
            request_timeout: positive("object_store_request_timeout", d.request_timeout)?,
            connect_timeout: positive("object_store_connect_timeout", d.connect_timeout)?,
        })
    }

    /// `object_store`'s retry configuration for these settings.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    pub fn retry_config(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: Duration::from_millis(400).max(self.initial_backoff),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }

    /// `object_store`'s HTTP client options for these settings.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    pub fn client_options(&self) -> object_store::ClientOptions {
        object_store::ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
    }
}

/// Reads a required string, with an error naming the key and the backend type.
#[cfg_attr(
    not(all(feature = "s3", feature = "gcs", feature = "azure")),
    allow(dead_code)
)]
pub(crate) fn required(p: &Params, key: &str, env: Option<&str>, ty: &str) -> Result<String> {
    let value = match env {
        Some(env) => p.string_or_env(key, env)?,
        None => p.string(key)?,
    };
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => Err(p.error(
            key,
            match env {
                Some(env) => {
                    format!("required for `type: {ty}` (or set the environment variable {env})")
                }
                None => format!("required for `type: {ty}`"),
            },
        )),
    }
}

/// An optional non-empty string.
#[cfg_attr(
    not(all(feature = "s3", feature = "gcs", feature = "azure")),
    allow(dead_code)
)]
pub(crate) fn optional(p: &Params, key: &str) -> Result<Option<String>> {
    Ok(p.string(key)?
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty()))
}

/// An optional credential.
#[cfg_attr(
    not(all(feature = "s3", feature = "gcs", feature = "azure")),
    allow(dead_code)
)]
pub(crate) fn secret(p: &Params, key: &str) -> Result<Option<Secret>> {
    Ok(optional(p, key)?.map(Secret::new))
}

/// Wraps an `object_store` builder error as a configuration error.
#[cfg_attr(
    not(all(feature = "s3", feature = "gcs", feature = "azure")),
    allow(dead_code)
)]
pub(crate) fn build_error(ty: &str, e: object_store::Error) -> CacheError {
    CacheError::Config(format!("cache_params: cannot configure `type: {ty}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: serde_json::Value) -> Params {
        Params::new(v.as_object().unwrap().clone(), "cache_params")
    }

    #[test]
    fn defaults_and_overrides() {
        let d = ClientSettings::from_params(&p(json!({}))).unwrap();
        assert_eq!(d, ClientSettings::default());
        let s = ClientSettings::from_params(&p(json!({
            "object_store_max_concurrency": "4",
            "object_store_max_retries": 0,
            "object_store_retry_timeout": 0.5,
            "object_store_request_timeout": 2,
            "object_store_connect_timeout": "0.25",
        })))
        .unwrap();
        assert_eq!(s.max_concurrency, 4);
        assert_eq!(s.max_retries, 0);
        assert_eq!(s.retry_timeout, Duration::from_millis(500));
        assert_eq!(s.request_timeout, Duration::from_secs(2));
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
        let r = s.retry_config();
        assert_eq!(r.max_retries, 0);
        assert_eq!(r.retry_timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (key, value) in [
            ("object_store_max_concurrency", json!(0)),
            ("object_store_max_concurrency", json!("many")),
            ("object_store_request_timeout", json!(0)),
            ("object_store_retry_timeout", json!(-1)),
            ("object_store_max_retries", json!(true)),
        ] {
            let err = ClientSettings::from_params(&p(json!({ key: value })))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("cache_params.{key}")), "{err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "\"***\" ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
