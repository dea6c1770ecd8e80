//! `type: qdrant-semantic`: a [`SemanticBackend`] on a Qdrant collection, over gRPC
//! ([`qdrant-client`](https://docs.rs/qdrant-client)).
//!
//! # Configuration (`cache_params`, LiteLLM's names)
//!
//! | key | env fallback | meaning |
//! |---|---|---|
//! | `qdrant_api_base` | `QDRANT_URL`, `QDRANT_API_BASE` | Qdrant URL (required). LiteLLM talks REST (port 6333); this backend talks gRPC, so port 6333 — or no port — becomes 6334, Qdrant's gRPC port. |
//! | `qdrant_api_key` | `QDRANT_API_KEY` | API key (sent as `api-key` metadata). |
//! | `qdrant_collection_name` | — | Collection (required). Created when missing. |
//! | `qdrant_semantic_cache_vector_size` | `QDRANT_VECTOR_SIZE` | Vector size for a new collection (LiteLLM's default 1536); if set, must match an existing collection. |
//! | `qdrant_quantization_config` | — | `none` (our default), `binary` (LiteLLM's default), `scalar` (`QDRANT_SCALAR_QUANTILE`, default 0.99) or `product`; applied only when the collection is created. |
//! | `qdrant_grpc_url` | `QDRANT_GRPC_URL` | Ours: a gRPC URL used verbatim (no port rewriting); wins over `qdrant_api_base`. |
//! | `qdrant_cleanup_interval` | — | Ours: seconds between deletions of expired points (default 60; `0` turns the task off). |
//! | `qdrant_timeout` | — | Ours: per-RPC timeout of the client in seconds (default 5). The cache's own read/write deadlines still apply and are usually shorter. |
//!
//! # Data model
//!
//! One point per (scope, namespace, prompt), with a deterministic UUID derived from them, so
//! storing the same prompt again overwrites the point (LiteLLM adds a duplicate each time). The
//! payload holds `scope` (keyword, indexed), `namespace` and `namespace_path` (the namespace and
//! each of its `:`-separated parents, keyword, indexed, so `clear("a")` also removes `a:b`),
//! `prompt`, `value` (the entry envelope; `value_b64` if it is not UTF-8), `stored_at` and
//! `expires_at` (unix milliseconds, integer, indexed; absent without a TTL).
//!
//! * **Scope is a pre-filter**: every search carries a `must` keyword condition on `scope`, so
//!   Qdrant ranks only that scope's points; a nearer point of another scope cannot displace or
//!   replace a hit.
//! * **TTL**: Qdrant has no expiry. Searches filter `expires_at > now` (or absent); a background
//!   task deletes expired points every `qdrant_cleanup_interval` and stops when the backend is
//!   dropped.
//! * **Similarity** is Qdrant's Cosine score (the cosine similarity), clamped to `[0, 1]`. Qdrant
//!   keeps only points whose score is *strictly* above `score_threshold`; the backend asks for a
//!   hair below the threshold and applies `similarity ≥ min_similarity` itself, as the
//!   [`SemanticBackend`] contract says.
//! * **Dimensions**: a collection that is not a single unnamed Cosine vector, or whose size
//!   differs from `qdrant_semantic_cache_vector_size`, is a configuration error; so is a vector
//!   whose length differs from the collection's — never a silent miss.
//! * `clear(Some(ns))` deletes the points whose `namespace_path` contains `ns`; `clear(None)`
//!   deletes every point this backend wrote to the collection (those with a `scope` field) and
//!   leaves points written by anything else (for example LiteLLM's) alone.
//!
//! # Failures
//!
//! [`QdrantBackend::from_params`] fails only for a bad configuration or a collection that can
//! never work (wrong size, distance or layout). If Qdrant is unreachable at start, the backend
//! starts degraded and sets the collection up on the first call that reaches it. gRPC errors
//! become [`CacheError::Backend`]: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `CANCELLED` (client
//! timeout), `RESOURCE_EXHAUSTED`, `ABORTED`, `UNKNOWN` and connection failures are transient.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use cache_core::backend::Health;
use cache_core::error::{CacheError, Result};
use cache_core::params::Params;
use cache_core::semantic::{SemanticBackend, SemanticMatch, SemanticRecord};
use qdrant_client::qdrant::{self as pb, Condition, Filter};
use qdrant_client::{Payload, Qdrant, QdrantError};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// Backend name, in errors and health reports.
pub const NAME: &str = "qdrant-semantic";

/// Vector size of a new collection when none is configured (LiteLLM's default, OpenAI's
/// `text-embedding-ada-002`).
pub const DEFAULT_VECTOR_SIZE: usize = 1536;

/// The `cache_params` keys this backend reads (LiteLLM's, then ours).
pub const PARAM_KEYS: &[&str] = &[
    "qdrant_api_base",
    "qdrant_api_key",
    "qdrant_collection_name",
    "qdrant_semantic_cache_vector_size",
    "qdrant_quantization_config",
    "qdrant_grpc_url",
    "qdrant_cleanup_interval",
    "qdrant_timeout",
];

/// Payload field names.
mod field {
    pub(super) const SCOPE: &str = "scope";
    pub(super) const NAMESPACE: &str = "namespace";
    pub(super) const NAMESPACE_PATH: &str = "namespace_path";
    pub(super) const PROMPT: &str = "prompt";
    pub(super) const VALUE: &str = "value";
    pub(super) const VALUE_B64: &str = "value_b64";
    pub(super) const STORED_AT: &str = "stored_at";
    pub(super) const EXPIRES_AT: &str = "expires_at";
}

const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SCALAR_QUANTILE: f32 = 0.99;
/// How long a permanent setup failure (a mismatched collection) is remembered before the
/// backend looks at the collection again.
const SETUP_RETRY: Duration = Duration::from_secs(5);
/// Oversampling for searches on a quantized collection (LiteLLM's value), with rescoring on
/// the original vectors.
const OVERSAMPLING: f64 = 3.0;

/// Vector compression for a new collection (`qdrant_quantization_config`).
///
/// Quantization trades accuracy for memory. Qdrant rescores candidates with the original vectors
/// (the backend always asks for it), so the reported similarity stays exact, but the candidate
/// set comes from the compressed vectors and the true nearest neighbour can be missed. For a
/// cache that would rather miss than answer wrongly, and whose collections are small, the default
/// is [`Quantization::None`]; LiteLLM's default is binary.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Quantization {
    /// No quantization (our default).
    #[default]
    None,
    /// Binary quantization (LiteLLM's default).
    Binary,
    /// Scalar int8 quantization with the given quantile (`QDRANT_SCALAR_QUANTILE`, default 0.99).
    Scalar {
        /// Quantile for the int8 range.
        quantile: f32,
    },
    /// Product quantization, x16 compression.
    Product,
}

impl Quantization {
    fn to_grpc(self) -> Option<pb::QuantizationConfig> {
        use pb::quantization_config::Quantization as Q;
        let q = match self {
            Quantization::None => return None,
            Quantization::Binary => Q::Binary(pb::BinaryQuantization::default()),
            Quantization::Scalar { quantile } => Q::Scalar(pb::ScalarQuantization {
                r#type: pb::QuantizationType::Int8 as i32,
                quantile: Some(quantile),
                ..Default::default()
            }),
            Quantization::Product => Q::Product(pb::ProductQuantization {
                compression: pb::CompressionRatio::X16 as i32,
                ..Default::default()
            }),
        };
        Some(pb::QuantizationConfig {
            quantization: Some(q),
        })
    }
}

/// Configuration of a [`QdrantBackend`]. `Debug` hides the API key.
#[derive(Clone)]
#[non_exhaustive]
pub struct QdrantConfig {
    /// gRPC URL (`http://host:6334`, `https://host:6334`).
    pub url: String,
    /// API key.
    pub api_key: Option<String>,
    /// Collection name.
    pub collection: String,
    /// Vector size: used to create the collection ([`DEFAULT_VECTOR_SIZE`] when `None`) and, when
    /// set, checked against an existing one. A caller that knows its embedder's dimension should
    /// set it.
    pub vector_size: Option<usize>,
    /// Quantization of a new collection.
    pub quantization: Quantization,
    /// Interval of the expired-point cleanup; `None` disables it.
    pub cleanup_interval: Option<Duration>,
    /// Per-RPC client timeout.
    pub timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
}

impl fmt::Debug for QdrantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QdrantConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection", &self.collection)
            .field("vector_size", &self.vector_size)
            .field("quantization", &self.quantization)
            .field("cleanup_interval", &self.cleanup_interval)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl QdrantConfig {
    /// A configuration with defaults for everything but the gRPC URL and the collection.
    pub fn new(url: impl Into<String>, collection: impl Into<String>) -> Self {
        QdrantConfig {
            url: url.into(),
            api_key: None,
            collection: collection.into(),
            vector_size: None,
            quantization: Quantization::None,
            cleanup_interval: Some(DEFAULT_CLEANUP_INTERVAL),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Reads a `cache_params` mapping (see the [module docs](self) for the keys).
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the key: a missing URL or collection, a malformed URL, an
    /// unknown quantization, a zero vector size.
    pub fn from_params(params: &Params) -> Result<Self> {
        let url = match params.string_or_env("qdrant_grpc_url", "QDRANT_GRPC_URL")? {
            Some(u) => {
                check_url(&u).map_err(|e| params.error("qdrant_grpc_url", e))?;
                u
            }
            None => {
                let base = match params.string_or_env("qdrant_api_base", "QDRANT_URL")? {
                    Some(b) => Some(b),
                    None => params.string_or_env("qdrant_api_base", "QDRANT_API_BASE")?,
                };
                let base = base.ok_or_else(|| {
                    params.error(
                        "qdrant_api_base",
                        "required for type qdrant-semantic (or set QDRANT_URL / QDRANT_API_BASE)",
                    )
                })?;
                grpc_url_from_api_base(&base).map_err(|e| params.error("qdrant_api_base", e))?
            }
        };
        let collection = params
            .string("qdrant_collection_name")?
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                params.error(
                    "qdrant_collection_name",
                    "required for type qdrant-semantic",
                )
            })?;
        let vector_size =
            match params.u64_or_env("qdrant_semantic_cache_vector_size", "QDRANT_VECTOR_SIZE")? {
                None => None,
                Some(0) => {
                    return Err(
                        params.error("qdrant_semantic_cache_vector_size", "must be at least 1")
                    );
                }
                Some(n) => Some(usize::try_from(n).map_err(|_| {
                    params.error("qdrant_semantic_cache_vector_size", "is too large")
                })?),
            };
        let quantization = match params
            .string("qdrant_quantization_config")?
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("none") | Some("") => Quantization::None,
            Some("binary") => Quantization::Binary,
            Some("product") => Quantization::Product,
            Some("scalar") => Quantization::Scalar {
                quantile: scalar_quantile()?,
            },
            Some(other) => {
                return Err(params.error(
                    "qdrant_quantization_config",
                    format!("expected none, binary, scalar or product, got {other:?}"),
                ));
            }
        };
        let cleanup_interval = match params.seconds("qdrant_cleanup_interval")? {
            None => Some(DEFAULT_CLEANUP_INTERVAL),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        };
        let timeout = match params.seconds("qdrant_timeout")? {
            None => DEFAULT_TIMEOUT,
            Some(d) if d.is_zero() => {
                return Err(params.error("qdrant_timeout", "must be more than 0 seconds"));
            }
            Some(d) => d,
        };
        Ok(QdrantConfig {
            url,
            api_key: params.string_or_env("qdrant_api_key", "QDRANT_API_KEY")?,
            collection,
            vector_size,
            quantization,
            cleanup_interval,
            timeout,
            connect_timeout: timeout,
        })
    }
}

fn scalar_quantile() -> Result<f32> {
    match std::env::var("QDRANT_SCALAR_QUANTILE") {
        Ok(s) if !s.trim().is_empty() => match s.trim().parse::<f32>() {
            Ok(q) if q > 0.5 && q <= 1.0 => Ok(q),
            _ => Err(CacheError::Config(format!(
                "environment variable QDRANT_SCALAR_QUANTILE: expected a number in (0.5, 1], got {s:?}"
            ))),
        },
        _ => Ok(DEFAULT_SCALAR_QUANTILE),
    }
}

fn check_url(u: &str) -> std::result::Result<url::Url, String> {
    let parsed = url::Url::parse(u.trim()).map_err(|e| format!("not a URL ({e}): {u:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "expected an http:// or https:// URL, got scheme {:?}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL without a host: {u:?}"));
    }
    Ok(parsed)
}

/// LiteLLM's `qdrant_api_base` is a REST URL; gRPC listens on 6334. Port 6333 or no port
/// become 6334; any other port is kept (a proxy or a custom gRPC port). Any path is dropped.
fn grpc_url_from_api_base(base: &str) -> std::result::Result<String, String> {
    let parsed = check_url(base)?;
    let host = parsed.host_str().unwrap_or_default();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let port = match parsed.port() {
        None | Some(6333) => 6334,
        Some(p) => p,
    };
    Ok(format!("{}://{host}:{port}", parsed.scheme()))
}

// ------------------------------------------------------------------------------------------------
// The backend
// ------------------------------------------------------------------------------------------------

/// The Qdrant semantic backend (`type: qdrant-semantic`). See the [module docs](self).
///
/// `Debug` shows the URL and collection, never the API key. Dropping it stops the cleanup task.
pub struct QdrantBackend {
    inner: Arc<Inner>,
    cleanup: Option<JoinHandle<()>>,
}

struct Inner {
    client: Qdrant,
    config: QdrantConfig,
    ready: OnceCell<Ready>,
    /// The last permanent setup failure, remembered for [`SETUP_RETRY`].
    setup_failure: Mutex<Option<(Instant, SetupFailure)>>,
}

/// A permanent setup failure, kept to be reported again without asking Qdrant.
enum SetupFailure {
    Config(String),
    Other(String),
}

impl SetupFailure {
    fn new(e: &CacheError) -> Self {
        match e {
            CacheError::Config(m) => SetupFailure::Config(m.clone()),
            other => SetupFailure::Other(other.to_string()),
        }
    }

    fn error(&self) -> CacheError {
        match self {
            SetupFailure::Config(m) => CacheError::Config(m.clone()),
            SetupFailure::Other(m) => permanent("setup", m.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ready {
    dims: usize,
    quantized: bool,
}

impl fmt::Debug for QdrantBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("QdrantBackend")
            .field("url", &c.url)
            .field("collection", &c.collection)
            .field("api_key", &c.api_key.as_ref().map(|_| "<redacted>"))
            .field("dims", &self.inner.ready.get().map(|r| r.dims))
            .field("cleanup_interval", &c.cleanup_interval)
            .finish()
    }
}

impl Drop for QdrantBackend {
    fn drop(&mut self) {
        if let Some(task) = self.cleanup.take() {
            task.abort();
        }
    }
}

impl QdrantBackend {
    /// From a `cache_params` mapping; see [`QdrantConfig::from_params`] and
    /// [`QdrantBackend::connect`].
    ///
    /// # Errors
    /// A configuration error, or a collection that cannot work; never an unreachable server.
    pub async fn from_params(params: &Params) -> Result<Self> {
        Self::connect(QdrantConfig::from_params(params)?).await
    }

    /// Builds the client, then sets the collection up (creates it and its payload indexes when
    /// missing, checks its layout) within the configured timeout. Must be called within a Tokio
    /// runtime (the cleanup task is spawned on it).
    ///
    /// # Errors
    /// [`CacheError::Config`] for an unusable configuration or an incompatible collection. An
    /// unreachable or slow server is not an error: the backend starts degraded and finishes the
    /// setup on the first call that reaches Qdrant.
    pub async fn connect(config: QdrantConfig) -> Result<Self> {
        check_url(&config.url).map_err(|e| CacheError::Config(format!("{NAME}: url: {e}")))?;
        if config.collection.trim().is_empty() {
            return Err(CacheError::Config(format!(
                "{NAME}: the collection name is empty"
            )));
        }
        let mut builder = Qdrant::from_url(&config.url)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .skip_compatibility_check();
        if let Some(key) = &config.api_key {
            builder = builder.api_key(key.as_str());
        }
        let client = builder
            .build()
            .map_err(|e| CacheError::Config(format!("{NAME}: client: {e}")))?;
        let inner = Arc::new(Inner {
            client,
            config,
            ready: OnceCell::new(),
            setup_failure: Mutex::new(None),
        });
        let setup_deadline = inner.config.timeout + inner.config.connect_timeout;
        match tokio::time::timeout(setup_deadline, inner.ensure_ready()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !e.is_transient() => return Err(e),
            Ok(Err(e)) => tracing::warn!(
                backend = NAME,
                collection = %inner.config.collection,
                error = %e,
                "Qdrant not reachable at start; starting degraded, setup retried on first use"
            ),
            Err(_) => tracing::warn!(
                backend = NAME,
                collection = %inner.config.collection,
                "Qdrant setup did not finish within {setup_deadline:?}; starting degraded"
            ),
        }
        let cleanup = inner
            .config
            .cleanup_interval
            .map(|every| spawn_cleanup(Arc::downgrade(&inner), every));
        Ok(QdrantBackend { inner, cleanup })
    }

    /// The configuration (`Debug` redacts the API key).
    pub fn config(&self) -> &QdrantConfig {
        &self.inner.config
    }

    /// The collection's vector size, once the setup has reached Qdrant.
    pub fn dimensions(&self) -> Option<usize> {
        self.inner.ready.get().map(|r| r.dims)
    }

    /// Stores many records in one request (for warming a cache or loading a benchmark); the
    /// same as [`SemanticBackend::store`] for each record.
    ///
    /// # Errors
    /// As [`SemanticBackend::store`]; nothing is written if a vector has the wrong dimension.
    pub async fn store_many(&self, records: Vec<SemanticRecord>) -> Result<()> {
        self.inner.upsert("store", records).await
    }

    /// Deletes the points whose TTL has passed and returns how many there were. The cleanup
    /// task calls this every `qdrant_cleanup_interval`.
    ///
    /// # Errors
    /// Qdrant errors.
    pub async fn purge_expired(&self) -> Result<u64> {
        self.inner.purge_expired().await
    }
}

fn spawn_cleanup(inner: Weak<Inner>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            match inner.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(
                    backend = NAME,
                    collection = %inner.config.collection,
                    deleted = n,
                    "deleted expired points"
                ),
                Err(e) => tracing::debug!(
                    backend = NAME,
                    collection = %inner.config.collection,
                    error = %e,
                    "expired-point cleanup failed; retrying next interval"
                ),
            }
        }
    })
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether a gRPC status is worth retrying later.
fn transient_status(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unknown => true,
        // qdrant-client reports a failed connection attempt as INTERNAL.
        Code::Internal => status.message().starts_with("Failed to connect"),
        _ => false,
    }
}

fn qdrant_error(op: &'static str, e: QdrantError) -> CacheError {
    let transient = match &e {
        QdrantError::ResponseError { status } => transient_status(status),
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => true,
        _ => false,
    };
    CacheError::backend(NAME, op, transient, e)
}

fn permanent(op: &'static str, msg: String) -> CacheError {
    CacheError::backend(NAME, op, false, msg)
}

/// A deterministic point id: re-storing the same prompt in the same scope and namespace
/// overwrites the point.
fn point_id(scope: &str, namespace: Option<&str>, prompt: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"llm-cache/qdrant-semantic/v1\0");
    for part in [scope, namespace.unwrap_or(""), prompt] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&[u8::from(namespace.is_some())]);
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8 (custom)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `a:b:c` → `[a, a:b, a:b:c]`.
fn namespace_path(ns: &str) -> Vec<String> {
    let mut out: Vec<String> = ns
        .match_indices(':')
        .map(|(i, _)| ns[..i].to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    out.push(ns.to_owned());
    out.dedup();
    out
}

fn check_vector(op: &'static str, collection: &str, dims: usize, v: &[f32]) -> Result<()> {
    if v.len() != dims {
        return Err(permanent(
            op,
            format!(
                "vector has {} dimensions but collection `{collection}` has {dims}: the embedding \
                 model and the collection (qdrant_semantic_cache_vector_size) disagree",
                v.len()
            ),
        ));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(permanent(op, "vector has non-finite components".to_owned()));
    }
    Ok(())
}

fn string_field<'a>(
    p: &'a std::collections::HashMap<String, pb::Value>,
    k: &str,
) -> Option<&'a str> {
    match p.get(k)?.kind.as_ref()? {
        pb::value::Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A search hit, or `None` for a point that is not ours or is malformed (a miss, not an error).
fn parse_match(scope: &str, point: &pb::ScoredPoint) -> Option<SemanticMatch> {
    let p = &point.payload;
    if string_field(p, field::SCOPE)? != scope {
        return None;
    }
    let prompt = string_field(p, field::PROMPT)
        .unwrap_or_default()
        .to_owned();
    let value = match string_field(p, field::VALUE) {
        Some(v) => bytes::Bytes::copy_from_slice(v.as_bytes()),
        None => bytes::Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(string_field(p, field::VALUE_B64)?)
                .ok()?,
        ),
    };
    if !point.score.is_finite() {
        return None;
    }
    Some(SemanticMatch::new(
        point.score.clamp(0.0, 1.0),
        prompt,
        value,
    ))
}

/// The point for a record (see the module docs for the payload).
fn to_point(record: SemanticRecord, now: i64) -> pb::PointStruct {
    let mut payload = Payload::new();
    payload.insert(field::SCOPE, record.scope.as_str());
    if let Some(ns) = &record.namespace {
        payload.insert(field::NAMESPACE, ns.as_str());
        payload.insert(field::NAMESPACE_PATH, namespace_path(ns));
    }
    payload.insert(field::PROMPT, record.prompt.as_str());
    match std::str::from_utf8(&record.value) {
        Ok(s) => payload.insert(field::VALUE, s),
        Err(_) => payload.insert(
            field::VALUE_B64,
            base64::engine::general_purpose::STANDARD.encode(&record.value),
        ),
    }
    payload.insert(field::STORED_AT, now);
    if let Some(ttl) = record.ttl {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        payload.insert(field::EXPIRES_AT, now.saturating_add(ttl_ms));
    }
    let id = point_id(&record.scope, record.namespace.as_deref(), &record.prompt);
    pb::PointStruct::new(id, record.vector, payload)
}

impl Inner {
    fn collection(&self) -> &str {
        &self.config.collection
    }

    async fn ensure_ready(&self) -> Result<Ready> {
        if let Some(r) = self.ready.get() {
            return Ok(*r);
        }
        if let Some((at, failure)) = self
            .setup_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && at.elapsed() < SETUP_RETRY
        {
            return Err(failure.error());
        }
        let result = self.ready.get_or_try_init(|| self.setup()).await.copied();
        if let Err(e) = &result
            && !e.is_transient()
        {
            *self.setup_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), SetupFailure::new(e)));
        }
        result
    }

    /// Creates the collection and payload indexes when missing; checks the collection's layout.
    async fn setup(&self) -> Result<Ready> {
        let c = self.collection();
        let exists = self
            .client
            .collection_exists(c)
            .await
            .map_err(|e| qdrant_error("setup", e))?;
        if !exists {
            let size = self.config.vector_size.unwrap_or(DEFAULT_VECTOR_SIZE);
            let create = pb::CreateCollection {
                collection_name: c.to_owned(),
                vectors_config: Some(pb::VectorsConfig {
                    config: Some(pb::vectors_config::Config::Params(pb::VectorParams {
                        size: size as u64,
                        distance: pb::Distance::Cosine as i32,
                        ..Default::default()
                    })),
                }),
                quantization_config: self.config.quantization.to_grpc(),
                ..Default::default()
            };
            match self.client.create_collection(create).await {
                Ok(_) => tracing::info!(
                    backend = NAME,
                    collection = c,
                    size,
                    quantization = ?self.config.quantization,
                    "created Qdrant collection"
                ),
                // Another instance created it in the meantime: check it below like any other.
                Err(QdrantError::ResponseError { status })
                    if status.code() == tonic::Code::AlreadyExists => {}
                Err(e) => return Err(qdrant_error("setup", e)),
            }
        }
        let info = self
            .client
            .collection_info(c)
            .await
            .map_err(|e| qdrant_error("setup", e))?
            .result
            .ok_or_else(|| permanent("setup", format!("no info for collection `{c}`")))?;
        let config = info.config.as_ref();
        let params = match config
            .and_then(|cfg| cfg.params.as_ref())
            .and_then(|p| p.vectors_config.as_ref())
            .and_then(|v| v.config.as_ref())
        {
            Some(pb::vectors_config::Config::Params(p)) => p,
            Some(pb::vectors_config::Config::ParamsMap(_)) => {
                return Err(CacheError::Config(format!(
                    "{NAME}: collection `{c}` has named vectors; this backend needs a collection \
                     with one unnamed vector (use another qdrant_collection_name)"
                )));
            }
            None => {
                return Err(CacheError::Config(format!(
                    "{NAME}: collection `{c}` reports no vector configuration"
                )));
            }
        };
        if params.distance != pb::Distance::Cosine as i32 {
            let d = pb::Distance::try_from(params.distance)
                .map(|d| d.as_str_name())
                .unwrap_or("unknown");
            return Err(CacheError::Config(format!(
                "{NAME}: collection `{c}` uses {d} distance; semantic caching needs Cosine \
                 (its scores are the similarity the threshold is compared with)"
            )));
        }
        let dims = usize::try_from(params.size).unwrap_or(usize::MAX);
        if let Some(want) = self.config.vector_size
            && want != dims
        {
            return Err(CacheError::Config(format!(
                "{NAME}: collection `{c}` has {dims}-dimensional vectors but \
                 qdrant_semantic_cache_vector_size is {want}; use a matching size or another \
                 qdrant_collection_name"
            )));
        }
        let quantized = config
            .and_then(|cfg| cfg.quantization_config.as_ref())
            .is_some()
            || params.quantization_config.is_some();
        for (name, want, field_type) in [
            (
                field::SCOPE,
                pb::PayloadSchemaType::Keyword,
                pb::FieldType::Keyword,
            ),
            (
                field::NAMESPACE_PATH,
                pb::PayloadSchemaType::Keyword,
                pb::FieldType::Keyword,
            ),
            (
                field::EXPIRES_AT,
                pb::PayloadSchemaType::Integer,
                pb::FieldType::Integer,
            ),
        ] {
            match info.payload_schema.get(name) {
                Some(have) if have.data_type == want as i32 => {}
                Some(have) => {
                    let t = pb::PayloadSchemaType::try_from(have.data_type)
                        .map(|t| t.as_str_name())
                        .unwrap_or("unknown");
                    return Err(CacheError::Config(format!(
                        "{NAME}: payload field `{name}` of collection `{c}` is indexed as {t}, \
                         expected {}",
                        want.as_str_name()
                    )));
                }
                None => {
                    self.client
                        .create_field_index(pb::CreateFieldIndexCollection {
                            collection_name: c.to_owned(),
                            wait: Some(true),
                            field_name: name.to_owned(),
                            field_type: Some(field_type as i32),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| qdrant_error("setup", e))?;
                }
            }
        }
        Ok(Ready { dims, quantized })
    }

    async fn count(&self, op: &'static str, filter: Filter) -> Result<u64> {
        Ok(self
            .client
            .count(pb::CountPoints {
                collection_name: self.collection().to_owned(),
                filter: Some(filter),
                exact: Some(true),
                ..Default::default()
            })
            .await
            .map_err(|e| qdrant_error(op, e))?
            .result
            .map_or(0, |r| r.count))
    }

    /// Counts, then deletes, the points matching `filter`.
    async fn delete_matching(&self, op: &'static str, filter: Filter) -> Result<u64> {
        self.ensure_ready().await?;
        let n = self.count(op, filter.clone()).await?;
        if n == 0 {
            return Ok(0);
        }
        self.client
            .delete_points(pb::DeletePoints {
                collection_name: self.collection().to_owned(),
                wait: Some(true),
                points: Some(pb::PointsSelector {
                    points_selector_one_of: Some(pb::points_selector::PointsSelectorOneOf::Filter(
                        filter,
                    )),
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| qdrant_error(op, e))?;
        Ok(n)
    }

    /// Writes records in one `Upsert` (waiting until they are searchable).
    async fn upsert(&self, op: &'static str, records: Vec<SemanticRecord>) -> Result<()> {
        let ready = self.ensure_ready().await?;
        for r in &records {
            check_vector(op, self.collection(), ready.dims, &r.vector)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        let points = records.into_iter().map(|r| to_point(r, now)).collect();
        self.client
            .upsert_points(pb::UpsertPoints {
                collection_name: self.collection().to_owned(),
                wait: Some(true),
                points,
                ..Default::default()
            })
            .await
            .map_err(|e| qdrant_error(op, e))?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64> {
        let filter = Filter::must([Condition::range(
            field::EXPIRES_AT,
            pb::Range {
                lte: Some(now_millis() as f64),
                ..Default::default()
            },
        )]);
        self.delete_matching("purge_expired", filter).await
    }
}

#[async_trait]
impl SemanticBackend for QdrantBackend {
    fn name(&self) -> &str {
        NAME
    }

    async fn search(
        &self,
        scope: &str,
        vector: &[f32],
        min_similarity: f32,
        limit: usize,
    ) -> Result<Vec<SemanticMatch>> {
        if min_similarity.is_nan() {
            return Err(permanent("search", "min_similarity is NaN".to_owned()));
        }
        let inner = &self.inner;
        let ready = inner.ensure_ready().await?;
        check_vector("search", inner.collection(), ready.dims, vector)?;
        if limit == 0 || min_similarity > 1.0 {
            return Ok(Vec::new());
        }
        let filter = Filter {
            must: vec![Condition::matches(field::SCOPE, scope.to_owned())],
            should: vec![
                Condition::range(
                    field::EXPIRES_AT,
                    pb::Range {
                        gt: Some(now_millis() as f64),
                        ..Default::default()
                    },
                ),
                Condition::is_empty(field::EXPIRES_AT),
            ],
            ..Default::default()
        };
        // Qdrant keeps scores strictly above the threshold; ask for a little less and apply
        // `>= min_similarity` below. At or below 0 every point qualifies after clamping.
        let score_threshold = (min_similarity > 0.0).then_some(min_similarity - 1e-6);
        let params = ready.quantized.then(|| pb::SearchParams {
            quantization: Some(pb::QuantizationSearchParams {
                ignore: Some(false),
                rescore: Some(true),
                oversampling: Some(OVERSAMPLING),
            }),
            ..Default::default()
        });
        let response = inner
            .client
            .query(pb::QueryPoints {
                collection_name: inner.collection().to_owned(),
                query: Some(pb::Query {
                    variant: Some(pb::query::Variant::Nearest(pb::VectorInput::from(
                        vector.to_vec(),
                    ))),
                }),
                filter: Some(filter),
                params,
                score_threshold,
                limit: Some(limit as u64),
                with_payload: Some(pb::WithPayloadSelector {
                    selector_options: Some(pb::with_payload_selector::SelectorOptions::Include(
                        pb::PayloadIncludeSelector {
                            fields: [field::SCOPE, field::PROMPT, field::VALUE, field::VALUE_B64]
                                .map(str::to_owned)
                                .to_vec(),
                        },
                    )),
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| qdrant_error("search", e))?;
        let mut out = Vec::with_capacity(response.result.len());
        for point in &response.result {
            match parse_match(scope, point) {
                Some(m) if m.similarity >= min_similarity => out.push(m),
                Some(_) => {}
                None => tracing::debug!(
                    backend = NAME,
                    collection = inner.collection(),
                    "ignoring a malformed or foreign point in search results"
                ),
            }
        }
        out.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        out.truncate(limit);
        Ok(out)
    }

    async fn store(&self, record: SemanticRecord) -> Result<()> {
        self.inner.upsert("store", vec![record]).await
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let filter = match namespace {
            Some(ns) => Filter::must([Condition::matches(field::NAMESPACE_PATH, ns.to_owned())]),
            None => Filter::must_not([Condition::is_empty(field::SCOPE)]),
        };
        self.inner.delete_matching("clear", filter).await
    }

    async fn ping(&self) -> Result<Health> {
        let start = Instant::now();
        let reply = self
            .inner
            .client
            .health_check()
            .await
            .map_err(|e| qdrant_error("ping", e))?;
        let ready = self.inner.ensure_ready().await?;
        Ok(Health::new(NAME, start.elapsed())
            .with_detail("server", reply.title)
            .with_detail("version", reply.version)
            .with_detail("collection", self.inner.collection())
            .with_detail("dimensions", ready.dims.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_becomes_the_grpc_port() {
        let g = |s| grpc_url_from_api_base(s).unwrap();
        assert_eq!(g("http://localhost:6333"), "http://localhost:6334");
        assert_eq!(g("http://localhost"), "http://localhost:6334");
        assert_eq!(
            g("https://xyz.cloud.qdrant.io:6333/"),
            "https://xyz.cloud.qdrant.io:6334"
        );
        assert_eq!(g("http://127.0.0.1:17123"), "http://127.0.0.1:17123");
        assert_eq!(g("http://[::1]:6333"), "http://[::1]:6334");
        assert!(grpc_url_from_api_base("localhost:6333").is_err());
        assert!(grpc_url_from_api_base("ftp://x:1").is_err());
    }

    #[test]
    fn namespace_paths_cover_every_parent() {
        assert_eq!(namespace_path("a"), ["a"]);
        assert_eq!(namespace_path("a:b:c"), ["a", "a:b", "a:b:c"]);
        assert_eq!(namespace_path("ab"), ["ab"]);
        assert_eq!(namespace_path(":x"), [":x"]);
    }

    #[test]
    fn point_ids_are_deterministic_uuids() {
        let a = point_id("s", Some("ns"), "hello");
        assert_eq!(a, point_id("s", Some("ns"), "hello"));
        assert_ne!(a, point_id("s", Some("ns"), "hello!"));
        assert_ne!(a, point_id("t", Some("ns"), "hello"));
        assert_ne!(a, point_id("s", None, "hello"));
        assert_ne!(a, point_id("s", Some(""), "hello"));
        // Length-prefixed parts: moving text between fields changes the id.
        assert_ne!(point_id("ab", None, "c"), point_id("a", None, "bc"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn config_debug_hides_the_api_key() {
        let mut c = QdrantConfig::new("http://127.0.0.1:6334", "c");
        c.api_key = Some("sekrit-key".into());
        let d = format!("{c:?}");
        assert!(!d.contains("sekrit"), "{d}");
        assert!(d.contains("<redacted>"), "{d}");
    }
}
