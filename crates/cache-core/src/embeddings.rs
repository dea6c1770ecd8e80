//! Per-input embedding caching with partial hits (reference §5.3, without LiteLLM's F10 clash).
//!
//! Each input of an embeddings request is its own entry, keyed as the request with `input`
//! replaced by that one element. A request whose inputs are partly cached sends upstream only the
//! missing inputs; the answer is merged back in the original order, `index` renumbered, usage
//! summed (cached per-item prompt tokens plus the fresh usage).
//!
//! An item entry's body is `{"model": M, "item": {...the data element without index...}}`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::cache::{
    Cache, CacheEngine, CacheStatus, CallError, MissReason, RequestContext, StoreOutcome,
};
use crate::directives::CacheControl;
use crate::envelope::{Entry, Usage, now_ms};
use crate::key::{CacheKey, CallKind};

/// The result of a cached embeddings call.
#[derive(Debug, Clone)]
pub struct EmbeddingOutcome {
    /// The response body (the upstream body verbatim when nothing was cached).
    pub body: Bytes,
    /// Inputs served from the cache.
    pub cached: usize,
    /// Inputs sent upstream.
    pub fetched: usize,
    /// What the cache did.
    pub status: CacheStatus,
    /// Key of the whole request (for the `x-litellm-cache-key` header).
    pub key: Option<CacheKey>,
    /// What the inputs served from the cache saved: their tokens and their share of the upstream
    /// time of the calls that produced them.
    pub saved: Usage,
    /// Milliseconds of upstream time the cached inputs saved.
    pub saved_upstream_ms: u64,
}

#[derive(Clone)]
struct CachedItem {
    model: Option<String>,
    upstream_ms: u64,
    item: Map<String, Value>,
    usage: Usage,
    age: Duration,
}

fn decode_item(raw: &Bytes, max_age: Option<Duration>, now: u64) -> Option<CachedItem> {
    let entry = Entry::decode(raw).ok()?;
    if entry.kind != CallKind::Embedding || entry.is_expired(now) {
        return None;
    }
    let age = entry.age(now);
    if max_age.is_some_and(|m| m.is_zero() || age > m) {
        return None;
    }
    let v: Value = serde_json::from_slice(&entry.body).ok()?;
    let item = v.get("item")?.as_object()?.clone();
    if !item.contains_key("embedding") {
        return None;
    }
    Some(CachedItem {
        upstream_ms: entry.upstream_ms.unwrap_or(0),
        model: v.get("model").and_then(Value::as_str).map(str::to_owned),
        item,
        usage: entry.usage.unwrap_or_default(),
        age,
    })
}

impl Cache {
    /// An embeddings call with per-input caching and partial hits.
    ///
    /// `fetch` receives the request to send upstream (the original, or a copy whose `input`
    /// holds only the missing inputs) and returns the upstream body.
    ///
    /// # Errors
    /// [`CallError::Upstream`] from `fetch`, [`CallError::NotCached`] for an `only-if-cached`
    /// request with a missing input, [`CallError::Invalid`] for a request that is not an object.
    pub async fn embeddings<F, Fut, E>(
        &self,
        request: &Value,
        cc: &CacheControl,
        ctx: &RequestContext<'_>,
        fetch: F,
    ) -> Result<EmbeddingOutcome, CallError<E>>
    where
        F: FnOnce(Value) -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let prepared = self
            .prepare(CallKind::Embedding, request, cc, ctx)
            .map_err(CallError::Invalid)?;
        let whole_key = prepared.key().cloned();
        let engine = match (prepared.engine(), prepared.bypass_reason()) {
            (Some(engine), None) => engine.clone(),
            (_, reason) => {
                let reason = reason.unwrap_or("disabled");
                self.stats().bypasses.fetch_add(1, Relaxed);
                if prepared.only_if_cached() {
                    return Err(CallError::NotCached);
                }
                let body = fetch(request.clone()).await.map_err(CallError::Upstream)?;
                return Ok(EmbeddingOutcome {
                    body,
                    cached: 0,
                    fetched: 1,
                    status: CacheStatus::Bypass { reason },
                    key: whole_key,
                    saved: Usage::default(),
                    saved_upstream_ms: 0,
                });
            }
        };
        let namespace = engine.resolve_namespace(cc);
        let items = engine
            .keys()
            .embedding_item_keys(request, &ctx.key_context(namespace.as_deref()))
            .map_err(CallError::Invalid)?;
        let scalar_input = !matches!(request.get("input"), Some(Value::Array(a)) if !a.iter().all(Value::is_number) || a.is_empty());

        let start = Instant::now();
        let mut found: Vec<Option<CachedItem>> = (0..items.len()).map(|_| None).collect();
        if prepared.reads() {
            self.lookup_items(&engine, &items, &mut found, cc.max_age)
                .await;
        }
        let cached = found.iter().filter(|f| f.is_some()).count();
        let saved = found
            .iter()
            .flatten()
            .fold(Usage::default(), |acc, f| acc.saturating_add(f.usage));
        let saved_upstream_ms: u64 = found
            .iter()
            .flatten()
            .fold(0u64, |acc, f| acc.saturating_add(f.upstream_ms));
        let stats = self.stats();
        let lookup_time = start.elapsed();
        stats.lookup_latency.observe(lookup_time);

        if cached == items.len() && !items.is_empty() {
            stats.hits_backend.fetch_add(1, Relaxed);
            let age = found
                .iter()
                .flatten()
                .map(|c| c.age)
                .max()
                .unwrap_or_default();
            let found: Vec<CachedItem> = found.into_iter().flatten().collect();
            for f in &found {
                stats
                    .prompt_tokens_saved
                    .fetch_add(f.usage.prompt_tokens, Relaxed);
            }
            let body = merge(request, found.into_iter().map(Slot::Cached).collect(), None);
            stats.bytes_served.fetch_add(body.len() as u64, Relaxed);
            return Ok(EmbeddingOutcome {
                body,
                cached,
                fetched: 0,
                status: CacheStatus::Hit {
                    tier: crate::cache::Tier::Backend,
                    age,
                    similarity: None,
                },
                key: whole_key,
                saved,
                saved_upstream_ms,
            });
        }
        if prepared.only_if_cached() {
            return Err(CallError::NotCached);
        }
        stats.misses.fetch_add(1, Relaxed);

        let missing: Vec<usize> = (0..items.len()).filter(|i| found[*i].is_none()).collect();
        let upstream_request = if cached == 0 {
            request.clone()
        } else {
            let mut sub = request.clone();
            sub["input"] = if scalar_input {
                items[0].1.clone()
            } else {
                Value::Array(missing.iter().map(|i| items[*i].1.clone()).collect())
            };
            sub
        };
        let started = Instant::now();
        let body = fetch(upstream_request).await.map_err(CallError::Upstream)?;
        let upstream_time = started.elapsed();

        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let fresh = parsed.as_ref().and_then(|p| fresh_items(p, missing.len()));
        let Some(fresh) = fresh else {
            tracing::warn!(
                expected = missing.len(),
                "embeddings response has an unexpected shape; returned as is, not cached"
            );
            return Ok(EmbeddingOutcome {
                body,
                cached,
                fetched: missing.len(),
                status: CacheStatus::Miss {
                    reason: MissReason::NotFound,
                    store: StoreOutcome::NotRequested,
                },
                key: whole_key,
                saved,
                saved_upstream_ms,
            });
        };
        let parsed = parsed.expect("fresh items come from a parsed body");
        let model = parsed
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let fresh_usage = Usage::from_response(&parsed).unwrap_or_default();

        let store = if !prepared.writes() {
            StoreOutcome::NotRequested
        } else {
            let n = fresh.len() as u64;
            let per = fresh_usage.prompt_tokens.checked_div(n).unwrap_or(0);
            let rem = fresh_usage.prompt_tokens.checked_rem(n).unwrap_or(0);
            let ttl = prepared.ttl();
            // Identical inputs share a key: it is encoded and written once.
            let mut seen = HashSet::with_capacity(fresh.len());
            let entries: Vec<(String, Entry)> = fresh
                .iter()
                .enumerate()
                .filter(|(j, _)| seen.insert(items[missing[*j]].0.as_str()))
                .map(|(j, item)| {
                    let tokens = per + u64::from((j as u64) < rem);
                    let body = serde_json::to_vec(&json!({"model": model, "item": item}))
                        .expect("JSON values serialize");
                    let usage = Usage {
                        prompt_tokens: tokens,
                        completion_tokens: 0,
                        total_tokens: tokens,
                    };
                    // Each input's share of the call: what a hit on it saves.
                    let share = upstream_time / fresh.len().max(1) as u32;
                    let entry =
                        Entry::new(CallKind::Embedding, Bytes::from(body), Some(usage), ttl)
                            .with_upstream_time(Some(share));
                    (items[missing[j]].0.as_str().to_owned(), entry)
                })
                .collect();
            let budget = engine.settings().read_timeout.saturating_sub(lookup_time);
            self.write_many(&engine, entries, ttl, budget, prepared.refreshes())
                .await
        };

        if cached == 0 {
            return Ok(EmbeddingOutcome {
                body,
                cached: 0,
                fetched: missing.len(),
                status: CacheStatus::Miss {
                    reason: MissReason::NotFound,
                    store,
                },
                key: whole_key,
                saved,
                saved_upstream_ms,
            });
        }
        for f in found.iter().flatten() {
            stats
                .prompt_tokens_saved
                .fetch_add(f.usage.prompt_tokens, Relaxed);
        }
        let mut fresh = fresh.into_iter();
        let slots = found
            .into_iter()
            .map(|f| match f {
                Some(c) => Slot::Cached(c),
                None => Slot::Fresh(fresh.next().expect("one fresh item per missing input")),
            })
            .collect();
        let body = merge(request, slots, Some((&parsed, fresh_usage)));
        Ok(EmbeddingOutcome {
            body,
            cached,
            fetched: missing.len(),
            status: CacheStatus::Partial {
                cached,
                total: items.len(),
                store,
            },
            key: whole_key,
            saved,
            saved_upstream_ms,
        })
    }

    async fn lookup_items(
        &self,
        engine: &Arc<CacheEngine>,
        items: &[(CacheKey, Value)],
        found: &mut [Option<CachedItem>],
        max_age: Option<Duration>,
    ) {
        let now = now_ms();
        // Identical inputs share a key: each key is looked up and decoded once.
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        let mut copies: Vec<(usize, usize)> = Vec::new();
        let mut remote: Vec<usize> = Vec::new();
        for (i, (key, _)) in items.iter().enumerate() {
            if let Some(&first) = first_of.get(key.as_str()) {
                copies.push((i, first));
                continue;
            }
            first_of.insert(key.as_str(), i);
            let hit = engine
                .l1_active()
                .and_then(|l1| l1.get_sync(key.as_str()))
                .and_then(|raw| decode_item(&raw, max_age, now));
            match hit {
                Some(h) => found[i] = Some(h),
                None => remote.push(i),
            }
        }
        let keys: Vec<String> = remote
            .iter()
            .map(|i| items[*i].0.as_str().to_owned())
            .collect();
        let res = if keys.is_empty() {
            None
        } else {
            engine.guarded_get_many(&keys, self.stats()).await
        };
        if let Some(values) = res {
            for (slot, raw) in remote.iter().zip(values) {
                if let Some(raw) = raw {
                    match decode_item(&raw, max_age, now) {
                        Some(h) => found[*slot] = Some(h),
                        None => {
                            if Entry::decode(&raw).is_err() {
                                self.stats().corrupt.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            }
        }
        for (i, first) in copies {
            found[i] = found[first].clone();
        }
    }
}

enum Slot {
    Cached(CachedItem),
    Fresh(Map<String, Value>),
}

/// The fresh `data` items, ordered by their `index`, if there are exactly `expected` of them.
fn fresh_items(parsed: &Value, expected: usize) -> Option<Vec<Map<String, Value>>> {
    let data = parsed.get("data")?.as_array()?;
    if data.len() != expected {
        return None;
    }
    let mut items: Vec<(u64, Map<String, Value>)> = data
        .iter()
        .enumerate()
        .map(|(pos, d)| {
            let obj = d.as_object()?;
            obj.get("embedding")?;
            let idx = obj
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let mut obj = obj.clone();
            obj.remove("index");
            Some((idx, obj))
        })
        .collect::<Option<_>>()?;
    items.sort_by_key(|(i, _)| *i);
    Some(items.into_iter().map(|(_, o)| o).collect())
}

fn merge(request: &Value, slots: Vec<Slot>, fresh: Option<(&Value, Usage)>) -> Bytes {
    let mut sum = Usage::default();
    let mut model: Option<String> = None;
    let mut data = Vec::with_capacity(slots.len());
    for (index, slot) in slots.into_iter().enumerate() {
        let mut item = match slot {
            Slot::Cached(c) => {
                sum = sum.saturating_add(c.usage);
                if model.is_none() {
                    model = c.model;
                }
                c.item
            }
            Slot::Fresh(item) => item,
        };
        item.insert("index".to_owned(), json!(index));
        item.entry("object")
            .or_insert_with(|| Value::String("embedding".to_owned()));
        data.push(Value::Object(item));
    }
    if let Some((parsed, usage)) = fresh {
        sum = sum.saturating_add(usage);
        if let Some(m) = parsed.get("model").and_then(Value::as_str) {
            model = Some(m.to_owned());
        }
    }
    let model = model
        .or_else(|| {
            request
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    // Built by moving `data` in (`json!` would serialize a deep copy of every item).
    let body = Value::Object(Map::from_iter([
        ("object".to_owned(), Value::String("list".to_owned())),
        ("data".to_owned(), Value::Array(data)),
        ("model".to_owned(), Value::String(model)),
        (
            "usage".to_owned(),
            json!({"prompt_tokens": sum.prompt_tokens, "total_tokens": sum.total_tokens}),
        ),
    ]));
    Bytes::from(serde_json::to_vec(&body).expect("JSON values serialize"))
}

impl CacheEngine {
    async fn guarded_get_many(
        &self,
        keys: &[String],
        stats: &crate::stats::Stats,
    ) -> Option<Vec<Option<Bytes>>> {
        match self
            .guarded(
                self.backend().get_many(keys),
                "get_many",
                self.settings().read_timeout,
                stats,
            )
            .await
        {
            Ok(v) if v.len() == keys.len() => Some(v),
            Ok(_) => {
                stats.record_error(self.backend().name(), "get_many", "backend");
                None
            }
            Err(_) => None,
        }
    }
}
