//! The whole conformance kit against the gcs emulator (see `tests/support`).

mod support;

cache_core::cache_conformance!(service = "fake-gcs", optional_backend = support::gcs());
