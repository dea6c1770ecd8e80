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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cache_core::envelope::now_ms;
use cache_core::{CacheError, Result};

use crate::NAME;
use crate::config::{DiskConfig, OnCorruption};
use crate::lock::DirLock;
use crate::record::{self, INDEX_PREFIX, Meta};

/// Name of the database folder inside the cache directory.
pub(crate) const DB_DIR: &str = "db";
/// Key of the format marker in sled's default tree.
const FORMAT_KEY: &[u8] = b"llm-cache-format";
/// The format marker's value.
const FORMAT_VALUE: &[u8] = b"llm-cache-disk/1";
/// Name of the sled tree holding records and the index.
const ENTRIES_TREE: &[u8] = b"entries";
/// Key written and read back by `ping`.
const PING_KEY: &[u8] = b"llm-cache-ping";
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

/// Counters of what the store did since it was opened.
#[derive(Debug, Default)]
struct Counters {
    expired_removed: AtomicU64,
    evicted: AtomicU64,
    damaged: AtomicU64,
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
}

/// How an open failed.
enum OpenFailure {
    /// The database is corrupt or foreign: `reset` may help.
    Corrupt(String),
    /// Anything else (permissions, lock, I/O).
    Other(CacheError),
}

/// The store. Field order matters: sled is closed before the directory lock is released.
pub(crate) struct Store {
    tree: sled::Tree,
    db: sled::Db,
    stripes: Box<[Mutex<()>]>,
    evicting: Mutex<()>,
    seq: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
    counters: Counters,
    config: DiskConfig,
    db_path: PathBuf,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
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
        let lock = DirLock::acquire(&dir)?;
        let db_path = dir.join(DB_DIR);
        let (db, tree, acc) = match Self::open_db(&db_path, &config) {
            Ok(x) => x,
            Err(OpenFailure::Other(e)) => return Err(e),
            Err(OpenFailure::Corrupt(why)) => match config.on_corruption {
                OnCorruption::Error => {
                    return Err(CacheError::backend(
                        NAME,
                        "open",
                        false,
                        format!(
                            "the disk cache database in {} cannot be used: {why}. Nothing was \
                             deleted; move {} away, or set disk_cache_on_corruption: reset to \
                             start with an empty cache",
                            dir.display(),
                            db_path.display()
                        ),
                    ));
                }
                OnCorruption::Reset => {
                    tracing::warn!(
                        dir = %dir.display(),
                        "disk cache database cannot be used ({why}); disk_cache_on_corruption is reset: deleting it and starting empty"
                    );
                    std::fs::remove_dir_all(&db_path).map_err(|e| {
                        CacheError::backend(
                            NAME,
                            "open",
                            false,
                            format!("cannot delete {}: {e}", db_path.display()),
                        )
                    })?;
                    match Self::open_db(&db_path, &config) {
                        Ok(x) => x,
                        Err(OpenFailure::Other(e)) => return Err(e),
                        Err(OpenFailure::Corrupt(why)) => {
                            return Err(CacheError::backend(
                                NAME,
                                "open",
                                false,
                                format!(
                                    "a new database in {} cannot be used: {why}",
                                    dir.display()
                                ),
                            ));
                        }
                    }
                }
            },
        };
        let store = Store {
            tree,
            db,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            evicting: Mutex::new(()),
            seq: AtomicU64::new(acc.max_seq + 1),
            bytes: AtomicU64::new(acc.bytes),
            entries: AtomicU64::new(acc.entries),
            counters: Counters::default(),
            config,
            db_path,
            lock,
        };
        store.counters.damaged.store(acc.malformed, Relaxed);
        Ok(store)
    }

    fn open_db(
        db_path: &Path,
        config: &DiskConfig,
    ) -> std::result::Result<(sled::Db, sled::Tree, Accounting), OpenFailure> {
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
                    }
                    other => return other,
                }
            }
        };
        let db = match catch_unwind(AssertUnwindSafe(open)) {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(e))) => {
                return Err(OpenFailure::Other(CacheError::backend(
                    NAME,
                    "open",
                    e.kind() != std::io::ErrorKind::PermissionDenied,
                    format!("cannot open {}: {e}", db_path.display()),
                )));
            }
            Ok(Err(e)) => {
                return Err(OpenFailure::Corrupt(format!("sled cannot open it ({e})")));
            }
            Err(p) => {
                return Err(OpenFailure::Corrupt(format!(
                    "sled panicked while opening it ({})",
                    panic_message(&*p)
                )));
            }
        };
        let corrupt = |e: CacheError| OpenFailure::Corrupt(e.to_string());
        let marker = guarded("open", || db.get(FORMAT_KEY)).map_err(corrupt)?;
        match marker {
            Some(v) if v == FORMAT_VALUE => {}
            Some(v) => {
                return Err(OpenFailure::Corrupt(format!(
                    "it is marked {:?}, not {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT_VALUE)
                )));
            }
            None => {
                let foreign_trees = guarded("open", || Ok(db.tree_names()))
                    .map_err(corrupt)?
                    .into_iter()
                    .filter(|n| &n[..] != b"__sled__default")
                    .count();
                let default_keys = guarded("open", || db.iter().next().transpose())
                    .map_err(corrupt)?
                    .is_some();
                if existed || foreign_trees > 0 || default_keys {
                    return Err(OpenFailure::Corrupt(
                        "it is not an llm-cache disk database (no llm-cache format marker): \
                         another program's sled database, or one damaged beyond recovery"
                            .to_owned(),
                    ));
                }
                guarded("open", || db.insert(FORMAT_KEY, FORMAT_VALUE)).map_err(corrupt)?;
                // Flushed at once, so a crash right after creation does not leave a
                // database without its marker.
                guarded("open", || db.flush()).map_err(corrupt)?;
            }
        }
        let tree = guarded("open", || db.open_tree(ENTRIES_TREE)).map_err(corrupt)?;
        let acc = Self::scan_index(&tree).map_err(corrupt)?;
        Ok((db, tree, acc))
    }

    /// Rebuilds the counters and the next `seq` from one scan of the index (reading the
    /// whole index also proves its pages are readable).
    fn scan_index(tree: &sled::Tree) -> Result<Accounting> {
        let mut acc = Accounting::default();
        let mut malformed = Vec::new();
        let mut it = tree.range([INDEX_PREFIX]..);
        let mut previous = None;
        while let Some((k, v)) = next_ordered("open", &mut it, &mut previous)? {
            match record::decode_index(&k, &v) {
                Some(e) => {
                    acc.bytes = acc.bytes.saturating_add(e.charged);
                    acc.entries += 1;
                    acc.max_seq = acc.max_seq.max(e.meta.seq);
                }
                None => malformed.push(k),
            }
        }
        for k in malformed {
            acc.malformed += 1;
            guarded("open", || tree.remove(k))?;
        }
        Ok(acc)
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
        if let Some(v) = guarded(operation, || self.tree.remove(ikey))? {
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
        let Some(raw) = guarded("get", || self.tree.get(key))? else {
            return Ok(None);
        };
        match record::decode(Bytes::from_owner(raw)) {
            Ok((meta, value)) => Ok((!meta.is_expired(now_ms())).then_some(value)),
            Err(damage) => {
                self.counters.damaged.fetch_add(1, Relaxed);
                tracing::warn!(
                    backend = NAME,
                    key,
                    ?damage,
                    "damaged disk cache record: treated as a miss and removed"
                );
                self.remove_damaged(key)?;
                Ok(None)
            }
        }
    }

    /// Removes a record that failed its check (if it still does). Its index entry, if any,
    /// becomes an orphan that the sweeper or the evictor drops.
    fn remove_damaged(&self, key: &str) -> Result<()> {
        let _g = self.stripe(key.as_bytes());
        if let Some(raw) = guarded("get", || self.tree.get(key))?
            && record::decode(Bytes::from_owner(raw)).is_err()
        {
            guarded("get", || self.tree.remove(key))?;
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
            let _g = self.stripe(key.as_bytes());
            guarded("set", || {
                self.tree
                    .insert(&ikey[..], &record::index_value(charged)[..])
            })?;
            self.index_added(charged);
            let old = guarded("set", || self.tree.insert(key, rec))?;
            if let Some(old_meta) = old.as_deref().and_then(record::decode_meta) {
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
        let _g = self.stripe(key.as_bytes());
        match guarded("delete", || self.tree.remove(key))? {
            Some(old) => {
                if let Some(m) = record::decode_meta(&old) {
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
        let Some(entry) = record::decode_index(ikey, ivalue) else {
            self.counters.damaged.fetch_add(1, Relaxed);
            guarded(operation, || self.tree.remove(ikey))?;
            return Ok(false);
        };
        let _g = self.stripe(&entry.key);
        let current = guarded(operation, || self.tree.get(&entry.key))?;
        let own = current
            .as_deref()
            .and_then(record::decode_meta)
            .is_some_and(|m| m == entry.meta);
        if own {
            guarded(operation, || self.tree.remove(&entry.key))?;
        }
        self.remove_index(operation, ikey)?;
        Ok(own)
    }

    /// Evicts entries, first to expire first (then first stored), until under the bound.
    pub(crate) fn evict(&self) -> Result<()> {
        let _g = lock(&self.evicting);
        while self.bytes.load(Relaxed) > self.config.max_bytes {
            let first = guarded("evict", || {
                self.tree.range([INDEX_PREFIX]..).next().transpose()
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
        let mut removed = 0u64;
        loop {
            let now = now_ms();
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut it = self.tree.range([INDEX_PREFIX]..);
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
        match namespace {
            None => {
                // Every writer waits; records go first, so a crash midway leaves orphans only.
                let _all: Vec<MutexGuard<'_, ()>> = self.stripes.iter().map(lock).collect();
                let mut removed = 0u64;
                let mut it = self.tree.iter();
                let mut previous = None;
                while let Some((k, _)) = next_ordered("clear", &mut it, &mut previous)? {
                    if k.first() == Some(&INDEX_PREFIX) {
                        self.remove_index("clear", &k)?;
                    } else if guarded("clear", || self.tree.remove(&k))?.is_some() {
                        removed += 1;
                    }
                }
                Ok(removed)
            }
            Some(ns) => {
                let prefix = format!("{ns}:");
                let mut removed = 0u64;
                loop {
                    let keys: Vec<sled::IVec> = guarded("clear", || {
                        self.tree
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
        guarded("flush", || self.db.flush()).map(|_| ())
    }

    /// Writes and reads back a marker key: the database answers and accepts writes.
    pub(crate) fn ping(&self) -> Result<()> {
        let stamp = now_ms().to_be_bytes();
        guarded("ping", || self.db.insert(PING_KEY, &stamp[..]))?;
        match guarded("ping", || self.db.get(PING_KEY))? {
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
            size_on_disk: self.db.size_on_disk().unwrap_or(0),
            expired_removed: self.counters.expired_removed.load(Relaxed),
            evicted: self.counters.evicted.load(Relaxed),
            damaged: self.counters.damaged.load(Relaxed),
        }
    }

    /// The database folder.
    pub(crate) fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The lock file.
    pub(crate) fn lock_path(&self) -> &Path {
        self.lock.path()
    }

    /// Test hook: the raw sled tree.
    #[cfg(test)]
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Clean shutdown: every acknowledged write reaches the disk.
        if let Err(e) = self.flush() {
            tracing::error!(backend = NAME, dir = %self.config.dir.display(), "flush on close failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        Store::open(DiskConfig::new(dir).with_max_bytes(1 << 20)).unwrap()
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
