//! The log engine (`disk_cache_engine: log`): append-only segment files and an index of every
//! entry in memory. A hit is one hash lookup and one positioned read (`pread`) of one record,
//! however many entries the cache holds; sled's cold reads instead rebuild a tree page from
//! fragments scattered over its log, and their tail grows with the size of the cache
//! (docs/benchmarks.md, "A million entries").
//!
//! # Files (in `<dir>/log/`)
//! * `FORMAT`: the marker `llm-cache-log/1`.
//! * `<16 hex digits>.seg`: segments, numbered in the order they were started. Only the last
//!   one is appended to. A record:
//!   ```text
//!   [4: CRC-32 of the rest, LE][1: kind][2: key length, LE][4: value length, LE]
//!   [8: expires at, Unix ms, LE, u64::MAX = never][8: seq, LE][key][value]
//!   ```
//!   `kind` is a value (`PUT`), a removal (`TOMBSTONE`, no value), the removal of every entry
//!   written before it (`CLEAR`, no key, no value) or evictions (`EVICT`, no key, the value is
//!   the evicted entries' index hashes). `seq` orders every write of the store.
//! * `index.snap`: the index as it was at a clean close, so that the next open need not read
//!   every segment. It is removed at open, before any write.
//!
//! # Recovery
//! Replaying the segments rebuilds the index whatever order their records come in: a record
//! counts only if its `seq` is newer than what the index holds for its key and than every
//! removal of that key (and every `CLEAR`) seen. A record at the end of the last segment that
//! runs past the end of the file, or a tail of zeros, is a write a crash cut short: the file
//! is cut back to before it. Any other damage found by a replay, or a segment missing between two
//! others, makes the store damaged (`disk_cache_on_corruption`): the lost records may have
//! removed or replaced older ones. A record that fails its check when read is a miss.
//!
//! # Space
//! Overwritten, removed, expired and evicted records stay in their segment until compaction
//! copies the live records of a mostly dead segment to the end of the log and deletes it.
//! Removals and `CLEAR` markers are copied too, unless their segment is the oldest: a removal
//! is always written after the records it removes, so only older segments can hold those.
//! Expiry only drops index entries; eviction (over `disk_cache_max_bytes`) drops them and logs
//! their hashes, so that they do not come back after a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::envelope::now_ms;
use cache_core::{CacheError, Result};

use crate::NAME;
use crate::config::DiskConfig;
use crate::lock::DirLock;
use crate::record;
use crate::store::{Counters, DiskStats, lock};

/// Name of the engine's folder inside the cache directory.
pub(crate) const LOG_DIR: &str = "log";
const FORMAT_FILE: &str = "FORMAT";
const FORMAT_VALUE: &[u8] = b"llm-cache-log/1\n";
const SNAPSHOT: &str = "index.snap";
const SNAPSHOT_MAGIC: &[u8; 8] = b"LCSNAP1\0";
const SEGMENT_EXT: &str = "seg";

const PUT: u8 = 1;
const TOMBSTONE: u8 = 2;
const CLEAR: u8 = 3;
/// Entries evicted to stay under the bound: no key; the value is their index hashes (8 bytes
/// each, LE). Logged so that an evicted entry does not come back after a crash (a namespace
/// cleared meanwhile would otherwise get it back).
const EVICT: u8 = 4;
/// Length of a record header.
const HEADER: usize = 4 + 1 + 2 + 4 + 8 + 8;
/// `expires` of an entry that never expires.
const NEVER: u64 = u64::MAX;
/// Size of one snapshot entry.
const SNAP_ENTRY: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8;
/// Bytes copied per batch by compaction (writers wait for one batch at a time).
const COPY_BATCH: usize = 1 << 20;

fn io(operation: &'static str, what: impl std::fmt::Display, e: std::io::Error) -> CacheError {
    CacheError::backend(NAME, operation, true, format!("{what}: {e}"))
}

/// The index key of a cache key: 64 bits of its BLAKE3 hash. Two keys that share it take each
/// other's place (a miss, never a wrong answer: a read checks the key stored in the record).
fn key_hash(key: &[u8]) -> u64 {
    let h = blake3::hash(key);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// A record header.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: u8,
    key_len: usize,
    value_len: usize,
    expires: u64,
    seq: u64,
}

impl Header {
    fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER {
            return None;
        }
        let h = Header {
            kind: b[4],
            key_len: u16_at(b, 5) as usize,
            value_len: u32_at(b, 7) as usize,
            expires: u64_at(b, 11),
            seq: u64_at(b, 19),
        };
        let valid = match h.kind {
            PUT => true,
            TOMBSTONE => h.value_len == 0,
            CLEAR => h.value_len == 0 && h.key_len == 0,
            EVICT => h.key_len == 0 && h.value_len > 0 && h.value_len.is_multiple_of(8),
            _ => false,
        };
        valid.then_some(h)
    }

    fn len(&self) -> usize {
        HEADER + self.key_len + self.value_len
    }
}

/// Encodes a record; `seq` and the CRC are filled in by [`seal`].
fn encode(kind: u8, key: &[u8], value: &[u8], expires: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + key.len() + value.len());
    b.extend_from_slice(&[0; 4]);
    b.push(kind);
    b.extend_from_slice(&(key.len() as u16).to_le_bytes());
    b.extend_from_slice(&(value.len() as u32).to_le_bytes());
    b.extend_from_slice(&expires.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    b
}

fn seal(rec: &mut [u8], seq: u64) {
    rec[19..27].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
}

/// The header of the whole record `rec`, if its CRC matches.
fn check(rec: &[u8]) -> Option<Header> {
    let h = Header::parse(rec)?;
    (h.len() == rec.len() && crc32fast::hash(&rec[4..]) == u32_at(rec, 0)).then_some(h)
}

/// Where the current record of a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    seg: u32,
    off: u32,
    len: u32,
    charged: u32,
    expires: u64,
    seq: u64,
}

impl Slot {
    fn expired(&self, now: u64) -> bool {
        self.expires != NEVER && self.expires <= now
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes written.
    size: u64,
    /// Bytes of the records the index points to.
    live: u64,
}

/// The index, and the segments it points into.
#[derive(Debug, Default)]
struct State {
    index: HashMap<u64, Slot>,
    /// Eviction order: expires first, then stored first (entries without expiry last).
    order: BTreeSet<(u64, u64, u64)>,
    segs: BTreeMap<u32, Segment>,
    bytes: u64,
}

impl State {
    fn insert(&mut self, hash: u64, slot: Slot) {
        if let Some(old) = self.index.insert(hash, slot) {
            self.forget(hash, &old);
        }
        self.order.insert((slot.expires, slot.seq, hash));
        self.bytes += u64::from(slot.charged);
        if let Some(s) = self.segs.get_mut(&slot.seg) {
            s.live += u64::from(slot.len);
        }
    }

    fn remove(&mut self, hash: u64) -> Option<Slot> {
        let old = self.index.remove(&hash)?;
        self.forget(hash, &old);
        Some(old)
    }

    fn forget(&mut self, hash: u64, old: &Slot) {
        self.order.remove(&(old.expires, old.seq, hash));
        self.bytes = self.bytes.saturating_sub(u64::from(old.charged));
        if let Some(s) = self.segs.get_mut(&old.seg) {
            s.live = s.live.saturating_sub(u64::from(old.len));
        }
    }

    fn size_on_disk(&self) -> u64 {
        self.segs.values().map(|s| s.size).sum()
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct Writer {
    seg: u32,
    file: Arc<File>,
    pos: u64,
    /// The last `seq` given out.
    seq: u64,
    /// Files written since their last fsync.
    unsynced: Vec<Arc<File>>,
}

/// The log store. Field order matters: the files close before the directory lock is released.
#[derive(Debug)]
pub(crate) struct LogStore {
    writer: Mutex<Writer>,
    state: Mutex<State>,
    /// Serialises compactions.
    compacting: Mutex<()>,
    /// Serialises flushes: one that returns has seen every earlier write synced, including
    /// those another flush had taken to sync.
    flushing: Mutex<()>,
    /// When written data was last flushed by the maintenance tick.
    last_sync: Mutex<Instant>,
    /// The maintenance failures last logged (flush, compaction): the same failure on every
    /// tick (a segment that cannot be deleted) is logged once, then again when it changes or
    /// after the failing step succeeded.
    maintenance_errors: Mutex<[Option<String>; 2]>,
    failing: AtomicBool,
    /// Set by a test that simulates a crash: no flush, no snapshot at drop.
    crashed: AtomicBool,
    counters: Counters,
    segment_target: u64,
    config: DiskConfig,
    path: PathBuf,
    moved_aside: Option<PathBuf>,
    lock: DirLock,
}

/// The maintenance steps whose last failure is remembered (`LogStore::maintenance_errors`).
const MAINT_FLUSH: usize = 0;
const MAINT_COMPACT: usize = 1;

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:016x}.{SEGMENT_EXT}"))
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments in `dir`, by number; `Err` names a file that is not ours.
fn list_segments(dir: &Path) -> std::io::Result<std::result::Result<Vec<u32>, String>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == FORMAT_FILE || name == SNAPSHOT || name.ends_with(".tmp") {
            continue;
        }
        let id = name
            .strip_suffix(&format!(".{SEGMENT_EXT}"))
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .and_then(|n| u32::try_from(n).ok());
        match id {
            Some(id) => ids.push(id),
            None => return Ok(Err(format!("unexpected file `{name}`"))),
        }
    }
    ids.sort_unstable();
    Ok(Ok(ids))
}

/// What replaying the log found.
#[derive(Debug, Default)]
struct Replay {
    state: State,
    max_seq: u64,
    /// Entries found expired (and dropped) at open.
    expired: u64,
}

impl Replay {
    /// Drops the entries expired at `now`.
    fn drop_expired(&mut self, now: u64) {
        let due: Vec<u64> = self
            .state
            .order
            .range(..(now + 1, 0, 0))
            .map(|&(_, _, h)| h)
            .collect();
        self.expired += due.len() as u64;
        for h in due {
            self.state.remove(h);
        }
    }

    /// A removal of `hash` at `seq`: drops an older indexed value, and any older one met later.
    fn remove_older(&mut self, removed: &mut HashMap<u64, u64>, hash: u64, seq: u64) {
        let r = removed.entry(hash).or_insert(0);
        *r = (*r).max(seq);
        if self.state.index.get(&hash).is_some_and(|s| s.seq < seq) {
            self.state.remove(hash);
        }
    }

    /// Applies one record at (`seg`, `off`).
    fn apply(
        &mut self,
        removed: &mut HashMap<u64, u64>,
        clear_floor: &mut u64,
        rec: &[u8],
        h: &Header,
        seg: u32,
        off: u64,
    ) {
        self.max_seq = self.max_seq.max(h.seq);
        let key = &rec[HEADER..HEADER + h.key_len];
        match h.kind {
            CLEAR => *clear_floor = (*clear_floor).max(h.seq),
            TOMBSTONE => self.remove_older(removed, key_hash(key), h.seq),
            EVICT => {
                for hash in rec[HEADER..].chunks_exact(8) {
                    self.remove_older(removed, u64_at(hash, 0), h.seq);
                }
            }
            _ => {
                let hash = key_hash(key);
                let newer = h.seq > *clear_floor
                    && removed.get(&hash).is_none_or(|&r| r < h.seq)
                    && self.state.index.get(&hash).is_none_or(|s| s.seq < h.seq);
                if !newer {
                    return;
                }
                let slot = Slot {
                    seg,
                    off: off as u32,
                    len: h.len() as u32,
                    charged: record::charged(h.key_len, h.value_len) as u32,
                    expires: h.expires,
                    seq: h.seq,
                };
                // Expired or not: it is the key's newest value (expired ones go at the end).
                self.state.insert(hash, slot);
            }
        }
    }
}

/// Reads one segment (`len` bytes) in pieces of whole records; calls `f(offset, record)` for
/// each record that passes its check and returns where the first one that does not begins
/// (`len` when all do).
fn each_record(
    file: &File,
    len: u64,
    mut f: impl FnMut(u64, &[u8], &Header),
) -> std::io::Result<u64> {
    const PIECE: usize = 8 << 20;
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0u64; // file offset of buf[0]
    let mut at = 0usize; // next record in buf
    loop {
        let off = base + at as u64;
        if off >= len {
            return Ok(len);
        }
        // Have a header, then the whole record, in `buf`.
        let need_header = HEADER.min((len - off) as usize);
        if buf.len() - at < need_header {
            buf.drain(..at);
            base += at as u64;
            at = 0;
            let want = PIECE.max(need_header).min((len - base) as usize);
            let have = buf.len();
            buf.resize(want, 0);
            file.read_exact_at(&mut buf[have..], base + have as u64)?;
        }
        let Some(h) = Header::parse(&buf[at..]) else {
            return Ok(off);
        };
        if off + h.len() as u64 > len {
            return Ok(off);
        }
        if buf.len() - at < h.len() {
            buf.drain(..at);
            base += at as u64;
            at = 0;
            let want = PIECE.max(h.len()).min((len - base) as usize);
            let have = buf.len();
            buf.resize(want, 0);
            file.read_exact_at(&mut buf[have..], base + have as u64)?;
        }
        let rec = &buf[at..at + h.len()];
        if check(rec).is_none() {
            return Ok(off);
        }
        f(off, rec, &h);
        at += h.len();
    }
}

impl LogStore {
    /// Opens (or creates) the store in `config.dir`.
    pub(crate) fn open(config: DiskConfig) -> Result<LogStore> {
        let target = segment_target(&config);
        Self::open_sized(config, target)
    }

    /// [`LogStore::open`] with segments of `segment_target` bytes.
    fn open_sized(config: DiskConfig, segment_target: u64) -> Result<LogStore> {
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
        let path = dir.join(LOG_DIR);
        let mut moved_aside = None;
        let started = Instant::now();
        let opened = match Self::open_log(&path, segment_target) {
            Ok(x) => x,
            Err(Failure::Other(e)) => return Err(e),
            Err(Failure::Damaged(why)) => {
                let (new_lock, to) =
                    crate::store::on_damage(&dir, LOG_DIR, "log", &config, lock, &why)?;
                lock = new_lock;
                moved_aside = to;
                match Self::open_log(&path, segment_target) {
                    Ok(x) => x,
                    Err(Failure::Other(e)) => return Err(e),
                    Err(Failure::Damaged(why)) => {
                        return Err(CacheError::backend(
                            NAME,
                            "open",
                            false,
                            format!("a new log in {} cannot be used: {why}", dir.display()),
                        ));
                    }
                }
            }
        };
        let (replay, source, writer) = opened;
        let store = LogStore {
            writer: Mutex::new(writer),
            state: Mutex::new(replay.state),
            compacting: Mutex::new(()),
            flushing: Mutex::new(()),
            last_sync: Mutex::new(Instant::now()),
            maintenance_errors: Mutex::new([None, None]),
            failing: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            counters: Counters::default(),
            segment_target,
            config,
            path,
            moved_aside,
            lock,
        };
        store
            .counters
            .expired_removed
            .store(replay.expired, Relaxed);
        store.evict();
        let (entries, bytes) = {
            let s = store.state();
            (s.index.len(), s.bytes)
        };
        tracing::info!(
            backend = NAME,
            engine = "log",
            dir = %store.config.dir.display(),
            entries,
            bytes,
            from = source,
            took_ms = started.elapsed().as_millis() as u64,
            "disk cache opened"
        );
        Ok(store)
    }

    /// Opens the log folder: the snapshot of a clean close if there is a usable one, else a
    /// replay of every segment. The snapshot is removed before this returns.
    fn open_log(
        path: &Path,
        target: u64,
    ) -> std::result::Result<(Replay, &'static str, Writer), Failure> {
        let other = |what: String, e: std::io::Error| {
            Failure::Other(CacheError::backend(
                NAME,
                "open",
                true,
                format!("{what}: {e}"),
            ))
        };
        std::fs::create_dir_all(path)
            .map_err(|e| other(format!("cannot create {}", path.display()), e))?;
        let ids = match list_segments(path)
            .map_err(|e| other(format!("cannot list {}", path.display()), e))?
        {
            Ok(ids) => ids,
            Err(why) => return Err(Failure::Damaged(why)),
        };
        let format = path.join(FORMAT_FILE);
        match std::fs::read(&format) {
            Ok(v) if v == FORMAT_VALUE => {}
            Ok(v) => {
                return Err(Failure::Damaged(format!(
                    "format marker `{}` is not `{}`",
                    String::from_utf8_lossy(&v).trim(),
                    String::from_utf8_lossy(FORMAT_VALUE).trim()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && ids.is_empty() => {
                let mut f = File::create(&format)
                    .map_err(|e| other(format!("cannot create {}", format.display()), e))?;
                f.write_all(FORMAT_VALUE)
                    .and_then(|()| f.sync_all())
                    .and_then(|()| sync_dir(path))
                    .map_err(|e| other(format!("cannot write {}", format.display()), e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure::Damaged("segments without a format marker".into()));
            }
            Err(e) => return Err(other(format!("cannot read {}", format.display()), e)),
        }
        let mut files = BTreeMap::new();
        for &id in &ids {
            let p = segment_path(path, id);
            let f =
                open_rw(&p, false).map_err(|e| other(format!("cannot open {}", p.display()), e))?;
            let len = f
                .metadata()
                .map_err(|e| other(format!("cannot stat {}", p.display()), e))?
                .len();
            files.insert(id, (Arc::new(f), len));
        }
        let now = now_ms();
        let snap = path.join(SNAPSHOT);
        let from_snapshot = std::fs::read(&snap)
            .ok()
            .and_then(|raw| load_snapshot(&raw, &files));
        let (replay, source) = match from_snapshot {
            Some(r) => (r, "clean close"),
            None => (replay(path, &mut files)?, "log replay"),
        };
        let mut replay = replay;
        replay.drop_expired(now);
        if std::fs::symlink_metadata(&snap).is_ok() {
            std::fs::remove_file(&snap)
                .and_then(|()| sync_dir(path))
                .map_err(|e| other(format!("cannot remove {}", snap.display()), e))?;
        }
        // Append to the last segment if it has room, else start one.
        let last = files
            .iter()
            .next_back()
            .map(|(&id, (f, len))| (id, f.clone(), *len));
        let writer = match last {
            Some((id, file, len)) if len < target => Writer {
                seg: id,
                file,
                pos: len,
                seq: replay.max_seq,
                unsynced: Vec::new(),
            },
            last => {
                let id = match last {
                    None => 0,
                    Some((id, _, _)) => id
                        .checked_add(1)
                        .ok_or_else(|| Failure::Damaged("segment numbers exhausted".to_owned()))?,
                };
                let p = segment_path(path, id);
                let f = open_rw(&p, true)
                    .and_then(|f| sync_dir(path).map(|()| f))
                    .map_err(|e| other(format!("cannot create {}", p.display()), e))?;
                let file = Arc::new(f);
                Writer {
                    seg: id,
                    file,
                    pos: 0,
                    seq: replay.max_seq,
                    unsynced: Vec::new(),
                }
            }
        };
        replay.state.segs.entry(writer.seg).or_insert(Segment {
            file: writer.file.clone(),
            size: writer.pos,
            live: 0,
        });
        Ok((replay, source, writer))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Appends `rec` (sealed with a new `seq` unless `keep_seq`) to the log; returns where.
    fn append(&self, w: &mut Writer, rec: &mut [u8], keep_seq: bool) -> Result<(u32, u64, u64)> {
        if w.pos > 0 && w.pos + rec.len() as u64 > self.segment_target {
            self.roll(w)?;
        }
        let seq = if keep_seq {
            u64_at(rec, 19)
        } else {
            w.seq += 1;
            seal(rec, w.seq);
            w.seq
        };
        let at = w.pos;
        if let Err(e) = w.file.write_all_at(rec, at) {
            // Nothing points past `at`: cut off whatever part of the record was written.
            let _ = w.file.set_len(at);
            self.failing.store(true, Relaxed);
            return Err(io("set", "cannot append to the disk cache log", e));
        }
        self.failing.store(false, Relaxed);
        w.pos += rec.len() as u64;
        if !w.unsynced.iter().any(|f| Arc::ptr_eq(f, &w.file)) {
            w.unsynced.push(w.file.clone());
        }
        Ok((w.seg, at, seq))
    }

    /// Starts a new segment, once the one it seals is on disk: a power loss can then tear
    /// only the last segment, whose torn tail the replay cuts off. (A sealed segment with a
    /// torn end and a newer one after it is damage: the store would be moved aside.) The
    /// fsync covers what the periodic flush has not synced yet, at most one segment.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let id = w
            .seg
            .checked_add(1)
            .ok_or_else(|| CacheError::backend(NAME, "set", false, "segment numbers exhausted"))?;
        // Also when a flush has taken the file to sync: it may not be done yet.
        w.file.sync_data().map_err(|e| {
            self.failing.store(true, Relaxed);
            io("set", "cannot sync the disk cache log", e)
        })?;
        w.unsynced.retain(|f| !Arc::ptr_eq(f, &w.file));
        let p = segment_path(&self.path, id);
        let f = open_rw(&p, true)
            .and_then(|f| sync_dir(&self.path).map(|()| f))
            .map_err(|e| {
                self.failing.store(true, Relaxed);
                io("set", format!("cannot create {}", p.display()), e)
            })?;
        let file = Arc::new(f);
        {
            let mut s = self.state();
            if let Some(old) = s.segs.get_mut(&w.seg) {
                old.size = w.pos;
            }
            s.segs.insert(
                id,
                Segment {
                    file: file.clone(),
                    size: 0,
                    live: 0,
                },
            );
        }
        w.seg = id;
        w.file = file;
        w.pos = 0;
        Ok(())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    pub(crate) fn config(&self) -> &DiskConfig {
        &self.config
    }

    pub(crate) fn sync_writes(&self) -> bool {
        self.config.flush_interval.is_zero()
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let hash = key_hash(key.as_bytes());
        let (slot, file) = {
            let s = self.state();
            let Some(&slot) = s.index.get(&hash) else {
                return Ok(None);
            };
            if slot.expired(now_ms()) {
                return Ok(None);
            }
            let Some(seg) = s.segs.get(&slot.seg) else {
                return Ok(None);
            };
            (slot, seg.file.clone())
        };
        let mut buf = vec![0u8; slot.len as usize];
        let read = file.read_exact_at(&mut buf, u64::from(slot.off));
        let ok = read.is_ok()
            && check(&buf).is_some_and(|h| {
                h.kind == PUT
                    && h.seq == slot.seq
                    && &buf[HEADER..HEADER + h.key_len] == key.as_bytes()
            });
        if ok {
            let start = HEADER + key.len();
            return Ok(Some(Bytes::from(buf).slice(start..)));
        }
        if self.state().index.get(&hash) != Some(&slot) {
            // Overwritten, removed or compacted since it was looked up.
            return Ok(None);
        }
        if let Err(e) = read
            && e.kind() != std::io::ErrorKind::UnexpectedEof
        {
            return Err(io("get", "cannot read the disk cache log", e));
        }
        self.counters.damaged.fetch_add(1, Relaxed);
        tracing::warn!(
            backend = NAME,
            key,
            "damaged disk cache record: treated as a miss and removed"
        );
        let mut s = self.state();
        if s.index.get(&hash) == Some(&slot) {
            s.remove(hash);
        }
        Ok(None)
    }

    pub(crate) fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        if ttl == Some(Duration::ZERO) {
            self.delete(key)?;
            return Ok(());
        }
        let charged = record::charged(key.len(), value.len());
        if charged > self.config.max_bytes || value.len() > self.max_value_size() {
            return Err(CacheError::ValueTooLarge {
                backend: NAME.to_owned(),
                size: value.len(),
                limit: self.max_value_size(),
            });
        }
        if key.len() > usize::from(u16::MAX) {
            return Err(CacheError::backend(
                NAME,
                "set",
                false,
                format!(
                    "key of {} bytes: the disk log takes keys of at most 65535",
                    key.len()
                ),
            ));
        }
        let expires = ttl.map_or(NEVER, |t| {
            now_ms().saturating_add((t.as_millis().min(u64::MAX as u128) as u64).max(1))
        });
        let mut rec = encode(PUT, key.as_bytes(), value, expires);
        let hash = key_hash(key.as_bytes());
        let over = {
            let mut w = self.writer();
            let (seg, off, seq) = self.append(&mut w, &mut rec, false)?;
            let mut s = self.state();
            if let Some(sg) = s.segs.get_mut(&seg) {
                sg.size = w.pos;
            }
            s.insert(
                hash,
                Slot {
                    seg,
                    off: off as u32,
                    len: rec.len() as u32,
                    charged: charged as u32,
                    expires,
                    seq,
                },
            );
            s.bytes > self.config.max_bytes
        };
        if over {
            self.evict();
        }
        Ok(())
    }

    pub(crate) fn max_value_size(&self) -> usize {
        self.config
            .max_bytes
            .saturating_sub(record::charged(128, 0))
            // Record lengths and charges are 32-bit in the index.
            .min(u64::from(u32::MAX) / 2)
            .min(usize::MAX as u64) as usize
    }

    pub(crate) fn delete(&self, key: &str) -> Result<bool> {
        if key.len() > usize::from(u16::MAX) {
            return Ok(false);
        }
        let hash = key_hash(key.as_bytes());
        let mut rec = encode(TOMBSTONE, key.as_bytes(), &[], NEVER);
        let mut w = self.writer();
        // Written even when the key is not indexed: an evicted or expired record of it may
        // still be in the log, and must not come back after a crash.
        let (seg, _, _) = self.append(&mut w, &mut rec, false)?;
        let mut s = self.state();
        if let Some(sg) = s.segs.get_mut(&seg) {
            sg.size = w.pos;
        }
        Ok(s.remove(hash).is_some())
    }

    /// Drops index entries, first to expire first (then first stored), until under the bound.
    /// Their hashes are logged first (see [`EVICT`]): an entry removed from the index with no
    /// record of it could come back after a crash, even after its namespace was cleared. If
    /// the record cannot be written the entries stay (over the bound, rather than a wrong hit
    /// later); the next write retries.
    fn evict(&self) {
        let now = now_ms();
        let mut w = self.writer();
        // Writes wait (the writer lock), so the victims stay what they are; the sweeper may
        // remove some meanwhile, which changes nothing.
        let victims: Vec<(u64, u64, u64)> = {
            let s = self.state();
            let mut over = s.bytes.saturating_sub(self.config.max_bytes);
            let mut v = Vec::new();
            for &(expires, seq, hash) in &s.order {
                if over == 0 {
                    break;
                }
                over =
                    over.saturating_sub(s.index.get(&hash).map_or(0, |sl| u64::from(sl.charged)));
                v.push((expires, seq, hash));
            }
            v
        };
        if victims.is_empty() {
            return;
        }
        let hashes: Vec<u8> = victims.iter().flat_map(|v| v.2.to_le_bytes()).collect();
        let mut rec = encode(EVICT, &[], &hashes, NEVER);
        let seg = match self.append(&mut w, &mut rec, false) {
            Ok((seg, _, _)) => seg,
            Err(e) => {
                tracing::warn!(
                    backend = NAME,
                    "cannot log evictions, evicting nothing: {e}"
                );
                return;
            }
        };
        let mut s = self.state();
        if let Some(sg) = s.segs.get_mut(&seg) {
            sg.size = w.pos;
        }
        for (expires, seq, hash) in victims {
            if s.index.get(&hash).is_some_and(|sl| sl.seq == seq) {
                s.remove(hash);
                let c = if expires != NEVER && expires <= now {
                    &self.counters.expired_removed
                } else {
                    &self.counters.evicted
                };
                c.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn sweep_expired(&self, stop: &dyn Fn() -> bool) -> Result<u64> {
        let mut removed = 0u64;
        loop {
            let now = now_ms();
            let mut s = self.state();
            let due: Vec<u64> = s
                .order
                .range(..(now + 1, 0, 0))
                .take(4096)
                .map(|&(_, _, h)| h)
                .collect();
            if due.is_empty() {
                break;
            }
            for h in due {
                s.remove(h);
                removed += 1;
            }
            drop(s);
            if stop() {
                break;
            }
        }
        self.counters.expired_removed.fetch_add(removed, Relaxed);
        Ok(removed)
    }

    pub(crate) fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        match namespace {
            None => {
                let mut rec = encode(CLEAR, &[], &[], NEVER);
                let mut w = self.writer();
                // The marker opens a segment of its own: every record it removes is in an
                // older segment, and those are deleted right away.
                if w.pos > 0 {
                    self.roll(&mut w)?;
                }
                let (seg, _, _) = self.append(&mut w, &mut rec, false)?;
                w.file
                    .sync_data()
                    .map_err(|e| io("clear", "cannot flush the disk cache log", e))?;
                let removed = {
                    let mut s = self.state();
                    let removed = s.index.len() as u64;
                    s.index.clear();
                    s.order.clear();
                    s.bytes = 0;
                    for g in s.segs.values_mut() {
                        g.live = 0;
                    }
                    removed
                };
                let old: Vec<u32> = self.state().segs.range(..seg).map(|(&id, _)| id).collect();
                // Oldest first, stopping at a failure: the segments left stay contiguous (a gap
                // reads as a lost segment at the next replay) and stay in the table (all
                // dead): compaction deletes them later, and the marker is kept until then (it
                // is only dropped from the oldest segment).
                for id in old {
                    let p = segment_path(&self.path, id);
                    match std::fs::remove_file(&p) {
                        Ok(()) => {
                            self.state().segs.remove(&id);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            self.state().segs.remove(&id);
                        }
                        Err(e) => {
                            tracing::warn!(
                                backend = NAME,
                                file = %p.display(),
                                "cannot delete a cleared segment (compaction retries): {e}"
                            );
                            break;
                        }
                    }
                }
                if let Some(sg) = self.state().segs.get_mut(&seg) {
                    sg.size = w.pos;
                }
                let active = w.file.clone();
                w.unsynced.retain(|f| Arc::ptr_eq(f, &active));
                drop(w);
                let _ = sync_dir(&self.path);
                Ok(removed)
            }
            Some(ns) => {
                let prefix = format!("{ns}:");
                // Keys are not kept in memory: each entry's key is read from its record.
                let entries: Vec<(u64, Slot, Arc<File>)> = {
                    let s = self.state();
                    s.index
                        .iter()
                        .filter_map(|(&h, slot)| {
                            Some((h, *slot, s.segs.get(&slot.seg)?.file.clone()))
                        })
                        .collect()
                };
                let mut removed = 0u64;
                let mut buf = Vec::new();
                for (_, slot, file) in entries {
                    let n = (HEADER + prefix.len()).min(slot.len as usize);
                    buf.resize(n, 0);
                    if file.read_exact_at(&mut buf, u64::from(slot.off)).is_err() {
                        continue;
                    }
                    let Some(h) = Header::parse(&buf) else {
                        continue;
                    };
                    if h.key_len < prefix.len() || &buf[HEADER..] != prefix.as_bytes() {
                        continue;
                    }
                    // The whole key, for the removal record.
                    let mut k = vec![0u8; h.key_len];
                    if file
                        .read_exact_at(&mut k, u64::from(slot.off) + HEADER as u64)
                        .is_err()
                    {
                        continue;
                    }
                    if let Ok(key) = String::from_utf8(k)
                        && self.delete(&key)?
                    {
                        removed += 1;
                    }
                }
                Ok(removed)
            }
        }
    }

    /// Flushes every write to disk (fsync).
    pub(crate) fn flush(&self) -> Result<()> {
        let _one = lock(&self.flushing);
        let files = std::mem::take(&mut self.writer().unsynced);
        for (i, f) in files.iter().enumerate() {
            if let Err(e) = f.sync_data() {
                // Retried by the next flush.
                let mut w = self.writer();
                for f in &files[i..] {
                    if !w.unsynced.iter().any(|u| Arc::ptr_eq(u, f)) {
                        w.unsynced.push(f.clone());
                    }
                }
                return Err(io("flush", "cannot flush the disk cache log", e));
            }
        }
        *lock(&self.last_sync) = Instant::now();
        Ok(())
    }

    /// The maintenance tick: flushes every `flush_interval`, compacts when the log holds
    /// much more than the live entries.
    pub(crate) fn maintain(&self) {
        let due = lock(&self.last_sync).elapsed() >= self.config.flush_interval;
        if due {
            let res = self.flush();
            self.log_maintenance(MAINT_FLUSH, "periodic flush failed", res);
        }
        let res = self.compact();
        self.log_maintenance(MAINT_COMPACT, "compaction failed", res);
    }

    /// Logs a maintenance step's failure at `warn` unless the same failure was the last one
    /// logged for that step (then at `debug`): a failure that repeats on every tick is one
    /// warning, not one per tick. Returns whether it warned.
    fn log_maintenance<T>(&self, step: usize, what: &str, res: Result<T>) -> bool {
        let mut last = lock(&self.maintenance_errors);
        match res {
            Ok(_) => {
                last[step] = None;
                false
            }
            Err(e) => {
                let msg = e.to_string();
                if last[step].as_deref() == Some(msg.as_str()) {
                    tracing::debug!(backend = NAME, "{what} (again): {msg}");
                    false
                } else {
                    tracing::warn!(backend = NAME, "{what}: {msg}");
                    last[step] = Some(msg);
                    true
                }
            }
        }
    }

    /// How often [`LogStore::maintain`] should run.
    pub(crate) fn tick(&self) -> Duration {
        if self.config.flush_interval.is_zero() {
            Duration::from_millis(200)
        } else {
            self.config
                .flush_interval
                .clamp(Duration::from_millis(50), Duration::from_secs(1))
        }
    }

    /// Compacts while the log holds more dead data than half the live data plus two segments:
    /// the oldest segment first, so that the removals in it need not be copied (see the
    /// module docs). It ends: a pass over sealed segments that are all live leaves at most the
    /// active segment's dead data, less than the slack.
    fn compact(&self) -> Result<()> {
        let _g = lock(&self.compacting);
        loop {
            let victim = {
                let active = self.writer().seg;
                let s = self.state();
                let total = s.size_on_disk();
                let live: u64 = s.segs.values().map(|g| g.live).sum();
                if total <= live + live / 2 + 2 * self.segment_target {
                    return Ok(());
                }
                s.segs
                    .iter()
                    .next()
                    .filter(|(id, _)| **id != active)
                    .map(|(&id, g)| (id, g.file.clone(), g.size))
            };
            let Some((id, file, size)) = victim else {
                return Ok(());
            };
            self.compact_one(id, &file, size)?;
        }
    }

    /// Copies the live records of segment `id` to the end of the log, then deletes it.
    fn compact_one(&self, id: u32, file: &File, size: u64) -> Result<()> {
        let now = now_ms();
        // (hash, offset in the segment, record) of what may need copying.
        let mut batch: Vec<(Option<u64>, u64, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut result = Ok(());
        let end = each_record(file, size, |off, rec, h| {
            if result.is_err() {
                return;
            }
            let keep = match h.kind {
                PUT => {
                    let hash = key_hash(&rec[HEADER..HEADER + h.key_len]);
                    let s = self.state();
                    s.index
                        .get(&hash)
                        .is_some_and(|sl| {
                            sl.seg == id && u64::from(sl.off) == off && !sl.expired(now)
                        })
                        .then_some(Some(hash))
                }
                // The oldest segment: the records its removals remove are gone already.
                _ => None,
            };
            if let Some(hash) = keep {
                batch_bytes += rec.len();
                batch.push((hash, off, rec.to_vec()));
                if batch_bytes >= COPY_BATCH {
                    result = self.copy_batch(id, std::mem::take(&mut batch));
                    batch_bytes = 0;
                }
            }
        })
        .map_err(|e| io("compact", "cannot read a disk cache segment", e))?;
        result?;
        self.copy_batch(id, batch)?;
        if end < size {
            tracing::warn!(
                backend = NAME,
                segment = id,
                at = end,
                "damaged disk cache segment: the records after the damage were dropped"
            );
        }
        // The copies reach the disk before the segment they came from goes.
        self.flush()?;
        let p = segment_path(&self.path, id);
        match std::fs::remove_file(&p) {
            // `clear` may have deleted it meanwhile.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                // Still tracked (and still the oldest): its removals are not dropped while the
                // file can come back in a replay. Retried by the next compaction.
                return Err(io("compact", format!("cannot delete {}", p.display()), e));
            }
            _ => {}
        }
        {
            let mut s = self.state();
            // Entries left pointing here: expired, or after damage in the segment.
            if s.segs.get(&id).is_some_and(|g| g.live > 0) {
                let stray: Vec<u64> = s
                    .index
                    .iter()
                    .filter(|(_, sl)| sl.seg == id)
                    .map(|(&h, _)| h)
                    .collect();
                for h in stray {
                    s.remove(h);
                }
            }
            s.segs.remove(&id);
        }
        sync_dir(&self.path).map_err(|e| io("compact", "cannot sync the log folder", e))
    }

    fn copy_batch(&self, from: u32, batch: Vec<(Option<u64>, u64, Vec<u8>)>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut w = self.writer();
        for (hash, off, mut rec) in batch {
            if let Some(hash) = hash {
                let current = self
                    .state()
                    .index
                    .get(&hash)
                    .is_some_and(|sl| sl.seg == from && u64::from(sl.off) == off);
                if !current {
                    continue;
                }
            }
            let (seg, at, _) = self.append(&mut w, &mut rec, true)?;
            let mut s = self.state();
            if let Some(sg) = s.segs.get_mut(&seg) {
                sg.size = w.pos;
            }
            if let Some(hash) = hash
                && let Some(&old) = s.index.get(&hash)
                && old.seg == from
                && u64::from(old.off) == off
            {
                s.insert(
                    hash,
                    Slot {
                        seg,
                        off: at as u32,
                        ..old
                    },
                );
            }
        }
        Ok(())
    }

    pub(crate) fn ping(&self) -> Result<()> {
        let w = self.writer();
        w.file
            .metadata()
            .map_err(|e| io("ping", "cannot reach the disk cache log", e))?;
        if self.failing.load(Relaxed) {
            return Err(CacheError::backend(
                NAME,
                "ping",
                true,
                "the last write to the disk cache log failed",
            ));
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> DiskStats {
        let s = self.state();
        DiskStats {
            entries: s.index.len() as u64,
            bytes: s.bytes,
            max_bytes: self.config.max_bytes,
            size_on_disk: s.size_on_disk(),
            expired_removed: self.counters.expired_removed.load(Relaxed),
            evicted: self.counters.evicted.load(Relaxed),
            damaged: self.counters.damaged.load(Relaxed),
            reopened: 0,
            failing: self.failing.load(Relaxed),
        }
    }

    pub(crate) fn db_path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    pub(crate) fn lock_path(&self) -> &Path {
        self.lock.path()
    }

    /// Writes the index to `index.snap` (after a flush), for the next open.
    fn write_snapshot(&self) -> std::io::Result<()> {
        let w = self.writer();
        let s = self.state();
        let mut out = Vec::with_capacity(64 + s.segs.len() * 12 + s.index.len() * SNAP_ENTRY);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&w.seq.to_le_bytes());
        out.extend_from_slice(&(s.segs.len() as u32).to_le_bytes());
        for (&id, g) in &s.segs {
            let size = if id == w.seg { w.pos } else { g.size };
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
        out.extend_from_slice(&(s.index.len() as u64).to_le_bytes());
        for (&h, sl) in &s.index {
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&sl.seg.to_le_bytes());
            out.extend_from_slice(&sl.off.to_le_bytes());
            out.extend_from_slice(&sl.len.to_le_bytes());
            out.extend_from_slice(&sl.charged.to_le_bytes());
            out.extend_from_slice(&sl.expires.to_le_bytes());
            out.extend_from_slice(&sl.seq.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.path.join(format!("{SNAPSHOT}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path.join(SNAPSHOT))?;
        sync_dir(&self.path)
    }
}

fn segment_target(config: &DiskConfig) -> u64 {
    (config.max_bytes / 16).clamp(1 << 20, 64 << 20)
}

/// How opening the log failed.
enum Failure {
    /// The folder is damaged or not ours (see [`crate::OnCorruption`]).
    Damaged(String),
    Other(CacheError),
}

/// The index from a snapshot, if it is whole and matches the segments on disk exactly.
fn load_snapshot(raw: &[u8], files: &BTreeMap<u32, (Arc<File>, u64)>) -> Option<Replay> {
    let body_len = raw.len().checked_sub(4)?;
    let (body, crc) = raw.split_at(body_len);
    if crc32fast::hash(body) != u32_at(crc, 0) || !body.starts_with(SNAPSHOT_MAGIC) {
        return None;
    }
    let mut at = SNAPSHOT_MAGIC.len();
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = body.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let max_seq = u64_at(take(&mut at, 8)?, 0);
    let nsegs = u32_at(take(&mut at, 4)?, 0) as usize;
    if nsegs != files.len() {
        return None;
    }
    let mut state = State::default();
    for _ in 0..nsegs {
        let b = take(&mut at, 12)?;
        let (id, size) = (u32_at(b, 0), u64_at(b, 4));
        let (file, len) = files.get(&id)?;
        if *len != size {
            return None;
        }
        let dup = state.segs.insert(
            id,
            Segment {
                file: file.clone(),
                size,
                live: 0,
            },
        );
        if dup.is_some() {
            return None;
        }
    }
    let n = usize::try_from(u64_at(take(&mut at, 8)?, 0)).ok()?;
    if body.len() != at.checked_add(n.checked_mul(SNAP_ENTRY)?)? {
        return None;
    }
    state.index.reserve(n);
    for _ in 0..n {
        let b = take(&mut at, SNAP_ENTRY)?;
        let hash = u64_at(b, 0);
        let slot = Slot {
            seg: u32_at(b, 8),
            off: u32_at(b, 12),
            len: u32_at(b, 16),
            charged: u32_at(b, 20),
            expires: u64_at(b, 24),
            seq: u64_at(b, 32),
        };
        let seg = state.segs.get(&slot.seg)?;
        if u64::from(slot.off) + u64::from(slot.len) > seg.size || slot.seq > max_seq {
            return None;
        }
        state.insert(hash, slot);
    }
    Some(Replay {
        state,
        max_seq,
        ..Replay::default()
    })
}

/// Whether the bytes of `file` from `at` to `len`, where a record failed its check, are a
/// write cut short: a record whose header promises more than the file holds (a process killed
/// during the write), or nothing but zeros (pages a power loss did not write). Anything else
/// (a record that fits but fails its CRC, a header that does not parse) is damage.
fn torn_write(file: &File, at: u64, len: u64) -> std::io::Result<bool> {
    let mut head = vec![0u8; HEADER.min((len - at) as usize)];
    file.read_exact_at(&mut head, at)?;
    if head.len() < HEADER {
        return Ok(true);
    }
    if Header::parse(&head).is_some_and(|h| at + h.len() as u64 > len) {
        return Ok(true);
    }
    let mut rest = vec![0u8; (len - at).min(64 << 20) as usize];
    let mut off = at;
    while off < len {
        let n = rest.len().min((len - off) as usize);
        file.read_exact_at(&mut rest[..n], off)?;
        if rest[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// Rebuilds the index from every segment.
///
/// A record that fails its check is damage unless it is a write the crash cut short (see
/// [`torn_write`]) at the end of the last segment. Then the file is cut back to before it. Any
/// other damage, and a segment missing between two others, fails the replay: the lost records
/// may have removed or replaced older ones, which must not be served (the store is then
/// handled as `disk_cache_on_corruption` says).
fn replay(
    path: &Path,
    files: &mut BTreeMap<u32, (Arc<File>, u64)>,
) -> std::result::Result<Replay, Failure> {
    let io_failure = |e: std::io::Error| {
        Failure::Other(CacheError::backend(
            NAME,
            "open",
            true,
            format!("cannot read the disk cache log in {}: {e}", path.display()),
        ))
    };
    if let (Some(&first), Some(&last)) = (files.keys().next(), files.keys().next_back())
        && (last - first) as usize + 1 != files.len()
    {
        return Err(Failure::Damaged(format!(
            "segments are missing between {first:016x} and {last:016x}"
        )));
    }
    let mut r = Replay::default();
    let mut removed: HashMap<u64, u64> = HashMap::new();
    let mut clear_floor = 0u64;
    let last = files.keys().next_back().copied();
    for (&id, (file, len)) in files.iter_mut() {
        r.state.segs.insert(
            id,
            Segment {
                file: file.clone(),
                size: *len,
                live: 0,
            },
        );
        let end = each_record(file, *len, |off, rec, h| {
            r.apply(&mut removed, &mut clear_floor, rec, h, id, off);
        })
        .map_err(io_failure)?;
        if end < *len {
            let torn = Some(id) == last && torn_write(file, end, *len).map_err(io_failure)?;
            if !torn {
                return Err(Failure::Damaged(format!(
                    "segment {id:016x} is damaged at byte {end}, before records that may \
                     remove or replace older entries"
                )));
            }
            tracing::warn!(
                backend = NAME,
                segment = id,
                at = end,
                "the last disk cache segment ends in an incomplete record (a crash during a \
                 write): cut back"
            );
            file.set_len(end)
                .and_then(|()| file.sync_all())
                .map_err(io_failure)?;
            *len = end;
            if let Some(s) = r.state.segs.get_mut(&id) {
                s.size = end;
            }
        }
    }
    // A `CLEAR` removes what came before it, wherever the replay met it.
    if clear_floor > 0 {
        let gone: Vec<u64> = r
            .state
            .index
            .iter()
            .filter(|(_, s)| s.seq < clear_floor)
            .map(|(&h, _)| h)
            .collect();
        for h in gone {
            r.state.remove(h);
        }
    }
    Ok(r)
}

impl Drop for LogStore {
    fn drop(&mut self) {
        if self.crashed.load(Relaxed) {
            return;
        }
        // Clean close: every acknowledged write reaches the disk, then the index is recorded
        // so the next open need not replay the log.
        if let Err(e) = self.flush() {
            tracing::error!(backend = NAME, dir = %self.config.dir.display(), "flush on close failed: {e}");
        } else if let Err(e) = self.write_snapshot() {
            tracing::warn!(backend = NAME, dir = %self.config.dir.display(), "recording the index on close failed (the next open replays the log): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskEngine, OnCorruption};

    fn config(dir: &Path) -> DiskConfig {
        DiskConfig::new(dir)
            .with_engine(DiskEngine::Log)
            .with_max_bytes(64 << 20)
    }

    /// Segments of 64 KiB: rolls and compactions within a few hundred writes.
    fn open(dir: &Path) -> LogStore {
        LogStore::open_sized(config(dir), 64 << 10).unwrap()
    }

    #[test]
    fn a_maintenance_failure_repeating_every_tick_is_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let fail = |what: &str| -> Result<()> {
            Err(io(
                "compact",
                format!("cannot delete {what}"),
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ))
        };
        assert!(store.log_maintenance(MAINT_COMPACT, "compaction failed", fail("a")));
        for _ in 0..5 {
            assert!(!store.log_maintenance(MAINT_COMPACT, "compaction failed", fail("a")));
        }
        // Another step's failure, and another failure of the same step, are new.
        assert!(store.log_maintenance(MAINT_FLUSH, "periodic flush failed", fail("a")));
        assert!(store.log_maintenance(MAINT_COMPACT, "compaction failed", fail("b")));
        // After a success, the failure is news again.
        assert!(!store.log_maintenance(MAINT_COMPACT, "compaction failed", Ok(())));
        assert!(store.log_maintenance(MAINT_COMPACT, "compaction failed", fail("b")));
    }

    impl LogStore {
        /// Drops the store as a crash would leave it: no flush, no snapshot. Every write has
        /// reached the OS (a process crash loses nothing the kernel has).
        pub(super) fn crash(self) {
            self.crashed.store(true, Relaxed);
        }

        /// Compacts every sealed segment that holds anything dead, oldest first.
        fn compact_all(&self) {
            let _g = lock(&self.compacting);
            loop {
                let victim = {
                    let active = self.writer().seg;
                    let s = self.state();
                    s.segs
                        .iter()
                        .find(|(id, g)| **id != active && g.live < g.size)
                        .map(|(&id, g)| (id, g.file.clone(), g.size))
                };
                let Some((id, file, size)) = victim else {
                    return;
                };
                self.compact_one(id, &file, size).unwrap();
            }
        }

        fn segment_ids(&self) -> Vec<u32> {
            self.state().segs.keys().copied().collect()
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn value_for(rng: &mut Rng, key: &str) -> Vec<u8> {
        let len = 1 + rng.below(3000) as usize;
        let tag = rng.next();
        let mut v = format!("{key}#{tag}:").into_bytes();
        v.resize(len.max(v.len()), b'a' + (tag % 26) as u8);
        v
    }

    /// A value as the assertions show it: its head (it names its key and write) and length.
    fn shown(v: Option<&[u8]>) -> Option<String> {
        v.map(|v| {
            format!(
                "{} ({} B)",
                String::from_utf8_lossy(&v[..v.len().min(32)]),
                v.len()
            )
        })
    }

    fn check_all(store: &LogStore, model: &HashMap<String, Vec<u8>>, keys: &[String], when: &str) {
        for k in keys {
            let got = store.get(k).unwrap();
            assert_eq!(
                shown(got.as_deref()),
                shown(model.get(k).map(Vec::as_slice)),
                "{when}: key {k}"
            );
        }
        let s = store.stats();
        assert_eq!(s.entries, model.len() as u64, "{when}: entries");
        let bytes: u64 = model
            .iter()
            .map(|(k, v)| record::charged(k.len(), v.len()))
            .sum();
        assert_eq!(s.bytes, bytes, "{when}: charged bytes");
    }

    /// Random sets, removals, namespace and whole clears, compactions, clean restarts and
    /// crashes, against a map: every read answers exactly what the map holds (the bound is
    /// never reached, and nothing expires), before and after every restart.
    #[test]
    fn random_operations_restarts_and_crashes_match_a_model() {
        for seed in [0x9E37_79B9_7F4A_7C15u64, 42, 7_777_777] {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = Rng(seed);
            let keys: Vec<String> = (0..60)
                .map(|i| format!("{}:{i}", ["a", "b", "ab"][i % 3]))
                .collect();
            let mut model: HashMap<String, Vec<u8>> = HashMap::new();
            let mut store = open(dir.path());
            let (mut crashes, mut compactions) = (0, 0);
            for step in 0..4000 {
                let key = &keys[rng.below(keys.len() as u64) as usize];
                match rng.below(1000) {
                    0..=599 => {
                        let v = value_for(&mut rng, key);
                        store.set(key, &v, None).unwrap();
                        model.insert(key.clone(), v);
                    }
                    600..=849 => {
                        let existed = store.delete(key).unwrap();
                        assert_eq!(existed, model.remove(key).is_some(), "step {step}: delete");
                    }
                    850..=969 => {
                        assert_eq!(
                            shown(store.get(key).unwrap().as_deref()),
                            shown(model.get(key).map(Vec::as_slice)),
                            "step {step}: get {key}"
                        );
                    }
                    970..=977 => {
                        let ns = ["a", "b", "ab"][rng.below(3) as usize];
                        let n = store.clear(Some(ns)).unwrap();
                        let before = model.len();
                        model.retain(|k, _| !k.starts_with(&format!("{ns}:")));
                        assert_eq!(n as usize, before - model.len(), "step {step}: clear {ns}");
                    }
                    978..=979 => {
                        store.clear(None).unwrap();
                        model.clear();
                    }
                    980..=987 => {
                        store.compact_all();
                        compactions += 1;
                    }
                    988..=993 => {
                        drop(store);
                        store = open(dir.path());
                        check_all(
                            &store,
                            &model,
                            &keys,
                            &format!("step {step}: clean restart"),
                        );
                    }
                    _ => {
                        store.crash();
                        crashes += 1;
                        store = open(dir.path());
                        check_all(
                            &store,
                            &model,
                            &keys,
                            &format!("step {step}: after a crash"),
                        );
                    }
                }
            }
            check_all(&store, &model, &keys, "end");
            assert!(
                crashes > 10 && compactions > 10,
                "{crashes} crashes, {compactions} compactions"
            );
            assert!(store.segment_ids().len() > 1, "the test must roll segments");
        }
    }

    /// A removal must hold after its segment's older neighbours are compacted away and the
    /// process crashes: the removal was copied forward, the value it removed was not.
    #[test]
    fn a_removal_survives_compaction_and_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let big = vec![b'x'; 40 << 10];
        store.set("k", b"old value", None).unwrap();
        store.set("filler:1", &big, None).unwrap();
        store.set("filler:2", &big, None).unwrap(); // rolls: "k" is in the first segment
        store.set("filler:1", &big, None).unwrap();
        assert!(store.delete("k").unwrap());
        store.set("filler:3", &big, None).unwrap();
        store.set("filler:2", &big, None).unwrap();
        assert!(store.segment_ids().len() >= 3);
        store.compact_all();
        store.crash();
        let store = open(dir.path());
        assert_eq!(store.get("k").unwrap(), None);
        assert_eq!(store.get("filler:3").unwrap().as_deref(), Some(&big[..]));
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let log = dir.join(LOG_DIR);
        let ids = list_segments(&log).unwrap().unwrap();
        segment_path(&log, *ids.last().unwrap())
    }

    #[test]
    fn a_write_cut_short_by_a_crash_is_cut_off_and_the_rest_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.set("a:1", b"one", None).unwrap();
        store.set("a:2", b"two", None).unwrap();
        store.crash();
        let seg = last_segment(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        // Half a record: a header that promises more than there is.
        let mut torn = encode(PUT, b"a:3", &[b'z'; 100], NEVER);
        seal(&mut torn, 99);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn[..60]).unwrap();
        drop(f);
        let store = open(dir.path());
        assert_eq!(store.get("a:1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.get("a:2").unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(store.get("a:3").unwrap(), None);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "cut back");
        store.set("a:3", b"three", None).unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get("a:3").unwrap().as_deref(), Some(&b"three"[..]));
    }

    /// Every single-byte change to a segment's records: reads answer the stored value or a
    /// miss, never anything else, and opening never fails or panics.
    #[test]
    fn any_damaged_byte_is_a_miss_never_a_wrong_value() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<(String, Vec<u8>)> = (0..6)
            .map(|i| {
                (
                    format!("k:{i}"),
                    format!("value number {i}").repeat(3).into_bytes(),
                )
            })
            .collect();
        {
            let store = open(dir.path());
            for (k, v) in &values {
                store.set(k, v, None).unwrap();
            }
            store.crash();
        }
        let seg = last_segment(dir.path());
        let pristine = std::fs::read(&seg).unwrap();
        for at in 0..pristine.len() {
            for crashed in [true, false] {
                let mut bad = pristine.clone();
                bad[at] ^= 0x5A;
                std::fs::write(&seg, &bad).unwrap();
                let _ = std::fs::remove_file(dir.path().join(LOG_DIR).join(SNAPSHOT));
                // Damage found at open (a replay), or only when read (a snapshot points at it).
                let store = if crashed {
                    open(dir.path())
                } else {
                    std::fs::write(&seg, &pristine).unwrap();
                    let s = open(dir.path());
                    drop(s); // clean close: a snapshot
                    std::fs::write(&seg, &bad).unwrap();
                    open(dir.path())
                };
                for (k, v) in &values {
                    if let Some(got) = store.get(k).unwrap() {
                        assert_eq!(&got[..], &v[..], "byte {at} changed: {k} answered wrongly");
                    }
                }
                store.crash();
            }
        }
    }

    #[test]
    fn a_foreign_format_marker_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        std::fs::write(
            dir.path().join(LOG_DIR).join(FORMAT_FILE),
            b"something else/9\n",
        )
        .unwrap();
        let err = LogStore::open(config(dir.path()).with_on_corruption(OnCorruption::Error))
            .unwrap_err()
            .to_string();
        assert!(err.contains("format marker"), "{err}");
        let store = LogStore::open(config(dir.path())).unwrap();
        let aside = store.moved_aside().expect("moved aside").to_owned();
        assert!(aside.exists(), "{}", aside.display());
        store.set("k", b"v", None).unwrap();
        assert_eq!(store.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn compaction_reclaims_dead_segments_and_keeps_live_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let v = vec![b'v'; 2000];
        for round in 0..40 {
            for i in 0..30 {
                store.set(&format!("k:{i}"), &v, None).unwrap();
            }
            if round % 10 == 0 {
                store.set(&format!("keep:{round}"), b"kept", None).unwrap();
            }
        }
        let before = store.stats().size_on_disk;
        store.maintain();
        let after = store.stats();
        assert!(
            after.size_on_disk * 3 < before,
            "{before} -> {}",
            after.size_on_disk
        );
        assert!(after.size_on_disk <= after.bytes * 3 / 2 + 2 * (64 << 10) + (64 << 10));
        for i in 0..30 {
            assert_eq!(
                store.get(&format!("k:{i}")).unwrap().as_deref(),
                Some(&v[..])
            );
        }
        for round in (0..40).step_by(10) {
            assert_eq!(
                store.get(&format!("keep:{round}")).unwrap().as_deref(),
                Some(&b"kept"[..])
            );
        }
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;
    use crate::config::{DiskEngine, OnCorruption};

    fn open_bound(dir: &Path, max: u64) -> LogStore {
        let config = DiskConfig::new(dir)
            .with_engine(DiskEngine::Log)
            .with_max_bytes(max);
        LogStore::open_sized(config, 64 << 10).unwrap()
    }

    /// An entry evicted before its namespace was cleared must not come back after a crash.
    #[test]
    fn an_evicted_entry_stays_gone_after_a_namespace_clear_and_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_bound(dir.path(), 2 << 20);
        let old = [b"old answer ".as_slice(), &[b'o'; 10_000]].concat();
        store.set("ns:a", &old, None).unwrap();
        store.set("big", &vec![b'x'; 2040 << 10], None).unwrap(); // evicts ns:a
        assert_eq!(store.get("ns:a").unwrap(), None);
        assert_eq!(store.stats().evicted, 1);
        assert!(store.delete("big").unwrap());
        assert_eq!(store.clear(Some("ns")).unwrap(), 0);
        store.crash();
        let store = open_bound(dir.path(), 1 << 20);
        assert_eq!(
            store.get("ns:a").unwrap(),
            None,
            "cleared, then resurrected"
        );
    }

    /// A tail of zeros (pages a power loss did not write) is cut off; a last record that fits
    /// but fails its check (it could be a removal) is damage, never cut off silently.
    #[test]
    fn a_tail_of_zeros_is_cut_and_a_damaged_last_record_is_damage() {
        for zeros in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_bound(dir.path(), 64 << 20);
            store.set("k", b"v1", None).unwrap();
            store.delete("k").unwrap();
            store.crash();
            let log = dir.path().join(LOG_DIR);
            let seg = segment_path(&log, *list_segments(&log).unwrap().unwrap().last().unwrap());
            let mut data = std::fs::read(&seg).unwrap();
            if zeros {
                data.extend_from_slice(&[0u8; 5000]);
            } else {
                // Bit rot in the removal's key.
                let n = data.len();
                data[n - 1] ^= 0x01;
            }
            std::fs::write(&seg, &data).unwrap();
            let config = DiskConfig::new(dir.path())
                .with_engine(DiskEngine::Log)
                .with_on_corruption(OnCorruption::Error);
            let opened = LogStore::open_sized(config, 64 << 10);
            if zeros {
                let store = opened.unwrap();
                assert_eq!(store.get("k").unwrap(), None);
                assert!(std::fs::metadata(&seg).unwrap().len() < data.len() as u64);
            } else {
                let err = opened.unwrap_err().to_string();
                assert!(err.contains("damaged"), "{err}");
            }
        }
    }

    /// A power loss, modelled: every file with writes since the last flush keeps only the
    /// pages up to the flush and one more (the OS wrote no other). A segment sealed since then was synced
    /// when the next one started, so only the last segment is cut short: the store opens
    /// without damage, with every entry flushed before the loss and nothing else but exact
    /// later values. (Before the fsync at roll, the sealed segments lost their tails too,
    /// and the store was found damaged.)
    #[test]
    fn a_power_loss_tears_only_the_last_segment() {
        for written_after in [100u32, 200] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_bound(dir.path(), 64 << 20);
            let value = |i: u32| bytes::Bytes::from(format!("value {i} {}", "v".repeat(900)));
            for i in 0..150 {
                store.set(&format!("k{i}"), &value(i), None).unwrap();
            }
            store.flush().unwrap();
            let log = dir.path().join(LOG_DIR);
            let at_flush: HashMap<u32, u64> = list_segments(&log)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|id| (id, std::fs::metadata(segment_path(&log, id)).unwrap().len()))
                .collect();
            // ~1 KB each on 64 KiB segments (~69 records): 100 later writes roll once, 200
            // roll three times.
            for i in 150..150 + written_after {
                store.set(&format!("k{i}"), &value(i), None).unwrap();
            }
            let lost: Vec<u32> = {
                let w = store.writer();
                let s = store.state();
                s.segs
                    .iter()
                    .filter(|(_, g)| w.unsynced.iter().any(|f| Arc::ptr_eq(f, &g.file)))
                    .map(|(&id, _)| id)
                    .collect()
            };
            store.crash();
            // What the OS had written of each: the pages up to the flush, and one more
            // (which ends inside a record).
            for id in lost {
                let path = segment_path(&log, id);
                let len = std::fs::metadata(&path).unwrap().len();
                let kept = at_flush.get(&id).map_or(4096, |n| (n / 4096 + 2) * 4096);
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(kept.min(len)).unwrap();
            }
            let config = DiskConfig::new(dir.path())
                .with_engine(DiskEngine::Log)
                .with_on_corruption(OnCorruption::Error);
            let store = LogStore::open_sized(config, 64 << 10)
                .unwrap_or_else(|e| panic!("{written_after} writes after the flush: {e}"));
            for i in 0..150 + written_after {
                let got = store.get(&format!("k{i}")).unwrap();
                if i < 150 {
                    assert_eq!(got, Some(value(i)), "k{i} was flushed");
                } else {
                    assert!(got.is_none() || got == Some(value(i)), "k{i}");
                }
            }
        }
    }

    /// Damage in the middle of the log must not hide a later overwrite or removal.
    #[test]
    fn damage_before_an_overwrite_never_brings_the_old_value_back() {
        for removal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_bound(dir.path(), 64 << 20);
            store.set("k", b"v1", None).unwrap();
            store.set("x", b"some other entry", None).unwrap();
            if removal {
                store.delete("k").unwrap();
            } else {
                store.set("k", b"v2", None).unwrap();
            }
            store.set("y", b"a later entry", None).unwrap();
            store.crash();
            // Flip a byte inside the record of "x".
            let log = dir.path().join(LOG_DIR);
            let seg = segment_path(&log, *list_segments(&log).unwrap().unwrap().last().unwrap());
            let mut data = std::fs::read(&seg).unwrap();
            let at = data
                .windows(b"some other entry".len())
                .position(|w| w == b"some other entry")
                .unwrap();
            data[at] ^= 0xFF;
            std::fs::write(&seg, &data).unwrap();
            let store = open_bound(dir.path(), 64 << 20);
            let got = store.get("k").unwrap();
            assert_ne!(
                got.as_deref(),
                Some(&b"v1"[..]),
                "removal {removal}: v1 came back"
            );
        }
    }
}
