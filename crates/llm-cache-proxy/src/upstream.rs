//! Calls to OpenAI-compatible upstreams: routing within a model group, headers, errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use crate::config::{Api, Deployment, ModelGroup, Settings};
use crate::metrics::ProxyMetrics;

/// A failed upstream call. Never cached; passed through to the client.
#[derive(Debug)]
pub enum UpstreamError {
    /// The upstream answered with a non-2xx status: passed through verbatim.
    Status {
        /// Status code.
        status: StatusCode,
        /// Content type of the body.
        content_type: Option<HeaderValue>,
        /// Body.
        body: Bytes,
    },
    /// The upstream could not be reached or timed out: a 502/504 OpenAI-style error.
    Unreachable {
        /// What happened.
        message: String,
        /// Whether it was a timeout.
        timeout: bool,
    },
}

/// Model groups with round-robin over their deployments.
#[derive(Debug)]
pub struct Router {
    groups: Vec<(ModelGroup, AtomicUsize)>,
}

/// A resolved route.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The group.
    pub group: &'a ModelGroup,
    /// The chosen deployment.
    pub deployment: &'a std::sync::Arc<Deployment>,
}

impl Route<'_> {
    /// The model group to key on: the configured `model_name`, or the client's model for a
    /// wildcard group (so a wildcard never mixes models).
    pub fn model_group<'b>(&'b self, requested: &'b str) -> &'b str {
        if self.group.name == "*" {
            requested
        } else {
            &self.group.name
        }
    }
}

impl Router {
    /// A router over the configured groups.
    pub fn new(groups: Vec<ModelGroup>) -> Self {
        Router {
            groups: groups
                .into_iter()
                .map(|g| (g, AtomicUsize::new(0)))
                .collect(),
        }
    }

    /// Resolves a client model name (exact match first, then a `*` group).
    pub fn route(&self, model: &str) -> Option<Route<'_>> {
        let (group, counter) = self
            .groups
            .iter()
            .find(|(g, _)| g.name == model)
            .or_else(|| self.groups.iter().find(|(g, _)| g.name == "*"))?;
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let deployment = &group.deployments[n % group.deployments.len()];
        Some(Route { group, deployment })
    }

    /// Configured model names (without wildcards).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .map(|(g, _)| g.name.as_str())
            .filter(|n| *n != "*")
    }

    /// The first wildcard deployment, if any.
    pub fn wildcard(&self) -> Option<&Deployment> {
        self.groups
            .iter()
            .find(|(g, _)| g.name == "*")
            .and_then(|(g, _)| g.deployments.first().map(|d| &**d))
    }
}

/// The shared HTTP client.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    settings: Arc<Settings>,
    metrics: Arc<ProxyMetrics>,
}

impl Upstream {
    /// A pooled client.
    ///
    /// # Errors
    /// TLS initialisation failures.
    pub fn new(settings: Arc<Settings>, metrics: Arc<ProxyMetrics>) -> Result<Self, String> {
        // ring is the one TLS crypto provider of llm-cache's builds (reqwest has none built in).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.upstream_connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Upstream {
            client,
            settings,
            metrics,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        d: &Deployment,
        path: &str,
        fwd: &Forward,
        stream: bool,
    ) -> reqwest::RequestBuilder {
        let mut url = match d.api {
            Api::OpenAi => format!("{}{}", d.api_base, path),
            // Anthropic's base has no version: `https://api.anthropic.com` + `/v1/messages`
            // (a base that already ends in `/v1` is accepted too).
            Api::Anthropic => match d.api_base.strip_suffix("/v1") {
                Some(base) => format!("{base}/v1{path}"),
                None => format!("{}/v1{}", d.api_base, path),
            },
        };
        if let Some(v) = &d.api_version {
            url.push_str(if url.contains('?') { "&" } else { "?" });
            url.push_str("api-version=");
            url.push_str(v);
        }
        let mut rb = self.client.request(method, url);
        match (&d.api_key, &fwd.credential, d.api) {
            (Some(key), _, Api::OpenAi) => {
                rb = rb.bearer_auth(key);
                if d.azure {
                    rb = rb.header("api-key", key);
                }
            }
            (Some(key), _, Api::Anthropic) => rb = rb.header("x-api-key", key),
            (None, Some((name, value)), _) => rb = rb.header(name.clone(), value.clone()),
            (None, None, _) => {}
        }
        if let Some(org) = &d.organization {
            rb = rb.header("openai-organization", org);
        }
        for (k, v) in &fwd.headers {
            rb = rb.header(k.clone(), v.clone());
        }
        for (k, v) in &d.extra_headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let timeout = if stream {
            d.stream_timeout.or(d.timeout)
        } else {
            d.timeout
        }
        .unwrap_or(self.settings.upstream_timeout);
        rb.timeout(timeout)
    }

    /// A transport failure: the detail (with the upstream's address) goes to the log, the
    /// client gets its class only (an internal host and port are nobody else's business).
    fn unreachable(&self, e: &reqwest::Error) -> UpstreamError {
        self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::warn!(error = %detail, timeout = e.is_timeout(), "upstream call failed");
        let message = if e.is_timeout() {
            "upstream timed out"
        } else if e.is_connect() {
            "upstream unreachable: cannot connect"
        } else {
            "upstream request failed"
        };
        UpstreamError::Unreachable {
            message: message.to_owned(),
            timeout: e.is_timeout(),
        }
    }

    /// Sends a JSON body and reads the whole response.
    ///
    /// # Errors
    /// [`UpstreamError`] for non-2xx answers and transport failures.
    pub async fn post_json(
        &self,
        d: &Deployment,
        path: &str,
        body: impl Into<UpstreamBody>,
        fwd: &Forward,
    ) -> Result<Bytes, UpstreamError> {
        let start = Instant::now();
        let (body, len) = body.into().into_reqwest();
        let resp = self
            .request(reqwest::Method::POST, d, path, fwd, false)
            .header("content-type", "application/json")
            .header("content-length", len)
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.metrics
            .observe_upstream(resp.status().as_u16(), start.elapsed());
        self.read_body(resp).await
    }

    /// Reads a whole response: its body for a 2xx, else an [`UpstreamError`].
    async fn read_body(&self, resp: reqwest::Response) -> Result<Bytes, UpstreamError> {
        if !resp.status().is_success() {
            return Err(self.status_error(resp).await);
        }
        resp.bytes().await.map_err(|e| self.unreachable(&e))
    }

    /// A non-2xx answer, body read in full, to pass through verbatim.
    async fn status_error(&self, resp: reqwest::Response) -> UpstreamError {
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        match resp.bytes().await {
            Ok(body) => UpstreamError::Status {
                status,
                content_type,
                body,
            },
            Err(e) => self.unreachable(&e),
        }
    }

    /// Sends a streaming request; returns the response once the status line is in.
    ///
    /// # Errors
    /// [`UpstreamError`] for non-2xx answers (body read in full) and transport failures.
    pub async fn post_stream(
        &self,
        d: &Deployment,
        path: &str,
        body: impl Into<UpstreamBody>,
        fwd: &Forward,
    ) -> Result<reqwest::Response, UpstreamError> {
        let start = Instant::now();
        let (body, len) = body.into().into_reqwest();
        let resp = self
            .request(reqwest::Method::POST, d, path, fwd, true)
            .header("content-type", "application/json")
            .header("content-length", len)
            .header("accept", "text/event-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        self.metrics
            .observe_upstream(status.as_u16(), start.elapsed());
        if status.is_success() {
            return Ok(resp);
        }
        Err(self.status_error(resp).await)
    }

    /// `GET {api_base}/models` (for wildcard configs).
    ///
    /// # Errors
    /// [`UpstreamError`].
    pub async fn get_models(&self, d: &Deployment, fwd: &Forward) -> Result<Bytes, UpstreamError> {
        let resp = self
            .request(reqwest::Method::GET, d, "/models", fwd, false)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.read_body(resp).await
    }

    /// Sends a multipart form (`/audio/transcriptions`) and reads the whole response.
    ///
    /// # Errors
    /// [`UpstreamError`] for non-2xx answers and transport failures.
    pub async fn post_multipart(
        &self,
        d: &Deployment,
        path: &str,
        form: reqwest::multipart::Form,
        fwd: &Forward,
    ) -> Result<(Bytes, Option<HeaderValue>), UpstreamError> {
        let start = Instant::now();
        let resp = self
            .request(reqwest::Method::POST, d, path, fwd, false)
            .multipart(form)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.metrics
            .observe_upstream(resp.status().as_u16(), start.elapsed());
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        Ok((self.read_body(resp).await?, content_type))
    }
}

/// What a request forwards besides its body: the caller's own credential (pass-through
/// deployments only) and headers that change the answer (and are keyed: Anthropic's
/// `anthropic-version`, `anthropic-beta`).
#[derive(Debug, Clone, Default)]
pub struct Forward {
    /// `(header, value)` of the caller's credential, sent when the deployment has no key.
    pub credential: Option<(HeaderName, HeaderValue)>,
    /// Other headers sent upstream.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The request body sent upstream: the client's body with `model` set to the deployment's
/// model (wildcards keep the client's), every stripped member removed (LiteLLM's and llm-cache's
/// own fields, credentials, endpoints: [`llm_cache::core::key::is_stripped`]) except those the
/// deployment opts in to forwarding, and top-level `null`s removed. Everything else is keyed:
/// what reaches the upstream is exactly what the cache key covers (plus `stream`,
/// `stream_options` and the model, keyed as its model group).
pub fn upstream_body(request: Value, d: &Deployment) -> UpstreamBody {
    upstream_body_with(request, Vec::new(), d)
}

/// A top-level member of a large request kept as raw JSON text: a slice of the request body
/// (see [`crate::server::RAW_MEMBER_BYTES`]).
pub type RawMember = (String, Bytes);

/// A request body on its way upstream: pieces sent one after the other (a large request's raw
/// members are slices of the client's body, never copied).
#[derive(Debug, Clone, Default)]
pub struct UpstreamBody {
    chunks: Vec<Bytes>,
    len: usize,
}

impl UpstreamBody {
    fn push(&mut self, chunk: impl Into<Bytes>) {
        let chunk = chunk.into();
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole body in one buffer (tests, small bodies).
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// The body for reqwest, with its length (sent as `Content-Length`, as for one buffer).
    fn into_reqwest(self) -> (reqwest::Body, usize) {
        let len = self.len;
        let body = match <[Bytes; 1]>::try_from(self.chunks) {
            Ok([one]) => reqwest::Body::from(one),
            Err(chunks) => reqwest::Body::wrap_stream(futures::stream::iter(
                chunks.into_iter().map(Ok::<_, std::io::Error>),
            )),
        };
        (body, len)
    }
}

impl From<Vec<u8>> for UpstreamBody {
    fn from(v: Vec<u8>) -> Self {
        let mut b = UpstreamBody::default();
        b.push(v);
        b
    }
}

/// [`upstream_body`] for a request whose bulk members are raw JSON text: they are sent
/// verbatim (after the same filtering), as slices of the client's body.
pub fn upstream_body_with(mut request: Value, raw: Vec<RawMember>, d: &Deployment) -> UpstreamBody {
    let forwarded = d.forwarded();
    let sent = |k: &str, null: bool| {
        !null && (!llm_cache::core::key::is_stripped(k) || forwarded.contains(&k))
    };
    if let Some(obj) = request.as_object_mut() {
        obj.retain(|k, v| sent(k, v.is_null()));
        if let Some(m) = &d.model {
            obj.insert("model".to_owned(), Value::String(m.clone()));
        } else if let Some(Value::String(m)) = obj.get("model")
            && let Some((prov, rest)) = m.split_once('/')
            && crate::config::OPENAI_COMPATIBLE_PROVIDERS.contains(&prov)
        {
            let rest = rest.to_owned();
            obj.insert("model".to_owned(), Value::String(rest));
        }
    }
    let mut head = serde_json::to_vec(&request).expect("JSON values serialize");
    let mut body = UpstreamBody::default();
    if raw.is_empty() || head.last() != Some(&b'}') {
        body.push(head);
        return body;
    }
    head.pop();
    let mut empty = head.len() == 1;
    let mut piece = head;
    for (k, v) in raw {
        if !sent(&k, v.trim_ascii() == b"null") {
            continue;
        }
        if !empty {
            piece.push(b',');
        }
        empty = false;
        serde_json::to_writer(&mut piece, &k).expect("a string serializes");
        piece.push(b':');
        body.push(std::mem::take(&mut piece));
        body.push(v);
    }
    piece.push(b'}');
    body.push(piece);
    body
}
