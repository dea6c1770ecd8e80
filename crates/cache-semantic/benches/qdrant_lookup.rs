//! Lookup latency of the `qdrant-semantic` backend (`SemanticBackend::search`, no embedding) at
//! 10k and 100k entries. `cargo xtask bench qdrant` (or
//! `cargo bench -p cache-semantic --features qdrant-semantic --bench qdrant_lookup`).
//!
//! **What is measured**: the backend and `qdrant-client` over gRPC on loopback, against the
//! TEST-ONLY `qdrant-test-server` — Qdrant's engine qdrant-edge 0.7.0 **in this process** behind
//! a tonic server — not a Qdrant server (no network hop, no Qdrant REST/gRPC layer of its own,
//! the same two CPU cores for client and engine).
//!
//! Layout: 64-dimensional random unit vectors (potion-base-2M's size); half of the entries in one
//! big scope, the other half spread over 1000 small scopes. Queries: a stored vector plus noise
//! (cosine ≈ 0.95: a hit at threshold 0.8) or a random vector (a miss), limit 1, run one at a
//! time after the engine's optimizers have built the HNSW index (what a Qdrant server does in the
//! background), and once before, on the unindexed segment.
//!
//! Environment: `LLM_CACHE_BENCH_QDRANT_SIZES` (`10000,100000`), `LLM_CACHE_BENCH_N` (queries per
//! case, 2000).

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::semantic::{SemanticBackend, SemanticRecord};
use cache_semantic::qdrant::{QdrantBackend, QdrantConfig};
use qdrant_test_server::TestServer;

const DIMS: usize = 64;
const SMALL_SCOPES: usize = 1000;
const THRESHOLD: f32 = 0.8;

/// A scope and a query vector.
type Query = (String, Vec<f32>);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn unit(&mut self) -> Vec<f32> {
        let v: Vec<f32> = (0..DIMS).map(|_| self.next_f32()).collect();
        normalize(v)
    }
}

fn normalize(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// `base` moved towards a random direction so that the cosine is about 0.95.
fn near(rng: &mut Rng, base: &[f32]) -> Vec<f32> {
    let noise = rng.unit();
    normalize(base.iter().zip(noise).map(|(b, n)| b + 0.33 * n).collect())
}

fn scope_of(i: usize) -> String {
    if i.is_multiple_of(2) {
        "big".to_owned()
    } else {
        format!("small-{}", (i / 2) % SMALL_SCOPES)
    }
}

struct Stats {
    p50: Duration,
    p95: Duration,
    p99: Duration,
    hits: usize,
    n: usize,
}

async fn measure(b: &QdrantBackend, queries: &[Query]) -> Stats {
    for (scope, q) in queries.iter().take(100) {
        b.search(scope, q, THRESHOLD, 1)
            .await
            .expect("warm-up search");
    }
    let mut lat = Vec::with_capacity(queries.len());
    let mut hits = 0;
    for (scope, q) in queries {
        let start = Instant::now();
        let found = b.search(scope, q, THRESHOLD, 1).await.expect("search");
        lat.push(start.elapsed());
        hits += usize::from(!found.is_empty());
    }
    lat.sort_unstable();
    let at = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Stats {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        hits,
        n: lat.len(),
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`. Without it (`cargo test --all-targets`, as in CI) this is a
    // smoke run: every code path once, on tiny sizes, so CI checks the bench without paying for it.
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        eprintln!(
            "smoke run (no --bench): tiny sizes; `cargo xtask bench qdrant` measures for real"
        );
    }
    let sizes: Vec<usize> = std::env::var("LLM_CACHE_BENCH_QDRANT_SIZES")
        .unwrap_or_else(|_| if smoke { "3000" } else { "10000,100000" }.to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let n_queries: usize = env_or("LLM_CACHE_BENCH_N", if smoke { 20 } else { 2000 });
    println!(
        "qdrant-semantic lookup latency against qdrant-test-server ({}, in process, gRPC on loopback; NOT a Qdrant server)",
        qdrant_test_server::ENGINE
    );
    println!(
        "{DIMS} dims, limit 1, threshold {THRESHOLD}, {n_queries} sequential queries per case\n"
    );
    println!("| entries | index | scope (entries in it) | result | p50 | p95 | p99 | hits |");
    println!("|---|---|---|---|---|---|---|---|");
    for &size in &sizes {
        let server = TestServer::start().await.expect("test server");
        let collection = format!("bench-{size}");
        let mut config = QdrantConfig::new(server.url(), collection.clone());
        config.vector_size = Some(DIMS);
        config.cleanup_interval = None;
        let b = QdrantBackend::connect(config).await.expect("connect");

        // The floor: one gRPC round trip (HealthCheck) on the same connection pool.
        let mut ping = Vec::with_capacity(n_queries);
        for _ in 0..n_queries {
            let start = Instant::now();
            b.ping().await.expect("ping");
            ping.push(start.elapsed());
        }
        ping.sort_unstable();
        let at = |p: f64| ping[((ping.len() as f64 * p) as usize).min(ping.len() - 1)];
        println!(
            "| {size} | — | ping (HealthCheck round trip) | — | {} | {} | {} | — |",
            us(at(0.5)),
            us(at(0.95)),
            us(at(0.99))
        );

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size as u64);
        let mut stored: Vec<Query> = Vec::with_capacity(size);
        let load = Instant::now();
        let value = Bytes::from(vec![b'x'; 2000]);
        for chunk_start in (0..size).step_by(1000) {
            let records: Vec<SemanticRecord> = (chunk_start..(chunk_start + 1000).min(size))
                .map(|i| {
                    let v = rng.unit();
                    let scope = scope_of(i);
                    stored.push((scope.clone(), v.clone()));
                    SemanticRecord::new(
                        scope,
                        None,
                        format!("prompt {i}"),
                        v,
                        value.clone(),
                        Some(Duration::from_secs(3600)),
                    )
                })
                .collect();
            b.store_many(records).await.expect("load");
        }
        let load = load.elapsed();

        let mut cases: Vec<(&str, &str, Vec<Query>)> = Vec::new();
        for (label, big) in [("big", true), ("small", false)] {
            let pool: Vec<&Query> = stored.iter().filter(|(s, _)| (s == "big") == big).collect();
            let hit_q = (0..n_queries)
                .map(|i| {
                    let (s, v) = pool[(i * 7919) % pool.len()];
                    (s.clone(), near(&mut rng, v))
                })
                .collect();
            let miss_q = (0..n_queries)
                .map(|i| (pool[(i * 104_729) % pool.len()].0.clone(), rng.unit()))
                .collect();
            cases.push((label, "hit", hit_q));
            cases.push((label, "miss", miss_q));
        }

        let scope_size = |label: &str| {
            if label == "big" {
                format!("big ({})", size.div_ceil(2))
            } else {
                format!("1 of {SMALL_SCOPES} ({})", size / 2 / SMALL_SCOPES)
            }
        };
        for (label, result, queries) in &cases {
            let s = measure(&b, queries).await;
            println!(
                "| {size} | none (plain segment) | {} | {result} | {} | {} | {} | {}/{} |",
                scope_size(label),
                us(s.p50),
                us(s.p95),
                us(s.p99),
                s.hits,
                s.n
            );
        }
        let optimize = Instant::now();
        let name = collection.clone();
        let indexed = {
            let server = &server;
            tokio::task::block_in_place(|| {
                server.optimize(&name).expect("optimize");
                server.indexed_vectors_count(&name).unwrap_or(0)
            })
        };
        let optimize = optimize.elapsed();
        let index = if indexed == 0 {
            "optimized, no HNSW (under the indexing threshold)".to_owned()
        } else {
            format!("HNSW ({indexed} vectors)")
        };
        for (label, result, queries) in &cases {
            let s = measure(&b, queries).await;
            println!(
                "| {size} | {index} | {} | {result} | {} | {} | {} | {}/{} |",
                scope_size(label),
                us(s.p50),
                us(s.p95),
                us(s.p99),
                s.hits,
                s.n
            );
        }
        eprintln!(
            "{size} entries: loaded in {:.1} s (batches of 1000), optimized in {:.1} s",
            load.as_secs_f64(),
            optimize.as_secs_f64()
        );
    }
}
