//! RediSearch (HNSW) at a million entries: load rate, lookup p50/p99, and recall@1 of the
//! approximate index against an exact (brute-force) search over the same vectors.
//! `cargo xtask bench scale` runs it after the exact-cache backends; numbers and method in
//! `docs/benchmarks.md`. Not in CI.
//!
//! ```text
//! semantic_scale [--n N] [--dims 64,384] [--queries Q] [--port P] [--efs 10,128]
//! ```
//! Vectors are clustered like embeddings of related prompts (a few thousand topic centres, each
//! entry its centre plus noise, normalised), stored through `RedisSemanticBackend::store` (the
//! cache's own path: one hash per entry, scope tag, TTL) by 64 concurrent writers, all in one
//! scope. Queries are paraphrase-like: a stored vector plus fresh noise. Each query's true
//! nearest neighbour is found by scanning all N vectors; recall@1 is the share of queries whose
//! first RediSearch result is that neighbour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::Bytes;
use cache_core::semantic::{SemanticBackend, SemanticRecord};
use cache_redis::RedisConfig;
use cache_semantic::redis::{RedisSemanticBackend, RedisSemanticConfig};
use futures::StreamExt;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A standard normal sample from two uniform ones (Box-Muller), deterministic in `seed`.
fn normal(seed: u64) -> f32 {
    let u1 = ((mix(seed) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (mix(seed ^ 0x5555_5555) >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

const CENTRES: u64 = 4096;

/// Entry `i`: its topic centre plus noise of about the centre's own size per dimension.
fn entry(i: u64, dims: usize) -> Vec<f32> {
    let c = mix(i) % CENTRES;
    let scale = 1.0 / (dims as f32).sqrt();
    let mut v: Vec<f32> = (0..dims as u64)
        .map(|d| normal(c << 20 | d) * scale + 0.6 * normal((i + CENTRES) << 20 | d) * scale)
        .collect();
    normalize(&mut v);
    v
}

/// A paraphrase of entry `i`: the entry plus fresh noise.
fn query(i: u64, q: u64, dims: usize) -> Vec<f32> {
    let mut v = entry(i, dims);
    let scale = 0.35 / (dims as f32).sqrt();
    for (d, x) in v.iter_mut().enumerate() {
        *x += normal((q + (1 << 40)) << 20 | d as u64) * scale;
    }
    normalize(&mut v);
    v
}

/// Eight independent sums, so the compiler can vectorise (a plain fold is sequential).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let mut n: u64 = 1_000_000;
    let mut dims_list = vec![64usize, 384];
    let mut queries: u64 = 300;
    let mut port: u16 = 17701;
    // RediSearch's default EF_RUNTIME and ours (`redis_semantic_ef_runtime`).
    let mut efs = vec![10usize, 128];
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => n = value().parse().expect("--n N"),
            "--dims" => {
                dims_list = value()
                    .split(',')
                    .map(|d| d.parse().expect("dims"))
                    .collect();
            }
            "--queries" => queries = value().parse().expect("--queries Q"),
            "--port" => port = value().parse().expect("--port P"),
            "--efs" => efs = value().split(',').map(|e| e.parse().expect("ef")).collect(),
            other => panic!("unknown argument {other}"),
        }
    }
    println!(
        "# RediSearch HNSW at scale: {n} entries, {queries} paraphrase queries, 1 nearest; loadavg {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "| dims | N | load entries/s | EF_RUNTIME | lookup p50 ms | lookup p99 ms | recall@1 vs exact | Redis used_memory B/entry |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for dims in dims_list {
        let index = format!("llm_cache_scale_{dims}");
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "FT.DROPINDEX", &index, "DD"])
            .output();
        let used = || {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "info", "memory"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let backend: Arc<dyn SemanticBackend> = Arc::new(
            RedisSemanticBackend::connect(
                RedisSemanticConfig::new(
                    RedisConfig::standalone("127.0.0.1", port)
                        .with_command_timeout(Duration::from_secs(30))
                        .with_pool_size(4),
                )
                .with_index_name(index.clone())
                .with_dimensions(Some(dims)),
            )
            .await
            .expect("connect"),
        );
        backend.ping().await.expect("ping");
        let mem0 = used();
        let scope = blake3::hash(format!("scale-{dims}").as_bytes())
            .to_hex()
            .to_string();
        let value = Bytes::from(vec![b'x'; 600]);
        let start = Instant::now();
        let stored: Vec<_> = futures::stream::iter(0..n)
            .map(|i| {
                let (backend, scope, value) = (backend.clone(), scope.clone(), value.clone());
                async move {
                    let r = backend
                        .store(SemanticRecord::new(
                            scope,
                            Some("bench".to_owned()),
                            format!("p{i}"),
                            entry(i, dims),
                            value,
                            Some(Duration::from_secs(24 * 3600)),
                        ))
                        .await;
                    if (i + 1) % 100_000 == 0 {
                        eprintln!(
                            "  {dims} dims: {} stored, {:.0}/s so far",
                            i + 1,
                            (i + 1) as f64 / start.elapsed().as_secs_f64()
                        );
                    }
                    r
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let failed = stored.iter().filter(|r| r.is_err()).count();
        let load = start.elapsed();
        let mem = used().saturating_sub(mem0);
        // The exact nearest neighbours: every vector, regenerated, against every query.
        let qs: Vec<(u64, Vec<f32>)> = (0..queries)
            .map(|q| {
                let i = mix(q ^ 0xabcdef) % n;
                (i, query(i, q, dims))
            })
            .collect();
        let mut best: Vec<(f32, u64)> = vec![(f32::MIN, 0); qs.len()];
        for i in 0..n {
            let v = entry(i, dims);
            for (b, (_, q)) in best.iter_mut().zip(&qs) {
                let s = dot(&v, q);
                if s > b.0 {
                    *b = (s, i);
                }
            }
        }
        for &ef in &efs {
            // A second client on the same index, searching with this EF_RUNTIME.
            let searcher = RedisSemanticBackend::connect(
                RedisSemanticConfig::new(
                    RedisConfig::standalone("127.0.0.1", port)
                        .with_command_timeout(Duration::from_secs(30)),
                )
                .with_index_name(index.clone())
                .with_dimensions(Some(dims))
                .with_ef_runtime(ef),
            )
            .await
            .expect("connect");
            // Warm-up, then sequential lookups.
            for (_, q) in qs.iter().take(50) {
                let _ = searcher.search(&scope, q, 0.0, 1).await;
            }
            let mut times = Vec::with_capacity(qs.len());
            let mut right = 0;
            let mut errors = 0;
            for ((_, q), (_, truth)) in qs.iter().zip(&best) {
                let t = Instant::now();
                let r = searcher.search(&scope, q, 0.0, 1).await;
                times.push(t.elapsed());
                match r {
                    Ok(m) => {
                        if m.first().is_some_and(|m| m.prompt == format!("p{truth}")) {
                            right += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            times.sort_unstable();
            println!(
                "| {dims} | {n} | {:.0} | {ef} | {} | {} | {:.3} | {:.0} |",
                n as f64 / load.as_secs_f64(),
                ms(times[times.len() / 2]),
                ms(times[times.len() * 99 / 100]),
                right as f64 / qs.len() as f64,
                mem as f64 / n as f64
            );
            if errors > 0 {
                println!("  ({errors} lookups failed)");
            }
        }
        let same = qs
            .iter()
            .zip(&best)
            .filter(|((i, _), (_, t))| i == t)
            .count();
        println!(
            "  ({failed} stores failed; the exact neighbour is the paraphrased entry itself for {same} of {} queries)",
            qs.len()
        );
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "FT.DROPINDEX", &index, "DD"])
            .output();
    }
}
