//! Prometheus metrics (`GET /metrics`, text format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use llm_cache::core::BreakerState;
use llm_cache::core::stats::{Histogram, LATENCY_BUCKETS};
use llm_cache::{Cache, CacheStatus};

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

    /// Renders every metric, the cache's included.
    pub fn render(&self, cache: &Cache) -> String {
        let mut out = String::with_capacity(4096);
        let s = cache.stats();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP llm_cache_hits_total Requests served from the cache, by tier.\n# TYPE llm_cache_hits_total counter"
        );
        for (tier, v) in [
            ("l1", &s.hits_l1),
            ("backend", &s.hits_backend),
            ("semantic", &s.hits_semantic),
        ] {
            let _ = writeln!(
                out,
                "llm_cache_hits_total{{tier=\"{tier}\"}} {}",
                v.load(Relaxed)
            );
        }
        counter(
            &mut out,
            "llm_cache_misses_total",
            "Lookups that found nothing usable.",
            s.misses.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_bypasses_total",
            "Requests the cache did not apply to.",
            s.bypasses.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_coalesced_total",
            "Requests answered by a concurrent identical request's upstream call (single-flight waits).",
            s.coalesced.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_stores_total",
            "Entries written (the backend accepted the write).",
            s.stores.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_store_failures_total",
            "Writes the backend did not accept: breaker open, too large, error or timeout.",
            s.store_failures.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_corrupt_entries_total",
            "Entries found unusable (corrupt, foreign), served as misses.",
            s.corrupt.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_breaker_rejections_total",
            "Backend calls skipped because the circuit breaker was open.",
            s.breaker_rejections.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_bytes_served_total",
            "Response bytes served from the cache.",
            s.bytes_served.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP llm_cache_tokens_saved_total Tokens of responses served from the cache instead of upstream.\n# TYPE llm_cache_tokens_saved_total counter"
        );
        let prompt = s.prompt_tokens_saved.load(Relaxed);
        let completion = s.completion_tokens_saved.load(Relaxed);
        let _ = writeln!(
            out,
            "llm_cache_tokens_saved_total{{type=\"prompt\"}} {prompt}"
        );
        let _ = writeln!(
            out,
            "llm_cache_tokens_saved_total{{type=\"completion\"}} {completion}"
        );
        let _ = writeln!(
            out,
            "# HELP llm_cache_errors_total Cache backend errors (each one was served as a miss or a skipped write).\n# TYPE llm_cache_errors_total counter"
        );
        for ((backend, op, kind), v) in s.errors() {
            let _ = writeln!(
                out,
                "llm_cache_errors_total{{backend=\"{backend}\",operation=\"{op}\",kind=\"{kind}\"}} {v}"
            );
        }
        write_histogram(
            &mut out,
            "llm_cache_lookup_duration_seconds",
            "Cache lookup latency (all tiers, hits and misses).",
            &s.lookup_latency,
        );
        if let Some(engine) = cache.engine() {
            let state = match engine.breaker_state() {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let _ = writeln!(
                out,
                "# HELP llm_cache_breaker_state Circuit breaker of the backend: 0 closed, 1 half-open, 2 open.\n# TYPE llm_cache_breaker_state gauge\nllm_cache_breaker_state{{backend=\"{}\"}} {state}",
                engine.backend().name()
            );
        }
        if let Some(sem) = cache
            .engine()
            .and_then(|e| e.semantic().and_then(|s| s.stats()))
        {
            render_semantic(&mut out, &sem);
        }
        // LiteLLM-compatible names, for dashboards built on LiteLLM's metrics.
        counter(
            &mut out,
            "litellm_cache_hits_metric",
            "LiteLLM-compatible: cache hits.",
            s.hits(),
        );
        counter(
            &mut out,
            "litellm_cache_misses_metric",
            "LiteLLM-compatible: cache misses.",
            s.misses.load(Relaxed),
        );
        counter(
            &mut out,
            "litellm_cached_tokens_metric",
            "LiteLLM-compatible: tokens served from the cache.",
            prompt + completion,
        );

        let _ = writeln!(
            out,
            "# HELP llm_cache_requests_total Proxy requests by endpoint and cache outcome.\n# TYPE llm_cache_requests_total counter"
        );
        for ((endpoint, outcome), v) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "llm_cache_requests_total{{endpoint=\"{endpoint}\",cache=\"{outcome}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP llm_cache_upstream_responses_total Upstream answers by status code.\n# TYPE llm_cache_upstream_responses_total counter"
        );
        for (status, v) in self
            .upstream_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "llm_cache_upstream_responses_total{{status=\"{status}\"}} {v}"
            );
        }
        counter(
            &mut out,
            "llm_cache_upstream_errors_total",
            "Upstream transport failures (unreachable, timeout).",
            self.upstream_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_stream_replays_total",
            "Streaming responses replayed from the cache.",
            self.stream_replays.load(Relaxed),
        );
        counter(
            &mut out,
            "llm_cache_streams_stored_total",
            "Upstream streams that completed cleanly and were stored.",
            self.streams_stored.load(Relaxed),
        );
        let (buckets, count, sum) = *self
            .upstream_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP llm_cache_upstream_duration_seconds Upstream latency (time to response headers).\n# TYPE llm_cache_upstream_duration_seconds histogram"
        );
        let mut acc = 0;
        for (b, n) in UPSTREAM_BUCKETS.iter().zip(buckets) {
            acc += n;
            let _ = writeln!(
                out,
                "llm_cache_upstream_duration_seconds_bucket{{le=\"{b}\"}} {acc}"
            );
        }
        let _ = writeln!(
            out,
            "llm_cache_upstream_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "llm_cache_upstream_duration_seconds_sum {sum}");
        let _ = writeln!(out, "llm_cache_upstream_duration_seconds_count {count}");
        out
    }
}

fn write_histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (cumulative, count, sum) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (b, n) in LATENCY_BUCKETS.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// The semantic layer's counters (of the active configuration), shadow mode included.
fn render_semantic(out: &mut String, s: &llm_cache::core::semantic::SemanticStats) {
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
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP llm_cache_semantic_shadow_similarity_sum Sum of the similarities of shadow hits (mean = sum / llm_cache_semantic_shadow_hits_total).\n# TYPE llm_cache_semantic_shadow_similarity_sum counter\nllm_cache_semantic_shadow_similarity_sum {}",
        s.shadow_similarity_sum
    );
    let _ = writeln!(
        out,
        "# HELP llm_cache_semantic_guard_rejections_total Candidates above the threshold rejected by the guard, by reason.\n# TYPE llm_cache_semantic_guard_rejections_total counter"
    );
    for (reason, v) in &s.guard_rejections {
        let _ = writeln!(
            out,
            "llm_cache_semantic_guard_rejections_total{{reason=\"{reason}\"}} {v}"
        );
    }
}
