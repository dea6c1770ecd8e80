//! [`MemorySemanticBackend`]: an in-process vector index (no server).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::RwLock;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::semantic::{SemanticBackend, SemanticMatch, SemanticRecord};
use cache_core::{CacheError, Health, Result};

use crate::embed::{dot, normalize};

const NAME: &str = "memory-semantic";

/// Bounds of the in-process index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemorySemanticConfig {
    /// Most records kept; the oldest are evicted first.
    pub max_entries: usize,
}

impl Default for MemorySemanticConfig {
    fn default() -> Self {
        MemorySemanticConfig {
            max_entries: 100_000,
        }
    }
}

impl MemorySemanticConfig {
    /// Sets the bound (at least 1).
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }
}

struct Meta {
    seq: u64,
    prompt_id: [u8; 32],
    prompt: String,
    value: Bytes,
    namespace: Option<String>,
    expires_at: Option<Instant>,
}

#[derive(Default)]
struct Scope {
    /// Unit vectors, row after row.
    vectors: Vec<f32>,
    meta: Vec<Meta>,
    by_prompt: HashMap<[u8; 32], usize>,
}

impl Scope {
    fn remove_at(&mut self, i: usize, dims: usize) -> Meta {
        let last = self.meta.len() - 1;
        if i != last {
            let (head, tail) = self.vectors.split_at_mut(last * dims);
            head[i * dims..(i + 1) * dims].copy_from_slice(&tail[..dims]);
        }
        self.vectors.truncate(last * dims);
        let m = self.meta.swap_remove(i);
        self.by_prompt.remove(&m.prompt_id);
        if i != last {
            self.by_prompt.insert(self.meta[i].prompt_id, i);
        }
        m
    }
}

#[derive(Default)]
struct Inner {
    dims: Option<usize>,
    scopes: HashMap<String, Scope>,
    /// Insertion order, for eviction: seq → (scope, prompt id).
    order: BTreeMap<u64, (String, [u8; 32])>,
    seq: u64,
    len: usize,
    stores_since_sweep: usize,
}

impl Inner {
    fn remove(&mut self, scope: &str, prompt_id: &[u8; 32]) -> bool {
        let dims = self.dims.unwrap_or(0);
        let Some(s) = self.scopes.get_mut(scope) else {
            return false;
        };
        let Some(&i) = s.by_prompt.get(prompt_id) else {
            return false;
        };
        let m = s.remove_at(i, dims);
        self.order.remove(&m.seq);
        if s.meta.is_empty() {
            self.scopes.remove(scope);
        }
        self.len -= 1;
        true
    }

    fn sweep_expired(&mut self, now: Instant) -> usize {
        let dims = self.dims.unwrap_or(0);
        let mut removed = 0;
        let mut empty = Vec::new();
        for (name, s) in self.scopes.iter_mut() {
            let mut i = 0;
            while i < s.meta.len() {
                if s.meta[i].expires_at.is_some_and(|e| e <= now) {
                    let m = s.remove_at(i, dims);
                    self.order.remove(&m.seq);
                    removed += 1;
                } else {
                    i += 1;
                }
            }
            if s.meta.is_empty() {
                empty.push(name.clone());
            }
        }
        for name in empty {
            self.scopes.remove(&name);
        }
        self.len -= removed;
        removed
    }
}

/// An in-process semantic index: exact brute-force cosine search over the records of one scope
/// (records are partitioned by scope, so the scope is a pre-filter by construction), bounded by
/// [`MemorySemanticConfig::max_entries`] (oldest evicted first), TTL-aware (expired records are
/// invisible at once and swept periodically).
///
/// Search cost is linear in the size of the *scope* searched (64-dimension vectors: about
/// 25 ns per record on one core); see docs/benchmarks.md. State is lost on restart.
pub struct MemorySemanticBackend {
    inner: RwLock<Inner>,
    config: MemorySemanticConfig,
}

impl fmt::Debug for MemorySemanticBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (len, dims) = self
            .inner
            .read()
            .map(|i| (i.len, i.dims))
            .unwrap_or((0, None));
        f.debug_struct("MemorySemanticBackend")
            .field("entries", &len)
            .field("dims", &dims)
            .field("config", &self.config)
            .finish()
    }
}

impl Default for MemorySemanticBackend {
    fn default() -> Self {
        Self::new(MemorySemanticConfig::default())
    }
}

fn poisoned<T>(_: T) -> CacheError {
    CacheError::backend(NAME, "lock", false, "index lock poisoned")
}

fn dims_error(op: &str, got: usize, want: usize) -> CacheError {
    CacheError::Config(format!(
        "{NAME}: {op}: vector of {got} dimensions, the index holds {want}-dimension vectors \
         (the embedding model changed? clear the semantic cache or use another index)"
    ))
}

impl MemorySemanticBackend {
    /// An empty index.
    pub fn new(config: MemorySemanticConfig) -> Self {
        MemorySemanticBackend {
            inner: RwLock::new(Inner::default()),
            config,
        }
    }

    /// An empty index whose dimension is fixed up front (else the first record fixes it).
    pub fn with_dimensions(config: MemorySemanticConfig, dims: usize) -> Self {
        let b = Self::new(config);
        if let Ok(mut i) = b.inner.write() {
            i.dims = Some(dims);
        }
        b
    }

    /// Records held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.len).unwrap_or(0)
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SemanticBackend for MemorySemanticBackend {
    fn name(&self) -> &str {
        NAME
    }

    async fn search(
        &self,
        scope: &str,
        vector: &[f32],
        min_similarity: f32,
        limit: usize,
    ) -> Result<Vec<SemanticMatch>> {
        let mut q = vector.to_vec();
        if !normalize(&mut q) {
            return Ok(Vec::new());
        }
        let inner = self.inner.read().map_err(poisoned)?;
        let dims = match inner.dims {
            None => return Ok(Vec::new()),
            Some(d) if d != q.len() => return Err(dims_error("search", q.len(), d)),
            Some(d) => d,
        };
        let Some(s) = inner.scopes.get(scope) else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        // Best `limit` by similarity: a small sorted buffer.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(limit + 1);
        for (i, row) in s.vectors.chunks_exact(dims).enumerate() {
            let sim = dot(&q, row);
            if sim < min_similarity || best.len() == limit && best[limit - 1].0 >= sim {
                continue;
            }
            if s.meta[i].expires_at.is_some_and(|e| e <= now) {
                continue;
            }
            let pos = best.partition_point(|(b, _)| *b >= sim);
            best.insert(pos, (sim, i));
            best.truncate(limit);
        }
        Ok(best
            .into_iter()
            .map(|(sim, i)| {
                let m = &s.meta[i];
                SemanticMatch::new(sim.clamp(0.0, 1.0), m.prompt.clone(), m.value.clone())
            })
            .collect())
    }

    async fn store(&self, record: SemanticRecord) -> Result<()> {
        let mut v = record.vector;
        if !normalize(&mut v) {
            return Err(CacheError::backend(
                NAME,
                "store",
                false,
                "zero or non-finite vector",
            ));
        }
        if record.ttl.is_some_and(|t| t.is_zero()) {
            return Ok(());
        }
        let now = Instant::now();
        let expires_at = record.ttl.and_then(|t| now.checked_add(t));
        let prompt_id = *blake3::hash(record.prompt.as_bytes()).as_bytes();
        let mut inner = self.inner.write().map_err(poisoned)?;
        let dims = *inner.dims.get_or_insert(v.len());
        if dims != v.len() {
            return Err(dims_error("store", v.len(), dims));
        }
        inner.remove(&record.scope, &prompt_id);
        inner.stores_since_sweep += 1;
        if inner.stores_since_sweep >= (self.config.max_entries / 8).max(64) {
            inner.stores_since_sweep = 0;
            inner.sweep_expired(now);
        }
        while inner.len >= self.config.max_entries {
            let Some((_, (scope, id))) = inner.order.pop_first() else {
                break;
            };
            // `remove` looks the seq up again; it is already gone from `order`.
            inner.remove(&scope, &id);
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.order.insert(seq, (record.scope.clone(), prompt_id));
        let s = inner.scopes.entry(record.scope).or_default();
        s.vectors.extend_from_slice(&v);
        s.by_prompt.insert(prompt_id, s.meta.len());
        s.meta.push(Meta {
            seq,
            prompt_id,
            prompt: record.prompt,
            value: record.value,
            namespace: record.namespace,
            expires_at,
        });
        inner.len += 1;
        Ok(())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let mut inner = self.inner.write().map_err(poisoned)?;
        let Some(ns) = namespace else {
            let n = inner.len as u64;
            let dims = inner.dims;
            *inner = Inner {
                dims,
                ..Inner::default()
            };
            return Ok(n);
        };
        let nested = format!("{ns}:");
        let mut victims = Vec::new();
        for (scope, s) in &inner.scopes {
            for m in &s.meta {
                if m.namespace
                    .as_deref()
                    .is_some_and(|n| n == ns || n.starts_with(&nested))
                {
                    victims.push((scope.clone(), m.prompt_id));
                }
            }
        }
        let mut n = 0;
        for (scope, id) in victims {
            n += u64::from(inner.remove(&scope, &id));
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<Health> {
        let start = Instant::now();
        let inner = self.inner.read().map_err(poisoned)?;
        Ok(Health::new(NAME, start.elapsed())
            .with_detail("entries", inner.len.to_string())
            .with_detail("scopes", inner.scopes.len().to_string())
            .with_detail(
                "dimensions",
                inner
                    .dims
                    .map_or_else(|| "unset".to_owned(), |d| d.to_string()),
            )
            .with_detail("max_entries", self.config.max_entries.to_string()))
    }
}
