//! A damaged store never fails or hangs startup (with the default
//! `disk_cache_on_corruption: move_aside`): random bytes over the database files, files cut
//! short, and a database on which sled blocks for ever while opening. Each case checks that
//! open returns within a bound, that the damaged store was moved aside (nothing deleted), and
//! that the new store works and persists. A directory locked by a live process is not damage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cache_core::{Bytes, CacheBackend};
use cache_disk::{DB_DIR, DiskBackend, DiskConfig, DiskEngine, LOCK_FILE};

/// Open timeout used by these tests, and the bound on an open that finds damage.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
const OPEN_BOUND: Duration = Duration::from_secs(10);

fn config(dir: &Path) -> DiskConfig {
    DiskConfig::new(dir)
        .with_engine(DiskEngine::Sled)
        .with_flush_interval(Duration::from_millis(50))
        .with_open_timeout(OPEN_TIMEOUT)
}

fn value(i: usize) -> Bytes {
    let mut v = vec![b'a' + (i % 26) as u8; 1500];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Bytes::from(v)
}

/// A cache directory `<tmp>/cache` (so that the sibling it is moved to lands in `<tmp>`),
/// filled with 2000 entries, 500 of them deleted again.
async fn filled() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let b = DiskBackend::open(config(&dir)).unwrap();
    for i in 0..2000 {
        b.set(&format!("k{i}"), value(i), None).await.unwrap();
    }
    for i in 0..500 {
        b.delete(&format!("k{i}")).await.unwrap();
    }
    drop(b);
    (tmp, dir)
}

/// The siblings `cache.damaged-*` in `tmp`.
fn siblings(tmp: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cache.damaged-"))
        })
        .collect();
    v.sort();
    v
}

/// Opens `dir` with the default handling and checks the outcome: either the store was moved
/// aside (returns true) and an empty, working store took its place, or sled recovered part of
/// it and nothing wrong is served (returns false). Never a panic, never longer than
/// [`OPEN_BOUND`].
async fn open_and_check(what: &str, tmp: &Path, dir: &Path) -> bool {
    let start = Instant::now();
    let b = std::panic::catch_unwind(|| DiskBackend::open(config(dir)))
        .unwrap_or_else(|_| panic!("{what}: a panic escaped open"))
        .unwrap_or_else(|e| panic!("{what}: open must not fail on damage: {e}"));
    let took = start.elapsed();
    assert!(took < OPEN_BOUND, "{what}: open took {took:?}");
    let Some(moved) = b.moved_aside().map(Path::to_owned) else {
        eprintln!(
            "{what}: sled recovered {} entries in {took:?}",
            b.stats().entries
        );
        assert!(
            siblings(tmp).is_empty(),
            "{what}: moved aside but not reported"
        );
        for i in 0..2000 {
            if let Ok(Some(v)) = b.get(&format!("k{i}")).await {
                assert_eq!(v, value(i), "{what}: wrong value for k{i}");
            }
        }
        return false;
    };
    eprintln!("{what}: moved aside to {} in {took:?}", moved.display());
    // The whole directory moved to a sibling named after it, with the damaged files in it.
    assert_eq!(siblings(tmp), vec![moved.clone()], "{what}");
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    let stamp: u64 = name["cache.damaged-".len()..].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(stamp <= now && now - stamp < 60, "{what}: {name}");
    assert!(
        moved.join(DB_DIR).join("db").exists(),
        "{what}: damaged files kept"
    );
    assert!(moved.join(LOCK_FILE).exists(), "{what}");
    // The new store is empty, works, and persists.
    let health = b.ping().await.unwrap();
    assert_eq!(
        health.details.get("moved_aside").map(String::as_str),
        Some(moved.display().to_string().as_str())
    );
    assert_eq!(b.stats().entries, 0, "{what}");
    assert_eq!(b.get("k1000").await.unwrap(), None, "{what}");
    b.set("fresh", value(7), None).await.unwrap();
    assert_eq!(b.get("fresh").await.unwrap(), Some(value(7)));
    drop(b);
    let b = DiskBackend::open(config(dir)).unwrap();
    assert!(b.moved_aside().is_none(), "{what}: the new store is sound");
    assert_eq!(b.get("fresh").await.unwrap(), Some(value(7)), "{what}");
    assert_eq!(siblings(tmp).len(), 1, "{what}");
    true
}

/// xorshift64
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[tokio::test]
async fn random_bytes_over_the_whole_data_file_move_the_store_aside() {
    let (tmp, dir) = filled().await;
    let data = dir.join(DB_DIR).join("db");
    let len = std::fs::metadata(&data).unwrap().len() as usize;
    let mut x = 0x9E37_79B9_7F4A_7C15;
    let garbage: Vec<u8> = (0..len).map(|_| next(&mut x) as u8).collect();
    std::fs::write(&data, garbage).unwrap();
    assert!(open_and_check("random data file", tmp.path(), &dir).await);
}

#[tokio::test]
async fn random_bytes_over_the_config_file_move_the_store_aside() {
    let (tmp, dir) = filled().await;
    let conf = dir.join(DB_DIR).join("conf");
    let len = std::fs::metadata(&conf).unwrap().len() as usize;
    let mut x = 42;
    let garbage: Vec<u8> = (0..len).map(|_| next(&mut x) as u8).collect();
    std::fs::write(&conf, garbage).unwrap();
    assert!(open_and_check("random config file", tmp.path(), &dir).await);
}

#[tokio::test]
async fn random_byte_runs_in_the_data_file_move_aside_or_serve_only_intact_values() {
    let (base, base_dir) = filled().await;
    let original = std::fs::read(base_dir.join(DB_DIR).join("db")).unwrap();
    let conf = std::fs::read(base_dir.join(DB_DIR).join("conf")).unwrap();
    let mut moved = 0;
    let mut x: u64 = 0x5EED;
    for trial in 0..8 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir_all(dir.join(DB_DIR)).unwrap();
        std::fs::write(dir.join(DB_DIR).join("conf"), &conf).unwrap();
        let mut data = original.clone();
        // 8 to 64 runs of up to 4 KiB of random bytes.
        for _ in 0..8 + trial * 8 {
            let at = (next(&mut x) % data.len() as u64) as usize;
            let run = 1 + (next(&mut x) % 4096) as usize;
            for byte in data.iter_mut().skip(at).take(run) {
                *byte = next(&mut x) as u8;
            }
        }
        std::fs::write(dir.join(DB_DIR).join("db"), data).unwrap();
        if open_and_check(&format!("random runs, trial {trial}"), tmp.path(), &dir).await {
            moved += 1;
        }
    }
    drop(base);
    assert!(
        moved > 0,
        "no trial damaged the store enough to be moved aside"
    );
}

#[tokio::test]
async fn a_data_file_cut_short_moves_aside_or_opens_what_survived() {
    let (base, base_dir) = filled().await;
    let original = std::fs::read(base_dir.join(DB_DIR).join("db")).unwrap();
    let conf = std::fs::read(base_dir.join(DB_DIR).join("conf")).unwrap();
    let mut moved = 0;
    for cut in [0, 7, 100, 4096, original.len() / 3, original.len() - 1000] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir_all(dir.join(DB_DIR)).unwrap();
        std::fs::write(dir.join(DB_DIR).join("conf"), &conf).unwrap();
        std::fs::write(dir.join(DB_DIR).join("db"), &original[..cut]).unwrap();
        if open_and_check(&format!("data file cut to {cut} bytes"), tmp.path(), &dir).await {
            moved += 1;
        }
    }
    drop(base);
    assert!(moved > 0, "no cut was treated as damage");
}

/// sled rewrites a config file that is cut short (it logs "empty/corrupt configuration file
/// found"): not damage, and nothing is lost.
#[tokio::test]
async fn a_config_file_cut_short_is_rewritten_and_loses_nothing() {
    let (tmp, dir) = filled().await;
    let conf = dir.join(DB_DIR).join("conf");
    let f = std::fs::OpenOptions::new().write(true).open(&conf).unwrap();
    f.set_len(5).unwrap();
    drop(f);
    assert!(!open_and_check("config file cut to 5 bytes", tmp.path(), &dir).await);
    let b = DiskBackend::open(config(&dir)).unwrap();
    assert_eq!(b.stats().entries, 1500);
    assert_eq!(b.get("k1999").await.unwrap(), Some(value(1999)));
}

/// sled blocks for ever while opening: its config file is a FIFO nobody writes, so sled's
/// `open` of it never returns (as on a hung disk). The watchdog gives up after the open
/// timeout, the store moves aside (the stuck thread keeps the moved files), and a new store
/// opens in its place.
#[tokio::test]
async fn sled_blocking_for_ever_at_open_is_treated_as_damage() {
    let (tmp, dir) = filled().await;
    let conf = dir.join(DB_DIR).join("conf");
    std::fs::remove_file(&conf).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&conf)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let start = Instant::now();
    assert!(open_and_check("sled blocked at open", tmp.path(), &dir).await);
    assert!(
        start.elapsed() >= OPEN_TIMEOUT,
        "the watchdog waited the open timeout"
    );
}

#[tokio::test]
async fn a_foreign_database_is_moved_aside_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    {
        let db = sled::open(dir.join(DB_DIR)).unwrap();
        db.insert(b"someone else's", b"data").unwrap();
        db.flush().unwrap();
    }
    assert!(open_and_check("foreign database", tmp.path(), &dir).await);
    let moved = siblings(tmp.path()).pop().unwrap();
    let db = sled::open(moved.join(DB_DIR)).unwrap();
    assert!(db.get(b"someone else's").unwrap().is_some(), "kept intact");
}

/// A directory holding other files than the backend's is not moved: only its database moves,
/// to `<dir>/db.damaged-<unix seconds>`.
#[tokio::test]
async fn in_a_shared_directory_only_the_database_moves() {
    let (tmp, dir) = filled().await;
    std::fs::write(dir.join("notes.txt"), b"not the cache's").unwrap();
    std::fs::write(dir.join(DB_DIR).join("db"), vec![0x5Au8; 100_000]).unwrap();
    let b = DiskBackend::open(config(&dir)).unwrap();
    let moved = b.moved_aside().expect("moved").to_owned();
    assert_eq!(moved.parent(), Some(dir.as_path()));
    assert!(
        moved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("db.damaged-"),
        "{}",
        moved.display()
    );
    assert!(siblings(tmp.path()).is_empty());
    assert_eq!(
        std::fs::read(dir.join("notes.txt")).unwrap(),
        b"not the cache's"
    );
    // (sled may have rewritten parts of the damaged file while trying to recover it.)
    assert!(moved.join("db").exists());
    b.set("fresh", value(1), None).await.unwrap();
    assert_eq!(b.get("fresh").await.unwrap(), Some(value(1)));
}

/// Two damaged stores in the same second get distinct names.
#[tokio::test]
async fn a_second_move_in_the_same_second_gets_its_own_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    for round in 0..2 {
        std::fs::create_dir_all(dir.join(DB_DIR)).unwrap();
        std::fs::write(dir.join(DB_DIR).join("db"), vec![0xA5; 50_000]).unwrap();
        std::fs::write(dir.join(DB_DIR).join("conf"), b"garbage").unwrap();
        std::fs::write(dir.join(DB_DIR).join("round"), [round]).unwrap();
        let b = DiskBackend::open(config(&dir)).unwrap();
        assert!(b.moved_aside().is_some());
    }
    let moved = siblings(tmp.path());
    assert_eq!(moved.len(), 2, "{moved:?}");
    let mut rounds: Vec<u8> = moved
        .iter()
        .map(|m| std::fs::read(m.join(DB_DIR).join("round")).unwrap()[0])
        .collect();
    rounds.sort();
    assert_eq!(rounds, vec![0, 1], "both damaged stores kept");
}

/// A directory in use by another opener is an error naming the holder, never damage: nothing
/// moves.
#[tokio::test]
async fn a_locked_directory_is_not_damage() {
    let (tmp, dir) = filled().await;
    let a = DiskBackend::open(config(&dir)).unwrap();
    let start = Instant::now();
    let err = DiskBackend::open(config(&dir)).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(err.contains("in use"), "{err}");
    assert!(siblings(tmp.path()).is_empty());
    assert_eq!(a.get("k1999").await.unwrap(), Some(value(1999)));
    drop(a);
    let b = DiskBackend::open(config(&dir)).unwrap();
    assert!(b.moved_aside().is_none());
    assert_eq!(b.get("k1999").await.unwrap(), Some(value(1999)));
}
