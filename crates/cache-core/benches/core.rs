//! Hot paths of the core: key computation and an in-memory hit.
//!
//! The request shapes are the ones `../shared/bench/litellm_sdk_bench.py` uses for LiteLLM's
//! `get_cache_key` timing: a small request (2 messages, ~650 B of JSON) and a large one
//! (65 messages, ~51 KB). Results and method: `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::Duration;

use cache_core::{Cache, CacheControl, CallKind, KeyBuilder, KeyContext, Lookup, RequestContext};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

const VOCAB: &[&str] = &[
    "cache", "latency", "token", "request", "model", "answer", "proxy", "stream", "vector",
    "server", "client", "memory", "python", "rust", "async", "hash", "key", "value", "store",
    "lookup", "hit", "miss", "expire", "policy", "engine", "query", "prompt", "reply", "window",
    "budget", "route", "retry", "limit",
];

fn words(n: usize, seed: usize) -> String {
    (0..n)
        .map(|i| VOCAB[(seed * 7 + i * 13) % VOCAB.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn small_request() -> Value {
    json!({
        "model": "openai/fake",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. run=bench"},
            {"role": "user", "content": format!("Please summarise the following notes. {}", words(80, 1))}
        ],
        "temperature": 0, "max_tokens": 64
    })
}

pub fn large_request() -> Value {
    let mut msgs =
        vec![json!({"role": "system", "content": "You are a helpful assistant. run=bench"})];
    for i in 0..64 {
        msgs.push(json!({
            "role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": format!("turn {i}: {}", words(120, i)),
        }));
    }
    json!({"model": "openai/fake", "messages": msgs, "temperature": 0, "max_tokens": 64})
}

fn response() -> Value {
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_795_000_000,
        "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": words(60, 3)}}],
        "usage": {"prompt_tokens": 106, "completion_tokens": 60, "total_tokens": 166}
    })
}

fn keys(c: &mut Criterion) {
    let kb = KeyBuilder::default();
    let ctx = KeyContext::default();
    for (name, req) in [("small", small_request()), ("large", large_request())] {
        let bytes = serde_json::to_vec(&req).unwrap().len();
        c.bench_function(&format!("key/{name} ({bytes} B JSON)"), |b| {
            b.iter(|| kb.key(CallKind::Chat, black_box(&req), &ctx).unwrap())
        });
    }
}

fn memory_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = Cache::in_memory();
    let req = small_request();
    let cc = CacheControl::none();
    rt.block_on(async {
        cache
            .get_or_fetch(CallKind::Chat, &req, &cc, || async {
                Ok::<_, std::io::Error>(response())
            })
            .await
            .unwrap();
        cache.flush(Duration::from_secs(1)).await.unwrap();
    });
    // Key + L1/memory lookup + envelope decode (checksum, expiry, age): what the proxy does
    // before writing the stored bytes out.
    c.bench_function("memory hit/small (key + lookup + decode)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let p = cache
                    .prepare(
                        CallKind::Chat,
                        black_box(&req),
                        &cc,
                        &RequestContext::default(),
                    )
                    .unwrap();
                match p.lookup().await {
                    Lookup::Hit(h) => h.entry.body,
                    other => panic!("expected a hit, got {other:?}"),
                }
            })
        })
    });
    // The typed path: also deserialises the stored body into a `serde_json::Value`.
    c.bench_function("memory hit/small typed (get_or_fetch -> Value)", |b| {
        b.iter(|| {
            rt.block_on(async {
                cache
                    .get_or_fetch(CallKind::Chat, black_box(&req), &cc, || async {
                        Ok::<Value, std::io::Error>(Value::Null)
                    })
                    .await
                    .unwrap()
            })
        })
    });
}

/// Envelope encode/decode, JSON and compact: a ~2 KB chat answer and one embedding of 1536
/// floats (what a store and a backend hit pay for compression and float packing).
fn envelopes(c: &mut Criterion) {
    use bytes::Bytes;
    use cache_core::{Encoding, Entry};
    let answer = {
        let mut r = response();
        r["choices"][0]["message"]["content"] = json!(words(330, 5));
        Bytes::from(serde_json::to_vec(&r).unwrap())
    };
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let floats: Vec<f64> = (0..1536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f64::from((((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5) as f32 * 0.1)
        })
        .collect();
    let embedding = Bytes::from(
        serde_json::to_vec(&json!({"item": {"embedding": floats, "index": 0, "object": "embedding"}, "model": "text-embedding-3-small"}))
            .unwrap(),
    );
    for (name, body, kind) in [
        ("chat 2KB", answer, CallKind::Chat),
        ("embedding 1536", embedding, CallKind::Embedding),
    ] {
        let entry = Entry::new(kind, body, None, Some(Duration::from_secs(600)));
        let json_raw = entry.encode();
        let compact_raw = entry.encode_with(&Encoding::COMPACT);
        let mut g = c.benchmark_group(format!("envelope/{name}"));
        g.bench_function("encode json", |b| b.iter(|| black_box(entry.encode())));
        g.bench_function("encode compact", |b| {
            b.iter(|| black_box(entry.encode_with(&Encoding::COMPACT)))
        });
        g.bench_function("decode json", |b| {
            b.iter(|| black_box(Entry::decode(&json_raw).unwrap()))
        });
        g.bench_function("decode compact", |b| {
            b.iter(|| black_box(Entry::decode(&compact_raw).unwrap()))
        });
        g.finish();
        eprintln!(
            "envelope/{name}: json {} bytes, compact {} bytes",
            json_raw.len(),
            compact_raw.len()
        );
    }
}

criterion_group!(benches, keys, memory_hit, envelopes);
criterion_main!(benches, breakdown);

/// Where the large-key time goes: canonicalisation vs hashing.
fn parts(c: &mut Criterion) {
    let req = large_request();
    let canon = cache_core::key::canonical_json(&req);
    c.bench_function("part/blake3 51KB", |b| {
        b.iter(|| blake3::hash(black_box(canon.as_bytes())))
    });
    c.bench_function("part/canonical 51KB", |b| {
        b.iter(|| cache_core::key::canonical_json(black_box(&req)))
    });
}
criterion_group!(breakdown, parts);
