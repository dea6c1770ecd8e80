//! The CI pass of the fuzzer: every target with a fixed seed and a small number of cases (a
//! debug build), and every saved regression replayed. The long runs are `cargo xtask fuzz`.

use std::process::Command;
use std::time::{Duration, Instant};

use llm_cache_fuzz::{RunOptions, TARGETS, known_bugs, load_regressions, regressions_dir, target};

/// The fixed seed of the CI pass.
const SEED: u64 = 20_261_130;

fn smoke(name: &str, cases: u32) {
    let t = target(name).expect("registered");
    let mut opts = RunOptions::new(cases, SEED);
    opts.known = known_bugs(&regressions_dir()).expect("regression files parse");
    // A debug build is ~10x slower than the fuzzer's optimized one.
    opts.slow_case = Duration::from_secs(20);
    opts.hang = Duration::from_secs(120);
    opts.max_shrink = Duration::from_secs(30);
    let out = (t.run)(&opts);
    println!(
        "{name}: {} cases in {:.1}s (known bugs hit: {}), slowest {:?}",
        out.cases,
        out.elapsed.as_secs_f64(),
        out.known_hits,
        out.slowest
    );
    if let Some(f) = out.failure {
        panic!(
            "fuzz target `{name}` (seed {SEED}) failed: {}\nminimal input: {}",
            f.message,
            serde_json::to_string(&f.input).unwrap_or_default()
        );
    }
}

#[test]
fn directives() {
    smoke("directives", 600);
}

#[test]
fn cache_control() {
    smoke("cache_control", 1000);
}

#[test]
fn config() {
    smoke("config", 150);
}

#[test]
fn envelope() {
    smoke("envelope", 400);
}

#[test]
fn sse() {
    smoke("sse", 200);
}

#[test]
fn key() {
    smoke("key", 300);
}

#[test]
fn embeddings() {
    smoke("embeddings", 200);
}

#[test]
fn semantic_guard() {
    smoke("semantic_guard", 1500);
}

#[test]
fn every_target_has_a_smoke_test_and_a_unique_name() {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "{names:?}");
    let this = include_str!("fuzz.rs");
    for n in names {
        assert!(
            this.contains(&format!("smoke(\"{n}\"")),
            "no smoke test for `{n}`"
        );
    }
}

/// Every file in `testing/fuzz/regressions/` replays as its `status` says, each in its own
/// process (a crash or a hang found by the fuzzer would take this test binary down otherwise).
#[test]
fn regressions() {
    let files = load_regressions(&regressions_dir()).expect("regression files parse");
    let exe = env!("CARGO_BIN_EXE_llm-cache-fuzz");
    let mut failed = Vec::new();
    for r in &files {
        let start = Instant::now();
        let mut child = Command::new(exe)
            .arg("replay")
            .arg(&r.path)
            .spawn()
            .expect("start the fuzz binary");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.is_some_and(|s| s.success()) {
            failed.push(format!("{} ({status:?})", r.path.display()));
        }
    }
    assert!(failed.is_empty(), "regressions failed: {failed:#?}");
}
