//! The one error type of the cache layer.
//!
//! Backends return [`CacheError`]; the orchestration ([`crate::Cache`]) turns every backend error
//! into a miss (fail-open), logs it and counts it. Errors that reach the caller are input errors
//! (a malformed directive, a bad configuration), never storage trouble.

use std::time::Duration;

/// A boxed error from a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across the cache layer.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// Everything that can go wrong in the cache layer.
///
/// Each variant says which backend it concerns (when one does) and [`CacheError::is_transient`]
/// says whether retrying the same call later can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A backend call did not finish within its deadline.
    #[error("{backend}: {operation} timed out after {after:?}")]
    Timeout {
        /// Backend name (`memory`, `redis`, `disk`, `s3`, ...).
        backend: String,
        /// Operation name (`get`, `set`, ...).
        operation: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// The backend cannot be reached now (connection refused, breaker open, ...). Transient.
    #[error("{backend}: unavailable: {reason}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// Human-readable reason.
        reason: String,
    },
    /// An error reported by the backend's client library.
    #[error("{backend}: {operation} failed: {source}")]
    Backend {
        /// Backend name.
        backend: String,
        /// Operation name.
        operation: &'static str,
        /// Whether a retry can help (network errors: yes; wrong type / permission: no).
        transient: bool,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The backend does not support this operation (e.g. delete on a write-once store).
    #[error("{backend}: {operation} is not supported")]
    Unsupported {
        /// Backend name.
        backend: String,
        /// Operation name.
        operation: &'static str,
    },
    /// A value is larger than the backend accepts.
    #[error("{backend}: value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Backend name.
        backend: String,
        /// Size of the rejected value.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Invalid configuration (names the offending key).
    #[error("configuration error: {0}")]
    Config(String),
    /// A malformed per-request cache directive (names the offending field).
    #[error(transparent)]
    Directive(#[from] crate::directives::DirectiveError),
    /// A value could not be encoded or decoded.
    #[error("serialization error: {0}")]
    Serialization(String),
}

impl CacheError {
    /// Builds a [`CacheError::Backend`] from any client error.
    pub fn backend(
        backend: impl Into<String>,
        operation: &'static str,
        transient: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            backend: backend.into(),
            operation,
            transient,
            source: source.into(),
        }
    }

    /// Builds a [`CacheError::Unavailable`].
    pub fn unavailable(backend: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Unavailable {
            backend: backend.into(),
            reason: reason.into(),
        }
    }

    /// Builds a [`CacheError::Unsupported`].
    pub fn unsupported(backend: impl Into<String>, operation: &'static str) -> Self {
        Self::Unsupported {
            backend: backend.into(),
            operation,
        }
    }

    /// Whether retrying the same call later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Unavailable { .. } => true,
            Self::Backend { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The backend this error concerns, if any.
    pub fn backend_name(&self) -> Option<&str> {
        match self {
            Self::Timeout { backend, .. }
            | Self::Unavailable { backend, .. }
            | Self::Backend { backend, .. }
            | Self::Unsupported { backend, .. }
            | Self::ValueTooLarge { backend, .. } => Some(backend),
            _ => None,
        }
    }

    /// A short label for metrics (`timeout`, `unavailable`, `backend`, ...).
    pub fn kind_label(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Unavailable { .. } => "unavailable",
            Self::Backend { .. } => "backend",
            Self::Unsupported { .. } => "unsupported",
            Self::ValueTooLarge { .. } => "too_large",
            Self::Config(_) => "config",
            Self::Directive(_) => "directive",
            Self::Serialization(_) => "serialization",
        }
    }
}
