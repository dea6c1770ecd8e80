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
use cache_core::registry::{BackendFactory, BuildContext, Registry, TypeProfile};
use cache_core::{
    BreakerConfig, Cache, CacheBuilder, CacheEngine, CacheError, CacheMode, CacheSettings,
    CallKind, Encoding, KeyOptions, L1Config, MemoryBackend, MemoryConfig, Result, SharedBackend,
};
use serde_json::{Map, Value};

use crate::backends::{BUILTIN_TYPES, builtin_registry, feature_off};

/// Keys of the cache itself, whatever the backend. Each backend's own keys come from its
/// factory ([`BackendFactory::keys`]).
pub const CORE_KEYS: &[&str] = &[
    "type",
    "mode",
    "namespace",
    "ttl",
    "supported_call_types",
    "max_messages",
    // llm-cache extensions
    "cache_read_timeout",
    "cache_write_timeout",
    "circuit_breaker_failure_threshold",
    "circuit_breaker_open_seconds",
    "coalesce_requests",
    "coalesce_timeout",
    "coalesce_across_replicas",
    "coalesce_lease",
    "entry_format",
    "compression",
    "compression_min_bytes",
    "l1_cache",
    "l1_ttl",
    "l1_max_items",
    "l1_max_bytes",
    "allow_client_cache_key",
    "caching_groups",
];

/// A validated `cache_params` mapping.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    backend_type: String,
    params: Params,
    warnings: Vec<String>,
    factory: Arc<dyn BackendFactory>,
}

impl CacheConfig {
    /// From a `cache_params` mapping (values may be `os.environ/NAME`), with the backends of
    /// this build ([`crate::builtin_registry`]).
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the key for an unknown key, a wrong type, an unknown
    /// `type`, or an unset environment variable.
    pub fn from_value(value: Value) -> Result<Self> {
        Self::from_value_in(value, &builtin_registry())
    }

    /// [`CacheConfig::from_value`] with the backends of `registry` (a third party's included).
    ///
    /// # Errors
    /// As [`CacheConfig::from_value`].
    pub fn from_value_in(value: Value, registry: &Registry) -> Result<Self> {
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
        let factory = match registry.get(&backend_type) {
            Some(f) => f.clone(),
            None => return Err(unknown_type(&backend_type, registry)),
        };
        let mut warnings = Vec::new();
        let own = factory.keys(&backend_type);
        let ignored = factory.ignored_keys(&backend_type);
        for key in params.map().keys() {
            let key = key.as_str();
            if key == "default_redis_ttl" {
                warnings.push(
                    "cache_params.default_redis_ttl is a LiteLLM proxy setting that crashes LiteLLM's host/port Redis (#17197); llm-cache reads it as default_in_redis_ttl".to_owned(),
                );
            }
            if CORE_KEYS.contains(&key) || own.contains(&key) {
                continue;
            }
            if matches!(
                key,
                "key_extra_params" | "enable_caching_on_provider_specific_optional_params"
            ) {
                warnings.push(format!(
                    "cache_params.{key} has no effect: every request member sent upstream is keyed (key spec v2, docs/key-spec.md)"
                ));
                continue;
            }
            if ignored.contains(&key) {
                warnings.push(format!(
                    "cache_params.{key} is a LiteLLM setting llm-cache does not implement; ignored"
                ));
                continue;
            }
            if let Some(other) = registry
                .types()
                .into_iter()
                .find(|t| registry.get(t).is_some_and(|f| f.keys(t).contains(&key)))
            {
                warnings.push(format!(
                    "cache_params.{key} is a setting of `type: {other}`, not of `type: {backend_type}`; ignored"
                ));
                continue;
            }
            let known: Vec<&str> = CORE_KEYS
                .iter()
                .copied()
                .chain(own.iter().copied())
                .chain(registry.all_keys())
                .collect();
            let hint = suggest(key, known)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(CacheError::Config(format!(
                "cache_params.{key}: unknown setting{hint}"
            )));
        }
        factory.validate(&backend_type, &params)?;
        let config = CacheConfig {
            backend_type,
            params,
            warnings,
            factory,
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
    ///
    /// # Errors
    /// [`CacheError::Config`] when this build has no Redis backend.
    pub fn redis_from_env() -> Result<Self> {
        Self::redis_from_env_in(&builtin_registry())
    }

    /// [`CacheConfig::redis_from_env`] with the backends of `registry`.
    ///
    /// # Errors
    /// As [`CacheConfig::redis_from_env`].
    pub fn redis_from_env_in(registry: &Registry) -> Result<Self> {
        let mut m = Map::new();
        m.insert("type".to_owned(), Value::String("redis".to_owned()));
        Self::from_value_in(Value::Object(m), registry).map_err(|e| {
            CacheError::Config(format!(
                "`cache: true` without cache_params means a Redis cache from REDIS_* (as LiteLLM): {e}"
            ))
        })
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

    /// The factory that builds this `type`.
    pub fn factory(&self) -> &Arc<dyn BackendFactory> {
        &self.factory
    }

    /// The defaults of this `type`.
    pub fn profile(&self) -> TypeProfile {
        self.factory.profile(&self.backend_type)
    }

    /// The default TTL for this type (LiteLLM precedence: the type's own key first, e.g.
    /// `default_in_memory_ttl` for local and `default_in_redis_ttl` for Redis types, then
    /// `ttl`, then the type's default: 600 s for local).
    ///
    /// # Errors
    /// A wrong type.
    pub fn default_ttl(&self) -> Result<Option<Duration>> {
        let p = &self.params;
        let profile = self.profile();
        for key in profile.ttl_keys {
            if let Some(t) = p.seconds(key)? {
                return Ok(Some(t));
            }
        }
        Ok(p.seconds("ttl")?.or(profile.default_ttl))
    }

    /// Bounds of the in-memory backend (`max_size_in_memory` items, `max_size_per_item` KB,
    /// `max_size_in_memory_bytes`).
    ///
    /// # Errors
    /// A wrong type.
    pub fn memory_config(&self) -> Result<MemoryConfig> {
        MemoryConfig::from_params(&self.params)
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
        let profile = self.profile();
        s.read_timeout = p
            .seconds("cache_read_timeout")?
            .unwrap_or(profile.read_timeout);
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
        let format = p.string("entry_format")?;
        let compress = p.bool("compression")?;
        let min_bytes = p.u64("compression_min_bytes")?;
        if format.is_some() || compress.is_some() || min_bytes.is_some() {
            let mut enc = match format.as_deref() {
                None | Some("auto") => {
                    if profile.in_memory {
                        Encoding::JSON
                    } else {
                        Encoding::COMPACT
                    }
                }
                Some("compact") => Encoding::COMPACT,
                Some("json") => Encoding::JSON,
                Some(other) => {
                    return Err(CacheError::Config(format!(
                        "cache_params.entry_format: `{other}` is not one of auto, compact, json"
                    )));
                }
            };
            if let Some(c) = compress {
                enc = enc.with_compress(c);
            }
            if let Some(n) = min_bytes {
                enc = enc.with_compress_min_bytes(usize::try_from(n).unwrap_or(usize::MAX));
            }
            s.encoding = Some(enc);
        }
        if let Some(c) = p.bool("coalesce_across_replicas")? {
            s.coalesce_across_replicas = c;
        }
        if let Some(t) = p.seconds("coalesce_lease")? {
            if t.is_zero() {
                return Err(CacheError::Config(
                    "cache_params.coalesce_lease: must be more than 0 seconds".to_owned(),
                ));
            }
            s.coalesce_lease = t;
        }
        if p.bool("l1_cache")?.unwrap_or(false) && !profile.in_memory {
            let mut l1 = L1Config::default();
            if let Some(t) = p.seconds("l1_ttl")? {
                l1.ttl = t;
            }
            if let Some(n) = p.u64("l1_max_items")? {
                l1.memory = l1.memory.with_max_items(Some(n));
            }
            if let Some(n) = p.u64("l1_max_bytes")? {
                l1.memory = l1.memory.with_max_bytes(Some(n));
            }
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
    /// A configuration or connection error.
    pub async fn build_backend(&self) -> Result<SharedBackend> {
        self.factory
            .build(&self.backend_type, &self.params, &BuildContext::default())
            .await
    }

    /// Builds an engine (for [`Cache::update`]).
    ///
    /// # Errors
    /// As [`CacheConfig::build_backend`].
    pub async fn build_engine(&self) -> Result<Arc<CacheEngine>> {
        self.build_engine_with(&BuildContext::default()).await
    }

    /// [`CacheConfig::build_engine`] with a build context (an embedding-model resolver).
    ///
    /// # Errors
    /// As [`CacheConfig::build_backend`].
    pub async fn build_engine_with(&self, ctx: &BuildContext) -> Result<Arc<CacheEngine>> {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
        let backend = self
            .factory
            .build(&self.backend_type, &self.params, ctx)
            .await?;
        let mut builder = CacheBuilder::from_shared(backend).settings(self.settings()?);
        if let Some(layer) = self
            .factory
            .build_semantic(&self.backend_type, &self.params, ctx)
            .await?
        {
            builder = builder.semantic(layer);
        }
        Ok(builder.build_engine())
    }

    /// Builds the cache.
    ///
    /// # Errors
    /// As [`CacheConfig::build_backend`].
    pub async fn build(&self) -> Result<Cache> {
        self.build_with(&BuildContext::default()).await
    }

    /// [`CacheConfig::build`] with a build context (an embedding-model resolver).
    ///
    /// # Errors
    /// As [`CacheConfig::build_backend`].
    pub async fn build_with(&self, ctx: &BuildContext) -> Result<Cache> {
        Ok(Cache::new(Some(self.build_engine_with(ctx).await?)))
    }

    /// The in-memory backend for `type: local`.
    ///
    /// # Errors
    /// A wrong type.
    pub fn memory_backend(&self) -> Result<MemoryBackend> {
        Ok(MemoryBackend::new(self.memory_config()?))
    }
}

fn unknown_type(backend_type: &str, registry: &Registry) -> CacheError {
    if BUILTIN_TYPES.iter().any(|(t, _)| *t == backend_type) {
        return feature_off(backend_type);
    }
    let mut known = registry.types();
    for (t, _) in BUILTIN_TYPES {
        if !known.contains(t) {
            known.push(t);
        }
    }
    let hint = if backend_type == "valkey-semantic" {
        " (valkey-semantic is not implemented; use redis-semantic against a Redis with the search module)".to_owned()
    } else {
        suggest(backend_type, known.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default()
    };
    CacheError::Config(format!(
        "cache_params.type: unsupported cache type `{backend_type}`{hint}; this build has: {}",
        registry.types().join(", ")
    ))
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
        let c = CacheConfig::from_yaml(
            "type: redis\nhost: localhost\nredis_flush_size: 10\ndefault_redis_ttl: 30\n",
        )
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
