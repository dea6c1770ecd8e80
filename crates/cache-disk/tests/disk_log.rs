//! Behaviour of the disk backend over the log engine (`disk_cache_engine: log`) in one
//! process: the behaviour every engine shares (`engine/behaviour.rs`), then the log's own.

use cache_disk::DiskEngine;

const ENGINE: DiskEngine = DiskEngine::Log;

#[path = "engine/behaviour.rs"]
mod behaviour;

use std::path::{Path, PathBuf};
use std::time::Duration;

use behaviour::{config, value};
use cache_core::CacheBackend;
use cache_disk::{DiskBackend, LOG_DIR, OnCorruption};

/// Small segments (a 16 MiB bound: 1 MiB segments), so that a few hundred KiB-sized values
/// span several.
fn small(dir: &Path) -> cache_disk::DiskConfig {
    config(dir).with_max_bytes(16 << 20)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

async fn fill(dir: &Path, n: usize) {
    let b = DiskBackend::open(small(dir)).unwrap();
    for i in 0..n {
        b.set(&format!("k:{i}"), value(i, 8000), None)
            .await
            .unwrap();
    }
}

/// Every entry is answered with its own value or is a miss.
async fn never_wrong(b: &DiskBackend, n: usize) -> usize {
    let mut served = 0;
    for i in 0..n {
        if let Some(v) = b.get(&format!("k:{i}")).await.unwrap() {
            assert_eq!(v, value(i, 8000), "k:{i} answered with another value");
            served += 1;
        }
    }
    served
}

/// A segment lost between two others may have held removals of older entries: the log is
/// damaged (moved aside, the cache starts empty), never served without them.
#[tokio::test]
async fn a_lost_segment_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 400).await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    let err = DiskBackend::open(small(dir.path()).with_on_corruption(OnCorruption::Error))
        .unwrap_err()
        .to_string();
    assert!(err.contains("segments are missing"), "{err}");
    let b = DiskBackend::open(small(dir.path())).unwrap();
    assert!(b.moved_aside().is_some());
    assert_eq!(never_wrong(&b, 400).await, 0);
}

#[tokio::test]
async fn a_snapshot_older_than_the_log_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 50).await;
    let snap = dir.path().join(LOG_DIR).join("index.snap");
    let old = std::fs::read(&snap).unwrap();
    {
        let b = DiskBackend::open(small(dir.path())).unwrap();
        assert!(b.delete("k:3").await.unwrap());
        b.set("k:4", value(4000, 8000), None).await.unwrap();
    }
    // A stale snapshot put back (a restored backup, a copy gone wrong): its sizes do not
    // match the segments, so it is ignored and the removal and the overwrite hold.
    std::fs::write(&snap, &old).unwrap();
    let b = DiskBackend::open(small(dir.path())).unwrap();
    assert_eq!(b.get("k:3").await.unwrap(), None);
    assert_eq!(b.get("k:4").await.unwrap(), Some(value(4000, 8000)));
    assert_eq!(b.get("k:5").await.unwrap(), Some(value(5, 8000)));
    // A cut snapshot too.
    drop(b);
    let whole = std::fs::read(&snap).unwrap();
    std::fs::write(&snap, &whole[..whole.len() / 2]).unwrap();
    let b = DiskBackend::open(small(dir.path())).unwrap();
    assert_eq!(b.get("k:3").await.unwrap(), None);
    assert_eq!(b.stats().entries, 49);
}

#[tokio::test]
async fn random_damage_to_segments_is_misses_never_wrong_values() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 300).await;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for round in 0..20 {
        for seg in segments(dir.path()) {
            let mut data = std::fs::read(&seg).unwrap();
            if data.is_empty() {
                continue;
            }
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % data.len() as u64) as usize;
                data[at] = (x >> 32) as u8;
            }
            if round % 5 == 4 {
                data.truncate(data.len() / 2);
            }
            std::fs::write(&seg, &data).unwrap();
        }
        // Damage found at open (the snapshot no longer matches), then on reads.
        let b = DiskBackend::open(small(dir.path())).unwrap();
        never_wrong(&b, 300).await;
        for i in 0..20 {
            b.set(&format!("k:{i}"), value(i, 8000), None)
                .await
                .unwrap();
        }
        drop(b);
    }
}

#[tokio::test]
async fn a_foreign_file_in_the_log_folder_is_moved_aside_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10).await;
    std::fs::write(dir.path().join(LOG_DIR).join("notes.txt"), b"mine").unwrap();
    let err = DiskBackend::open(small(dir.path()).with_on_corruption(OnCorruption::Error))
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    let b = DiskBackend::open(small(dir.path())).unwrap();
    let aside = b.moved_aside().expect("moved aside").to_owned();
    assert!(aside.exists());
    assert_eq!(b.stats().entries, 0);
    b.set("k:0", value(0, 8000), None).await.unwrap();
    assert_eq!(never_wrong(&b, 1).await, 1);
}

#[tokio::test]
async fn a_sled_folder_from_an_earlier_version_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sled =
            DiskBackend::open(small(dir.path()).with_engine(cache_disk::DiskEngine::Sled)).unwrap();
        sled.set("old", value(1, 100), None).await.unwrap();
    }
    let b = DiskBackend::open(small(dir.path())).unwrap();
    assert_eq!(b.get("old").await.unwrap(), None, "a new, empty cache");
    b.set("new", value(2, 100), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    drop(b);
    assert!(dir.path().join(cache_disk::DB_DIR).is_dir(), "not deleted");
    let sled =
        DiskBackend::open(small(dir.path()).with_engine(cache_disk::DiskEngine::Sled)).unwrap();
    assert_eq!(sled.get("old").await.unwrap(), Some(value(1, 100)));
}
