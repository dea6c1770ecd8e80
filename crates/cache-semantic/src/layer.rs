//! [`SemanticCache`]: the semantic layer the orchestration consults after an exact miss.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::semantic::{
    Embedder, SemanticBackend, SemanticHit, SemanticLayer, SemanticRecord, SemanticRequest,
    SemanticStats,
};
use cache_core::{CacheError, Health, KeyBuilder, KeyContext, Result};

use crate::embed::normalize;
use crate::guard::{Features, GuardConfig, GuardReason, Relation};
use crate::text::{EmbedMode, Extracted, extract};
use crate::verify::repeat_floor;

/// Version tag of the scope hash: bumped when what goes into the scope changes.
const SCOPE_TAG: &str = "llm-cache/semantic-scope/v1\n";

/// Policy of a [`SemanticCache`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SemanticConfig {
    /// Lowest cosine similarity, in [0, 1], that counts as a hit (`similarity_threshold`). A
    /// per-request `similarity_threshold` directive can only raise it.
    pub similarity_threshold: f32,
    /// Which text is embedded (`semantic_embed_all_messages`).
    pub embed_mode: EmbedMode,
    /// The near-miss guard (`semantic_guard`).
    pub guard: GuardConfig,
    /// Count and log would-be hits without serving them (`semantic_shadow_mode`).
    pub shadow_mode: bool,
    /// Nearest candidates fetched per lookup; the best one that passes the guard wins.
    pub candidates: usize,
    /// Longest text embedded, in characters (longer texts are cut; the guard sees all of it).
    pub max_text_chars: Option<usize>,
}

impl SemanticConfig {
    /// A policy with the given threshold and defaults otherwise (last user message, guard on,
    /// shadow mode off, 4 candidates).
    ///
    /// # Errors
    /// [`CacheError::Config`] for a threshold outside [0, 1].
    pub fn new(similarity_threshold: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&similarity_threshold) {
            return Err(CacheError::Config(format!(
                "similarity_threshold must be a cosine similarity between 0 and 1, got {similarity_threshold}"
            )));
        }
        Ok(SemanticConfig {
            similarity_threshold,
            embed_mode: EmbedMode::default(),
            guard: GuardConfig::default(),
            shadow_mode: false,
            candidates: 4,
            max_text_chars: None,
        })
    }

    /// Sets the embed mode.
    pub fn with_embed_mode(mut self, mode: EmbedMode) -> Self {
        self.embed_mode = mode;
        self
    }

    /// Sets the guard.
    pub fn with_guard(mut self, guard: GuardConfig) -> Self {
        self.guard = guard;
        self
    }

    /// Sets shadow mode.
    pub fn with_shadow_mode(mut self, on: bool) -> Self {
        self.shadow_mode = on;
        self
    }

    /// Sets the number of candidates (at least 1).
    pub fn with_candidates(mut self, n: usize) -> Self {
        self.candidates = n.max(1);
        self
    }

    /// Sets the longest embedded text.
    pub fn with_max_text_chars(mut self, n: Option<usize>) -> Self {
        self.max_text_chars = n;
        self
    }
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    no_text: AtomicU64,
    hits: AtomicU64,
    shadow_hits: AtomicU64,
    repeat_hits: AtomicU64,
    /// Similarity sum of shadow hits, in millionths.
    shadow_similarity_micros: AtomicU64,
    guard: [AtomicU64; GUARD_REASONS.len()],
    below_threshold: AtomicU64,
    stores: AtomicU64,
    embed_errors: AtomicU64,
}

const GUARD_REASONS: [GuardReason; 7] = [
    GuardReason::Numbers,
    GuardReason::Negation,
    GuardReason::Entities,
    GuardReason::WordSwap,
    GuardReason::Order,
    GuardReason::Scope,
    GuardReason::Contrast,
];

fn reason_index(r: GuardReason) -> usize {
    GUARD_REASONS.iter().position(|x| *x == r).unwrap_or(0)
}

/// The semantic layer: extracts the text to compare, embeds it, searches the backend **within
/// the request's exact scope**, applies the threshold and the guard, and serves (or, in shadow
/// mode, only counts) the best candidate.
///
/// * **Scope**: `blake3(version, embedding model, embed mode, standard key of the request with
///   the embedded text replaced by a placeholder)`. The standard key covers the call kind, the
///   model (group), every keyed parameter, the namespace and the tenant partition; the
///   placeholder request keeps the system prompt, earlier turns and non-text parts. Backends
///   filter by scope *before* ranking, so a hit across any of these is impossible.
/// * **Fail-open**: embedding or search errors are returned to the orchestration, which logs
///   them, counts them and serves a miss within `semantic_timeout`.
/// * Each text is embedded once for a lookup and its store (a small memo of recent vectors).
pub struct SemanticCache {
    embedder: Arc<dyn Embedder>,
    backend: Arc<dyn SemanticBackend>,
    config: SemanticConfig,
    default_keys: KeyBuilder,
    memo: moka::sync::Cache<[u8; 32], Arc<Vec<f32>>>,
    counters: Counters,
}

impl fmt::Debug for SemanticCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemanticCache")
            .field("embedder", &self.embedder)
            .field("backend", &self.backend)
            .field("config", &self.config)
            .finish()
    }
}

impl SemanticCache {
    /// A semantic layer over an embedder and a vector backend.
    pub fn new(
        embedder: Arc<dyn Embedder>,
        backend: Arc<dyn SemanticBackend>,
        config: SemanticConfig,
    ) -> Self {
        SemanticCache {
            embedder,
            backend,
            config,
            default_keys: KeyBuilder::default(),
            memo: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(300))
                .build(),
            counters: Counters::default(),
        }
    }

    /// The policy.
    pub fn config(&self) -> &SemanticConfig {
        &self.config
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The vector backend.
    pub fn backend(&self) -> &Arc<dyn SemanticBackend> {
        &self.backend
    }

    /// The exact scope of a request (hex), or `None` when it has no text to compare. Exposed
    /// for tests and debugging.
    ///
    /// # Errors
    /// [`CacheError::Config`] when the request is not a JSON object.
    pub fn scope_of(&self, req: &SemanticRequest<'_>) -> Result<Option<String>> {
        match extract(req.kind, req.request, self.config.embed_mode) {
            None => Ok(None),
            Some(e) => self.scope(req, &e).map(Some),
        }
    }

    fn scope(&self, req: &SemanticRequest<'_>, e: &Extracted) -> Result<String> {
        let keys = req.keys.unwrap_or(&self.default_keys);
        let ctx = KeyContext {
            model_group: req.model_group,
            namespace: req.namespace,
            partition: req.partition,
            forwarded: req.forwarded,
            ..Default::default()
        };
        let key = keys.standard_key(req.kind, &e.scope_request, &ctx)?;
        let mut h = blake3::Hasher::new();
        h.update(SCOPE_TAG.as_bytes());
        h.update(self.embedder.model().as_bytes());
        h.update(b"\n");
        h.update(self.config.embed_mode.as_str().as_bytes());
        h.update(b"\n");
        h.update(key.as_str().as_bytes());
        Ok(h.finalize().to_hex().to_string())
    }

    async fn vector(&self, text: &str) -> Result<Arc<Vec<f32>>> {
        let text = match self.config.max_text_chars {
            Some(max) => match text.char_indices().nth(max) {
                Some((cut, _)) => &text[..cut],
                None => text,
            },
            None => text,
        };
        let mut h = blake3::Hasher::new();
        h.update(self.embedder.model().as_bytes());
        h.update(b"\n");
        h.update(text.as_bytes());
        let id = *h.finalize().as_bytes();
        if let Some(v) = self.memo.get(&id) {
            return Ok(v);
        }
        let res = self.embedder.embed(&[text.to_owned()]).await;
        let mut v = match res {
            Ok(mut vs) if vs.len() == 1 => vs.pop().unwrap_or_default(),
            Ok(vs) => {
                self.counters.embed_errors.fetch_add(1, Relaxed);
                return Err(CacheError::backend(
                    "embedder",
                    "embed",
                    false,
                    format!("{} vectors for 1 text", vs.len()),
                ));
            }
            Err(e) => {
                self.counters.embed_errors.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        if !normalize(&mut v) {
            self.counters.embed_errors.fetch_add(1, Relaxed);
            return Err(CacheError::backend(
                "embedder",
                "embed",
                false,
                format!(
                    "model `{}` returned a zero or non-finite vector",
                    self.embedder.model()
                ),
            ));
        }
        let v = Arc::new(v);
        self.memo.insert(id, v.clone());
        Ok(v)
    }

    fn threshold(&self, req: &SemanticRequest<'_>) -> f32 {
        let configured = self.config.similarity_threshold;
        match req.min_similarity {
            Some(t) if t.is_finite() => configured.max(t.min(1.0)),
            _ => configured,
        }
    }
}

#[async_trait]
impl SemanticLayer for SemanticCache {
    fn name(&self) -> &str {
        self.backend.name()
    }

    async fn lookup(&self, req: &SemanticRequest<'_>) -> Result<Option<SemanticHit>> {
        let c = &self.counters;
        c.lookups.fetch_add(1, Relaxed);
        let Some(e) = extract(req.kind, req.request, self.config.embed_mode) else {
            c.no_text.fetch_add(1, Relaxed);
            return Ok(None);
        };
        let scope = self.scope(req, &e)?;
        let vector = self.vector(&e.text).await?;
        let threshold = self.threshold(req);
        // A repeat of a cached question (the verifier's alignment: fillers, misspellings, a
        // moved clause) is served below the threshold, down to REPEAT_FLOOR, unless the request
        // asked for a higher bar itself or the configuration asks for identical texts (1.0).
        let floor = if self.config.guard.enabled && req.min_similarity.is_none() {
            repeat_floor(threshold)
        } else {
            threshold
        };
        let matches = self
            .backend
            .search(&scope, &vector, floor, self.config.candidates)
            .await?;
        if matches.is_empty() {
            c.below_threshold.fetch_add(1, Relaxed);
            return Ok(None);
        }
        let features = Features::of(&e.text);
        let mut chosen = None;
        let mut above = false;
        for m in matches {
            // Backends promise this; a misbehaving one must not lower the bar.
            if m.similarity < floor {
                continue;
            }
            above |= m.similarity >= threshold;
            match features.compare(&Features::of(&m.prompt), self.config.guard) {
                Ok(Relation::Repeat) => {
                    chosen = Some(m);
                    break;
                }
                Ok(Relation::Similar) if m.similarity >= threshold => {
                    chosen = Some(m);
                    break;
                }
                Ok(Relation::Similar) => {}
                // Below the threshold only a repeat could have been served: not a rejection.
                Err(_) if m.similarity < threshold => {}
                Err(reason) => {
                    c.guard[reason_index(reason)].fetch_add(1, Relaxed);
                    if self.config.shadow_mode {
                        // Shadow mode is for measuring: say what the checks keep out.
                        tracing::info!(
                            backend = self.backend.name(),
                            similarity = m.similarity,
                            reason = reason.as_str(),
                            "semantic candidate rejected by the guard (shadow mode)"
                        );
                    } else {
                        tracing::debug!(
                            backend = self.backend.name(),
                            similarity = m.similarity,
                            reason = reason.as_str(),
                            "semantic candidate rejected by the guard"
                        );
                    }
                }
            }
        }
        if chosen.is_none() && !above {
            c.below_threshold.fetch_add(1, Relaxed);
        }
        let Some(m) = chosen else {
            return Ok(None);
        };
        if m.similarity < threshold {
            c.repeat_hits.fetch_add(1, Relaxed);
        }
        if self.config.shadow_mode {
            c.shadow_hits.fetch_add(1, Relaxed);
            c.shadow_similarity_micros
                .fetch_add((f64::from(m.similarity) * 1e6) as u64, Relaxed);
            tracing::info!(
                backend = self.backend.name(),
                similarity = m.similarity,
                threshold,
                scope = &scope[..16],
                "semantic shadow hit (not served: semantic_shadow_mode is on)"
            );
            return Ok(None);
        }
        c.hits.fetch_add(1, Relaxed);
        Ok(Some(SemanticHit::new(m.value, m.similarity)))
    }

    async fn store(
        &self,
        req: &SemanticRequest<'_>,
        envelope: Bytes,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let Some(e) = extract(req.kind, req.request, self.config.embed_mode) else {
            return Ok(());
        };
        let scope = self.scope(req, &e)?;
        let vector = self.vector(&e.text).await?;
        self.backend
            .store(SemanticRecord::new(
                scope,
                req.namespace.map(str::to_owned),
                e.text,
                Vec::clone(&vector),
                envelope,
                ttl,
            ))
            .await?;
        self.counters.stores.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        self.backend.clear(namespace).await
    }

    async fn ping(&self) -> Result<Health> {
        let h = self.backend.ping().await?;
        Ok(h.with_detail("embedding_model", self.embedder.model())
            .with_detail(
                "similarity_threshold",
                format!("{}", self.config.similarity_threshold),
            )
            .with_detail("shadow_mode", self.config.shadow_mode.to_string()))
    }

    fn stats(&self) -> Option<SemanticStats> {
        let c = &self.counters;
        let mut s = SemanticStats::default();
        s.lookups = c.lookups.load(Relaxed);
        s.no_text = c.no_text.load(Relaxed);
        s.hits = c.hits.load(Relaxed);
        s.shadow_hits = c.shadow_hits.load(Relaxed);
        s.repeat_hits = c.repeat_hits.load(Relaxed);
        s.shadow_similarity_sum = c.shadow_similarity_micros.load(Relaxed) as f64 / 1e6;
        s.guard_rejections = GUARD_REASONS
            .iter()
            .map(|r| (r.as_str(), c.guard[reason_index(*r)].load(Relaxed)))
            .collect();
        s.below_threshold = c.below_threshold.load(Relaxed);
        s.stores = c.stores.load(Relaxed);
        s.embed_errors = c.embed_errors.load(Relaxed);
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalEmbedder, MemorySemanticBackend};
    use cache_core::{CallKind, KeyOptions};
    use serde_json::{Value, json};

    fn cache(mode: EmbedMode) -> SemanticCache {
        SemanticCache::new(
            Arc::new(LocalEmbedder::potion_base_2m().expect("model")),
            Arc::new(MemorySemanticBackend::default()),
            SemanticConfig::new(0.9)
                .expect("threshold")
                .with_embed_mode(mode),
        )
    }

    fn scope(c: &SemanticCache, req: &SemanticRequest<'_>) -> String {
        c.scope_of(req).expect("object").expect("has text")
    }

    fn chat(system: &str, user: &str) -> Value {
        json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user}
        ]})
    }

    #[test]
    fn the_scope_is_everything_but_the_last_user_text() {
        let c = cache(EmbedMode::LastUserMessage);
        let (a, b) = (chat("s", "first wording"), chat("s", "second wording"));
        let base = SemanticRequest::new(CallKind::Chat, &a, None, Some("ns"), None);
        let s = scope(&c, &base);
        assert_eq!(s.len(), 64);
        assert_eq!(
            s,
            scope(
                &c,
                &SemanticRequest::new(CallKind::Chat, &b, None, Some("ns"), None)
            ),
            "only the compared text differs"
        );
        let other_system = chat("t", "first wording");
        let mut other_model = a.clone();
        other_model["model"] = json!("m2");
        for (what, req) in [
            (
                "system prompt",
                SemanticRequest::new(CallKind::Chat, &other_system, None, Some("ns"), None),
            ),
            (
                "model",
                SemanticRequest::new(CallKind::Chat, &other_model, None, Some("ns"), None),
            ),
            (
                "model group",
                SemanticRequest::new(CallKind::Chat, &a, Some("g"), Some("ns"), None),
            ),
            (
                "namespace",
                SemanticRequest::new(CallKind::Chat, &a, None, Some("ns2"), None),
            ),
            (
                "partition",
                SemanticRequest::new(CallKind::Chat, &a, None, Some("ns"), None)
                    .with_partition(Some("team")),
            ),
            (
                "call kind",
                SemanticRequest::new(CallKind::AnthropicMessages, &a, None, Some("ns"), None),
            ),
        ] {
            assert_ne!(s, scope(&c, &req), "{what} must change the scope");
        }
        // The embed mode is part of the scope: vectors of the two modes never mix.
        assert_ne!(s, scope(&cache(EmbedMode::AllMessages), &base));
        // With every message embedded, the system prompt is compared, not scoped.
        let all = cache(EmbedMode::AllMessages);
        assert_eq!(
            scope(&all, &base),
            scope(
                &all,
                &SemanticRequest::new(CallKind::Chat, &other_system, None, Some("ns"), None)
            )
        );
    }

    #[test]
    fn a_client_cache_key_does_not_collapse_scopes() {
        let c = cache(EmbedMode::LastUserMessage);
        let keys = KeyBuilder::new(KeyOptions {
            allow_client_cache_key: true,
            ..Default::default()
        });
        let mut a = chat("s", "q");
        a["cache_key"] = json!("shared");
        let mut b = chat("other system", "q");
        b["cache_key"] = json!("shared");
        let ra = SemanticRequest::new(CallKind::Chat, &a, None, None, None).with_keys(&keys);
        let rb = SemanticRequest::new(CallKind::Chat, &b, None, None, None).with_keys(&keys);
        assert_ne!(scope(&c, &ra), scope(&c, &rb));
    }

    #[tokio::test]
    async fn a_misspelt_repeat_is_served_below_the_threshold_and_a_trap_is_not() {
        let c = cache(EmbedMode::LastUserMessage);
        let stored = chat("s", "How do I register my warranty?");
        let req = |r| SemanticRequest::new(CallKind::Chat, r, None, None, None);
        c.store(&req(&stored), Bytes::from_static(b"answer"), None)
            .await
            .unwrap();
        // Two misspellings pull potion-base-2M's similarity far below 0.9.
        let typo = chat("s", "how do i regster my warrenty");
        let hit = c
            .lookup(&req(&typo))
            .await
            .unwrap()
            .expect("a repeat is served");
        assert_eq!(hit.value, Bytes::from_static(b"answer"));
        assert!(hit.similarity < 0.9, "{}", hit.similarity);
        assert_eq!(c.stats().expect("stats").repeat_hits, 1);
        // A per-request threshold applies to repeats too.
        let strict = SemanticRequest::new(CallKind::Chat, &typo, None, None, Some(0.9));
        assert!(c.lookup(&strict).await.unwrap().is_none());
        // Someone else's warranty is not a repeat, whatever the similarity.
        let trap = chat("s", "How do I register my son's warranty?");
        assert!(c.lookup(&req(&trap)).await.unwrap().is_none());
        // Without the guard only the similarity counts.
        let off = SemanticCache::new(
            Arc::new(LocalEmbedder::potion_base_2m().expect("model")),
            Arc::new(MemorySemanticBackend::default()),
            SemanticConfig::new(0.9)
                .expect("threshold")
                .with_guard(GuardConfig::off()),
        );
        off.store(&req(&stored), Bytes::from_static(b"answer"), None)
            .await
            .unwrap();
        assert!(off.lookup(&req(&typo)).await.unwrap().is_none());
        // A threshold of 1 asks for identical texts: no repeat path either.
        let identical = SemanticCache::new(
            Arc::new(LocalEmbedder::potion_base_2m().expect("model")),
            Arc::new(MemorySemanticBackend::default()),
            SemanticConfig::new(1.0).expect("threshold"),
        );
        identical
            .store(&req(&stored), Bytes::from_static(b"answer"), None)
            .await
            .unwrap();
        assert!(identical.lookup(&req(&typo)).await.unwrap().is_none());
        assert!(identical.lookup(&req(&stored)).await.unwrap().is_some());
    }

    #[test]
    fn threshold_only_rises() {
        let c = cache(EmbedMode::LastUserMessage);
        let r = chat("s", "q");
        let with = |t| SemanticRequest::new(CallKind::Chat, &r, None, None, t);
        assert_eq!(c.threshold(&with(None)), 0.9);
        assert_eq!(c.threshold(&with(Some(0.5))), 0.9);
        assert_eq!(c.threshold(&with(Some(0.95))), 0.95);
        assert_eq!(c.threshold(&with(Some(7.0))), 1.0);
        assert_eq!(c.threshold(&with(Some(f32::NAN))), 0.9);
    }
}
