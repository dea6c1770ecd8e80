//! Tests with a second process: kill -9 of a writer, and a second process opening a directory
//! that another one holds.
//!
//! The test binary re-executes itself (`current_exe --exact <test>`) with `CHILD_ENV` set; the
//! test function then plays the child's part instead of the parent's.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cache_core::{Bytes, CacheBackend};
use cache_disk::{DiskBackend, DiskConfig, DiskEngine};

const CHILD_ENV: &str = "LLM_CACHE_DISK_TEST_CHILD";
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A 2 KB value that names its key and version, so any value read back can be checked.
fn value(key: &str, version: u32) -> Bytes {
    let mut v = format!("{{\"key\":\"{key}\",\"version\":{version},\"pad\":\"").into_bytes();
    let mut x = key.bytes().fold(version + 1, |h, b| {
        h.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    while v.len() < 2046 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(b'a' + (x % 26) as u8);
    }
    v.extend_from_slice(b"\"}");
    Bytes::from(v)
}

/// Checks a value read back: it is exactly `value(key, v)` for the version it names.
fn check(key: &str, got: &Bytes) -> u32 {
    let text = std::str::from_utf8(&got[..got.len().min(200)]).expect("utf8");
    let version: u32 = text
        .split("\"version\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key}: unparseable value {text:?}"));
    assert_eq!(*got, value(key, version), "{key}: corrupt value served");
    version
}

fn config(dir: &Path, sync: bool, engine: DiskEngine) -> DiskConfig {
    DiskConfig::new(dir)
        .with_engine(engine)
        .with_flush_interval(if sync { Duration::ZERO } else { FLUSH_EVERY })
}

fn engine_name(engine: DiskEngine) -> &'static str {
    match engine {
        DiskEngine::Log => "log",
        _ => "sled",
    }
}

fn engine_named(name: &str) -> DiskEngine {
    match name {
        "log" => DiskEngine::Log,
        "sled" => DiskEngine::Sled,
        other => panic!("unknown engine {other}"),
    }
}

fn spawn_child(test: &str, spec: &str, stdin: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Forwards the child's stdout lines, with their arrival time.
fn lines(out: ChildStdout) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<(Instant, String)>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // libtest may print "test <name> ... " before the child's first line.
            Ok((_, l)) if l.ends_with(want) => return,
            Ok(_) => {}
            Err(e) => panic!("child never printed {want:?}: {e}"),
        }
    }
}

const FLUSHED: usize = 300;

/// Child: writes and flushes `flushed-*`, prints FLUSHED, then writes `late-*` and overwrites
/// `flushed-*` (version 1) forever, printing each acknowledged write, until killed.
async fn writer_child(dir: &str, sync: bool, engine: DiskEngine) {
    let b = DiskBackend::open(config(Path::new(dir), sync, engine)).expect("child open");
    for i in 0..FLUSHED {
        let k = format!("flushed-{i}");
        b.set(&k, value(&k, 0), None).await.unwrap();
    }
    b.flush().await.unwrap();
    println!("FLUSHED");
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let k = format!("late-{i}");
        b.set(&k, value(&k, 0), None).await.unwrap();
        let o = format!("flushed-{}", i % FLUSHED);
        b.set(&o, value(&o, 1), None).await.unwrap();
        writeln!(out, "LATE {i}").unwrap();
        out.flush().unwrap();
    }
}

async fn kill_9(test: &str, sync: bool, engine: DiskEngine) {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "write:{}:{}:{}",
        if sync { "sync" } else { "interval" },
        engine_name(engine),
        dir.path().display()
    );
    let mut child = spawn_child(test, &spec, false);
    let rx = lines(child.stdout.take().unwrap());
    wait_line(&rx, "FLUSHED");
    // Let it write for a while, recording when each write was acknowledged.
    let mut acked: Vec<Instant> = Vec::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Ok((at, line)) = rx.recv_timeout(Duration::from_millis(50))
            && let Some((_, n)) = line.split_once("LATE ")
        {
            assert_eq!(n.parse::<usize>().unwrap(), acked.len());
            acked.push(at);
        }
    }
    child.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    child.wait().unwrap();
    // Acknowledged writes still in the pipe count too.
    while let Ok((at, line)) = rx.recv_timeout(Duration::from_millis(200)) {
        if line.contains("LATE ") {
            acked.push(at);
        }
    }
    assert!(
        acked.len() > 20,
        "the child wrote only {} entries",
        acked.len()
    );

    // The kernel released the lock with the process: reopening works at once.
    let b = DiskBackend::open(config(dir.path(), false, engine)).expect("reopen after kill -9");
    for i in 0..FLUSHED {
        let k = format!("flushed-{i}");
        let got = b
            .get(&k)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{k} was flushed before the kill but is gone"));
        check(&k, &got);
    }
    // Every write acknowledged before the last flush window is there; none is corrupt.
    let safe_before = killed_at - (FLUSH_EVERY * 5);
    let (mut present, mut lost_in_window) = (0, 0);
    for (i, at) in acked.iter().enumerate() {
        let k = format!("late-{i}");
        match b.get(&k).await.unwrap() {
            Some(v) => {
                check(&k, &v);
                present += 1;
            }
            None if sync => panic!("{k} was acknowledged with flush_interval 0 but is gone"),
            None if *at < safe_before => {
                panic!(
                    "{k} was acknowledged {:?} before the kill but is gone",
                    killed_at - *at
                )
            }
            None => lost_in_window += 1,
        }
    }
    // Beyond what was acknowledged: a write in flight may or may not be there, but intact.
    for i in acked.len()..acked.len() + 50 {
        let k = format!("late-{i}");
        if let Some(v) = b.get(&k).await.unwrap() {
            check(&k, &v);
        }
    }
    eprintln!(
        "kill -9 ({}, {}): {} writes acknowledged, {present} recovered, {lost_in_window} lost within the last flush window",
        if sync {
            "flush every write"
        } else {
            "flush every 100 ms"
        },
        engine_name(engine),
        acked.len()
    );
    // The accounting was rebuilt from what survived.
    assert!(b.stats().entries as usize >= FLUSHED + present);
}

/// Child: holds the directory until its stdin closes.
async fn holder_child(dir: &str) {
    let b = DiskBackend::open(config(Path::new(dir), false, DiskEngine::default()))
        .expect("child open");
    b.set("held", value("held", 0), None).await.unwrap();
    b.flush().await.unwrap();
    println!("HOLDING");
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    drop(b);
    println!("RELEASED");
}

fn run_child(spec: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (role, rest) = spec.split_once(':').unwrap();
        match role {
            "write" => {
                let (mode, rest) = rest.split_once(':').unwrap();
                let (engine, dir) = rest.split_once(':').unwrap();
                writer_child(dir, mode == "sync", engine_named(engine)).await;
            }
            "hold" => holder_child(rest).await,
            other => panic!("unknown child role {other}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_flush_window_and_serves_nothing_corrupt() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return tokio::task::spawn_blocking(move || run_child(&spec))
            .await
            .unwrap();
    }
    kill_9(
        "kill_9_loses_at_most_the_flush_window_and_serves_nothing_corrupt",
        false,
        DiskEngine::Sled,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_engine_kill_9_loses_at_most_the_flush_window_and_serves_nothing_corrupt() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return tokio::task::spawn_blocking(move || run_child(&spec))
            .await
            .unwrap();
    }
    kill_9(
        "log_engine_kill_9_loses_at_most_the_flush_window_and_serves_nothing_corrupt",
        false,
        DiskEngine::Log,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_flush_interval_zero_loses_no_acknowledged_write() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return tokio::task::spawn_blocking(move || run_child(&spec))
            .await
            .unwrap();
    }
    kill_9(
        "kill_9_with_flush_interval_zero_loses_no_acknowledged_write",
        true,
        DiskEngine::Sled,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_engine_kill_9_with_flush_interval_zero_loses_no_acknowledged_write() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return tokio::task::spawn_blocking(move || run_child(&spec))
            .await
            .unwrap();
    }
    kill_9(
        "log_engine_kill_9_with_flush_interval_zero_loses_no_acknowledged_write",
        true,
        DiskEngine::Log,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_gets_a_clear_error_not_a_hang() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return tokio::task::spawn_blocking(move || run_child(&spec))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("hold:{}", dir.path().display());
    let mut child = spawn_child(
        "a_second_process_gets_a_clear_error_not_a_hang",
        &spec,
        true,
    );
    let rx = lines(child.stdout.take().unwrap());
    wait_line(&rx, "HOLDING");

    let start = Instant::now();
    let err = DiskBackend::open(config(dir.path(), false, DiskEngine::default()))
        .expect_err("the directory is held by the child")
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "open must fail fast"
    );
    assert!(
        err.contains(&dir.path().display().to_string()) && err.contains("in use"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", child.id())),
        "names the holder: {err}"
    );

    // The child lets go: now it opens, with the child's data.
    drop(child.stdin.take());
    wait_line(&rx, "RELEASED");
    assert!(child.wait().unwrap().success());
    let b = DiskBackend::open(config(dir.path(), false, DiskEngine::default())).unwrap();
    let got = b.get("held").await.unwrap().expect("the child's entry");
    check("held", &got);
}
