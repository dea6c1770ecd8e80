//! One configured cache: backend, L1 tier with its invalidation generations, breakers,
//! deadlines, background writes.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::{CacheSettings, StoreFailure, StoreOutcome};
use crate::backend::{CacheBackend, SharedBackend};
use crate::breaker::{Breaker, BreakerState};
use crate::coordination::{Coordinator, Invalidation, InvalidationSink};
use crate::directives::{CacheControl, encode_namespace};
use crate::envelope::{Encoding, Entry};
use crate::error::{CacheError, Result};
use crate::flight::Flights;
use crate::key::KeyBuilder;
use crate::memory::MemoryBackend;
use crate::semantic::SemanticLayer;
use crate::stats::Stats;

/// One configured cache: backend, tiers, breaker, settings. Swapped atomically by
/// [`Cache::update`]; requests in flight keep the engine they started with.
pub struct CacheEngine {
    pub(super) settings: CacheSettings,
    pub(super) keys: KeyBuilder,
    pub(super) backend: SharedBackend,
    pub(super) l1: Option<MemoryBackend>,
    pub(super) breaker: Breaker,
    pub(super) semantic: Option<Arc<dyn SemanticLayer>>,
    pub(super) semantic_breaker: Breaker,
    pub(super) flights: Flights,
    pub(super) writes: TaskTracker,
    /// Invalidation generations of the L1 tier, sharded by key: a delete, clear or store bumps
    /// its shard, so a lookup that read the backend before it cannot put the old entry back.
    pub(super) l1_generations: Box<[AtomicU64]>,
    /// Whether L1 may be read and filled: always without a coordinator; with one, only while
    /// it can hear other processes' invalidations.
    pub(super) l1_live: AtomicBool,
    pub(super) invalidations_received: AtomicU64,
    /// The backend's cross-process coordination, if it offers one.
    pub(super) coordinator: Option<Arc<dyn Coordinator>>,
    /// How entries are written to the backend.
    pub(super) encoding: Encoding,
    /// Set when the coordinator failed for good ([`CacheEngine::disable_coordination`]).
    pub(super) coordination_off: AtomicBool,
    /// Recent share of the in-flight backend reads that hit ([`CacheEngine::read_outcome`]).
    pub(super) read_hit_ratio: HitRatio,
}

/// An exponentially weighted share of hits among recent reads (each read weighs 1/32), in
/// 1/65536ths. Updated without a lock: concurrent updates may drop one, which a heuristic
/// can afford. Starts at 0 (a new cache mostly misses).
#[derive(Debug, Default)]
pub(crate) struct HitRatio(AtomicU32);

impl HitRatio {
    const ONE: u32 = 1 << 16;

    pub(crate) fn record(&self, hit: bool) {
        let r = self.0.load(Relaxed);
        let target = if hit { Self::ONE } else { 0 };
        let next = if target >= r {
            r + (target - r) / 32
        } else {
            r - (r - target) / 32
        };
        self.0.store(next, Relaxed);
    }

    pub(crate) fn get(&self) -> f64 {
        f64::from(self.0.load(Relaxed)) / f64::from(Self::ONE)
    }
}

pub(super) const L1_GENERATION_SHARDS: usize = 64;

impl fmt::Debug for CacheEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheEngine")
            .field("backend", &self.backend.name())
            .field("l1", &self.l1.is_some())
            .field(
                "semantic",
                &self.semantic.as_ref().map(|s| s.name().to_owned()),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

impl CacheEngine {
    /// The settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// How entries are written to the backend (resolved from
    /// [`CacheSettings::encoding`] and the backend's capabilities).
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The backend's form of an entry whose JSON form is `json`.
    pub(crate) fn encode_for_store(&self, entry: &Entry, json: Bytes) -> Bytes {
        if self.encoding.compact {
            entry.encode_with(&self.encoding)
        } else {
            json
        }
    }

    /// The main backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// State of the backend's circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// State of the semantic layer's circuit breaker, when a semantic layer is configured.
    pub fn semantic_breaker_state(&self) -> Option<BreakerState> {
        self.semantic
            .as_ref()
            .map(|_| self.semantic_breaker.state())
    }

    /// Number of keys with an upstream call in flight (single-flight leaders).
    pub fn in_flight(&self) -> usize {
        self.flights.in_flight()
    }

    /// The key builder.
    pub fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    /// The L1 tier, if any.
    pub fn l1(&self) -> Option<&MemoryBackend> {
        self.l1.as_ref()
    }

    /// The L1 tier when it may be used: not while invalidations from other processes cannot
    /// be heard (see [`crate::coordination`]).
    pub(crate) fn l1_active(&self) -> Option<&MemoryBackend> {
        self.l1.as_ref().filter(|_| self.l1_live.load(SeqCst))
    }

    /// Whether L1 is in use (see [`CacheEngine::l1_active`]): false while this process
    /// cannot hear other processes' invalidations.
    pub fn l1_live(&self) -> bool {
        self.l1_active().is_some()
    }

    /// Invalidations heard from other processes (and this one) and applied to L1.
    pub fn invalidations_received(&self) -> u64 {
        self.invalidations_received.load(Relaxed)
    }

    /// The coordinator used to coalesce misses across processes, when the backend offers one,
    /// the settings ask for it and it has not failed for good.
    pub fn coalescing_coordinator(&self) -> Option<&Arc<dyn Coordinator>> {
        self.coordinator.as_ref().filter(|_| {
            self.settings.coalesce
                && self.settings.coalesce_across_replicas
                && !self.coordination_off.load(Relaxed)
        })
    }

    /// Turns cross-process coalescing off after an error retrying cannot cure (the server
    /// refuses the commands): logged once.
    pub(super) fn disable_coordination(&self, e: &CacheError) {
        if !self.coordination_off.swap(true, Relaxed) {
            tracing::error!(error = %e, "cross-replica coalescing turned off for this configuration: the store refuses its commands (check the Redis ACL: EVAL, EXISTS, PUBLISH, SUBSCRIBE)");
        }
    }

    /// The backend's coordinator, if any.
    pub fn coordinator(&self) -> Option<&Arc<dyn Coordinator>> {
        self.coordinator.as_ref()
    }

    pub(super) fn l1_shard(&self, key: &str) -> &AtomicU64 {
        // FNV-1a: cheap, and keys are already hashes or caller-chosen strings.
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.l1_generations[(h as usize) % L1_GENERATION_SHARDS]
    }

    /// The L1 generation of `key`, read before a backend lookup whose result may fill L1.
    pub(super) fn l1_generation(&self, key: &str) -> u64 {
        self.l1_shard(key).load(SeqCst)
    }

    /// Removes `key` from L1 and bumps its generation (delete, refresh).
    pub(super) fn l1_invalidate(&self, key: &str) {
        if let Some(l1) = &self.l1 {
            self.l1_shard(key).fetch_add(1, SeqCst);
            l1.delete_sync(key);
        }
    }

    /// Clears L1 (all of it, or one namespace) and bumps every generation.
    pub(super) fn l1_clear(&self, namespace: Option<&str>) {
        if let Some(l1) = &self.l1 {
            for g in self.l1_generations.iter() {
                g.fetch_add(1, SeqCst);
            }
            l1.clear_sync(namespace);
        }
    }

    /// Fills L1 with an entry read from the backend, unless `key` was invalidated since the
    /// read began (`seen` is the generation then). The check runs again after the write: a
    /// delete that raced with it removes what was just put.
    pub(super) fn l1_fill(
        &self,
        key: &str,
        raw: &Bytes,
        entry: &Entry,
        ttl: Option<Duration>,
        seen: u64,
    ) {
        if self.l1_active().is_none() || self.l1_generation(key) != seen {
            return;
        }
        // L1 keeps the JSON form: a memory hit never decompresses.
        if Entry::is_compact(raw) {
            self.l1_write(key, &entry.encode(), ttl);
        } else {
            self.l1_write(key, raw, ttl);
        }
        if self.l1_generation(key) != seen
            && let Some(l1) = &self.l1
        {
            l1.delete_sync(key);
        }
    }

    /// Writes a new entry (a store or a refresh) to L1: bumps the generation first, so a lookup
    /// in flight cannot overwrite it with the old entry.
    pub(super) fn l1_store(&self, key: &str, raw: &Bytes, ttl: Option<Duration>) {
        if self.l1_active().is_some() {
            self.l1_shard(key).fetch_add(1, SeqCst);
            self.l1_write(key, raw, ttl);
        }
    }

    /// Writes to the L1 tier for at most its TTL, and never past `ttl` (the entry's own
    /// remaining lifetime): L1 never outlives the backend entry. An entry L1 refuses (too
    /// large) removes the old copy, so L1 never keeps serving what was replaced.
    pub(super) fn l1_write(&self, key: &str, raw: &Bytes, ttl: Option<Duration>) {
        if let (Some(l1), Some(cfg)) = (self.l1_active(), &self.settings.l1) {
            let ttl = ttl.map_or(cfg.ttl, |t| t.min(cfg.ttl));
            if l1.set_sync(key, raw.clone(), Some(ttl)).is_err() {
                l1.delete_sync(key);
            }
        }
    }

    /// The namespace of a request: a per-request namespace (encoded into one opaque segment)
    /// nested under the configured one, else the configured one.
    pub fn resolve_namespace<'a>(&'a self, cc: &'a CacheControl) -> Option<Cow<'a, str>> {
        let configured = self.settings.namespace.as_deref().filter(|n| !n.is_empty());
        match (
            cc.namespace.as_deref().filter(|n| !n.is_empty()),
            configured,
        ) {
            (Some(req), Some(cfg)) => Some(Cow::Owned(format!("{cfg}:{}", encode_namespace(req)))),
            (Some(req), None) => Some(encode_namespace(req)),
            (None, cfg) => cfg.map(Cow::Borrowed),
        }
    }

    /// The semantic layer, if any.
    pub fn semantic(&self) -> Option<&Arc<dyn SemanticLayer>> {
        self.semantic.as_ref()
    }
}

impl InvalidationSink for CacheEngine {
    fn invalidate(&self, what: &Invalidation) {
        self.invalidations_received.fetch_add(1, Relaxed);
        match what {
            Invalidation::Keys(keys) => {
                for k in keys {
                    self.l1_invalidate(k);
                }
            }
            Invalidation::Clear(ns) => self.l1_clear(ns.as_deref()),
        }
    }

    fn connection(&self, live: bool) {
        if !live {
            self.l1_live.store(false, SeqCst);
        }
        // Emptied either way: what L1 holds may have been invalidated unheard.
        self.l1_clear(None);
        if live {
            self.l1_live.store(true, SeqCst);
        }
        tracing::info!(
            live,
            "L1 tier {}",
            if live {
                "in use: invalidations from other replicas are heard"
            } else {
                "emptied and bypassed: invalidations from other replicas cannot be heard"
            }
        );
    }
}

impl CacheEngine {
    /// Tells the other processes (through the coordinator) to drop `what` from their L1.
    /// Bounded by the admin deadline; a failure is logged and counted, never returned (the
    /// store itself changed).
    pub(super) async fn publish_invalidation(&self, what: Invalidation, stats: &Stats) {
        let Some(c) = &self.coordinator else { return };
        let res = with_deadline(
            c.name(),
            "publish",
            self.settings.admin_timeout,
            c.publish(&what),
        )
        .await;
        if let Err(e) = res {
            stats.record_error(c.name(), "publish", e.kind_label());
            tracing::warn!(backend = c.name(), error = %e, ?what, "invalidation not published: other replicas keep their L1 copy until l1_ttl");
        }
    }

    pub(super) async fn admin<T>(
        &self,
        fut: impl Future<Output = Result<T>>,
        op: &'static str,
        stats: &Stats,
    ) -> Result<T> {
        let res = with_deadline(self.backend.name(), op, self.settings.admin_timeout, fut).await;
        if let Err(e) = &res {
            stats.record_error(self.backend.name(), op, e.kind_label());
            tracing::warn!(backend = self.backend.name(), op, error = %e, "cache admin operation failed");
        }
        res
    }

    /// Starts a write-behind: the write is polled once in place and spawned (tracked, so
    /// shutdown waits for it) only if it is still pending. A write that completes without
    /// waiting (the in-memory backend) then costs no task: spawning one delayed the response to
    /// a miss by ~130 µs at p50 on a two-worker runtime (docs/benchmarks.md, proxy miss path).
    /// Only for writes without heavy synchronous work (an embedding model must not run here).
    pub(crate) fn write_behind(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut fut = Box::pin(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // A panicking backend must not fail the request (a spawned task contained it before).
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)))
        {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                self.writes.spawn(fut);
            }
            Err(_) => {
                tracing::error!(
                    backend = self.backend.name(),
                    "cache backend panicked in a write; the write is dropped"
                );
            }
        }
    }

    /// Runs a write and waits for it at most `budget` (what is left of the read deadline). A
    /// write that completes without
    /// waiting (the in-memory backend) costs no timer; one still running after the deadline
    /// goes on in the background (tracked, so shutdown waits for it) and is reported pending.
    pub(crate) async fn acknowledge(
        &self,
        mut write: StoreWrite,
        budget: Duration,
    ) -> StoreOutcome {
        let first = {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            write.as_mut().poll(&mut cx)
        };
        if let std::task::Poll::Ready(outcome) = first {
            return outcome;
        }
        if budget.is_zero() {
            self.writes.spawn(write);
            return StoreOutcome::Pending;
        }
        match tokio::time::timeout(budget, &mut write).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.writes.spawn(write);
                StoreOutcome::Pending
            }
        }
    }

    /// Runs a backend call with the breaker and a deadline. `Err(None)` = skipped (breaker open).
    pub(crate) async fn guarded<T>(
        &self,
        fut: impl Future<Output = Result<T>>,
        op: &'static str,
        timeout: Duration,
        stats: &Stats,
    ) -> std::result::Result<T, Option<CacheError>> {
        // The permit is released if this future is dropped mid-call (see `Permit`).
        let Some(permit) = self.breaker.try_acquire() else {
            stats.breaker_rejections.fetch_add(1, Relaxed);
            return Err(None);
        };
        match with_deadline(self.backend.name(), op, timeout, fut).await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                if e.is_transient() {
                    permit.failure();
                } else {
                    permit.success();
                }
                stats.record_error(self.backend.name(), op, e.kind_label());
                tracing::warn!(backend = self.backend.name(), op, error = %e, "cache backend call failed; treated as a miss");
                Err(Some(e))
            }
        }
    }
}

impl CacheEngine {
    /// A backend `get` with the breaker and the read deadline (see [`CacheEngine::guarded`]).
    pub(super) async fn guarded_get(
        &self,
        key: &str,
        stats: &Stats,
    ) -> std::result::Result<Option<Bytes>, Option<CacheError>> {
        self.guarded(
            self.backend.get(key),
            "get",
            self.settings.read_timeout,
            stats,
        )
        .await
    }
}

/// Runs `fut` for at most `timeout`; running out is a [`CacheError::Timeout`] naming `backend`
/// and `operation`.
pub(super) async fn with_deadline<T>(
    backend: &str,
    operation: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(CacheError::Timeout {
            backend: backend.to_owned(),
            operation,
            after: timeout,
        }),
    }
}

/// A backend write in progress: resolves to what became of it. Panics inside are contained.
pub(crate) type StoreWrite = Pin<Box<dyn Future<Output = StoreOutcome> + Send>>;

pub(super) fn contain_panics(
    write: impl Future<Output = StoreOutcome> + Send + 'static,
) -> StoreWrite {
    use futures::FutureExt as _;
    Box::pin(std::panic::AssertUnwindSafe(write).catch_unwind().map(|r| {
        r.unwrap_or_else(|_| {
            tracing::error!("cache backend panicked in a write; the write is dropped");
            StoreOutcome::Failed(StoreFailure::Error)
        })
    }))
}

/// Counts a finished write of `entries` entries and says what became of it.
pub(super) fn store_outcome(
    res: std::result::Result<(), Option<CacheError>>,
    stats: &Stats,
    entries: u64,
) -> StoreOutcome {
    let outcome = match res {
        Ok(()) => {
            stats.stores.fetch_add(entries, Relaxed);
            return StoreOutcome::Stored;
        }
        Err(None) => StoreFailure::BreakerOpen,
        Err(Some(CacheError::ValueTooLarge { .. })) => StoreFailure::TooLarge,
        Err(Some(CacheError::Timeout { .. })) => StoreFailure::Timeout,
        Err(Some(_)) => StoreFailure::Error,
    };
    stats.store_failures.fetch_add(1, Relaxed);
    StoreOutcome::Failed(outcome)
}
