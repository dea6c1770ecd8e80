//! The conformance kit against the shared Redis Cluster (3 masters + 3 replicas, 17101-17106).
mod common;

cache_core::cache_conformance!(
    service = "redis-cluster",
    optional_backend = common::cluster()
);
