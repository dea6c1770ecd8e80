//! The whole conformance kit against the gcs emulator (see `tests/support`).

mod support;

cache_core::cache_conformance!(optional_backend = support::gcs());
