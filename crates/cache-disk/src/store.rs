//! The synchronous store over sled: open (lock, corruption handling, accounting), reads,
//! writes, the expiry index, sweeping and eviction.
//!
//! # Consistency
//! Each entry is two sled keys: the record (under the cache key) and its index entry (see
//! [`crate::record`]). Writes to one cache key are serialised by a striped mutex, and always
//! run in this order:
//!
//! * `set`: insert the new index entry, insert the record (getting the old one), remove the old
//!   record's index entry.
//! * `delete`, sweep, evict: remove the record, then its index entry.
//!
//! sled recovers a crashed database to a prefix of its log, so after a crash every record still
//! has its index entry; the only leftover can be an index entry whose record is gone or newer
//! (an *orphan*). The sweeper and the evictor check each index entry against its record
//! before removing the record, and drop orphans. The accounting invariant is simple: the byte
//! and entry counters are the sums over index entries, orphans included; they are rebuilt by
//! one scan of the index at open.
//!
//! sled's batches and transactions are deliberately not used: the first one switches sled
//! 0.34's process-wide concurrency control into a global reader/writer lock for good, which
//! would make every read wait behind every batch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cache_core::envelope::now_ms;
use cache_core::{CacheError, Result};

use crate::NAME;
use crate::config::{DiskConfig, OnCorruption};
use crate::lock::{DirLock, LOCK_FILE};
use crate::record::{self, CHUNK_PREFIX, INDEX_PREFIX, Meta};

/// Name of the database folder inside the cache directory.
pub(crate) const DB_DIR: &str = "db";
/// Key of the format marker in sled's default tree.
const FORMAT_KEY: &[u8] = b"llm-cache-format";
/// The format marker's value.
/// `/2` added chunked records (see [`crate::record`]); a `/1` database is upgraded in place at
/// open (it holds no chunked record, and `/2` reads every `/1` record).
const FORMAT_VALUE: &[u8] = b"llm-cache-disk/2";
/// The format marker of databases written before chunked records.
const FORMAT_VALUE_1: &[u8] = b"llm-cache-disk/1";
/// Name of the sled tree holding records and the index.
const ENTRIES_TREE: &[u8] = b"entries";
/// Key of the clean-close summary in sled's default tree: the counters as they were at a
/// clean close, so the next open need not scan the whole index (seconds at a million entries).
/// Removed (and flushed) at open, before any write: after a crash there is none and the index
/// is scanned. sled recovers a prefix of its log, so a summary that survives a crash is one
/// no later write followed.
const CLEAN_KEY: &[u8] = b"llm-cache-clean-close";
/// Version byte of the summary's encoding.
const CLEAN_VERSION: u8 = 1;
/// Key written and read back by `ping`.
const PING_KEY: &[u8] = b"llm-cache-ping";
/// Name of the file written (then removed) to check that the disk takes writes again.
pub(crate) const SPACE_PROBE: &str = "space-probe.tmp";
/// Size of that file: room for sled to reopen and write a few segments.
const PROBE_BYTES: usize = 2 << 20;
/// Number of write stripes.
const STRIPES: usize = 64;
/// Index entries handled per scan by the sweeper and `clear`.
const CHUNK: usize = 1024;

fn sled_error(operation: &'static str, e: sled::Error) -> CacheError {
    let transient = matches!(e, sled::Error::Io(_));
    CacheError::backend(NAME, operation, transient, e)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Runs a sled operation, turning its errors, and its panics, into [`CacheError`]s.
fn guarded<T>(operation: &'static str, f: impl FnOnce() -> sled::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| sled_error(operation, e)),
        Err(p) => Err(CacheError::backend(
            NAME,
            operation,
            false,
            format!("sled panicked: {}", panic_message(&*p)),
        )),
    }
}

/// The next item of a sled iterator, with errors and panics as [`CacheError`]s (a corrupt
/// page can make sled panic while iterating).
fn next_of<T>(
    operation: &'static str,
    it: &mut impl Iterator<Item = sled::Result<T>>,
) -> Result<Option<T>> {
    guarded(operation, || it.next().transpose())
}

/// [`next_of`] for a scan in key order. sled yields keys in strictly increasing order; a
/// damaged file can link its nodes into a cycle, and the iterator then comes back to keys it
/// has already returned, for ever (seen in the random-damage test: minutes of CPU and gigabytes
/// of memory at open). A key that does not increase is an error naming the damage instead.
fn next_ordered<V>(
    operation: &'static str,
    it: &mut impl Iterator<Item = sled::Result<(sled::IVec, V)>>,
    previous: &mut Option<sled::IVec>,
) -> Result<Option<(sled::IVec, V)>> {
    let item = next_of(operation, it)?;
    if let Some((k, _)) = &item {
        if previous.as_ref().is_some_and(|p| k <= p) {
            return Err(CacheError::backend(
                NAME,
                operation,
                false,
                "sled returned keys out of order: the database file is damaged".to_owned(),
            ));
        }
        *previous = Some(k.clone());
    }
    Ok(item)
}

/// What one scan of the index found at open.
#[derive(Debug, Default)]
struct Accounting {
    bytes: u64,
    entries: u64,
    max_seq: u64,
    malformed: u64,
}

impl Accounting {
    fn encode(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[0] = CLEAN_VERSION;
        out[1..9].copy_from_slice(&self.bytes.to_le_bytes());
        out[9..17].copy_from_slice(&self.entries.to_le_bytes());
        out[17..25].copy_from_slice(&self.max_seq.to_le_bytes());
        out
    }

    /// `None` for anything but a summary of this version (the index is then scanned).
    fn decode(raw: &[u8]) -> Option<Accounting> {
        let (&version, rest) = raw.split_first()?;
        if version != CLEAN_VERSION || rest.len() != 24 {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
        Some(Accounting {
            bytes: u(0),
            entries: u(8),
            max_seq: u(16),
            malformed: 0,
        })
    }
}

/// Counters of what the store did since it was opened (both engines).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) expired_removed: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) damaged: AtomicU64,
}

/// A snapshot of the store's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskStats {
    /// Entries stored, including expired ones the sweeper has not removed yet.
    pub entries: u64,
    /// Bytes counted against the bound (keys, values, per-entry overhead).
    pub bytes: u64,
    /// The bound (`disk_cache_max_bytes`).
    pub max_bytes: u64,
    /// Size of the database files on disk, as sled reports it.
    pub size_on_disk: u64,
    /// Expired entries removed by the sweeper since open.
    pub expired_removed: u64,
    /// Live entries evicted to stay under the bound since open.
    pub evicted: u64,
    /// Damaged records found (and removed) since open.
    pub damaged: u64,
    /// Times the database was reopened since open, after a write failure (a full disk) once
    /// there was room again.
    pub reopened: u64,
    /// Whether the last write failed with an I/O error and the database has not been
    /// reopened since: writes fail (misses for the cache), reads still answer.
    pub failing: bool,
}

/// How an open failed.
enum OpenFailure {
    /// The database is damaged or foreign (see [`OnCorruption`]).
    Damaged(String),
    /// Anything else (permissions, lock, I/O).
    Other(CacheError),
}

/// What a successful open of the database yields.
type Opened = (sled::Db, sled::Tree, Accounting);

/// The open database.
struct Engine {
    tree: sled::Tree,
    db: sled::Db,
}

/// The store. Field order matters: sled is closed before the directory lock is released.
pub(crate) struct Store {
    /// The database; `None` only while it is being reopened after an I/O failure.
    engine: RwLock<Option<Arc<Engine>>>,
    /// An operation failed with an I/O error: sled may have stopped writing for good (it
    /// keeps the first write error and returns it from every later write). The maintenance
    /// thread checks, and reopens the database once there is room again.
    failed: AtomicBool,
    /// Serialises recoveries.
    recovering: Mutex<()>,
    /// Reopens after I/O failures since open.
    reopened: AtomicU64,
    stripes: Box<[Mutex<()>]>,
    evicting: Mutex<()>,
    seq: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
    counters: Counters,
    config: DiskConfig,
    db_path: PathBuf,
    /// Where a damaged store found at open was moved.
    moved_aside: Option<PathBuf>,
    lock: DirLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.config.dir)
            .field("entries", &self.entries.load(Relaxed))
            .field("bytes", &self.bytes.load(Relaxed))
            .field("max_bytes", &self.config.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Locks `m`, ignoring poisoning: what both engines guard is either `()` or updated completely
/// before anything that can panic, so a panic elsewhere cannot leave it inconsistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sled_config(db_path: &Path, config: &DiskConfig) -> sled::Config {
    let flush_every = (!config.flush_interval.is_zero())
        .then(|| config.flush_interval.as_millis().clamp(1, u64::MAX as u128) as u64);
    sled::Config::new()
        .path(db_path)
        .cache_capacity(config.memory_bytes)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(flush_every)
}

/// Whether sled's data file exists and is not empty.
fn has_data(db_path: &Path) -> bool {
    std::fs::metadata(db_path.join("db")).is_ok_and(|m| m.len() > 0)
}

/// Moves the damaged store in `dir` aside (see [`OnCorruption::MoveAside`]) and returns the
/// lock of the (new, empty) directory and where the store went. `lock` is the lock of `dir`;
/// `folder` the engine's folder in it.
pub(crate) fn move_aside(dir: &Path, lock: DirLock, folder: &str) -> Result<(DirLock, PathBuf)> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let free_name = |parent: &Path, base: &str| {
        (1u32..)
            .map(|n| match n {
                1 => parent.join(format!("{base}.damaged-{stamp}")),
                n => parent.join(format!("{base}.damaged-{stamp}-{n}")),
            })
            .find(|p| std::fs::symlink_metadata(p).is_err())
            .expect("an unused name")
    };
    let io_err = |what: String, e: std::io::Error| {
        CacheError::backend(NAME, "open", false, format!("{what}: {e}"))
    };
    // The whole directory moves when it holds only what this backend put there.
    let ours_only = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().all(|e| {
            [LOCK_FILE, DB_DIR, crate::log::LOG_DIR, SPACE_PROBE]
                .contains(&&*e.file_name().to_string_lossy())
        })
    });
    let whole = std::fs::canonicalize(dir).ok().and_then(|full| {
        let parent = full.parent()?.to_owned();
        let name = full.file_name()?.to_string_lossy().into_owned();
        Some((full, parent, name))
    });
    if let (true, Some((full, parent, name))) = (ours_only, whole) {
        let to = free_name(&parent, &name);
        match std::fs::rename(&full, &to) {
            Ok(()) => {
                // The held lock moved with the directory; the new one is taken before it is
                // released, so another process cannot slip in between on the old one.
                std::fs::create_dir_all(dir)
                    .map_err(|e| io_err(format!("cannot create {}", dir.display()), e))?;
                let new_lock = DirLock::acquire(dir)?;
                drop(lock);
                return Ok((new_lock, to));
            }
            Err(e) => tracing::warn!(
                backend = NAME,
                dir = %dir.display(),
                "cannot move the disk cache directory aside ({e}): moving its database only"
            ),
        }
    }
    let db = dir.join(folder);
    let to = free_name(dir, folder);
    std::fs::rename(&db, &to).map_err(|e| {
        io_err(
            format!(
                "cannot move the damaged {} to {}",
                db.display(),
                to.display()
            ),
            e,
        )
    })?;
    Ok((lock, to))
}

/// Handles a store found damaged at open, as `config.on_corruption` says: an error naming the
/// directory (nothing moved), the engine's `folder` deleted, or moved aside (logged with
/// `tracing::error!`). Returns the directory lock to keep (moving the directory takes a new
/// one) and where the store went, if it moved. `what` names the store in messages.
pub(crate) fn on_damage(
    dir: &Path,
    folder: &str,
    what: &str,
    config: &DiskConfig,
    lock: DirLock,
    why: &str,
) -> Result<(DirLock, Option<PathBuf>)> {
    let path = dir.join(folder);
    match config.on_corruption {
        OnCorruption::Error => Err(CacheError::backend(
            NAME,
            "open",
            false,
            format!(
                "the disk cache {what} in {} cannot be used: {why}. Nothing was moved or \
                 deleted; move {} away, or set disk_cache_on_corruption: move_aside (or reset) \
                 to start with an empty cache",
                dir.display(),
                path.display()
            ),
        )),
        OnCorruption::Reset => {
            tracing::error!(
                backend = NAME,
                dir = %dir.display(),
                "disk cache {what} cannot be used ({why}); disk_cache_on_corruption is reset: \
                 deleted it, starting with an empty cache"
            );
            std::fs::remove_dir_all(&path).map_err(|e| {
                CacheError::backend(
                    NAME,
                    "open",
                    false,
                    format!("cannot delete {}: {e}", path.display()),
                )
            })?;
            Ok((lock, None))
        }
        OnCorruption::MoveAside => {
            let (new_lock, to) = move_aside(dir, lock, folder)?;
            tracing::error!(
                backend = NAME,
                dir = %dir.display(),
                moved_to = %to.display(),
                "disk cache {what} is damaged ({why}): moved it aside to {}, starting with an \
                 empty cache (delete it once inspected)",
                to.display()
            );
            Ok((new_lock, Some(to)))
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `config.dir`.
    pub(crate) fn open(config: DiskConfig) -> Result<Store> {
        config.check()?;
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| {
            CacheError::backend(
                NAME,
                "open",
                false,
                format!("cannot create disk_cache_dir {}: {e}", dir.display()),
            )
        })?;
        let mut lock = DirLock::acquire(&dir)?;
        let db_path = dir.join(DB_DIR);
        let mut moved_aside = None;
        let (db, tree, acc) = match Self::open_watched(&db_path, &config) {
            Ok(x) => x,
            Err(OpenFailure::Other(e)) => return Err(e),
            Err(OpenFailure::Damaged(why)) => {
                let (new_lock, to) = on_damage(&dir, DB_DIR, "database", &config, lock, &why)?;
                lock = new_lock;
                moved_aside = to;
                match Self::open_watched(&db_path, &config) {
                    Ok(x) => x,
                    Err(OpenFailure::Other(e)) => return Err(e),
                    Err(OpenFailure::Damaged(why)) => {
                        return Err(CacheError::backend(
                            NAME,
                            "open",
                            false,
                            format!("a new database in {} cannot be used: {why}", dir.display()),
                        ));
                    }
                }
            }
        };
        let store = Store {
            engine: RwLock::new(Some(Arc::new(Engine { tree, db }))),
            failed: AtomicBool::new(false),
            recovering: Mutex::new(()),
            reopened: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            evicting: Mutex::new(()),
            seq: AtomicU64::new(acc.max_seq + 1),
            bytes: AtomicU64::new(acc.bytes),
            entries: AtomicU64::new(acc.entries),
            counters: Counters::default(),
            config,
            db_path,
            moved_aside,
            lock,
        };
        store.counters.damaged.store(acc.malformed, Relaxed);
        Ok(store)
    }

    /// [`Store::open_db`] on its own thread, waited for at most `config.open_timeout` (plus
    /// the time it spends waiting for a previous instance to release sled's lock). A thread
    /// that does not finish in time is left behind (Rust cannot stop a thread): its database
    /// is reported as damaged, and moving it aside lets a new one start in its place.
    fn open_watched(
        db_path: &Path,
        config: &DiskConfig,
    ) -> std::result::Result<Opened, OpenFailure> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let lock_wait = Arc::new(AtomicU64::new(0));
        let thread = {
            let (path, config, lock_wait) = (db_path.to_owned(), config.clone(), lock_wait.clone());
            std::thread::Builder::new()
                .name("llm-cache-disk-open".to_owned())
                .spawn(move || {
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        Self::open_db(&path, &config, &lock_wait)
                    }))
                    .unwrap_or_else(|p| {
                        Err(OpenFailure::Damaged(format!(
                            "opening it panicked ({})",
                            panic_message(&*p)
                        )))
                    });
                    // The receiver is gone if the wait timed out: the database is dropped.
                    let _ = tx.send(r);
                })
                .map_err(|e| {
                    OpenFailure::Other(CacheError::backend(
                        NAME,
                        "open",
                        true,
                        format!("cannot start a thread to open {}: {e}", db_path.display()),
                    ))
                })?
        };
        let start = Instant::now();
        loop {
            let deadline = config.open_timeout + Duration::from_millis(lock_wait.load(Relaxed));
            let left = deadline.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                Ok(r) => {
                    let _ = thread.join();
                    return r;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(OpenFailure::Damaged(
                        "the thread opening it died".to_owned(),
                    ));
                }
                Err(RecvTimeoutError::Timeout) if start.elapsed() < deadline => {}
                Err(RecvTimeoutError::Timeout) => {
                    tracing::error!(
                        backend = NAME,
                        db = %db_path.display(),
                        "opening the disk cache database did not finish within {:?} \
                         (disk_cache_open_timeout): treating it as damaged. The thread stuck in \
                         sled cannot be stopped and may keep using CPU and memory until the \
                         process restarts",
                        config.open_timeout
                    );
                    return Err(OpenFailure::Damaged(format!(
                        "sled did not finish opening it within {:?} (disk_cache_open_timeout); \
                         a damaged file can make sled loop",
                        config.open_timeout
                    )));
                }
            }
        }
    }

    /// Opens the database, checks its format marker and rebuilds the accounting. Time spent
    /// waiting for sled's own lock is added to `lock_wait` (ms).
    fn open_db(
        db_path: &Path,
        config: &DiskConfig,
        lock_wait: &AtomicU64,
    ) -> std::result::Result<Opened, OpenFailure> {
        let existed = has_data(db_path);
        let cfg = sled_config(db_path, config);
        // We hold the directory's LOCK, so a busy sled lock can only be a previous instance of
        // this process whose background I/O threads still hold the database for a moment after
        // it was dropped: wait for them (bounded) instead of failing a reopen.
        let open = || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                match cfg.open() {
                    // sled reports it as `Other` with this text (sled 0.34 config.rs).
                    Err(sled::Error::Io(e))
                        if e.to_string().starts_with("could not acquire lock on")
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        lock_wait.fetch_add(20, Relaxed);
                    }
                    other => return other,
                }
            }
        };
        let db = match catch_unwind(AssertUnwindSafe(open)) {
            Ok(Ok(db)) => db,
            // sled reads its own files short or malformed: damage, not an I/O failure.
            Ok(Err(sled::Error::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                return Err(OpenFailure::Damaged(format!("sled cannot read it ({e})")));
            }
            Ok(Err(sled::Error::Io(e))) => {
                return Err(OpenFailure::Other(CacheError::backend(
                    NAME,
                    "open",
                    e.kind() != std::io::ErrorKind::PermissionDenied,
                    format!("cannot open {}: {e}", db_path.display()),
                )));
            }
            Ok(Err(e)) => {
                return Err(OpenFailure::Damaged(format!("sled cannot open it ({e})")));
            }
            Err(p) => {
                return Err(OpenFailure::Damaged(format!(
                    "sled panicked while opening it ({})",
                    panic_message(&*p)
                )));
            }
        };
        let damaged = |e: CacheError| OpenFailure::Damaged(e.to_string());
        let marker = guarded("open", || db.get(FORMAT_KEY)).map_err(damaged)?;
        match marker {
            Some(v) if v == FORMAT_VALUE => {}
            Some(v) if v == FORMAT_VALUE_1 => {
                guarded("open", || db.insert(FORMAT_KEY, FORMAT_VALUE)).map_err(damaged)?;
            }
            Some(v) => {
                return Err(OpenFailure::Damaged(format!(
                    "it is marked {:?}, not {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT_VALUE)
                )));
            }
            None => {
                let foreign_trees = guarded("open", || Ok(db.tree_names()))
                    .map_err(damaged)?
                    .into_iter()
                    .filter(|n| &n[..] != b"__sled__default")
                    .count();
                let default_keys = guarded("open", || db.iter().next().transpose())
                    .map_err(damaged)?
                    .is_some();
                if existed || foreign_trees > 0 || default_keys {
                    return Err(OpenFailure::Damaged(
                        "it is not an llm-cache disk database (no llm-cache format marker): \
                         another program's sled database, or one damaged beyond recovery"
                            .to_owned(),
                    ));
                }
                guarded("open", || db.insert(FORMAT_KEY, FORMAT_VALUE)).map_err(damaged)?;
                // Flushed at once, so a crash right after creation does not leave a
                // database without its marker.
                guarded("open", || db.flush()).map_err(damaged)?;
            }
        }
        let tree = guarded("open", || db.open_tree(ENTRIES_TREE)).map_err(damaged)?;
        let start = Instant::now();
        let clean = guarded("open", || db.remove(CLEAN_KEY)).map_err(damaged)?;
        let acc = match clean.as_deref().and_then(Accounting::decode) {
            Some(acc) => {
                // Gone for good before the first write (see CLEAN_KEY).
                guarded("open", || db.flush()).map_err(damaged)?;
                acc
            }
            None => Self::scan_index(&tree).map_err(damaged)?,
        };
        tracing::info!(
            backend = NAME,
            db = %db_path.display(),
            entries = acc.entries,
            bytes = acc.bytes,
            counters = if clean.is_some() { "clean close" } else { "index scan" },
            ms = start.elapsed().as_millis() as u64,
            "disk cache opened"
        );
        Ok((db, tree, acc))
    }

    /// Records the counters for the next open (see [`CLEAN_KEY`]), after the final flush.
    /// Skipped when writes have been failing: the next open scans.
    fn write_clean_close(&self) -> Result<()> {
        if self.failed.load(Relaxed) {
            return Ok(());
        }
        let e = self.engine()?;
        let acc = Accounting {
            bytes: self.bytes.load(Relaxed),
            entries: self.entries.load(Relaxed),
            max_seq: self.seq.load(Relaxed).saturating_sub(1),
            malformed: 0,
        };
        self.guarded("close", || e.db.insert(CLEAN_KEY, &acc.encode()[..]))?;
        self.guarded("close", || e.db.flush()).map(|_| ())
    }

    /// Rebuilds the counters and the next `seq` from one scan of the index (reading the
    /// whole index also proves its pages are readable), then drops chunks that no index entry
    /// refers to (a crash between writing a value's chunks and its index entry).
    fn scan_index(tree: &sled::Tree) -> Result<Accounting> {
        let mut acc = Accounting::default();
        let mut malformed = Vec::new();
        let mut seqs = Vec::new();
        let mut it = tree.range([INDEX_PREFIX]..);
        let mut previous = None;
        while let Some((k, v)) = next_ordered("open", &mut it, &mut previous)? {
            match record::decode_index(&k, &v) {
                Some(e) => {
                    acc.bytes = acc.bytes.saturating_add(e.charged);
                    acc.entries += 1;
                    acc.max_seq = acc.max_seq.max(e.meta.seq);
                    seqs.push(e.meta.seq);
                }
                None => malformed.push(k),
            }
        }
        for k in malformed {
            acc.malformed += 1;
            guarded("open", || tree.remove(k))?;
        }
        seqs.sort_unstable();
        let mut orphans = Vec::new();
        let mut it = tree.range([CHUNK_PREFIX]..[INDEX_PREFIX]);
        let mut previous = None;
        while let Some((k, _)) = next_ordered("open", &mut it, &mut previous)? {
            match record::chunk_seq(&k) {
                Some(seq) if seqs.binary_search(&seq).is_ok() => {}
                _ => orphans.push(k),
            }
        }
        for k in orphans {
            guarded("open", || tree.remove(k))?;
        }
        Ok(acc)
    }

    /// The open database, or an error while it is being reopened.
    fn engine(&self) -> Result<Arc<Engine>> {
        self.engine
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| CacheError::Unavailable {
                backend: NAME.to_owned(),
                reason: format!(
                    "the database in {} is being reopened after an I/O failure",
                    self.db_path.display()
                ),
            })
    }

    /// [`guarded`], noting an I/O error for the maintenance thread (see [`Store::recover`]).
    fn guarded<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce() -> sled::Result<T>,
    ) -> Result<T> {
        let mut io_error = false;
        let r = guarded(operation, || {
            f().inspect_err(|e| io_error = matches!(e, sled::Error::Io(_)))
        });
        // Logged once per failure, not once per failing operation.
        if io_error
            && !self.failed.swap(true, Relaxed)
            && let Err(e) = &r
        {
            tracing::error!(
                backend = NAME,
                dir = %self.config.dir.display(),
                "disk cache I/O failure ({e}): writes fail (cache misses) until the disk \
                 accepts writes again and the database is reopened; reads go on where they can"
            );
        }
        r
    }

    /// Whether an I/O failure awaits [`Store::recover`].
    pub(crate) fn needs_recovery(&self) -> bool {
        self.failed.load(Relaxed)
    }

    /// After an I/O failure: checks whether sled still writes (then there is nothing to do),
    /// else whether the disk takes writes again (a probe file of [`PROBE_BYTES`]), and then
    /// reopens the database, which clears sled's sticky write error. Returns whether it
    /// reopened. Writes acknowledged after the last successful flush before the failure are
    /// lost (sled wrote nothing after its error); the accounting is rebuilt from what is on
    /// disk. While the database is reopened (a fraction of a second), operations fail
    /// (`Unavailable`).
    ///
    /// # Errors
    /// Still no room (the probe failed), or the reopen failed: try again later.
    pub(crate) fn recover(&self) -> Result<bool> {
        let _g = lock(&self.recovering);
        if !self.failed.load(Relaxed) {
            return Ok(false);
        }
        if let Ok(e) = self.engine() {
            let stamp = now_ms().to_be_bytes();
            let writes = guarded("recover", || {
                e.db.insert(PING_KEY, &stamp[..])?;
                e.db.flush()
            });
            if writes.is_ok() {
                self.failed.store(false, Relaxed);
                tracing::warn!(backend = NAME, dir = %self.config.dir.display(), "disk cache writes work again");
                return Ok(false);
            }
        }
        self.probe_space()?;
        // Close the failed database: sled's lock on its files goes with the last handle,
        // which in-flight operations drop as they finish (`open_db` waits for it).
        drop(
            self.engine
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let (db, tree, acc) = match Self::open_watched(&self.db_path, &self.config) {
            Ok(x) => x,
            Err(OpenFailure::Other(e)) => return Err(e),
            Err(OpenFailure::Damaged(why)) => {
                return Err(CacheError::backend(
                    NAME,
                    "recover",
                    true,
                    format!("cannot reopen {}: {why}", self.db_path.display()),
                ));
            }
        };
        let mut slot = self.engine.write().unwrap_or_else(PoisonError::into_inner);
        self.bytes.store(acc.bytes, Relaxed);
        self.entries.store(acc.entries, Relaxed);
        self.seq.fetch_max(acc.max_seq + 1, Relaxed);
        *slot = Some(Arc::new(Engine { tree, db }));
        drop(slot);
        self.failed.store(false, Relaxed);
        self.reopened.fetch_add(1, Relaxed);
        tracing::warn!(
            backend = NAME,
            dir = %self.config.dir.display(),
            entries = acc.entries,
            "disk cache reopened after an I/O failure: writes work again"
        );
        Ok(true)
    }

    /// Writes (and syncs, then removes) a file of [`PROBE_BYTES`] in the cache directory.
    fn probe_space(&self) -> Result<()> {
        use std::io::Write;
        let path = self.config.dir.join(SPACE_PROBE);
        let r = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&vec![0u8; PROBE_BYTES])?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&path);
        r.map_err(|e| {
            CacheError::backend(
                NAME,
                "recover",
                true,
                format!(
                    "the disk still refuses writes in {}: {e}",
                    self.config.dir.display()
                ),
            )
        })
    }

    pub(crate) fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// Whether every write is flushed before it is acknowledged.
    pub(crate) fn sync_writes(&self) -> bool {
        self.config.flush_interval.is_zero()
    }

    fn stripe(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        // FNV-1a: cheap and spreads cache keys (which end in hex hashes) well.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        lock(&self.stripes[(h % STRIPES as u64) as usize])
    }

    fn index_added(&self, charged: u64) {
        self.bytes.fetch_add(charged, Relaxed);
        self.entries.fetch_add(1, Relaxed);
    }

    /// Removes an index entry, keeping the counters equal to the sums over the index.
    fn remove_index(&self, operation: &'static str, ikey: &[u8]) -> Result<()> {
        let e = self.engine()?;
        if let Some(v) = self.guarded(operation, || e.tree.remove(ikey))? {
            let charged = record::decode_index(ikey, &v).map_or(0, |e| e.charged);
            let _ = self
                .bytes
                .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(charged)));
            let _ = self
                .entries
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
        }
        Ok(())
    }

    /// Reads a live value.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let e = self.engine()?;
        let Some(raw) = self.guarded("get", || e.tree.get(key))? else {
            return Ok(None);
        };
        let (damage, chunked) = match record::decode(Bytes::from_owner(raw)) {
            Ok((meta, _)) if meta.is_expired(now_ms()) => return Ok(None),
            Ok((_, record::Stored::Inline(value))) => return Ok(Some(value)),
            Ok((meta, record::Stored::Chunked { count, len, crc })) => {
                // Point reads, not a range scan: sled's iterators can need writes (node
                // maintenance) that fail on a full disk, its point reads do not.
                let mut parts = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let k = record::chunk_key(meta.seq, i);
                    match self.guarded("get", || e.tree.get(&k))? {
                        Some(v) => parts.push((k, v)),
                        None => break,
                    }
                }
                match record::assemble(meta.seq, count, len, crc, &parts) {
                    Ok(value) => return Ok(Some(value)),
                    // An overwrite or a removal may have taken the chunks since the record
                    // was read: then this read is a miss, not damage.
                    Err(_) if self.record_changed(&e, key, meta)? => return Ok(None),
                    Err(damage) => (damage, Some(meta)),
                }
            }
            Err(damage) => (damage, None),
        };
        self.counters.damaged.fetch_add(1, Relaxed);
        tracing::warn!(
            backend = NAME,
            key,
            ?damage,
            "damaged disk cache record: treated as a miss and removed"
        );
        if let Err(e) = self.remove_damaged(key, chunked) {
            tracing::warn!(backend = NAME, key, "cannot remove a damaged record: {e}");
        }
        Ok(None)
    }

    /// Whether the record under `key` is no longer the one with `meta`.
    fn record_changed(&self, e: &Engine, key: &str, meta: Meta) -> Result<bool> {
        let now = self.guarded("get", || e.tree.get(key))?;
        Ok(now.as_deref().and_then(record::decode_meta) != Some(meta))
    }

    /// Removes the chunks of the value stored under `seq`, if it has any.
    fn remove_chunks(&self, e: &Engine, operation: &'static str, seq: u64) -> Result<()> {
        let keys = self.guarded(operation, || {
            e.tree
                .scan_prefix(record::chunk_prefix(seq))
                .keys()
                .collect::<sled::Result<Vec<_>>>()
        })?;
        for k in keys {
            self.guarded(operation, || e.tree.remove(k))?;
        }
        Ok(())
    }

    /// Removes a record that failed its check, if it is still the same: one that does not
    /// decode, or (`chunked`) the chunked record with that metadata, and its chunks. Its index
    /// entry, if any, becomes an orphan that the sweeper or the evictor drops.
    fn remove_damaged(&self, key: &str, chunked: Option<Meta>) -> Result<()> {
        let e = self.engine()?;
        let _g = self.stripe(key.as_bytes());
        let Some(raw) = self.guarded("get", || e.tree.get(key))? else {
            return Ok(());
        };
        let same = match chunked {
            Some(meta) => record::decode_meta(&raw) == Some(meta),
            None => record::decode(Bytes::from_owner(raw)).is_err(),
        };
        if same {
            self.guarded("get", || e.tree.remove(key))?;
            if let Some(meta) = chunked {
                self.remove_chunks(&e, "get", meta.seq)?;
            }
        }
        Ok(())
    }

    /// Writes a value. `Some(ZERO)` TTL deletes.
    pub(crate) fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        if ttl == Some(Duration::ZERO) {
            self.delete(key)?;
            return Ok(());
        }
        let charged = record::charged(key.len(), value.len());
        if charged > self.config.max_bytes {
            return Err(CacheError::ValueTooLarge {
                backend: NAME.to_owned(),
                size: value.len(),
                limit: self.max_value_size(),
            });
        }
        let meta = Meta {
            expires_at: ttl.map(|t| {
                now_ms().saturating_add((t.as_millis().min(u64::MAX as u128) as u64).max(1))
            }),
            seq: self.seq.fetch_add(1, Relaxed),
        };
        let rec = record::encode(meta, value);
        let ikey = meta.index_key(key.as_bytes());
        {
            let e = self.engine()?;
            // A long value's chunks go first, under this write's own `seq`: a crash before
            // the index entry leaves chunks nobody refers to, dropped at the next open.
            if value.len() > record::CHUNK_LEN {
                for (k, chunk) in record::chunks(meta.seq, value) {
                    self.guarded("set", || e.tree.insert(k, chunk))?;
                }
            }
            let _g = self.stripe(key.as_bytes());
            self.guarded("set", || {
                e.tree.insert(&ikey[..], &record::index_value(charged)[..])
            })?;
            self.index_added(charged);
            let old = self.guarded("set", || e.tree.insert(key, rec))?;
            if let Some(old_meta) = old.as_deref().and_then(record::decode_meta) {
                if old.as_deref().and_then(record::chunk_count).is_some() {
                    self.remove_chunks(&e, "set", old_meta.seq)?;
                }
                self.remove_index("set", &old_meta.index_key(key.as_bytes()))?;
            }
        }
        if self.bytes.load(Relaxed) > self.config.max_bytes
            && let Err(e) = self.evict()
        {
            // The write itself succeeded; the next write or sweep retries the eviction.
            tracing::warn!(backend = NAME, "eviction after a write failed: {e}");
        }
        Ok(())
    }

    /// Largest value a `set` accepts (for a short key).
    pub(crate) fn max_value_size(&self) -> usize {
        self.config
            .max_bytes
            .saturating_sub(record::charged(128, 0))
            .min(usize::MAX as u64) as usize
    }

    /// Deletes a key; returns whether it existed.
    pub(crate) fn delete(&self, key: &str) -> Result<bool> {
        let e = self.engine()?;
        let _g = self.stripe(key.as_bytes());
        match self.guarded("delete", || e.tree.remove(key))? {
            Some(old) => {
                if let Some(m) = record::decode_meta(&old) {
                    if record::chunk_count(&old).is_some() {
                        self.remove_chunks(&e, "delete", m.seq)?;
                    }
                    self.remove_index("delete", &m.index_key(key.as_bytes()))?;
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Handles one index entry for the sweeper or the evictor: removes the record if the
    /// index entry is its own (returns true), and the index entry in every case.
    fn remove_indexed(&self, operation: &'static str, ikey: &[u8], ivalue: &[u8]) -> Result<bool> {
        let e = self.engine()?;
        let Some(entry) = record::decode_index(ikey, ivalue) else {
            self.counters.damaged.fetch_add(1, Relaxed);
            self.guarded(operation, || e.tree.remove(ikey))?;
            return Ok(false);
        };
        let _g = self.stripe(&entry.key);
        let current = self.guarded(operation, || e.tree.get(&entry.key))?;
        let own = current
            .as_deref()
            .and_then(record::decode_meta)
            .is_some_and(|m| m == entry.meta);
        if own {
            self.guarded(operation, || e.tree.remove(&entry.key))?;
        }
        // The chunks of this version, if it had any: its own, or those an interrupted write
        // or removal left behind (`seq` is unique to a version, the current record's differ).
        if !own || current.as_deref().and_then(record::chunk_count).is_some() {
            self.remove_chunks(&e, operation, entry.meta.seq)?;
        }
        self.remove_index(operation, ikey)?;
        Ok(own)
    }

    /// Evicts entries, first to expire first (then first stored), until under the bound.
    pub(crate) fn evict(&self) -> Result<()> {
        let e = self.engine()?;
        let _g = lock(&self.evicting);
        while self.bytes.load(Relaxed) > self.config.max_bytes {
            let first = self.guarded("evict", || {
                e.tree.range([INDEX_PREFIX]..).next().transpose()
            })?;
            let Some((ik, iv)) = first else { break };
            let expired =
                record::decode_index(&ik, &iv).is_some_and(|e| e.meta.is_expired(now_ms()));
            if self.remove_indexed("evict", &ik, &iv)? {
                let c = if expired {
                    &self.counters.expired_removed
                } else {
                    &self.counters.evicted
                };
                c.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// Removes every expired entry (and orphaned index entries among them). `stop` is
    /// polled between chunks. Returns the number of records removed.
    pub(crate) fn sweep_expired(&self, stop: &dyn Fn() -> bool) -> Result<u64> {
        let e = self.engine()?;
        let mut removed = 0u64;
        loop {
            let now = now_ms();
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut it = e.tree.range([INDEX_PREFIX]..);
            let mut previous = None;
            while let Some((k, v)) = next_ordered("sweep", &mut it, &mut previous)? {
                let expired = match record::decode_index(&k, &v) {
                    Some(e) => e.meta.is_expired(now),
                    None => true, // malformed: removed below
                };
                if !expired {
                    break;
                }
                chunk.push((k, v));
                if chunk.len() == CHUNK {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            for (k, v) in &chunk {
                if self.remove_indexed("sweep", k, v)? {
                    removed += 1;
                }
            }
            if stop() {
                break;
            }
        }
        self.counters.expired_removed.fetch_add(removed, Relaxed);
        Ok(removed)
    }

    /// Removes every entry (`None`) or the entries under `ns:`. Returns the records removed.
    pub(crate) fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let e = self.engine()?;
        match namespace {
            None => {
                // Every writer waits; records go first, so a crash midway leaves orphans only.
                let _all: Vec<MutexGuard<'_, ()>> = self.stripes.iter().map(lock).collect();
                let mut removed = 0u64;
                let mut it = e.tree.iter();
                let mut previous = None;
                while let Some((k, _)) = next_ordered("clear", &mut it, &mut previous)? {
                    if k.first() == Some(&INDEX_PREFIX) {
                        self.remove_index("clear", &k)?;
                    } else if k.first() == Some(&CHUNK_PREFIX) {
                        self.guarded("clear", || e.tree.remove(&k))?;
                    } else if self.guarded("clear", || e.tree.remove(&k))?.is_some() {
                        removed += 1;
                    }
                }
                Ok(removed)
            }
            Some(ns) => {
                let prefix = format!("{ns}:");
                let mut removed = 0u64;
                loop {
                    let keys: Vec<sled::IVec> = self.guarded("clear", || {
                        e.tree
                            .scan_prefix(prefix.as_bytes())
                            .keys()
                            .take(CHUNK)
                            .collect()
                    })?;
                    if keys.is_empty() {
                        break;
                    }
                    for k in keys {
                        // Keys are UTF-8 (they were set as &str).
                        let key = String::from_utf8_lossy(&k);
                        if self.delete(&key)? {
                            removed += 1;
                        }
                    }
                }
                Ok(removed)
            }
        }
    }

    /// Flushes every write to disk (fsync).
    pub(crate) fn flush(&self) -> Result<()> {
        let e = self.engine()?;
        self.guarded("flush", || e.db.flush()).map(|_| ())
    }

    /// Writes and reads back a marker key: the database answers and accepts writes.
    pub(crate) fn ping(&self) -> Result<()> {
        let e = self.engine()?;
        let stamp = now_ms().to_be_bytes();
        self.guarded("ping", || e.db.insert(PING_KEY, &stamp[..]))?;
        match self.guarded("ping", || e.db.get(PING_KEY))? {
            Some(v) if v == stamp[..] => Ok(()),
            _ => Err(CacheError::backend(
                NAME,
                "ping",
                false,
                "a value written to the database did not read back",
            )),
        }
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> DiskStats {
        DiskStats {
            entries: self.entries.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            max_bytes: self.config.max_bytes,
            size_on_disk: self
                .engine()
                .ok()
                .and_then(|e| e.db.size_on_disk().ok())
                .unwrap_or(0),
            expired_removed: self.counters.expired_removed.load(Relaxed),
            evicted: self.counters.evicted.load(Relaxed),
            damaged: self.counters.damaged.load(Relaxed),
            reopened: self.reopened.load(Relaxed),
            failing: self.failed.load(Relaxed),
        }
    }

    /// The database folder.
    pub(crate) fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Where a damaged store found at open was moved, if one was.
    pub(crate) fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// The lock file.
    pub(crate) fn lock_path(&self) -> &Path {
        self.lock.path()
    }

    /// Test hook: the raw sled tree.
    #[cfg(test)]
    pub(crate) fn tree(&self) -> sled::Tree {
        self.engine().expect("open").tree.clone()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Clean shutdown: every acknowledged write reaches the disk, then the counters are
        // recorded so the next open need not scan the index.
        if let Err(e) = self.flush() {
            tracing::error!(backend = NAME, dir = %self.config.dir.display(), "flush on close failed: {e}");
        } else if let Err(e) = self.write_clean_close() {
            tracing::warn!(backend = NAME, dir = %self.config.dir.display(), "recording the counters on close failed (the next open scans the index): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        Store::open(DiskConfig::new(dir).with_max_bytes(1 << 20)).unwrap()
    }

    impl Store {
        /// Closes without the clean-close summary, as a crash (or a store whose writes were
        /// failing) does: the next open scans the index.
        fn crash(self) {
            self.failed.store(true, Relaxed);
        }
    }

    /// The clean-close summary in a closed store's database (opened directly).
    fn summary(dir: &Path) -> Option<Accounting> {
        let config = DiskConfig::new(dir);
        let db = sled_config(&dir.join(DB_DIR), &config).open().unwrap();
        let raw = db.get(CLEAN_KEY).unwrap();
        raw.as_deref().and_then(Accounting::decode)
    }

    #[test]
    fn a_clean_close_records_the_counters_and_the_next_open_uses_them() {
        let dir = tempfile::tempdir().unwrap();
        let long = vec![7u8; 2 * record::CHUNK_LEN];
        let (entries, bytes, seq) = {
            let s = store(dir.path());
            for i in 0..50 {
                s.set(&format!("k{i}"), b"{\"answer\":42}", None).unwrap();
            }
            s.set("long", &long, Some(Duration::from_secs(600)))
                .unwrap();
            s.delete("k3").unwrap();
            let st = s.stats();
            (st.entries, st.bytes, s.seq.load(Relaxed))
        };
        let rec = summary(dir.path()).expect("a clean close leaves a summary");
        assert_eq!(
            (rec.entries, rec.bytes, rec.max_seq + 1),
            (entries, bytes, seq)
        );
        let s = store(dir.path());
        assert_eq!((s.stats().entries, s.stats().bytes), (entries, bytes));
        assert_eq!(s.seq.load(Relaxed), seq, "seq continues where it stopped");
        assert!(
            s.engine().unwrap().db.get(CLEAN_KEY).unwrap().is_none(),
            "the summary is removed at open: a crash from now on leaves none"
        );
        // The store works as before: new writes, old records.
        s.set("after", b"{}", None).unwrap();
        assert_eq!(s.get("long").unwrap().as_deref(), Some(&long[..]));
        assert_eq!(s.stats().entries, entries + 1);
    }

    #[test]
    fn the_summary_is_what_the_next_open_trusts_and_a_missing_one_means_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            for i in 0..10 {
                s.set(&format!("k{i}"), b"{}", None).unwrap();
            }
        }
        // Replace the summary: the open takes its counters without scanning...
        {
            let config = DiskConfig::new(dir.path());
            let db = sled_config(&dir.path().join(DB_DIR), &config)
                .open()
                .unwrap();
            let fake = Accounting {
                bytes: 1,
                entries: 4242,
                max_seq: 99,
                malformed: 0,
            };
            db.insert(CLEAN_KEY, &fake.encode()[..]).unwrap();
            db.flush().unwrap();
        }
        {
            let s = store(dir.path());
            assert_eq!(s.stats().entries, 4242);
            s.crash();
        }
        // ...and without one (a crash), the index is scanned: the true counts.
        assert!(summary(dir.path()).is_none());
        let s = store(dir.path());
        assert_eq!(s.stats().entries, 10);
        // A summary of another version is ignored too.
        assert!(Accounting::decode(&[2; 25]).is_none());
        assert!(Accounting::decode(&[CLEAN_VERSION; 24]).is_none());
    }

    #[test]
    fn a_damaged_record_is_a_miss_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.set("k", b"{\"answer\":42}", Some(Duration::from_secs(60)))
            .unwrap();
        let raw = s.tree().get("k").unwrap().unwrap();
        // Flip one bit of the value: the CRC catches it.
        let mut bad = raw.to_vec();
        let last = bad.len() - 2;
        bad[last] ^= 0x01;
        s.tree().insert("k", bad).unwrap();
        assert_eq!(s.get("k").unwrap(), None);
        assert!(s.tree().get("k").unwrap().is_none(), "removed");
        assert_eq!(s.stats().damaged, 1);
        // A record that is not ours at all (header) is a miss too.
        s.tree().insert("j", &b"\x07garbage"[..]).unwrap();
        assert_eq!(s.get("j").unwrap(), None);
        assert_eq!(s.stats().damaged, 2);
        // The damaged record's index entry is an orphan now: evicting or sweeping drops it
        // without touching anything else, and the counters follow.
        assert_eq!(s.stats().entries, 1);
        s.clear(None).unwrap();
        assert_eq!((s.stats().entries, s.stats().bytes), (0, 0));
    }

    fn chunk_keys(s: &Store) -> usize {
        s.tree().range([CHUNK_PREFIX]..[INDEX_PREFIX]).count()
    }

    #[test]
    fn long_values_live_in_chunks_that_go_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let long = |b: u8| vec![b; 3 * record::CHUNK_LEN + 10];
        s.set("k", &long(1), None).unwrap();
        assert_eq!(chunk_keys(&s), 4);
        assert_eq!(s.get("k").unwrap().as_deref(), Some(&long(1)[..]));
        // Overwritten: the old chunks go; by a short value: all of them.
        s.set("k", &long(2), None).unwrap();
        assert_eq!(chunk_keys(&s), 4);
        assert_eq!(s.get("k").unwrap().as_deref(), Some(&long(2)[..]));
        s.set("k", b"short", None).unwrap();
        assert_eq!(chunk_keys(&s), 0);
        // Deleted, expired and swept, evicted, cleared: no chunk is left behind.
        s.set("k", &long(3), None).unwrap();
        assert!(s.delete("k").unwrap());
        s.set("t", &long(4), Some(Duration::from_millis(1)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.get("t").unwrap(), None, "expired");
        assert_eq!(s.sweep_expired(&|| false).unwrap(), 1);
        assert_eq!(chunk_keys(&s), 0);
        s.set("c", &long(6), None).unwrap();
        assert_eq!(s.clear(None).unwrap(), 1);
        assert_eq!(chunk_keys(&s), 0);
        assert_eq!((s.stats().entries, s.stats().bytes), (0, 0));
        s.set("e", &long(5), None).unwrap();
        s.bytes.store(s.config.max_bytes + 1, Relaxed);
        s.evict().unwrap();
        assert_eq!(s.stats().evicted, 1);
        assert_eq!(chunk_keys(&s), 0);
    }

    #[test]
    fn a_damaged_or_missing_chunk_is_a_miss_and_the_entry_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let long = vec![9u8; 2 * record::CHUNK_LEN + 1];
        for key in ["flipped", "missing"] {
            s.set(key, &long, None).unwrap();
        }
        let seq_of = |key: &str| {
            record::decode_meta(&s.tree().get(key).unwrap().unwrap())
                .unwrap()
                .seq
        };
        let k = record::chunk_key(seq_of("flipped"), 1);
        let mut bad = s.tree().get(&k).unwrap().unwrap().to_vec();
        bad[100] ^= 1;
        s.tree().insert(&k, bad).unwrap();
        s.tree()
            .remove(record::chunk_key(seq_of("missing"), 2))
            .unwrap();
        for key in ["flipped", "missing"] {
            assert_eq!(s.get(key).unwrap(), None, "{key}");
            assert!(
                s.tree().get(key).unwrap().is_none(),
                "{key}: record removed"
            );
        }
        assert_eq!(s.stats().damaged, 2);
        assert_eq!(chunk_keys(&s), 0, "their chunks removed");
        // The index entries are orphans now; a sweep or eviction drops them.
        s.clear(None).unwrap();
        assert_eq!((s.stats().entries, s.stats().bytes), (0, 0));
    }

    #[test]
    fn chunks_without_an_index_entry_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let long = vec![3u8; 2 * record::CHUNK_LEN];
        {
            let s = store(dir.path());
            s.set("kept", &long, None).unwrap();
            // What a crash after writing a value's chunks, before its index entry, leaves.
            for (k, v) in record::chunks(10_000, &long) {
                s.tree().insert(k, v).unwrap();
            }
            assert_eq!(chunk_keys(&s), 4);
            s.crash();
        }
        let s = store(dir.path());
        assert_eq!(chunk_keys(&s), 2);
        assert_eq!(s.get("kept").unwrap().as_deref(), Some(&long[..]));
    }

    #[test]
    fn a_database_of_format_1_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            s.set("old", b"value", None).unwrap();
            s.engine()
                .unwrap()
                .db
                .insert(FORMAT_KEY, FORMAT_VALUE_1)
                .unwrap();
        }
        let s = store(dir.path());
        assert_eq!(s.get("old").unwrap().as_deref(), Some(&b"value"[..]));
        let marker = s.engine().unwrap().db.get(FORMAT_KEY).unwrap().unwrap();
        assert_eq!(&marker[..], FORMAT_VALUE);
    }

    #[test]
    fn orphaned_index_entries_from_a_crash_are_counted_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            s.set("live", b"v", Some(Duration::from_millis(1))).unwrap();
            // What a crash between "insert index" and "insert record" leaves: an index entry
            // for a newer record that never made it, expired, and one for a missing key.
            let newer = Meta {
                expires_at: Some(1),
                seq: 1_000,
            };
            s.tree()
                .insert(newer.index_key(b"live"), &record::index_value(50)[..])
                .unwrap();
            let gone = Meta {
                expires_at: None,
                seq: 1_001,
            };
            s.tree()
                .insert(gone.index_key(b"gone"), &record::index_value(70)[..])
                .unwrap();
            s.crash();
        }
        let s = store(dir.path());
        let before = s.stats();
        assert_eq!(before.entries, 3, "orphans counted by the rebuild");
        assert_eq!(
            s.seq.load(Relaxed),
            1_002,
            "seq continues after every index entry"
        );
        std::thread::sleep(Duration::from_millis(5));
        // The sweep removes the expired record and the expired orphan; only the record counts.
        assert_eq!(s.sweep_expired(&|| false).unwrap(), 1);
        assert_eq!(s.stats().entries, 1);
        // The remaining orphan (no expiry) goes when the bound needs room: it holds no record.
        s.bytes.store(s.config.max_bytes + 1, Relaxed);
        s.evict().unwrap();
        assert_eq!(s.stats().evicted, 0, "an orphan is not an eviction");
        assert!(s.tree().range([INDEX_PREFIX]..).next().is_none());
    }
}
