//! Coordination between processes that share one store: cross-replica coalescing (a lease per
//! key) and cross-replica invalidation of the in-memory L1 tier.
//!
//! A shared backend (Redis) may offer a [`Coordinator`] through
//! [`CacheBackend::coordinator`](crate::CacheBackend::coordinator). The orchestration then:
//!
//! * **coalesces across replicas**: the process-local leader of a miss asks for the key's lease
//!   ([`Coordinator::try_lease`]). The one replica that gets it calls upstream, stores the entry,
//!   then releases the lease ([`Lease::release`]), which wakes the others. They had been waiting
//!   ([`Coordinator::wait_lease`]) and now answer from the stored entry. A lease expires by itself
//!   if its holder dies; a waiter gives up after `coalesce_timeout` and calls upstream itself.
//!   A coordinator whose lease attempt returns the stored entry ([`Coordinator::reads_entry`])
//!   may also serve as the read of the requests that will coordinate (one round trip for
//!   both); the orchestration does so while most recent reads miss.
//! * **invalidates L1 everywhere**: a delete, a clear or a `no-cache` refresh is published
//!   ([`Coordinator::publish`]); every replica's engine receives it through its
//!   [`InvalidationSink`] and drops the keys from its L1. While the coordinator cannot hear
//!   invalidations ([`InvalidationSink::connection`] with `false`), L1 is emptied and not used:
//!   a replica never serves an entry another replica has deleted.
//!
//! Every call is bounded by the cache's deadlines and fails open: a coordinator that errs makes
//! the request go upstream alone, as it would without coordination.

use std::fmt::Debug;
use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// What a lease attempt found.
#[derive(Debug)]
pub enum LeaseAttempt {
    /// The lease is ours: call upstream, store, then release it.
    Acquired(Box<dyn Lease>),
    /// Another process holds the lease: wait for it.
    Held,
    /// The entry is already stored (a leader finished just before): answer from these bytes.
    /// Coordinators that cannot read the entry in the same step never return it.
    Stored(Bytes),
}

/// A held lease. Renewed by the coordinator while held; released by [`Lease::release`] or,
/// when dropped without it, in the background (and at worst by expiry).
#[async_trait]
pub trait Lease: Send + Sync + Debug {
    /// Releases the lease (only if still ours) and wakes the processes waiting for it.
    async fn release(self: Box<Self>) -> Result<()>;

    /// Whether [`Lease::store_and_release`] is offered: the coordinator's store is the
    /// backend's own, and it can write the entry and release the lease in one step (one round
    /// trip instead of two). Default: no.
    fn stores_entry(&self) -> bool {
        false
    }

    /// Stores `value` under the leased key (expiring after `ttl`, `None`: never; never called
    /// with a zero `ttl`) exactly as [`CacheBackend::set`](crate::CacheBackend::set) would,
    /// then releases the lease as [`Lease::release`] does. Called instead of the backend's
    /// `set` and `release` when [`Lease::stores_entry`] says so. An error means the entry may
    /// not be stored; the lease is then released in the background or expires.
    async fn store_and_release(self: Box<Self>, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let _ = (value, ttl);
        Err(crate::CacheError::Unsupported {
            backend: "coordinator".to_owned(),
            operation: "store_and_release",
        })
    }
}

/// What an invalidation removes from every replica's L1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// These full keys.
    Keys(Vec<String>),
    /// Every key of a namespace (`None`: every key).
    Clear(Option<String>),
}

/// Receives invalidations published by other processes (the cache engine implements it).
pub trait InvalidationSink: Send + Sync {
    /// Drops what `what` names from the local tier.
    fn invalidate(&self, what: &Invalidation);

    /// The coordinator can (`true`) or cannot (`false`) hear invalidations. Either way the
    /// local tier is emptied: what it holds may have been invalidated unheard.
    fn connection(&self, live: bool);
}

/// Cross-process coordination offered by a shared backend. Object safe; see the module docs.
///
/// # Contract (checked by `cache_core::testing::check_coordinator`)
/// * At most one caller holds the lease of a key at a time, across every process using the
///   store; a lease not released expires after its `ttl` unless its holder is alive (the
///   coordinator renews it while the [`Lease`] exists).
/// * [`Lease::release`] of a lease that expired and was taken by another never releases the
///   other's lease (leases are fenced by a token).
/// * [`Coordinator::wait_lease`] returns `Ok(true)` soon after the lease is released or
///   expires, `Ok(false)` after `max` if it is still held.
/// * [`Coordinator::publish`] reaches the sinks of every process subscribed to the same store,
///   this one included.
#[async_trait]
pub trait Coordinator: Send + Sync + Debug + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &str;

    /// Tries to take the lease of the entry `key` for `ttl`.
    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<LeaseAttempt>;

    /// Whether [`Coordinator::try_lease`] reads the entry in the same step: it answers
    /// [`LeaseAttempt::Stored`] whenever the entry `key` is stored, and takes the lease only
    /// when it is not. The orchestration may then let the lease attempt of a request that will
    /// coordinate be its read too (one round trip for both), which it does while most recent
    /// reads miss (checked by the conformance kit). Default: no.
    fn reads_entry(&self) -> bool {
        false
    }

    /// Waits until the lease of `key` is free (`true`) or `max` has passed (`false`).
    async fn wait_lease(&self, key: &str, max: Duration) -> Result<bool>;

    /// Publishes an invalidation to every subscribed process.
    async fn publish(&self, what: &Invalidation) -> Result<()>;

    /// Registers a sink for invalidations published by any process. The coordinator drops the
    /// sink once it is gone. It calls [`InvalidationSink::connection`] with `true` once it
    /// hears invalidations (and again after each reconnection), `false` when it stops.
    fn subscribe(&self, sink: Weak<dyn InvalidationSink>);
}
