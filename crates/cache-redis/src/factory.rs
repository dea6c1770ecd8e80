//! `type: redis` for the backend registry (see `cache_core::registry`).

use std::sync::Arc;

use cache_core::params::Params;
use cache_core::registry::{BackendFactory, BuildContext, TypeProfile};
use cache_core::{Result, SharedBackend, async_trait};

use crate::{RedisBackend, RedisConfig};

/// The `cache_params` keys of the Redis types (LiteLLM's names, reference §4.2).
pub const KEYS: &[&str] = &[
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
    "unix_socket_path",
    "default_in_redis_ttl",
    "default_redis_ttl",
];

/// TTL keys of the Redis types, read before `ttl` (`default_redis_ttl` is LiteLLM's proxy
/// spelling, read as `default_in_redis_ttl`).
pub const TTL_KEYS: &[&str] = &["default_in_redis_ttl", "default_redis_ttl"];

/// LiteLLM keys of its Redis caches that llm-cache accepts but does not implement.
pub const LITELLM_IGNORED_KEYS: &[&str] = &[
    "redis_flush_size",
    "gcp_service_account",
    "gcp_ssl_ca_certs",
    "health_check_interval",
    "ssl_cert_reqs",
    "retry_on_timeout",
    "socket_keepalive",
    "client_name",
];

/// `type: redis`: standalone, Cluster or Sentinel, chosen by the keys given.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisFactory;

#[async_trait]
impl BackendFactory for RedisFactory {
    fn types(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn keys(&self, _type_name: &str) -> Vec<&'static str> {
        KEYS.to_vec()
    }

    fn ignored_keys(&self, _type_name: &str) -> &'static [&'static str] {
        LITELLM_IGNORED_KEYS
    }

    fn profile(&self, _type_name: &str) -> TypeProfile {
        TypeProfile::new().with_ttl_keys(TTL_KEYS)
    }

    fn validate(&self, _type_name: &str, params: &Params) -> Result<()> {
        RedisConfig::from_params(params).map(|_| ())
    }

    async fn build(&self, _: &str, params: &Params, _: &BuildContext) -> Result<SharedBackend> {
        Ok(Arc::new(RedisBackend::from_params(params).await?))
    }
}
