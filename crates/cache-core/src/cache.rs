//! The orchestration: the one place that turns a request into a hit or a miss.
//!
//! ```text
//! prepare:  gates (enabled, call type, mode, max_messages) → directives → key
//! lookup:   L1 (memory) → breaker → backend with a deadline → decode + validate → semantic
//! miss:     single-flight (one upstream call per key) → store off the response path
//! ```
//!
//! Fail-open: every backend call has a deadline; an error, a timeout or an open breaker is a miss,
//! logged with `tracing` and counted in [`Stats`]. Writes run in the background and never fail
//! or slow the call.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::task::TaskTracker;

use crate::backend::{CacheBackend, Health, SharedBackend};
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::directives::{CacheControl, encode_namespace};
use crate::envelope::{Entry, Usage, now_ms};
use crate::error::{CacheError, Result};
use crate::flight::{Flights, Join, Waited};
use crate::key::{CacheKey, CallKind, KeyBuilder, KeyContext, KeyOptions, OPT_IN_FORWARDED_PARAMS};
use crate::memory::{MemoryBackend, MemoryConfig};
use crate::output::has_output;
use crate::semantic::{SemanticLayer, SemanticRequest};
use crate::stats::{CacheEvent, CacheObserver, EventKind, Stats};

/// When the cache is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Every supported request reads and writes (LiteLLM `default_on`).
    #[default]
    DefaultOn,
    /// Only requests with `use-cache: true` read and write (LiteLLM `default_off`).
    DefaultOff,
}

/// Settings of the in-memory L1 tier in front of a shared backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct L1Config {
    /// Bounds of the tier.
    pub memory: MemoryConfig,
    /// Longest an entry stays in L1. It never outlives the backend entry's own expiry.
    pub ttl: Duration,
}

impl L1Config {
    /// An L1 tier with the given bounds and TTL.
    pub fn new(memory: MemoryConfig, ttl: Duration) -> Self {
        L1Config { memory, ttl }
    }
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config {
            memory: MemoryConfig::default().with_max_items(Some(10_000)),
            ttl: Duration::from_secs(60),
        }
    }
}

/// Everything that shapes the cache's behaviour, besides the backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheSettings {
    /// `default_on` or `default_off`.
    pub mode: CacheMode,
    /// Call kinds that read and write (default: all).
    pub supported_call_types: BTreeSet<CallKind>,
    /// Requests with more messages than this are neither looked up nor stored (default: no
    /// limit; LiteLLM's silent default of 4 is its F15).
    pub max_messages: Option<usize>,
    /// Namespace of every key (a per-request `namespace` directive wins).
    pub namespace: Option<String>,
    /// TTL of entries written without a per-request `ttl` (`None`: no expiry).
    pub default_ttl: Option<Duration>,
    /// Deadline of a backend read.
    pub read_timeout: Duration,
    /// Deadline of a backend write (runs in the background).
    pub write_timeout: Duration,
    /// Deadline of admin operations (delete, clear, ping).
    pub admin_timeout: Duration,
    /// Deadline of a semantic lookup (embedding + vector search).
    pub semantic_timeout: Duration,
    /// Circuit breaker of the backend.
    pub breaker: BreakerConfig,
    /// Single-flight of concurrent identical misses.
    pub coalesce: bool,
    /// Longest a follower waits for the leader's upstream call before going alone.
    pub coalesce_timeout: Duration,
    /// Optional in-memory tier in front of the backend.
    pub l1: Option<L1Config>,
    /// Key computation.
    pub keys: KeyOptions,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            mode: CacheMode::DefaultOn,
            supported_call_types: CallKind::ALL.into_iter().collect(),
            max_messages: None,
            namespace: None,
            default_ttl: None,
            read_timeout: Duration::from_millis(50),
            write_timeout: Duration::from_secs(2),
            admin_timeout: Duration::from_secs(10),
            semantic_timeout: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
            coalesce: true,
            coalesce_timeout: Duration::from_secs(120),
            l1: None,
            keys: KeyOptions::default(),
        }
    }
}

/// Builds a [`Cache`] (or a [`CacheEngine`] to swap into a running one).
#[derive(Debug)]
pub struct CacheBuilder {
    backend: SharedBackend,
    settings: CacheSettings,
    semantic: Option<Arc<dyn SemanticLayer>>,
}

impl CacheBuilder {
    /// A builder over a backend, with default settings.
    pub fn new(backend: impl CacheBackend) -> Self {
        Self::from_shared(Arc::new(backend))
    }

    /// A builder over a shared backend handle.
    pub fn from_shared(backend: SharedBackend) -> Self {
        CacheBuilder {
            backend,
            settings: CacheSettings::default(),
            semantic: None,
        }
    }

    /// Replaces all settings.
    pub fn settings(mut self, settings: CacheSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Mutates the settings in place.
    pub fn configure(mut self, f: impl FnOnce(&mut CacheSettings)) -> Self {
        f(&mut self.settings);
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.settings.namespace = Some(ns.into());
        self
    }

    /// Sets the default TTL.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.settings.default_ttl = Some(ttl);
        self
    }

    /// Sets the read deadline.
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.settings.read_timeout = d;
        self
    }

    /// Adds an in-memory L1 tier.
    pub fn l1(mut self, l1: L1Config) -> Self {
        self.settings.l1 = Some(l1);
        self
    }

    /// Adds a semantic layer consulted after an exact miss.
    pub fn semantic(mut self, layer: Arc<dyn SemanticLayer>) -> Self {
        self.semantic = Some(layer);
        self
    }

    /// Builds an engine (to pass to [`Cache::update`]).
    pub fn build_engine(self) -> Arc<CacheEngine> {
        let settings = self.settings;
        Arc::new(CacheEngine {
            keys: KeyBuilder::new(settings.keys.clone()),
            l1: settings
                .l1
                .as_ref()
                .map(|c| MemoryBackend::new(c.memory.clone())),
            breaker: Breaker::new(settings.breaker),
            semantic_breaker: Breaker::new(settings.breaker),
            backend: self.backend,
            semantic: self.semantic,
            flights: Flights::default(),
            writes: TaskTracker::new(),
            l1_generations: (0..L1_GENERATION_SHARDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            settings,
        })
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        Cache::new(Some(self.build_engine()))
    }
}

/// One configured cache: backend, tiers, breaker, settings. Swapped atomically by
/// [`Cache::update`]; requests in flight keep the engine they started with.
pub struct CacheEngine {
    settings: CacheSettings,
    keys: KeyBuilder,
    backend: SharedBackend,
    l1: Option<MemoryBackend>,
    breaker: Breaker,
    semantic: Option<Arc<dyn SemanticLayer>>,
    semantic_breaker: Breaker,
    flights: Flights,
    writes: TaskTracker,
    /// Invalidation generations of the L1 tier, sharded by key: a delete, clear or store bumps
    /// its shard, so a lookup that read the backend before it cannot put the old entry back.
    l1_generations: Box<[AtomicU64]>,
}

const L1_GENERATION_SHARDS: usize = 64;

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

    fn l1_shard(&self, key: &str) -> &AtomicU64 {
        // FNV-1a: cheap, and keys are already hashes or caller-chosen strings.
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.l1_generations[(h as usize) % L1_GENERATION_SHARDS]
    }

    /// The L1 generation of `key`, read before a backend lookup whose result may fill L1.
    fn l1_generation(&self, key: &str) -> u64 {
        self.l1_shard(key).load(SeqCst)
    }

    /// Removes `key` from L1 and bumps its generation (delete, refresh).
    fn l1_invalidate(&self, key: &str) {
        if let Some(l1) = &self.l1 {
            self.l1_shard(key).fetch_add(1, SeqCst);
            l1.delete_sync(key);
        }
    }

    /// Clears L1 (all of it, or one namespace) and bumps every generation.
    fn l1_clear(&self, namespace: Option<&str>) {
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
    fn l1_fill(&self, key: &str, raw: &Bytes, ttl: Option<Duration>, seen: u64) {
        if self.l1.is_none() || self.l1_generation(key) != seen {
            return;
        }
        self.l1_write(key, raw, ttl);
        if self.l1_generation(key) != seen
            && let Some(l1) = &self.l1
        {
            l1.delete_sync(key);
        }
    }

    /// Writes a new entry (a store or a refresh) to L1: bumps the generation first, so a lookup
    /// in flight cannot overwrite it with the old entry.
    fn l1_store(&self, key: &str, raw: &Bytes, ttl: Option<Duration>) {
        if self.l1.is_some() {
            self.l1_shard(key).fetch_add(1, SeqCst);
            self.l1_write(key, raw, ttl);
        }
    }

    /// Writes to the L1 tier for at most its TTL, and never past `ttl` (the entry's own
    /// remaining lifetime): L1 never outlives the backend entry. An entry L1 refuses (too
    /// large) removes the old copy, so L1 never keeps serving what was replaced.
    fn l1_write(&self, key: &str, raw: &Bytes, ttl: Option<Duration>) {
        if let (Some(l1), Some(cfg)) = (&self.l1, &self.settings.l1) {
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

struct Shared {
    engine: ArcSwapOption<CacheEngine>,
    stats: Stats,
    observers: ArcSwap<Vec<Arc<dyn CacheObserver>>>,
}

/// The cache handle: cheap to clone, safe to share. Enable, disable or replace the active
/// configuration at runtime without stopping in-flight calls.
#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("engine", &self.shared.engine.load())
            .finish()
    }
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The in-memory L1 tier.
    L1,
    /// The main backend.
    Backend,
    /// The semantic layer.
    Semantic,
}

/// Why a lookup did not produce a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissReason {
    /// No entry.
    NotFound,
    /// An entry older than the request's `s-maxage`/`max-age`.
    Stale,
    /// Lookup skipped by `no-cache` (the result is still stored).
    NoCache,
    /// An entry that did not decode or does not fit the request (counted as corrupt).
    Unusable,
    /// The backend failed or timed out.
    Error,
    /// The circuit breaker is open.
    BreakerOpen,
}

impl MissReason {
    /// Label for logs and the `Cache-Status` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            MissReason::NotFound => "not-found",
            MissReason::Stale => "stale",
            MissReason::NoCache => "no-cache",
            MissReason::Unusable => "unusable-entry",
            MissReason::Error => "backend-error",
            MissReason::BreakerOpen => "breaker-open",
        }
    }
}

/// A cache hit.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The entry.
    pub entry: Entry,
    /// Its age.
    pub age: Duration,
    /// Where it came from.
    pub tier: Tier,
    /// Similarity, for semantic hits.
    pub similarity: Option<f32>,
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Served from the cache.
    Hit(Hit),
    /// Not served from the cache; the caller goes upstream.
    Miss(MissReason),
    /// The cache does not apply to this request.
    Bypass(&'static str),
}

/// What the cache did for a request: the `Cache-Status` (RFC 9211) of the response.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit {
        /// Tier.
        tier: Tier,
        /// Age of the entry.
        age: Duration,
        /// Similarity (semantic hits).
        similarity: Option<f32>,
    },
    /// Fetched upstream.
    Miss {
        /// Why.
        reason: MissReason,
        /// What happened to the write of the response.
        store: StoreOutcome,
    },
    /// Answered by a concurrent identical request's upstream call.
    Coalesced,
    /// Embeddings: some inputs served from the cache, the rest fetched upstream.
    Partial {
        /// Inputs served from the cache.
        cached: usize,
        /// All inputs.
        total: usize,
        /// What happened to the write of the fetched inputs.
        store: StoreOutcome,
    },
    /// Not cacheable.
    Bypass {
        /// Why.
        reason: &'static str,
    },
}

/// What happened to the write of a fetched response. `Cache-Status` says `stored` only for
/// [`StoreOutcome::Stored`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The backend accepted the write.
    Stored,
    /// No write was asked for: `no-store`, `ttl: 0`, a bypassed request, or a response the cache
    /// never keeps (no output, not JSON).
    NotRequested,
    /// The write is still running after the acknowledgement wait (the read deadline); its result
    /// is counted in the stats, not reported here.
    Pending,
    /// The write was attempted and not accepted.
    Failed(StoreFailure),
}

/// Why a write was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// The circuit breaker is open: the write was skipped.
    BreakerOpen,
    /// The entry is larger than the backend accepts.
    TooLarge,
    /// The write missed its deadline.
    Timeout,
    /// The backend returned an error.
    Error,
}

impl StoreOutcome {
    /// Whether the write was accepted.
    pub fn is_stored(self) -> bool {
        self == StoreOutcome::Stored
    }

    /// The `Cache-Status` detail of a write that was asked for and not (yet) accepted.
    pub fn detail(self) -> Option<&'static str> {
        match self {
            StoreOutcome::Stored | StoreOutcome::NotRequested => None,
            StoreOutcome::Pending => Some("store-pending"),
            StoreOutcome::Failed(StoreFailure::BreakerOpen) => Some("not-stored-breaker-open"),
            StoreOutcome::Failed(StoreFailure::TooLarge) => Some("not-stored-too-large"),
            StoreOutcome::Failed(StoreFailure::Timeout) => Some("not-stored-timeout"),
            StoreOutcome::Failed(StoreFailure::Error) => Some("not-stored-error"),
        }
    }
}

impl CacheStatus {
    /// The `Cache-Status` header value (RFC 9211) with `name` as the cache identifier.
    pub fn header_value(&self, name: &str) -> String {
        match self {
            CacheStatus::Hit {
                tier, similarity, ..
            } => match (tier, similarity) {
                (Tier::Semantic, Some(s)) => {
                    format!("{name}; hit; detail=semantic; key=\"similarity={s:.4}\"")
                }
                (Tier::Semantic, None) => format!("{name}; hit; detail=semantic"),
                (Tier::L1, _) => format!("{name}; hit; detail=l1"),
                (Tier::Backend, _) => format!("{name}; hit"),
            },
            CacheStatus::Miss { reason, store } => {
                let fwd = match reason {
                    MissReason::Stale => "stale",
                    MissReason::NoCache => "request",
                    _ => "miss",
                };
                let mut s = format!("{name}; fwd={fwd}");
                if store.is_stored() {
                    s.push_str("; stored");
                }
                let lookup = matches!(
                    reason,
                    MissReason::Error | MissReason::BreakerOpen | MissReason::Unusable
                )
                .then(|| reason.as_str());
                push_detail(&mut s, lookup, store.detail());
                s
            }
            CacheStatus::Coalesced => format!("{name}; fwd=miss; collapsed"),
            CacheStatus::Partial {
                cached,
                total,
                store,
            } => {
                let stored = if store.is_stored() { "; stored" } else { "" };
                let not = store.detail().map(|d| format!(", {d}")).unwrap_or_default();
                format!("{name}; fwd=partial{stored}; detail=\"cached {cached} of {total}{not}\"")
            }
            CacheStatus::Bypass { reason } => format!("{name}; fwd=bypass; detail={reason}"),
        }
    }

    /// Whether the response came from the cache.
    pub fn is_hit(&self) -> bool {
        matches!(self, CacheStatus::Hit { .. })
    }

    /// What happened to the write, for misses.
    pub fn store(&self) -> Option<StoreOutcome> {
        match self {
            CacheStatus::Miss { store, .. } | CacheStatus::Partial { store, .. } => Some(*store),
            _ => None,
        }
    }
}

/// Appends `; detail=...` (RFC 9211): one token, or a quoted list when there are two.
fn push_detail(s: &mut String, a: Option<&str>, b: Option<&str>) {
    match (a, b) {
        (Some(x), None) | (None, Some(x)) => {
            s.push_str("; detail=");
            s.push_str(x);
        }
        (Some(x), Some(y)) => {
            s.push_str("; detail=\"");
            s.push_str(x);
            s.push_str(", ");
            s.push_str(y);
            s.push('"');
        }
        (None, None) => {}
    }
}

/// A value with what the cache did for it.
#[derive(Debug, Clone)]
pub struct Cached<T> {
    /// The response.
    pub value: T,
    /// What the cache did.
    pub status: CacheStatus,
    /// The key used, when the request was cacheable.
    pub key: Option<CacheKey>,
    /// The served entry (hits only).
    pub entry: Option<Entry>,
}

/// Errors of a cached call.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The upstream call failed (never cached).
    #[error("upstream call failed: {0}")]
    Upstream(E),
    /// `only-if-cached` and nothing usable was cached.
    #[error("only-if-cached: no cached response")]
    NotCached,
    /// Invalid cache input (a bad `cache_key`, a request that is not an object).
    #[error(transparent)]
    Invalid(CacheError),
}

/// Per-request context besides the body and directives.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContext<'a> {
    /// Model group (the proxy's `model_name`); keyed instead of `model`.
    pub model_group: Option<&'a str>,
    /// Tenant partition: requests with different partitions never share entries.
    pub partition: Option<&'a str>,
    /// Opt-in members this request forwards upstream (`metadata`): keyed (see
    /// [`crate::key::OPT_IN_FORWARDED_PARAMS`]).
    pub forwarded: &'a [&'a str],
    /// The caller's own reason not to use the cache for this request (a provider whose answers
    /// depend on who asks): the request bypasses the cache, neither read nor written.
    pub bypass: Option<&'static str>,
}

impl<'a> RequestContext<'a> {
    /// The key context for `namespace`.
    pub(crate) fn key_context(&self, namespace: Option<&'a str>) -> KeyContext<'a> {
        KeyContext {
            model_group: self.model_group,
            namespace,
            partition: self.partition,
            forwarded: self.forwarded,
        }
    }
}

/// A ping report (the proxy's `/cache/ping`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PingReport {
    /// Backend health.
    pub health: Health,
    /// Whether a test write + read round-trip succeeded.
    pub set_ok: bool,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Semantic layer health, when configured.
    pub semantic: Option<std::result::Result<Health, String>>,
}

/// A request prepared for the cache: gates applied, key computed.
pub struct Prepared {
    cache: Cache,
    engine: Option<Arc<CacheEngine>>,
    kind: CallKind,
    key: Option<CacheKey>,
    read: bool,
    write: bool,
    ttl: Option<Duration>,
    max_age: Option<Duration>,
    only_if_cached: bool,
    bypass: Option<&'static str>,
    semantic: Option<SemanticInput>,
    /// Nanoseconds the lookup spent in the cache: the write acknowledgement gets what is left of
    /// the read deadline, so a request never waits on the cache longer than one read deadline.
    lookup_nanos: AtomicU64,
}

#[derive(Clone)]
struct SemanticInput {
    request: Arc<Value>,
    model_group: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
    forwarded: Vec<&'static str>,
    min_similarity: Option<f32>,
}

impl SemanticInput {
    fn as_request<'a>(&'a self, kind: CallKind, keys: &'a KeyBuilder) -> SemanticRequest<'a> {
        SemanticRequest::new(
            kind,
            &self.request,
            self.model_group.as_deref(),
            self.namespace.as_deref(),
            self.min_similarity,
        )
        .with_partition(self.partition.as_deref())
        .with_forwarded(&self.forwarded)
        .with_keys(keys)
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("kind", &self.kind)
            .field("key", &self.key)
            .field("read", &self.read)
            .field("write", &self.write)
            .field("ttl", &self.ttl)
            .field("max_age", &self.max_age)
            .field("bypass", &self.bypass)
            .finish()
    }
}

fn message_count(request: &Value) -> usize {
    if let Some(m) = request.get("messages").and_then(Value::as_array) {
        return m.len();
    }
    match request.get("input") {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|i| i.is_object() && i.get("type").and_then(Value::as_str) != Some("file"))
            .count(),
        _ => 0,
    }
}

impl Cache {
    /// A cache with the given engine (`None`: disabled).
    pub fn new(engine: Option<Arc<CacheEngine>>) -> Self {
        Cache {
            shared: Arc::new(Shared {
                engine: ArcSwapOption::new(engine),
                stats: Stats::default(),
                observers: ArcSwap::from_pointee(Vec::new()),
            }),
        }
    }

    /// A builder over a backend.
    pub fn builder(backend: impl CacheBackend) -> CacheBuilder {
        CacheBuilder::new(backend)
    }

    /// An in-memory cache with default settings.
    pub fn in_memory() -> Self {
        CacheBuilder::new(MemoryBackend::default()).build()
    }

    /// A disabled cache (every request bypasses it) that can be enabled later.
    pub fn disabled() -> Self {
        Cache::new(None)
    }

    /// Enables the cache with `engine` unless one is active (LiteLLM's `enable_cache`).
    /// Returns whether it was enabled.
    pub fn enable(&self, engine: Arc<CacheEngine>) -> bool {
        let prev = self
            .shared
            .engine
            .compare_and_swap(&None::<Arc<CacheEngine>>, Some(engine));
        prev.is_none()
    }

    /// Replaces the active engine (LiteLLM's `update_cache`). In-flight requests finish with the
    /// engine they started with.
    pub fn update(&self, engine: Arc<CacheEngine>) {
        self.shared.engine.store(Some(engine));
    }

    /// Disables the cache (LiteLLM's `disable_cache`). In-flight requests are not affected.
    pub fn disable(&self) {
        self.shared.engine.store(None);
    }

    /// Whether an engine is active.
    pub fn is_enabled(&self) -> bool {
        self.shared.engine.load().is_some()
    }

    /// The active engine.
    pub fn engine(&self) -> Option<Arc<CacheEngine>> {
        self.shared.engine.load_full()
    }

    /// Process-wide counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Registers an observer of cache events.
    pub fn add_observer(&self, observer: Arc<dyn CacheObserver>) {
        self.shared.observers.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(observer.clone());
            list
        });
    }

    fn emit(&self, event: impl FnOnce() -> CacheEvent<'static>) {
        self.emit_with(|emit| emit(&event()));
    }

    fn emit_with(&self, make: impl FnOnce(&dyn Fn(&CacheEvent<'_>))) {
        let observers = self.shared.observers.load();
        if observers.is_empty() {
            return;
        }
        make(&|e| {
            for o in observers.iter() {
                o.on_event(e);
            }
        });
    }

    /// Applies the gates and directives to a request and computes its key.
    ///
    /// # Errors
    /// [`CacheError::Config`] when the request is not a JSON object or a client `cache_key` is
    /// allowed but malformed.
    pub fn prepare(
        &self,
        kind: CallKind,
        request: &Value,
        cc: &CacheControl,
        ctx: &RequestContext<'_>,
    ) -> Result<Prepared> {
        let engine = self.shared.engine.load_full();
        let mut p = Prepared {
            cache: self.clone(),
            engine: None,
            kind,
            key: None,
            read: false,
            write: false,
            ttl: None,
            max_age: None,
            only_if_cached: cc.is_only_if_cached(),
            bypass: None,
            semantic: None,
            lookup_nanos: AtomicU64::new(0),
        };
        let Some(engine) = engine else {
            p.bypass = Some("disabled");
            return Ok(p);
        };
        let s = &engine.settings;
        let bypass = if let Some(reason) = ctx.bypass {
            Some(reason)
        } else if !s.supported_call_types.contains(&kind) {
            Some("call-type")
        } else if s.mode == CacheMode::DefaultOff && cc.use_cache != Some(true) {
            Some("default-off")
        } else if s
            .max_messages
            .is_some_and(|max| message_count(request) > max)
        {
            Some("max-messages")
        } else {
            None
        };
        let namespace = engine.resolve_namespace(cc);
        let namespace = namespace.as_deref();
        p.key = Some(
            engine
                .keys
                .key(kind, request, &ctx.key_context(namespace))?,
        );
        if let Some(reason) = bypass {
            p.bypass = Some(reason);
            p.engine = Some(engine);
            return Ok(p);
        }
        p.read = !cc.skips_lookup();
        p.write = !cc.skips_store();
        p.ttl = cc.ttl.or(s.default_ttl);
        p.max_age = cc.max_age;
        if engine.semantic.is_some()
            && matches!(
                kind,
                CallKind::Chat | CallKind::TextCompletion | CallKind::Responses
            )
        {
            p.semantic = Some(SemanticInput {
                request: Arc::new(request.clone()),
                model_group: ctx.model_group.map(str::to_owned),
                namespace: namespace.map(str::to_owned),
                partition: ctx.partition.map(str::to_owned),
                forwarded: OPT_IN_FORWARDED_PARAMS
                    .iter()
                    .copied()
                    .filter(|p| ctx.forwarded.contains(p))
                    .collect(),
                min_similarity: cc.similarity_threshold,
            });
        }
        p.engine = Some(engine);
        Ok(p)
    }

    /// Deletes entries by full key from every tier (the proxy's `/cache/delete`).
    ///
    /// A key without the configured namespace is also tried with it (`k` → `ns:k`), as LiteLLM
    /// does. Returns how many keys existed (as far as the backend knows).
    ///
    /// # Errors
    /// The backend's error (admin calls report failures instead of hiding them).
    pub async fn delete(&self, keys: &[String]) -> Result<u64> {
        let Some(engine) = self.engine() else {
            return Err(CacheError::Config("the cache is disabled".to_owned()));
        };
        if !engine.backend.capabilities().delete {
            return Err(CacheError::unsupported(engine.backend.name(), "delete"));
        }
        let mut targets: Vec<String> = Vec::with_capacity(keys.len() * 2);
        for k in keys {
            targets.push(k.clone());
            if let Some(ns) = &engine.settings.namespace
                && !k.starts_with(&format!("{ns}:"))
            {
                targets.push(format!("{ns}:{k}"));
            }
        }
        let mut deleted = 0;
        for k in &targets {
            engine.l1_invalidate(k);
            let existed = engine
                .admin(engine.backend.delete(k), "delete", &self.shared.stats)
                .await;
            // Again after the backend delete: a lookup that read the entry in between must not
            // leave it in L1.
            engine.l1_invalidate(k);
            deleted += u64::from(existed?);
        }
        Ok(deleted)
    }

    /// Removes every entry of a namespace from every tier (default: the configured namespace;
    /// with none configured, every entry the backend owns). The proxy's `/cache/flushall`.
    ///
    /// # Errors
    /// The backend's error.
    pub async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let Some(engine) = self.engine() else {
            return Err(CacheError::Config("the cache is disabled".to_owned()));
        };
        let ns = namespace.or(engine.settings.namespace.as_deref());
        engine.l1_clear(ns);
        let n = engine
            .admin(engine.backend.clear(ns), "clear", &self.shared.stats)
            .await;
        engine.l1_clear(ns);
        let n = n?;
        if let Some(sem) = &engine.semantic {
            engine
                .admin(sem.clear(ns), "clear", &self.shared.stats)
                .await?;
        }
        Ok(n)
    }

    /// Checks the backend: a ping plus a test write and read (LiteLLM's `/cache/ping` writes a
    /// test entry too).
    ///
    /// # Errors
    /// The backend's error when the ping fails.
    pub async fn ping(&self) -> Result<PingReport> {
        let Some(engine) = self.engine() else {
            return Err(CacheError::Config("the cache is disabled".to_owned()));
        };
        let stats = &self.shared.stats;
        let health = engine.admin(engine.backend.ping(), "ping", stats).await?;
        let key = CacheKey::new(
            engine.settings.namespace.as_deref(),
            "llm-cache-health-check",
        );
        let probe = Entry::new(
            CallKind::Chat,
            Bytes::from_static(b"{\"ping\":true}"),
            None,
            Some(Duration::from_secs(60)),
        )
        .encode();
        let set_ok = match engine
            .admin(
                engine
                    .backend
                    .set(key.as_str(), probe.clone(), Some(Duration::from_secs(60))),
                "set",
                stats,
            )
            .await
        {
            Ok(()) => matches!(
                engine.admin(engine.backend.get(key.as_str()), "get", stats).await,
                Ok(Some(v)) if v == probe
            ),
            Err(_) => false,
        };
        let semantic = match &engine.semantic {
            None => None,
            Some(s) => Some(
                engine
                    .admin(s.ping(), "ping", stats)
                    .await
                    .map_err(|e| e.to_string()),
            ),
        };
        Ok(PingReport {
            health,
            set_ok,
            breaker: engine.breaker.state(),
            semantic,
        })
    }

    /// Waits (bounded) for background writes, then flushes the backend. Call on shutdown.
    ///
    /// # Errors
    /// The backend's flush error.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        engine.writes.close();
        let drained = tokio::time::timeout(timeout, engine.writes.wait()).await;
        engine.writes.reopen();
        if drained.is_err() {
            tracing::warn!(
                pending = engine.writes.len(),
                "cache flush: background writes still pending after {timeout:?}"
            );
        }
        engine
            .admin(engine.backend.flush(), "flush", &self.shared.stats)
            .await
    }

    /// The typed API: look the request up, or call `fetch` and store its result.
    ///
    /// Works with any serde request/response types (async-openai, hand-written structs,
    /// `serde_json::Value`).
    ///
    /// ```
    /// # use cache_core::{Cache, CacheControl, CallKind};
    /// # use serde_json::{json, Value};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = Cache::in_memory();
    /// let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    /// let call = || async {
    ///     Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "hello"}}]}))
    /// };
    /// let first = cache.get_or_fetch(CallKind::Chat, &request, &CacheControl::none(), call).await.unwrap();
    /// assert!(!first.status.is_hit());
    /// cache.flush(std::time::Duration::from_secs(1)).await.unwrap();
    /// let second = cache.get_or_fetch(CallKind::Chat, &request, &CacheControl::none(), call).await.unwrap();
    /// assert!(second.status.is_hit());
    /// assert_eq!(first.value, second.value);
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`CallError::Upstream`] when `fetch` fails, [`CallError::NotCached`] for an
    /// `only-if-cached` miss, [`CallError::Invalid`] for unusable cache input.
    pub async fn get_or_fetch<Req, Resp, F, Fut, E>(
        &self,
        kind: CallKind,
        request: &Req,
        cc: &CacheControl,
        fetch: F,
    ) -> std::result::Result<Cached<Resp>, CallError<E>>
    where
        Req: Serialize + ?Sized,
        Resp: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Resp, E>>,
    {
        let value = serde_json::to_value(request)
            .map_err(|e| CallError::Invalid(CacheError::Serialization(e.to_string())))?;
        let prepared = self
            .prepare(kind, &value, cc, &RequestContext::default())
            .map_err(CallError::Invalid)?;
        prepared
            .run(
                fetch,
                |r: &Resp| serde_json::to_vec(r).ok().map(Bytes::from),
                |b: &Bytes| serde_json::from_slice(b).ok(),
            )
            .await
    }
}

impl CacheEngine {
    async fn admin<T>(
        &self,
        fut: impl Future<Output = Result<T>>,
        op: &'static str,
        stats: &Stats,
    ) -> Result<T> {
        let res = match tokio::time::timeout(self.settings.admin_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Timeout {
                backend: self.backend.name().to_owned(),
                operation: op,
                after: self.settings.admin_timeout,
            }),
        };
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
        let res = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Timeout {
                backend: self.backend.name().to_owned(),
                operation: op,
                after: timeout,
            }),
        };
        match res {
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

/// Checks a decoded entry against the request. `Err` is the miss reason.
fn validate(
    raw: &Bytes,
    kind: CallKind,
    max_age: Option<Duration>,
    now: u64,
) -> std::result::Result<(Entry, Duration), MissReason> {
    let entry = Entry::decode(raw).map_err(|e| {
        tracing::debug!(error = %e, "unusable cache entry");
        MissReason::Unusable
    })?;
    if entry.kind != kind {
        return Err(MissReason::Unusable);
    }
    if entry.is_expired(now) {
        return Err(MissReason::NotFound);
    }
    let age = entry.age(now);
    if let Some(max) = max_age
        && (max.is_zero() || age > max)
    {
        return Err(MissReason::Stale);
    }
    Ok((entry, age))
}

impl Prepared {
    /// The key (also for bypassed requests, for the `x-litellm-cache-key` header).
    pub fn key(&self) -> Option<&CacheKey> {
        self.key.as_ref()
    }

    /// The call kind.
    pub fn kind(&self) -> CallKind {
        self.kind
    }

    /// Why the cache does not apply, if it does not.
    pub fn bypass_reason(&self) -> Option<&'static str> {
        self.bypass
    }

    /// Whether the lookup runs.
    pub fn reads(&self) -> bool {
        self.bypass.is_none() && self.read
    }

    /// Whether the result may be stored.
    pub fn writes(&self) -> bool {
        self.bypass.is_none() && self.write
    }

    /// Whether a miss must not go upstream.
    pub fn only_if_cached(&self) -> bool {
        self.only_if_cached
    }

    /// The TTL the entry will be written with.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The cache this request was prepared by.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub(crate) fn engine(&self) -> Option<&Arc<CacheEngine>> {
        self.engine.as_ref()
    }

    /// Looks the request up: L1, then the backend (deadline, breaker), then the semantic layer.
    pub async fn lookup(&self) -> Lookup {
        let start = Instant::now();
        let out = self.lookup_inner().await;
        self.lookup_nanos
            .store(start.elapsed().as_nanos() as u64, Relaxed);
        out
    }

    async fn lookup_inner(&self) -> Lookup {
        let stats = &self.cache.shared.stats;
        if let Some(reason) = self.bypass {
            stats.bypasses.fetch_add(1, Relaxed);
            self.cache.emit(|| CacheEvent {
                kind: EventKind::Bypass,
                key: None,
                backend: "cache",
                latency: Duration::ZERO,
                age: None,
                similarity: None,
                bytes: 0,
                detail: Some(reason),
            });
            return Lookup::Bypass(reason);
        }
        let (Some(engine), Some(key)) = (&self.engine, &self.key) else {
            return Lookup::Bypass("disabled");
        };
        if !self.read {
            stats.misses.fetch_add(1, Relaxed);
            return Lookup::Miss(MissReason::NoCache);
        }
        let start = Instant::now();
        let now = now_ms();
        let mut reason = MissReason::NotFound;

        if let Some(l1) = &engine.l1
            && let Some(raw) = l1.get_sync(key.as_str())
        {
            match validate(&raw, self.kind, self.max_age, now) {
                Ok((entry, age)) => {
                    return self.hit(engine, key, entry, age, Tier::L1, None, start);
                }
                Err(r) => reason = r,
            }
        }

        let backend_name = engine.backend.name();
        let generation = engine.l1_generation(key.as_str());
        match engine
            .guarded(
                engine.backend.get(key.as_str()),
                "get",
                engine.settings.read_timeout,
                stats,
            )
            .await
        {
            Ok(Some(raw)) => match validate(&raw, self.kind, self.max_age, now) {
                Ok((entry, age)) => {
                    engine.l1_fill(key.as_str(), &raw, entry.remaining_ttl(now), generation);
                    return self.hit(engine, key, entry, age, Tier::Backend, None, start);
                }
                Err(r) => {
                    if r == MissReason::Unusable {
                        stats.corrupt.fetch_add(1, Relaxed);
                        tracing::warn!(
                            backend = backend_name,
                            key = key.as_str(),
                            "unusable cache entry treated as a miss"
                        );
                    } else if r == MissReason::NotFound && !engine.backend.capabilities().native_ttl
                    {
                        self.delete_in_background(engine, key);
                    }
                    reason = r;
                }
            },
            Ok(None) => {}
            Err(None) => reason = MissReason::BreakerOpen,
            Err(Some(e)) => {
                reason = MissReason::Error;
                let msg = e.to_string();
                self.cache.emit_with(|emit| {
                    emit(&CacheEvent {
                        kind: EventKind::Error,
                        key: Some(key.as_str()),
                        backend: backend_name,
                        latency: start.elapsed(),
                        age: None,
                        similarity: None,
                        bytes: 0,
                        detail: Some(&msg),
                    })
                });
            }
        }

        if let (Some(sem), Some(input)) = (&engine.semantic, &self.semantic)
            && reason != MissReason::Stale
            && let Some((entry, age, similarity)) =
                self.semantic_lookup(engine, sem, input, now).await
        {
            return self.hit(
                engine,
                key,
                entry,
                age,
                Tier::Semantic,
                Some(similarity),
                start,
            );
        }

        let latency = start.elapsed();
        stats.misses.fetch_add(1, Relaxed);
        stats.lookup_latency.observe(latency);
        tracing::debug!(
            key = key.as_str(),
            reason = reason.as_str(),
            ?latency,
            "cache miss"
        );
        self.cache.emit_with(|emit| {
            emit(&CacheEvent {
                kind: EventKind::Miss,
                key: Some(key.as_str()),
                backend: backend_name,
                latency,
                age: None,
                similarity: None,
                bytes: 0,
                detail: Some(reason.as_str()),
            })
        });
        Lookup::Miss(reason)
    }

    async fn semantic_lookup(
        &self,
        engine: &CacheEngine,
        sem: &Arc<dyn SemanticLayer>,
        input: &SemanticInput,
        now: u64,
    ) -> Option<(Entry, Duration, f32)> {
        let stats = &self.cache.shared.stats;
        let Some(permit) = engine.semantic_breaker.try_acquire() else {
            stats.breaker_rejections.fetch_add(1, Relaxed);
            return None;
        };
        let req = input.as_request(self.kind, &engine.keys);
        let res = tokio::time::timeout(engine.settings.semantic_timeout, sem.lookup(&req)).await;
        let res = match res {
            Ok(r) => r,
            Err(_) => Err(CacheError::Timeout {
                backend: sem.name().to_owned(),
                operation: "semantic_lookup",
                after: engine.settings.semantic_timeout,
            }),
        };
        match res {
            Ok(Some(hit)) => {
                permit.success();
                match validate(&hit.value, self.kind, self.max_age, now) {
                    Ok((entry, age)) => Some((entry, age, hit.similarity)),
                    Err(_) => None,
                }
            }
            Ok(None) => {
                permit.success();
                None
            }
            Err(e) => {
                // Every outcome is reported: a non-transient error says the backend answered.
                if e.is_transient() {
                    permit.failure();
                } else {
                    permit.success();
                }
                stats.record_error(sem.name(), "semantic_lookup", e.kind_label());
                tracing::warn!(backend = sem.name(), error = %e, "semantic lookup failed; treated as a miss");
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hit(
        &self,
        engine: &CacheEngine,
        key: &CacheKey,
        entry: Entry,
        age: Duration,
        tier: Tier,
        similarity: Option<f32>,
        start: Instant,
    ) -> Lookup {
        let stats = &self.cache.shared.stats;
        let latency = start.elapsed();
        match tier {
            Tier::L1 => stats.hits_l1.fetch_add(1, Relaxed),
            Tier::Backend => stats.hits_backend.fetch_add(1, Relaxed),
            Tier::Semantic => stats.hits_semantic.fetch_add(1, Relaxed),
        };
        stats.lookup_latency.observe(latency);
        stats
            .bytes_served
            .fetch_add(entry.body.len() as u64, Relaxed);
        if let Some(u) = &entry.usage {
            stats
                .prompt_tokens_saved
                .fetch_add(u.prompt_tokens, Relaxed);
            stats
                .completion_tokens_saved
                .fetch_add(u.completion_tokens, Relaxed);
        }
        let backend = match tier {
            Tier::L1 => MemoryBackend::NAME,
            Tier::Backend => engine.backend.name(),
            Tier::Semantic => engine.semantic.as_ref().map_or("semantic", |s| s.name()),
        };
        tracing::debug!(key = key.as_str(), backend, ?age, ?latency, "cache hit");
        self.cache.emit_with(|emit| {
            emit(&CacheEvent {
                kind: EventKind::Hit,
                key: Some(key.as_str()),
                backend,
                latency,
                age: Some(age),
                similarity,
                bytes: entry.body.len(),
                detail: None,
            })
        });
        Lookup::Hit(Hit {
            entry,
            age,
            tier,
            similarity,
        })
    }

    fn delete_in_background(&self, engine: &Arc<CacheEngine>, key: &CacheKey) {
        let engine = engine.clone();
        let key = key.as_str().to_owned();
        let cache = self.cache.clone();
        engine.clone().write_behind(async move {
            let _ = engine
                .guarded(
                    engine.backend.delete(&key),
                    "delete",
                    engine.settings.write_timeout,
                    cache.stats(),
                )
                .await;
        });
    }

    /// Stores a response body (JSON) in the background, without waiting for the backend.
    /// Returns whether a write was started: not for bypassed/`no-store` requests, non-JSON
    /// bodies, or responses without output.
    pub fn store(&self, body: Bytes) -> bool {
        self.detach(self.begin_store(body))
    }

    /// [`Prepared::store`] for a body the caller has already parsed.
    pub fn store_parsed(&self, body: Bytes, parsed: &Value) -> bool {
        self.detach(self.begin_store_parsed(body, parsed))
    }

    /// Stores a response body and waits, at most the read deadline, for the backend to accept
    /// the write: what `Cache-Status` reports as `stored`. A write still running then goes on
    /// in the background ([`StoreOutcome::Pending`]).
    pub async fn store_confirmed(&self, body: Bytes) -> StoreOutcome {
        match (self.begin_store(body), &self.engine) {
            (Some(write), Some(engine)) => engine.acknowledge(write, self.ack_budget(engine)).await,
            _ => StoreOutcome::NotRequested,
        }
    }

    /// What is left of the read deadline after the lookup.
    fn ack_budget(&self, engine: &CacheEngine) -> Duration {
        engine
            .settings
            .read_timeout
            .saturating_sub(Duration::from_nanos(self.lookup_nanos.load(Relaxed)))
    }

    fn detach(&self, write: Option<StoreWrite>) -> bool {
        match (write, &self.engine) {
            (Some(write), Some(engine)) => {
                engine.write_behind(async move {
                    write.await;
                });
                true
            }
            _ => false,
        }
    }

    fn begin_store(&self, body: Bytes) -> Option<StoreWrite> {
        if !self.writes() {
            return None;
        }
        let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
            tracing::debug!("response is not JSON; not stored");
            return None;
        };
        self.begin_store_parsed(body, &parsed)
    }

    fn begin_store_parsed(&self, body: Bytes, parsed: &Value) -> Option<StoreWrite> {
        if !self.writes() || !has_output(self.kind, parsed) {
            return None;
        }
        let usage = Usage::from_response(parsed);
        self.begin_store_entry(Entry::new(self.kind, body, usage, self.ttl))
    }

    /// Puts the entry in L1 at once and returns the backend write, not yet started. The
    /// semantic store (which may run an embedding model) follows in its own background task,
    /// outside what the write's acknowledgement waits for.
    fn begin_store_entry(&self, entry: Entry) -> Option<StoreWrite> {
        let (Some(engine), Some(key)) = (&self.engine, &self.key) else {
            return None;
        };
        let raw = entry.encode();
        engine.l1_store(key.as_str(), &raw, self.ttl);
        let generation = engine.l1_generation(key.as_str());
        let ttl = self.ttl;
        let key_s = key.as_str().to_owned();
        let cache = self.cache.clone();
        let eng = engine.clone();
        let semantic = self.semantic.clone();
        let kind = self.kind;
        let bytes = raw.len();
        let write = async move {
            let start = Instant::now();
            let stats = cache.stats();
            let res = eng
                .guarded(
                    eng.backend.set(&key_s, raw.clone(), ttl),
                    "set",
                    eng.settings.write_timeout,
                    stats,
                )
                .await;
            let outcome = store_outcome(res, stats, 1);
            if outcome.is_stored() {
                cache.emit_with(|emit| {
                    emit(&CacheEvent {
                        kind: EventKind::Store,
                        key: Some(&key_s),
                        backend: eng.backend.name(),
                        latency: start.elapsed(),
                        age: None,
                        similarity: None,
                        bytes,
                        detail: None,
                    })
                });
            }
            // A lookup that read the old entry while this write was in flight may have put it
            // in L1: put the new one back, unless a delete or clear came since.
            if eng.l1_generation(&key_s) == generation {
                eng.l1_store(&key_s, &raw, ttl);
            } else {
                eng.l1_invalidate(&key_s);
            }
            if let (Some(_), Some(input)) = (&eng.semantic, semantic) {
                let eng2 = eng.clone();
                eng.writes.spawn(async move {
                    let Some(sem) = eng2.semantic.as_ref() else {
                        return;
                    };
                    let req = input.as_request(kind, &eng2.keys);
                    let res = tokio::time::timeout(
                        eng2.settings.write_timeout,
                        sem.store(&req, raw, ttl),
                    )
                    .await;
                    let stats = cache.stats();
                    match res {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            stats.record_error(sem.name(), "semantic_store", e.kind_label());
                            tracing::warn!(backend = sem.name(), error = %e, "semantic store failed");
                        }
                        Err(_) => {
                            stats.record_error(sem.name(), "semantic_store", "timeout");
                            tracing::warn!(backend = sem.name(), "semantic store timed out");
                        }
                    }
                });
            }
            outcome
        };
        Some(contain_panics(write))
    }

    /// Lookup, then on a miss a single-flight upstream call whose result is stored.
    ///
    /// `fetch` returns the response body (JSON bytes) or the caller's error; errors are never
    /// cached and never handed to other waiting requests.
    ///
    /// # Errors
    /// [`CallError::Upstream`] from `fetch`; [`CallError::NotCached`] for an `only-if-cached` miss.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        fetch: F,
    ) -> std::result::Result<Cached<Bytes>, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Bytes, E>>,
    {
        self.run(
            fetch,
            |b: &Bytes| Some(b.clone()),
            |b: &Bytes| Some(b.clone()),
        )
        .await
    }

    /// The shared request flow over any response type.
    async fn run<T, F, Fut, E>(
        &self,
        fetch: F,
        encode: impl Fn(&T) -> Option<Bytes>,
        decode: impl Fn(&Bytes) -> Option<T>,
    ) -> std::result::Result<Cached<T>, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let stats = &self.cache.shared.stats;
        let reason = match self.lookup().await {
            Lookup::Hit(hit) => match decode(&hit.entry.body) {
                Some(value) => {
                    return Ok(Cached {
                        value,
                        status: CacheStatus::Hit {
                            tier: hit.tier,
                            age: hit.age,
                            similarity: hit.similarity,
                        },
                        key: self.key.clone(),
                        entry: Some(hit.entry),
                    });
                }
                None => {
                    stats.corrupt.fetch_add(1, Relaxed);
                    Some(MissReason::Unusable)
                }
            },
            Lookup::Miss(r) => Some(r),
            Lookup::Bypass(_) => None,
        };
        if self.only_if_cached {
            return Err(CallError::NotCached);
        }
        let status = |store: StoreOutcome| match (reason, self.bypass) {
            (Some(reason), _) => CacheStatus::Miss { reason, store },
            (None, reason) => CacheStatus::Bypass {
                reason: reason.unwrap_or("disabled"),
            },
        };
        let mut fetch = Some(fetch);

        if let (Some(engine), Some(key), true) = (&self.engine, &self.key, self.reads())
            && engine.settings.coalesce
        {
            for _ in 0..3 {
                match engine.flights.join(key.as_str()) {
                    Join::Lead(leader) => {
                        let f = fetch.take().expect("fetch is called once");
                        let value = f().await.map_err(CallError::Upstream)?;
                        // L1 gets the entry before the followers are woken; the leader then
                        // waits (bounded) for the backend to accept the write.
                        let write = encode(&value).and_then(|body| {
                            let write = self.begin_store(body.clone());
                            leader.publish(body);
                            write
                        });
                        let store = match write {
                            Some(write) => engine.acknowledge(write, self.ack_budget(engine)).await,
                            None => StoreOutcome::NotRequested,
                        };
                        return Ok(Cached {
                            value,
                            status: status(store),
                            key: self.key.clone(),
                            entry: None,
                        });
                    }
                    Join::Follow(rx) => {
                        match Flights::wait(rx, engine.settings.coalesce_timeout).await {
                            Waited::Done(body) => {
                                if let Some(value) = decode(&body) {
                                    stats.coalesced.fetch_add(1, Relaxed);
                                    self.cache.emit_with(|emit| {
                                        emit(&CacheEvent {
                                            kind: EventKind::Coalesced,
                                            key: Some(key.as_str()),
                                            backend: "upstream",
                                            latency: Duration::ZERO,
                                            age: None,
                                            similarity: None,
                                            bytes: body.len(),
                                            detail: None,
                                        })
                                    });
                                    return Ok(Cached {
                                        value,
                                        status: CacheStatus::Coalesced,
                                        key: self.key.clone(),
                                        entry: None,
                                    });
                                }
                                break;
                            }
                            Waited::Retry => continue,
                            Waited::TimedOut => break,
                        }
                    }
                }
            }
        }

        let f = fetch.take().expect("fetch is called once");
        let value = f().await.map_err(CallError::Upstream)?;
        let store = match encode(&value) {
            Some(body) => self.store_confirmed(body).await,
            None => StoreOutcome::NotRequested,
        };
        Ok(Cached {
            value,
            status: status(store),
            key: self.key.clone(),
            entry: None,
        })
    }
}

impl Cache {
    /// Writes encoded entries to L1 and to the backend, waiting (bounded) for the backend to
    /// accept them.
    pub(crate) async fn write_many(
        &self,
        engine: &Arc<CacheEngine>,
        entries: Vec<(String, Bytes)>,
        ttl: Option<Duration>,
        budget: Duration,
    ) -> StoreOutcome {
        if entries.is_empty() {
            return StoreOutcome::NotRequested;
        }
        for (k, v) in &entries {
            engine.l1_store(k, v, ttl);
        }
        let eng = engine.clone();
        let cache = self.clone();
        let write = contain_panics(async move {
            let n = entries.len() as u64;
            let stats = cache.stats();
            let res = eng
                .guarded(
                    eng.backend.set_many(entries, ttl),
                    "set_many",
                    eng.settings.write_timeout,
                    stats,
                )
                .await;
            store_outcome(res, stats, n)
        });
        engine.acknowledge(write, budget).await
    }
}

/// A backend write in progress: resolves to what became of it. Panics inside are contained.
type StoreWrite = Pin<Box<dyn Future<Output = StoreOutcome> + Send>>;

fn contain_panics(write: impl Future<Output = StoreOutcome> + Send + 'static) -> StoreWrite {
    use futures::FutureExt as _;
    Box::pin(std::panic::AssertUnwindSafe(write).catch_unwind().map(|r| {
        r.unwrap_or_else(|_| {
            tracing::error!("cache backend panicked in a write; the write is dropped");
            StoreOutcome::Failed(StoreFailure::Error)
        })
    }))
}

/// Counts a finished write of `entries` entries and says what became of it.
fn store_outcome(
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
