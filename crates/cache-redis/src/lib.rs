//! # cache-redis
//!
//! The Redis backend of llm-cache (`type: redis`): one [`RedisBackend`] for a standalone
//! server, a Redis Cluster or a Sentinel-managed master, configured with LiteLLM's
//! `cache_params` names and `REDIS_*` environment variables ([`RedisConfig::from_params`]).
//! Built on [fred](https://docs.rs/fred).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cache_core::CacheError> {
//! use cache_core::Cache;
//! use cache_redis::{RedisBackend, RedisConfig};
//!
//! let backend = RedisBackend::connect(RedisConfig::standalone("127.0.0.1", 6379)).await?;
//! let cache = Cache::builder(backend).namespace("myapp").build();
//! # let _ = cache; Ok(()) }
//! ```
//!
//! Semantics (see `docs/backends/redis.md`):
//! * keys are the core's `namespace:hash`; values the core's envelope, stored with
//!   `SET key value PX ttl`, or without expiry when no TTL is configured;
//! * batches use `MGET` and pipelines, grouped by hash slot on a Cluster;
//! * `clear(Some(ns))` removes `ns:*` (glob-escaped) by `SCAN` + `UNLINK` on every master;
//!   `clear(None)` removes the keys shaped like entries ([`is_entry_key`]); never `FLUSHALL`;
//! * several processes over one store coalesce their misses and invalidate each other's L1
//!   through [`RedisCoordinator`] (a lease per key, one pub/sub channel);
//! * connecting never blocks or fails when Redis is down: commands fail fast while the pool
//!   reconnects with backoff.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

mod backend;
pub mod config;
pub mod coordination;
pub mod factory;
mod keys;
mod reads;

#[cfg(feature = "tls")]
pub use backend::tls_config;
pub use backend::{RedisBackend, connection_pool};
pub use config::{Node, RedisConfig, Topology};
pub use coordination::RedisCoordinator;
pub use factory::RedisFactory;
pub use keys::{escape_glob, is_entry_key};
