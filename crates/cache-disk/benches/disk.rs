//! The disk backend (both engines) next to the in-memory one: hit latency through the core `Cache` (key +
//! backend get + envelope decode) and write throughput, for 2 KB values.
//!
//! Run with `cargo xtask bench disk`; results and method in `docs/benchmarks.md` ("Disk").

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    Bytes, CacheBackend, CacheBuilder, CacheControl, CallKind, Lookup, MemoryBackend, MemoryConfig,
    RequestContext, SharedBackend,
};
use cache_disk::{DiskBackend, DiskConfig, DiskEngine};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

/// Values of this size (the envelope, as stored).
const VALUE_BYTES: usize = 2048;
/// Distinct keys of the random-read and write cases: 100 k × 2 KB = 200 MB, more than the
/// disk backend's default 64 MiB page cache.
const KEYS: usize = 100_000;

fn request() -> Value {
    json!({
        "model": "openai/fake",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. run=bench"},
            {"role": "user", "content": "Please summarise the following notes about caches and latency."}
        ],
        "temperature": 0, "max_tokens": 64
    })
}

/// A chat response whose stored envelope is about 2 KB.
fn response() -> Value {
    let mut content = String::new();
    while content.len() < VALUE_BYTES - 400 {
        content.push_str("cache latency token ");
    }
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_795_000_000,
        "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 300, "total_tokens": 320}
    })
}

fn value(i: usize) -> Bytes {
    let mut v = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
    v.resize(VALUE_BYTES - 2, b'x');
    v.extend_from_slice(b"\"}");
    Bytes::from(v)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn memory() -> SharedBackend {
    Arc::new(MemoryBackend::new(
        MemoryConfig::default()
            .with_max_items(None)
            .with_max_bytes(Some(1 << 30))
            .with_max_item_bytes(1 << 20),
    ))
}

fn disk(dir: &std::path::Path, engine: DiskEngine) -> SharedBackend {
    Arc::new(DiskBackend::open(DiskConfig::new(dir).with_engine(engine)).unwrap())
}

/// The backends compared: in-memory, then each disk engine in its own directory.
fn backends(dir: &std::path::Path) -> [(&'static str, SharedBackend); 3] {
    [
        ("memory", memory()),
        ("disk (log)", disk(&dir.join("log"), DiskEngine::Log)),
        ("disk (sled)", disk(&dir.join("sled"), DiskEngine::Sled)),
    ]
}

fn hit(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let req = request();
    let cc = CacheControl::none();
    let mut group = c.benchmark_group("hit 2KB (key + get + decode)");
    for (name, backend) in backends(dir.path()) {
        let cache = CacheBuilder::from_shared(backend).build();
        rt.block_on(async {
            cache
                .get_or_fetch(CallKind::Chat, &req, &cc, || async {
                    Ok::<_, std::io::Error>(response())
                })
                .await
                .unwrap();
            cache.flush(Duration::from_secs(5)).await.unwrap();
        });
        group.bench_function(name, |b| {
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
                        Lookup::Hit(h) => {
                            assert!(h.entry.body.len() > VALUE_BYTES - 600);
                            h.entry.body
                        }
                        other => panic!("expected a hit, got {other:?}"),
                    }
                })
            })
        });
    }
    group.finish();
}

fn random_get(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("backend get 2KB, random of 100k keys");
    for (name, backend) in backends(dir.path()) {
        rt.block_on(async {
            for i in 0..KEYS {
                backend
                    .set(&format!("bench:{i}"), value(i), None)
                    .await
                    .unwrap();
            }
            backend.flush().await.unwrap();
        });
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        group.bench_function(name, |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("bench:{}", x % KEYS as u64);
                rt.block_on(backend.get(&key)).unwrap().expect("present")
            })
        });
    }
    group.finish();
}

fn write(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("backend set 2KB, 1 h TTL");
    group.throughput(Throughput::Elements(1));
    for (name, backend) in backends(dir.path()) {
        let mut i = 0usize;
        let v = value(0);
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let key = format!("write:{i}");
                rt.block_on(backend.set(&key, v.clone(), Some(Duration::from_secs(3600))))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hit, random_get, write);
criterion_main!(benches);
