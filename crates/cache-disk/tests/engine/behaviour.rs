//! Behaviour of the disk backend in one process that every engine shares: restarts, expiry,
//! the sweeper, the size bound, locking, accounting. Included by `disk.rs` (sled) and
//! `disk_log.rs` (the log), each naming its engine as `ENGINE`.

use std::path::Path;
use std::time::{Duration, Instant};

use cache_core::{
    Bytes, CacheBackend, CacheBuilder, CacheControl, CacheError, CacheStatus, CallKind,
};
use cache_disk::{DiskBackend, DiskConfig};
use serde_json::{Value, json};

const MIN: Duration = Duration::from_secs(60);

pub(crate) fn config(dir: &Path) -> DiskConfig {
    DiskConfig::new(dir)
        .with_flush_interval(Duration::from_millis(100))
        .with_engine(super::ENGINE)
}

pub(crate) fn open(dir: &Path) -> DiskBackend {
    DiskBackend::open(config(dir)).expect("open")
}

pub(crate) fn value(i: usize, len: usize) -> Bytes {
    let mut v = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
    while v.len() < len - 2 {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v.extend_from_slice(b"\"}");
    Bytes::from(v)
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(text: &str) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
}

#[tokio::test]
async fn entries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "persist me"}]});
    let before = {
        let b = open(dir.path());
        for i in 0..200 {
            let ttl = if i % 2 == 0 { None } else { Some(MIN * 60) };
            b.set(&format!("app:{i}"), value(i, 2048), ttl)
                .await
                .unwrap();
        }
        let stats = b.stats();
        let cache = CacheBuilder::new(b).namespace("e2e").build();
        let first = cache
            .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), || async {
                Ok::<_, std::io::Error>(chat("stored before the restart"))
            })
            .await
            .unwrap();
        assert!(matches!(
            first.status,
            CacheStatus::Miss {
                store: cache_core::StoreOutcome::Stored,
                ..
            }
        ));
        cache.flush(Duration::from_secs(5)).await.unwrap();
        stats
    }; // cache and backend dropped: clean shutdown

    let b = open(dir.path());
    for i in 0..200 {
        assert_eq!(
            b.get(&format!("app:{i}")).await.unwrap(),
            Some(value(i, 2048)),
            "app:{i}"
        );
    }
    let after = b.stats();
    assert_eq!(
        after.entries,
        before.entries + 1,
        "accounting rebuilt at open"
    );
    assert!(after.bytes > before.bytes);
    let cache = CacheBuilder::new(b).namespace("e2e").build();
    let again = cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), || async {
            Ok::<_, std::io::Error>(chat("refetched"))
        })
        .await
        .unwrap();
    assert!(again.status.is_hit(), "{:?}", again.status);
    assert_eq!(again.value, chat("stored before the restart"));
}

#[tokio::test]
async fn ttl_expiry_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path());
        b.set("t:short", value(1, 100), Some(Duration::from_millis(700)))
            .await
            .unwrap();
        b.set("t:long", value(2, 100), Some(MIN)).await.unwrap();
        b.set("t:never", value(3, 100), None).await.unwrap();
        assert!(b.get("t:short").await.unwrap().is_some());
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    let b = open(dir.path());
    assert_eq!(
        b.get("t:short").await.unwrap(),
        None,
        "expired while the process was down: never served"
    );
    assert!(b.get("t:long").await.unwrap().is_some());
    assert!(b.get("t:never").await.unwrap().is_some());
    // The sweeper's first pass runs at open.
    wait_for("the expired entry is swept", Duration::from_secs(5), || {
        let s = b.stats();
        s.entries == 2 && s.expired_removed == 1
    })
    .await;
}

#[tokio::test]
async fn the_sweeper_shrinks_the_live_set() {
    let dir = tempfile::tempdir().unwrap();
    let b = DiskBackend::open(config(dir.path()).with_sweep_interval(Duration::from_millis(100)))
        .unwrap();
    for i in 0..20 {
        b.set(&format!("keep:{i}"), value(i, 2048), None)
            .await
            .unwrap();
    }
    let kept = b.stats();
    for i in 0..1000 {
        b.set(
            &format!("churn:{i}"),
            value(i, 2048),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    }
    let full = b.stats();
    assert_eq!(full.entries, 1020);
    wait_for(
        "the sweeper removes 1000 expired entries",
        Duration::from_secs(10),
        || b.stats().entries == 20,
    )
    .await;
    let swept = b.stats();
    assert_eq!(swept.bytes, kept.bytes, "bytes back to the kept entries");
    assert_eq!(swept.expired_removed, 1000);
    assert_eq!(swept.evicted, 0);
    for i in 0..20 {
        assert!(b.get(&format!("keep:{i}")).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn the_size_bound_evicts_what_expires_first_then_what_was_stored_first() {
    let dir = tempfile::tempdir().unwrap();
    let max = 256 << 10;
    let b = DiskBackend::open(config(dir.path()).with_max_bytes(max)).unwrap();
    let hour = MIN * 60;
    // Stored first, but never expires: evicted last.
    for i in 0..20 {
        b.set(&format!("never:{i}"), value(i, 2048), None)
            .await
            .unwrap();
    }
    for i in 0..20 {
        b.set(&format!("long:{i}"), value(i, 2048), Some(hour * 2))
            .await
            .unwrap();
    }
    for i in 0..20 {
        b.set(&format!("short:{i}"), value(i, 2048), Some(MIN * 10))
            .await
            .unwrap();
    }
    // 60 × ~2.2 KB fits; 200 fillers expiring in an hour push everything else out but
    // `long` (2 h) and `never`: the `short` ones (10 min) go first, then the oldest fillers.
    for i in 0..200 {
        b.set(&format!("filler:{i}"), value(i, 2048), Some(hour))
            .await
            .unwrap();
        assert!(b.stats().bytes <= max, "bound exceeded after filler {i}");
    }
    let s = b.stats();
    assert!(s.evicted > 0);
    for i in 0..20 {
        assert!(
            b.get(&format!("short:{i}")).await.unwrap().is_none(),
            "short:{i}"
        );
        assert!(
            b.get(&format!("long:{i}")).await.unwrap().is_some(),
            "long:{i}"
        );
        assert!(
            b.get(&format!("never:{i}")).await.unwrap().is_some(),
            "never:{i}"
        );
    }
    assert!(b.get("filler:0").await.unwrap().is_none(), "oldest filler");
    assert!(
        b.get("filler:199").await.unwrap().is_some(),
        "newest filler"
    );
    // Now entries without expiry: fillers go, then `long`, then the oldest `never` ones.
    for i in 0..120 {
        b.set(&format!("late:{i}"), value(i, 2048), None)
            .await
            .unwrap();
    }
    assert!(b.stats().bytes <= max);
    for i in 0..20 {
        assert!(
            b.get(&format!("long:{i}")).await.unwrap().is_none(),
            "long:{i}"
        );
        assert!(
            b.get(&format!("filler:{}", 180 + i))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        b.get("never:0").await.unwrap().is_none(),
        "oldest never-expiring"
    );
    assert!(b.get("late:119").await.unwrap().is_some(), "newest");
    // The bound holds across a restart, and the accounting matches.
    let before = b.stats();
    drop(b);
    let b = DiskBackend::open(config(dir.path()).with_max_bytes(max)).unwrap();
    assert_eq!(b.stats().bytes, before.bytes);
    assert_eq!(b.stats().entries, before.entries);
}

#[tokio::test]
async fn a_value_larger_than_the_bound_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let b = DiskBackend::open(config(dir.path()).with_max_bytes(64 << 10)).unwrap();
    let limit = b.capabilities().max_value_size.expect("limited");
    assert!(limit < 64 << 10 && limit > 60 << 10, "{limit}");
    let err = b
        .set("big", Bytes::from(vec![b'x'; 100_000]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CacheError::ValueTooLarge { size: 100_000, .. }),
        "{err}"
    );
    b.set("fits", Bytes::from(vec![b'x'; limit]), None)
        .await
        .unwrap();
    assert_eq!(b.get("fits").await.unwrap().map(|v| v.len()), Some(limit));
}

#[tokio::test]
async fn a_second_opener_in_the_same_process_gets_an_error_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    a.set("k", value(1, 10), None).await.unwrap();
    let start = Instant::now();
    let err = DiskBackend::open(config(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(start.elapsed() < Duration::from_secs(1), "no hang");
    assert!(
        err.contains(&dir.path().display().to_string()) && err.contains("in use"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(a);
    let b = open(dir.path());
    assert!(b.get("k").await.unwrap().is_some());
}

#[tokio::test]
async fn a_directory_that_cannot_be_created_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let target = file.join("cache");
    let err = DiskBackend::open(DiskConfig::new(&target).with_engine(super::ENGINE))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&target.display().to_string()) && err.contains("disk_cache_dir"),
        "{err}"
    );
}

#[tokio::test]
async fn clear_removes_exactly_the_namespace_and_keeps_accounting_exact() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    for i in 0..300 {
        let ns = ["a", "a:sub", "ab", "b"][i % 4];
        b.set(&format!("{ns}:{i}"), value(i, 500), Some(MIN))
            .await
            .unwrap();
    }
    b.set(&"f".repeat(64), value(0, 100), None).await.unwrap(); // no namespace
    assert_eq!(b.clear(Some("a")).await.unwrap(), 150);
    assert!(b.get("a:0").await.unwrap().is_none());
    assert!(b.get("a:sub:1").await.unwrap().is_none());
    assert!(b.get("ab:2").await.unwrap().is_some());
    assert!(b.get("b:3").await.unwrap().is_some());
    assert_eq!(b.stats().entries, 151);
    assert_eq!(b.clear(None).await.unwrap(), 151);
    let s = b.stats();
    assert_eq!((s.entries, s.bytes), (0, 0));
    assert!(b.get(&"f".repeat(64)).await.unwrap().is_none());
    b.set("after", value(1, 10), None).await.unwrap();
    assert!(b.get("after").await.unwrap().is_some());
}

#[tokio::test]
async fn accounting_after_mixed_operations_matches_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let b = DiskBackend::open(config(dir.path()).with_max_bytes(400 << 10)).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("ns{}:{}", x % 3, (x >> 8) % 200);
        match x % 10 {
            0 => {
                b.delete(&key).await.unwrap();
            }
            1 => {
                b.set(&key, value(1, 50), Some(Duration::ZERO))
                    .await
                    .unwrap();
            }
            2 if x % 100 == 2 => {
                b.clear(Some(&format!("ns{}", (x >> 3) % 3))).await.unwrap();
            }
            n => {
                let ttl = (n % 2 == 0).then_some(MIN);
                b.set(&key, value(n as usize, 100 + (x % 4000) as usize), ttl)
                    .await
                    .unwrap();
            }
        }
    }
    let live = b.stats();
    assert!(live.bytes <= 400 << 10);
    drop(b);
    let b = DiskBackend::open(config(dir.path()).with_max_bytes(400 << 10)).unwrap();
    let rebuilt = b.stats();
    assert_eq!((live.entries, live.bytes), (rebuilt.entries, rebuilt.bytes));
}

#[tokio::test]
async fn flush_interval_zero_flushes_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let b = DiskBackend::open(config(dir.path()).with_flush_interval(Duration::ZERO)).unwrap();
    b.set("k", value(1, 100), None).await.unwrap();
    assert!(b.delete("k").await.unwrap());
    assert!(!b.delete("k").await.unwrap());
    let health = b.ping().await.unwrap();
    assert_eq!(health.backend, "disk");
    assert_eq!(
        health.details.get("dir").map(String::as_str),
        Some(dir.path().display().to_string().as_str())
    );
}

#[tokio::test]
async fn works_without_a_tokio_runtime_for_open_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let b = DiskBackend::open(config(&path)).unwrap();
        drop(b);
    })
    .join()
    .unwrap();
    let b = DiskBackend::open_async(config(dir.path())).await.unwrap();
    b.flush().await.unwrap();
}
