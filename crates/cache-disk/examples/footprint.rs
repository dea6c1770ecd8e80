//! Disk footprint under churn against the size bound: writes `ROUNDS` × `disk_cache_max_bytes`
//! of values (distinct keys, values of 1–8 KiB, no TTL, so only the bound removes entries) and
//! records the size of the cache directory (allocated blocks, as `du` counts them) as it goes.
//! The numbers are recorded in `docs/reliability.md` ("Disk store: damage, full disk,
//! footprint").
//!
//! ```text
//! cargo run --release -p cache-disk --example footprint -- [MAX_BYTES] [ROUNDS] [MIN_VALUE] [MAX_VALUE] [DIR]
//! ```
//! Defaults: a 32 MiB bound, 10 rounds, values of 1024 to 8192 bytes, a temporary directory.

use std::time::Instant;

use cache_core::{Bytes, CacheBackend};
use cache_disk::{DiskBackend, DiskConfig, DiskStats};

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

fn report(what: &str, s: &DiskStats, du: u64) {
    println!(
        "{what:<28} entries {:>7}  live {:>7.1} MiB  size_on_disk {:>7.1} MiB  du {:>7.1} MiB  du/max {:>5.2}  evicted {:>7}",
        s.entries,
        mib(s.bytes),
        mib(s.size_on_disk),
        mib(du),
        du as f64 / s.max_bytes as f64,
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
    let max_bytes = num(0, 32 << 20);
    let rounds = num(1, 10);
    let (min_value, max_value) = (num(2, 1024), num(3, 8192));
    assert!(
        min_value > 8 && min_value <= max_value,
        "MIN_VALUE must be in 9..=MAX_VALUE"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = args
        .get(4)
        .map_or_else(|| tmp.path().to_owned(), std::path::PathBuf::from);
    let config = DiskConfig::new(&dir).with_max_bytes(max_bytes);
    println!(
        "footprint: {rounds} x {:.0} MiB of values of {min_value}-{max_value} B, distinct keys, no TTL, dir {}",
        mib(max_bytes),
        dir.display()
    );
    let b = DiskBackend::open(config.clone()).unwrap();
    let total = rounds * max_bytes;
    // The directory is measured every 1/16 of the bound, reported every half bound.
    let (sample, step) = (max_bytes / 16, max_bytes / 2);
    let (mut next_sample, mut next_report) = (sample, step);
    let (mut written, mut sets, mut peak) = (0u64, 0u64, 0u64);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let start = Instant::now();
    while written < total {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (min_value + x % (max_value - min_value + 1)) as usize;
        let mut value = vec![b'a' + (x % 26) as u8; len];
        value[..8].copy_from_slice(&sets.to_be_bytes());
        // Keys shaped like the core's: a namespace and a 64-hex-digit hash.
        let key = format!("app:{:016x}{:016x}{:032x}", sets, x, u128::from(sets) * 31);
        b.set(&key, Bytes::from(value), None).await.unwrap();
        written += len as u64;
        sets += 1;
        if written >= next_sample {
            next_sample += sample;
            peak = peak.max(cache_disk::allocated_bytes(&dir));
        }
        if written >= next_report {
            next_report += step;
            let du = cache_disk::allocated_bytes(&dir);
            peak = peak.max(du);
            report(
                &format!("{:.1} x max written", written as f64 / max_bytes as f64),
                &b.stats(),
                du,
            );
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{sets} sets, {:.0} MiB of values in {:.1} s ({:.0} sets/s); peak du {:.1} MiB = {:.2} x max",
        mib(written),
        elapsed.as_secs_f64(),
        sets as f64 / elapsed.as_secs_f64(),
        mib(peak),
        peak as f64 / max_bytes as f64
    );
    drop(b);
    let du = cache_disk::allocated_bytes(&dir);
    let b = DiskBackend::open(config).unwrap();
    report("closed and reopened", &b.stats(), du);
}
