//! `embeddings`: the per-input embeddings cache and its merge (`Cache::embeddings`), on an
//! in-memory cache, with hostile upstream bodies (wrong counts, odd indexes, huge or negative
//! usage, not JSON), hostile entries already stored under the inputs' keys, and directives.
//! A stored miss must come back as a hit with the same embeddings in input order.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use cache_core::envelope::{Entry, Usage};
use cache_core::key::{CallKind, KeyContext};
use cache_core::{Cache, CacheControl, CacheStatus, CallError, RequestContext};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::strategies::{self, Blob, Mutation};

/// An entry stored under one input's key before the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stored {
    /// A valid envelope (kind `embedding` or another) around a hostile item body.
    Envelope {
        /// Index into `CallKind::ALL`.
        kind: u8,
        /// The body: `{"model": .., "item": ..}` usually.
        body: Value,
        /// Usage: prompt, completion, total.
        usage: Option<(u64, u64, u64)>,
        /// Stored at, ms before now (saturating; `u64::MAX`: the epoch).
        age_ms: u64,
        /// Expires after, ms from now (`None`: never).
        expires_in_ms: Option<i64>,
        /// Upstream time.
        upstream_ms: Option<u64>,
        /// Byte edits of the encoded envelope.
        edits: Vec<Mutation>,
    },
    /// Arbitrary bytes.
    Raw(Blob),
}

/// What the upstream answers to one call.
#[allow(
    clippy::large_enum_variant,
    reason = "a generated test input, a few per case"
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Upstream {
    /// The call fails.
    Fail,
    /// These bytes.
    Body(Blob),
    /// An embeddings response shaped from the request.
    Shaped {
        /// Items more (or fewer) than asked for.
        extra_items: i8,
        /// Per item: its `index` (`None`: absent), and whether it is broken (no embedding, not
        /// an object).
        items: Vec<(Option<Value>, u8)>,
        /// The `usage` member.
        usage: Option<Value>,
        /// The `model` member.
        model: Option<Value>,
        /// The embedding values.
        embedding: Value,
    },
}

/// One case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The inputs.
    pub inputs: Vec<Value>,
    /// Send the first input alone, not as a list.
    pub scalar: bool,
    /// Other request members.
    pub extra: Map<String, Value>,
    /// The `cache` directives (`None`: none; a value that does not parse: none).
    pub cache: Option<Value>,
    /// Entries stored before the first call: (input index, entry).
    pub stored: Vec<(u32, Stored)>,
    /// One answer per call (1 to 3 calls of the same request).
    pub upstream: Vec<Upstream>,
}

fn input_value() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => "[a-z ]{0,24}".prop_map(Value::String),
        2 => strategies::hostile_string().prop_map(Value::String),
        1 => vec(0u32..100_000, 0..6).prop_map(|t| json!(t)),
        1 => strategies::json(),
    ]
    .boxed()
}

fn stored_entry() -> BoxedStrategy<Stored> {
    let body = prop_oneof![
        4 => (strategies::json_leaf(), strategies::json_with_keys(&["embedding", "object", "index"]), vec(strategies::json_number(), 0..4))
            .prop_map(|(model, item, emb)| {
                let mut item = match item {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                item.insert("embedding".to_owned(), json!(emb));
                json!({"model": model, "item": item})
            }),
        1 => strategies::json_with_keys(&["model", "item", "embedding"]),
    ];
    let big = || prop_oneof![3 => 0u64..1000, 1 => Just(u64::MAX), 1 => any::<u64>()];
    prop_oneof![
        5 => (
            prop_oneof![4 => Just(2u8), 1 => any::<u8>()],
            body,
            proptest::option::of((big(), big(), big())),
            prop_oneof![3 => 0u64..10_000, 1 => any::<u64>()],
            proptest::option::of(prop_oneof![-10_000i64..1_000_000, any::<i64>()]),
            proptest::option::of(big()),
            prop_oneof![4 => Just(Vec::new()), 1 => strategies::mutations(4)],
        )
            .prop_map(|(kind, body, usage, age_ms, expires_in_ms, upstream_ms, edits)| Stored::Envelope {
                kind, body, usage, age_ms, expires_in_ms, upstream_ms, edits,
            }),
        1 => strategies::bytes().prop_map(|b| Stored::Raw(Blob::new(b))),
    ]
    .boxed()
}

fn upstream() -> BoxedStrategy<Upstream> {
    let usage = prop_oneof![
        3 => (0u64..10_000, 0u64..10_000).prop_map(|(p, t)| json!({"prompt_tokens": p, "total_tokens": t})),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(p, c)| json!({"prompt_tokens": p, "completion_tokens": c})),
        1 => strategies::json_with_keys(&["prompt_tokens", "total_tokens", "completion_tokens", "input_tokens"]),
    ];
    prop_oneof![
        1 => Just(Upstream::Fail),
        1 => strategies::bytes().prop_map(|b| Upstream::Body(Blob::new(b))),
        1 => strategies::json_with_keys(&["data", "embedding", "index", "usage", "model", "object"])
            .prop_map(|v| Upstream::Body(Blob::Text(v.to_string()))),
        6 => (
            prop_oneof![6 => Just(0i8), 1 => -2i8..3],
            vec(
                (
                    prop_oneof![
                        3 => Just(None),
                        1 => (0u64..8).prop_map(|i| Some(json!(i))),
                        1 => strategies::json_leaf().prop_map(Some),
                    ],
                    prop_oneof![8 => Just(0u8), 1 => 1u8..3],
                ),
                0..8,
            ),
            proptest::option::weighted(0.8, usage),
            proptest::option::of(strategies::json_leaf()),
            prop_oneof![
                4 => vec(-1.0f64..1.0, 0..4).prop_map(|v| json!(v)),
                1 => strategies::json(),
            ],
        )
            .prop_map(|(extra_items, items, usage, model, embedding)| Upstream::Shaped {
                extra_items,
                items,
                usage,
                model,
                embedding,
            }),
    ]
    .boxed()
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|r| {
        let mut r = r.borrow_mut();
        let rt = r.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a tokio runtime")
        });
        rt.block_on(f)
    })
}

/// The upstream body for one call, given the request it received.
fn answer(up: &Upstream, sent: &Value, salt: usize) -> Option<Bytes> {
    match up {
        Upstream::Fail => None,
        Upstream::Body(b) => Some(Bytes::copy_from_slice(b.bytes())),
        Upstream::Shaped {
            extra_items,
            items,
            usage,
            model,
            embedding,
        } => {
            let n = match sent.get("input") {
                Some(Value::Array(a)) if !a.is_empty() && !a.iter().all(Value::is_number) => {
                    a.len()
                }
                _ => 1,
            };
            let n = (n as i64 + i64::from(*extra_items)).max(0) as usize;
            // An upstream answer is at most ~16 MB: a large generated embedding repeated for
            // thousands of inputs would otherwise exhaust the harness's memory, not the cache's.
            let small = json!(0.5);
            let embedding = if n.saturating_mul(embedding.to_string().len()) > 16 << 20 {
                &small
            } else {
                embedding
            };
            let data: Vec<Value> = (0..n)
                .map(|i| {
                    let (index, broken) = items.get(i).cloned().unwrap_or((None, 0));
                    if broken == 2 {
                        return json!("not an object");
                    }
                    // Each item's embedding is unique, so a mix-up is visible.
                    let mut o = json!({"object": "embedding", "embedding": [embedding, i, salt]});
                    if broken == 1 {
                        o = json!({"object": "embedding"});
                    }
                    if let Some(ix) = index {
                        o["index"] = ix;
                    }
                    o
                })
                .collect();
            let mut body = json!({"object": "list", "data": data});
            if let Some(u) = usage {
                body["usage"] = u.clone();
            }
            if let Some(m) = model {
                body["model"] = m.clone();
            }
            Some(Bytes::from(body.to_string()))
        }
    }
}

fn encode_stored(s: &Stored) -> Bytes {
    match s {
        Stored::Raw(b) => Bytes::copy_from_slice(b.bytes()),
        Stored::Envelope {
            kind,
            body,
            usage,
            age_ms,
            expires_in_ms,
            upstream_ms,
            edits,
        } => {
            let now = cache_core::envelope::now_ms();
            let mut e = Entry::new(
                CallKind::ALL[*kind as usize % CallKind::ALL.len()],
                Bytes::from(body.to_string()),
                usage.map(|(p, c, t)| Usage {
                    prompt_tokens: p,
                    completion_tokens: c,
                    total_tokens: t,
                }),
                None,
            );
            e.stored_at_ms = now.saturating_sub(*age_ms);
            e.expires_at_ms = expires_in_ms.map(|d| now.saturating_add_signed(d));
            e.upstream_ms = *upstream_ms;
            let mut raw = e.encode().to_vec();
            strategies::apply(&mut raw, edits);
            Bytes::from(raw)
        }
    }
}

/// The target.
#[derive(Debug)]
pub struct Embeddings;

impl crate::Target for Embeddings {
    const NAME: &'static str = "embeddings";
    const ABOUT: &'static str = "the per-input embeddings cache and its merge";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        (
            vec(input_value(), 0..6),
            proptest::bool::weighted(0.15),
            vec(
                (
                    strategies::key_from(&["model", "dimensions", "encoding_format", "user", "stream", "metadata"]),
                    strategies::json_leaf(),
                ),
                0..3,
            ),
            proptest::option::weighted(
                0.3,
                prop_oneof![
                    2 => vec(
                        (
                            proptest::sample::select(&["no-cache", "no-store", "ttl", "s-maxage", "namespace", "only-if-cached"][..]),
                            prop_oneof![
                                Just(json!(true)),
                                Just(json!(false)),
                                Just(json!(0)),
                                Just(json!(60)),
                                Just(json!("ns")),
                            ],
                        ),
                        0..3,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
                    1 => strategies::json(),
                ],
            ),
            vec((any::<u32>(), stored_entry()), 0..4),
            vec(upstream(), 1..4),
        )
            .prop_map(|(inputs, scalar, extra, cache, stored, upstream)| Input {
                inputs,
                scalar,
                extra: extra.into_iter().collect(),
                cache,
                stored,
                upstream,
            })
            .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        block_on(run(input))
    }
}

async fn run(input: &Input) -> Result<(), String> {
    let cache = Cache::in_memory();
    let mut request = input.extra.clone();
    request.insert("model".to_owned(), json!("text-embedding-3-small"));
    let input_member = if input.scalar {
        input.inputs.first().cloned().unwrap_or(Value::Null)
    } else {
        Value::Array(input.inputs.clone())
    };
    request.insert("input".to_owned(), input_member);
    let request = Value::Object(request);
    let cc = CacheControl::from_json(input.cache.as_ref()).unwrap_or_default();
    let ctx = RequestContext::default();
    let engine = cache.engine().ok_or("an in-memory cache has an engine")?;
    let namespace = engine.resolve_namespace(&cc);
    let kctx = KeyContext {
        namespace: namespace.as_deref(),
        ..KeyContext::default()
    };
    let items = engine
        .keys()
        .embedding_item_keys(&request, &kctx)
        .map_err(|e| format!("no item keys for an object: {e}"))?;
    let n = items.len();
    let stored: Vec<(String, Bytes)> = input
        .stored
        .iter()
        .filter(|_| n > 0)
        .map(|(i, s)| {
            (
                items[*i as usize % n].0.as_str().to_owned(),
                encode_stored(s),
            )
        })
        .collect();
    // The answer holds one item per input: N inputs that all hit one large stored item make an
    // answer N times its size, which is what the client asked for, not an amplification. Such
    // cases (an answer over ~16 MB) are not run, like the upstream answers `answer` caps.
    let largest = stored.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    if n.saturating_mul(largest) > 16 << 20 {
        return Ok(());
    }
    for (key, bytes) in stored {
        let _ = engine.backend().set(&key, bytes, None).await;
    }
    let mut distinct = items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>();
    distinct.sort_unstable();
    distinct.dedup();
    let distinct = distinct.len() == n;

    // What the last stored miss returned, per input: the round trip's expectation.
    let mut expect: Option<Vec<Value>> = None;
    for (call, up) in input.upstream.iter().enumerate() {
        let sent: RefCell<Option<Value>> = RefCell::new(None);
        let body: RefCell<Option<Bytes>> = RefCell::new(None);
        let this_cc = if expect.is_some() {
            CacheControl::none()
        } else {
            cc.clone()
        };
        let result = cache
            .embeddings(&request, &this_cc, &ctx, |req| {
                let b = answer(up, &req, call);
                *sent.borrow_mut() = Some(req);
                *body.borrow_mut() = b.clone();
                async move { b.ok_or(()) }
            })
            .await;
        let _ = cache.flush(Duration::from_secs(5)).await;
        let sent = sent.into_inner();
        let body = body.into_inner();
        if expect.is_some() && sent.is_some() {
            return Err("a stored miss was not cached: upstream was called again".to_owned());
        }
        let outcome = match result {
            Ok(o) => o,
            Err(CallError::Upstream(())) => {
                if !matches!(up, Upstream::Fail) || sent.is_none() {
                    return Err("an upstream error without a failing upstream".to_owned());
                }
                continue;
            }
            Err(CallError::NotCached) => {
                if !this_cc.is_only_if_cached() {
                    return Err("NotCached without only-if-cached".to_owned());
                }
                if expect.is_some() {
                    return Err("a stored miss was not cached".to_owned());
                }
                continue;
            }
            Err(CallError::Invalid(e)) => {
                return Err(format!("an object request was invalid: {e}"));
            }
        };
        if outcome.cached + outcome.fetched > n.max(1) {
            return Err(format!(
                "{} cached + {} fetched for {n} inputs",
                outcome.cached, outcome.fetched
            ));
        }
        match outcome.status {
            CacheStatus::Hit { .. } | CacheStatus::Partial { .. } => {
                let v: Value = serde_json::from_slice(&outcome.body)
                    .map_err(|e| format!("a merged body is not JSON: {e}"))?;
                let data = v["data"].as_array().ok_or("a merged body without data")?;
                if data.len() != n {
                    return Err(format!("{} items merged for {n} inputs", data.len()));
                }
                for (i, d) in data.iter().enumerate() {
                    if d["index"] != json!(i) || d.get("embedding").is_none() {
                        return Err(format!("merged item {i} is {}", strategies::short(d)));
                    }
                }
                if matches!(outcome.status, CacheStatus::Hit { .. }) && sent.is_some() {
                    return Err("a hit called upstream".to_owned());
                }
                if let Some(want) = &expect {
                    for (i, d) in data.iter().enumerate() {
                        if !strategies::same_json(&d["embedding"], &want[i]) {
                            return Err(format!(
                                "input {i} came back with another embedding: {} instead of {}",
                                strategies::short(&d["embedding"]),
                                strategies::short(&want[i])
                            ));
                        }
                    }
                }
                expect = None;
            }
            CacheStatus::Miss { store, .. } => {
                if outcome.cached == 0 && Some(&outcome.body) != body.as_ref() {
                    return Err("a miss did not return the upstream body verbatim".to_owned());
                }
                if expect.is_some() {
                    return Err("a stored miss was not cached".to_owned());
                }
                let clean =
                    input.stored.is_empty() && distinct && n > 0 && this_cc == CacheControl::none();
                if clean
                    && matches!(
                        store,
                        cache_core::StoreOutcome::Stored | cache_core::StoreOutcome::Pending
                    )
                    && let Some(b) = &body
                    && let Ok(v) = serde_json::from_slice::<Value>(b)
                    && let Some(data) = v["data"].as_array()
                {
                    let mut sorted: Vec<(u64, &Value)> = data
                        .iter()
                        .enumerate()
                        .map(|(pos, d)| {
                            (d["index"].as_u64().unwrap_or(pos as u64), &d["embedding"])
                        })
                        .collect();
                    sorted.sort_by_key(|(i, _)| *i);
                    expect = Some(sorted.into_iter().map(|(_, e)| e.clone()).collect());
                }
            }
            CacheStatus::Bypass { .. } => {
                if Some(&outcome.body) != body.as_ref() {
                    return Err("a bypass did not return the upstream body verbatim".to_owned());
                }
            }
            other => return Err(format!("unexpected status {other:?}")),
        }
    }
    Ok(())
}
