//! Semantic conformance kit (in progress).
