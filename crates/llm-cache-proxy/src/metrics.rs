//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! The exposition is written by [`prometheus_client`] (escaping of label values and HELP text
//! included). Nothing is mirrored into its metric types: two [`Collector`]s encode the current
//! values on every scrape, the cache's straight from the atomics of [`llm_cache::core::Stats`],
//! the proxy's from a copy of [`ProxyMetrics`] taken when the scrape starts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use llm_cache::core::BreakerState;
use llm_cache::core::semantic::SemanticStats;
use llm_cache::core::stats::{Histogram, LATENCY_BUCKETS};
use llm_cache::{Cache, CacheStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Upstream latency buckets (seconds): LLM calls take milliseconds to minutes.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Proxy-level counters (the cache's own counters live in [`llm_cache::core::Stats`]).
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    upstream_status: Mutex<BTreeMap<u16, u64>>,
    upstream_latency: Mutex<([u64; 12], u64, f64)>,
    /// Transport failures reaching upstream.
    pub upstream_errors: AtomicU64,
    /// Streamed responses served from the cache.
    pub stream_replays: AtomicU64,
    /// Streams that completed and were handed to the cache.
    pub streams_stored: AtomicU64,
    /// Client connections accepted.
    pub connections_opened: AtomicU64,
    /// Client connections closed (by either side, idle, evicted or cut).
    pub connections_closed: AtomicU64,
    /// Idle connections closed to make room at `max_connections`.
    pub connections_evicted: AtomicU64,
    /// Times a new connection found `max_connections` reached.
    pub connection_cap_reached: AtomicU64,
    /// Requests whose body did not arrive within `request_body_timeout`.
    pub request_body_timeouts: AtomicU64,
}

/// A short label for a cache status.
pub fn status_label(s: &CacheStatus) -> &'static str {
    match s {
        CacheStatus::Hit { .. } => "hit",
        CacheStatus::Miss { .. } => "miss",
        CacheStatus::Coalesced => "coalesced",
        CacheStatus::Partial { .. } => "partial",
        CacheStatus::Bypass { .. } => "bypass",
    }
}

impl ProxyMetrics {
    /// Counts a request by endpoint and cache outcome.
    pub fn request(&self, endpoint: &'static str, outcome: &'static str) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, outcome))
            .or_default() += 1;
    }

    /// Records an upstream answer.
    pub fn observe_upstream(&self, status: u16, d: Duration) {
        *self
            .upstream_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
        let mut h = self
            .upstream_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let secs = d.as_secs_f64();
        if let Some(i) = UPSTREAM_BUCKETS.iter().position(|b| secs <= *b) {
            h.0[i] += 1;
        }
        h.1 += 1;
        h.2 += secs;
    }

    /// Renders every metric, the cache's included, in the Prometheus text format 0.0.4
    /// (`text/plain; version=0.0.4; charset=utf-8`).
    pub fn render(&self, cache: &Cache) -> String {
        self.render_with(cache, None)
    }

    /// [`ProxyMetrics::render`] plus what the cache saved ([`crate::accounting::Accounting`]):
    /// cost, tokens and upstream time by model and tenant, requests and bytes by call type.
    pub fn render_with(
        &self,
        cache: &Cache,
        accounting: Option<&crate::accounting::Accounting>,
    ) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CacheCollector {
            cache: cache.clone(),
        }));
        registry.register_collector(Box::new(ProxyCollector(self.snapshot())));
        if let Some(a) = accounting {
            registry.register_collector(Box::new(SavingsCollector {
                totals: a.totals(),
                traffic: a.traffic(),
            }));
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail and the collectors only pass on the writer's errors.
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding /metrics failed");
        }
        out
    }

    /// The proxy's counters, copied at scrape time.
    fn snapshot(&self) -> ProxySnapshot {
        ProxySnapshot {
            requests: self
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            upstream_status: self
                .upstream_status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            upstream_latency: *self
                .upstream_latency
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            upstream_errors: self.upstream_errors.load(Relaxed),
            stream_replays: self.stream_replays.load(Relaxed),
            streams_stored: self.streams_stored.load(Relaxed),
            connections_opened: self.connections_opened.load(Relaxed),
            connections_closed: self.connections_closed.load(Relaxed),
            connections_evicted: self.connections_evicted.load(Relaxed),
            connection_cap_reached: self.connection_cap_reached.load(Relaxed),
            request_body_timeouts: self.request_body_timeouts.load(Relaxed),
        }
    }
}

/// Encodes the cache's counters ([`llm_cache::core::Stats`], breaker, semantic layer), read
/// when encoded.
#[derive(Debug)]
struct CacheCollector {
    cache: Cache,
}

impl Collector for CacheCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let enc = &mut enc;
        let s = self.cache.stats();
        counter_family(
            enc,
            "llm_cache_hits_total",
            "Requests served from the cache, by tier.",
            [
                ("l1", &s.hits_l1),
                ("backend", &s.hits_backend),
                ("semantic", &s.hits_semantic),
            ]
            .map(|(tier, v)| ([("tier", tier)], v.load(Relaxed))),
        )?;
        counter(
            enc,
            "llm_cache_misses_total",
            "Lookups that found nothing usable.",
            s.misses.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_bypasses_total",
            "Requests the cache did not apply to.",
            s.bypasses.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_coalesced_total",
            "Requests answered by a concurrent identical request's upstream call (single-flight waits).",
            s.coalesced.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_coalesced_remote_total",
            "Of llm_cache_coalesced_total, requests answered by another replica's upstream call (a lease held elsewhere).",
            s.coalesced_remote.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_stores_total",
            "Entries written (the backend accepted the write).",
            s.stores.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_store_failures_total",
            "Writes the backend did not accept: breaker open, too large, error or timeout.",
            s.store_failures.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_corrupt_entries_total",
            "Entries found unusable (corrupt, foreign), served as misses.",
            s.corrupt.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_breaker_rejections_total",
            "Backend calls skipped because the circuit breaker was open.",
            s.breaker_rejections.load(Relaxed),
        )?;
        counter(
            enc,
            "llm_cache_bytes_served_total",
            "Response bytes served from the cache.",
            s.bytes_served.load(Relaxed),
        )?;
        let prompt = s.prompt_tokens_saved.load(Relaxed);
        let completion = s.completion_tokens_saved.load(Relaxed);
        counter_family(
            enc,
            "llm_cache_tokens_saved_total",
            "Tokens of responses served from the cache instead of upstream.",
            [
                ([("type", "prompt")], prompt),
                ([("type", "completion")], completion),
            ],
        )?;
        counter_family(
            enc,
            "llm_cache_errors_total",
            "Cache backend errors (each one was served as a miss or a skipped write).",
            s.errors().iter().map(|((backend, op, kind), v)| {
                (
                    [
                        ("backend", backend.as_str()),
                        ("operation", *op),
                        ("kind", *kind),
                    ],
                    *v,
                )
            }),
        )?;
        lookup_histogram(
            enc,
            "llm_cache_lookup_duration_seconds",
            "Cache lookup latency (all tiers, hits and misses).",
            &s.lookup_latency,
        )?;
        let engine = self.cache.engine();
        if let Some(engine) = &engine {
            let state: i64 = match engine.breaker_state() {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let mut family = enc.encode_descriptor(
                "llm_cache_breaker_state",
                "Circuit breaker of the backend: 0 closed, 1 half-open, 2 open.",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("backend", engine.backend().name())];
            ConstGauge::new(state).encode(family.encode_family(&labels)?)?;
            if engine.coordinator().is_some() && engine.l1().is_some() {
                let mut family = enc.encode_descriptor(
                    "llm_cache_l1_live",
                    "1 while the L1 tier is in use; 0 while invalidations from other replicas cannot be heard (L1 emptied and bypassed).",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(i64::from(engine.l1_live()))
                    .encode(family.encode_family(&labels)?)?;
                counter(
                    enc,
                    "llm_cache_invalidations_received_total",
                    "Invalidations (deletes, clears, refreshes) heard from the replicas and applied to L1.",
                    engine.invalidations_received(),
                )?;
            }
        }
        if let Some(sem) = engine.and_then(|e| e.semantic().and_then(|s| s.stats())) {
            encode_semantic(enc, &sem)?;
        }
        // LiteLLM-compatible names, for dashboards built on LiteLLM's metrics. They do not end
        // in `_total`, which the text encoder appends to every counter: `untyped` keeps the
        // names (and every query on them) as they have always been exposed.
        untyped(
            enc,
            "litellm_cache_hits_metric",
            "LiteLLM-compatible: cache hits.",
            s.hits(),
        )?;
        untyped(
            enc,
            "litellm_cache_misses_metric",
            "LiteLLM-compatible: cache misses.",
            s.misses.load(Relaxed),
        )?;
        untyped(
            enc,
            "litellm_cached_tokens_metric",
            "LiteLLM-compatible: tokens served from the cache.",
            prompt + completion,
        )
    }
}

/// What the cache saved, by model and tenant, and the traffic by call type (copied at scrape
/// time).
#[derive(Debug)]
struct SavingsCollector {
    totals: BTreeMap<(String, String), crate::accounting::Totals>,
    traffic: BTreeMap<(&'static str, &'static str), crate::accounting::Traffic>,
}

fn float_counter_family<'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = ([(&'a str, &'a str); 2], f64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(counter_base(name), help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SavingsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let enc = &mut enc;
        fn labels((model, tenant): &(String, String)) -> [(&str, &str); 2] {
            [("model", model.as_str()), ("tenant", tenant.as_str())]
        }
        float_counter_family(
            enc,
            "llm_cache_cost_usd_total",
            "Upstream cost of the requests that went upstream, USD (priced deployments).",
            self.totals.iter().map(|(k, t)| (labels(k), t.cost)),
        )?;
        float_counter_family(
            enc,
            "llm_cache_saved_cost_usd_total",
            "Cost the cache avoided, USD: what its hits would have cost upstream (priced deployments).",
            self.totals.iter().map(|(k, t)| (labels(k), t.saved_cost)),
        )?;
        float_counter_family(
            enc,
            "llm_cache_saved_upstream_seconds_total",
            "Upstream time the cache avoided: how long the calls that produced its hits took.",
            self.totals
                .iter()
                .map(|(k, t)| (labels(k), t.saved_upstream_seconds)),
        )?;
        counter_family(
            enc,
            "llm_cache_saved_tokens_total",
            "Tokens the cache avoided, by model, tenant and type.",
            self.totals.iter().flat_map(|((model, tenant), t)| {
                [
                    ("prompt", t.saved_prompt_tokens),
                    ("completion", t.saved_completion_tokens),
                ]
                .map(|(kind, v)| {
                    (
                        [
                            ("model", model.as_str()),
                            ("tenant", tenant.as_str()),
                            ("type", kind),
                        ],
                        v,
                    )
                })
            }),
        )?;
        counter_family(
            enc,
            "llm_cache_call_requests_total",
            "Requests by call type and cache outcome.",
            self.traffic
                .iter()
                .map(|((call, cache), t)| ([("call_type", *call), ("cache", *cache)], t.requests)),
        )?;
        counter_family(
            enc,
            "llm_cache_call_bytes_total",
            "Response bytes sent, by call type and cache outcome.",
            self.traffic
                .iter()
                .map(|((call, cache), t)| ([("call_type", *call), ("cache", *cache)], t.bytes)),
        )
    }
}

/// The proxy's counters at scrape time.
#[derive(Debug)]
struct ProxySnapshot {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    upstream_status: BTreeMap<u16, u64>,
    upstream_latency: ([u64; 12], u64, f64),
    upstream_errors: u64,
    stream_replays: u64,
    streams_stored: u64,
    connections_opened: u64,
    connections_closed: u64,
    connections_evicted: u64,
    connection_cap_reached: u64,
    request_body_timeouts: u64,
}

/// Encodes [`ProxyMetrics`] (a [`ProxySnapshot`] of them).
#[derive(Debug)]
struct ProxyCollector(ProxySnapshot);

impl Collector for ProxyCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let enc = &mut enc;
        let p = &self.0;
        counter_family(
            enc,
            "llm_cache_requests_total",
            "Proxy requests by endpoint and cache outcome.",
            p.requests.iter().map(|((endpoint, outcome), v)| {
                ([("endpoint", *endpoint), ("cache", *outcome)], *v)
            }),
        )?;
        counter_family(
            enc,
            "llm_cache_upstream_responses_total",
            "Upstream answers by status code.",
            p.upstream_status
                .iter()
                .map(|(status, v)| ([("status", status.to_string())], *v)),
        )?;
        counter(
            enc,
            "llm_cache_upstream_errors_total",
            "Upstream transport failures (unreachable, timeout).",
            p.upstream_errors,
        )?;
        counter(
            enc,
            "llm_cache_stream_replays_total",
            "Streaming responses replayed from the cache.",
            p.stream_replays,
        )?;
        counter(
            enc,
            "llm_cache_streams_stored_total",
            "Upstream streams that completed cleanly and were stored.",
            p.streams_stored,
        )?;
        let open = enc.encode_descriptor(
            "llm_cache_connections_open",
            "Client connections open now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(p.connections_opened.saturating_sub(p.connections_closed) as i64)
            .encode(open)?;
        counter(
            enc,
            "llm_cache_connections_total",
            "Client connections accepted.",
            p.connections_opened,
        )?;
        counter(
            enc,
            "llm_cache_connections_evicted_total",
            "Idle client connections closed to make room at max_connections.",
            p.connections_evicted,
        )?;
        counter(
            enc,
            "llm_cache_connection_cap_reached_total",
            "Times a new client connection found max_connections reached.",
            p.connection_cap_reached,
        )?;
        counter(
            enc,
            "llm_cache_request_body_timeouts_total",
            "Requests refused (408) because their body did not arrive within request_body_timeout.",
            p.request_body_timeouts,
        )?;
        let (per_bucket, count, sum) = p.upstream_latency;
        histogram(
            enc,
            "llm_cache_upstream_duration_seconds",
            "Upstream latency (time to response headers).",
            UPSTREAM_BUCKETS.iter().copied().zip(per_bucket),
            count,
            sum,
        )
    }
}

/// The name to register a counter under: the encoder appends `_total` itself, so
/// `exposed` (the name Prometheus scrapes) loses it here.
fn counter_base(exposed: &str) -> &str {
    let base = exposed.strip_suffix("_total");
    debug_assert!(base.is_some(), "counter {exposed} must end in _total");
    base.unwrap_or(exposed)
}

/// A counter without labels, exposed as `name` (which ends in `_total`).
fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let metric = enc.encode_descriptor(counter_base(name), help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(metric)
}

/// A counter with one sample per label set, exposed as `name` (which ends in `_total`).
/// HELP and TYPE are written even without samples.
fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(counter_base(name), help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A monotonic value whose name does not end in `_total`, exposed as `untyped` under that
/// exact name.
fn untyped(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: impl EncodeGaugeValue,
) -> fmt::Result {
    let metric = enc.encode_descriptor(name, help, None, MetricType::Unknown)?;
    ConstGauge::new(v).encode(metric)
}

/// A histogram from per-bucket (not cumulative) counts; the `+Inf` bucket is `count`.
fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    per_bucket: impl IntoIterator<Item = (f64, u64)>,
    count: u64,
    sum: f64,
) -> fmt::Result {
    let buckets: Vec<(f64, u64)> = per_bucket.into_iter().collect();
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// A [`Histogram`] of the cache ([`LATENCY_BUCKETS`]).
fn lookup_histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &Histogram,
) -> fmt::Result {
    let (cumulative, count, sum) = h.snapshot();
    // The snapshot is cumulative, the encoder accumulates per-bucket counts itself.
    let mut below = 0;
    let per_bucket = LATENCY_BUCKETS.iter().zip(cumulative).map(|(b, n)| {
        let own = n.saturating_sub(below);
        below = n;
        (*b, own)
    });
    histogram(enc, name, help, per_bucket, count, sum)
}

/// The semantic layer's counters (of the active configuration), shadow mode included.
fn encode_semantic(enc: &mut DescriptorEncoder<'_>, s: &SemanticStats) -> fmt::Result {
    for (name, help, v) in [
        (
            "llm_cache_semantic_lookups_total",
            "Semantic lookups (after an exact miss).",
            s.lookups,
        ),
        (
            "llm_cache_semantic_no_text_total",
            "Semantic lookups skipped: no text to compare.",
            s.no_text,
        ),
        (
            "llm_cache_semantic_hits_total",
            "Semantic hits served.",
            s.hits,
        ),
        (
            "llm_cache_semantic_shadow_hits_total",
            "Would-be semantic hits not served (semantic_shadow_mode).",
            s.shadow_hits,
        ),
        (
            "llm_cache_semantic_repeat_hits_total",
            "Semantic hits (or shadow hits) below the threshold: repeats the verifier recognised.",
            s.repeat_hits,
        ),
        (
            "llm_cache_semantic_below_threshold_total",
            "Semantic lookups with no candidate above the similarity threshold.",
            s.below_threshold,
        ),
        (
            "llm_cache_semantic_stores_total",
            "Entries stored in the semantic index.",
            s.stores,
        ),
        (
            "llm_cache_semantic_embedding_errors_total",
            "Embedding calls that failed or timed out (served as misses).",
            s.embed_errors,
        ),
    ] {
        counter(enc, name, help, v)?;
    }
    // Not `_total`: see the LiteLLM names.
    untyped(
        enc,
        "llm_cache_semantic_shadow_similarity_sum",
        "Sum of the similarities of shadow hits (mean = sum / llm_cache_semantic_shadow_hits_total).",
        s.shadow_similarity_sum,
    )?;
    counter_family(
        enc,
        "llm_cache_semantic_guard_rejections_total",
        "Candidates above the threshold rejected by the guard, by reason.",
        s.guard_rejections
            .iter()
            .map(|(reason, v)| ([("reason", *reason)], *v)),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use bytes::Bytes;
    use llm_cache::core::semantic::{SemanticHit, SemanticLayer, SemanticRequest};
    use llm_cache::{Health, MemoryBackend};

    use super::*;

    /// A semantic layer that only reports counters.
    #[derive(Debug)]
    struct FakeSemantic(SemanticStats);

    #[llm_cache::async_trait]
    impl SemanticLayer for FakeSemantic {
        fn name(&self) -> &str {
            "fake-semantic"
        }
        async fn lookup(&self, _: &SemanticRequest<'_>) -> llm_cache::Result<Option<SemanticHit>> {
            Ok(None)
        }
        async fn store(
            &self,
            _: &SemanticRequest<'_>,
            _: Bytes,
            _: Option<Duration>,
        ) -> llm_cache::Result<()> {
            Ok(())
        }
        async fn clear(&self, _: Option<&str>) -> llm_cache::Result<u64> {
            Ok(0)
        }
        async fn ping(&self) -> llm_cache::Result<Health> {
            unreachable!("metrics never ping")
        }
        fn stats(&self) -> Option<SemanticStats> {
            Some(self.0.clone())
        }
    }

    fn semantic_stats() -> SemanticStats {
        let mut s = SemanticStats::default();
        s.lookups = 7;
        s.no_text = 1;
        s.hits = 2;
        s.shadow_hits = 3;
        s.repeat_hits = 2;
        s.shadow_similarity_sum = 2.75;
        s.guard_rejections = vec![("numbers", 4), ("negation", 1)];
        s.below_threshold = 5;
        s.stores = 6;
        s.embed_errors = 8;
        s
    }

    const WEIRD: &str = "we\"ird\\name\n";

    /// A cache with a semantic layer and activity everywhere, and proxy counters to match.
    fn busy() -> (ProxyMetrics, Cache) {
        let cache = Cache::builder(MemoryBackend::default())
            .semantic(Arc::new(FakeSemantic(semantic_stats())))
            .build();
        let s = cache.stats();
        s.hits_l1.fetch_add(2, Relaxed);
        s.hits_backend.fetch_add(3, Relaxed);
        s.hits_semantic.fetch_add(1, Relaxed);
        s.misses.fetch_add(4, Relaxed);
        s.bypasses.fetch_add(1, Relaxed);
        s.stores.fetch_add(4, Relaxed);
        s.bytes_served.fetch_add(1234, Relaxed);
        s.prompt_tokens_saved.fetch_add(100, Relaxed);
        s.completion_tokens_saved.fetch_add(20, Relaxed);
        s.lookup_latency.observe(Duration::from_micros(5));
        s.lookup_latency.observe(Duration::from_micros(300));
        s.lookup_latency.observe(Duration::from_secs(2));
        s.record_error("redis", "get", "timeout");
        s.record_error("redis", "get", "timeout");
        s.record_error(WEIRD, "set", "io");
        let m = ProxyMetrics::default();
        m.request("chat", "hit");
        m.request("chat", "hit");
        m.request("chat", "miss");
        m.request("embeddings", "bypass");
        m.observe_upstream(200, Duration::from_millis(30));
        m.observe_upstream(200, Duration::from_millis(700));
        m.observe_upstream(502, Duration::from_secs(120));
        m.upstream_errors.fetch_add(1, Relaxed);
        m.stream_replays.fetch_add(2, Relaxed);
        m.streams_stored.fetch_add(3, Relaxed);
        (m, cache)
    }

    /// A sample line: name, labels (unescaped), value.
    type Sample = (String, Vec<(String, String)>, f64);

    fn name_char(c: char, first: bool) -> bool {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
    }

    /// Parses `name{label="value",...} value` (text format 0.0.4, no timestamp).
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let mut chars = line.chars().peekable();
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if !name_char(c, name.is_empty()) {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err("no metric name".into());
        }
        let mut labels = Vec::new();
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ':' || !name_char(c, key.is_empty()) {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                if key.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
                    return Err(format!("bad label near {key:?}"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(format!("bad escape {other:?}")),
                        },
                        Some(c) => value.push(c),
                        None => return Err("unterminated label value".into()),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => return Err(format!("expected , or }} got {other:?}")),
                }
            }
        }
        if chars.next() != Some(' ') {
            return Err("no space before the value".into());
        }
        let value: String = chars.collect();
        let value = value
            .parse::<f64>()
            .map_err(|e| format!("bad value {value:?}: {e}"))?;
        Ok((name, labels, value))
    }

    /// Checks every line: comments (HELP, TYPE), empty lines, samples of a declared family.
    fn check_exposition(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "{text}");
        assert!(!text.contains("_total_total"), "{text}");
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(parse_sample(&format!("{name} 0")).is_ok(), "{line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect(line);
                assert!(
                    ["counter", "gauge", "histogram", "untyped"].contains(&ty),
                    "{line}"
                );
                assert!(
                    types.insert(name.to_owned(), ty.to_owned()).is_none(),
                    "family declared twice: {line}"
                );
            } else if line.starts_with('#') {
                // Any other comment is allowed by the format.
            } else {
                let sample = parse_sample(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
                let name = &sample.0;
                let family = if types.contains_key(name) {
                    name.as_str()
                } else {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                        .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"))
                };
                if types[family] == "counter" {
                    assert!(family.ends_with("_total"), "{line}");
                }
                samples.push(sample);
            }
        }
        samples
    }

    /// The value of the sample `name` with exactly `labels`.
    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && l.iter()
                        .zip(labels)
                        .all(|((k, v), (k2, v2))| k == k2 && v == v2)
            })
            .unwrap_or_else(|| panic!("no {name}{labels:?}"))
            .2
    }

    #[test]
    fn the_exposition_parses() {
        let (m, cache) = busy();
        let text = m.render(&cache);
        let samples = check_exposition(&text);
        assert!(samples.len() > 60, "{text}");
        // A disabled cache (no engine, no breaker, no semantic layer) and no activity.
        check_exposition(&ProxyMetrics::default().render(&Cache::disabled()));
    }

    #[test]
    fn label_values_are_escaped() {
        let cache = Cache::in_memory();
        cache.stats().record_error(WEIRD, "get", "timeout");
        let text = ProxyMetrics::default().render(&cache);
        assert!(
            text.contains(
                r#"llm_cache_errors_total{backend="we\"ird\\name\n",operation="get",kind="timeout"} 1"#
            ),
            "{text}"
        );
        let samples = check_exposition(&text);
        let backend = &samples
            .iter()
            .find(|(n, _, _)| n == "llm_cache_errors_total")
            .expect("an error sample")
            .1[0];
        assert_eq!(backend, &("backend".to_owned(), WEIRD.to_owned()));
    }

    #[test]
    fn metrics_carry_the_current_values() {
        let (m, cache) = busy();
        let text = m.render(&cache);
        let s = check_exposition(&text);
        let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
        // The cache's counters.
        assert_eq!(v("llm_cache_hits_total", &[("tier", "l1")]), 2.0);
        assert_eq!(v("llm_cache_hits_total", &[("tier", "backend")]), 3.0);
        assert_eq!(v("llm_cache_hits_total", &[("tier", "semantic")]), 1.0);
        assert_eq!(v("llm_cache_misses_total", &[]), 4.0);
        assert_eq!(v("llm_cache_bypasses_total", &[]), 1.0);
        assert_eq!(v("llm_cache_coalesced_total", &[]), 0.0);
        assert_eq!(v("llm_cache_stores_total", &[]), 4.0);
        assert_eq!(v("llm_cache_bytes_served_total", &[]), 1234.0);
        assert_eq!(
            v("llm_cache_tokens_saved_total", &[("type", "prompt")]),
            100.0
        );
        assert_eq!(
            v("llm_cache_tokens_saved_total", &[("type", "completion")]),
            20.0
        );
        assert_eq!(
            v(
                "llm_cache_errors_total",
                &[
                    ("backend", "redis"),
                    ("operation", "get"),
                    ("kind", "timeout")
                ]
            ),
            2.0
        );
        assert_eq!(
            v(
                "llm_cache_errors_total",
                &[("backend", WEIRD), ("operation", "set"), ("kind", "io")]
            ),
            1.0
        );
        // Lookup latency: 5µs, 300µs, 2s (above every bucket).
        let lookup = "llm_cache_lookup_duration_seconds_bucket";
        assert_eq!(v(lookup, &[("le", "1e-05")]), 1.0);
        assert_eq!(v(lookup, &[("le", "0.00025")]), 1.0);
        assert_eq!(v(lookup, &[("le", "0.0005")]), 2.0);
        assert_eq!(v(lookup, &[("le", "0.5")]), 2.0);
        assert_eq!(v(lookup, &[("le", "+Inf")]), 3.0);
        assert_eq!(v("llm_cache_lookup_duration_seconds_count", &[]), 3.0);
        let sum = v("llm_cache_lookup_duration_seconds_sum", &[]);
        assert!((sum - 2.000_305).abs() < 1e-9, "{sum}");
        assert_eq!(v("llm_cache_breaker_state", &[("backend", "memory")]), 0.0);
        // The semantic layer's.
        assert_eq!(v("llm_cache_semantic_lookups_total", &[]), 7.0);
        assert_eq!(v("llm_cache_semantic_no_text_total", &[]), 1.0);
        assert_eq!(v("llm_cache_semantic_hits_total", &[]), 2.0);
        assert_eq!(v("llm_cache_semantic_shadow_hits_total", &[]), 3.0);
        assert_eq!(v("llm_cache_semantic_repeat_hits_total", &[]), 2.0);
        assert_eq!(v("llm_cache_semantic_below_threshold_total", &[]), 5.0);
        assert_eq!(v("llm_cache_semantic_stores_total", &[]), 6.0);
        assert_eq!(v("llm_cache_semantic_embedding_errors_total", &[]), 8.0);
        assert_eq!(v("llm_cache_semantic_shadow_similarity_sum", &[]), 2.75);
        assert_eq!(
            v(
                "llm_cache_semantic_guard_rejections_total",
                &[("reason", "numbers")]
            ),
            4.0
        );
        // LiteLLM's names.
        assert_eq!(v("litellm_cache_hits_metric", &[]), 6.0);
        assert_eq!(v("litellm_cache_misses_metric", &[]), 4.0);
        assert_eq!(v("litellm_cached_tokens_metric", &[]), 120.0);
        // The proxy's.
        assert_eq!(
            v(
                "llm_cache_requests_total",
                &[("endpoint", "chat"), ("cache", "hit")]
            ),
            2.0
        );
        assert_eq!(
            v(
                "llm_cache_requests_total",
                &[("endpoint", "chat"), ("cache", "miss")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "llm_cache_requests_total",
                &[("endpoint", "embeddings"), ("cache", "bypass")]
            ),
            1.0
        );
        assert_eq!(
            v("llm_cache_upstream_responses_total", &[("status", "200")]),
            2.0
        );
        assert_eq!(
            v("llm_cache_upstream_responses_total", &[("status", "502")]),
            1.0
        );
        assert_eq!(v("llm_cache_upstream_errors_total", &[]), 1.0);
        assert_eq!(v("llm_cache_stream_replays_total", &[]), 2.0);
        assert_eq!(v("llm_cache_streams_stored_total", &[]), 3.0);
        // Upstream latency: 30ms, 700ms, 120s (above every bucket).
        let upstream = "llm_cache_upstream_duration_seconds_bucket";
        assert_eq!(v(upstream, &[("le", "0.025")]), 0.0);
        assert_eq!(v(upstream, &[("le", "0.05")]), 1.0);
        assert_eq!(v(upstream, &[("le", "1")]), 2.0);
        assert_eq!(v(upstream, &[("le", "60")]), 2.0);
        assert_eq!(v(upstream, &[("le", "+Inf")]), 3.0);
        assert_eq!(v("llm_cache_upstream_duration_seconds_count", &[]), 3.0);
        let sum = v("llm_cache_upstream_duration_seconds_sum", &[]);
        assert!((sum - 120.73).abs() < 1e-9, "{sum}");

        // Values are read at scrape time.
        cache.stats().misses.fetch_add(1, Relaxed);
        m.request("chat", "hit");
        let s = check_exposition(&m.render(&cache));
        assert_eq!(value(&s, "llm_cache_misses_total", &[]), 5.0);
        assert_eq!(value(&s, "litellm_cache_misses_metric", &[]), 5.0);
        assert_eq!(
            value(
                &s,
                "llm_cache_requests_total",
                &[("endpoint", "chat"), ("cache", "hit")]
            ),
            3.0
        );
    }

    /// Names, types and HELP texts, in order: what dashboards and alerts depend on.
    #[test]
    fn families_keep_their_names_types_and_help() {
        let (m, cache) = busy();
        let text = m.render(&cache);
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        assert_eq!(
            types,
            [
                "# TYPE llm_cache_hits_total counter",
                "# TYPE llm_cache_misses_total counter",
                "# TYPE llm_cache_bypasses_total counter",
                "# TYPE llm_cache_coalesced_total counter",
                "# TYPE llm_cache_coalesced_remote_total counter",
                "# TYPE llm_cache_stores_total counter",
                "# TYPE llm_cache_store_failures_total counter",
                "# TYPE llm_cache_corrupt_entries_total counter",
                "# TYPE llm_cache_breaker_rejections_total counter",
                "# TYPE llm_cache_bytes_served_total counter",
                "# TYPE llm_cache_tokens_saved_total counter",
                "# TYPE llm_cache_errors_total counter",
                "# TYPE llm_cache_lookup_duration_seconds histogram",
                "# TYPE llm_cache_breaker_state gauge",
                "# TYPE llm_cache_semantic_lookups_total counter",
                "# TYPE llm_cache_semantic_no_text_total counter",
                "# TYPE llm_cache_semantic_hits_total counter",
                "# TYPE llm_cache_semantic_shadow_hits_total counter",
                "# TYPE llm_cache_semantic_repeat_hits_total counter",
                "# TYPE llm_cache_semantic_below_threshold_total counter",
                "# TYPE llm_cache_semantic_stores_total counter",
                "# TYPE llm_cache_semantic_embedding_errors_total counter",
                "# TYPE llm_cache_semantic_shadow_similarity_sum untyped",
                "# TYPE llm_cache_semantic_guard_rejections_total counter",
                "# TYPE litellm_cache_hits_metric untyped",
                "# TYPE litellm_cache_misses_metric untyped",
                "# TYPE litellm_cached_tokens_metric untyped",
                "# TYPE llm_cache_requests_total counter",
                "# TYPE llm_cache_upstream_responses_total counter",
                "# TYPE llm_cache_upstream_errors_total counter",
                "# TYPE llm_cache_stream_replays_total counter",
                "# TYPE llm_cache_streams_stored_total counter",
                "# TYPE llm_cache_connections_open gauge",
                "# TYPE llm_cache_connections_total counter",
                "# TYPE llm_cache_connections_evicted_total counter",
                "# TYPE llm_cache_connection_cap_reached_total counter",
                "# TYPE llm_cache_request_body_timeouts_total counter",
                "# TYPE llm_cache_upstream_duration_seconds histogram",
            ]
        );
        for line in [
            "# HELP llm_cache_hits_total Requests served from the cache, by tier.",
            "# HELP llm_cache_errors_total Cache backend errors (each one was served as a miss or a skipped write).",
            "# HELP llm_cache_breaker_state Circuit breaker of the backend: 0 closed, 1 half-open, 2 open.",
            "# HELP llm_cache_semantic_shadow_similarity_sum Sum of the similarities of shadow hits (mean = sum / llm_cache_semantic_shadow_hits_total).",
            "# HELP litellm_cached_tokens_metric LiteLLM-compatible: tokens served from the cache.",
            "# HELP llm_cache_upstream_duration_seconds Upstream latency (time to response headers).",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
        let help: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_once(' ').map(|(name, _)| name))
            .collect();
        let typed: BTreeSet<&str> = types
            .iter()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' ').map(|(name, _)| name))
            .collect();
        assert_eq!(help, typed);
        // Families without samples still declare themselves.
        let quiet = ProxyMetrics::default().render(&Cache::disabled());
        assert!(
            quiet.contains("# TYPE llm_cache_errors_total counter\n"),
            "{quiet}"
        );
        assert!(!quiet.contains("llm_cache_breaker_state"), "{quiet}");
    }
}
