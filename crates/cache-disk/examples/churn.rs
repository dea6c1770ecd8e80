//! Space use under churn: many sets of 2 KB values with a short TTL, as fast as one writer
//! goes, while the sweeper runs; then what the directory holds after the sweeper caught up and
//! after a restart. Run with `cargo xtask bench disk-churn [ARGS]` (release build); the numbers are
//! recorded in `docs/backends/disk.md`.
//!
//! ```text
//! cargo run --release -p cache-disk --example churn -- [SETS] [TTL_MS] [SWEEP_MS] [MAX_BYTES] [DIR]
//! ```
//! Defaults: 1 000 000 sets, 1 000 ms TTL (0: no TTL, so only the size bound removes
//! entries), 1 000 ms sweep interval, the default 1 GiB bound, a temporary directory.

use std::path::Path;
use std::time::{Duration, Instant};

use cache_core::{Bytes, CacheBackend};
use cache_disk::{DiskBackend, DiskConfig, DiskStats};

const VALUE_BYTES: usize = 2048;

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn report(what: &str, s: &DiskStats, dir: &Path) {
    println!(
        "{what:<34} entries {:>8}  live {:>8.1} MiB  size_on_disk {:>8.1} MiB  du {:>8.1} MiB  rss {:>6.1} MiB  expired_removed {:>8}  evicted {:>6}",
        s.entries,
        mib(s.bytes),
        mib(s.size_on_disk),
        mib(cache_disk::allocated_bytes(dir)),
        cache_core::testing::rss_mib(),
        s.expired_removed,
        s.evicted,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| {
        args.get(i)
            .map(|s| s.replace('_', "").parse::<u64>().expect("a number"))
            .unwrap_or(default)
    };
    let sets = num(0, 1_000_000);
    let ttl = Some(Duration::from_millis(num(1, 1_000))).filter(|t| !t.is_zero());
    let sweep = Duration::from_millis(num(2, 1_000));
    let tmp = tempfile::tempdir().unwrap();
    let max_bytes = num(3, cache_disk::DEFAULT_MAX_BYTES);
    let dir = args
        .get(4)
        .map_or_else(|| tmp.path().to_owned(), std::path::PathBuf::from);
    let config = DiskConfig::new(&dir)
        .with_sweep_interval(sweep)
        .with_max_bytes(max_bytes);
    println!(
        "churn: {sets} sets of {VALUE_BYTES} B, TTL {ttl:?}, sweep every {sweep:?}, bound {} MiB, page cache {} MiB, dir {}",
        mib(config.max_bytes),
        mib(config.memory_bytes),
        dir.display()
    );
    let b = DiskBackend::open(config.clone()).unwrap();
    let mut value = vec![b'x'; VALUE_BYTES];
    let start = Instant::now();
    let mut peak_du = 0u64;
    let step = (sets / 10).max(1);
    for i in 0..sets {
        value[..8].copy_from_slice(&i.to_be_bytes());
        b.set(
            &format!("churn:{i:016x}"),
            Bytes::copy_from_slice(&value),
            ttl,
        )
        .await
        .unwrap();
        if (i + 1) % step == 0 {
            peak_du = peak_du.max(cache_disk::allocated_bytes(&dir));
            report(
                &format!(
                    "after {} sets ({:.0}/s)",
                    i + 1,
                    (i + 1) as f64 / start.elapsed().as_secs_f64()
                ),
                &b.stats(),
                &dir,
            );
        }
    }
    let elapsed = start.elapsed();
    println!(
        "wrote {sets} sets in {:.1} s: {:.0} sets/s, {:.1} MiB/s of values; peak du {:.1} MiB",
        elapsed.as_secs_f64(),
        sets as f64 / elapsed.as_secs_f64(),
        (sets as f64 * VALUE_BYTES as f64) / elapsed.as_secs_f64() / (1 << 20) as f64,
        mib(peak_du)
    );
    // Let every entry expire and the sweeper pass; the engine reclaims segments in the background.
    if let Some(ttl) = ttl {
        tokio::time::sleep(ttl + sweep * 2).await;
        b.flush().await.unwrap();
        report("all expired, swept", &b.stats(), &dir);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    report("5 s later (segment cleaning)", &b.stats(), &dir);
    drop(b);
    report_reopen(&config, &dir);
}

fn report_reopen(config: &DiskConfig, dir: &Path) {
    let start = Instant::now();
    let b = DiskBackend::open(config.clone()).unwrap();
    let opened = start.elapsed();
    report(
        &format!("reopened in {:.0} ms", opened.as_secs_f64() * 1000.0),
        &b.stats(),
        dir,
    );
}
