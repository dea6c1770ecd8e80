//! The disk footprint under churn stays within the documented bound of
//! `4 × disk_cache_max_bytes + 32 MiB` (docs/reliability.md): 10 × the bound of distinct
//! keys is written with no TTL, so the size bound evicts all along, and the directory's
//! allocated size (what `du` counts) is checked after every 1/8 of the bound written. Not
//! timed; the longer measurement is `examples/footprint.rs`.

use std::time::Duration;

use cache_core::{Bytes, CacheBackend};
use cache_disk::{DiskBackend, DiskConfig, DiskEngine};

const MAX_BYTES: u64 = 4 << 20;

/// The documented bound on the directory's size.
fn bound(max_bytes: u64) -> u64 {
    4 * max_bytes + (32 << 20)
}

/// Churns `rounds` × [`MAX_BYTES`] of values of `min..=max` bytes through a fresh cache and
/// returns the largest directory size seen.
async fn churn(engine: DiskEngine, min: u64, max: u64, rounds: u64) -> u64 {
    // One churn at a time: two at once on a small machine starve each other's flusher.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let b = DiskBackend::open(
        DiskConfig::new(&dir)
            .with_engine(engine)
            .with_max_bytes(MAX_BYTES)
            .with_flush_interval(Duration::from_millis(100)),
    )
    .unwrap();
    let (mut written, mut n, mut peak) = (0u64, 0u64, 0u64);
    let mut next_check = MAX_BYTES / 8;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    while written < rounds * MAX_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (min + x % (max - min + 1)) as usize;
        let mut v = vec![b'a' + (x % 26) as u8; len];
        v[..8].copy_from_slice(&n.to_be_bytes());
        b.set(&format!("app:{n:016x}{x:016x}"), Bytes::from(v), None)
            .await
            .unwrap();
        written += len as u64;
        n += 1;
        if written >= next_check {
            next_check += MAX_BYTES / 8;
            let size = cache_disk::allocated_bytes(&dir);
            peak = peak.max(size);
            assert!(
                size <= bound(MAX_BYTES),
                "after {written} bytes written ({n} sets): the directory holds {size} bytes, over \
                 the bound of {} for disk_cache_max_bytes {MAX_BYTES} ({:?})",
                bound(MAX_BYTES),
                b.stats()
            );
        }
    }
    let stats = b.stats();
    assert!(stats.bytes <= MAX_BYTES);
    assert!(stats.evicted > 0);
    eprintln!(
        "{engine:?}: values of {min}..={max} B: {n} sets, {written} bytes written, peak directory size {peak} \
         ({:.2} x the bound of {MAX_BYTES})",
        peak as f64 / MAX_BYTES as f64
    );
    peak
}

#[tokio::test]
async fn churn_of_small_values_stays_within_the_footprint_bound() {
    churn(DiskEngine::Sled, 1024, 8192, 10).await;
}

#[tokio::test]
async fn log_engine_churn_of_small_values_stays_within_the_footprint_bound() {
    churn(DiskEngine::Log, 1024, 8192, 10).await;
}

#[tokio::test]
async fn churn_of_large_values_stays_within_the_footprint_bound() {
    churn(DiskEngine::Sled, 64 << 10, 256 << 10, 10).await;
}

#[tokio::test]
async fn log_engine_churn_of_large_values_stays_within_the_footprint_bound() {
    churn(DiskEngine::Log, 64 << 10, 256 << 10, 10).await;
}
