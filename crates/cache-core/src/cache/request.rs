//! The request path, top to bottom: [`Cache::prepare`] applies the gates and directives and
//! computes the key; [`Prepared::lookup`] tries L1, the backend and the semantic layer;
//! [`Prepared::get_or_fetch`] serves a hit or calls upstream once (single-flight) and stores
//! the answer.

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::engine::{contain_panics, store_outcome, with_deadline};
use super::{
    Cache, CacheEngine, CacheMode, CacheStatus, Cached, CallError, Coordinated, Hit, Lookup,
    MissReason, StoreOutcome, StoreWrite, Tier,
};
use crate::backend::CacheBackend;
use crate::coordination::{Invalidation, Lease, LeaseAttempt};
use crate::directives::CacheControl;
use crate::envelope::{Entry, Usage, now_ms};
use crate::error::{CacheError, Result};
use crate::flight::{Flights, Join, Waited};
use crate::key::{CacheKey, CallKind, KeyBuilder, KeyContext, OPT_IN_FORWARDED_PARAMS};
use crate::memory::MemoryBackend;
use crate::output::has_output;
use crate::semantic::{SemanticLayer, SemanticRequest};
use crate::stats::{CacheEvent, EventKind};

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
    /// Forwarded request headers that can change the answer: keyed (see
    /// [`KeyContext::headers`]).
    pub headers: &'a [(&'a str, &'a str)],
    /// Members kept as raw JSON text, not in the request value (see [`KeyContext::raw`]). Only
    /// for a cache without a semantic layer or `max_messages` (both read the parsed request).
    pub raw: &'a [(&'a str, &'a str)],
}

impl<'a> RequestContext<'a> {
    /// The key context for `namespace`.
    pub(crate) fn key_context(&self, namespace: Option<&'a str>) -> KeyContext<'a> {
        KeyContext {
            model_group: self.model_group,
            namespace,
            partition: self.partition,
            forwarded: self.forwarded,
            headers: self.headers,
            raw: self.raw,
        }
    }
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
    /// Milliseconds + 1 the upstream call took (0: unknown), recorded with the stored entry.
    upstream_ms: AtomicU64,
    /// The cross-replica lease this request holds ([`Prepared::coordinate`]), released once
    /// its entry is written, or when dropped.
    lease: Mutex<Option<Box<dyn Lease>>>,
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
            upstream_ms: AtomicU64::new(0),
            lease: Mutex::new(None),
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

/// The share of hits among recent in-flight reads below which the flight's leader reads with
/// its lease attempt ([`Prepared::lead_read`]). Per request, the lease read saves one round
/// trip on a miss (~30-100 µs of proxy CPU here, most of it waking threads) and costs the
/// store ~25 µs more work on a hit (a script instead of a `GET`, `INFO commandstats`), on the
/// one thread every replica shares: half keeps the store's extra work below the proxies'
/// savings.
const LEASE_READ_BELOW: f64 = 0.5;

/// What the leader of an in-process flight read ([`Prepared::lead_lookup`], and
/// [`Prepared::get_or_fetch`]'s own leader).
#[derive(Debug)]
pub enum Led {
    /// The entry (counted as a hit).
    Hit(Hit),
    /// A miss (counted; why), and what cross-process coordination decided for it.
    Miss(Coordinated, MissReason),
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

    /// Whether this request replaces an entry without reading it (`no-cache`).
    pub(crate) fn refreshes(&self) -> bool {
        self.writes() && !self.read
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
        self.set_lookup_time(start);
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
        let mut reason = match self.l1_read(engine, key, now, start) {
            Ok(hit) => return hit,
            Err(r) => r,
        };
        let generation = engine.l1_generation(key.as_str());
        let res = engine.guarded_get(key.as_str(), stats).await;
        if let Some(hit) = self.read_result(engine, key, res, generation, now, start, &mut reason) {
            return hit;
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
        self.record_miss(engine, key, reason, start)
    }

    /// The L1 step of a lookup: a hit, or why L1 had none.
    fn l1_read(
        &self,
        engine: &Arc<CacheEngine>,
        key: &CacheKey,
        now: u64,
        start: Instant,
    ) -> std::result::Result<Lookup, MissReason> {
        if let Some(l1) = engine.l1_active()
            && let Some(raw) = l1.get_sync(key.as_str())
        {
            return match validate(&raw, self.kind, self.max_age, now) {
                Ok((entry, age)) => Ok(self.hit(engine, key, entry, age, Tier::L1, None, start)),
                Err(r) => Err(r),
            };
        }
        Err(MissReason::NotFound)
    }

    /// What a read of the backend gave (`Err(None)`: the breaker skipped it): a hit (L1 filled
    /// from it), or `None` with `reason` updated.
    #[allow(clippy::too_many_arguments)]
    fn read_result(
        &self,
        engine: &Arc<CacheEngine>,
        key: &CacheKey,
        res: std::result::Result<Option<Bytes>, Option<CacheError>>,
        generation: u64,
        now: u64,
        start: Instant,
        reason: &mut MissReason,
    ) -> Option<Lookup> {
        let stats = &self.cache.shared.stats;
        let backend_name = engine.backend.name();
        match res {
            Ok(Some(raw)) => match validate(&raw, self.kind, self.max_age, now) {
                Ok((entry, age)) => {
                    engine.l1_fill(
                        key.as_str(),
                        &raw,
                        &entry,
                        entry.remaining_ttl(now),
                        generation,
                    );
                    return Some(self.hit(engine, key, entry, age, Tier::Backend, None, start));
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
                    *reason = r;
                }
            },
            Ok(None) => {}
            Err(None) => *reason = MissReason::BreakerOpen,
            Err(Some(e)) => {
                *reason = MissReason::Error;
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
        None
    }

    /// Counts a lookup that found nothing usable, and says so.
    fn record_miss(
        &self,
        engine: &CacheEngine,
        key: &CacheKey,
        reason: MissReason,
        start: Instant,
    ) -> Lookup {
        let stats = &self.cache.shared.stats;
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
                backend: engine.backend.name(),
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

    /// Coalesces a miss across processes (see [`crate::coordination`]). Called by the
    /// process-local leader of a miss (in-process followers wait for it), before it goes
    /// upstream: takes the key's lease ([`Coordinated::Lead`]), or waits while another process
    /// holds it and answers from the entry that process stored ([`Coordinated::Answer`]).
    /// Every step is bounded (the read deadline per store call, `coalesce_timeout` in all) and
    /// fails open ([`Coordinated::Alone`]).
    pub async fn coordinate(&self) -> Coordinated {
        match self.coordination() {
            Some((engine, key, coord)) => self.coordinate_from(engine, key, coord, None).await,
            None => Coordinated::Alone,
        }
    }

    /// What this request coordinates with, if it may coordinate at all.
    fn coordination(&self) -> Option<(&Arc<CacheEngine>, &CacheKey, &Arc<dyn crate::Coordinator>)> {
        let (engine, key) = (self.engine.as_ref()?, self.key.as_ref()?);
        let coord = engine.coalescing_coordinator()?;
        // A request that would not store the answer cannot lead others; one that skips the
        // lookup must not be answered from an entry. While the store is failing, no
        // coordination either (it would fail the same way).
        (self.reads() && self.writes() && engine.breaker_state() != crate::BreakerState::Open)
            .then_some((engine, key, coord))
    }

    /// The lease loop of [`Prepared::coordinate`], starting from `first` (an attempt already
    /// made) when given.
    async fn coordinate_from(
        &self,
        engine: &Arc<CacheEngine>,
        key: &CacheKey,
        coord: &Arc<dyn crate::Coordinator>,
        mut first: Option<LeaseAttempt>,
    ) -> Coordinated {
        let stats = &self.cache.shared.stats;
        let start = Instant::now();
        // Half of `coalesce_timeout`: the in-process followers waiting for this request (for
        // `coalesce_timeout`) still get its own upstream answer if the other replica never
        // delivers.
        let deadline = start + engine.settings.coalesce_timeout / 2;
        let mut waited = false;
        // Waits that ended with no entry (the holder's answer was not stored): after two, go
        // upstream rather than queue behind one replica after another.
        let mut empty_waits = 0;
        loop {
            let generation = engine.l1_generation(key.as_str());
            let attempt = match first.take() {
                Some(attempt) => Ok(attempt),
                None => {
                    with_deadline(
                        coord.name(),
                        "lease",
                        engine.settings.read_timeout,
                        coord.try_lease(key.as_str(), engine.settings.coalesce_lease),
                    )
                    .await
                }
            };
            // Coordination errors are counted and logged, never fed to the store's breaker (a
            // server refusing scripts must not turn the cache off); one that cannot pass by
            // retrying turns coordination off for this configuration.
            let attempt = attempt.map_err(|e| {
                stats.record_error(coord.name(), "lease", e.kind_label());
                if e.is_transient() {
                    tracing::debug!(backend = coord.name(), error = %e, "lease attempt failed; going upstream alone");
                } else {
                    engine.disable_coordination(&e);
                }
            });
            let attempt = match attempt {
                // A coordinator that cannot read the entry with the lease: after a wait, the
                // entry is read here first.
                Ok(LeaseAttempt::Acquired(lease)) if waited => {
                    match engine.guarded_get(key.as_str(), stats).await {
                        Ok(Some(raw)) => {
                            drop(lease);
                            Ok(LeaseAttempt::Stored(raw))
                        }
                        _ => Ok(LeaseAttempt::Acquired(lease)),
                    }
                }
                other => other,
            };
            match attempt {
                Ok(LeaseAttempt::Acquired(lease)) => {
                    *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                    return Coordinated::Lead;
                }
                Ok(LeaseAttempt::Stored(raw)) => {
                    let now = now_ms();
                    let Ok((entry, age)) = validate(&raw, self.kind, self.max_age, now) else {
                        return Coordinated::Alone;
                    };
                    engine.l1_fill(
                        key.as_str(),
                        &raw,
                        &entry,
                        entry.remaining_ttl(now),
                        generation,
                    );
                    stats.coalesced.fetch_add(1, Relaxed);
                    stats.coalesced_remote.fetch_add(1, Relaxed);
                    self.cache.emit_with(|emit| {
                        emit(&CacheEvent {
                            kind: EventKind::Coalesced,
                            key: Some(key.as_str()),
                            backend: coord.name(),
                            latency: start.elapsed(),
                            age: Some(age),
                            similarity: None,
                            bytes: entry.body.len(),
                            detail: Some("replica"),
                        })
                    });
                    return Coordinated::Answer(Hit {
                        entry,
                        age,
                        tier: Tier::Backend,
                        similarity: None,
                    });
                }
                Ok(LeaseAttempt::Held) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if waited {
                        empty_waits += 1;
                    }
                    if left.is_zero() || empty_waits >= 2 {
                        return Coordinated::Alone;
                    }
                    match tokio::time::timeout(left, coord.wait_lease(key.as_str(), left)).await {
                        // Released (or expired): the entry is there, or the lease is free.
                        Ok(Ok(true)) => waited = true,
                        Ok(Ok(false)) | Err(_) => {
                            tracing::debug!(
                                key = key.as_str(),
                                "waited coalesce_timeout for another replica; going upstream"
                            );
                            return Coordinated::Alone;
                        }
                        Ok(Err(e)) => {
                            stats.record_error(coord.name(), "wait_lease", e.kind_label());
                            tracing::warn!(backend = coord.name(), error = %e, "waiting for another replica failed; going upstream");
                            return Coordinated::Alone;
                        }
                    }
                }
                Err(()) => return Coordinated::Alone,
            }
        }
    }

    /// The coordinator of a request whose backend read is left to its in-process flight's
    /// leader ([`Prepared::lead_read`]): a request that reads, stores and would coordinate, with
    /// no semantic layer to consult after an exact miss.
    fn deferred_read(&self) -> Option<&Arc<dyn crate::Coordinator>> {
        let (engine, _, coord) = self.coordination()?;
        (!self.only_if_cached && engine.semantic.is_none()).then_some(coord)
    }

    /// The backend read of the in-process leader of a request that defers it
    /// ([`Prepared::deferred_read`]); a hit is handed to the flight's followers. Two ways:
    ///
    /// * **A `get`**, then on a miss the lease ([`Prepared::coordinate`]): two round trips
    ///   before upstream for a miss, the store's cheapest read for a hit.
    /// * **The lease attempt as the read**, when the coordinator returns the entry with it
    ///   ([`Coordinator::reads_entry`](crate::Coordinator::reads_entry)) and fewer than
    ///   [`LEASE_READ_BELOW`] of the recent reads hit: the entry if stored (a hit), else the
    ///   lease (a miss: this request leads) or a lease held elsewhere (a miss: wait as
    ///   [`Prepared::coordinate`] does). One round trip saved per storing miss, but the
    ///   store's work per hit is a script's rather than a `get`'s (Redis: ~28 µs against
    ///   ~3), so it is used only while most reads miss.
    ///
    /// Either runs with the store's breaker and read deadline, and counts its hit or miss as a
    /// lookup does; an error is a miss that goes upstream alone. A lease error that retrying
    /// cannot cure (a server refusing scripts) turns coordination off and reads the plain way.
    async fn lead_read(
        &self,
        engine: &Arc<CacheEngine>,
        key: &CacheKey,
        coord: &Arc<dyn crate::Coordinator>,
    ) -> Led {
        let stats = &self.cache.shared.stats;
        let start = Instant::now();
        let now = now_ms();
        let generation = engine.l1_generation(key.as_str());
        let ratio = &engine.read_hit_ratio;
        if !(coord.reads_entry() && ratio.get() < LEASE_READ_BELOW) {
            let res = engine.guarded_get(key.as_str(), stats).await;
            let found = matches!(res, Ok(Some(_)));
            let mut reason = MissReason::NotFound;
            let read = self.read_result(engine, key, res, generation, now, start, &mut reason);
            self.set_lookup_time(start);
            if let Some(Lookup::Hit(hit)) = read {
                ratio.record(true);
                return Led::Hit(hit);
            }
            self.record_miss(engine, key, reason, start);
            // Found but not usable (stale, corrupt): no lease to take. An error: no outcome.
            if reason != MissReason::NotFound {
                if found {
                    ratio.record(true);
                }
                return Led::Miss(Coordinated::Alone, reason);
            }
            ratio.record(false);
            let next = self.coordinate_from(engine, key, coord, None).await;
            return Led::Miss(next, reason);
        }
        let res = engine
            .guarded(
                coord.try_lease(key.as_str(), engine.settings.coalesce_lease),
                "lease",
                engine.settings.read_timeout,
                stats,
            )
            .await;
        if let Ok(attempt) = &res {
            ratio.record(matches!(attempt, LeaseAttempt::Stored(_)));
        }
        let mut reason = MissReason::NotFound;
        let (next, res) = match res {
            Ok(LeaseAttempt::Stored(raw)) => (Coordinated::Alone, Ok(Some(raw))),
            Ok(LeaseAttempt::Acquired(lease)) => {
                *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                (Coordinated::Lead, Ok(None))
            }
            Ok(LeaseAttempt::Held) => {
                self.record_miss(engine, key, reason, start);
                self.set_lookup_time(start);
                let next = self
                    .coordinate_from(engine, key, coord, Some(LeaseAttempt::Held))
                    .await;
                return Led::Miss(next, reason);
            }
            Err(Some(e)) if !e.is_transient() => {
                engine.disable_coordination(&e);
                (
                    Coordinated::Alone,
                    engine.guarded_get(key.as_str(), stats).await,
                )
            }
            Err(e) => (Coordinated::Alone, Err(e)),
        };
        let read = self.read_result(engine, key, res, generation, now, start, &mut reason);
        self.set_lookup_time(start);
        match read {
            Some(Lookup::Hit(hit)) => Led::Hit(hit),
            _ => {
                self.record_miss(engine, key, reason, start);
                Led::Miss(next, reason)
            }
        }
    }

    /// Whether this request leaves its backend read to the leader of its in-process flight,
    /// for callers that run their own flight instead of [`Prepared::get_or_fetch`] (the
    /// proxy's stream fan-out): a request that reads, stores and coordinates across
    /// processes. Such a request looks up only L1 first ([`Prepared::lookup_l1`]); if it leads
    /// its flight, [`Prepared::lead_lookup`] reads the store (with the lease attempt as the
    /// read where the coordinator allows it); if it follows and takes the leader's upstream
    /// answer, [`Prepared::count_deferred_miss`] counts its lookup.
    pub fn defers_read(&self) -> bool {
        self.deferred_read().is_some()
    }

    /// The L1 step of a lookup alone. A hit is counted as a lookup's; a miss is not (the
    /// backend read that follows counts it).
    pub fn lookup_l1(&self) -> Lookup {
        if let Some(reason) = self.bypass {
            return Lookup::Bypass(reason);
        }
        let (Some(engine), Some(key), true) = (&self.engine, &self.key, self.read) else {
            return Lookup::Miss(MissReason::NotFound);
        };
        match self.l1_read(engine, key, now_ms(), Instant::now()) {
            Ok(hit) => hit,
            Err(r) => Lookup::Miss(r),
        }
    }

    /// The backend read of the leader of a caller's own in-process flight, for a request that
    /// [defers its read](Prepared::defers_read): as [`Prepared::get_or_fetch`]'s leader reads,
    /// counted as a lookup. A miss comes with what coordination decided: [`Coordinated::Lead`]
    /// (this request holds the lease; storing the answer releases it), an answer another
    /// process stored meanwhile, or [`Coordinated::Alone`]. For a request that does not defer
    /// its read: a whole [`Prepared::lookup`], then [`Prepared::coordinate`] on a miss.
    pub async fn lead_lookup(&self) -> Led {
        let (Some(engine), Some(key), Some(coord)) =
            (&self.engine, &self.key, self.deferred_read())
        else {
            return match self.lookup().await {
                Lookup::Hit(hit) => Led::Hit(hit),
                Lookup::Miss(r) => Led::Miss(self.coordinate().await, r),
                Lookup::Bypass(_) => Led::Miss(Coordinated::Alone, MissReason::NotFound),
            };
        };
        self.lead_read(engine, key, coord).await
    }

    /// Counts the lookup of a request that [deferred its read](Prepared::defers_read) and
    /// took its flight leader's upstream answer: a miss, as its own read would have been.
    pub fn count_deferred_miss(&self) {
        if let (Some(engine), Some(key)) = (&self.engine, &self.key) {
            self.record_miss(engine, key, MissReason::NotFound, Instant::now());
        }
    }

    /// Whether another request's hit on this key answers this one: same call kind, and
    /// fresh enough for its `max-age`.
    fn accepts(&self, hit: &Hit) -> bool {
        hit.entry.kind == self.kind
            && self
                .max_age
                .is_none_or(|max| !max.is_zero() && hit.age <= max)
    }

    fn set_lookup_time(&self, start: Instant) {
        self.lookup_nanos
            .store(start.elapsed().as_nanos() as u64, Relaxed);
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

    /// Records how long the upstream call took (stored with the entry: what a hit saves). The
    /// cached call paths record it themselves; a caller that stores a stream records it first.
    pub fn set_upstream_time(&self, d: Duration) {
        self.upstream_ms.store(d.as_millis() as u64 + 1, Relaxed);
    }

    fn upstream_time(&self) -> Option<Duration> {
        match self.upstream_ms.load(Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms - 1)),
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
        self.begin_store_entry(
            Entry::new(self.kind, body, usage, self.ttl).with_upstream_time(self.upstream_time()),
        )
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
        // The backend's form (compact: compressed, packed floats); L1 and the semantic index
        // keep the JSON one.
        let stored = engine.encode_for_store(&entry, raw.clone());
        let generation = engine.l1_generation(key.as_str());
        let ttl = self.ttl;
        let key_s = key.as_str().to_owned();
        let cache = self.cache.clone();
        let eng = engine.clone();
        let semantic = self.semantic.clone();
        let kind = self.kind;
        let bytes = stored.len();
        let mut lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        // A refresh (`no-cache`) replaces an entry other replicas may hold in L1.
        let refresh = self.refreshes() && engine.coordinator.is_some();
        let write = async move {
            let start = Instant::now();
            let stats = cache.stats();
            // The lease holder's write and release in one step where the coordinator offers
            // it (Redis: one script instead of a SET then a release).
            let res = match lease.take_if(|l| l.stores_entry() && ttl != Some(Duration::ZERO)) {
                Some(lease) => {
                    eng.guarded(
                        lease.store_and_release(stored, ttl),
                        "set",
                        eng.settings.write_timeout,
                        stats,
                    )
                    .await
                }
                None => {
                    eng.guarded(
                        eng.backend.set(&key_s, stored, ttl),
                        "set",
                        eng.settings.write_timeout,
                        stats,
                    )
                    .await
                }
            };
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
            // After the write: the waiters the release wakes find the entry. In the
            // background: the caller's acknowledgement does not wait for it.
            // A refresh is published whatever became of the write: one that timed out may
            // still have replaced the entry.
            if lease.is_some() || refresh {
                let eng2 = eng.clone();
                let key2 = key_s.clone();
                let cache2 = cache.clone();
                eng.writes.spawn(async move {
                    if refresh {
                        eng2.publish_invalidation(Invalidation::Keys(vec![key2]), cache2.stats())
                            .await;
                    }
                    if let Some(lease) = lease {
                        let timeout = eng2.settings.write_timeout;
                        match tokio::time::timeout(timeout, lease.release()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                cache2.stats().record_error(eng2.backend.name(), "release", e.kind_label());
                                tracing::warn!(error = %e, "lease not released; it expires by itself");
                            }
                            Err(_) => {
                                cache2.stats().record_error(eng2.backend.name(), "release", "timeout");
                                tracing::warn!("lease release timed out; it expires by itself");
                            }
                        }
                    }
                });
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
        // A hit, as the caller's type; `Err(reason)` for an entry `decode` refuses.
        let answer = |hit: Hit| match decode(&hit.entry.body) {
            Some(value) => Ok(Cached {
                value,
                status: CacheStatus::Hit {
                    tier: hit.tier,
                    age: hit.age,
                    similarity: hit.similarity,
                },
                key: self.key.clone(),
                entry: Some(hit.entry),
            }),
            None => {
                stats.corrupt.fetch_add(1, Relaxed);
                Err(MissReason::Unusable)
            }
        };
        // A request that will coordinate reads the backend with its lease attempt, once it
        // leads its in-process flight (`lead_read`): only L1 is read here.
        let deferred = self.deferred_read();
        let looked = match deferred {
            Some(_) => self.lookup_l1(),
            None => self.lookup().await,
        };
        // An L1 hit is counted: this request's read is done, even if `decode` refuses it.
        let mut read_done = deferred.is_none() || matches!(looked, Lookup::Hit(_));
        // A lookup's outcome: the answer from a usable hit, else why not (`None`: bypassed).
        let settle = |looked: Lookup| match looked {
            Lookup::Hit(hit) => answer(hit).map_err(Some),
            Lookup::Miss(r) => Err(Some(r)),
            Lookup::Bypass(_) => Err(None),
        };
        let mut reason = match settle(looked) {
            Ok(cached) => return Ok(cached),
            Err(r) => r,
        };
        if self.only_if_cached {
            return Err(CallError::NotCached);
        }
        let status = |reason: Option<MissReason>, store: StoreOutcome| match (reason, self.bypass) {
            (Some(reason), _) => CacheStatus::Miss { reason, store },
            (None, reason) => CacheStatus::Bypass {
                reason: reason.unwrap_or("disabled"),
            },
        };
        let mut fetch = Some(fetch);

        if let (Some(engine), Some(key), true) = (&self.engine, &self.key, self.reads())
            && engine.settings.coalesce
        {
            'flights: for _ in 0..3 {
                match engine.flights.join(key.as_str()) {
                    Join::Lead(leader) => {
                        let coordinated = match deferred {
                            // The leader returns below: its read is done for good.
                            Some(coord) if !read_done => {
                                read_done = true;
                                let read = self.lead_read(engine, key, coord).await;
                                let (next, r) = match read {
                                    // Handed to the in-process followers as a hit: each
                                    // checks its own `max-age`.
                                    Led::Hit(hit) => match answer(hit.clone()) {
                                        Ok(cached) => {
                                            leader.publish_hit(hit);
                                            return Ok(cached);
                                        }
                                        Err(r) => (Coordinated::Alone, r),
                                    },
                                    Led::Miss(next, r) => (next, r),
                                };
                                reason = Some(r);
                                if matches!(r, MissReason::Stale | MissReason::Unusable) {
                                    // An entry this request cannot use (stale for its
                                    // `max-age`, or one it cannot decode): its followers may
                                    // still hit. They are released to read for themselves,
                                    // and this request goes upstream outside the flight.
                                    drop(leader);
                                    break 'flights;
                                }
                                // Not found (lead, wait or go alone), or a failed read
                                // (alone): the followers take this request's answer.
                                next
                            }
                            _ => self.coordinate().await,
                        };
                        if let Coordinated::Answer(hit) = coordinated
                            && let Some(value) = decode(&hit.entry.body)
                        {
                            // In-process followers take what the leader gets without their
                            // own `max-age` check: only a fresh entry is handed on (an older
                            // one drops them back to their own lookup).
                            if hit.age < Duration::from_secs(1) {
                                leader.publish(hit.entry.body.clone());
                            }
                            return Ok(Cached {
                                value,
                                status: CacheStatus::Coalesced,
                                key: self.key.clone(),
                                entry: Some(hit.entry),
                            });
                        }
                        let f = fetch.take().expect("fetch is called once");
                        let started = Instant::now();
                        let value = f().await.map_err(CallError::Upstream)?;
                        self.set_upstream_time(started.elapsed());
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
                            status: status(reason, store),
                            key: self.key.clone(),
                            entry: None,
                        });
                    }
                    Join::Follow(rx) => {
                        match Flights::wait(rx, engine.settings.coalesce_timeout).await {
                            Waited::Done(body) => {
                                if let Some(value) = decode(&body) {
                                    // A follower that deferred its read missed with its
                                    // leader: counted as its lookup would have been.
                                    if !read_done {
                                        self.record_miss(
                                            engine,
                                            key,
                                            MissReason::NotFound,
                                            Instant::now(),
                                        );
                                    }
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
                            // The entry the leader's read found: a hit for this request too,
                            // if fresh enough for it; else its own read (below).
                            Waited::Hit(hit) if !read_done && self.accepts(&hit) => {
                                let Hit { entry, age, .. } = *hit;
                                let looked = self.hit(
                                    engine,
                                    key,
                                    entry,
                                    age,
                                    Tier::Backend,
                                    None,
                                    Instant::now(),
                                );
                                match settle(looked) {
                                    Ok(cached) => return Ok(cached),
                                    Err(r) => {
                                        read_done = true;
                                        reason = r.or(reason);
                                    }
                                }
                            }
                            // The leader handed nothing on (it failed, or found an entry too
                            // old for this request): a follower that deferred its read makes
                            // it now, in parallel with the others, then leads or follows
                            // again on a miss.
                            Waited::Retry | Waited::Hit(_) if !read_done => {
                                read_done = true;
                                match settle(self.lookup().await) {
                                    Ok(cached) => return Ok(cached),
                                    Err(r) => reason = r.or(reason),
                                }
                            }
                            // A follower that had read for itself and missed: the entry the
                            // leader found since answers it, coalesced (on top of its miss).
                            Waited::Hit(hit) if self.accepts(&hit) => {
                                if let Some(value) = decode(&hit.entry.body) {
                                    stats.coalesced.fetch_add(1, Relaxed);
                                    return Ok(Cached {
                                        value,
                                        status: CacheStatus::Coalesced,
                                        key: self.key.clone(),
                                        entry: Some(hit.entry),
                                    });
                                }
                            }
                            Waited::Retry | Waited::Hit(_) => continue,
                            Waited::TimedOut => break,
                        }
                    }
                }
            }
        }

        // A request that deferred its read and never made it (it followed until it gave up).
        if !read_done {
            match settle(self.lookup().await) {
                Ok(cached) => return Ok(cached),
                Err(r) => reason = r.or(reason),
            }
        }
        let f = fetch.take().expect("fetch is called once");
        let started = Instant::now();
        let value = f().await.map_err(CallError::Upstream)?;
        self.set_upstream_time(started.elapsed());
        let store = match encode(&value) {
            Some(body) => self.store_confirmed(body).await,
            None => StoreOutcome::NotRequested,
        };
        Ok(Cached {
            value,
            status: status(reason, store),
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
        entries: Vec<(String, Entry)>,
        ttl: Option<Duration>,
        budget: Duration,
        refresh: bool,
    ) -> StoreOutcome {
        if entries.is_empty() {
            return StoreOutcome::NotRequested;
        }
        let entries: Vec<(String, Bytes)> = entries
            .into_iter()
            .map(|(k, e)| {
                let json = e.encode();
                engine.l1_store(&k, &json, ttl);
                let stored = engine.encode_for_store(&e, json);
                (k, stored)
            })
            .collect();
        let eng = engine.clone();
        let cache = self.clone();
        // A refresh (`no-cache`) tells the other processes to drop their L1 copies.
        let refreshed: Vec<String> = if refresh && engine.coordinator.is_some() {
            entries.iter().map(|(k, _)| k.clone()).collect()
        } else {
            Vec::new()
        };
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
            if !refreshed.is_empty() {
                let (eng2, cache2) = (eng.clone(), cache.clone());
                eng.writes.spawn(async move {
                    eng2.publish_invalidation(Invalidation::Keys(refreshed), cache2.stats())
                        .await;
                });
            }
            store_outcome(res, stats, n)
        });
        engine.acknowledge(write, budget).await
    }
}
