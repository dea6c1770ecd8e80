//! The proxy's configuration: the subset of LiteLLM's `config.yaml` that matters for caching.
//!
//! ```yaml
//! model_list:
//!   - model_name: gpt-4o-mini            # what clients ask for ("*" matches any model)
//!     litellm_params:
//!       model: openai/gpt-4o-mini        # provider/model sent upstream (prefix stripped)
//!       api_base: http://127.0.0.1:8000/v1
//!       api_key: os.environ/OPENAI_API_KEY
//! litellm_settings:
//!   cache: true
//!   cache_params: { type: local, ttl: 600 }
//! general_settings:
//!   master_key: sk-1234                  # or os.environ/NAME
//! llm_cache_settings:                    # llm-cache's own settings (optional)
//!   upstream_timeout: 600
//! ```
//!
//! LiteLLM settings llm-cache does not implement are reported as warnings; unknown keys in
//! llm-cache's own sections (`cache_params`, `llm_cache_settings`, `litellm_params`) are errors.

use std::time::Duration;

use llm_cache::core::params::{Params, resolve_env_refs, suggest};
use llm_cache::{CacheConfig, Registry};
use llm_cache::{CacheError, Result};
use serde_json::{Map, Value, json};

/// Providers whose API is OpenAI-compatible: the `provider/` prefix is stripped and the request
/// is sent to `api_base` as is.
pub const OPENAI_COMPATIBLE_PROVIDERS: &[&str] = &[
    "openai",
    "azure",
    "azure_ai",
    "hosted_vllm",
    "vllm",
    "ollama",
    "ollama_chat",
    "openai_compatible",
    "custom_openai",
    "text-completion-openai",
    "lm_studio",
    "llamafile",
    "deepseek",
    "groq",
    "together_ai",
    "fireworks_ai",
    "mistral",
    "openrouter",
    "xai",
    "perplexity",
    "deepinfra",
    "nvidia_nim",
    "cerebras",
    "litellm_proxy",
];

/// Providers whose answers depend on the caller's identity (delegated credentials): never read
/// from or written to the cache, as LiteLLM's `RESPONSE_CACHE_EXCLUDED_PROVIDERS` (plus GitHub
/// Copilot, whose replies are per user).
pub const UNCACHEABLE_PROVIDERS: &[&str] = &[
    "databricks_agent",
    "microsoft_365_copilot",
    "github_copilot",
];

const LITELLM_PARAMS_KEYS: &[&str] = &[
    "model",
    "cache",
    "forward_metadata",
    "api_base",
    "base_url",
    "api_key",
    "api_version",
    "organization",
    "timeout",
    "stream_timeout",
    "extra_headers",
];

const LITELLM_PARAMS_IGNORED: &[&str] = &[
    "rpm",
    "tpm",
    "max_retries",
    "num_retries",
    "custom_llm_provider",
    "weight",
    "order",
    "max_parallel_requests",
    "region_name",
    "tags",
    "drop_params",
    "merge_reasoning_content_in_choices",
    "use_in_pass_through",
];

const SETTINGS_KEYS: &[&str] = &[
    "request_log",
    "upstream_timeout",
    "upstream_connect_timeout",
    "partition_by_api_key",
];

/// The server's limits: read from `general_settings` (as the operator's other server settings)
/// and accepted in `llm_cache_settings` too.
const SERVER_KEYS: &[&str] = &[
    "max_request_body_bytes",
    "request_body_timeout",
    "header_read_timeout",
    "keep_alive_timeout",
    "http2_keep_alive_interval",
    "http2_keep_alive_timeout",
    "http2_max_concurrent_streams",
    "max_connections",
    "shutdown_timeout",
    "allow_remote_admin_without_key",
    "readiness_requires_cache",
    "readiness_check_interval",
];

/// The wire protocol a deployment (and an endpoint) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI's (chat, completions, embeddings, Responses, rerank, transcriptions): most
    /// providers and gateways.
    OpenAi,
    /// Anthropic's Messages API (`anthropic/...` deployments): `POST {api_base}/v1/messages`
    /// with `x-api-key` and `anthropic-version`.
    Anthropic,
}

/// One upstream deployment of a model group.
#[derive(Clone)]
pub struct Deployment {
    /// The protocol it speaks.
    pub api: Api,
    /// Its prices (LiteLLM's `input_cost_per_token`, ...); unpriced reports no cost.
    pub prices: crate::cost::Prices,
    /// Model name sent upstream (provider prefix stripped); `None` for `provider/*` wildcards,
    /// which send the client's model name.
    pub model: Option<String>,
    /// Base URL, without a trailing `/` (e.g. `https://api.openai.com/v1`).
    pub api_base: String,
    /// API key, if configured (else the client's own `Authorization` is forwarded).
    pub api_key: Option<String>,
    /// Whether this is an Azure deployment (also send `api-key`).
    pub azure: bool,
    /// `api-version` query parameter (Azure).
    pub api_version: Option<String>,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// Extra headers sent upstream.
    pub extra_headers: Vec<(String, String)>,
    /// Timeout of non-streaming calls.
    pub timeout: Option<Duration>,
    /// Timeout of streaming calls (time to first byte and between chunks is not bounded
    /// separately; the whole stream is).
    pub stream_timeout: Option<Duration>,
    /// `provider/` prefix of the configured model, if any.
    pub provider: Option<String>,
    /// Whether answers of this deployment may be cached: `false` for `cache: false` in its
    /// `litellm_params` and for [`UNCACHEABLE_PROVIDERS`].
    pub cacheable: bool,
    /// Forward the request's `metadata` member upstream (and key it); stripped otherwise.
    pub forward_metadata: bool,
}

impl Deployment {
    /// Why a request routed here must bypass the cache, if it must. `requested` is the
    /// client's model (a wildcard deployment sends it upstream).
    pub fn bypass_reason(&self, requested: &str) -> Option<&'static str> {
        if !self.cacheable {
            return Some("deployment");
        }
        let client_provider = requested.split_once('/').map(|(p, _)| p);
        (self.model.is_none()
            && client_provider.is_some_and(|p| UNCACHEABLE_PROVIDERS.contains(&p)))
        .then_some("provider")
    }

    /// The opt-in request members this deployment forwards upstream.
    pub fn forwarded(&self) -> &'static [&'static str] {
        if self.forward_metadata {
            &["metadata"]
        } else {
            &[]
        }
    }
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("model", &self.model)
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("azure", &self.azure)
            .field("cacheable", &self.cacheable)
            .finish()
    }
}

/// A client-facing model name and its deployments.
#[derive(Debug, Clone)]
pub struct ModelGroup {
    /// The `model_name` clients use (`*` matches any).
    pub name: String,
    /// Its deployments (round-robin).
    pub deployments: Vec<std::sync::Arc<Deployment>>,
}

/// llm-cache's own proxy settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default upstream timeout (non-streaming), unless a deployment sets `timeout`.
    pub upstream_timeout: Duration,
    /// Connect timeout.
    pub upstream_connect_timeout: Duration,
    /// Largest accepted request body (413 above).
    pub max_request_body_bytes: usize,
    /// Longest time a request body may take to arrive (408 after).
    pub request_body_timeout: Duration,
    /// Connection limits: timeouts, HTTP/2 pings and streams, the connection cap.
    pub limits: crate::listen::Limits,
    /// How long shutdown waits for in-flight requests and cache writes, in all.
    pub shutdown_timeout: Duration,
    /// Serve the admin endpoints to non-loopback peers when no master key is set.
    pub allow_remote_admin_without_key: bool,
    /// `/health/readiness` answers 503 until the cache backend answers, and while its breaker
    /// is open (`false`: it reports the cache but stays ready, serving uncached).
    pub readiness_requires_cache: bool,
    /// How often the readiness check pings the cache backend.
    pub readiness_check_interval: Duration,
    /// Partition the cache by the caller's API key (tenant isolation).
    pub partition_by_api_key: bool,
    /// Request log: `stdout`, or a file path (JSON lines); `None`: off.
    pub request_log: Option<String>,
}

/// The default body limit: 16 MiB. Chat requests with a few images fit; an audio file for
/// transcription (OpenAI accepts 25 MB) needs `max_request_body_bytes` raised.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            upstream_timeout: Duration::from_secs(600),
            upstream_connect_timeout: Duration::from_secs(10),
            max_request_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_body_timeout: Duration::from_secs(60),
            limits: crate::listen::Limits {
                header_read_timeout: Duration::from_secs(10),
                keep_alive_timeout: Duration::from_secs(60),
                http2_keep_alive_interval: Some(Duration::from_secs(20)),
                http2_keep_alive_timeout: Duration::from_secs(20),
                http2_max_concurrent_streams: 128,
                max_connections: crate::listen::default_max_connections(),
            },
            shutdown_timeout: Duration::from_secs(10),
            allow_remote_admin_without_key: false,
            readiness_requires_cache: true,
            readiness_check_interval: Duration::from_secs(5),
            partition_by_api_key: false,
            request_log: None,
        }
    }
}

/// A static API key of a tenant (`general_settings.keys`, after LiteLLM's virtual keys).
#[derive(Clone)]
pub struct TenantKey {
    /// The key callers present (`Authorization: Bearer ...` or `x-api-key`).
    pub key: String,
    /// The tenant (`tenant` or LiteLLM's `team_id`): the cache partition of its requests.
    pub tenant: String,
    /// Model groups it may use (`None`: all).
    pub models: Option<Vec<String>>,
    /// A label for logs (`key_alias`).
    pub alias: Option<String>,
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKey")
            .field("key", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("models", &self.models)
            .field("alias", &self.alias)
            .finish()
    }
}

impl TenantKey {
    /// Whether this key may use `model` (a model group name or the client's model).
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model || x == "*"))
    }
}

/// The whole proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Model groups, in config order.
    pub models: Vec<ModelGroup>,
    /// The cache (`None`: caching off).
    pub cache: Option<CacheConfig>,
    /// Master key (`None`: no master key).
    pub master_key: Option<String>,
    /// Tenants' static keys (`general_settings.keys`).
    pub keys: Vec<TenantKey>,
    /// Proxy settings.
    pub settings: Settings,
    /// Warnings to log at startup.
    pub warnings: Vec<String>,
}

fn cfg_err(msg: impl Into<String>) -> CacheError {
    CacheError::Config(msg.into())
}

impl ProxyConfig {
    /// Loads a `config.yaml` file.
    ///
    /// # Errors
    /// A read error, invalid YAML, or an invalid setting (the message names it).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        Self::load_in(path, &llm_cache::builtin_registry())
    }

    /// [`ProxyConfig::load`] with the backends of `registry` (a third party's included).
    ///
    /// # Errors
    /// As [`ProxyConfig::load`].
    pub fn load_in(path: &std::path::Path, registry: &Registry) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| cfg_err(format!("cannot read config {}: {e}", path.display())))?;
        Self::from_yaml_in(&text, registry)
            .map_err(|e| cfg_err(format!("{}: {}", path.display(), strip_prefix(&e))))
    }

    /// Parses config text (YAML or JSON).
    ///
    /// # Errors
    /// Invalid YAML or an invalid setting.
    pub fn from_yaml(text: &str) -> Result<Self> {
        Self::from_yaml_in(text, &llm_cache::builtin_registry())
    }

    /// [`ProxyConfig::from_yaml`] with the backends of `registry`.
    ///
    /// # Errors
    /// As [`ProxyConfig::from_yaml`].
    pub fn from_yaml_in(text: &str, registry: &Registry) -> Result<Self> {
        let value = llm_cache::config::parse_yaml(text)?;
        Self::from_value_in(value, registry)
    }

    /// The embedded default: a disk cache in `./.llm_cache` (in-memory without the `disk`
    /// feature) and one wildcard upstream from `OPENAI_BASE_URL` / `OPENAI_API_KEY`.
    ///
    /// # Errors
    /// Never in practice; kept fallible like the other constructors.
    pub fn embedded_default() -> Result<Self> {
        Self::embedded_default_in(&llm_cache::builtin_registry())
    }

    /// [`ProxyConfig::embedded_default`] with the backends of `registry` (a disk cache when it
    /// has `disk`).
    ///
    /// # Errors
    /// Never in practice.
    pub fn embedded_default_in(registry: &Registry) -> Result<Self> {
        let base = std::env::var("OPENAI_BASE_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "https://api.openai.com/v1".to_owned());
        let mut params = json!({"model": "openai/*", "api_base": base});
        if let Ok(key) = std::env::var("OPENAI_API_KEY")
            && !key.is_empty()
        {
            params["api_key"] = Value::String(key);
        }
        let cache_type = if registry.get("disk").is_some() {
            "disk"
        } else {
            "local"
        };
        Self::from_value_in(
            json!({
                "model_list": [{"model_name": "*", "litellm_params": params}],
                "litellm_settings": {"cache": true, "cache_params": {"type": cache_type}},
            }),
            registry,
        )
    }

    /// From a parsed document.
    ///
    /// # Errors
    /// An invalid setting (the message names it).
    pub fn from_value(value: Value) -> Result<Self> {
        Self::from_value_in(value, &llm_cache::builtin_registry())
    }

    /// [`ProxyConfig::from_value`] with the backends of `registry`.
    ///
    /// # Errors
    /// As [`ProxyConfig::from_value`].
    pub fn from_value_in(mut value: Value, registry: &Registry) -> Result<Self> {
        let root = value
            .as_object_mut()
            .ok_or_else(|| cfg_err("the config must be a mapping"))?;
        let mut warnings = Vec::new();
        for key in root.keys() {
            match key.as_str() {
                "model_list" | "litellm_settings" | "general_settings" | "llm_cache_settings" => {}
                "router_settings"
                | "environment_variables"
                | "guardrails"
                | "callbacks"
                | "credential_list"
                | "mcp_servers" => warnings.push(format!(
                    "`{key}` is a LiteLLM setting llm-cache does not implement; ignored"
                )),
                other => {
                    let hint = suggest(
                        other,
                        [
                            "model_list",
                            "litellm_settings",
                            "general_settings",
                            "llm_cache_settings",
                        ],
                    )
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                    return Err(cfg_err(format!("unknown top-level key `{other}`{hint}")));
                }
            }
        }

        let models = parse_models(root.get_mut("model_list"), &mut warnings)?;

        let mut cache = None;
        if let Some(ls) = root.get_mut("litellm_settings") {
            let ls = ls
                .as_object_mut()
                .ok_or_else(|| cfg_err("litellm_settings must be a mapping"))?;
            let mut enabled = None;
            if let Some(v) = ls.get_mut("cache") {
                resolve_env_refs(v, "litellm_settings.cache")?;
                let p = Params::new(
                    Map::from_iter([("cache".to_owned(), v.clone())]),
                    "litellm_settings",
                );
                enabled = p.bool("cache")?;
            }
            let params = ls.get("cache_params").cloned();
            for key in ls.keys() {
                if !matches!(key.as_str(), "cache" | "cache_params") {
                    warnings.push(format!(
                        "litellm_settings.{key} is a LiteLLM setting llm-cache does not implement; ignored"
                    ));
                }
            }
            cache = match (enabled, params) {
                (Some(true), Some(p)) => Some(CacheConfig::from_value_in(p, registry)?),
                // LiteLLM: `cache: true` without cache_params = Redis from REDIS_* env vars.
                (Some(true), None) => Some(CacheConfig::redis_from_env_in(registry)?),
                (Some(false) | None, Some(_)) => {
                    warnings.push(
                        "litellm_settings.cache_params is set but `cache: true` is not: caching is off".to_owned(),
                    );
                    None
                }
                _ => None,
            };
        }
        if let Some(c) = &cache {
            warnings.extend(c.warnings().iter().cloned());
        }

        let mut master_key = None;
        let mut keys = Vec::new();
        let mut settings = Settings::default();
        if let Some(gs) = root.get_mut("general_settings") {
            resolve_env_refs(gs, "general_settings")?;
            let gs = gs
                .as_object()
                .ok_or_else(|| cfg_err("general_settings must be a mapping"))?;
            let p = Params::new(gs.clone(), "general_settings");
            master_key = p.string("master_key")?.filter(|k| !k.is_empty());
            keys = parse_keys(gs.get("keys"))?;
            server_settings(&p, &mut settings)?;
            for key in gs.keys() {
                if key != "master_key" && key != "keys" && !SERVER_KEYS.contains(&key.as_str()) {
                    warnings.push(format!(
                        "general_settings.{key} is a LiteLLM setting llm-cache does not implement; ignored"
                    ));
                }
            }
        }
        if master_key.is_none()
            && let Ok(k) = std::env::var("LITELLM_MASTER_KEY")
            && !k.is_empty()
        {
            master_key = Some(k);
        }
        if let Some(m) = &master_key
            && keys.iter().any(|k| &k.key == m)
        {
            return Err(cfg_err(
                "general_settings.keys: a tenant key equals the master key",
            ));
        }

        if let Some(s) = root.get_mut("llm_cache_settings") {
            resolve_env_refs(s, "llm_cache_settings")?;
            let s = s
                .as_object()
                .ok_or_else(|| cfg_err("llm_cache_settings must be a mapping"))?;
            for key in s.keys() {
                if !SETTINGS_KEYS.contains(&key.as_str()) && !SERVER_KEYS.contains(&key.as_str()) {
                    let hint = suggest(key, SETTINGS_KEYS.iter().chain(SERVER_KEYS).copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    return Err(cfg_err(format!(
                        "llm_cache_settings.{key}: unknown setting{hint}"
                    )));
                }
            }
            let p = Params::new(s.clone(), "llm_cache_settings");
            if let Some(t) = p.seconds("upstream_timeout")? {
                settings.upstream_timeout = t;
            }
            if let Some(t) = p.seconds("upstream_connect_timeout")? {
                settings.upstream_connect_timeout = t;
            }
            server_settings(&p, &mut settings)?;
            if let Some(b) = p.bool("partition_by_api_key")? {
                settings.partition_by_api_key = b;
            }
            settings.request_log = p.string("request_log")?.filter(|s| !s.is_empty());
        }

        if master_key.is_none() && keys.is_empty() && settings.partition_by_api_key {
            warnings.push(
                "llm_cache_settings.partition_by_api_key without a master key: pass-through deployments are partitioned by the caller's credential anyway".to_owned(),
            );
        }
        Ok(ProxyConfig {
            models,
            cache,
            master_key,
            keys,
            settings,
            warnings,
        })
    }
}

/// Reads the server's limits ([`SERVER_KEYS`]) from a settings section.
fn server_settings(p: &Params, settings: &mut Settings) -> Result<()> {
    let positive = |name: &str, t: Option<Duration>| -> Result<Option<Duration>> {
        match t {
            Some(t) if t.is_zero() => Err(p.error(name, "must be greater than 0")),
            t => Ok(t),
        }
    };
    if let Some(n) = p.u64("max_request_body_bytes")? {
        settings.max_request_body_bytes = n as usize;
    }
    if let Some(t) = positive("request_body_timeout", p.seconds("request_body_timeout")?)? {
        settings.request_body_timeout = t;
    }
    let limits = &mut settings.limits;
    if let Some(t) = positive("header_read_timeout", p.seconds("header_read_timeout")?)? {
        limits.header_read_timeout = t;
    }
    if let Some(t) = positive("keep_alive_timeout", p.seconds("keep_alive_timeout")?)? {
        limits.keep_alive_timeout = t;
    }
    if let Some(t) = p.seconds("http2_keep_alive_interval")? {
        // 0 turns the pings off.
        limits.http2_keep_alive_interval = (!t.is_zero()).then_some(t);
    }
    if let Some(t) = positive(
        "http2_keep_alive_timeout",
        p.seconds("http2_keep_alive_timeout")?,
    )? {
        limits.http2_keep_alive_timeout = t;
    }
    if let Some(n) = p.u64("http2_max_concurrent_streams")? {
        limits.http2_max_concurrent_streams = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    }
    if let Some(n) = p.u64("max_connections")? {
        if n == 0 {
            return Err(p.error("max_connections", "must be at least 1"));
        }
        limits.max_connections = n as usize;
    }
    if let Some(t) = p.seconds("shutdown_timeout")? {
        settings.shutdown_timeout = t;
    }
    if let Some(b) = p.bool("allow_remote_admin_without_key")? {
        settings.allow_remote_admin_without_key = b;
    }
    if let Some(b) = p.bool("readiness_requires_cache")? {
        settings.readiness_requires_cache = b;
    }
    if let Some(t) = positive(
        "readiness_check_interval",
        p.seconds("readiness_check_interval")?,
    )? {
        settings.readiness_check_interval = t;
    }
    Ok(())
}

fn strip_prefix(e: &CacheError) -> String {
    let s = e.to_string();
    s.strip_prefix("configuration error: ")
        .unwrap_or(&s)
        .to_owned()
}

const TENANT_KEY_FIELDS: &[&str] = &["key", "tenant", "team_id", "models", "key_alias"];

fn parse_keys(list: Option<&Value>) -> Result<Vec<TenantKey>> {
    let items = match list {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(cfg_err("general_settings.keys must be a list")),
    };
    let mut keys: Vec<TenantKey> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("general_settings.keys[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| cfg_err(format!("{path} must be a mapping")))?;
        for field in obj.keys() {
            if !TENANT_KEY_FIELDS.contains(&field.as_str()) {
                let hint = suggest(field, TENANT_KEY_FIELDS.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(cfg_err(format!("{path}.{field}: unknown field{hint}")));
            }
        }
        let p = Params::new(obj.clone(), path.clone());
        let key = p
            .string("key")?
            .filter(|k| !k.is_empty())
            .ok_or_else(|| cfg_err(format!("{path}.key is required (a non-empty string)")))?;
        let tenant = match (p.string("tenant")?, p.string("team_id")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(cfg_err(format!(
                    "{path}: `tenant` and `team_id` name different tenants"
                )));
            }
            (Some(t), _) | (None, Some(t)) if !t.is_empty() => t,
            _ => {
                return Err(cfg_err(format!(
                    "{path}.tenant is required (or LiteLLM's `team_id`)"
                )));
            }
        };
        if keys.iter().any(|k| k.key == key) {
            return Err(cfg_err(format!("{path}.key: the same key is listed twice")));
        }
        keys.push(TenantKey {
            key,
            tenant,
            models: p.string_list("models")?,
            alias: p.string("key_alias")?,
        });
    }
    Ok(keys)
}

fn parse_models(list: Option<&mut Value>, warnings: &mut Vec<String>) -> Result<Vec<ModelGroup>> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let items = list
        .as_array_mut()
        .ok_or_else(|| cfg_err("model_list must be a list"))?;
    let mut groups: Vec<ModelGroup> = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        let path = format!("model_list[{i}]");
        resolve_env_refs(item, &path)?;
        let obj = item
            .as_object()
            .ok_or_else(|| cfg_err(format!("{path} must be a mapping")))?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "model_name" | "litellm_params" | "model_info") {
                warnings.push(format!("{path}.{key} is not used by llm-cache; ignored"));
            }
        }
        let name = obj
            .get("model_name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| cfg_err(format!("{path}.model_name is required (a string)")))?
            .to_owned();
        let lp = obj
            .get("litellm_params")
            .and_then(Value::as_object)
            .ok_or_else(|| cfg_err(format!("{path}.litellm_params is required (a mapping)")))?;
        for key in lp.keys() {
            if LITELLM_PARAMS_KEYS.contains(&key.as_str())
                || crate::cost::PRICE_KEYS.contains(&key.as_str())
            {
                continue;
            }
            if LITELLM_PARAMS_IGNORED.contains(&key.as_str()) {
                warnings.push(format!(
                    "{path}.litellm_params.{key} is a LiteLLM setting llm-cache does not implement; ignored"
                ));
                continue;
            }
            let hint = suggest(key, LITELLM_PARAMS_KEYS.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(cfg_err(format!(
                "{path}.litellm_params.{key}: unknown setting{hint}"
            )));
        }
        let p = Params::new(lp.clone(), format!("{path}.litellm_params"));
        let model = p
            .string("model")?
            .ok_or_else(|| cfg_err(format!("{path}.litellm_params.model is required")))?;
        let (provider, bare) = match model.split_once('/') {
            Some((prov, rest))
                if OPENAI_COMPATIBLE_PROVIDERS.contains(&prov) || prov == "anthropic" =>
            {
                (Some(prov.to_owned()), rest.to_owned())
            }
            Some((prov, _)) => {
                warnings.push(format!(
                    "{path}: provider `{prov}` is sent to api_base as an OpenAI-compatible API (llm-cache only speaks the OpenAI protocol)"
                ));
                (Some(prov.to_owned()), model.clone())
            }
            None => (None, model.clone()),
        };
        let api_base = match p.string("api_base")?.or(p.string("base_url")?) {
            Some(b) => b.trim_end_matches('/').to_owned(),
            None if matches!(provider.as_deref(), None | Some("openai")) => {
                "https://api.openai.com/v1".to_owned()
            }
            None if provider.as_deref() == Some("anthropic") => {
                "https://api.anthropic.com".to_owned()
            }
            None => {
                return Err(cfg_err(format!(
                    "{path}.litellm_params.api_base is required for provider `{}`",
                    provider.unwrap_or_default()
                )));
            }
        };
        if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
            return Err(cfg_err(format!(
                "{path}.litellm_params.api_base must be an http(s) URL, got `{api_base}`"
            )));
        }
        let extra_headers = match lp.get("extra_headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(h)) => h
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Ok((k.clone(), other.to_string())),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => {
                return Err(cfg_err(format!(
                    "{path}.litellm_params.extra_headers must be a mapping"
                )));
            }
        };
        let excluded = provider
            .as_deref()
            .is_some_and(|p| UNCACHEABLE_PROVIDERS.contains(&p));
        let cache_on = p.bool("cache")?.unwrap_or(true);
        let deployment = Deployment {
            api: if provider.as_deref() == Some("anthropic") {
                Api::Anthropic
            } else {
                Api::OpenAi
            },
            prices: crate::cost::Prices::from_params(&p)?,
            cacheable: cache_on && !excluded,
            forward_metadata: p.bool("forward_metadata")?.unwrap_or(false),
            provider: provider.clone(),
            model: (bare != "*").then_some(bare),
            api_base,
            api_key: p.string("api_key")?.filter(|k| !k.is_empty()),
            azure: provider.as_deref() == Some("azure"),
            api_version: p.string("api_version")?,
            organization: p.string("organization")?,
            extra_headers,
            timeout: p.seconds("timeout")?,
            stream_timeout: p.seconds("stream_timeout")?,
        };
        let deployment = std::sync::Arc::new(deployment);
        match groups.iter_mut().find(|g| g.name == name) {
            Some(g) => g.deployments.push(deployment),
            None => groups.push(ModelGroup {
                name,
                deployments: vec![deployment],
            }),
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_litellm_example() {
        let c = ProxyConfig::from_yaml(
            r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:8000/v1/
      api_key: sk-upstream
  - model_name: gpt-4o-mini
    litellm_params:
      model: azure/gpt-4o-mini-eu
      api_base: https://x.openai.azure.com/openai/v1
litellm_settings:
  cache: true
  cache_params: { type: local, ttl: 600, namespace: myapp, supported_call_types: [acompletion], mode: default_on }
  set_verbose: true
general_settings:
  master_key: sk-1234
"#,
        )
        .unwrap();
        assert_eq!(c.models.len(), 1);
        let g = &c.models[0];
        assert_eq!(g.deployments.len(), 2, "two deployments, one model group");
        assert_eq!(g.deployments[0].model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(g.deployments[0].api_base, "http://127.0.0.1:8000/v1");
        assert!(g.deployments[1].azure);
        assert_eq!(c.master_key.as_deref(), Some("sk-1234"));
        assert_eq!(c.cache.as_ref().unwrap().backend_type(), "local");
        assert!(c.warnings.iter().any(|w| w.contains("set_verbose")));
    }

    #[test]
    fn server_limits_are_read_from_general_settings_and_llm_cache_settings() {
        let c = ProxyConfig::from_yaml(
            "general_settings:\n  keep_alive_timeout: 5\n  max_connections: 50\n  http2_keep_alive_interval: 0\n  allow_remote_admin_without_key: true\n  master_key: sk-x\nllm_cache_settings:\n  header_read_timeout: 2.5\n  request_body_timeout: 7\n  readiness_requires_cache: false\n",
        )
        .unwrap();
        let s = &c.settings;
        assert_eq!(s.limits.keep_alive_timeout, Duration::from_secs(5));
        assert_eq!(s.limits.max_connections, 50);
        assert_eq!(s.limits.http2_keep_alive_interval, None);
        assert_eq!(s.limits.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(s.request_body_timeout, Duration::from_secs(7));
        assert!(s.allow_remote_admin_without_key);
        assert!(!s.readiness_requires_cache);
        assert!(
            c.warnings.is_empty(),
            "server settings are not LiteLLM leftovers: {:?}",
            c.warnings
        );
        // Defaults: bounded.
        let d = Settings::default();
        assert_eq!(d.max_request_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(d.limits.max_connections >= 16);
        assert!(d.limits.keep_alive_timeout <= Duration::from_secs(120));
        // Zero timeouts and caps are errors, not "no limit"; typos get a suggestion.
        for bad in [
            "general_settings: {keep_alive_timeout: 0}",
            "general_settings: {max_connections: 0}",
            "llm_cache_settings: {request_body_timeout: 0}",
            "general_settings: {header_read_timeout: soon}",
        ] {
            assert!(ProxyConfig::from_yaml(bad).is_err(), "{bad}");
        }
        let e = ProxyConfig::from_yaml("llm_cache_settings: {keep_alive_timout: 3}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keep_alive_timeout"), "{e}");
    }

    #[test]
    fn cache_true_without_params_means_redis() {
        let c = ProxyConfig::from_yaml("litellm_settings:\n  cache: true\n");
        match std::env::var("REDIS_HOST") {
            Ok(_) => assert_eq!(c.unwrap().cache.unwrap().backend_type(), "redis"),
            // Without REDIS_* it is refused at load, naming what is missing.
            Err(_) => {
                let err = c.unwrap_err().to_string();
                assert!(
                    err.contains("REDIS_HOST") && err.contains("cache: true"),
                    "{err}"
                );
            }
        }
        let c = ProxyConfig::from_yaml("litellm_settings:\n  cache: false\n").unwrap();
        assert!(c.cache.is_none());
    }

    #[test]
    fn typos_in_our_sections_are_errors() {
        for (yaml, needle) in [
            ("modle_list: []", "did you mean `model_list`"),
            (
                "model_list: [{model_name: a, litellm_params: {model: openai/a, api_bsae: http://x}}]",
                "did you mean `api_base`",
            ),
            (
                "litellm_settings: {cache: true, cache_params: {ttll: 5}}",
                "cache_params.ttll",
            ),
            (
                "llm_cache_settings: {upstream_timout: 5}",
                "did you mean `upstream_timeout`",
            ),
            (
                "model_list: [{litellm_params: {model: a}}]",
                "model_name is required",
            ),
            (
                "model_list: [{model_name: a, litellm_params: {model: openai/a, api_base: ftp://x}}]",
                "http(s) URL",
            ),
            ("litellm_settings: {cache: maybe}", "litellm_settings.cache"),
        ] {
            let err = ProxyConfig::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn embedded_default_is_a_wildcard() {
        let c = ProxyConfig::embedded_default().unwrap();
        assert_eq!(c.models[0].name, "*");
        assert_eq!(c.models[0].deployments[0].model, None);
        assert!(c.cache.is_some());
    }
}
