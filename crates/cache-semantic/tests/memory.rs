//! The semantic conformance kit against the in-process backend.

use cache_semantic::MemorySemanticBackend;

cache_semantic::semantic_conformance!(backend = async { MemorySemanticBackend::default() });
