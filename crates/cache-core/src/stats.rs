//! Counters and events: honest hit accounting for metrics and user callbacks.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the lookup latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.5,
];

/// A fixed-bucket latency histogram (Prometheus style: cumulative on export).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count.load(Relaxed))
            .finish()
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Cumulative counts per bucket (same order as [`LATENCY_BUCKETS`]), total count, sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        (
            cumulative,
            self.count.load(Relaxed),
            self.sum_ns.load(Relaxed) as f64 / 1e9,
        )
    }
}

/// Process-wide cache counters. Survive [`crate::Cache::update`].
#[derive(Debug, Default)]
pub struct Stats {
    /// Hits served from the in-memory L1 tier.
    pub hits_l1: AtomicU64,
    /// Hits served from the main backend.
    pub hits_backend: AtomicU64,
    /// Hits served by the semantic layer.
    pub hits_semantic: AtomicU64,
    /// Misses (looked up, not found, expired or too old).
    pub misses: AtomicU64,
    /// Requests that did not use the cache (gates, `no-cache`, disabled).
    pub bypasses: AtomicU64,
    /// Requests answered by another request's upstream call (single-flight followers).
    pub coalesced: AtomicU64,
    /// Of [`Stats::coalesced`], those answered by another process's upstream call (a lease held
    /// by another replica; see [`crate::coordination`]).
    pub coalesced_remote: AtomicU64,
    /// Entries written (the backend accepted the write).
    pub stores: AtomicU64,
    /// Writes the backend did not accept: breaker open, too large, error or timeout.
    pub store_failures: AtomicU64,
    /// Entries found but unusable (corrupt, foreign, wrong kind): counted as misses too.
    pub corrupt: AtomicU64,
    /// Lookups skipped because the circuit breaker was open.
    pub breaker_rejections: AtomicU64,
    /// Body bytes served from the cache.
    pub bytes_served: AtomicU64,
    /// Prompt tokens of responses served from the cache (not sent upstream).
    pub prompt_tokens_saved: AtomicU64,
    /// Completion tokens of responses served from the cache (not generated again).
    pub completion_tokens_saved: AtomicU64,
    /// Lookup latency (all tiers, hit or miss).
    pub lookup_latency: Histogram,
    errors: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
}

impl Stats {
    /// Counts a backend error: backend name, operation, error kind.
    pub fn record_error(&self, backend: &str, operation: &'static str, kind: &'static str) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors
            .entry((backend.to_owned(), operation, kind))
            .or_default() += 1;
    }

    /// Errors by (backend, operation, kind).
    pub fn errors(&self) -> BTreeMap<(String, &'static str, &'static str), u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Total errors.
    pub fn error_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    /// Total hits, every tier.
    pub fn hits(&self) -> u64 {
        self.hits_l1.load(Relaxed)
            + self.hits_backend.load(Relaxed)
            + self.hits_semantic.load(Relaxed)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// Served from the cache.
    Hit,
    /// Looked up, not usable.
    Miss,
    /// Not looked up.
    Bypass,
    /// Stored.
    Store,
    /// A backend error (already turned into a miss / a skipped write).
    Error,
    /// Answered by a concurrent identical request's upstream call.
    Coalesced,
}

/// An observation for metrics and callbacks (LiteLLM's `cache_hit` in callbacks).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheEvent<'a> {
    /// What happened.
    pub kind: EventKind,
    /// The cache key, when there is one.
    pub key: Option<&'a str>,
    /// The tier or backend involved (`memory`, `redis`, `semantic`, ...).
    pub backend: &'a str,
    /// Time the operation took.
    pub latency: Duration,
    /// Age of the served entry (hits).
    pub age: Option<Duration>,
    /// Similarity (semantic hits).
    pub similarity: Option<f32>,
    /// Bytes served or stored.
    pub bytes: usize,
    /// Detail: miss reason, error message, bypass reason.
    pub detail: Option<&'a str>,
}

/// Receives cache events. Called inline: keep it cheap (count, enqueue).
pub trait CacheObserver: Send + Sync + 'static {
    /// One event.
    fn on_event(&self, event: &CacheEvent<'_>);
}

impl<F> CacheObserver for F
where
    F: Fn(&CacheEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &CacheEvent<'_>) {
        self(event)
    }
}
