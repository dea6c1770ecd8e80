//! The cacheable JSON endpoints, one spec each: chat and text completions, the Responses API,
//! Anthropic's Messages API and rerank. Every one honours the directives, the cache headers,
//! single-flight and stream fan-out, tenants, metrics, cost and the request log the same way.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use llm_cache::{CacheKey, CacheStatus, CallError, CallKind, Entry};
use serde_json::Value;

use crate::accounting::Record;
use crate::auth::Caller;
use crate::config::{Api, Deployment};
use crate::cost::{Prices, format_cost};
use crate::metrics::status_label;
use crate::server::{
    Accepted, AppState, LargeBody, accept, cache_headers, error, not_cached, off_worker,
    upstream_error,
};
use crate::upstream::{Forward, upstream_body_with};

/// The stream format of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// `chat.completion.chunk` events.
    Chat,
    /// `text_completion` events.
    Text,
    /// Responses API events (`response.created`, ..., `response.completed`).
    Responses,
    /// Anthropic Messages events (`message_start`, ..., `message_stop`).
    Anthropic,
}

/// Assembles a stream of any format into the response to store.
#[derive(Debug)]
pub enum StreamAssembler {
    /// Chat or text completions.
    Completion(crate::sse::Assembler),
    /// Responses API.
    Responses(crate::responses::Assembler),
    /// Anthropic Messages.
    Anthropic(crate::anthropic::Assembler),
}

impl StreamAssembler {
    /// An assembler for `format`.
    pub fn new(format: StreamFormat) -> Self {
        match format {
            StreamFormat::Chat => Self::Completion(crate::sse::Assembler::new(false)),
            StreamFormat::Text => Self::Completion(crate::sse::Assembler::new(true)),
            StreamFormat::Responses => Self::Responses(Default::default()),
            StreamFormat::Anthropic => Self::Anthropic(Default::default()),
        }
    }

    /// Feeds one event.
    pub fn push(&mut self, event: &crate::sse::SseData) {
        match self {
            Self::Completion(a) => a.push(event),
            Self::Responses(a) => a.push(event),
            Self::Anthropic(a) => a.push(event),
        }
    }

    /// The complete response, if the stream ended cleanly.
    pub fn finish(self) -> Option<Value> {
        match self {
            Self::Completion(a) => a.finish(),
            Self::Responses(a) => a.finish(),
            Self::Anthropic(a) => a.finish(),
        }
    }
}

/// Replays a stored response as a stream of `format`.
pub fn replay(format: StreamFormat, stored: &Value, include_usage: bool) -> Bytes {
    match format {
        StreamFormat::Chat => crate::sse::replay_chat(stored, include_usage),
        StreamFormat::Text => crate::sse::replay_text(stored, include_usage),
        StreamFormat::Responses => crate::responses::replay(stored),
        StreamFormat::Anthropic => crate::anthropic::replay(stored),
    }
}

/// A cacheable JSON endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// The call kind (key and entries).
    pub kind: CallKind,
    /// Metrics label.
    pub label: &'static str,
    /// Path sent upstream (after the deployment's base).
    pub path: &'static str,
    /// The protocol the deployment must speak.
    pub api: Api,
    /// The stream format, for endpoints that stream.
    pub stream: Option<StreamFormat>,
}

/// `POST /v1/chat/completions`.
pub const CHAT: Endpoint = Endpoint {
    kind: CallKind::Chat,
    label: "chat",
    path: "/chat/completions",
    api: Api::OpenAi,
    stream: Some(StreamFormat::Chat),
};
/// `POST /v1/completions`.
pub const COMPLETIONS: Endpoint = Endpoint {
    kind: CallKind::TextCompletion,
    label: "completions",
    path: "/completions",
    api: Api::OpenAi,
    stream: Some(StreamFormat::Text),
};
/// `POST /v1/responses`.
pub const RESPONSES: Endpoint = Endpoint {
    kind: CallKind::Responses,
    label: "responses",
    path: "/responses",
    api: Api::OpenAi,
    stream: Some(StreamFormat::Responses),
};
/// `POST /v1/messages` (Anthropic).
pub const MESSAGES: Endpoint = Endpoint {
    kind: CallKind::AnthropicMessages,
    label: "messages",
    path: "/messages",
    api: Api::Anthropic,
    stream: Some(StreamFormat::Anthropic),
};
/// `POST /v1/rerank`.
pub const RERANK: Endpoint = Endpoint {
    kind: CallKind::Rerank,
    label: "rerank",
    path: "/rerank",
    api: Api::OpenAi,
    stream: None,
};

/// The Anthropic API version sent when the client names none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Headers a request forwards that change the answer, hence keyed: `(lowercase name, value)`.
pub fn keyed_headers(api: Api, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    match api {
        Api::OpenAi => Vec::new(),
        Api::Anthropic => {
            let text = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            };
            let mut out = vec![(
                "anthropic-version",
                text("anthropic-version").unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_owned()),
            )];
            if let Some(beta) = text("anthropic-beta") {
                out.push(("anthropic-beta", beta));
            }
            out
        }
    }
}

/// Why a request must bypass the cache because of what it asks the upstream to do: a Responses
/// request that appends to a server-side conversation or runs in the background changes state
/// a hit would not.
pub fn stateful(kind: CallKind, request: &Value) -> Option<&'static str> {
    if kind != CallKind::Responses {
        return None;
    }
    let set = |k: &str| request.get(k).is_some_and(|v| !v.is_null());
    if set("conversation") {
        return Some("conversation");
    }
    if request.get("background").and_then(Value::as_bool) == Some(true) {
        return Some("background");
    }
    None
}

/// Who and what a request is, for the cost headers, the metrics and the request log.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The tenant label.
    pub tenant: String,
    /// The model group.
    pub model: String,
    /// The call kind.
    pub kind: CallKind,
    /// When the request arrived.
    pub started: Instant,
    /// Prices of the routed deployment.
    pub prices: Prices,
    /// Whether the response is a stream.
    pub stream: bool,
}

impl Meta {
    /// The meta of an accepted request.
    pub(crate) fn new(
        acc: &Accepted<'_>,
        caller: &Caller,
        kind: CallKind,
        started: Instant,
    ) -> Self {
        Meta {
            tenant: tenant_label(caller),
            model: acc.route.model_group(&acc.inc.model).to_owned(),
            kind,
            started,
            prices: acc.route.deployment.prices.clone(),
            stream: acc.inc.stream,
        }
    }
}

/// The tenant label of a caller (never a credential).
pub fn tenant_label(caller: &Caller) -> String {
    match caller {
        Caller::Tenant(t) => t.tenant.clone(),
        Caller::Master => "master".to_owned(),
        Caller::Open => "default".to_owned(),
    }
}

/// What was answered, for [`account`].
#[derive(Debug, Default)]
pub struct Answer<'a> {
    /// The answer as JSON (a miss's upstream body, a hit's stored body), for tokens and cost.
    pub body: Option<&'a Value>,
    /// The entry served (hits).
    pub entry: Option<&'a Entry>,
    /// Response bytes sent now.
    pub bytes: u64,
    /// Upstream seconds of this request's own call (misses).
    pub upstream_s: Option<f64>,
    /// What a partial hit (embeddings) saved: tokens and upstream seconds.
    pub partial_saved: Option<(llm_cache::Usage, f64)>,
}

/// Adds the cost headers to a response and records the request (metrics totals, request log).
pub fn account(
    st: &AppState,
    meta: &Meta,
    resp: Option<&mut Response>,
    status: &CacheStatus,
    key: Option<&CacheKey>,
    answer: Answer<'_>,
) {
    let hit = status.is_hit();
    let http_status = resp.as_ref().map_or(200, |r| r.status().as_u16());
    let ok = (200..300).contains(&http_status);
    let usage = answer
        .entry
        .and_then(|e| e.usage)
        .or_else(|| answer.body.and_then(llm_cache::Usage::from_response));
    let upstream_s = if hit {
        answer
            .entry
            .and_then(|e| e.upstream_ms)
            .map(|ms| ms as f64 / 1000.0)
    } else {
        answer.upstream_s
    };
    let full_cost = answer
        .body
        .filter(|_| ok)
        .and_then(|b| meta.prices.cost(meta.kind, b, upstream_s));
    let (mut cost, mut saved_cost) = match (hit, full_cost) {
        (true, Some(c)) => (Some(0.0), Some(c)),
        (false, c) => (c, None),
        (true, None) => (None, None),
    };
    let mut saved_usage = if hit { usage } else { None };
    let mut saved_upstream = if hit { upstream_s } else { None };
    if let Some((saved, secs)) = answer.partial_saved {
        // The answer's usage covers every input; the upstream billed only the missing ones.
        let tokens = |u: llm_cache::Usage| serde_json::json!({"usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}});
        saved_cost = meta.prices.cost(meta.kind, &tokens(saved), None);
        if let Some(u) = usage {
            let fresh = llm_cache::Usage {
                prompt_tokens: u.prompt_tokens.saturating_sub(saved.prompt_tokens),
                completion_tokens: u.completion_tokens.saturating_sub(saved.completion_tokens),
                total_tokens: u.total_tokens.saturating_sub(saved.total_tokens),
            };
            cost = meta.prices.cost(meta.kind, &tokens(fresh), None);
        }
        saved_usage = Some(saved);
        saved_upstream = Some(secs);
    }
    if let Some(resp) = resp {
        let h = resp.headers_mut();
        if let Some(c) = cost
            && let Ok(v) = HeaderValue::from_str(&format_cost(c))
        {
            h.insert(HeaderName::from_static("x-litellm-response-cost"), v);
        }
        if let Some(c) = saved_cost
            && let Ok(v) = HeaderValue::from_str(&format_cost(c))
        {
            h.insert(HeaderName::from_static("x-llm-cache-saved-cost"), v);
        }
    }
    let cache = if ok {
        status_label(status)
    } else {
        "upstream_error"
    };
    let logs = st.accounting.logs();
    st.accounting.record(
        Record {
            time_ms: llm_cache::core::envelope::now_ms(),
            tenant: meta.tenant.clone(),
            model: meta.model.clone(),
            call_type: meta.kind.as_str(),
            cache,
            // Only the log reads these two: a request that is only counted skips formatting them.
            cache_status: if logs {
                status.header_value(crate::server::CACHE_NAME)
            } else {
                String::new()
            },
            key: key.filter(|_| logs).map(|k| k.to_string()),
            age_s: match status {
                CacheStatus::Hit { age, .. } => Some(age.as_secs()),
                _ => None,
            },
            status: http_status,
            latency_ms: meta.started.elapsed().as_secs_f64() * 1000.0,
            stream: meta.stream,
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            cost,
            saved_cost,
            saved_prompt_tokens: saved_usage.map(|u| u.prompt_tokens),
            saved_completion_tokens: saved_usage.map(|u| u.completion_tokens),
            saved_upstream_s: saved_upstream,
        },
        answer.bytes,
    );
}

/// The forwarded headers and credential of a request to `d`.
pub(crate) fn forward(
    st: &AppState,
    headers: &HeaderMap,
    d: &Deployment,
    keyed: &[(&'static str, String)],
) -> Forward {
    Forward {
        credential: crate::auth::client_credential(st, headers, d.api),
        headers: keyed
            .iter()
            .filter_map(|(k, v)| Some((HeaderName::from_static(k), HeaderValue::from_str(v).ok()?)))
            .collect(),
    }
}

macro_rules! handler {
    ($name:ident, $endpoint:expr) => {
        /// The handler of one cacheable JSON endpoint.
        pub(crate) async fn $name(
            State(st): State<Arc<AppState>>,
            Extension(caller): Extension<Caller>,
            large: Option<Extension<LargeBody>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            json_endpoint(st, caller, large.map(|l| l.0), headers, body, &$endpoint).await
        }
    };
}

handler!(chat, CHAT);
handler!(completions, COMPLETIONS);
handler!(responses, RESPONSES);
handler!(messages, MESSAGES);
handler!(rerank, RERANK);

// `accept`'s error is the response to send (as in every `accept` caller).
#[allow(clippy::result_large_err)]
async fn json_endpoint(
    st: Arc<AppState>,
    caller: Caller,
    large: Option<LargeBody>,
    headers: HeaderMap,
    body: Bytes,
    ep: &'static Endpoint,
) -> Response {
    let started = Instant::now();
    let raw_ok = crate::server::raw_allowed(&st, body.len());
    let acc = match off_worker(large.is_some(), || {
        accept(&st, &headers, &caller, &body, ep.api, raw_ok)
    }) {
        Ok(x) => x,
        Err(r) => return r,
    };
    drop(body);
    if acc.inc.stream && ep.stream.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`stream` is not supported on {}", ep.path),
            "invalid_request_error",
            Some("stream"),
        );
    }
    let keyed = keyed_headers(ep.api, &headers);
    let keyed_refs: Vec<(&str, &str)> = keyed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let raw_refs = off_worker(large.is_some(), || acc.raw_refs());
    let mut ctx = acc.context(&keyed_refs, &raw_refs);
    if ctx.bypass.is_none() {
        ctx.bypass = stateful(ep.kind, &acc.inc.request);
    }
    let prepared = match off_worker(large.is_some(), || {
        st.cache
            .prepare(ep.kind, &acc.inc.request, &acc.inc.cc, &ctx)
    }) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                "invalid_request_error",
                None,
            );
        }
    };
    drop(raw_refs);
    let meta = Meta::new(&acc, &caller, ep.kind, started);
    let fwd = forward(&st, &headers, acc.route.deployment, &keyed);
    let deployment = acc.route.deployment.clone();
    let include_usage = acc.inc.include_usage;
    let stream = acc.inc.stream;
    let request = acc.inc.request;
    let raw = acc.inc.raw;

    if let (true, Some(format)) = (stream, ep.stream) {
        return crate::stream::stream_flow(crate::stream::StreamCall {
            st,
            prepared,
            endpoint: ep,
            format,
            meta,
            deployment,
            request,
            raw,
            large,
            fwd,
            include_usage,
        })
        .await;
    }

    let st2 = st.clone();
    let result = prepared
        .get_or_fetch(|| async move {
            let body = upstream_body_with(request, raw, &deployment);
            // The bulk is now one buffer on its way upstream: the share goes back.
            if let Some(l) = &large {
                l.release();
            }
            st2.upstream
                .post_json(&deployment, ep.path, body, &fwd)
                .await
        })
        .await;
    match result {
        Ok(cached) => {
            st.metrics.request(ep.label, status_label(&cached.status));
            // The body as JSON is read for a price or for usage the entry does not carry: an
            // unpriced hit is served without parsing its answer.
            let parsed: Option<Value> = (meta.prices.is_priced()
                || cached.entry.as_ref().and_then(|e| e.usage).is_none())
            .then(|| serde_json::from_slice(&cached.value).ok())
            .flatten();
            let bytes = cached.value.len() as u64;
            let mut resp =
                ([(header::CONTENT_TYPE, "application/json")], cached.value).into_response();
            cache_headers(
                &mut resp,
                cached.key.as_ref(),
                &cached.status,
                cached.entry.as_ref(),
            );
            account(
                &st,
                &meta,
                Some(&mut resp),
                &cached.status,
                cached.key.as_ref(),
                Answer {
                    body: parsed.as_ref(),
                    entry: cached.entry.as_ref(),
                    bytes,
                    upstream_s: None,
                    partial_saved: None,
                },
            );
            resp
        }
        Err(CallError::NotCached) => {
            st.metrics.request(ep.label, "only_if_cached_miss");
            not_cached(prepared.key())
        }
        Err(CallError::Upstream(e)) => {
            st.metrics.request(ep.label, "upstream_error");
            let mut resp = upstream_error(e);
            if let Some(k) = prepared
                .key()
                .and_then(|k| HeaderValue::from_str(k.as_str()).ok())
            {
                resp.headers_mut()
                    .insert(HeaderName::from_static("x-litellm-cache-key"), k);
            }
            let status = CacheStatus::Bypass {
                reason: "upstream-error",
            };
            account(
                &st,
                &meta,
                Some(&mut resp),
                &status,
                prepared.key(),
                Answer::default(),
            );
            resp
        }
        Err(CallError::Invalid(e)) => error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "invalid_request_error",
            None,
        ),
    }
}
