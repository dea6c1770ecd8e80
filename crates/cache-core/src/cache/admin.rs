//! Admin operations: delete, clear, ping, flush.

use std::time::Duration;

use bytes::Bytes;

use super::engine::with_deadline;
use super::{Cache, PingReport};
use crate::backend::CacheBackend;
use crate::coordination::Invalidation;
use crate::envelope::Entry;
use crate::error::{CacheError, Result};
use crate::key::{CacheKey, CallKind};

impl Cache {
    /// Deletes entries by full key from every tier (the proxy's `/cache/delete`).
    ///
    /// A key without the configured namespace is also tried with it (`k` → `ns:k`), as LiteLLM
    /// does. Returns how many keys existed (as far as the backend knows).
    ///
    /// # Errors
    /// The backend's error (admin calls report failures instead of hiding them).
    pub async fn delete(&self, keys: &[String]) -> Result<u64> {
        let Some(engine) = self.engine() else {
            return Err(CacheError::Config("the cache is disabled".to_owned()));
        };
        if !engine.backend.capabilities().delete {
            return Err(CacheError::unsupported(engine.backend.name(), "delete"));
        }
        let mut targets: Vec<String> = Vec::with_capacity(keys.len() * 2);
        for k in keys {
            targets.push(k.clone());
            if let Some(ns) = &engine.settings.namespace
                && !k.starts_with(&format!("{ns}:"))
            {
                targets.push(format!("{ns}:{k}"));
            }
        }
        let mut deleted = 0;
        let mut failed = None;
        for k in &targets {
            engine.l1_invalidate(k);
            let existed = engine
                .admin(engine.backend.delete(k), "delete", &self.shared.stats)
                .await;
            // Again after the backend delete: a lookup that read the entry in between must not
            // leave it in L1.
            engine.l1_invalidate(k);
            match existed {
                Ok(e) => deleted += u64::from(e),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Published even after an error: the backend may have deleted some keys (or all of
        // them, and timed out answering). An extra invalidation costs a miss; a missing one
        // leaves other replicas serving deleted entries.
        engine
            .publish_invalidation(Invalidation::Keys(targets), &self.shared.stats)
            .await;
        match failed {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }

    /// Removes every entry of a namespace from every tier (default: the configured namespace;
    /// with none configured, every entry the backend owns). The proxy's `/cache/flushall`.
    ///
    /// # Errors
    /// The backend's error.
    pub async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let Some(engine) = self.engine() else {
            return Err(CacheError::Config("the cache is disabled".to_owned()));
        };
        let ns = namespace.or(engine.settings.namespace.as_deref());
        engine.l1_clear(ns);
        let n = engine
            .admin(engine.backend.clear(ns), "clear", &self.shared.stats)
            .await;
        engine.l1_clear(ns);
        // Published even after an error (a clear that timed out has removed part of the keys).
        engine
            .publish_invalidation(
                Invalidation::Clear(ns.map(str::to_owned)),
                &self.shared.stats,
            )
            .await;
        let n = n?;
        if let Some(sem) = &engine.semantic {
            engine
                .admin(sem.clear(ns), "clear", &self.shared.stats)
                .await?;
        }
        Ok(n)
    }

    /// Checks the backend: a ping plus a test write and read (LiteLLM's `/cache/ping` writes a
    /// test entry too).
    ///
    /// # Errors
    /// The backend's error when the ping fails.
    pub async fn ping(&self) -> Result<PingReport> {
        let Some(engine) = self.engine() else {
            return Err(CacheError::Config("the cache is disabled".to_owned()));
        };
        let stats = &self.shared.stats;
        let health = engine.admin(engine.backend.ping(), "ping", stats).await?;
        let key = CacheKey::new(
            engine.settings.namespace.as_deref(),
            "llm-cache-health-check",
        );
        let probe = Entry::new(
            CallKind::Chat,
            Bytes::from_static(b"{\"ping\":true}"),
            None,
            Some(Duration::from_secs(60)),
        )
        .encode();
        let set_ok = match engine
            .admin(
                engine
                    .backend
                    .set(key.as_str(), probe.clone(), Some(Duration::from_secs(60))),
                "set",
                stats,
            )
            .await
        {
            Ok(()) => matches!(
                engine.admin(engine.backend.get(key.as_str()), "get", stats).await,
                Ok(Some(v)) if v == probe
            ),
            Err(_) => false,
        };
        let semantic = match &engine.semantic {
            None => None,
            Some(s) => Some(
                engine
                    .admin(s.ping(), "ping", stats)
                    .await
                    .map_err(|e| e.to_string()),
            ),
        };
        Ok(PingReport {
            health,
            set_ok,
            breaker: engine.breaker.state(),
            semantic,
        })
    }

    /// Pings the backend and the semantic index, writing nothing: what a readiness probe asks.
    /// Bounded by the admin timeout; a failure is counted (not logged: a prober logs state
    /// changes). A ping answered while a circuit breaker is open lets the next call probe at
    /// once, so a proxy's periodic readiness check brings hits back as soon as the backend is.
    ///
    /// # Errors
    /// The first failure (backend, then semantic index). A disabled cache is always ready.
    pub async fn probe(&self) -> Result<()> {
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        let timeout = engine.settings.admin_timeout;
        let name = engine.backend.name();
        let stats = &self.shared.stats;
        if let Err(e) = with_deadline(name, "ping", timeout, engine.backend.ping()).await {
            stats.record_error(engine.backend.name(), "ping", e.kind_label());
            return Err(e);
        }
        // The backend is back: an open breaker probes with the next call instead of waiting
        // out its cool-down.
        engine.breaker.backend_answered();
        if let Some(sem) = &engine.semantic {
            if let Err(e) = with_deadline(name, "ping", timeout, sem.ping()).await {
                stats.record_error(engine.backend.name(), "ping", e.kind_label());
                return Err(e);
            }
            engine.semantic_breaker.backend_answered();
        }
        Ok(())
    }

    /// Waits (bounded) for background writes, then flushes the backend. Call on shutdown.
    ///
    /// # Errors
    /// The backend's flush error.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        engine.writes.close();
        let drained = tokio::time::timeout(timeout, engine.writes.wait()).await;
        engine.writes.reopen();
        if drained.is_err() {
            tracing::warn!(
                pending = engine.writes.len(),
                "cache flush: background writes still pending after {timeout:?}"
            );
        }
        engine
            .admin(engine.backend.flush(), "flush", &self.shared.stats)
            .await
    }
}
