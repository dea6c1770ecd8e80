//! Settings and the builder.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::engine::L1_GENERATION_SHARDS;
use super::{Cache, CacheEngine};
use crate::backend::{CacheBackend, SharedBackend};
use crate::breaker::{Breaker, BreakerConfig};
use crate::coordination::InvalidationSink;
use crate::envelope::Encoding;
use crate::flight::Flights;
use crate::key::{CallKind, KeyBuilder, KeyOptions};
use crate::memory::{MemoryBackend, MemoryConfig};
use crate::semantic::SemanticLayer;

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

/// The default byte bound of an L1 tier: 128 MiB (10,000 entries of up to 1 MiB would otherwise
/// allow ~10 GiB).
pub const DEFAULT_L1_MAX_BYTES: u64 = 128 * 1024 * 1024;

impl Default for L1Config {
    /// 10,000 entries and [`DEFAULT_L1_MAX_BYTES`] at most, 60 s.
    fn default() -> Self {
        L1Config {
            memory: MemoryConfig::default()
                .with_max_items(Some(10_000))
                .with_max_bytes(Some(DEFAULT_L1_MAX_BYTES)),
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
    /// Coalesce misses across processes too, through the backend's
    /// [`Coordinator`](crate::Coordinator) when it has one (Redis). Needs [`Self::coalesce`].
    pub coalesce_across_replicas: bool,
    /// Lifetime of a cross-replica lease: renewed while its holder lives, so a holder that
    /// dies frees the key within this time.
    pub coalesce_lease: Duration,
    /// Optional in-memory tier in front of the backend.
    pub l1: Option<L1Config>,
    /// How entries are written to the backend. `None` (default): [`Encoding::COMPACT`]
    /// (compressed, packed floats) for shared or persistent backends, [`Encoding::JSON`] for
    /// process-local ones (a memory hit then never decompresses). Reads accept both.
    pub encoding: Option<Encoding>,
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
            coalesce_across_replicas: true,
            coalesce_lease: Duration::from_secs(5),
            l1: None,
            encoding: None,
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
        let coordinator = self.backend.coordinator();
        let caps = self.backend.capabilities();
        let encoding = settings
            .encoding
            .unwrap_or(if caps.shared || caps.persistent {
                Encoding::COMPACT
            } else {
                Encoding::JSON
            });
        let l1_listens = coordinator.is_some() && settings.l1.is_some();
        let engine = Arc::new(CacheEngine {
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
            // With other processes able to invalidate, L1 waits until it can hear them.
            l1_live: AtomicBool::new(!l1_listens),
            invalidations_received: AtomicU64::new(0),
            coordinator,
            encoding,
            coordination_off: AtomicBool::new(false),
            read_hit_ratio: Default::default(),
            settings,
        });
        if l1_listens && let Some(c) = &engine.coordinator {
            let sink: Arc<dyn InvalidationSink> = engine.clone();
            c.subscribe(Arc::downgrade(&sink));
        }
        engine
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        Cache::new(Some(self.build_engine()))
    }
}
