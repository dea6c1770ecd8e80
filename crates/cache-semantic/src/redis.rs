//! [`RedisSemanticBackend`] (`type: redis-semantic`): RediSearch HNSW vector search over hashes.
//!
//! Layout, for index `I` (`redis_semantic_cache_index_name`, default
//! `litellm_semantic_cache_index`):
//!
//! ```text
//! FT.CREATE I ON HASH PREFIX 1 I: SCHEMA
//!     scope TAG                       exact scope (64 hex): the KNN pre-filter
//!     ns TAG SEPARATOR ,              hashes of the namespace and its parents: clear(ns)
//!     vec VECTOR HNSW 6 TYPE FLOAT32 DIM d DISTANCE_METRIC COSINE
//! HSET I:<scope>:<prompt hash> scope … ns … vec <f32 LE bytes> prompt <text> value <envelope>
//! PEXPIRE I:<scope>:<prompt hash> <ttl ms>          TTL = key expiry
//! FT.SEARCH I "(@scope:{<scope>})=>[KNN k @vec $v AS dist]" PARAMS 2 v <bytes>
//!     SORTBY dist RETURN 3 dist prompt value LIMIT 0 k DIALECT 2
//! ```
//!
//! RediSearch's COSINE distance is `1 - cosine similarity`, in [0, 2]; this backend reports
//! `similarity = 1 - distance` clamped to [0, 1] and keeps matches with
//! `distance <= 1 - similarity_threshold`. The scope filter runs inside the KNN query
//! (RediSearch's hybrid query: pre-filtered, not a post-filter of a global top-k).
//!
//! The same prompt in the same scope overwrites its record (one key per scope and prompt).
//! The index is created on first store; at start the backend checks (when Redis is reachable)
//! that the search module is loaded and that an existing index has the embedder's dimension.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::params::Params;
use cache_core::semantic::{SemanticBackend, SemanticMatch, SemanticRecord};
use cache_core::{CacheError, Health, Result};
use cache_redis::{RedisConfig, Topology};
use fred::clients::WithOptions;
use fred::prelude::{Client, ClientLike, Error as FredError, ErrorKind, Options, Pool};
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use tokio::sync::Mutex;

const NAME: &str = "redis-semantic";
/// LiteLLM's default index name.
pub const DEFAULT_INDEX_NAME: &str = "litellm_semantic_cache_index";
/// Default `EF_RUNTIME` of the HNSW search (RediSearch's own default is 10): the candidate list
/// the search keeps. Measured at 1 M entries of 384 dimensions, RediSearch's 10 finds the exact
/// nearest neighbour for 74 % of paraphrase queries, 64 for 96 %, 128 for 99 % (p99 1.25 ms);
/// see docs/benchmarks.md.
pub const DEFAULT_EF_RUNTIME: usize = 128;
/// Highest `redis_semantic_ef_runtime` accepted.
pub const MAX_EF_RUNTIME: usize = 4096;
/// Keys removed per `UNLINK` and documents fetched per `FT.SEARCH` page in `clear`.
const PAGE: usize = 1000;

/// Settings of the Redis semantic backend.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisSemanticConfig {
    /// Connection (LiteLLM `host`/`port`/`password`/`url`, `REDIS_*` fallbacks).
    pub redis: RedisConfig,
    /// Index name; also the key prefix (`<index>:`).
    pub index_name: String,
    /// Vector dimension the embedder produces, when known up front (checked against an
    /// existing index at start).
    pub dimensions: Option<usize>,
    /// `EF_RUNTIME` of each search (`redis_semantic_ef_runtime`, default
    /// [`DEFAULT_EF_RUNTIME`]): higher finds the true nearest entry more often, at more CPU
    /// per lookup in Redis. Never below the number of candidates asked for.
    pub ef_runtime: usize,
}

impl fmt::Debug for RedisSemanticConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSemanticConfig")
            .field("redis", &self.redis.topology)
            .field("index_name", &self.index_name)
            .field("dimensions", &self.dimensions)
            .field("ef_runtime", &self.ef_runtime)
            .finish()
    }
}

impl RedisSemanticConfig {
    /// A configuration for `redis` with the default index name.
    pub fn new(redis: RedisConfig) -> Self {
        RedisSemanticConfig {
            redis,
            index_name: DEFAULT_INDEX_NAME.to_owned(),
            dimensions: None,
            ef_runtime: DEFAULT_EF_RUNTIME,
        }
    }

    /// Sets the search's `EF_RUNTIME` (clamped to `1..=MAX_EF_RUNTIME`).
    pub fn with_ef_runtime(mut self, ef: usize) -> Self {
        self.ef_runtime = ef.clamp(1, MAX_EF_RUNTIME);
        self
    }

    /// Sets the index name.
    pub fn with_index_name(mut self, name: impl Into<String>) -> Self {
        self.index_name = name.into();
        self
    }

    /// Sets the expected dimension.
    pub fn with_dimensions(mut self, dims: Option<usize>) -> Self {
        self.dimensions = dims;
        self
    }

    /// From `cache_params` (LiteLLM names: `host`, `port`, `password`, `url`/`redis_url`,
    /// `redis_semantic_cache_index_name`; ours: `redis_semantic_ef_runtime`).
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the key.
    pub fn from_params(params: &Params) -> Result<Self> {
        let redis = RedisConfig::from_params(params)?;
        let mut c = Self::new(redis);
        if let Some(name) = params.string("redis_semantic_cache_index_name")? {
            validate_index_name(&name)
                .map_err(|m| params.error("redis_semantic_cache_index_name", m))?;
            c.index_name = name;
        }
        if let Some(ef) = params.u64("redis_semantic_ef_runtime")? {
            if ef == 0 || ef > MAX_EF_RUNTIME as u64 {
                return Err(params.error(
                    "redis_semantic_ef_runtime",
                    format!("{ef}: use 1 to {MAX_EF_RUNTIME}"),
                ));
            }
            c.ef_runtime = ef as usize;
        }
        Ok(c)
    }
}

fn validate_index_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "`{name}`: use letters, digits, `_`, `-` and `.` only (it is also the key prefix)"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexState {
    /// Not checked yet (or dropped behind our back).
    Unknown,
    /// Checked: absent.
    Missing,
    /// Present with this dimension.
    Ready(usize),
}

/// The `redis-semantic` vector backend. See the [module documentation](self).
///
/// Commands fail fast while Redis is down (the layer turns that into a miss); the pool
/// reconnects in the background. `Debug` never shows the password.
pub struct RedisSemanticBackend {
    pool: Pool,
    options: Options,
    index: String,
    prefix: String,
    summary: String,
    command_timeout: Duration,
    ef_runtime: usize,
    state: Mutex<IndexState>,
    tasks: Vec<tokio::task::JoinHandle<std::result::Result<(), FredError>>>,
}

impl fmt::Debug for RedisSemanticBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSemanticBackend")
            .field("topology", &self.summary)
            .field("index", &self.index)
            .finish()
    }
}

impl Drop for RedisSemanticBackend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

/// Whether retrying later can help.
fn is_transient(e: &FredError) -> bool {
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Routing
        | ErrorKind::Backpressure
        | ErrorKind::Sentinel => true,
        _ => {
            let d = e.details();
            ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY"]
                .iter()
                .any(|p| d.starts_with(p))
        }
    }
}

fn is_missing_index(e: &FredError) -> bool {
    let d = e.details().to_ascii_lowercase();
    d.contains("no such index") || d.contains("unknown index")
}

fn is_unknown_command(e: &FredError) -> bool {
    e.details().to_ascii_lowercase().contains("unknown command")
}

fn dims_error(op: &str, index: &str, got: usize, want: usize) -> CacheError {
    CacheError::Config(format!(
        "{NAME}: {op}: vector of {got} dimensions, but RediSearch index `{index}` holds \
         {want}-dimension vectors (the embedding model changed? use another \
         redis_semantic_cache_index_name, or drop the index with FT.DROPINDEX {index} DD)"
    ))
}

/// Hex-encoded TAG values of a namespace and each of its parents (`a:b` → `a`, `a:b`), so
/// `clear("a")` finds nested namespaces too. Hashed: TAG values need no escaping then.
fn namespace_tags(ns: &str) -> String {
    let mut tags = Vec::new();
    for (i, c) in ns.char_indices() {
        if c == ':' && i > 0 {
            tags.push(ns_tag(&ns[..i]));
        }
    }
    tags.push(ns_tag(ns));
    tags.join(",")
}

fn ns_tag(ns: &str) -> String {
    blake3::hash(ns.as_bytes()).to_hex()[..24].to_owned()
}

fn as_bytes(v: &RedisValue) -> Option<Bytes> {
    match v {
        RedisValue::Bytes(b) => Some(b.clone()),
        RedisValue::String(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

fn as_string(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        RedisValue::String(s) => Some(s.to_string()),
        RedisValue::Integer(i) => Some(i.to_string()),
        RedisValue::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Field/value pairs of a document, from a RESP2 flat array or a RESP3 map.
fn fields(v: &RedisValue) -> Vec<(String, RedisValue)> {
    match v {
        RedisValue::Array(items) => items
            .chunks_exact(2)
            .filter_map(|p| Some((as_string(&p[0])?, p[1].clone())))
            .collect(),
        RedisValue::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

/// The vector dimension in an `FT.INFO` reply.
fn info_dims(info: &RedisValue) -> Option<usize> {
    let top = fields(info);
    let attrs = top.iter().find(|(k, _)| k == "attributes")?;
    let RedisValue::Array(attrs) = &attrs.1 else {
        return None;
    };
    for a in attrs {
        let f = fields(a);
        let is_vec = f
            .iter()
            .any(|(k, v)| k == "type" && as_string(v).as_deref() == Some("VECTOR"));
        if !is_vec {
            continue;
        }
        for (k, v) in &f {
            if k.eq_ignore_ascii_case("dim") {
                return as_string(v)?.parse().ok();
            }
        }
    }
    None
}

impl RedisSemanticBackend {
    /// From `cache_params` (see [`RedisSemanticConfig::from_params`]); `dimensions` is the
    /// embedder's, when known.
    ///
    /// # Errors
    /// As [`RedisSemanticBackend::connect`].
    pub async fn from_params(params: &Params, dimensions: Option<usize>) -> Result<Self> {
        Self::connect(RedisSemanticConfig::from_params(params)?.with_dimensions(dimensions)).await
    }

    /// Connects and checks the server. A Redis that is down is not an error (the backend starts
    /// degraded and reconnects); a Redis that answers without the search module, or an existing
    /// index of another dimension, is.
    ///
    /// # Errors
    /// [`CacheError::Config`]: a Redis Cluster topology, a malformed URL, no search module, a
    /// dimension mismatch with an existing index.
    pub async fn connect(config: RedisSemanticConfig) -> Result<Self> {
        validate_index_name(&config.index_name)
            .map_err(|m| CacheError::Config(format!("redis_semantic_cache_index_name: {m}")))?;
        let c = &config.redis;
        // RediSearch needs its coordinator to search across shards: no Cluster here.
        let cluster = match &c.topology {
            Topology::Cluster(_) => true,
            Topology::Url(url) => url.starts_with("redis-cluster://"),
            _ => false,
        };
        if cluster {
            return Err(cluster_unsupported());
        }
        let pool = cache_redis::connection_pool(c, c.pool_size.clamp(1, 4))?;
        let tasks = pool.connect_pool();
        let backend = RedisSemanticBackend {
            pool,
            options: Options {
                fail_fast: true,
                timeout: Some(c.command_timeout),
                max_attempts: Some(1),
                ..Default::default()
            },
            prefix: format!("{}:", config.index_name),
            index: config.index_name.clone(),
            summary: c.topology.describe(),
            command_timeout: c.command_timeout,
            ef_runtime: config.ef_runtime.clamp(1, MAX_EF_RUNTIME),
            state: Mutex::new(IndexState::Unknown),
            tasks,
        };
        // Check now when Redis is up; otherwise the first use checks.
        let up = tokio::time::timeout(c.connect_timeout, async {
            loop {
                if backend.pool.clients().iter().any(ClientLike::is_connected) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok();
        if up {
            match backend.index_state(true).await {
                Ok(IndexState::Ready(d)) => {
                    if let Some(want) = config.dimensions
                        && want != d
                    {
                        return Err(dims_error("start", &backend.index, want, d));
                    }
                }
                Ok(_) => {}
                Err(e @ CacheError::Config(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(backend = NAME, error = %e, "redis-semantic: index check failed; will retry on first use");
                }
            }
        } else {
            tracing::warn!(
                backend = NAME,
                topology = %backend.summary,
                "redis-semantic: Redis not reachable at start; semantic lookups miss until it is"
            );
        }
        Ok(backend)
    }

    /// The index name.
    pub fn index_name(&self) -> &str {
        &self.index
    }

    fn client(&self) -> WithOptions<Client> {
        self.pool.next_connected().with_options(&self.options)
    }

    fn error(&self, operation: &'static str, e: FredError) -> CacheError {
        match e.kind() {
            ErrorKind::Timeout => CacheError::Timeout {
                backend: NAME.to_owned(),
                operation,
                after: self.command_timeout,
            },
            ErrorKind::Canceled => CacheError::unavailable(
                NAME,
                format!("{operation}: not connected to {}", self.summary),
            ),
            _ if is_unknown_command(&e) => CacheError::Config(format!(
                "{NAME}: Redis at {} has no search module (RediSearch): {} — use Redis Stack, \
                 Redis 8 or load redisearch.so",
                self.summary,
                e.details()
            )),
            _ => {
                let transient = is_transient(&e);
                CacheError::backend(NAME, operation, transient, e)
            }
        }
    }

    /// Reads (or re-reads with `refresh`) whether the index exists and its dimension.
    async fn index_state(&self, refresh: bool) -> Result<IndexState> {
        let mut state = self.state.lock().await;
        if !refresh && *state != IndexState::Unknown {
            return Ok(*state);
        }
        let res: std::result::Result<RedisValue, FredError> = self
            .client()
            .custom(cmd("FT.INFO"), vec![self.index.as_str()])
            .await;
        *state = match res {
            Ok(info) => match info_dims(&info) {
                Some(d) => IndexState::Ready(d),
                None => {
                    return Err(CacheError::Config(format!(
                        "{NAME}: index `{}` exists but has no vector field; it was not created by \
                         llm-cache: choose another redis_semantic_cache_index_name",
                        self.index
                    )));
                }
            },
            Err(e) if is_missing_index(&e) => IndexState::Missing,
            Err(e) => return Err(self.error("ft.info", e)),
        };
        Ok(*state)
    }

    /// Creates the index for `dims` unless it exists; returns its dimension.
    async fn ensure_index(&self, dims: usize) -> Result<usize> {
        if let IndexState::Ready(d) = self.index_state(false).await? {
            return Ok(d);
        }
        let dim = dims.to_string();
        let prefix = self.prefix.as_str();
        let args: Vec<&str> = vec![
            &self.index,
            "ON",
            "HASH",
            "PREFIX",
            "1",
            prefix,
            "SCHEMA",
            "scope",
            "TAG",
            "ns",
            "TAG",
            "SEPARATOR",
            ",",
            "vec",
            "VECTOR",
            "HNSW",
            "6",
            "TYPE",
            "FLOAT32",
            "DIM",
            &dim,
            "DISTANCE_METRIC",
            "COSINE",
        ];
        let res: std::result::Result<RedisValue, FredError> =
            self.client().custom(cmd("FT.CREATE"), args).await;
        match res {
            Ok(_) => {
                tracing::info!(backend = NAME, index = %self.index, dims, "created RediSearch index");
            }
            Err(e) if e.details().to_ascii_lowercase().contains("already exists") => {}
            Err(e) => return Err(self.error("ft.create", e)),
        }
        match self.index_state(true).await? {
            IndexState::Ready(d) => Ok(d),
            _ => Err(CacheError::backend(
                NAME,
                "ft.create",
                true,
                format!("index `{}` not visible after FT.CREATE", self.index),
            )),
        }
    }

    fn forget_index(&self) {
        if let Ok(mut s) = self.state.try_lock() {
            *s = IndexState::Unknown;
        }
    }

    async fn unlink(&self, keys: Vec<RedisValue>) -> Result<u64> {
        let mut n = 0;
        for chunk in keys.chunks(PAGE) {
            let removed: i64 = self
                .client()
                .custom(cmd("UNLINK"), chunk.to_vec())
                .await
                .map_err(|e| self.error("clear", e))?;
            n += removed.max(0) as u64;
        }
        Ok(n)
    }
}

fn cluster_unsupported() -> CacheError {
    CacheError::Config(
        "type redis-semantic: a Redis Cluster is not supported (RediSearch needs its coordinator \
         to search across shards); use a standalone Redis Stack / Redis 8, or Sentinel"
            .to_owned(),
    )
}

#[async_trait]
impl SemanticBackend for RedisSemanticBackend {
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
        let dims = match self.index_state(false).await? {
            // Nothing was ever stored: nothing to find (re-checked on the next store).
            IndexState::Missing | IndexState::Unknown => {
                self.forget_index();
                return Ok(Vec::new());
            }
            IndexState::Ready(d) => d,
        };
        if vector.len() != dims {
            return Err(dims_error("search", &self.index, vector.len(), dims));
        }
        if !scope.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CacheError::Config(format!(
                "{NAME}: scope must be alphanumeric (a hash)"
            )));
        }
        let limit = limit.max(1);
        let blob: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        let ef = self.ef_runtime.max(limit);
        let query = format!("(@scope:{{{scope}}})=>[KNN {limit} @vec $v EF_RUNTIME {ef} AS dist]");
        let k = limit.to_string();
        let args: Vec<RedisValue> = vec![
            self.index.as_str().into(),
            query.into(),
            "PARAMS".into(),
            "2".into(),
            "v".into(),
            RedisValue::Bytes(Bytes::from(blob)),
            "SORTBY".into(),
            "dist".into(),
            "RETURN".into(),
            "3".into(),
            "dist".into(),
            "prompt".into(),
            "value".into(),
            "LIMIT".into(),
            "0".into(),
            k.into(),
            "DIALECT".into(),
            "2".into(),
        ];
        let res: std::result::Result<RedisValue, FredError> =
            self.client().custom(cmd("FT.SEARCH"), args).await;
        let reply = match res {
            Ok(r) => r,
            Err(e) if is_missing_index(&e) => {
                // Dropped behind our back: recreated on the next store.
                self.forget_index();
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.error("search", e)),
        };
        let max_distance = 1.0 - f64::from(min_similarity);
        let mut out = Vec::new();
        let docs: Vec<RedisValue> = match reply {
            RedisValue::Array(items) => items.into_iter().skip(1).collect(),
            RedisValue::Map(_) => {
                return Err(CacheError::backend(
                    NAME,
                    "search",
                    false,
                    "unexpected RESP3 FT.SEARCH reply",
                ));
            }
            _ => Vec::new(),
        };
        // [id, [field, value, ...], id, [...], ...]
        for pair in docs.chunks_exact(2) {
            let f = fields(&pair[1]);
            let get = |name: &str| f.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            let (Some(dist), Some(prompt), Some(value)) = (
                get("dist")
                    .and_then(as_string)
                    .and_then(|d| d.parse::<f64>().ok()),
                get("prompt").and_then(as_string),
                get("value").and_then(as_bytes),
            ) else {
                // Expired between the index and the read, or a foreign document.
                continue;
            };
            if dist > max_distance + 1e-6 {
                continue;
            }
            let similarity = (1.0 - dist).clamp(0.0, 1.0) as f32;
            out.push(SemanticMatch::new(similarity, prompt, value));
        }
        Ok(out)
    }

    async fn store(&self, record: SemanticRecord) -> Result<()> {
        if record.ttl.is_some_and(|t| t.as_millis() == 0) {
            return Ok(());
        }
        if !record.scope.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CacheError::Config(format!(
                "{NAME}: scope must be alphanumeric (a hash)"
            )));
        }
        let dims = self.ensure_index(record.vector.len()).await?;
        if dims != record.vector.len() {
            return Err(dims_error("store", &self.index, record.vector.len(), dims));
        }
        let prompt_id = &blake3::hash(record.prompt.as_bytes()).to_hex()[..32];
        let key = format!("{}{}:{}", self.prefix, record.scope, prompt_id);
        let blob: Vec<u8> = record.vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        let mut args: Vec<RedisValue> = vec![
            key.as_str().into(),
            "scope".into(),
            record.scope.as_str().into(),
            "vec".into(),
            RedisValue::Bytes(Bytes::from(blob)),
            "prompt".into(),
            record.prompt.as_str().into(),
            "value".into(),
            RedisValue::Bytes(record.value),
        ];
        if let Some(ns) = record.namespace.as_deref().filter(|n| !n.is_empty()) {
            args.push("ns".into());
            args.push(namespace_tags(ns).into());
        }
        let client = self.client();
        let pipeline = client.pipeline();
        // DEL first: an overwrite must not keep an older record's TTL or namespace.
        let _: () = pipeline
            .custom(cmd("DEL"), vec![key.as_str()])
            .await
            .map_err(|e| self.error("store", e))?;
        let _: () = pipeline
            .custom(cmd("HSET"), args)
            .await
            .map_err(|e| self.error("store", e))?;
        if let Some(ttl) = record.ttl {
            let ms = ttl.as_millis().max(1).to_string();
            let _: () = pipeline
                .custom(cmd("PEXPIRE"), vec![key.as_str(), ms.as_str()])
                .await
                .map_err(|e| self.error("store", e))?;
        }
        let results: Vec<std::result::Result<RedisValue, FredError>> = pipeline.try_all().await;
        for r in results {
            r.map_err(|e| self.error("store", e))?;
        }
        Ok(())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let Some(ns) = namespace else {
            // Every record of this index: SCAN its key prefix (the index stays).
            let pattern = format!("{}*", self.prefix);
            let mut cursor = "0".to_owned();
            let mut n = 0;
            loop {
                let reply: RedisValue = self
                    .client()
                    .custom(
                        cmd("SCAN"),
                        vec![cursor.as_str(), "MATCH", &pattern, "COUNT", "1000"],
                    )
                    .await
                    .map_err(|e| self.error("clear", e))?;
                let RedisValue::Array(parts) = reply else {
                    break;
                };
                let next = parts.first().and_then(as_string).unwrap_or_default();
                let keys: Vec<RedisValue> = match parts.get(1) {
                    Some(RedisValue::Array(keys)) => keys.clone(),
                    _ => Vec::new(),
                };
                if !keys.is_empty() {
                    n += self.unlink(keys).await?;
                }
                if next == "0" || next.is_empty() {
                    break;
                }
                cursor = next;
            }
            return Ok(n);
        };
        if matches!(self.index_state(false).await?, IndexState::Missing) {
            self.forget_index();
            return Ok(0);
        }
        let query = format!("@ns:{{{}}}", ns_tag(ns));
        let mut n = 0;
        // Each page is deleted before the next search, so the query always starts at 0.
        for _ in 0..100_000 {
            let page = PAGE.to_string();
            let res: std::result::Result<RedisValue, FredError> = self
                .client()
                .custom(
                    cmd("FT.SEARCH"),
                    vec![
                        self.index.as_str(),
                        &query,
                        "NOCONTENT",
                        "LIMIT",
                        "0",
                        &page,
                        "DIALECT",
                        "2",
                    ],
                )
                .await;
            let reply = match res {
                Ok(r) => r,
                Err(e) if is_missing_index(&e) => {
                    self.forget_index();
                    return Ok(n);
                }
                Err(e) => return Err(self.error("clear", e)),
            };
            let keys: Vec<RedisValue> = match reply {
                RedisValue::Array(items) => items.into_iter().skip(1).collect(),
                _ => Vec::new(),
            };
            if keys.is_empty() {
                break;
            }
            let removed = self.unlink(keys).await?;
            n += removed;
            if removed == 0 {
                // Documents whose keys are already gone (expired): nothing more to do.
                break;
            }
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<Health> {
        let start = Instant::now();
        let state = self.index_state(true).await?;
        let latency = start.elapsed();
        let mut h = Health::new(NAME, latency)
            .with_detail("topology", self.summary.clone())
            .with_detail("index", self.index.clone());
        h = match state {
            IndexState::Ready(d) => h.with_detail("dimensions", d.to_string()),
            _ => h.with_detail("dimensions", "index not created yet"),
        };
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_tags_cover_parents() {
        let t = namespace_tags("a:b:c");
        let parts: Vec<&str> = t.split(',').collect();
        assert_eq!(parts, vec![ns_tag("a"), ns_tag("a:b"), ns_tag("a:b:c")]);
        assert_eq!(namespace_tags("solo"), ns_tag("solo"));
        assert_ne!(ns_tag("a"), ns_tag("ab"));
    }

    #[test]
    fn ef_runtime_defaults_is_configurable_and_bounded() {
        let params =
            |v: serde_json::Value| Params::new(v.as_object().unwrap().clone(), "cache_params");
        let c = RedisSemanticConfig::from_params(&params(serde_json::json!({"host": "127.0.0.1"})))
            .unwrap();
        assert_eq!(c.ef_runtime, DEFAULT_EF_RUNTIME);
        let c = RedisSemanticConfig::from_params(&params(
            serde_json::json!({"host": "127.0.0.1", "redis_semantic_ef_runtime": 200}),
        ))
        .unwrap();
        assert_eq!(c.ef_runtime, 200);
        for bad in [
            serde_json::json!(0),
            serde_json::json!(5000),
            serde_json::json!("x"),
        ] {
            let err = RedisSemanticConfig::from_params(&params(
                serde_json::json!({"host": "127.0.0.1", "redis_semantic_ef_runtime": bad}),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("redis_semantic_ef_runtime"), "{err}");
        }
        assert_eq!(
            RedisSemanticConfig::new(RedisConfig::standalone("h", 1))
                .with_ef_runtime(0)
                .ef_runtime,
            1
        );
    }

    #[test]
    fn index_names_are_validated() {
        assert!(validate_index_name("litellm_semantic_cache_index").is_ok());
        assert!(validate_index_name("a b").is_err());
        assert!(validate_index_name("a*").is_err());
        assert!(validate_index_name("").is_err());
    }
}
