//! The llm-cache proxy: an OpenAI-compatible caching server that reads a LiteLLM-style
//! `config.yaml`. The `llm-cache` binary (`src/main.rs`) is one line over this library:
//! [`cli::run`] with the built-in backends; a third party's binary registers its own backend
//! factory first:
//!
//! ```no_run
//! # #[derive(Debug)] struct MyFactory;
//! # #[llm_cache::async_trait]
//! # impl llm_cache::BackendFactory for MyFactory {
//! #     fn types(&self) -> &'static [&'static str] { &["mine"] }
//! #     fn keys(&self, _: &str) -> Vec<&'static str> { vec![] }
//! #     async fn build(&self, _: &str, _: &llm_cache::core::params::Params, _: &llm_cache::BuildContext)
//! #         -> llm_cache::Result<llm_cache::SharedBackend> { unimplemented!() }
//! # }
//! fn main() -> std::process::ExitCode {
//!     let registry = llm_cache::builtin_registry().with(MyFactory); // `type: mine`
//!     llm_cache_proxy::cli::run(registry)
//! }
//! ```
//!
//! * [`cli`]: the command line (`serve`, `ping`, `check-config`, `key`).
//! * [`config`]: the `config.yaml` subset (model_list, litellm_settings.cache_params,
//!   general_settings.master_key, llm_cache_settings).
//! * [`server`]: the axum application (endpoints, auth, cache headers) and [`server::Server`].
//! * [`upstream`]: routing and calls to OpenAI-compatible upstreams.
//! * [`sse`]: stream parsing, assembly for storage, and replay of stored responses.
//! * `stream`: the streaming request flow (replay, forward, fan-out, store).
//! * [`fanout`]: one in-flight upstream stream shared by identical streaming requests.
//! * [`listen`]: the accept loop: connection limits, idle timeouts, bounded shutdown.
//! * [`metrics`]: Prometheus metrics.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod accounting;
mod admin;
pub mod anthropic;
mod auth;
pub mod cli;
pub mod config;
pub mod cost;
pub mod endpoints;
pub mod fanout;
pub mod listen;
pub mod metrics;
pub mod responses;
pub mod server;
pub mod sse;
mod stream;
mod transcription;
pub mod upstream;
