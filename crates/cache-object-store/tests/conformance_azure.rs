//! The whole conformance kit against the azure emulator (see `tests/support`).

mod support;

cache_core::cache_conformance!(service = "azurite", optional_backend = support::azure());
