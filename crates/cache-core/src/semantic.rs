//! Traits for semantic caching (answering a *similar* request), implemented by `cache-semantic`.
//!
//! Three layers:
//! * [`Embedder`] turns text into vectors (an OpenAI-compatible API, a local model).
//! * [`SemanticBackend`] stores vectors with their entry and finds the nearest ones **within an
//!   exact scope** (a pre-filter: model group, keyed params, earlier turns, namespace, tenant).
//! * [`SemanticLayer`] is what the orchestration calls after an exact miss: it extracts the text,
//!   embeds it, searches, applies the threshold and guards. `cache-semantic` provides it.

use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use crate::backend::Health;
use crate::error::Result;
use crate::key::{CallKind, KeyBuilder};

/// Turns texts into vectors.
#[async_trait]
pub trait Embedder: Send + Sync + Debug + 'static {
    /// Model name, for logs and for the index (vectors of different models never mix).
    fn model(&self) -> &str;

    /// Output dimension, when known before the first call.
    fn dimensions(&self) -> Option<usize>;

    /// Embeds each text; one vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// One stored semantic entry.
#[derive(Clone)]
#[non_exhaustive]
pub struct SemanticRecord {
    /// The exact scope (a hash); searches only ever see records of the same scope.
    pub scope: String,
    /// Namespace, for `clear`.
    pub namespace: Option<String>,
    /// The text that was embedded (kept for the guard and for debugging).
    pub prompt: String,
    /// Its vector.
    pub vector: Vec<f32>,
    /// The entry envelope.
    pub value: Bytes,
    /// Time to live.
    pub ttl: Option<Duration>,
}

impl SemanticRecord {
    /// A record.
    pub fn new(
        scope: String,
        namespace: Option<String>,
        prompt: String,
        vector: Vec<f32>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Self {
        SemanticRecord {
            scope,
            namespace,
            prompt,
            vector,
            value,
            ttl,
        }
    }
}

impl Debug for SemanticRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticRecord")
            .field("scope", &self.scope)
            .field("namespace", &self.namespace)
            .field("dims", &self.vector.len())
            .field("value_len", &self.value.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A search result.
#[derive(Clone)]
#[non_exhaustive]
pub struct SemanticMatch {
    /// Cosine similarity in [0, 1] (clamped).
    pub similarity: f32,
    /// The stored prompt text.
    pub prompt: String,
    /// The entry envelope.
    pub value: Bytes,
}

impl SemanticMatch {
    /// A match.
    pub fn new(similarity: f32, prompt: String, value: Bytes) -> Self {
        SemanticMatch {
            similarity,
            prompt,
            value,
        }
    }
}

impl Debug for SemanticMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticMatch")
            .field("similarity", &self.similarity)
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// A vector index with scoped nearest-neighbour search.
///
/// # Contract
/// * `search` returns at most `limit` records **of exactly `scope`** (filtered in the index,
///   before ranking), not expired, with similarity ≥ `min_similarity`, best first.
/// * `store` with a TTL makes the record invisible to `search` after the TTL.
/// * A vector whose dimension differs from the index's is an error, not a silent miss.
#[async_trait]
pub trait SemanticBackend: Send + Sync + Debug + 'static {
    /// Short name (`redis-semantic`, `qdrant-semantic`, `memory-semantic`).
    fn name(&self) -> &str;

    /// Nearest records within a scope.
    async fn search(
        &self,
        scope: &str,
        vector: &[f32],
        min_similarity: f32,
        limit: usize,
    ) -> Result<Vec<SemanticMatch>>;

    /// Stores a record.
    async fn store(&self, record: SemanticRecord) -> Result<()>;

    /// Removes every record of a namespace (`None`: all records of this index).
    async fn clear(&self, namespace: Option<&str>) -> Result<u64>;

    /// Checks the index is reachable.
    async fn ping(&self) -> Result<Health>;
}

/// What the orchestration hands the semantic layer.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SemanticRequest<'a> {
    /// Call kind.
    pub kind: CallKind,
    /// The request body.
    pub request: &'a Value,
    /// Model group keyed instead of `model`.
    pub model_group: Option<&'a str>,
    /// Resolved namespace.
    pub namespace: Option<&'a str>,
    /// Per-request similarity threshold (only ever raises the configured one).
    pub min_similarity: Option<f32>,
    /// Tenant partition (part of the exact scope).
    pub partition: Option<&'a str>,
    /// Opt-in members the request forwards upstream (keyed into the exact scope).
    pub forwarded: &'a [&'a str],
    /// The engine's key builder (model aliases, extra keyed params), for the exact scope.
    pub keys: Option<&'a KeyBuilder>,
}

impl<'a> SemanticRequest<'a> {
    /// A request description.
    pub fn new(
        kind: CallKind,
        request: &'a Value,
        model_group: Option<&'a str>,
        namespace: Option<&'a str>,
        min_similarity: Option<f32>,
    ) -> Self {
        SemanticRequest {
            kind,
            request,
            model_group,
            namespace,
            min_similarity,
            partition: None,
            forwarded: &[],
            keys: None,
        }
    }

    /// Sets the opt-in members the request forwards upstream (see
    /// [`crate::key::KeyContext::forwarded`]).
    pub fn with_forwarded(mut self, forwarded: &'a [&'a str]) -> Self {
        self.forwarded = forwarded;
        self
    }

    /// Sets the tenant partition.
    pub fn with_partition(mut self, partition: Option<&'a str>) -> Self {
        self.partition = partition;
        self
    }

    /// Sets the key builder used for the exact scope.
    pub fn with_keys(mut self, keys: &'a KeyBuilder) -> Self {
        self.keys = Some(keys);
        self
    }
}

/// A semantic hit.
#[derive(Clone)]
#[non_exhaustive]
pub struct SemanticHit {
    /// The entry envelope.
    pub value: Bytes,
    /// Its similarity to the request.
    pub similarity: f32,
}

impl SemanticHit {
    /// A hit.
    pub fn new(value: Bytes, similarity: f32) -> Self {
        SemanticHit { value, similarity }
    }
}

impl Debug for SemanticHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticHit")
            .field("similarity", &self.similarity)
            .finish()
    }
}

/// The semantic lookup/store policy the orchestration calls after an exact miss.
#[async_trait]
pub trait SemanticLayer: Send + Sync + Debug + 'static {
    /// Short name.
    fn name(&self) -> &str;

    /// Finds a similar stored response, or `None`.
    async fn lookup(&self, req: &SemanticRequest<'_>) -> Result<Option<SemanticHit>>;

    /// Stores a response for future similar requests.
    async fn store(
        &self,
        req: &SemanticRequest<'_>,
        envelope: Bytes,
        ttl: Option<Duration>,
    ) -> Result<()>;

    /// Removes a namespace.
    async fn clear(&self, namespace: Option<&str>) -> Result<u64>;

    /// Health check.
    async fn ping(&self) -> Result<Health>;

    /// Counters of the layer (lookups, hits, shadow hits, guard rejections), for metrics.
    fn stats(&self) -> Option<SemanticStats> {
        None
    }
}

/// A snapshot of a semantic layer's counters.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SemanticStats {
    /// Semantic lookups started (after an exact miss).
    pub lookups: u64,
    /// Lookups skipped: no text to compare (no user message, only images).
    pub no_text: u64,
    /// Hits served.
    pub hits: u64,
    /// Of the hits (or, in shadow mode, of the would-be hits), those below the similarity
    /// threshold: a repeat of a cached question (misspelt, reworded by fillers, a moved clause)
    /// that the layer's own check recognised.
    pub repeat_hits: u64,
    /// Would-be hits not served because shadow mode is on.
    pub shadow_hits: u64,
    /// Sum of the similarities of the shadow hits (mean = sum / count).
    pub shadow_similarity_sum: f64,
    /// Candidates above the threshold rejected by the guard, by reason (`numbers`, ...).
    pub guard_rejections: Vec<(&'static str, u64)>,
    /// Lookups with no candidate above the threshold.
    pub below_threshold: u64,
    /// Entries stored.
    pub stores: u64,
    /// Embedding calls that failed or timed out (each one a miss or a skipped store).
    pub embed_errors: u64,
}

/// An OpenAI-compatible embeddings endpoint: `POST {api_base}/embeddings`.
#[derive(Clone)]
#[non_exhaustive]
pub struct EmbeddingEndpoint {
    /// Base URL up to the version (`https://api.openai.com/v1`).
    pub api_base: String,
    /// API key (sent as a bearer token; also as `api-key` when `azure`).
    pub api_key: Option<String>,
    /// Model name sent upstream.
    pub model: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Extra query parameters (Azure's `api-version`).
    pub query: Vec<(String, String)>,
    /// Azure OpenAI (`api-key` header).
    pub azure: bool,
}

impl EmbeddingEndpoint {
    /// An endpoint without key, headers or query parameters.
    pub fn new(api_base: impl Into<String>, model: impl Into<String>) -> Self {
        EmbeddingEndpoint {
            api_base: api_base.into(),
            api_key: None,
            model: model.into(),
            headers: Vec::new(),
            query: Vec::new(),
            azure: false,
        }
    }

    /// Sets the API key.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a query parameter.
    pub fn with_query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Marks an Azure OpenAI endpoint.
    pub fn with_azure(mut self, azure: bool) -> Self {
        self.azure = azure;
        self
    }
}

impl fmt::Debug for EmbeddingEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddingEndpoint")
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("azure", &self.azure)
            .finish()
    }
}

/// Maps an embedding model name (as configured in `*_semantic_cache_embedding_model`) to an
/// endpoint; `None` for names it does not know (then `cache_params` decide).
pub type EmbeddingResolver = Arc<dyn Fn(&str) -> Option<EmbeddingEndpoint> + Send + Sync>;
