//! Building a cache from LiteLLM's `cache_params` (YAML, JSON or environment variables).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), llm_cache::CacheError> {
//! let config = llm_cache::CacheConfig::from_yaml("type: local\nttl: 600\nnamespace: myapp\n")?;
//! let cache = config.build().await?;
//! assert!(cache.is_enabled());
//! # Ok(()) }
//! ```
//!
//! Names, defaults and environment variables follow LiteLLM (reference §1, §4). Deviations are
//! listed in `docs/litellm-compatibility.md`. Keys LiteLLM has but llm-cache does not implement
//! produce warnings ([`CacheConfig::warnings`]); any other unknown key is an error with a
//! suggestion, so a typo never silently changes behaviour.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cache_core::params::{Params, resolve_env_refs, suggest};
use cache_core::{
    BreakerConfig, Cache, CacheBuilder, CacheEngine, CacheError, CacheMode, CacheSettings,
    CallKind, KeyOptions, L1Config, MemoryBackend, MemoryConfig, Result, SharedBackend,
};
use serde_json::{Map, Value};

/// Every `type` LiteLLM knows, plus `disk` (removed from LiteLLM in 1.109, kept here).
pub const CACHE_TYPES: &[&str] = &[
    "local",
    "redis",
    "disk",
    "s3",
    "gcs",
    "azure-blob",
    "redis-semantic",
    "qdrant-semantic",
    "local-semantic",
];

/// Keys of the cache itself (any backend).
pub const CORE_KEYS: &[&str] = &[
    "type",
    "mode",
    "namespace",
    "ttl",
    "default_in_memory_ttl",
    "default_in_redis_ttl",
    "supported_call_types",
    "max_messages",
    // in-memory backend (LiteLLM names)
    "max_size_in_memory",
    "max_size_per_item",
    // llm-cache extensions
    "max_size_in_memory_bytes",
    "cache_read_timeout",
    "cache_write_timeout",
    "circuit_breaker_failure_threshold",
    "circuit_breaker_open_seconds",
    "coalesce_requests",
    "coalesce_timeout",
    "l1_cache",
    "l1_ttl",
    "l1_max_items",
    "l1_max_bytes",
    "allow_client_cache_key",
    "caching_groups",
];

/// Keys of the Redis backends (LiteLLM names, §4.2).
pub const REDIS_KEYS: &[&str] = &[
    "host",
    "port",
    "password",
    "username",
    "db",
    "ssl",
    "url",
    "redis_url",
    "redis_startup_nodes",
    "startup_nodes",
    "sentinel_nodes",
    "service_name",
    "sentinel_password",
    "socket_timeout",
    "socket_connect_timeout",
    "max_connections",
    "ssl_ca_certs",
];

/// Keys of the disk backend.
pub const DISK_KEYS: &[&str] = &[
    "disk_cache_dir",
    "disk_cache_max_bytes",
    "disk_cache_flush_interval",
    "disk_cache_sweep_interval",
    "disk_cache_memory_bytes",
    "disk_cache_on_corruption",
];

/// Keys of the object-store backends (LiteLLM names, §4.4–4.5).
pub const OBJECT_STORE_KEYS: &[&str] = &[
    "s3_bucket_name",
    "s3_region_name",
    "s3_endpoint_url",
    "s3_aws_access_key_id",
    "s3_aws_secret_access_key",
    "s3_aws_session_token",
    "s3_path",
    "s3_use_ssl",
    "s3_verify",
    "gcs_bucket_name",
    "gcs_path_service_account",
    "gcs_path",
    "azure_account_url",
    "azure_blob_container",
    "azure_account_key",
    "azure_sas_token",
    "azure_create_container",
    "azure_blob_path",
    "object_store_max_concurrency",
    "object_store_max_retries",
    "object_store_retry_timeout",
    "object_store_request_timeout",
    "object_store_connect_timeout",
];

/// Keys of the semantic backends (LiteLLM names, §4.6–4.9, plus llm-cache's).
pub const SEMANTIC_KEYS: &[&str] = &[
    "similarity_threshold",
    "redis_semantic_cache_embedding_model",
    "redis_semantic_cache_index_name",
    "qdrant_api_base",
    "qdrant_api_key",
    "qdrant_collection_name",
    "qdrant_quantization_config",
    "qdrant_semantic_cache_embedding_model",
    "qdrant_semantic_cache_vector_size",
    "qdrant_grpc_url",
    "qdrant_cleanup_interval",
    "qdrant_timeout",
    "semantic_cache_embedding_timeout",
    "semantic_cache_embedding_max_input_tokens",
    "semantic_cache_scope",
    "semantic_embedding_api_base",
    "semantic_embedding_api_key",
    "semantic_embedding_dimensions",
    "semantic_embed_all_messages",
    "semantic_guard",
    "semantic_shadow_mode",
    // type: local-semantic (llm-cache's in-process semantic cache)
    "semantic_cache_embedding_model",
    "semantic_cache_max_entries",
];

/// LiteLLM keys llm-cache accepts but does not implement: a warning, not an error.
pub const LITELLM_IGNORED_KEYS: &[&str] = &[
    "redis_flush_size",
    "gcp_service_account",
    "gcp_ssl_ca_certs",
    "s3_api_version",
    "s3_config",
    "valkey_semantic_cache_embedding_model",
    "valkey_semantic_cache_index_name",
    "health_check_interval",
    "ssl_cert_reqs",
    "retry_on_timeout",
    "socket_keepalive",
    "client_name",
];

/// A validated `cache_params` mapping.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    backend_type: String,
    params: Params,
    warnings: Vec<String>,
}

impl CacheConfig {
    /// From a `cache_params` mapping (values may be `os.environ/NAME`).
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the key for an unknown key, a wrong type, an unknown
    /// `type`, or an unset environment variable.
    pub fn from_value(value: Value) -> Result<Self> {
        let mut value = match value {
            Value::Null => Value::Object(Map::new()),
            v @ Value::Object(_) => v,
            other => {
                return Err(CacheError::Config(format!(
                    "cache_params must be a mapping, got {other}"
                )));
            }
        };
        resolve_env_refs(&mut value, "cache_params")?;
        let Value::Object(map) = value else {
            unreachable!("checked above")
        };
        let params = Params::new(map, "cache_params");
        let backend_type = params.string("type")?.unwrap_or_else(|| "local".to_owned());
        if !CACHE_TYPES.contains(&backend_type.as_str()) {
            let hint = if backend_type == "valkey-semantic" {
                " (valkey-semantic is not implemented; use redis-semantic against a Redis with the search module)".to_owned()
            } else {
                suggest(&backend_type, CACHE_TYPES.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default()
            };
            return Err(CacheError::Config(format!(
                "cache_params.type: unsupported cache type `{backend_type}`{hint}; supported: {}",
                CACHE_TYPES.join(", ")
            )));
        }
        let mut warnings = Vec::new();
        let known: Vec<&str> = CORE_KEYS
            .iter()
            .chain(REDIS_KEYS)
            .chain(DISK_KEYS)
            .chain(OBJECT_STORE_KEYS)
            .chain(SEMANTIC_KEYS)
            .copied()
            .collect();
        for key in params.map().keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            if key == "default_redis_ttl" {
                warnings.push(
                    "cache_params.default_redis_ttl is a LiteLLM proxy setting that crashes LiteLLM's host/port Redis (#17197); llm-cache reads it as default_in_redis_ttl".to_owned(),
                );
                continue;
            }
            if matches!(
                key.as_str(),
                "key_extra_params" | "enable_caching_on_provider_specific_optional_params"
            ) {
                warnings.push(format!(
                    "cache_params.{key} has no effect: every request member sent upstream is keyed (key spec v2, docs/key-spec.md)"
                ));
                continue;
            }
            if LITELLM_IGNORED_KEYS.contains(&key.as_str()) {
                warnings.push(format!(
                    "cache_params.{key} is a LiteLLM setting llm-cache does not implement; ignored"
                ));
                continue;
            }
            let hint = suggest(key, known.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(CacheError::Config(format!(
                "cache_params.{key}: unknown setting{hint}"
            )));
        }
        let config = CacheConfig {
            backend_type,
            params,
            warnings,
        };
        // Validate the core settings eagerly so a bad value fails at load time.
        config.settings()?;
        Ok(config)
    }

    /// From YAML text holding the `cache_params` mapping.
    ///
    /// # Errors
    /// A YAML syntax error, or any error of [`CacheConfig::from_value`].
    pub fn from_yaml(text: &str) -> Result<Self> {
        Self::from_value(parse_yaml(text)?)
    }

    /// From JSON text holding the `cache_params` mapping.
    ///
    /// # Errors
    /// A JSON syntax error, or any error of [`CacheConfig::from_value`].
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| CacheError::Config(format!("cache_params: invalid JSON: {e}")))?;
        Self::from_value(v)
    }

    /// From the environment: `LLM_CACHE_PARAMS` (YAML or JSON text of `cache_params`), else
    /// `LLM_CACHE_TYPE` (plus each backend's own variables, e.g. `REDIS_HOST`). `None` when
    /// neither is set.
    ///
    /// # Errors
    /// As [`CacheConfig::from_value`].
    pub fn from_env() -> Result<Option<Self>> {
        if let Ok(text) = std::env::var("LLM_CACHE_PARAMS") {
            return Self::from_yaml(&text).map(Some);
        }
        if let Ok(t) = std::env::var("LLM_CACHE_TYPE") {
            let mut m = Map::new();
            m.insert("type".to_owned(), Value::String(t));
            return Self::from_value(Value::Object(m)).map(Some);
        }
        Ok(None)
    }

    /// LiteLLM's `cache: true` without `cache_params`: Redis configured from `REDIS_*`.
    pub fn redis_from_env() -> Self {
        let mut m = Map::new();
        m.insert("type".to_owned(), Value::String("redis".to_owned()));
        CacheConfig {
            backend_type: "redis".to_owned(),
            params: Params::new(m, "cache_params"),
            warnings: Vec::new(),
        }
    }

    /// The `type`.
    pub fn backend_type(&self) -> &str {
        &self.backend_type
    }

    /// The raw parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Warnings found while loading (LiteLLM keys that are ignored).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn is_redis_type(&self) -> bool {
        matches!(self.backend_type.as_str(), "redis" | "redis-semantic")
    }

    /// The default TTL for this type (LiteLLM precedence: `default_in_memory_ttl` for local,
    /// `default_in_redis_ttl` for Redis types, else `ttl`; local falls back to 600 s).
    ///
    /// # Errors
    /// A wrong type.
    pub fn default_ttl(&self) -> Result<Option<Duration>> {
        let p = &self.params;
        let specific = match self.backend_type.as_str() {
            "local" | "local-semantic" => p.seconds("default_in_memory_ttl")?,
            _ if self.is_redis_type() => match p.seconds("default_in_redis_ttl")? {
                Some(t) => Some(t),
                None => p.seconds("default_redis_ttl")?,
            },
            _ => None,
        };
        let ttl = specific.or(p.seconds("ttl")?);
        Ok(match (self.backend_type.as_str(), ttl) {
            ("local" | "local-semantic", None) => Some(cache_core::memory::DEFAULT_MEMORY_TTL),
            (_, ttl) => ttl,
        })
    }

    /// Bounds of the in-memory backend (`max_size_in_memory` items, `max_size_per_item` KB,
    /// `max_size_in_memory_bytes`).
    ///
    /// # Errors
    /// A wrong type.
    pub fn memory_config(&self) -> Result<MemoryConfig> {
        let p = &self.params;
        let mut m = MemoryConfig::default();
        if let Some(n) = p.u64("max_size_in_memory")? {
            m = m.with_max_items(Some(n));
        }
        if let Some(kb) = p.u64("max_size_per_item")? {
            m = m.with_max_item_bytes((kb as usize).saturating_mul(1024));
        }
        m = m.with_max_bytes(p.u64("max_size_in_memory_bytes")?);
        Ok(m)
    }

    /// The core settings, with llm-cache's per-type defaults.
    ///
    /// # Errors
    /// A wrong type or value, naming the key.
    pub fn settings(&self) -> Result<CacheSettings> {
        let p = &self.params;
        let mut s = CacheSettings::default();
        s.mode = match p.string("mode")?.as_deref() {
            None | Some("default_on") => CacheMode::DefaultOn,
            Some("default_off") => CacheMode::DefaultOff,
            Some(other) => {
                return Err(p.error(
                    "mode",
                    format!("expected `default_on` or `default_off`, got `{other}`"),
                ));
            }
        };
        if let Some(types) = p.string_list("supported_call_types")? {
            let mut set = BTreeSet::new();
            for t in types {
                let kind = CallKind::parse(&t).ok_or_else(|| {
                    p.error(
                        "supported_call_types",
                        format!(
                            "unknown call type `{t}` (known: completion, acompletion, embedding, aembedding, text_completion, atext_completion, transcription, atranscription, rerank, arerank, responses, aresponses, anthropic_messages, aanthropic_messages)"
                        ),
                    )
                })?;
                set.insert(kind);
            }
            s.supported_call_types = set;
        }
        s.max_messages = p.u64("max_messages")?.map(|n| n as usize);
        s.namespace = p.string("namespace")?.filter(|n| !n.is_empty());
        s.default_ttl = self.default_ttl()?;
        let slow = matches!(
            self.backend_type.as_str(),
            "s3" | "gcs" | "azure-blob" | "redis-semantic" | "qdrant-semantic"
        );
        s.read_timeout = p
            .seconds("cache_read_timeout")?
            .unwrap_or(Duration::from_millis(if slow { 1000 } else { 50 }));
        if let Some(t) = p.seconds("cache_write_timeout")? {
            s.write_timeout = t;
        }
        if let Some(t) = p.seconds("semantic_cache_embedding_timeout")? {
            s.semantic_timeout = t;
        }
        let threshold = p.u64("circuit_breaker_failure_threshold")?;
        let open = p.seconds("circuit_breaker_open_seconds")?;
        if threshold.is_some() || open.is_some() {
            let d = BreakerConfig::default();
            s.breaker = BreakerConfig::new(
                threshold.map_or(d.failure_threshold, |t| t as u32),
                open.unwrap_or(d.open_for),
            );
        }
        if let Some(c) = p.bool("coalesce_requests")? {
            s.coalesce = c;
        }
        if let Some(t) = p.seconds("coalesce_timeout")? {
            s.coalesce_timeout = t;
        }
        if p.bool("l1_cache")?.unwrap_or(false) && self.backend_type != "local" {
            let mut l1 = L1Config::default();
            if let Some(t) = p.seconds("l1_ttl")? {
                l1.ttl = t;
            }
            if let Some(n) = p.u64("l1_max_items")? {
                l1.memory = l1.memory.with_max_items(Some(n));
            }
            l1.memory = l1.memory.with_max_bytes(p.u64("l1_max_bytes")?);
            s.l1 = Some(l1);
        }
        let mut keys = KeyOptions {
            allow_client_cache_key: p.bool("allow_client_cache_key")?.unwrap_or(false),
            ..Default::default()
        };
        if let Some(groups) = p.get("caching_groups") {
            let groups = groups
                .as_array()
                .and_then(|gs| {
                    gs.iter()
                        .map(|g| {
                            g.as_array()?
                                .iter()
                                .map(|m| m.as_str().map(str::to_owned))
                                .collect::<Option<Vec<String>>>()
                        })
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    p.error("caching_groups", "expected a list of lists of model names")
                })?;
            keys = keys.with_caching_groups(groups);
        }
        s.keys = keys;
        Ok(s)
    }

    /// Builds the backend for `type`.
    ///
    /// # Errors
    /// A configuration error, or a backend whose cargo feature is not compiled in.
    pub async fn build_backend(&self) -> Result<SharedBackend> {
        crate::backends::build(self).await
    }

    /// Builds an engine (for [`Cache::update`]).
    ///
    /// # Errors
    /// As [`CacheConfig::build_backend`].
    pub async fn build_engine(&self) -> Result<Arc<CacheEngine>> {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
        let backend = self.build_backend().await?;
        let mut builder = CacheBuilder::from_shared(backend).settings(self.settings()?);
        if let Some(layer) = crate::backends::build_semantic(self).await? {
            builder = builder.semantic(layer);
        }
        Ok(builder.build_engine())
    }

    /// Builds the cache.
    ///
    /// # Errors
    /// As [`CacheConfig::build_backend`].
    pub async fn build(&self) -> Result<Cache> {
        Ok(Cache::new(Some(self.build_engine().await?)))
    }

    /// The in-memory backend for `type: local`.
    ///
    /// # Errors
    /// A wrong type.
    pub fn memory_backend(&self) -> Result<MemoryBackend> {
        Ok(MemoryBackend::new(self.memory_config()?))
    }
}

/// Parses YAML into a JSON value (no YAML-only types survive: tags, anchors resolved).
///
/// # Errors
/// [`CacheError::Config`] with the parser's message (line and column).
pub fn parse_yaml(text: &str) -> Result<Value> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| CacheError::Config(format!("invalid YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_litellm() {
        let c = CacheConfig::from_value(Value::Null).unwrap();
        assert_eq!(c.backend_type(), "local");
        let s = c.settings().unwrap();
        assert_eq!(s.mode, CacheMode::DefaultOn);
        assert_eq!(s.default_ttl, Some(Duration::from_secs(600)));
        assert_eq!(s.max_messages, None);
        assert_eq!(s.supported_call_types.len(), CallKind::ALL.len());
        let m = c.memory_config().unwrap();
        assert_eq!(m.max_items, Some(200));
        assert_eq!(m.max_item_bytes, 1024 * 1024);
    }

    #[test]
    fn litellm_names_are_read() {
        let c = CacheConfig::from_yaml(
            "type: local\nttl: 60\nnamespace: app\nmode: default_off\nmax_messages: 8\nsupported_call_types: [acompletion, aembedding]\nmax_size_in_memory: 50\nmax_size_per_item: 10\n",
        )
        .unwrap();
        let s = c.settings().unwrap();
        assert_eq!(s.default_ttl, Some(Duration::from_secs(60)));
        assert_eq!(s.namespace.as_deref(), Some("app"));
        assert_eq!(s.mode, CacheMode::DefaultOff);
        assert_eq!(s.max_messages, Some(8));
        assert_eq!(
            s.supported_call_types,
            [CallKind::Chat, CallKind::Embedding].into_iter().collect()
        );
        let m = c.memory_config().unwrap();
        assert_eq!(m.max_items, Some(50), "max_size_in_memory is honoured (F9)");
        assert_eq!(m.max_item_bytes, 10 * 1024);
        let c = CacheConfig::from_yaml("type: local\nttl: 60\ndefault_in_memory_ttl: 5\n").unwrap();
        assert_eq!(
            c.settings().unwrap().default_ttl,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn typos_are_errors_with_suggestions_and_litellm_leftovers_warn() {
        let err = CacheConfig::from_yaml("type: local\nnamspace: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cache_params.namspace") && err.contains("did you mean `namespace`"),
            "{err}"
        );
        let err = CacheConfig::from_yaml("type: redsi\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `redis`"), "{err}");
        let c =
            CacheConfig::from_yaml("type: redis\nredis_flush_size: 10\ndefault_redis_ttl: 30\n")
                .unwrap();
        assert_eq!(c.warnings().len(), 2);
        assert_eq!(
            c.settings().unwrap().default_ttl,
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (yaml, key) in [
            ("ttl: abc", "cache_params.ttl"),
            ("mode: sometimes", "cache_params.mode"),
            (
                "supported_call_types: [chat_completion]",
                "cache_params.supported_call_types",
            ),
            ("max_messages: -1", "cache_params.max_messages"),
            ("caching_groups: [a, b]", "cache_params.caching_groups"),
            ("l1_cache: maybe", "cache_params.l1_cache"),
        ] {
            let err = CacheConfig::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        assert!(CacheConfig::from_yaml("[1, 2]").is_err());
        assert!(CacheConfig::from_yaml("ttl: [").is_err());
    }

    #[test]
    fn json_and_value_inputs() {
        let c = CacheConfig::from_json(r#"{"type": "local", "ttl": "30"}"#).unwrap();
        assert_eq!(
            c.settings().unwrap().default_ttl,
            Some(Duration::from_secs(30))
        );
        let c = CacheConfig::from_value(json!({"caching_groups": [["a", "b"]]})).unwrap();
        assert_eq!(c.settings().unwrap().keys.model_aliases.len(), 2);
    }

    #[tokio::test]
    async fn local_builds_and_caches() {
        let cache = CacheConfig::from_yaml("type: local\nnamespace: t\n")
            .unwrap()
            .build()
            .await
            .unwrap();
        assert_eq!(cache.engine().unwrap().backend().name(), "memory");
        assert!(cache.ping().await.unwrap().set_ok);
    }
}
