//! Configuration of the disk backend, read from LiteLLM-style `cache_params`.

use std::path::PathBuf;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::{CacheError, Result};

/// Default directory (`disk_cache_dir`), relative to the working directory.
pub const DEFAULT_DIR: &str = "./.llm_cache";
/// Default size bound (`disk_cache_max_bytes`): 1 GiB of keys, values and metadata.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default flush interval (`disk_cache_flush_interval`): what a crash can lose at most.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Default interval between sweeps of expired entries (`disk_cache_sweep_interval`).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Default memory for sled's page cache (`disk_cache_memory_bytes`): 64 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
/// Default bound on opening the database (`disk_cache_open_timeout`): 30 s.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The smallest accepted size bound: below this the per-entry overhead dominates.
const MIN_MAX_BYTES: u64 = 64 << 10;

/// What to do when the database in the directory is damaged or not ours
/// (`disk_cache_on_corruption`).
///
/// Damage is: sled returns an error other than an ordinary I/O error (or an I/O error saying
/// its files are short or malformed), panics, or does not finish opening within
/// [`DiskConfig::open_timeout`] (a damaged file can make sled loop); the database has no
/// llm-cache format marker but is not new; or the marker names another format. A directory
/// locked by another process is never damage: that is an error naming the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCorruption {
    /// Move the damaged store aside, log it with `tracing::error!`, and start empty (default):
    /// nothing is deleted, and startup never fails on damage. The cache directory moves to a
    /// sibling `<dir name>.damaged-<unix seconds>` (`-2`, `-3`... if that name is taken) and an
    /// empty one takes its place. When the directory holds anything but the backend's own
    /// `LOCK` and `db/`, or cannot be renamed (a mount point, a parent that is not writable),
    /// only the database moves, to `<dir>/db.damaged-<unix seconds>`.
    #[default]
    MoveAside,
    /// Refuse to start with an error naming the directory: nothing is moved or deleted.
    Error,
    /// Delete the database (only the `db/` folder this backend created inside the directory)
    /// and start empty. It is a cache: losing it costs upstream calls, not data.
    Reset,
}

/// The storage engine under the disk backend (`disk_cache_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DiskEngine {
    /// An append-only log in the `log/` folder, with an index of every entry in memory (about
    /// 125 bytes per entry): a hit is one hash lookup and one positioned read, however many
    /// entries the cache holds (the default). See `docs/backends/disk.md`.
    #[default]
    Log,
    /// sled 0.34, in the `db/` folder (the default before the log engine): a B-tree over a
    /// log, with a page cache of [`DiskConfig::memory_bytes`]. Its reads slow down as the
    /// cache outgrows the page cache (hit p99 ~25× from 10 000 to 1 000 000 entries).
    Sled,
}

/// Settings of a [`crate::DiskBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskConfig {
    /// Directory of the cache (`disk_cache_dir`, default `./.llm_cache`), created when
    /// missing. It holds a lock file (`LOCK`) and the database (`db/`). One process at a time.
    pub dir: PathBuf,
    /// Size bound in bytes (`disk_cache_max_bytes`, default 1 GiB), counted as keys, values
    /// and a fixed per-entry overhead. When a write goes over it, the entries that expire first
    /// are evicted (entries without expiry last), and among those the ones stored first.
    pub max_bytes: u64,
    /// How often written data is flushed to disk (`disk_cache_flush_interval`, seconds,
    /// default 0.5). A crash (kill -9, power loss) loses at most the writes of this window.
    /// `0` flushes (fsync) after every write before acknowledging it: no loss, much slower.
    pub flush_interval: Duration,
    /// How often expired entries are removed in the background (`disk_cache_sweep_interval`,
    /// seconds, default 30). Expired entries are never served in between.
    pub sweep_interval: Duration,
    /// Memory for sled's page cache (`disk_cache_memory_bytes`, default 64 MiB; the sled
    /// engine only).
    pub memory_bytes: u64,
    /// What to do with a damaged or foreign database (`disk_cache_on_corruption`:
    /// `move_aside`, the default, `error` or `reset`). See [`OnCorruption`].
    pub on_corruption: OnCorruption,
    /// How long opening the database may take (`disk_cache_open_timeout`, seconds, default
    /// 30, min 0.1). sled opens on a separate thread; one that has not finished by then (a
    /// damaged file can make sled loop for ever) is treated as damage, handled as
    /// [`DiskConfig::on_corruption`] says. Time spent waiting for a previous instance of this
    /// process to release the database does not count.
    pub open_timeout: Duration,
    /// The storage engine (`disk_cache_engine`: `log`, the default, or `sled`). Each keeps its
    /// files in its own folder of [`DiskConfig::dir`]; switching starts with an empty cache
    /// (the other engine's folder is left alone, and a warning names it).
    pub engine: DiskEngine,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            dir: PathBuf::from(DEFAULT_DIR),
            max_bytes: DEFAULT_MAX_BYTES,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            on_corruption: OnCorruption::MoveAside,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            engine: DiskEngine::Log,
        }
    }
}

impl DiskConfig {
    /// Defaults, in directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskConfig {
            dir: dir.into(),
            ..Default::default()
        }
    }

    /// Reads `disk_cache_dir`, `disk_cache_max_bytes`, `disk_cache_flush_interval`,
    /// `disk_cache_sweep_interval`, `disk_cache_memory_bytes`, `disk_cache_on_corruption`,
    /// `disk_cache_open_timeout` and `disk_cache_engine`; absent keys keep their defaults. Other keys (`ttl`, `namespace`, ...) belong to the core.
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the key for a value of the wrong type or out of range.
    pub fn from_params(params: &Params) -> Result<Self> {
        let mut c = DiskConfig::default();
        if let Some(dir) = params.string("disk_cache_dir")? {
            if dir.trim().is_empty() {
                return Err(params.error("disk_cache_dir", "must not be empty"));
            }
            c.dir = PathBuf::from(dir);
        }
        if let Some(n) = params.u64("disk_cache_max_bytes")? {
            c.max_bytes = n;
        }
        if let Some(d) = params.seconds("disk_cache_flush_interval")? {
            c.flush_interval = d;
        }
        if let Some(d) = params.seconds("disk_cache_sweep_interval")? {
            c.sweep_interval = d;
        }
        if let Some(n) = params.u64("disk_cache_memory_bytes")? {
            c.memory_bytes = n;
        }
        if let Some(s) = params.string("disk_cache_on_corruption")? {
            c.on_corruption = match s.as_str() {
                "move_aside" => OnCorruption::MoveAside,
                "error" => OnCorruption::Error,
                "reset" => OnCorruption::Reset,
                other => {
                    return Err(params.error(
                        "disk_cache_on_corruption",
                        format!("expected `move_aside`, `error` or `reset`, got `{other}`"),
                    ));
                }
            };
        }
        if let Some(d) = params.seconds("disk_cache_open_timeout")? {
            c.open_timeout = d;
        }
        if let Some(s) = params.string("disk_cache_engine")? {
            c.engine = match s.as_str() {
                "sled" => DiskEngine::Sled,
                "log" => DiskEngine::Log,
                other => {
                    return Err(params.error(
                        "disk_cache_engine",
                        format!("expected `sled` or `log`, got `{other}`"),
                    ));
                }
            };
        }
        c.validate().map_err(|(key, msg)| params.error(key, msg))?;
        Ok(c)
    }

    /// Sets [`DiskConfig::engine`].
    pub fn with_engine(mut self, engine: DiskEngine) -> Self {
        self.engine = engine;
        self
    }

    /// Sets [`DiskConfig::max_bytes`].
    pub fn with_max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets [`DiskConfig::flush_interval`].
    pub fn with_flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d;
        self
    }

    /// Sets [`DiskConfig::sweep_interval`].
    pub fn with_sweep_interval(mut self, d: Duration) -> Self {
        self.sweep_interval = d;
        self
    }

    /// Sets [`DiskConfig::memory_bytes`].
    pub fn with_memory_bytes(mut self, n: u64) -> Self {
        self.memory_bytes = n;
        self
    }

    /// Sets [`DiskConfig::on_corruption`].
    pub fn with_on_corruption(mut self, v: OnCorruption) -> Self {
        self.on_corruption = v;
        self
    }

    /// Sets [`DiskConfig::open_timeout`].
    pub fn with_open_timeout(mut self, d: Duration) -> Self {
        self.open_timeout = d;
        self
    }

    /// Checks ranges; the error names the `cache_params` key.
    pub(crate) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.max_bytes < MIN_MAX_BYTES {
            return Err((
                "disk_cache_max_bytes",
                format!(
                    "must be at least {MIN_MAX_BYTES} bytes, got {}",
                    self.max_bytes
                ),
            ));
        }
        if self.sweep_interval < Duration::from_millis(10) {
            return Err((
                "disk_cache_sweep_interval",
                format!(
                    "must be at least 0.01 seconds, got {}",
                    self.sweep_interval.as_secs_f64()
                ),
            ));
        }
        if self.flush_interval > Duration::ZERO && self.flush_interval < Duration::from_millis(1) {
            return Err((
                "disk_cache_flush_interval",
                format!(
                    "must be 0 (flush every write) or at least 0.001 seconds, got {}",
                    self.flush_interval.as_secs_f64()
                ),
            ));
        }
        if self.memory_bytes < (1 << 20) {
            return Err((
                "disk_cache_memory_bytes",
                format!("must be at least 1 MiB, got {}", self.memory_bytes),
            ));
        }
        if self.open_timeout < Duration::from_millis(100) {
            return Err((
                "disk_cache_open_timeout",
                format!(
                    "must be at least 0.1 seconds, got {}",
                    self.open_timeout.as_secs_f64()
                ),
            ));
        }
        Ok(())
    }

    /// [`DiskConfig::validate`] as a [`CacheError::Config`].
    pub(crate) fn check(&self) -> Result<()> {
        self.validate()
            .map_err(|(key, msg)| CacheError::Config(format!("disk backend: {key}: {msg}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn params(v: Value) -> Params {
        Params::new(v.as_object().unwrap().clone(), "cache_params")
    }

    #[test]
    fn defaults() {
        let c = DiskConfig::from_params(&params(json!({}))).unwrap();
        assert_eq!(c, DiskConfig::default());
        assert_eq!(c.dir, PathBuf::from("./.llm_cache"));
        assert_eq!(c.max_bytes, 1 << 30);
        assert_eq!(c.on_corruption, OnCorruption::MoveAside);
        assert_eq!(c.open_timeout, Duration::from_secs(30));
    }

    #[test]
    fn every_key_is_read_with_litellm_coercions() {
        let c = DiskConfig::from_params(&params(json!({
            "disk_cache_dir": "/tmp/x",
            "disk_cache_max_bytes": "1048576",
            "disk_cache_flush_interval": 0,
            "disk_cache_sweep_interval": "2.5",
            "disk_cache_memory_bytes": 8388608,
            "disk_cache_on_corruption": "reset",
            "disk_cache_open_timeout": "2.5",
            "disk_cache_engine": "log",
            "ttl": 60,
        })))
        .unwrap();
        assert_eq!(c.dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.max_bytes, 1 << 20);
        assert_eq!(c.flush_interval, Duration::ZERO);
        assert_eq!(c.sweep_interval, Duration::from_millis(2500));
        assert_eq!(c.memory_bytes, 8 << 20);
        assert_eq!(c.on_corruption, OnCorruption::Reset);
        assert_eq!(c.open_timeout, Duration::from_millis(2500));
        assert_eq!(c.engine, DiskEngine::Log);
        for (v, want) in [
            ("move_aside", OnCorruption::MoveAside),
            ("error", OnCorruption::Error),
        ] {
            let c =
                DiskConfig::from_params(&params(json!({"disk_cache_on_corruption": v}))).unwrap();
            assert_eq!(c.on_corruption, want);
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (v, key) in [
            (json!({"disk_cache_dir": ""}), "cache_params.disk_cache_dir"),
            (
                json!({"disk_cache_dir": [1]}),
                "cache_params.disk_cache_dir",
            ),
            (
                json!({"disk_cache_max_bytes": "lots"}),
                "cache_params.disk_cache_max_bytes",
            ),
            (
                json!({"disk_cache_max_bytes": 10}),
                "cache_params.disk_cache_max_bytes",
            ),
            (
                json!({"disk_cache_flush_interval": -1}),
                "cache_params.disk_cache_flush_interval",
            ),
            (
                json!({"disk_cache_flush_interval": 0.0001}),
                "cache_params.disk_cache_flush_interval",
            ),
            (
                json!({"disk_cache_sweep_interval": 0}),
                "cache_params.disk_cache_sweep_interval",
            ),
            (
                json!({"disk_cache_memory_bytes": 5}),
                "cache_params.disk_cache_memory_bytes",
            ),
            (
                json!({"disk_cache_on_corruption": "ignore"}),
                "cache_params.disk_cache_on_corruption",
            ),
            (
                json!({"disk_cache_open_timeout": 0.01}),
                "cache_params.disk_cache_open_timeout",
            ),
            (
                json!({"disk_cache_engine": "lsm"}),
                "cache_params.disk_cache_engine",
            ),
            (
                json!({"disk_cache_open_timeout": "soon"}),
                "cache_params.disk_cache_open_timeout",
            ),
        ] {
            let err = DiskConfig::from_params(&params(v.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{v}: {err}");
        }
    }
}
