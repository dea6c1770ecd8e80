//! The fuzz targets, one module each.

pub mod cache_control;
pub mod config;
pub mod directives;
pub mod embeddings;
pub mod envelope;
pub mod key;
pub mod semantic_guard;
pub mod sse;
