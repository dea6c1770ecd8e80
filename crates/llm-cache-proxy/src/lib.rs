//! The llm-cache proxy: an OpenAI-compatible caching server that reads a LiteLLM-style
//! `config.yaml`. The `llm-cache` binary (`src/main.rs`) is a thin CLI over this library.
//!
//! * [`config`]: the `config.yaml` subset (model_list, litellm_settings.cache_params,
//!   general_settings.master_key, llm_cache_settings).
//! * [`server`]: the axum application (endpoints, auth, cache headers).
//! * [`upstream`]: routing and calls to OpenAI-compatible upstreams.
//! * [`sse`]: stream parsing, assembly for storage, and replay of stored responses.
//! * [`fanout`]: one in-flight upstream stream shared by identical streaming requests.
//! * [`metrics`]: Prometheus metrics.

pub mod config;
pub mod fanout;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod upstream;
