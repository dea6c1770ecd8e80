//! A full disk, for real: the cache directory is on a 16 MiB tmpfs, mounted in a user and
//! mount namespace of a child process (`unshare -Urm`, no root needed where unprivileged user
//! namespaces are allowed; as root it works too). The child fills the file system, checks that
//! writes fail with an error and never panic while reads of existing entries still answer,
//! frees the space and checks that writes work again without a restart.
//!
//! Where no such namespace can be made (no `unshare`, or user namespaces disabled), the test
//! says so on stderr and passes without checking anything.

use std::path::Path;
use std::time::{Duration, Instant};

use cache_core::{Bytes, CacheBackend, CacheError};
use cache_disk::{DiskBackend, DiskConfig, DiskEngine};

const TEST: &str = "a_full_disk_fails_writes_keeps_reads_and_recovers_when_space_returns";
const LOG_TEST: &str =
    "log_engine_a_full_disk_fails_writes_keeps_reads_and_recovers_when_space_returns";
/// Set in the child: `<engine>:<the tmpfs mount point>`.
const CHILD_ENV: &str = "LLM_CACHE_DISK_FULL_CHILD";

fn value(i: usize) -> Bytes {
    let mut v = vec![b'a' + (i % 26) as u8; 8192];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Bytes::from(v)
}

/// Writes zeros to `path` until the file system refuses; returns the error it gave.
fn fill(path: &Path) -> std::io::Error {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.flush()) {
            return e;
        }
    }
}

async fn child(engine: DiskEngine, mount: &Path) {
    let sled = engine == DiskEngine::Sled;
    let config = DiskConfig::new(mount.join("cache"))
        .with_engine(engine)
        .with_max_bytes(256 << 20) // far above the disk: only the disk limits writes
        .with_flush_interval(Duration::from_millis(50));
    let b = DiskBackend::open(config.clone()).unwrap();
    for i in 0..50 {
        b.set(&format!("early:{i}"), value(i), None).await.unwrap();
    }
    b.flush().await.unwrap();

    let filler = mount.join("filler");
    let full = fill(&filler);
    assert_eq!(full.raw_os_error(), Some(28), "ENOSPC expected: {full}");

    // Writes fail, with an error (a miss for the cache), within a bounded number of writes:
    // sled buffers a little in memory first.
    let mut failed = None;
    for i in 0..2000 {
        match b.set(&format!("late:{i}"), value(i), None).await {
            Ok(()) => {}
            Err(e) => {
                eprintln!("late:{i}: {e}");
                assert!(
                    matches!(
                        e,
                        CacheError::Backend { .. } | CacheError::Unavailable { .. }
                    ),
                    "{e:?}"
                );
                failed = Some(i);
                break;
            }
        }
    }
    let failed = failed.expect("no write failed on a full disk");
    assert!(b.stats().failing);
    // More writes keep failing, quickly, and nothing panics.
    for i in 0..20 {
        assert!(b.set(&format!("more:{i}"), value(i), None).await.is_err());
    }
    if sled {
        // sled keeps the failed writes in memory, and cannot flush them.
        assert!(b.flush().await.is_err());
    }
    // Entries written before the disk filled are still served, where sled can: a read that
    // meets a tree node due for a split or merge needs a write, and fails (a miss). The log
    // serves them all.
    let mut served = Vec::new();
    for i in 0..50 {
        match b.get(&format!("early:{i}")).await {
            Ok(v) => {
                assert_eq!(v, Some(value(i)), "early:{i} on a full disk");
                served.push(i);
            }
            Err(e) => eprintln!("early:{i} on a full disk: {e}"),
        }
    }
    eprintln!("served on a full disk: {} of 50", served.len());
    assert!(served.len() >= 25, "most reads still answer");
    if !sled {
        assert_eq!(served.len(), 50, "the log reads without writing");
    }
    // While the disk stays full the database is not reopened (reads keep working).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(b.stats().reopened, 0);
    for i in &served {
        assert_eq!(b.get(&format!("early:{i}")).await.unwrap(), Some(value(*i)));
    }

    // Space comes back: within a few maintenance rounds writes work again, no restart.
    std::fs::remove_file(&filler).unwrap();
    let start = Instant::now();
    loop {
        if b.set("back:0", value(0), None).await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "writes still fail 15 s after space came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "writable again {:?} after space came back; first failed write: late:{failed}",
        start.elapsed()
    );
    let stats = b.stats();
    // sled is reopened once there is room; the log simply appends again.
    assert_eq!(stats.reopened, u64::from(sled));
    assert!(!stats.failing);
    for i in 1..20 {
        b.set(&format!("back:{i}"), value(i), None).await.unwrap();
    }
    b.flush().await.unwrap();
    for i in 0..50 {
        assert_eq!(b.get(&format!("early:{i}")).await.unwrap(), Some(value(i)));
    }
    // The accounting was rebuilt from the disk: it matches a fresh open.
    let live = b.stats();
    drop(b);
    let b = DiskBackend::open(config).unwrap();
    let reopened = b.stats();
    assert_eq!(
        (live.entries, live.bytes),
        (reopened.entries, reopened.bytes)
    );
    for i in 0..20 {
        assert_eq!(b.get(&format!("back:{i}")).await.unwrap(), Some(value(i)));
    }
    println!("CHILD OK");
}

#[tokio::test]
async fn a_full_disk_fails_writes_keeps_reads_and_recovers_when_space_returns() {
    full_disk(TEST, DiskEngine::Sled).await;
}

#[tokio::test]
async fn log_engine_a_full_disk_fails_writes_keeps_reads_and_recovers_when_space_returns() {
    full_disk(LOG_TEST, DiskEngine::Log).await;
}

async fn full_disk(test: &str, engine: DiskEngine) {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (name, mount) = spec.split_once(':').unwrap();
        let engine = if name == "log" {
            DiskEngine::Log
        } else {
            DiskEngine::Sled
        };
        child(engine, Path::new(mount)).await;
        return;
    }
    let mount = tempfile::tempdir().unwrap();
    // Can this machine make a user + mount namespace with a tmpfs in it?
    let probe = std::process::Command::new("unshare")
        .args(["-Urm", "sh", "-c", "mount -t tmpfs -o size=1m none \"$0\""])
        .arg(mount.path())
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs in a user namespace here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot run unshare: {e}");
            return;
        }
    }
    let out = std::process::Command::new("unshare")
        .args([
            "-Urm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=16m llm-cache-full-disk \"$0\" && exec \"$@\"",
        ])
        .arg(mount.path())
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!(
                "{}:{}",
                if engine == DiskEngine::Log {
                    "log"
                } else {
                    "sled"
                },
                mount.path().display()
            ),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("CHILD OK"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
