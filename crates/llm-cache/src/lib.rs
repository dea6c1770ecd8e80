//! façade
