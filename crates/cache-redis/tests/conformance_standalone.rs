//! The conformance kit against the shared standalone Redis (127.0.0.1:17001).
mod common;

cache_core::cache_conformance!(service = "redis", optional_backend = common::standalone());
