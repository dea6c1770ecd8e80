//! The whole conformance kit against the s3 emulator (see `tests/support`).

mod support;

cache_core::cache_conformance!(service = "moto", optional_backend = support::s3());
