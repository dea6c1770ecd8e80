//! The HTTP server: the route table, request acceptance and the cached JSON endpoints. Auth and
//! partitions are in `auth`, health and admin endpoints in `admin`, streaming in `stream`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use llm_cache::core::StoreOutcome;
use llm_cache::{Cache, CacheControl, CacheStatus, CallError, CallKind, Entry, RequestContext};
use serde_json::{Value, json};

use crate::admin::{cache_delete, cache_flushall, cache_ping, liveliness, metrics, readiness};
pub use crate::auth::Caller;
use crate::auth::{admin_only, auth, partition};
use crate::config::{Api, ProxyConfig, TenantKey};
use crate::endpoints;
use crate::fanout::StreamFlights;
use crate::metrics::{ProxyMetrics, status_label};
use crate::upstream::{Router, Upstream, UpstreamError, upstream_body};

/// The cache identifier in `Cache-Status`.
pub const CACHE_NAME: &str = "llm-cache";

static X_CACHE_KEY: HeaderName = HeaderName::from_static("x-litellm-cache-key");
static X_SIMILARITY: HeaderName = HeaderName::from_static("x-litellm-semantic-similarity");
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Shared state of the server.
#[derive(Debug)]
pub struct AppState {
    /// The cache (possibly disabled).
    pub cache: Cache,
    /// `cache_params.type`, when caching is on.
    pub cache_type: Option<String>,
    /// Model routing.
    pub router: Router,
    /// Upstream client.
    pub upstream: Upstream,
    /// Master key.
    pub master_key: Option<String>,
    /// Tenants' static keys.
    pub keys: Vec<Arc<TenantKey>>,
    /// Metrics.
    pub metrics: Arc<ProxyMetrics>,
    /// Partition the cache by caller API key.
    pub partition_by_api_key: bool,
    /// Streams in flight, shared by identical streaming requests.
    pub stream_flights: Arc<StreamFlights>,
    /// What the cache saved, and the request log.
    pub accounting: crate::accounting::Accounting,
    /// The proxy's settings (limits, timeouts).
    pub settings: Arc<crate::config::Settings>,
    /// What the readiness probe reports about the cache backend.
    pub readiness: crate::admin::Readiness,
    /// Budget of large bodies parsed and keyed at once, in KiB (see [`large_body_permit`]).
    pub large_bodies: Arc<tokio::sync::Semaphore>,
}

/// Bodies from this size on are parsed and keyed off the async workers, under
/// [`AppState::large_bodies`].
pub const LARGE_BODY_BYTES: usize = 1024 * 1024;

/// A large request's share of the large-request budget ([`AppState::large_bodies`], in KiB):
/// taken before its body is read, given back once its upstream body is built or when the
/// request ends. A few huge requests thus cannot take all the memory and CPU: others wait,
/// their bodies unread (in the client's socket buffers, not in the proxy).
#[derive(Clone, Debug)]
pub(crate) struct LargeBody(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl LargeBody {
    /// Gives the share back (the request's bulk is no longer held).
    pub(crate) fn release(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The large-request budget, in KiB: the body limit (at least 8 MiB) per two cores (at least
/// one): a 2-core machine parses and keys one maximal body at a time.
fn large_body_budget_kib(body_limit: usize) -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let per = body_limit.max(8 << 20) / 1024;
    u32::try_from(per.saturating_mul((cores / 2).max(1))).unwrap_or(u32::MAX)
}

/// Waits for `len` bytes' share of the large-request budget (capped at the whole budget).
async fn large_share(st: &AppState, len: usize) -> Option<LargeBody> {
    let budget = large_body_budget_kib(st.settings.max_request_body_bytes);
    let want = u32::try_from(len / 1024)
        .unwrap_or(u32::MAX)
        .clamp(1, budget);
    let permit = st
        .large_bodies
        .clone()
        .acquire_many_owned(want)
        .await
        .ok()?;
    Some(LargeBody(Arc::new(std::sync::Mutex::new(Some(permit)))))
}

/// Lowers the calling thread's scheduling priority (nice 10; Linux only, best effort).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
    }
}

/// Runs CPU-heavy synchronous work (parsing or keying a large body) without delaying the
/// requests beside it: `block_in_place` hands the async worker's other tasks (cache hits,
/// streams) to another thread, and the work itself runs on a thread of its own at a lower
/// scheduling priority (nice 10, Linux), so that on a busy machine the kernel runs hits first.
/// Inline on a current-thread runtime or when `heavy` is false.
pub(crate) fn off_worker<R: Send>(heavy: bool, f: impl FnOnce() -> R + Send) -> R {
    if heavy
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    {
        tokio::task::block_in_place(|| {
            // The job stays here if no thread can be had: it then runs on this one.
            let job = std::sync::Mutex::new(Some(f));
            let take = || job.lock().unwrap_or_else(|p| p.into_inner()).take();
            std::thread::scope(|scope| {
                let worker = std::thread::Builder::new()
                    .name("llm-cache-large-body".to_owned())
                    .spawn_scoped(scope, || {
                        lower_priority();
                        take().map(|f| f())
                    });
                let done = match worker {
                    Ok(w) => w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    Err(_) => None,
                };
                match done {
                    Some(r) => r,
                    None => take().map(|f| f()).expect("the job runs once"),
                }
            })
        })
    } else {
        f()
    }
}

/// Builds the axum application. Served by [`Server::serve`], every request carries its peer
/// address (axum's `ConnectInfo<SocketAddr>`); an embedder serving it elsewhere should serve it
/// with connect info too (`into_make_service_with_connect_info`), else admin endpoints without a
/// master key are refused as if from the network.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let body_limit = state.settings.max_request_body_bytes;
    // The LLM endpoints, each served at `/v1{path}` and at `{path}` (as OpenAI clients and
    // LiteLLM's proxy accept both).
    let llm: [(&str, axum::routing::MethodRouter<Arc<AppState>>); 8] = [
        ("/chat/completions", post(endpoints::chat)),
        ("/completions", post(endpoints::completions)),
        ("/responses", post(endpoints::responses)),
        ("/messages", post(endpoints::messages)),
        ("/rerank", post(endpoints::rerank)),
        (
            "/audio/transcriptions",
            post(crate::transcription::transcriptions),
        ),
        ("/embeddings", post(embeddings)),
        ("/models", get(models)),
    ];
    let admin = axum::Router::new()
        .route("/cache/ping", get(cache_ping))
        .route("/cache/delete", post(cache_delete))
        .route("/cache/flushall", post(cache_flushall))
        .route("/cache/stats", get(crate::admin::cache_stats))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_only));
    let api = llm
        .into_iter()
        .fold(axum::Router::new(), |r, (path, handler)| {
            r.route(&format!("/v1{path}"), handler.clone())
                .route(path, handler)
        })
        .merge(admin)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    // Health probes need no key: they reveal only states (a Kubernetes probe can call them).
    axum::Router::new()
        .route("/health/liveliness", get(liveliness))
        .route("/health/liveness", get(liveliness))
        .route("/health/readiness", get(readiness))
        .merge(api)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .with_state(state)
}

/// Reads the whole request body before any handler runs: within `request_body_timeout` (else
/// 408, and the connection closes) and `max_request_body_bytes` (else 413). A stalled or
/// endless body costs a bounded time and memory, whatever the endpoint.
async fn read_body(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let limit = st.settings.max_request_body_bytes;
    let too_large = || {
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes (max_request_body_bytes)"),
            "invalid_request_error",
            None,
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let timeout = st.settings.request_body_timeout;
    let body_timeout = |path: &str| {
        st.metrics
            .request_body_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            path,
            timeout_s = timeout.as_secs_f64(),
            "request body not received in time (request_body_timeout): 408"
        );
        let mut r = error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (request_body_timeout)",
                timeout.as_secs_f64()
            ),
            "invalid_request_error",
            None,
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    // A declared large body waits for its share before a byte of it is read.
    let mut large = None;
    if let Some(n) = declared.filter(|n| *n >= LARGE_BODY_BYTES as u64) {
        match tokio::time::timeout(timeout, large_share(&st, n as usize)).await {
            Ok(share) => large = share,
            Err(_) => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many large requests in flight: retry shortly",
                    "server_busy",
                    None,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    let (mut parts, body) = req.into_parts();
    let read = async {
        let mut body = body;
        let mut buf =
            bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let frame = frame.map_err(ReadError::Body)?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(ReadError::TooLarge);
                }
                buf.extend_from_slice(&data);
                // A body of unknown length that turns out large takes a share too (the
                // largest it may be).
                if large.is_none() && buf.len() >= LARGE_BODY_BYTES {
                    large = large_share(&st, limit).await;
                }
            }
        }
        Ok(buf.freeze())
    };
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(ReadError::TooLarge)) => return too_large(),
        Ok(Err(ReadError::Body(e))) => {
            if is_length_limit(&e) {
                return too_large();
            }
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
                "invalid_request_error",
                None,
            );
        }
        Err(_) => return body_timeout(parts.uri.path()),
    };
    if let Some(share) = &large {
        parts.extensions.insert(share.clone());
    }
    let resp = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes),
        ))
        .await;
    drop(large);
    resp
}

enum ReadError {
    TooLarge,
    Body(axum::Error),
}

/// Whether a body error is the length limit (`http_body_util::LengthLimitError`, boxed).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The caching proxy as a library: built from a [`ProxyConfig`] (whose cache was configured
/// against a backend registry, a third party's included), served on a listener until a shutdown
/// signal, then pending cache writes are flushed.
///
/// ```no_run
/// # async fn run() -> Result<(), String> {
/// let config = llm_cache_proxy::config::ProxyConfig::embedded_default().map_err(|e| e.to_string())?;
/// let server = llm_cache_proxy::server::Server::new(config).await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await.map_err(|e| e.to_string())?;
/// server.serve(listener, std::future::pending(), std::time::Instant::now()).await
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    state: Arc<AppState>,
    models: usize,
}

impl Server {
    /// Builds the cache and the upstream client of `config`.
    ///
    /// # Errors
    /// A cache that cannot be built, or an HTTP client error.
    pub async fn new(config: ProxyConfig) -> Result<Self, String> {
        let state = state_from_config(&config).await?;
        Ok(Server {
            state,
            models: config.models.len(),
        })
    }

    /// The shared state (cache, router, metrics).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The axum application, to embed in another server.
    pub fn router(&self) -> axum::Router {
        app(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then drains: idle connections close,
    /// requests in flight get the grace period, pending cache writes are flushed, all within
    /// `shutdown_timeout`; what is still running then is cut (logged). Connections are bounded
    /// by the limits of [`crate::listen`]. `started` is when startup began, for the ready log
    /// line.
    ///
    /// # Errors
    /// A listener error.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        started: std::time::Instant,
    ) -> Result<(), String> {
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let settings = self.state.settings.clone();
        if self.state.master_key.is_none()
            && self.state.keys.is_empty()
            && !local.ip().is_loopback()
        {
            if settings.allow_remote_admin_without_key {
                tracing::warn!(
                    address = %local,
                    "no master key: /cache/* and /metrics are open to anyone who reaches this address (allow_remote_admin_without_key)"
                );
            } else {
                tracing::warn!(
                    address = %local,
                    "no master key: /cache/* and /metrics answer loopback clients only; set general_settings.master_key to administer remotely"
                );
            }
        }
        let checker = crate::admin::spawn_readiness_checker(&self.state);
        tracing::info!(
            address = %local,
            cache = self.state.cache_type.as_deref().unwrap_or("off"),
            models = self.models,
            auth = self.state.auth_enabled(),
            max_connections = settings.limits.max_connections,
            startup_ms = started.elapsed().as_millis() as u64,
            "llm-cache proxy ready"
        );
        // The shutdown budget: connections drain first, the cache flush gets the rest (at
        // least a fifth of it, at most 2 s, reserved).
        let total = settings.shutdown_timeout;
        let reserve = (total / 5).min(std::time::Duration::from_secs(2));
        let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
        let shutdown = async move {
            shutdown.await;
            let _ = signal_tx.send(std::time::Instant::now());
        };
        let cut = crate::listen::serve(
            listener,
            self.router(),
            &settings.limits,
            shutdown,
            total - reserve,
            &self.state.metrics,
        )
        .await;
        checker.abort();
        let deadline = signal_rx
            .await
            .unwrap_or_else(|_| std::time::Instant::now())
            + total;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        tracing::info!(
            cut_connections = cut,
            budget_ms = left.as_millis() as u64,
            "shutting down: flushing pending cache writes"
        );
        match tokio::time::timeout(left, self.state.cache.flush(left)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cache flush failed at shutdown"),
            Err(_) => tracing::warn!(
                "cache flush did not finish within shutdown_timeout: pending writes dropped"
            ),
        }
        Ok(())
    }
}

/// Builds the state from a configuration.
///
/// # Errors
/// Cache construction or HTTP client errors.
pub async fn state_from_config(config: &ProxyConfig) -> Result<Arc<AppState>, String> {
    let cache = match &config.cache {
        // The semantic cache's embedding model resolves through `model_list`, as in LiteLLM.
        Some(c) => c
            .build_with_embedding_resolver(embedding_resolver(&config.models))
            .await
            .map_err(|e| e.to_string())?,
        None => Cache::disabled(),
    };
    let metrics = Arc::new(ProxyMetrics::default());
    let settings = Arc::new(config.settings.clone());
    let upstream = Upstream::new(settings.clone(), metrics.clone())?;
    Ok(Arc::new(AppState {
        cache,
        cache_type: config.cache.as_ref().map(|c| c.backend_type().to_owned()),
        router: Router::new(config.models.clone()),
        upstream,
        master_key: config.master_key.clone(),
        keys: config.keys.iter().cloned().map(Arc::new).collect(),
        metrics,
        partition_by_api_key: config.settings.partition_by_api_key,
        stream_flights: Arc::default(),
        accounting: crate::accounting::Accounting::new(config.settings.request_log.as_deref()),
        large_bodies: Arc::new(tokio::sync::Semaphore::new(large_body_budget_kib(
            settings.max_request_body_bytes,
        ) as usize)),
        settings,
        readiness: crate::admin::Readiness::default(),
    }))
}

/// Resolves an embedding model name (`redis_semantic_cache_embedding_model`, ...) through the
/// model list: the named group's first deployment, else a `*` group with the name as model.
fn embedding_resolver(models: &[crate::config::ModelGroup]) -> llm_cache::EmbeddingResolver {
    let router = Arc::new(Router::new(models.to_vec()));
    Arc::new(move |name: &str| {
        let route = router.route(name)?;
        let d = route.deployment;
        let model = d.model.clone().unwrap_or_else(|| {
            match name.split_once('/') {
                Some((p, rest)) if crate::config::OPENAI_COMPATIBLE_PROVIDERS.contains(&p) => rest,
                _ => name,
            }
            .to_owned()
        });
        let mut e = llm_cache::EmbeddingEndpoint::new(d.api_base.clone(), model)
            .with_api_key(d.api_key.clone())
            .with_azure(d.azure);
        if let Some(v) = &d.api_version {
            e = e.with_query("api-version", v.clone());
        }
        if let Some(org) = &d.organization {
            e = e.with_header("openai-organization", org.clone());
        }
        for (k, v) in &d.extra_headers {
            e = e.with_header(k.clone(), v.clone());
        }
        Some(e)
    })
}

/// An OpenAI-style error response.
pub fn error(
    status: StatusCode,
    message: impl Into<String>,
    kind: &str,
    param: Option<&str>,
) -> Response {
    let body = json!({
        "error": {
            "message": message.into(),
            "type": kind,
            "param": param,
            "code": status.as_u16().to_string(),
        }
    });
    (status, axum::Json(body)).into_response()
}

async fn models(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Some(d) = st.router.wildcard() {
        let fwd = endpoints::forward(&st, &headers, d, &[]);
        if let Ok(body) = st.upstream.get_models(d, &fwd).await {
            return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
    }
    let data: Vec<Value> = st
        .router
        .names()
        .filter(|n| match &caller {
            Caller::Tenant(t) => t.allows(n),
            _ => true,
        })
        .map(|n| json!({"id": n, "object": "model", "created": 0, "owned_by": "llm-cache"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// What every cacheable endpoint extracts from a request.
pub(crate) struct Incoming {
    /// The parsed members (all of them, but for a large body's bulk).
    pub(crate) request: Value,
    pub(crate) cc: CacheControl,
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// A large body's bulk members, kept as raw JSON text: keyed and forwarded without a tree.
    pub(crate) raw: Vec<crate::upstream::RawMember>,
}

/// In a large body, a top-level member at least this large is kept as raw JSON text (keyed by
/// a streaming canonical writer, forwarded verbatim) instead of parsed into a
/// `serde_json::Value`, which costs up to 20 times the text for many small objects.
pub const RAW_MEMBER_BYTES: usize = 16 * 1024;

/// Members always parsed: the proxy and the cache read them.
const PARSED_MEMBERS: &[&str] = &[
    "model",
    "cache",
    "metadata",
    "stream",
    "stream_options",
    "extra_headers",
    "cache_key",
    "conversation",
    "background",
];

/// Parses a request body: wholly into a tree, or (`raw_ok`) with its large members kept as raw
/// JSON text (slices of `body`, not copies).
fn parse_body(
    body: &Bytes,
    raw_ok: bool,
) -> Result<(Value, Vec<crate::upstream::RawMember>), String> {
    let not_object = || "the request body must be a JSON object".to_owned();
    if !raw_ok {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
        return if v.is_object() {
            Ok((v, Vec::new()))
        } else {
            Err(not_object())
        };
    }
    // Duplicate members: the last wins, as in a parsed object.
    let top: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => not_object(),
            _ => format!("invalid JSON body: {e}"),
        })?;
    let mut parsed = serde_json::Map::new();
    let mut raw = Vec::new();
    let base = body.as_ptr() as usize;
    for (k, v) in top {
        let text = v.get();
        if text.len() >= RAW_MEMBER_BYTES && !PARSED_MEMBERS.contains(&k.as_str()) {
            // The member's text borrows from the body: its slice, shared, not copied.
            let start = text.as_ptr() as usize - base;
            raw.push((k, body.slice(start..start + text.len())));
        } else {
            let value =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON body: {e}"))?;
            parsed.insert(k, value);
        }
    }
    Ok((Value::Object(parsed), raw))
}

/// The request's `Cache-Control` directives: every field line, combined (RFC 9110 §5.3), read
/// byte for byte (an extension with non-ASCII bytes is ignored like any other extension).
pub(crate) fn header_cache_control(
    headers: &HeaderMap,
) -> Result<CacheControl, llm_cache::core::directives::DirectiveError> {
    let mut lines = headers.get_all(header::CACHE_CONTROL).iter().peekable();
    if lines.peek().is_none() {
        return Ok(CacheControl::none());
    }
    let text = lines
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect::<Vec<_>>()
        .join(",");
    CacheControl::from_header(&text)
}

/// Parses a cacheable request; `raw_ok`: a large body's bulk may stay raw JSON text (see
/// [`RAW_MEMBER_BYTES`]).
#[allow(clippy::result_large_err)]
pub(crate) fn parse_incoming(
    headers: &HeaderMap,
    body: &Bytes,
    raw_ok: bool,
) -> Result<Incoming, Response> {
    let (request, raw) = parse_body(body, raw_ok)
        .map_err(|m| error(StatusCode::BAD_REQUEST, m, "invalid_request_error", None))?;
    let Some(obj) = request.as_object() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
            "invalid_request_error",
            None,
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "`model` is required (a string)",
                "invalid_request_error",
                Some("model"),
            ));
        }
    };
    // Client-chosen upstream headers would change the answer without being in the key, and
    // could smuggle credentials: refused (deployments set `extra_headers` in litellm_params).
    if obj.get("extra_headers").is_some_and(|v| !v.is_null()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "`extra_headers` is not accepted: llm-cache never forwards client-chosen headers upstream (set `extra_headers` on the deployment's litellm_params instead)",
            "invalid_request_error",
            Some("extra_headers"),
        ));
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let body_cc = CacheControl::from_request(&request).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "invalid_request_error",
            Some(&e.field),
        )
    })?;
    let header_cc = header_cache_control(headers).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "invalid_request_error",
            Some(&e.field),
        )
    })?;
    Ok(Incoming {
        request,
        cc: body_cc.or(header_cc),
        model,
        stream,
        include_usage,
        raw,
    })
}

/// A cacheable request, parsed and routed, with its cache scope.
pub(crate) struct Accepted<'a> {
    pub(crate) inc: Incoming,
    pub(crate) route: crate::upstream::Route<'a>,
    pub(crate) partition: Option<String>,
    pub(crate) bypass: Option<&'static str>,
}

impl<'a> Accepted<'a> {
    /// The cache context; `headers` are the forwarded headers that are keyed.
    pub(crate) fn context<'b>(
        &'b self,
        headers: &'b [(&'b str, &'b str)],
        raw: &'b [(&'b str, &'b str)],
    ) -> RequestContext<'b> {
        RequestContext {
            model_group: Some(self.route.model_group(&self.inc.model)),
            partition: self.partition.as_deref(),
            forwarded: self.route.deployment.forwarded(),
            bypass: self.bypass,
            headers,
            raw,
        }
    }

    /// The raw members, as the key reads them.
    pub(crate) fn raw_refs(&self) -> Vec<(&str, &str)> {
        // Slices of a parsed body: UTF-8 (were one not, it would key as an error).
        self.inc
            .raw
            .iter()
            .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap_or("")))
            .collect()
    }
}

/// Parses a cacheable request, routes its model and computes its cache scope. `api` is the
/// protocol of the endpoint: the routed deployment must speak it.
#[allow(clippy::result_large_err)]
pub(crate) fn accept<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    caller: &Caller,
    body: &Bytes,
    api: Api,
    raw_ok: bool,
) -> Result<Accepted<'a>, Response> {
    let inc = parse_incoming(headers, body, raw_ok)?;
    route_incoming(st, headers, caller, inc, api)
}

/// Whether a body may keep its bulk as raw JSON text: a large one, for a cache that reads only
/// the key (no semantic layer, no `max_messages` gate: they read the parsed messages).
pub(crate) fn raw_allowed(st: &AppState, len: usize) -> bool {
    len >= LARGE_BODY_BYTES
        && st
            .cache
            .engine()
            .is_none_or(|e| e.semantic().is_none() && e.settings().max_messages.is_none())
}

/// Routes a parsed request (see [`accept`]).
#[allow(clippy::result_large_err)]
pub(crate) fn route_incoming<'a>(
    st: &'a AppState,
    headers: &HeaderMap,
    caller: &Caller,
    inc: Incoming,
    api: Api,
) -> Result<Accepted<'a>, Response> {
    let Some(route) = st.router.route(&inc.model) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "Invalid model name passed in model={}. Call `/v1/models` to view available models.",
                inc.model
            ),
            "invalid_request_error",
            Some("model"),
        ));
    };
    if let Caller::Tenant(t) = caller
        && !(t.allows(&route.group.name) || t.allows(&inc.model))
    {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            format!(
                "Authentication Error: key not allowed to access model. This key can only access models={:?}. Tried to access {}",
                t.models.as_deref().unwrap_or_default(),
                inc.model
            ),
            "auth_error",
            Some("model"),
        ));
    }
    if route.deployment.api != api {
        let (speaks, call) = match route.deployment.api {
            Api::Anthropic => ("Anthropic's Messages API", "/v1/messages"),
            Api::OpenAi => (
                "the OpenAI API",
                "/v1/chat/completions (or another OpenAI endpoint)",
            ),
        };
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "model={} is served by a deployment that speaks {speaks}: call {call}",
                inc.model
            ),
            "invalid_request_error",
            Some("model"),
        ));
    }
    let partition = partition(st, headers, caller, route.deployment);
    let bypass = route.deployment.bypass_reason(&inc.model);
    Ok(Accepted {
        inc,
        route,
        partition,
        bypass,
    })
}

/// Adds `x-litellm-cache-key`, `Cache-Status`, `Age` and `x-litellm-semantic-similarity`.
pub(crate) fn cache_headers(
    resp: &mut Response,
    key: Option<&llm_cache::CacheKey>,
    status: &CacheStatus,
    entry: Option<&Entry>,
) {
    let h = resp.headers_mut();
    if let Some(k) = key
        && let Ok(v) = HeaderValue::from_str(k.as_str())
    {
        h.insert(X_CACHE_KEY.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&status.header_value(CACHE_NAME)) {
        h.insert(CACHE_STATUS.clone(), v);
    }
    if let CacheStatus::Hit {
        age, similarity, ..
    } = status
    {
        h.insert(header::AGE, HeaderValue::from(age.as_secs()));
        if let Some(s) = similarity
            && let Ok(v) = HeaderValue::from_str(&format!("{s:.6}"))
        {
            h.insert(X_SIMILARITY.clone(), v);
        }
    }
    let _ = entry;
}

pub(crate) fn upstream_error(e: UpstreamError) -> Response {
    match e {
        UpstreamError::Status {
            status,
            content_type,
            body,
        } => {
            let mut resp = (status, body).into_response();
            if let Some(ct) = content_type {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp
        }
        UpstreamError::Unreachable { message, timeout } => {
            let status = if timeout {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            error(status, message, "upstream_error", None)
        }
    }
}

pub(crate) fn not_cached(key: Option<&llm_cache::CacheKey>) -> Response {
    let mut resp = error(
        StatusCode::GATEWAY_TIMEOUT,
        "only-if-cached: no cached response for this request",
        "cache_miss",
        None,
    );
    cache_headers(
        &mut resp,
        key,
        &CacheStatus::Miss {
            reason: llm_cache::core::MissReason::NotFound,
            store: StoreOutcome::NotRequested,
        },
        None,
    );
    resp
}

// `accept`'s error is the response to send (as in every `accept` caller).
#[allow(clippy::result_large_err)]
async fn embeddings(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    large: Option<Extension<LargeBody>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let acc = match off_worker(large.is_some(), || {
        accept(&st, &headers, &caller, &body, Api::OpenAi, false)
    }) {
        Ok(x) => x,
        Err(r) => return r,
    };
    drop(body);
    let meta = endpoints::Meta::new(&acc, &caller, CallKind::Embedding, started);
    let fwd = endpoints::forward(&st, &headers, acc.route.deployment, &[]);
    let deployment = acc.route.deployment.clone();
    let upstream = st.upstream.clone();
    let result = st
        .cache
        .embeddings(
            &acc.inc.request,
            &acc.inc.cc,
            &acc.context(&[], &[]),
            |sub| async move {
                upstream
                    .post_json(
                        &deployment,
                        "/embeddings",
                        upstream_body(sub, &deployment),
                        &fwd,
                    )
                    .await
            },
        )
        .await;
    match result {
        Ok(out) => {
            st.metrics.request("embeddings", status_label(&out.status));
            let parsed: Option<Value> = serde_json::from_slice(&out.body).ok();
            let bytes = out.body.len() as u64;
            let mut resp = ([(header::CONTENT_TYPE, "application/json")], out.body).into_response();
            cache_headers(&mut resp, out.key.as_ref(), &out.status, None);
            // A whole hit is an entry of its own kind: its tokens and upstream time saved.
            let whole = out.status.is_hit().then(|| Entry {
                usage: Some(out.saved),
                upstream_ms: Some(out.saved_upstream_ms),
                ..Entry::new(CallKind::Embedding, Bytes::new(), None, None)
            });
            let partial = matches!(out.status, CacheStatus::Partial { .. })
                .then_some((out.saved, out.saved_upstream_ms as f64 / 1000.0));
            endpoints::account(
                &st,
                &meta,
                Some(&mut resp),
                &out.status,
                out.key.as_ref(),
                endpoints::Answer {
                    body: parsed.as_ref(),
                    entry: whole.as_ref(),
                    bytes,
                    upstream_s: None,
                    partial_saved: partial,
                },
            );
            resp
        }
        Err(CallError::NotCached) => not_cached(None),
        Err(CallError::Upstream(e)) => {
            st.metrics.request("embeddings", "upstream_error");
            upstream_error(e)
        }
        Err(CallError::Invalid(e)) => error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "invalid_request_error",
            None,
        ),
    }
}
