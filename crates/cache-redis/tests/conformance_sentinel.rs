//! The conformance kit against the shared Sentinel setup (master 17301, replica 17302,
//! sentinels 17311-17313, service `mymaster`).
mod common;

cache_core::cache_conformance!(
    service = "redis-sentinel",
    optional_backend = common::sentinel()
);
