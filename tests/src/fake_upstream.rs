//! A fake OpenAI-compatible upstream for black-box tests: counts calls, records request bodies,
//! streams SSE, and fails or stalls on demand.
//!
//! Behaviour is chosen by the last user message (or the prompt / first input):
//! * contains `FAIL500` → HTTP 500 with an OpenAI error body; `FAIL429` → 429;
//! * contains `STALL` → waits 3 s before answering;
//! * contains `EMPTY` → a completion with empty content (must not be cached);
//! * contains `TOOL` → a tool call instead of content;
//! * contains `CUTSTREAM` → a stream that ends without `[DONE]` (must not be cached);
//! * otherwise → `reply #<n> to: <prompt>` where n counts upstream calls.
//!
//! [`FakeUpstream::set_latency`] adds a delay to every answer; [`FakeUpstream::require_keys`]
//! makes it answer 401 to a request without one of the given bearer keys (a real provider
//! checking the caller's credential). Embedding items carry `fake_call`, the call that made them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};

#[derive(Default)]
struct Inner {
    calls: AtomicUsize,
    chat: AtomicUsize,
    completions: AtomicUsize,
    embeddings: AtomicUsize,
    latency_ms: AtomicU64,
    bodies: Mutex<Vec<Value>>,
    auth: Mutex<Vec<Option<String>>>,
    headers: Mutex<Vec<HeaderMap>>,
    required_keys: Mutex<Vec<String>>,
    /// Bodies larger than this are not parsed (0: no limit): answered as `{"model": ...}` with
    /// an empty prompt, recorded as `null`. The large-body bench sets it, so that the fake's
    /// own parsing does not weigh on the machine the proxy is measured on.
    parse_limit: AtomicUsize,
}

/// A running fake upstream.
#[derive(Clone)]
pub struct FakeUpstream {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl std::fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("addr", &self.addr)
            .finish()
    }
}

fn prompt_of(body: &Value) -> String {
    if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
        return msgs
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .map(|c| match c {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
    }
    match body.get("prompt").or_else(|| body.get("input")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .first()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

impl FakeUpstream {
    /// Starts on a free loopback port, in the current Tokio runtime.
    pub async fn start() -> Self {
        crate::install_crypto_provider();
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/responses", post(responses))
            .route("/v1/messages", post(messages))
            .route("/v1/rerank", post(rerank))
            .route("/v1/audio/transcriptions", post(transcriptions))
            .route("/v1/models", get(models))
            // Large requests (the proxy's large-body tests and bench) reach it whole.
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake upstream");
        });
        FakeUpstream { inner, addr }
    }

    /// Base URL including `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Total calls (all endpoints).
    pub fn calls(&self) -> usize {
        self.inner.calls.load(SeqCst)
    }

    /// Chat completion calls.
    pub fn chat_calls(&self) -> usize {
        self.inner.chat.load(SeqCst)
    }

    /// Text completion calls.
    pub fn completion_calls(&self) -> usize {
        self.inner.completions.load(SeqCst)
    }

    /// Embedding calls.
    pub fn embedding_calls(&self) -> usize {
        self.inner.embeddings.load(SeqCst)
    }

    /// Request bodies received, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.inner.bodies.lock().unwrap().clone()
    }

    /// Every request's headers, in order.
    pub fn headers(&self) -> Vec<HeaderMap> {
        self.inner.headers.lock().unwrap().clone()
    }

    /// `Authorization` headers received, in order.
    pub fn auth_headers(&self) -> Vec<Option<String>> {
        self.inner.auth.lock().unwrap().clone()
    }

    /// Accepts only requests with `Authorization: Bearer <k>` for one of `keys` (empty: any).
    pub fn require_keys(&self, keys: &[&str]) {
        *self.inner.required_keys.lock().unwrap() = keys.iter().map(|k| (*k).to_owned()).collect();
    }

    /// Bodies larger than `bytes` are answered without being parsed (see `Inner::parse_limit`).
    pub fn set_parse_limit(&self, bytes: usize) {
        self.inner.parse_limit.store(bytes, SeqCst);
    }

    /// Adds latency to every answer.
    pub fn set_latency(&self, d: Duration) {
        self.inner.latency_ms.store(d.as_millis() as u64, SeqCst);
    }
}

async fn record(
    inner: &Inner,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Value, usize), Response> {
    let n = inner.calls.fetch_add(1, SeqCst) + 1;
    let limit = inner.parse_limit.load(SeqCst);
    if limit > 0 && body.len() > limit {
        inner.bodies.lock().unwrap().push(Value::Null);
        return Ok((json!({"model": "large"}), n));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "bad json"}})),
        )
            .into_response()
    })?;
    inner.bodies.lock().unwrap().push(v.clone());
    inner.headers.lock().unwrap().push(headers.clone());
    inner.auth.lock().unwrap().push(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
    );
    let required = inner.required_keys.lock().unwrap().clone();
    if !required.is_empty() {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|h| h.to_str().ok()));
        if !presented.is_some_and(|p| required.iter().any(|k| k == p)) {
            return Err((
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})),
            )
                .into_response());
        }
    }
    let latency = inner.latency_ms.load(SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let prompt = prompt_of(&v);
    if prompt.contains("STALL") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    for (needle, status) in [("FAIL500", 500u16), ("FAIL429", 429)] {
        if prompt.contains(needle) {
            let status = StatusCode::from_u16(status).unwrap();
            return Err((
                status,
                axum::Json(json!({"error": {"message": format!("upstream says {status}"), "type": "server_error", "code": status.as_u16()}})),
            )
                .into_response());
        }
    }
    Ok((v, n))
}

fn usage(prompt: &str, completion: &str) -> Value {
    let p = prompt.split_whitespace().count() as u64 + 3;
    let c = completion.split_whitespace().count() as u64;
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

async fn chat(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    inner.chat.fetch_add(1, SeqCst);
    let (req, n) = match record(&inner, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let prompt = prompt_of(&req);
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake")
        .to_owned();
    let id = format!("chatcmpl-fake-{n}");
    let created = 1_795_000_000 + n as u64;
    let tool = prompt.contains("TOOL");
    let content = if prompt.contains("EMPTY") {
        String::new()
    } else {
        format!("reply #{n} to: {prompt}")
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let message = if tool {
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{n}"), "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]})
        } else {
            json!({"role": "assistant", "content": content})
        };
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": if tool { "tool_calls" } else { "stop" }}],
            "usage": usage(&prompt, &content),
        });
        return axum::Json(body).into_response();
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cut = prompt.contains("CUTSTREAM");
    let head =
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model});
    let mut events: Vec<Value> = Vec::new();
    let chunk = |choices: Value| {
        let mut c = head.clone();
        c["choices"] = choices;
        c
    };
    events.push(chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    ));
    if tool {
        events.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": format!("call_{n}"), "type": "function", "function": {"name": "lookup", "arguments": ""}}]}, "finish_reason": null}])));
        events.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":\"x\"}"}}]}, "finish_reason": null}])));
    } else {
        // Upstream chunks of 3 characters, unlike the replay's words.
        let chars: Vec<char> = content.chars().collect();
        for piece in chars.chunks(3) {
            let s: String = piece.iter().collect();
            events.push(chunk(
                json!([{"index": 0, "delta": {"content": s}, "finish_reason": null}]),
            ));
        }
    }
    events.push(chunk(json!([{"index": 0, "delta": {}, "finish_reason": if tool { "tool_calls" } else { "stop" }}])));
    if include_usage {
        let mut u = chunk(json!([]));
        u["usage"] = usage(&prompt, &content);
        events.push(u);
    }
    sse(events, !cut)
}

fn sse(events: Vec<Value>, done: bool) -> Response {
    let stream = futures::stream::iter(events.into_iter().map(Some).chain(std::iter::once(None)))
        .then(move |e| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let bytes = match e {
                Some(v) => Bytes::from(format!("data: {v}\n\n")),
                None if done => Bytes::from_static(b"data: [DONE]\n\n"),
                None => Bytes::new(),
            };
            Ok::<_, std::io::Error>(bytes)
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt as _;

async fn completions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    inner.completions.fetch_add(1, SeqCst);
    let (req, n) = match record(&inner, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let prompt = prompt_of(&req);
    let text = format!(" completion #{n} of {prompt}");
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake")
        .to_owned();
    let id = format!("cmpl-fake-{n}");
    if req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let head = json!({"id": id, "object": "text_completion", "created": 1_795_000_000 + n as u64, "model": model});
        let mut events = Vec::new();
        for w in text.split_inclusive(' ') {
            let mut c = head.clone();
            c["choices"] =
                json!([{"text": w, "index": 0, "logprobs": null, "finish_reason": null}]);
            events.push(c);
        }
        let mut c = head.clone();
        c["choices"] =
            json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "length"}]);
        events.push(c);
        return sse(events, true);
    }
    axum::Json(json!({
        "id": id, "object": "text_completion", "created": 1_795_000_000 + n as u64, "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "length"}],
        "usage": usage(&prompt, &text),
    }))
    .into_response()
}

/// The fake's deterministic embedding of a text: `[len, first byte, n-th call]`.
pub fn fake_vector(text: &str) -> Vec<f32> {
    vec![
        text.len() as f32,
        f32::from(text.bytes().next().unwrap_or(0)),
        0.5,
    ]
}

async fn embeddings(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    inner.embeddings.fetch_add(1, SeqCst);
    let (req, n) = match record(&inner, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => vec![],
    };
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = fake_vector(s);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding, "fake_call": n})
        })
        .collect();
    let tokens: u64 = inputs
        .iter()
        .map(|s| s.split_whitespace().count() as u64 + 1)
        .sum();
    axum::Json(json!({
        "object": "list", "data": data,
        "model": req.get("model").cloned().unwrap_or(json!("fake-embed")),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn models() -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": "fake-upstream-model", "object": "model", "created": 0, "owned_by": "fake"}]}))
        .into_response()
}

fn sse_named(events: Vec<(String, Value)>) -> Response {
    let stream = futures::stream::iter(events).then(|(name, data)| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, std::io::Error>(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// OpenAI Responses API: `resp-fake-<n>`, one message with `reply #<n> to: <input>`.
async fn responses(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, n) = match record(&inner, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let prompt = prompt_of(&req);
    let text = format!("reply #{n} to: {prompt}");
    let model = req.get("model").cloned().unwrap_or(json!("fake"));
    let response = json!({
        "id": format!("resp-fake-{n}"), "object": "response", "created_at": 1_795_000_000 + n as u64,
        "status": "completed", "model": model,
        "output": [{"id": format!("msg-fake-{n}"), "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": prompt.split_whitespace().count() + 3, "output_tokens": text.split_whitespace().count(),
                  "total_tokens": prompt.split_whitespace().count() + 3 + text.split_whitespace().count()},
    });
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        return axum::Json(response).into_response();
    }
    let mut start = response.clone();
    start["status"] = json!("in_progress");
    start["output"] = json!([]);
    let item_id = format!("msg-fake-{n}");
    let mut events = vec![
        (
            "response.created".to_owned(),
            json!({"type": "response.created", "sequence_number": 0, "response": start}),
        ),
        (
            "response.output_item.added".to_owned(),
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
            "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
        ),
    ];
    let chars: Vec<char> = text.chars().collect();
    for (i, piece) in chars.chunks(4).enumerate() {
        let delta: String = piece.iter().collect();
        events.push((
            "response.output_text.delta".to_owned(),
            json!({"type": "response.output_text.delta", "sequence_number": 2 + i,
            "item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta}),
        ));
    }
    events.push((
        "response.completed".to_owned(),
        json!({"type": "response.completed", "sequence_number": 99, "response": response}),
    ));
    sse_named(events)
}

/// Anthropic Messages API: `msg-fake-<n>`; checks nothing, records headers (`x-api-key`,
/// `anthropic-version`, `anthropic-beta`).
async fn messages(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, n) = match record(&inner, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let prompt = prompt_of(&req);
    let text = format!("reply #{n} to: {prompt}");
    let model = req.get("model").cloned().unwrap_or(json!("fake"));
    let usage = json!({"input_tokens": prompt.split_whitespace().count() + 3, "output_tokens": text.split_whitespace().count()});
    let message = json!({
        "id": format!("msg-fake-{n}"), "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": usage,
    });
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        return axum::Json(message).into_response();
    }
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    let mut events = vec![
        (
            "message_start".to_owned(),
            json!({"type": "message_start", "message": start}),
        ),
        (
            "content_block_start".to_owned(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping".to_owned(), json!({"type": "ping"})),
    ];
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(5) {
        let t: String = piece.iter().collect();
        events.push(("content_block_delta".to_owned(), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})));
    }
    events.push((
        "content_block_stop".to_owned(),
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(("message_delta".to_owned(), json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": usage})));
    events.push(("message_stop".to_owned(), json!({"type": "message_stop"})));
    sse_named(events)
}

/// Cohere/Jina-style rerank: `rerank-fake-<n>`, documents scored by length.
async fn rerank(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, n) = match record(&inner, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let docs = req
        .get("documents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let top_n = req
        .get("top_n")
        .and_then(Value::as_u64)
        .map_or(docs.len(), |t| t as usize);
    let mut results: Vec<Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"index": i, "relevance_score": 1.0 / (1.0 + d.to_string().len() as f64)}))
        .collect();
    results.truncate(top_n);
    axum::Json(json!({"id": format!("rerank-fake-{n}"), "results": results, "meta": {"billed_units": {"search_units": 1}}}))
        .into_response()
}

/// Whisper-style transcription (multipart): `transcript #<n> of <len> bytes (<filename>)` in the
/// requested format; the recorded body is the form's fields plus the file's length.
async fn transcriptions(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    mut form: axum::extract::Multipart,
) -> Response {
    let mut fields = serde_json::Map::new();
    let mut len = 0usize;
    let mut name = String::new();
    while let Ok(Some(field)) = form.next_field().await {
        let fname = field.name().unwrap_or_default().to_owned();
        if fname == "file" {
            name = field.file_name().unwrap_or_default().to_owned();
            len = field.bytes().await.map(|b| b.len()).unwrap_or(0);
        } else {
            let text = field.text().await.unwrap_or_default();
            fields.insert(fname, json!(text));
        }
    }
    fields.insert("file_len".to_owned(), json!(len));
    let body = Bytes::from(serde_json::to_vec(&Value::Object(fields.clone())).unwrap());
    let (_, n) = match record(&inner, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let text = format!("transcript #{n} of {len} bytes ({name})");
    match fields.get("response_format").and_then(Value::as_str).unwrap_or("json") {
        "text" => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        "srt" => ([(header::CONTENT_TYPE, "application/x-subrip")], format!("1\n00:00:00,000 --> 00:00:01,000\n{text}\n")).into_response(),
        "verbose_json" => axum::Json(json!({"task": "transcribe", "language": "english", "duration": 3.5, "text": text, "segments": []})).into_response(),
        _ => axum::Json(json!({"text": text})).into_response(),
    }
}
