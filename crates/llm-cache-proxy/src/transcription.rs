//! `POST /v1/audio/transcriptions` (multipart): cached by the audio's bytes and every form field.
//!
//! The audio is read once, chunk by chunk: each chunk goes into a BLAKE3 hash and is kept (not
//! copied) to be streamed upstream on a miss, so the file is never held twice in memory. The key
//! covers the hash, the file's size, name and content type, and every other form field (the
//! rule of the key spec: what is forwarded is keyed; LiteLLM's own fields such as `cache` are
//! stripped). `json`/`verbose_json` answers are stored as they are; `text`, `srt` and `vtt`
//! answers are stored wrapped in a JSON object and served back as the same text with the same
//! content type (the format is part of the key).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, Multipart, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use llm_cache::{CacheControl, CacheStatus, CallError, CallKind};
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::config::Api;
use crate::endpoints::{Answer, Meta, account, forward};
use crate::metrics::status_label;
use crate::server::{
    AppState, Incoming, cache_headers, error, not_cached, route_incoming, upstream_error,
};

/// The member of a stored wrapper that says a transcription answer was text, and its type.
const RAW_TYPE: &str = "__llm_cache_raw_content_type";
const LABEL: &str = "transcriptions";

struct Audio {
    chunks: Vec<Bytes>,
    len: u64,
    hash: String,
    file_name: Option<String>,
    content_type: Option<String>,
}

fn bad(message: impl Into<String>, param: Option<&str>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
    )
}

/// Reads the form: the audio (hashed as it streams in) and the text fields.
async fn read_form(
    mut multipart: Multipart,
) -> Result<(Audio, BTreeMap<String, Vec<String>>), Response> {
    let mut audio: Option<Audio> = None;
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(bad(format!("invalid multipart body: {e}"), None)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(str::to_owned);
            let mut hasher = blake3::Hasher::new();
            let mut chunks = Vec::new();
            let mut len = 0u64;
            let mut field = field;
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        hasher.update(&chunk);
                        len += chunk.len() as u64;
                        chunks.push(chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(bad(format!("invalid multipart body: {e}"), Some("file")));
                    }
                }
            }
            audio = Some(Audio {
                chunks,
                len,
                hash: hasher.finalize().to_hex().to_string(),
                file_name,
                content_type,
            });
        } else {
            let text = field
                .text()
                .await
                .map_err(|e| bad(format!("invalid form field `{name}`: {e}"), Some(&name)))?;
            fields.entry(name).or_default().push(text);
        }
    }
    let audio = audio.ok_or_else(|| bad("`file` is required (the audio)", Some("file")))?;
    Ok((audio, fields))
}

/// The request as the key sees it: every form field that is forwarded, and the audio by hash.
fn key_request(audio: &Audio, fields: &BTreeMap<String, Vec<String>>) -> Value {
    let mut m = Map::new();
    for (name, values) in fields {
        let name = name.strip_suffix("[]").unwrap_or(name);
        if llm_cache::core::key::is_stripped(name) {
            continue;
        }
        let v = match values.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        m.insert(name.to_owned(), v);
    }
    m.insert(
        "file".to_owned(),
        json!({
            "blake3": audio.hash,
            "bytes": audio.len,
            "filename": audio.file_name,
            "content_type": audio.content_type,
        }),
    );
    Value::Object(m)
}

/// The handler.
pub(crate) async fn transcriptions(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    let started = Instant::now();
    let (audio, fields) = match read_form(multipart).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(model) = fields.get("model").and_then(|v| v.first()).cloned() else {
        return bad("`model` is required", Some("model"));
    };
    let body_cc = match fields.get("cache").and_then(|v| v.first()) {
        None => CacheControl::none(),
        Some(text) => match serde_json::from_str::<Value>(text)
            .map_err(|e| e.to_string())
            .and_then(|v| CacheControl::from_json(Some(&v)).map_err(|e| e.to_string()))
        {
            Ok(cc) => cc,
            Err(e) => return bad(format!("invalid `cache` field: {e}"), Some("cache")),
        },
    };
    let header_cc = match crate::server::header_cache_control(&headers) {
        Ok(cc) => cc,
        Err(e) => return bad(e.to_string(), Some(&e.field)),
    };
    let inc = Incoming {
        request: key_request(&audio, &fields),
        cc: body_cc.or(header_cc),
        model,
        stream: false,
        include_usage: false,
        raw: Vec::new(),
    };
    let acc = match route_incoming(&st, &headers, &caller, inc, Api::OpenAi) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let prepared = match st.cache.prepare(
        CallKind::Transcription,
        &acc.inc.request,
        &acc.inc.cc,
        &acc.context(&[], &[]),
    ) {
        Ok(p) => p,
        Err(e) => return bad(e.to_string(), None),
    };
    let meta = Meta::new(&acc, &caller, CallKind::Transcription, started);
    let fwd = forward(&st, &headers, acc.route.deployment, &[]);
    let deployment = acc.route.deployment.clone();
    let upstream_model = deployment
        .model
        .clone()
        .unwrap_or_else(|| acc.inc.model.clone());
    let st2 = st.clone();
    let result = prepared
        .get_or_fetch(|| async move {
            let mut form = reqwest::multipart::Form::new();
            for (name, values) in &fields {
                let bare = name.strip_suffix("[]").unwrap_or(name);
                if llm_cache::core::key::is_stripped(bare) {
                    continue;
                }
                for v in values {
                    let v = if name == "model" {
                        upstream_model.clone()
                    } else {
                        v.clone()
                    };
                    form = form.text(name.clone(), v);
                }
            }
            let len = audio.len;
            let body = reqwest::Body::wrap_stream(futures::stream::iter(
                audio.chunks.into_iter().map(Ok::<Bytes, std::io::Error>),
            ));
            let mut part = reqwest::multipart::Part::stream_with_length(body, len)
                .file_name(audio.file_name.unwrap_or_else(|| "audio".to_owned()));
            if let Some(ct) = &audio.content_type {
                part =
                    part.mime_str(ct)
                        .map_err(|e| crate::upstream::UpstreamError::Unreachable {
                            message: format!("invalid content type of the audio: {e}"),
                            timeout: false,
                        })?;
            }
            form = form.part("file", part);
            let (body, content_type) = st2
                .upstream
                .post_multipart(&deployment, "/audio/transcriptions", form, &fwd)
                .await?;
            let is_json = content_type
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            if is_json {
                return Ok(body);
            }
            // Text answers are stored wrapped, with their content type.
            let text = String::from_utf8_lossy(&body).into_owned();
            let ct = content_type
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
            Ok(Bytes::from(
                serde_json::to_vec(&json!({"text": text, RAW_TYPE: ct})).expect("JSON"),
            ))
        })
        .await;
    match result {
        Ok(cached) => {
            st.metrics.request(LABEL, status_label(&cached.status));
            let parsed: Option<Value> = serde_json::from_slice(&cached.value).ok();
            let raw_type = parsed
                .as_ref()
                .and_then(|v| v.get(RAW_TYPE))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let (body, content_type) = match (&raw_type, &parsed) {
                (Some(ct), Some(v)) => (
                    Bytes::from(v["text"].as_str().unwrap_or_default().to_owned()),
                    ct.clone(),
                ),
                _ => (cached.value.clone(), "application/json".to_owned()),
            };
            let bytes = body.len() as u64;
            let mut resp = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_str(&content_type)
                        .unwrap_or(HeaderValue::from_static("application/json")),
                )],
                body,
            )
                .into_response();
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
                    ..Answer::default()
                },
            );
            resp
        }
        Err(CallError::NotCached) => {
            st.metrics.request(LABEL, "only_if_cached_miss");
            not_cached(prepared.key())
        }
        Err(CallError::Upstream(e)) => {
            st.metrics.request(LABEL, "upstream_error");
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
        Err(CallError::Invalid(e)) => bad(e.to_string(), None),
    }
}
