//! # cache-disk
//!
//! The persistent, embedded backend of llm-cache (`type: disk`): one directory on one machine,
//! no server. Two storage engines (`disk_cache_engine`):
//!
//! * **`log`, the default**: append-only segment files and an index of every entry in memory
//!   (about 125 bytes per entry). A hit is one hash lookup and one positioned read of one
//!   record, so reads cost the same at ten thousand entries and at a million (hit p99 3-5 µs
//!   at 1 M entries here, against 120-1 400 µs for sled). A clean close records the index, so
//!   the next open reads it instead of the segments (1 M entries: about 1 s).
//! * **`sled`**: [sled](https://docs.rs/sled/0.34.7) 0.34, the engine of earlier versions, with
//!   a bounded page cache (`disk_cache_memory_bytes`) and no per-entry memory.
//!
//! Both give the same contract:
//!
//! * **Survives restarts.** Entries are stored with their expiry; on open the store is
//!   recovered and the size accounting rebuilt.
//! * **Expired entries are never served**: each record carries its expiry, checked on every
//!   read without decoding the envelope. A background sweeper thread removes them every
//!   `disk_cache_sweep_interval`, so churn does not grow the store without bound.
//! * **Bounded** by `disk_cache_max_bytes`: a write that goes over evicts the entries that
//!   expire first (entries without expiry last), oldest first among equals.
//! * **Durability**: dropping the backend (or [`CacheBackend::flush`](cache_core::CacheBackend::flush),
//!   which `Cache::flush` calls on shutdown) puts every acknowledged write on disk. A crash
//!   of the machine loses at most the last `disk_cache_flush_interval` of writes (0: none,
//!   every write is flushed); a crash of the process (`kill -9`) loses nothing with the log.
//!   Every record carries a CRC-32: a damaged record is a miss, never a wrong body.
//! * **One process per directory**: a second opener (another process, or a second backend in
//!   this one) gets an error naming the directory at once, never a hang.
//! * **A damaged or foreign store never stops startup**: errors (and sled's panics) are
//!   caught, and a store that cannot be used is moved aside to
//!   `<dir name>.damaged-<unix seconds>` next to the cache directory, logged with
//!   `tracing::error!`, and an empty cache starts in its place
//!   (`disk_cache_on_corruption: move_aside`, the default; `error` refuses to start, `reset`
//!   deletes it). sled opens on its own thread under a deadline (`disk_cache_open_timeout`,
//!   30 s): a damaged file can make it loop. A directory locked by another process is not
//!   damage.
//! * **A full disk fails writes, not calls**: a write that cannot reach the disk is an error (a
//!   miss for the cache), reads go on, and once the disk takes writes again writes work again
//!   by themselves.
//! * **Footprint**: under churn the directory stays under `4 × disk_cache_max_bytes + 32 MiB`;
//!   the log compacts a segment once the log holds half as much dead data again as live data
//!   (plus two segments).
//!
//! The full contract, layout and measurements are in `docs/backends/disk.md` and
//! `docs/reliability.md`.
//!
//! ```
//! use std::time::Duration;
//! use cache_core::{CacheBackend, Bytes};
//! use cache_disk::{DiskBackend, DiskConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cache_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let backend = DiskBackend::open(DiskConfig::new(dir.path()))?;
//! backend.set("app:k", Bytes::from_static(b"{}"), Some(Duration::from_secs(60))).await?;
//! assert_eq!(backend.get("app:k").await?.as_deref(), Some(&b"{}"[..]));
//! drop(backend); // flushed to disk
//!
//! let backend = DiskBackend::open(DiskConfig::new(dir.path()))?;
//! assert!(backend.get("app:k").await?.is_some()); // survived the restart
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod backend;
mod config;
pub mod factory;
mod lock;
mod log;
mod record;
mod store;

pub use backend::DiskBackend;
pub use config::{
    DEFAULT_DIR, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BYTES,
    DEFAULT_OPEN_TIMEOUT, DEFAULT_SWEEP_INTERVAL, DiskConfig, DiskEngine, OnCorruption,
};
pub use factory::DiskFactory;
pub use store::DiskStats;

/// Bytes allocated to every file under `path`, recursively: what `du` reports (allocated
/// blocks, not apparent lengths), 0 for a path that cannot be read. The footprint of a cache
/// directory, as the benches and the footprint tests measure it.
pub fn allocated_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated_bytes(&e.path()),
            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Name of the backend in logs, metrics and errors.
pub const NAME: &str = "disk";

/// Name of the lock file inside the cache directory.
pub const LOCK_FILE: &str = lock::LOCK_FILE;

/// Name of the sled engine's folder inside the cache directory (deleted by
/// [`OnCorruption::Reset`]).
pub const DB_DIR: &str = store::DB_DIR;

/// Name of the log engine's folder inside the cache directory.
pub const LOG_DIR: &str = log::LOG_DIR;
