//! # cache-disk
//!
//! The persistent, embedded backend of llm-cache (`type: disk`): one directory on one machine,
//! no server, on [sled](https://docs.rs/sled/0.34.7) 0.34.
//!
//! * **Survives restarts.** Entries are stored with their expiry; on open the database is
//!   recovered and the size accounting rebuilt.
//! * **Expired entries are never served**: each record carries its expiry, checked on every
//!   read without decoding the envelope. A background sweeper thread removes them every
//!   `disk_cache_sweep_interval`, so churn does not grow the database without bound.
//! * **Bounded** by `disk_cache_max_bytes`: a write that goes over evicts the entries that
//!   expire first (entries without expiry last), oldest first among equals.
//! * **Durability**: dropping the backend (or [`CacheBackend::flush`](cache_core::CacheBackend::flush),
//!   which `Cache::flush` calls on shutdown) puts every acknowledged write on disk. A crash
//!   loses at most the last `disk_cache_flush_interval` of writes (0: none, every write is
//!   flushed). Every record carries a CRC-32 of its value: a damaged record is a miss, never
//!   a wrong body.
//! * **One process per directory**: a second opener (another process, or a second backend in
//!   this one) gets an error naming the directory at once, never a hang.
//! * **A damaged or foreign database never stops startup**: sled opens on its own thread under
//!   a deadline (`disk_cache_open_timeout`, 30 s), its errors and panics are caught, and a
//!   database that fails (or hangs) is moved aside to `<dir name>.damaged-<unix seconds>` next
//!   to the cache directory, logged with `tracing::error!`, and an empty cache starts in its
//!   place (`disk_cache_on_corruption: move_aside`, the default; `error` refuses to start,
//!   `reset` deletes it). A directory locked by another process is not damage.
//! * **A full disk fails writes, not calls**: a write that cannot reach the disk is an error (a
//!   miss for the cache), reads go on where sled can, and once the disk takes writes again the
//!   backend reopens the database by itself (sled keeps its first write error for good).
//! * **Footprint**: under churn the directory stays under `4 × disk_cache_max_bytes + 32 MiB`
//!   (measured: 2.3–2.7 × for bounds of 32 MiB and more with 1–8 KiB values, up to 3.9 × in
//!   bursts of large values; values over 6 KiB are stored in chunks).
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

/// Name of the database folder inside the cache directory (deleted by
/// [`OnCorruption::Reset`]).
pub const DB_DIR: &str = store::DB_DIR;
