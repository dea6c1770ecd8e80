//! The whole conformance kit, in one line.

cache_core::cache_conformance!(backend = async { hashmap_backend::HashMapBackend::new() });
