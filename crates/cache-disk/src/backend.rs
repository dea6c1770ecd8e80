//! [`DiskBackend`]: the [`CacheBackend`] over the store, and the background maintenance
//! thread (sweeping expired entries, recovering from I/O failures).

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::{CacheBackend, CacheError, Capabilities, Health, Result};

use crate::NAME;
use crate::config::{DiskConfig, DiskEngine};
use crate::log::LogStore;
use crate::store::{DiskStats, Store};

/// The storage engine behind the backend (see [`DiskEngine`]).
#[derive(Debug)]
enum Engine {
    Sled(Store),
    Log(LogStore),
}

/// Calls the same method on whichever engine is open.
macro_rules! each {
    ($e:expr, $s:ident => $call:expr) => {
        match $e {
            Engine::Sled($s) => $call,
            Engine::Log($s) => $call,
        }
    };
}

impl Engine {
    fn open(config: DiskConfig) -> Result<Engine> {
        let (other, name) = match config.engine {
            DiskEngine::Sled => (crate::log::LOG_DIR, "log"),
            DiskEngine::Log => (crate::store::DB_DIR, "sled"),
        };
        let leftover = config.dir.join(other);
        if leftover.is_dir() {
            tracing::warn!(
                backend = NAME,
                folder = %leftover.display(),
                bytes = crate::allocated_bytes(&leftover),
                "{} holds a disk cache of the {name} engine, which this one does not read:                  delete it, or set disk_cache_engine: {name} to use it again",
                leftover.display()
            );
        }
        Ok(match config.engine {
            DiskEngine::Sled => Engine::Sled(Store::open(config)?),
            DiskEngine::Log => Engine::Log(LogStore::open(config)?),
        })
    }
    fn config(&self) -> &DiskConfig {
        each!(self, s => s.config())
    }
    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        each!(self, s => s.get(key))
    }
    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        each!(self, s => s.set(key, value, ttl))
    }
    fn delete(&self, key: &str) -> Result<bool> {
        each!(self, s => s.delete(key))
    }
    fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        each!(self, s => s.clear(namespace))
    }
    fn flush(&self) -> Result<()> {
        each!(self, s => s.flush())
    }
    fn ping(&self) -> Result<()> {
        each!(self, s => s.ping())
    }
    fn stats(&self) -> DiskStats {
        each!(self, s => s.stats())
    }
    fn sweep_expired(&self, stop: &dyn Fn() -> bool) -> Result<u64> {
        each!(self, s => s.sweep_expired(stop))
    }
    fn sync_writes(&self) -> bool {
        each!(self, s => s.sync_writes())
    }
    fn max_value_size(&self) -> usize {
        each!(self, s => s.max_value_size())
    }
    fn db_path(&self) -> &std::path::Path {
        each!(self, s => s.db_path())
    }
    fn moved_aside(&self) -> Option<&std::path::Path> {
        each!(self, s => s.moved_aside())
    }
    fn lock_path(&self) -> &std::path::Path {
        each!(self, s => s.lock_path())
    }
    /// sled reopens after an I/O failure; the log recovers on its next write.
    fn needs_recovery(&self) -> bool {
        match self {
            Engine::Sled(s) => s.needs_recovery(),
            Engine::Log(_) => false,
        }
    }
    fn recover(&self) -> Result<bool> {
        match self {
            Engine::Sled(s) => s.recover(),
            Engine::Log(_) => Ok(false),
        }
    }
    /// What a writer that wrote a lot since the last one waits for: a flush, and for the log
    /// its compaction too, so that a fast writer cannot outrun the maintenance thread.
    fn catch_up(&self) -> Result<()> {
        match self {
            Engine::Sled(s) => s.flush(),
            Engine::Log(s) => {
                s.flush()?;
                s.maintain();
                Ok(())
            }
        }
    }
    /// Periodic work besides sweeping: the log's flushes and compaction.
    fn maintain(&self) {
        if let Engine::Log(s) = self {
            s.maintain();
        }
    }
    /// How often the maintenance thread wakes at least.
    fn tick(&self) -> Duration {
        match self {
            Engine::Sled(_) => RECOVERY_RETRY,
            Engine::Log(s) => s.tick().min(RECOVERY_RETRY),
        }
    }
}

/// Runs blocking work off the async worker threads (inline outside a Tokio runtime).
async fn blocking<T: Send + 'static>(
    operation: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| CacheError::backend(NAME, operation, false, e))?,
        Err(_) => f(),
    }
}

/// Stop signal of the maintenance thread.
#[derive(Debug, Default)]
struct Signal {
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Signal {
    fn stopped(&self) -> bool {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How often the maintenance thread retries after an I/O failure.
const RECOVERY_RETRY: Duration = Duration::from_secs(1);

/// The maintenance thread: sweeps expired entries every `sweep_interval`, and after an I/O
/// failure (a full disk) retries every [`RECOVERY_RETRY`] to make the database writable again.
#[derive(Debug)]
struct Sweeper {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    fn spawn(store: Arc<Engine>, every: Duration) -> Result<Sweeper> {
        let signal = Arc::new(Signal::default());
        let s = signal.clone();
        let thread = std::thread::Builder::new()
            .name("llm-cache-disk-maintenance".to_owned())
            .spawn(move || {
                let mut recovery_failures = 0u32;
                // The first sweep runs at once: entries that expired while the process was
                // down go right away.
                let mut last_sweep: Option<Instant> = None;
                loop {
                    if store.needs_recovery() {
                        // After an I/O failure (a full disk): reopen once there is room.
                        match store.recover() {
                            Ok(_) => recovery_failures = 0,
                            Err(e) => {
                                recovery_failures += 1;
                                // The first failure, then about every minute.
                                if recovery_failures % 60 == 1 {
                                    tracing::warn!(
                                        backend = NAME,
                                        "disk cache not recovered yet: {e}"
                                    );
                                }
                            }
                        }
                    } else if last_sweep.is_none_or(|t| t.elapsed() >= every) {
                        last_sweep = Some(Instant::now());
                        match store.sweep_expired(&|| s.stopped()) {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::debug!(
                                    backend = NAME,
                                    removed = n,
                                    "swept expired entries"
                                )
                            }
                            Err(e) => tracing::warn!(backend = NAME, "sweep failed: {e}"),
                        }
                    }
                    store.maintain();
                    // Wakes at least every RECOVERY_RETRY to notice an I/O failure.
                    let guard = s.stop.lock().unwrap_or_else(PoisonError::into_inner);
                    let (guard, _) = s
                        .wake
                        .wait_timeout_while(guard, every.min(store.tick()), |stop| !*stop)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *guard {
                        return;
                    }
                }
            })
            .map_err(|e| {
                CacheError::backend(
                    NAME,
                    "open",
                    true,
                    format!("cannot start the maintenance thread: {e}"),
                )
            })?;
        Ok(Sweeper {
            signal,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        *self
            .signal
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.signal.wake.notify_all();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(backend = NAME, "the maintenance thread panicked");
        }
    }
}

/// The persistent disk backend (`type: disk`).
///
/// See the [crate docs](crate) for the guarantees. Dropping it stops the sweeper and flushes
/// every acknowledged write to disk (the lock on the directory is released once no
/// background operation holds the database any more).
#[derive(Debug)]
pub struct DiskBackend {
    store: Arc<Engine>,
    sweeper: Sweeper,
    /// Bytes written since the last flush this backend waited for (see
    /// [`DiskBackend::backpressure`]).
    unflushed: std::sync::atomic::AtomicU64,
}

impl DiskBackend {
    /// Opens (or creates) the cache in `config.dir`, synchronously.
    ///
    /// Opening recovers sled's log and scans the expiry index once to rebuild the size
    /// accounting (0.3 s for 48 k entries in a 240 MB file; see `docs/backends/disk.md`). In
    /// async code prefer [`DiskBackend::open_async`].
    ///
    /// # Errors
    /// * [`CacheError::Config`] for an out-of-range setting, naming the key.
    /// * [`CacheError::Backend`] naming the directory when it cannot be created, is in use by
    ///   another process (or another `DiskBackend` of this process), or holds a damaged or
    ///   foreign database and `on_corruption` is `Error`. With the default (`MoveAside`) a
    ///   damaged database is moved aside and the backend opens empty.
    pub fn open(config: DiskConfig) -> Result<Self> {
        let store = Arc::new(Engine::open(config)?);
        let sweeper = Sweeper::spawn(store.clone(), store.config().sweep_interval)?;
        Ok(DiskBackend {
            store,
            sweeper,
            unflushed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// [`DiskBackend::open`] on a blocking thread.
    ///
    /// # Errors
    /// As [`DiskBackend::open`].
    pub async fn open_async(config: DiskConfig) -> Result<Self> {
        blocking("open", move || Self::open(config)).await
    }

    /// The configuration.
    pub fn config(&self) -> &DiskConfig {
        self.store.config()
    }

    /// Where the damaged store found at open was moved (see
    /// [`OnCorruption::MoveAside`](crate::OnCorruption::MoveAside)); `None` when the store
    /// opened as it was.
    pub fn moved_aside(&self) -> Option<&std::path::Path> {
        self.store.moved_aside()
    }

    /// Counters: entries, bytes, size on disk, removals.
    pub fn stats(&self) -> DiskStats {
        self.store.stats()
    }

    /// Removes expired entries now (the sweeper does this every `sweep_interval`). Returns
    /// the number removed.
    ///
    /// # Errors
    /// A database error.
    pub async fn sweep(&self) -> Result<u64> {
        let store = self.store.clone();
        blocking("sweep", move || store.sweep_expired(&|| false)).await
    }

    /// Backpressure: after half of `disk_cache_max_bytes` (1 to 64 MiB) written since the last
    /// flush, a write waits for one (and, with the log engine, for a compaction). On a loaded
    /// machine sled's background flusher can fall behind a fast writer, and its log then grows
    /// past the documented footprint bound (`4 × disk_cache_max_bytes + 32 MiB`); this keeps
    /// the writer from outrunning it.
    async fn backpressure(&self, written: u64) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.store.sync_writes() {
            return Ok(());
        }
        let limit = (self.store.config().max_bytes / 2).clamp(1 << 20, 64 << 20);
        if self.unflushed.fetch_add(written, Relaxed) + written >= limit {
            self.unflushed.store(0, Relaxed);
            let store = self.store.clone();
            blocking("flush", move || store.catch_up()).await?;
        }
        Ok(())
    }

    async fn flush_if_sync(&self) -> Result<()> {
        if self.store.sync_writes() {
            let store = self.store.clone();
            blocking("flush", move || store.flush()).await?;
        }
        Ok(())
    }
}

impl Drop for DiskBackend {
    fn drop(&mut self) {
        self.sweeper.stop();
        if let Err(e) = self.store.flush() {
            tracing::error!(backend = NAME, "flush on drop failed: {e}");
        }
    }
}

#[async_trait]
impl CacheBackend for DiskBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::local()
            .with_persistent(true)
            .with_max_value_size(Some(self.store.max_value_size()))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.store.get(key)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.store.set(key, &value, ttl)?;
        self.backpressure((key.len() + value.len()) as u64).await?;
        self.flush_if_sync().await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let existed = self.store.delete(key)?;
        self.flush_if_sync().await?;
        Ok(existed)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        keys.iter().map(|k| self.store.get(k)).collect()
    }

    async fn set_many(&self, entries: Vec<(String, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let mut written = 0u64;
        for (k, v) in &entries {
            self.store.set(k, v, ttl)?;
            written += (k.len() + v.len()) as u64;
        }
        self.backpressure(written).await?;
        self.flush_if_sync().await
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let store = self.store.clone();
        let ns = namespace.map(str::to_owned);
        let n = blocking("clear", move || store.clear(ns.as_deref())).await?;
        self.flush_if_sync().await?;
        Ok(n)
    }

    async fn ping(&self) -> Result<Health> {
        let start = Instant::now();
        self.store.ping()?;
        let stats = self.store.stats();
        let mut health = Health::new(NAME, start.elapsed());
        if let Some(to) = self.store.moved_aside() {
            health = health.with_detail("moved_aside", to.display().to_string());
        }
        Ok(health
            .with_detail("dir", self.store.config().dir.display().to_string())
            .with_detail("db", self.store.db_path().display().to_string())
            .with_detail("lock", self.store.lock_path().display().to_string())
            .with_detail("entries", stats.entries.to_string())
            .with_detail("bytes", stats.bytes.to_string())
            .with_detail("max_bytes", stats.max_bytes.to_string())
            .with_detail("size_on_disk", stats.size_on_disk.to_string()))
    }

    async fn flush(&self) -> Result<()> {
        let store = self.store.clone();
        blocking("flush", move || store.flush()).await
    }
}
