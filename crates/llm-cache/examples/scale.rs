//! A million entries per backend: load rate, hit latency at 10 k entries and at the end,
//! footprint per entry, and (disk) the startup time of a proxy over the full cache.
//! `cargo xtask bench scale [ARGS]` (release build, services started); the numbers and the
//! method are in `docs/benchmarks.md`. Not in CI: a full run loads millions of entries.
//!
//! ```text
//! scale [--n N] [--backends memory,disk,disk-sled,redis,cluster] [--proxy PATH] [--dir DIR]
//!       [--redis-port P] [--cluster-ports P1,P2,...] [--memory-bound ITEMS]
//!       [--disk-memory BYTES] [--settle SECS]
//! `--settle`: a pause after each load, before the probes (background work such as sled's
//! segment cleaning after a bulk load finishes first).
//! ```
//! Every entry is a distinct chat request answered with a ~1 KB chat completion (varied
//! words, so compression sees realistic text), stored through the cache's own path
//! (`Prepared::store_confirmed`: key, envelope, compact encoding, backend write) by 32
//! concurrent writers. Hits are `Prepared::lookup` (key, read, decode) one at a time, on keys
//! drawn uniformly from what is loaded; latency is over the hits (the bounded memory tier holds
//! only `--memory-bound` of them: its misses are counted).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llm_cache::core::{Lookup, StoreOutcome};
use llm_cache::{Cache, CacheConfig, CacheControl, CallKind, RequestContext};
use serde_json::{Value, json};

const WRITERS: usize = 32;
const PROBES: usize = 20_000;
const CHECKPOINT: usize = 10_000;

const WORDS: &[&str] = &[
    "cache", "latency", "token", "request", "model", "answer", "proxy", "stream", "vector",
    "server", "client", "memory", "python", "rust", "async", "hash", "key", "value", "store",
    "lookup", "hit", "miss", "expire", "policy", "engine", "query", "prompt", "reply", "window",
    "budget", "route", "retry", "limit", "the", "a", "of", "to", "and", "is", "in", "for", "with",
    "that", "this", "on", "by", "when", "each", "more", "than",
];

/// A small deterministic generator (splitmix64): the same entries on every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn words(seed: u64, n: usize) -> String {
    let mut out = String::new();
    for j in 0..n {
        if j > 0 {
            out.push(' ');
        }
        out.push_str(
            WORDS[(mix(seed.wrapping_mul(1000).wrapping_add(j as u64)) % WORDS.len() as u64)
                as usize],
        );
    }
    out
}

fn request(run: u64, i: usize) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": format!("[{run}-{i}] {}", words(i as u64, 24))}
        ],
        "temperature": 0
    })
}

fn response(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": format!("chatcmpl-{i}"), "object": "chat.completion", "created": 1_795_000_000,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": words(i as u64 + (1 << 40), 140), "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 180, "total_tokens": 220}
    }))
    .expect("json")
}

struct Args {
    n: usize,
    backends: Vec<String>,
    proxy: Option<PathBuf>,
    dir: Option<PathBuf>,
    redis_port: u16,
    cluster_ports: Vec<u16>,
    memory_bound: usize,
    disk_memory: Option<u64>,
    settle: Duration,
}

fn args() -> Args {
    let mut a = Args {
        n: 1_000_000,
        backends: ["memory", "disk", "redis", "cluster"]
            .map(String::from)
            .to_vec(),
        proxy: None,
        dir: None,
        redis_port: 17001,
        cluster_ports: (17101..=17106).collect(),
        memory_bound: 100_000,
        disk_memory: None,
        settle: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = value().parse().expect("--n N"),
            "--backends" => a.backends = value().split(',').map(str::to_owned).collect(),
            "--proxy" => a.proxy = Some(value().into()),
            "--dir" => a.dir = Some(value().into()),
            "--redis-port" => a.redis_port = value().parse().expect("--redis-port P"),
            "--cluster-ports" => {
                a.cluster_ports = value()
                    .split(',')
                    .map(|p| p.parse().expect("port"))
                    .collect();
            }
            "--memory-bound" => a.memory_bound = value().parse().expect("--memory-bound N"),
            "--settle" => {
                a.settle = Duration::from_secs(value().parse().expect("--settle SECS"));
            }
            "--disk-memory" => a.disk_memory = Some(value().parse().expect("--disk-memory BYTES")),
            "--bench" => {} // passed by `cargo bench`-style runners
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// `used_memory` summed over the servers at `ports` that are masters (`redis-cli`).
fn redis_used_memory(ports: &[u16]) -> u64 {
    let mut total = 0;
    for p in ports {
        let out = Command::new("redis-cli")
            .args(["-p", &p.to_string(), "info", "all"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if out.contains("role:slave") {
            continue;
        }
        total += out
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn flush_redis(ports: &[u16]) {
    for p in ports {
        let _ = Command::new("redis-cli")
            .args(["-p", &p.to_string(), "flushall"])
            .output();
    }
}

struct Lat {
    p50: Duration,
    p99: Duration,
    misses: usize,
    hits: usize,
}

/// Latency of [`PROBES`] hits among sequential lookups of keys drawn from `from..to`; misses
/// are counted, not timed, and more keys are drawn until there are [`PROBES`] hits (at most
/// 20 × [`PROBES`] lookups): a bounded memory tier does not keep every entry, and a p99 over
/// its few hits among [`PROBES`] lookups would be noise.
async fn probe(cache: &Cache, run: u64, from: usize, to: usize, seed: u64) -> Lat {
    let cc = CacheControl::none();
    let ctx = RequestContext::default();
    let mut lat = Vec::with_capacity(PROBES);
    let mut misses = 0;
    let span = (to - from).max(1) as u64;
    for j in 0..20 * PROBES {
        if lat.len() >= PROBES {
            break;
        }
        let i = from + (mix(seed ^ j as u64) % span) as usize;
        let req = request(run, i);
        let t = Instant::now();
        let prepared = cache
            .prepare(CallKind::Chat, &req, &cc, &ctx)
            .expect("prepare");
        match prepared.lookup().await {
            Lookup::Hit(h) => {
                std::hint::black_box(h.entry.body.len());
                lat.push(t.elapsed());
            }
            _ => misses += 1,
        }
    }
    let hits = lat.len();
    if lat.is_empty() {
        lat.push(Duration::ZERO);
    }
    lat.sort_unstable();
    Lat {
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
        misses,
        hits,
    }
}

/// Loads entries `from..to` with [`WRITERS`] concurrent writers; returns entries per second.
async fn load(cache: &Cache, run: u64, from: usize, to: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(from));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (cache, next, failed) = (cache.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                let cc = CacheControl::none();
                let ctx = RequestContext::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        break;
                    }
                    let prepared = cache
                        .prepare(CallKind::Chat, &request(run, i), &cc, &ctx)
                        .expect("prepare");
                    let outcome = prepared.store_confirmed(response(i).into()).await;
                    if !matches!(outcome, StoreOutcome::Stored | StoreOutcome::Pending) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        println!("  ({failed} writes not stored)");
    }
    (to - from) as f64 / start.elapsed().as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Time from spawning `llm-cache serve` over `cfg` to its first answer on /health/liveliness.
fn proxy_startup(proxy: &Path, cfg: &Path) -> Option<Duration> {
    let port = 18477;
    let start = Instant::now();
    let mut child = Command::new(proxy)
        .args(["serve", "--config"])
        .arg(cfg)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}/health/liveliness");
    let mut ready = None;
    while start.elapsed() < Duration::from_secs(120) {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            ready = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    ready
}

#[tokio::main]
async fn main() {
    let a = args();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let sample = response(7).len();
    println!(
        "# scale: {} entries per backend, response JSON ~{sample} B, {WRITERS} writers, {PROBES} sequential probes per checkpoint; {} CPUs, loadavg {}",
        a.n,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "| backend | load entries/s | hit p50 @10k ms | hit p99 @10k ms | hit p50 @end ms | hit p99 @end ms | p99 ratio | footprint B/entry | notes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let tmp = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("llm-cache-scale-{}", std::process::id()))
    });
    for backend in &a.backends {
        let disk_dir = tmp.join("disk");
        let (config, ports): (Value, Vec<u16>) = match backend.as_str() {
            "memory" => (
                json!({"type": "local", "max_size_in_memory": a.memory_bound}),
                vec![],
            ),
            "disk" | "disk-sled" => {
                let _ = std::fs::remove_dir_all(&disk_dir);
                let engine = if backend == "disk" { "log" } else { "sled" };
                let mut c = json!({"type": "disk", "disk_cache_dir": disk_dir, "disk_cache_max_bytes": 8u64 << 30, "disk_cache_engine": engine});
                if let Some(m) = a.disk_memory {
                    c["disk_cache_memory_bytes"] = json!(m);
                }
                (c, vec![])
            }
            "redis" => (
                json!({"type": "redis", "host": "127.0.0.1", "port": a.redis_port}),
                vec![a.redis_port],
            ),
            "cluster" => (
                json!({"type": "redis", "redis_startup_nodes": a.cluster_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>()}),
                a.cluster_ports.clone(),
            ),
            other => panic!("unknown backend {other} (memory, disk, disk-sled, redis, cluster)"),
        };
        flush_redis(&ports);
        let cfg = CacheConfig::from_value(config.clone()).expect("config");
        let cache = cfg.build().await.expect("build");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss0 = cache_core::testing::rss_mib();
        let mem0 = redis_used_memory(&ports);
        let first = CHECKPOINT.min(a.n);
        let mut rate_time = 0.0;
        let r = load(&cache, run, 0, first).await;
        rate_time += first as f64 / r;
        let (f, t) = (0, first);
        tokio::time::sleep(a.settle).await;
        // One pass to warm the process (connections, allocator), then the measured one.
        probe(&cache, run, f, t, 11).await;
        let small = probe(&cache, run, f, t, 1).await;
        let r = load(&cache, run, first, a.n).await;
        rate_time += (a.n - first) as f64 / r;
        let _ = cache.flush(Duration::from_secs(600)).await;
        tokio::time::sleep(a.settle).await;
        let (f, t) = (0, a.n);
        probe(&cache, run, f, t, 12).await;
        let large = probe(&cache, run, f, t, 2).await;
        let (footprint, notes) = match backend.as_str() {
            "memory" => (
                (cache_core::testing::rss_mib() - rss0) * (1 << 20) as f64
                    / a.memory_bound.min(a.n) as f64,
                format!(
                    "bound {} items; process RSS {:.0} -> {:.0} MiB",
                    a.memory_bound,
                    rss0,
                    cache_core::testing::rss_mib()
                ),
            ),
            "disk" | "disk-sled" => {
                let du = cache_disk::allocated_bytes(&disk_dir);
                let rss = cache_core::testing::rss_mib();
                // The proxy opens the directory: this process lets go of it first.
                drop(cache);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let startup = a.proxy.as_ref().and_then(|proxy| {
                    let path = tmp.join("disk-proxy.yaml");
                    std::fs::write(
                        &path,
                        format!(
                            "litellm_settings:\n  cache: true\n  cache_params:\n    type: disk\n    disk_cache_dir: {}\n    disk_cache_max_bytes: {}\n    disk_cache_engine: {}\n",
                            disk_dir.display(),
                            8u64 << 30,
                            if backend == "disk" { "log" } else { "sled" }
                        ),
                    )
                    .expect("write config");
                    proxy_startup(proxy, &path)
                });
                let notes = format!(
                    "du {:.0} MiB; process RSS {rss0:.0} -> {rss:.0} MiB; proxy startup over the full cache: {}",
                    du as f64 / (1 << 20) as f64,
                    startup.map_or("not measured (--proxy)".to_owned(), |d| format!(
                        "{} ms",
                        ms(d)
                    ))
                );
                let _ = std::fs::remove_dir_all(&disk_dir);
                row(
                    backend,
                    a.n,
                    rate_time,
                    &small,
                    &large,
                    du as f64 / a.n as f64,
                    &notes,
                );
                continue;
            }
            _ => {
                let used = redis_used_memory(&ports).saturating_sub(mem0);
                (
                    used as f64 / a.n as f64,
                    format!(
                        "used_memory +{:.0} MiB (masters)",
                        used as f64 / (1 << 20) as f64
                    ),
                )
            }
        };
        row(backend, a.n, rate_time, &small, &large, footprint, &notes);
        flush_redis(&ports);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn row(
    backend: &str,
    n: usize,
    rate_time: f64,
    small: &Lat,
    large: &Lat,
    footprint: f64,
    notes: &str,
) {
    println!(
        "| {backend} | {:.0} | {} | {} | {} | {} | {:.2} | {:.0} | {notes} |",
        n as f64 / rate_time,
        ms(small.p50),
        ms(small.p99),
        ms(large.p50),
        ms(large.p99),
        large.p99.as_secs_f64() / small.p99.as_secs_f64(),
        footprint,
    );
    check_misses(backend, small, large);
}

fn check_misses(backend: &str, small: &Lat, large: &Lat) {
    if small.misses + large.misses > 0 {
        println!(
            "  {backend}: {} + {} lookups missed (evicted by the bound, or writes not stored); latency is over {PROBES} hits (fewer if 20 × {PROBES} lookups did not find them: {} and {})",
            small.misses, large.misses, small.hits, large.hits
        );
    }
}
