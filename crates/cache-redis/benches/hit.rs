//! Redis-backed cache hit at concurrency 50: key + GET + envelope decode through
//! `Cache::prepare(..).lookup()`, next to a bare client `GET` of the same bytes and to
//! `redis-benchmark -t get -d <same value size> -c 50 -n N` against the same server, in the same
//! run. `cargo xtask bench redis` (or `cargo bench -p cache-redis --bench hit`).
//!
//! Environment: `LLM_CACHE_BENCH_REDIS_PORT` (17001), `LLM_CACHE_BENCH_N` (200000),
//! `LLM_CACHE_BENCH_POOL` (the backend's default pool size), `LLM_CACHE_BENCH_REDIS_SOCKET`
//! (none: TCP; a path: the same server through its Unix socket, for both llm-cache and
//! `redis-benchmark -s`; `redis-cli -p 17001 config get unixsocket` gives the shared service's).

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_core::{
    Cache, CacheBackend, CacheBuilder, CacheControl, CallKind, Lookup, RequestContext,
};
use cache_redis::{RedisBackend, RedisConfig};
use serde_json::{Value, json};

const CONCURRENCY: usize = 50;
const DISTINCT: usize = 1000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    misses: usize,
}

fn summarize(mut lat: Vec<u32>, wall: Duration, misses: usize) -> Run {
    lat.sort_unstable();
    let at = |q: f64| {
        Duration::from_micros(u64::from(
            lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)],
        ))
    };
    Run {
        ops_per_sec: lat.len() as f64 / wall.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        misses,
    }
}

fn request(i: usize) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": format!("Question number {i}: what is the capital of France?")}
        ],
        "temperature": 0
    })
}

fn response(i: usize) -> Value {
    // Sized so the stored envelope is about 2 KB, like LiteLLM's redis_baseline.sh values.
    let text = format!("Answer {i}: ") + &"Paris is the capital of France. ".repeat(50);
    json!({
        "id": format!("chatcmpl-{i}"), "object": "chat.completion", "created": 1_795_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 400, "total_tokens": 425}
    })
}

async fn cache_hits(cache: &Cache, reqs: Arc<Vec<Value>>, n: usize) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (cache, reqs, next) = (cache.clone(), reqs.clone(), next.clone());
            tokio::spawn(async move {
                let cc = CacheControl::none();
                let ctx = RequestContext::default();
                let mut lat = Vec::with_capacity(n / CONCURRENCY + 1);
                let mut misses = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    let prepared = cache
                        .prepare(CallKind::Chat, &reqs[i % reqs.len()], &cc, &ctx)
                        .expect("prepare");
                    match prepared.lookup().await {
                        Lookup::Hit(hit) => {
                            std::hint::black_box(hit.entry.body.len());
                        }
                        _ => misses += 1,
                    }
                    lat.push(t.elapsed().as_micros() as u32);
                }
                (lat, misses)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut misses = 0;
    for t in tasks {
        let (lat, m) = t.await.expect("task");
        all.extend(lat);
        misses += m;
    }
    summarize(all, start.elapsed(), misses)
}

async fn raw_gets(backend: Arc<RedisBackend>, keys: Arc<Vec<String>>, n: usize) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (backend, keys, next) = (backend.clone(), keys.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n / CONCURRENCY + 1);
                let mut misses = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    match backend.get(&keys[i % keys.len()]).await {
                        Ok(Some(v)) => {
                            std::hint::black_box(v.len());
                        }
                        _ => misses += 1,
                    }
                    lat.push(t.elapsed().as_micros() as u32);
                }
                (lat, misses)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut misses = 0;
    for t in tasks {
        let (lat, m) = t.await.expect("task");
        all.extend(lat);
        misses += m;
    }
    summarize(all, start.elapsed(), misses)
}

/// `redis-benchmark` GET at the same concurrency and value size; (requests/s, p50 ms).
fn redis_benchmark(
    port: u16,
    socket: Option<&str>,
    size: usize,
    n: usize,
) -> Option<(f64, String)> {
    let mut cmd = Command::new("redis-benchmark");
    match socket {
        Some(path) => cmd.args(["-s", path]),
        None => cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]),
    };
    let out = cmd
        .args(["-t", "get"])
        .args(["-d", &size.to_string(), "-c", &CONCURRENCY.to_string()])
        .args(["-n", &n.to_string(), "-q"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let line = text
        .lines()
        .rfind(|l| l.starts_with("GET:") && l.contains("requests per second"))?;
    let rps: f64 = line
        .trim_start_matches("GET:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let p50 = line
        .split("p50=")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Some((rps, p50))
}

fn main() {
    let port: u16 = env_or("LLM_CACHE_BENCH_REDIS_PORT", 17001);
    // `cargo bench` passes `--bench`. Without it (`cargo test --all-targets`, as in CI) this is a
    // smoke run: every code path once, on tiny counts.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = env_or("LLM_CACHE_BENCH_N", if smoke { 2_000 } else { 200_000 });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
        eprintln!(
            "SKIPPED: no Redis on 127.0.0.1:{port}; start it with `cargo xtask services up redis`"
        );
        return;
    }
    let socket = std::env::var("LLM_CACHE_BENCH_REDIS_SOCKET")
        .ok()
        .filter(|s| !s.is_empty());
    let mut config = match &socket {
        Some(path) => RedisConfig::unix(path),
        None => RedisConfig::standalone("127.0.0.1", port),
    };
    if let Some(pool) = std::env::var("LLM_CACHE_BENCH_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.with_pool_size(pool);
    }
    let pool_size = config.pool_size;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ns = format!("bench-hit-{}", std::process::id());
    let (backend, cache, reqs, keys, size) = rt.block_on(async {
        let backend = Arc::new(RedisBackend::connect(config).await.expect("config"));
        backend
            .wait_connected(Duration::from_secs(5))
            .await
            .expect("connected");
        let cache = CacheBuilder::from_shared(backend.clone())
            .namespace(&ns)
            .build();
        let reqs: Vec<Value> = (0..DISTINCT).map(request).collect();
        let mut keys = Vec::with_capacity(DISTINCT);
        for (i, req) in reqs.iter().enumerate() {
            let body = response(i);
            let r = cache
                .get_or_fetch(CallKind::Chat, req, &CacheControl::none(), || async {
                    Ok::<Value, std::io::Error>(body)
                })
                .await
                .expect("populate");
            keys.push(r.key.expect("key").as_str().to_owned());
        }
        cache.flush(Duration::from_secs(10)).await.expect("flush");
        let size = backend
            .get(&keys[0])
            .await
            .expect("get")
            .expect("stored")
            .len();
        (backend, cache, Arc::new(reqs), Arc::new(keys), size)
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# Redis hit bench: {n} lookups, concurrency {CONCURRENCY}, {DISTINCT} distinct entries of {size} bytes, pool {pool_size}, {cpus} CPUs, over {}, loadavg {}",
        socket.as_deref().map_or_else(
            || format!("TCP port {port}"),
            |p| format!("Unix socket {p}")
        ),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // Warm-up (connections, allocator, branch predictors).
    rt.block_on(cache_hits(&cache, reqs.clone(), n.min(20_000)));

    // The machine is shared: interleave rounds of ours and redis-benchmark and compare each
    // round's pair, then take the median ratio.
    let rounds: usize = env_or("LLM_CACHE_BENCH_ROUNDS", if smoke { 1 } else { 3 });
    println!("| round | what | ops/s | p50 | p99 | p99.9 | misses |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let ours = rt.block_on(cache_hits(&cache, reqs.clone(), n));
        let raw = rt.block_on(raw_gets(backend.clone(), keys.clone(), n));
        let bench = redis_benchmark(port, socket.as_deref(), size, n);
        for (what, r) in [
            ("llm-cache hit: key + GET + decode", &ours),
            ("backend GET only (fred, no cache layer)", &raw),
        ] {
            println!(
                "| {round} | {what} | {:.0} | {:?} | {:?} | {:?} | {} |",
                r.ops_per_sec, r.p50, r.p99, r.p999, r.misses
            );
        }
        match bench {
            Some((rps, p50)) => {
                println!(
                    "| {round} | redis-benchmark -t get -d {size} -c {CONCURRENCY} -n {n} | {rps:.0} | {p50} | | | |"
                );
                // A run with misses hit the read deadline (a stall of the machine) and then
                // the open breaker, which answers instantly: it does not measure hits.
                if ours.misses == 0 {
                    ratios.push(ours.ops_per_sec / rps);
                }
            }
            None => println!("| {round} | redis-benchmark not available | | | | | |"),
        }
    }
    ratios.sort_by(f64::total_cmp);
    match ratios.get(ratios.len() / 2) {
        Some(median) => println!(
            "\nllm-cache hit throughput = {:.0}% of redis-benchmark GET (median of {} rounds: {}; goal >= 60%)",
            100.0 * median,
            ratios.len(),
            ratios
                .iter()
                .map(|r| format!("{:.0}%", 100.0 * r))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => println!("\nno comparable round (redis-benchmark missing, or misses under load)"),
    }
    rt.block_on(async {
        let _ = backend.clear(Some(&ns)).await;
    });
}
