//! The backends this build has: one factory per cargo feature, in a [`Registry`].

use cache_core::CacheError;
use cache_core::registry::Registry;

/// A registry with every backend this build of the façade has (one per enabled cargo feature),
/// and `local` always. Register a third-party [`cache_core::BackendFactory`] on it to select
/// that backend by `type` too ([`crate::CacheConfig::from_value_in`]).
pub fn builtin_registry() -> Registry {
    #[allow(unused_mut)]
    let mut r = Registry::new();
    #[cfg(feature = "disk")]
    r.register(cache_disk::DiskFactory);
    #[cfg(feature = "redis")]
    r.register(cache_redis::RedisFactory);
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    r.register(cache_object_store::ObjectStoreFactory);
    #[cfg(feature = "redis-semantic")]
    r.register(cache_semantic::RedisSemanticFactory);
    #[cfg(feature = "qdrant-semantic")]
    r.register(cache_semantic::QdrantSemanticFactory);
    #[cfg(feature = "local-semantic")]
    r.register(cache_semantic::LocalSemanticFactory);
    r
}

/// The built-in `type`s and the cargo feature of this crate that provides each. (A third
/// party's types are whatever its factory says.)
pub const BUILTIN_TYPES: &[(&str, &str)] = &[
    ("local", "default"),
    ("redis", "redis"),
    ("disk", "disk"),
    ("s3", "s3"),
    ("gcs", "gcs"),
    ("azure-blob", "azure"),
    ("redis-semantic", "redis-semantic"),
    ("qdrant-semantic", "qdrant-semantic"),
    ("local-semantic", "local-semantic"),
];

/// The `type`s this build can construct.
pub fn available_types() -> Vec<&'static str> {
    builtin_registry().types()
}

/// The cargo feature that provides a built-in `type` (`default` for `local` and unknown types).
pub fn feature_of(backend_type: &str) -> &'static str {
    BUILTIN_TYPES
        .iter()
        .find(|(t, _)| *t == backend_type)
        .map_or("default", |(_, f)| f)
}

/// The error for a built-in backend whose feature is off.
pub(crate) fn feature_off(backend_type: &str) -> CacheError {
    let feature = feature_of(backend_type);
    CacheError::Config(format!(
        "cache_params.type: `{backend_type}` needs the cargo feature `{feature}` of the llm-cache crate, \
         which this build does not have (enable `{feature}` or `full`; the llm-cache binary has them all)"
    ))
}
