//! Streaming requests: a streamed hit replays the stored answer as events of the endpoint's
//! format; a streamed miss forwards the upstream stream chunk by chunk (fanned out to identical
//! streaming requests of the same shape), assembles it on the side, stores it when it ends
//! cleanly and accounts for it (tokens, cost, request log) when it ends.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use llm_cache::CacheStatus;
use llm_cache::core::{Coordinated, Hit, Led, Lookup, MissReason, Prepared, StoreOutcome};
use serde_json::Value;

use crate::config::Deployment;
use crate::endpoints::{Answer, Endpoint, Meta, StreamAssembler, StreamFormat, account, replay};
use crate::fanout::{ChunkSink, Join};
use crate::metrics::status_label;
use crate::server::{AppState, cache_headers, not_cached, upstream_error};
use crate::sse::SseParser;
use crate::upstream::{Forward, upstream_body_with};

/// Everything a streaming request needs.
pub(crate) struct StreamCall {
    pub(crate) st: Arc<AppState>,
    pub(crate) prepared: Prepared,
    pub(crate) endpoint: &'static Endpoint,
    pub(crate) format: StreamFormat,
    pub(crate) meta: Meta,
    pub(crate) deployment: std::sync::Arc<Deployment>,
    pub(crate) request: Value,
    /// The request's raw members (a large body's bulk).
    pub(crate) raw: Vec<crate::upstream::RawMember>,
    /// Its share of the large-request budget, given back once the upstream body is built.
    pub(crate) large: Option<crate::server::LargeBody>,
    pub(crate) fwd: Forward,
    pub(crate) include_usage: bool,
}

/// What replaying a stored entry as a stream needs besides the entry.
struct Replay<'a> {
    st: &'a AppState,
    label: &'static str,
    format: StreamFormat,
    include_usage: bool,
    meta: &'a Meta,
}

impl Replay<'_> {
    /// A lookup's outcome: the hit replayed, or why not (`None`: bypassed).
    fn settle(
        &self,
        prepared: &Prepared,
        looked: Lookup,
    ) -> std::result::Result<Response, Option<MissReason>> {
        match looked {
            Lookup::Hit(hit) => self
                .answer(prepared, &hit, None)
                .ok_or(Some(MissReason::Unusable)),
            Lookup::Miss(r) => Err(Some(r)),
            Lookup::Bypass(_) => Err(None),
        }
    }

    /// Answers with a stored entry replayed as a stream (a hit, or another replica's stored
    /// answer when `status` says so; `None`: the hit's own status); `None` when the entry is
    /// not JSON.
    fn answer(
        &self,
        prepared: &Prepared,
        hit: &Hit,
        status: Option<CacheStatus>,
    ) -> Option<Response> {
        let stored = serde_json::from_slice::<Value>(&hit.entry.body).ok()?;
        let status = status.unwrap_or(CacheStatus::Hit {
            tier: hit.tier,
            age: hit.age,
            similarity: hit.similarity,
        });
        let body = replay(self.format, &stored, self.include_usage);
        self.st.metrics.stream_replays.fetch_add(1, Relaxed);
        self.st.metrics.request(
            self.label,
            if matches!(status, CacheStatus::Coalesced) {
                "coalesced"
            } else {
                "hit"
            },
        );
        let bytes = body.len() as u64;
        let mut resp = sse_response(Body::from(body));
        cache_headers(&mut resp, prepared.key(), &status, Some(&hit.entry));
        account(
            self.st,
            self.meta,
            Some(&mut resp),
            &status,
            prepared.key(),
            Answer {
                body: Some(&stored),
                entry: Some(&hit.entry),
                bytes,
                upstream_s: None,
                partial_saved: None,
            },
        );
        Some(resp)
    }
}

pub(crate) async fn stream_flow(call: StreamCall) -> Response {
    let StreamCall {
        st,
        prepared,
        endpoint,
        format,
        meta,
        deployment,
        request,
        raw,
        large,
        fwd,
        include_usage,
    } = call;
    let release = move || {
        if let Some(l) = &large {
            l.release();
        }
    };
    let label = endpoint.label;
    let replay = Replay {
        st: &st,
        label,
        format,
        include_usage,
        meta: &meta,
    };
    // A request whose store read is left to its flight's leader (Redis: the lease attempt is
    // the read) looks up only L1 here; the leader reads for it (`Prepared::lead_lookup`).
    let deferred = prepared.defers_read();
    let mut read_done = !deferred;
    let looked = if deferred {
        prepared.lookup_l1()
    } else {
        prepared.lookup().await
    };
    // An L1 hit is counted, even if it cannot be replayed.
    read_done |= matches!(looked, Lookup::Hit(_));
    let reason = match replay.settle(&prepared, looked) {
        Ok(resp) => return resp,
        Err(r) => r.unwrap_or(MissReason::NotFound),
    };
    if prepared.only_if_cached() {
        st.metrics.request(label, "only_if_cached_miss");
        return not_cached(prepared.key());
    }
    let miss_status = |reason| match prepared.bypass_reason() {
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
    let mut status = miss_status(reason);
    let key = prepared.key().cloned();
    let engine = prepared.cache().engine();

    // Fan-out: identical streaming misses share one upstream stream (crate::fanout).
    if let (Some(key), Some(engine), true) = (&key, &engine, prepared.reads())
        && engine.settings().coalesce
    {
        // Followers get the shape they asked for: a stream with and one without the usage
        // chunk are different flights.
        let flight = format!("{}\nusage={include_usage}", key.as_str());
        'flights: for _ in 0..3 {
            match st.stream_flights.join(&flight) {
                Join::Lead(leader) => {
                    // Across replicas: take the key's lease, or wait while another replica
                    // streams this request, then replay the entry it stored
                    // (docs/deployment.md). A request that deferred its read reads the store
                    // here first (with the lease attempt, while reads mostly miss).
                    let coordinated = if read_done {
                        prepared.coordinate().await
                    } else {
                        read_done = true;
                        // An entry this request cannot use (too old for its `max-age`, or not
                        // replayable): its followers may still hit. They are released to read
                        // for themselves, and this request streams outside the flight.
                        match prepared.lead_lookup().await {
                            Led::Hit(hit) => {
                                if let Some(resp) = replay.answer(&prepared, &hit, None) {
                                    return resp;
                                }
                                status = miss_status(MissReason::Unusable);
                                drop(leader);
                                break 'flights;
                            }
                            Led::Miss(_, r @ (MissReason::Stale | MissReason::Unusable)) => {
                                status = miss_status(r);
                                drop(leader);
                                break 'flights;
                            }
                            Led::Miss(next, r) => {
                                status = miss_status(r);
                                next
                            }
                        }
                    };
                    if let Coordinated::Answer(hit) = coordinated
                        && let Some(resp) =
                            replay.answer(&prepared, &hit, Some(CacheStatus::Coalesced))
                    {
                        return resp;
                    }
                    let sink = Box::new(StreamSink::new(
                        st.clone(),
                        prepared,
                        format,
                        meta.clone(),
                        status.clone(),
                    ));
                    let body = upstream_body_with(request, raw, &deployment);
                    release();
                    let st2 = st.clone();
                    let path = endpoint.path;
                    let open = async move {
                        st2.upstream
                            .post_stream(&deployment, path, body, &fwd)
                            .await
                            .map(|r| r.bytes_stream().boxed())
                    };
                    return match leader.start(open, sink).await {
                        Ok(sub) => forwarded_stream(
                            &st,
                            label,
                            Some(key),
                            &status,
                            Body::from_stream(sub.into_stream()),
                        ),
                        Err(e) => {
                            st.metrics.request(label, "upstream_error");
                            let mut resp = upstream_error(e);
                            account(
                                &st,
                                &meta,
                                Some(&mut resp),
                                &status,
                                Some(key),
                                Answer::default(),
                            );
                            resp
                        }
                    };
                }
                Join::Follow(mut sub) => {
                    if sub.wait_started(engine.settings().coalesce_timeout).await {
                        // Its lookup, left to the leader, missed with the leader's.
                        if !read_done {
                            prepared.count_deferred_miss();
                        }
                        prepared.cache().stats().coalesced.fetch_add(1, Relaxed);
                        let status = CacheStatus::Coalesced;
                        let mut resp = forwarded_stream(
                            &st,
                            label,
                            Some(key),
                            &status,
                            Body::from_stream(sub.into_stream()),
                        );
                        account(
                            &st,
                            &meta,
                            Some(&mut resp),
                            &status,
                            Some(key),
                            Answer::default(),
                        );
                        return resp;
                    }
                    // The leader's upstream refused, the wait timed out, or the leader answered
                    // from the store (a hit, or another replica's entry): look again, then try
                    // again.
                    read_done = true;
                    match replay.settle(&prepared, prepared.lookup().await) {
                        Ok(resp) => return resp,
                        Err(Some(r)) => status = miss_status(r),
                        Err(None) => {}
                    }
                }
            }
        }
    }
    if !read_done {
        // Not reached (a request that defers its read joins a flight above), but never go
        // upstream without having looked.
        match replay.settle(&prepared, prepared.lookup().await) {
            Ok(resp) => return resp,
            Err(Some(r)) => status = miss_status(r),
            Err(None) => {}
        }
    }

    let body = upstream_body_with(request, raw, &deployment);
    release();
    let resp = match st
        .upstream
        .post_stream(&deployment, endpoint.path, body, &fwd)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            st.metrics.request(label, "upstream_error");
            let mut resp = upstream_error(e);
            account(
                &st,
                &meta,
                Some(&mut resp),
                &status,
                key.as_ref(),
                Answer::default(),
            );
            return resp;
        }
    };
    let sink = StreamSink::new(st.clone(), prepared, format, meta, status.clone());
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
    forwarded_stream(&st, label, key.as_ref(), &status, Body::from_stream(stream))
}

/// The SSE response of a stream forwarded from the upstream (counted, with cache headers).
fn forwarded_stream(
    st: &AppState,
    label: &'static str,
    key: Option<&llm_cache::CacheKey>,
    status: &CacheStatus,
    body: Body,
) -> Response {
    st.metrics.request(label, status_label(status));
    let mut out = sse_response(body);
    cache_headers(&mut out, key, status, None);
    out
}

/// Follows a forwarded stream: assembles it, stores it when it ends cleanly (if the request may
/// write), and accounts for it when it ends (its usage and cost are known only then).
struct StreamSink {
    st: Arc<AppState>,
    parser: SseParser,
    assembler: Option<StreamAssembler>,
    prepared: Prepared,
    meta: Meta,
    status: CacheStatus,
    started: Instant,
    bytes: u64,
    finished: bool,
}

impl Drop for StreamSink {
    /// A stream that did not end (every client gone, the upstream cut) is still accounted for.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            account(
                &self.st,
                &self.meta,
                None,
                &self.status,
                self.prepared.key(),
                Answer {
                    bytes: self.bytes,
                    upstream_s: Some(self.started.elapsed().as_secs_f64()),
                    ..Answer::default()
                },
            );
        }
    }
}

impl StreamSink {
    fn new(
        st: Arc<AppState>,
        prepared: Prepared,
        format: StreamFormat,
        meta: Meta,
        status: CacheStatus,
    ) -> Self {
        StreamSink {
            st,
            parser: SseParser::default(),
            assembler: Some(StreamAssembler::new(format)),
            prepared,
            meta,
            status,
            started: Instant::now(),
            bytes: 0,
            finished: false,
        }
    }
}

impl ChunkSink for StreamSink {
    fn chunk(&mut self, chunk: &Bytes) {
        self.bytes += chunk.len() as u64;
        if let Some(a) = self.assembler.as_mut() {
            for event in self.parser.feed(chunk) {
                a.push(&event);
            }
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        let full = self.assembler.take().and_then(StreamAssembler::finish);
        let upstream = self.started.elapsed();
        if let Some(full) = &full {
            self.prepared.set_upstream_time(upstream);
            let bytes = Bytes::from(serde_json::to_vec(full).expect("JSON values serialize"));
            if self.prepared.store_parsed(bytes, full) {
                self.st.metrics.streams_stored.fetch_add(1, Relaxed);
            }
        }
        account(
            &self.st,
            &self.meta,
            None,
            &self.status,
            self.prepared.key(),
            Answer {
                body: full.as_ref(),
                entry: None,
                bytes: self.bytes,
                upstream_s: Some(upstream.as_secs_f64()),
                partial_saved: None,
            },
        );
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
