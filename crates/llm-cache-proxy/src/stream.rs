//! Streaming requests: a streamed hit replays the stored answer as SSE; a streamed miss
//! forwards the upstream stream chunk by chunk (fanned out to identical streaming requests of
//! the same shape), assembles it on the side and stores it when it ends cleanly.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use llm_cache::core::{Lookup, Prepared, StoreOutcome};
use llm_cache::{CacheStatus, CallKind};
use serde_json::Value;

use crate::fanout::{ChunkSink, Join};
use crate::metrics::{ProxyMetrics, status_label};
use crate::server::{AppState, cache_headers, not_cached, upstream_error};
use crate::sse::{self, Assembler, SseParser};
use crate::upstream::upstream_body;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_flow(
    st: Arc<AppState>,
    prepared: Prepared,
    kind: CallKind,
    path: &'static str,
    endpoint: &'static str,
    deployment: crate::config::Deployment,
    request: Value,
    auth: Option<HeaderValue>,
    include_usage: bool,
) -> Response {
    let text = kind == CallKind::TextCompletion;
    let reason = match prepared.lookup().await {
        Lookup::Hit(hit) => match serde_json::from_slice::<Value>(&hit.entry.body) {
            Ok(stored) => {
                let body = if text {
                    sse::replay_text(&stored, include_usage)
                } else {
                    sse::replay_chat(&stored, include_usage)
                };
                st.metrics.stream_replays.fetch_add(1, Relaxed);
                st.metrics.request(endpoint, "hit");
                let status = CacheStatus::Hit {
                    tier: hit.tier,
                    age: hit.age,
                    similarity: hit.similarity,
                };
                let mut resp = sse_response(Body::from(body));
                cache_headers(&mut resp, prepared.key(), &status, Some(&hit.entry));
                return resp;
            }
            Err(_) => llm_cache::core::MissReason::Unusable,
        },
        Lookup::Miss(r) => r,
        Lookup::Bypass(_) => llm_cache::core::MissReason::NotFound,
    };
    if prepared.only_if_cached() {
        st.metrics.request(endpoint, "only_if_cached_miss");
        return not_cached(prepared.key());
    }
    let status = match prepared.bypass_reason() {
        Some(r) => CacheStatus::Bypass { reason: r },
        // The stream is stored once it ends cleanly: after these headers are sent.
        None => CacheStatus::Miss {
            reason,
            store: if prepared.writes() {
                StoreOutcome::Pending
            } else {
                StoreOutcome::NotRequested
            },
        },
    };
    let key = prepared.key().cloned();
    let engine = prepared.cache().engine();

    // Fan-out: identical streaming misses share one upstream stream (crate::fanout).
    if let (Some(key), Some(engine), true) = (&key, &engine, prepared.reads())
        && engine.settings().coalesce
    {
        // Followers get the shape they asked for: a stream with and one without the usage
        // chunk are different flights.
        let flight = format!("{}\nusage={include_usage}", key.as_str());
        for _ in 0..3 {
            match st.stream_flights.join(&flight) {
                Join::Lead(leader) => {
                    let sink = Box::new(StoreSink::new(prepared, text, st.metrics.clone()));
                    let body = upstream_body(request, &deployment);
                    let st2 = st.clone();
                    let open = async move {
                        st2.upstream
                            .post_stream(&deployment, path, body, auth.as_ref())
                            .await
                            .map(|r| r.bytes_stream().boxed())
                    };
                    return match leader.start(open, sink).await {
                        Ok(sub) => forwarded_stream(
                            &st,
                            endpoint,
                            Some(key),
                            &status,
                            Body::from_stream(sub.into_stream()),
                        ),
                        Err(e) => {
                            st.metrics.request(endpoint, "upstream_error");
                            upstream_error(e)
                        }
                    };
                }
                Join::Follow(mut sub) => {
                    if sub.wait_started(engine.settings().coalesce_timeout).await {
                        prepared.cache().stats().coalesced.fetch_add(1, Relaxed);
                        let status = CacheStatus::Coalesced;
                        return forwarded_stream(
                            &st,
                            endpoint,
                            Some(key),
                            &status,
                            Body::from_stream(sub.into_stream()),
                        );
                    }
                    // The leader's upstream refused, or the wait timed out: try again.
                }
            }
        }
    }

    let resp = match st
        .upstream
        .post_stream(
            &deployment,
            path,
            upstream_body(request, &deployment),
            auth.as_ref(),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            st.metrics.request(endpoint, "upstream_error");
            return upstream_error(e);
        }
    };
    let sink = StoreSink::new(prepared, text, st.metrics.clone());
    let stream = futures::stream::unfold(
        Some((resp.bytes_stream().boxed(), sink)),
        |state| async move {
            let (mut upstream, mut sink) = state?;
            match upstream.next().await {
                Some(Ok(chunk)) => {
                    sink.chunk(&chunk);
                    Some((Ok::<Bytes, std::io::Error>(chunk), Some((upstream, sink))))
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream stream failed; not cached");
                    Some((Err(std::io::Error::other(e)), None))
                }
                None => {
                    sink.finish();
                    None
                }
            }
        },
    );
    forwarded_stream(
        &st,
        endpoint,
        key.as_ref(),
        &status,
        Body::from_stream(stream),
    )
}

/// The SSE response of a stream forwarded from the upstream (counted, with cache headers).
fn forwarded_stream(
    st: &AppState,
    endpoint: &'static str,
    key: Option<&llm_cache::CacheKey>,
    status: &CacheStatus,
    body: Body,
) -> Response {
    st.metrics.request(endpoint, status_label(status));
    let mut out = sse_response(body);
    cache_headers(&mut out, key, status, None);
    out
}

/// Assembles a forwarded stream and stores it when it ends cleanly.
struct StoreSink {
    parser: SseParser,
    assembler: Option<Assembler>,
    prepared: Prepared,
    metrics: Arc<ProxyMetrics>,
}

impl StoreSink {
    fn new(prepared: Prepared, text: bool, metrics: Arc<ProxyMetrics>) -> Self {
        StoreSink {
            parser: SseParser::default(),
            assembler: prepared.writes().then(|| Assembler::new(text)),
            prepared,
            metrics,
        }
    }
}

impl ChunkSink for StoreSink {
    fn chunk(&mut self, chunk: &Bytes) {
        if let Some(a) = self.assembler.as_mut() {
            for event in self.parser.feed(chunk) {
                a.push(&event);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(full) = self.assembler.take().and_then(Assembler::finish) {
            let bytes = Bytes::from(serde_json::to_vec(&full).expect("JSON values serialize"));
            if self.prepared.store_parsed(bytes, &full) {
                self.metrics.streams_stored.fetch_add(1, Relaxed);
            }
        }
    }
}

fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
