//! What the cache reports about a request.

use std::time::Duration;

use crate::backend::Health;
use crate::breaker::BreakerState;
use crate::envelope::Entry;
use crate::error::CacheError;
use crate::key::CacheKey;

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

/// What cross-replica coalescing decided for a miss ([`crate::Prepared::coordinate`]).
#[derive(Debug)]
pub enum Coordinated {
    /// This request holds the key's lease: call upstream and store; the lease is released
    /// once the entry is written (or the request is dropped).
    Lead,
    /// Another process's upstream call stored the entry while this one waited: answer from it.
    Answer(Hit),
    /// No coordination (none configured, not applicable, a coordinator error, or waited
    /// `coalesce_timeout` in vain): call upstream alone.
    Alone,
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
