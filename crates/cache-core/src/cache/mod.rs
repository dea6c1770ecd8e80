//! The orchestration: the one place that turns a request into a hit or a miss.
//!
//! ```text
//! prepare:  gates (enabled, call type, mode, max_messages) → directives → key
//! lookup:   L1 (memory) → breaker → backend with a deadline → decode + validate → semantic
//! miss:     single-flight (one upstream call per key) → store, acknowledged within the deadline
//! ```
//!
//! Fail-open: every backend call has a deadline; an error, a timeout or an open breaker is a miss,
//! logged with `tracing` and counted in [`Stats`]. A request spends at most one read deadline in
//! the cache; writes never fail the call.
//!
//! * [`request`](self): the request path, top to bottom: prepare → lookup → hit or fetch → store.
//! * `settings`: [`CacheSettings`], [`CacheBuilder`].
//! * `engine`: [`CacheEngine`] — one configuration's backend, tiers, breakers and deadlines.
//! * `status`: what the cache reports ([`CacheStatus`], [`Lookup`], [`StoreOutcome`], ...).
//! * `admin`: delete, clear, ping, flush.

mod admin;
mod engine;
mod request;
mod settings;
mod status;

pub use engine::CacheEngine;
pub(crate) use engine::StoreWrite;
pub use request::{Led, Prepared, RequestContext};
pub use settings::{CacheBuilder, CacheMode, CacheSettings, DEFAULT_L1_MAX_BYTES, L1Config};
pub use status::{
    CacheStatus, Cached, CallError, Coordinated, Hit, Lookup, MissReason, PingReport, StoreFailure,
    StoreOutcome, Tier,
};

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::backend::CacheBackend;
use crate::memory::MemoryBackend;
use crate::stats::{CacheEvent, CacheObserver, Stats};

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
}
