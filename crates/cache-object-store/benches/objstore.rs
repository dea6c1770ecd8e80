//! Hit latency of the object-store backends against the local emulators, next to the in-memory
//! backend, through the whole orchestration (key + backend read + envelope decode), plus a
//! 16-item batch read (`get_many`) with and without concurrency.
//!
//! Needs `cargo xtask services up moto fake-gcs azurite`; a store whose emulator is not running
//! is skipped with a message. Run with `cargo xtask bench objstore`. Results and method:
//! `docs/benchmarks.md`, "Object stores".
//!
//! GCS: entries are written through the test-only XML-upload adapter (fake-gcs-server has no
//! XML upload) but read straight from fake-gcs-server, so the measured reads carry no adapter
//! hop.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::{
    Bytes, Cache, CacheBackend, CacheBuilder, CacheControl, CallKind, Lookup, RequestContext,
    SharedBackend,
};
use cache_object_store::{AzureConfig, GcsConfig, ObjectNaming, ObjectStoreBackend, S3Config};
use criterion::{Criterion, criterion_group, criterion_main};
use objstore_test_support as ts;
use serde_json::{Value, json};

fn request() -> Value {
    json!({
        "model": "openai/fake",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. run=objstore-bench"},
            {"role": "user", "content": "Summarise the benefits of caching LLM responses in a shared bucket."}
        ],
        "temperature": 0, "max_tokens": 64
    })
}

fn response() -> Value {
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_795_000_000,
        "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
            "content": "Shared caches answer repeated prompts without another model call: lower cost, lower latency, and the same answer for every replica. ".repeat(6)}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 150, "total_tokens": 190}
    })
}

fn params(v: Value) -> Params {
    Params::new(v.as_object().unwrap().clone(), "cache_params")
}

const PREFIX: &str = "llm-cache-bench";

/// (name, backend that writes, backend that reads), for every store whose emulator is up.
async fn stores() -> Vec<(&'static str, SharedBackend, SharedBackend)> {
    let mut out: Vec<(&'static str, SharedBackend, SharedBackend)> = Vec::new();
    let memory: SharedBackend = Arc::new(cache_core::MemoryBackend::default());
    out.push(("memory", memory.clone(), memory));
    // The object-store backend over object_store's in-process store: the backend's own cost
    // (naming, attributes, expiry check) without HTTP.
    let in_process: SharedBackend = Arc::new(ObjectStoreBackend::new(
        "object_store InMemory",
        Arc::new(object_store::memory::InMemory::new()),
        ObjectNaming::new(Some(PREFIX)).unwrap(),
    ));
    out.push((
        "object_store InMemory (no HTTP)",
        in_process.clone(),
        in_process,
    ));

    let s3 = ts::s3_endpoint();
    match ts::reachable(&s3) {
        Ok(()) => {
            let b: SharedBackend = Arc::new(
                S3Config::from_params(&params(json!({
                    "s3_bucket_name": ts::BUCKET, "s3_endpoint_url": s3, "s3_region_name": "us-east-1",
                    "s3_aws_access_key_id": "test", "s3_aws_secret_access_key": "test", "s3_path": PREFIX,
                })))
                .unwrap()
                .connect()
                .unwrap(),
            );
            out.push(("s3 (moto)", b.clone(), b));
        }
        Err(e) => eprintln!("SKIPPED s3: moto not reachable ({e})"),
    }

    let gcs = ts::gcs_endpoint();
    match ts::reachable(&gcs) {
        Ok(()) => {
            let adapter = ts::GcsXmlUploadAdapter::shared(&gcs);
            let conn = |base: &str| -> SharedBackend {
                Arc::new(
                    GcsConfig::from_params(&params(json!({
                        "gcs_bucket_name": ts::BUCKET,
                        "gcs_path_service_account": ts::gcs_service_account_file(base).to_str().unwrap(),
                        "gcs_path": PREFIX,
                    })))
                    .unwrap()
                    .connect()
                    .unwrap(),
                )
            };
            out.push(("gcs (fake-gcs-server)", conn(&adapter.url()), conn(&gcs)));
        }
        Err(e) => eprintln!("SKIPPED gcs: fake-gcs-server not reachable ({e})"),
    }

    let az = ts::azurite_endpoint();
    match ts::reachable(&az) {
        Ok(()) => {
            let b: SharedBackend = Arc::new(
                AzureConfig::from_params(&params(json!({
                    "azure_account_url": cache_object_store::emulator_account_url(&az),
                    "azure_blob_container": ts::BUCKET,
                    "azure_blob_path": PREFIX,
                })))
                .unwrap()
                .connect()
                .await
                .unwrap(),
            );
            out.push(("azure-blob (azurite)", b.clone(), b));
        }
        Err(e) => eprintln!("SKIPPED azure-blob: azurite not reachable ({e})"),
    }
    out
}

fn cache_over(b: SharedBackend) -> Cache {
    CacheBuilder::from_shared(b)
        .namespace("bench")
        .configure(|s| {
            s.read_timeout = Duration::from_secs(5);
            s.write_timeout = Duration::from_secs(10);
        })
        .build()
}

fn hits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stores = rt.block_on(stores());
    let req = request();
    let cc = CacheControl::none();
    let mut group = c.benchmark_group("hit");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(5));
    for (name, writer, reader) in &stores {
        let reading = cache_over(reader.clone());
        rt.block_on(async {
            let writing = cache_over(writer.clone());
            writing
                .get_or_fetch(CallKind::Chat, &req, &cc, || async {
                    Ok::<_, std::io::Error>(response())
                })
                .await
                .unwrap();
            writing.flush(Duration::from_secs(10)).await.unwrap();
        });
        // Key + backend read (+ HTTP for object stores) + envelope decode.
        group.bench_function(*name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let p = reading
                        .prepare(
                            CallKind::Chat,
                            black_box(&req),
                            &cc,
                            &RequestContext::default(),
                        )
                        .unwrap();
                    match p.lookup().await {
                        Lookup::Hit(h) => h.entry.body,
                        other => panic!("{name}: expected a hit, got {other:?}"),
                    }
                })
            })
        });
    }
    group.finish();

    // 16 stored items read as one batch (per-input embedding caching reads like this), with
    // the default concurrency bound (16) and one at a time.
    let mut group = c.benchmark_group("get_many 16");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    let keys: Vec<String> = (0..16).map(|i| format!("bench-batch:item{i}")).collect();
    let value = Bytes::from(serde_json::to_vec(&response()).unwrap());
    for (name, writer, reader) in stores.iter().skip(2) {
        rt.block_on(async {
            let entries = keys.iter().map(|k| (k.clone(), value.clone())).collect();
            writer
                .set_many(entries, Some(Duration::from_secs(3600)))
                .await
                .unwrap();
        });
        group.bench_function(format!("{name}, concurrency 16"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let got = reader.get_many(black_box(&keys)).await.unwrap();
                    assert!(got.iter().all(Option::is_some));
                    got
                })
            })
        });
        group.bench_function(format!("{name}, one at a time"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut got = Vec::with_capacity(keys.len());
                    for k in black_box(&keys) {
                        got.push(reader.get(k).await.unwrap());
                    }
                    got
                })
            })
        });
    }
    group.finish();
    rt.block_on(async {
        for (_, writer, _) in &stores {
            let _ = writer.clear(None).await;
        }
    });
}

criterion_group!(benches, hits);
criterion_main!(benches);
