//! [`ObjectStoreBackend`]: the [`CacheBackend`] over any `object_store` store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::envelope::now_ms;
use cache_core::{CacheBackend, CacheError, Capabilities, Health, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};

use crate::error;
use crate::naming::ObjectNaming;
use crate::settings::DEFAULT_MAX_CONCURRENCY;

/// User metadata holding an object's expiry (Unix milliseconds), written with every TTL.
///
/// Letters only: Azure requires metadata names to be C# identifiers, and some HTTP proxies drop
/// headers with `_`. On the wire: `x-amz-meta-llmcexpiresat`, `x-goog-meta-llmcexpiresat`,
/// `x-ms-meta-llmcexpiresat`.
pub const EXPIRES_AT_METADATA: &str = "llmcexpiresat";

/// Content type of a JSON entry (the envelope of `entry_format: json`).
pub const CONTENT_TYPE: &str = "application/json";
/// Content type of a compact (binary) entry.
pub const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

/// Deadline of the background delete of an expired object.
const EXPIRED_DELETE_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates a missing bucket or container when a write finds it absent (Azure).
#[async_trait]
pub(crate) trait Provisioner: Send + Sync + fmt::Debug + 'static {
    /// Creates the container; returns whether it now exists.
    async fn ensure(&self) -> bool;
}

/// A cache backend storing each entry as one object in S3, GCS, Azure Blob or any other
/// [`ObjectStore`].
///
/// * Object names: prefix + one folder per namespace level + the key's hash (see
///   [`ObjectNaming`]); content type `application/json` for the JSON envelope,
///   `application/octet-stream` for the compact one (the default: `entry_format`).
/// * TTL: the expiry is written as user metadata (`llmcexpiresat`, Unix ms) besides the
///   envelope's own `expires_at`. `get` treats an expired object as missing and deletes it in
///   the background; objects nobody reads again stay until `delete`, `clear` or a bucket
///   lifecycle rule removes them, so [`Capabilities::native_ttl`] is `false`.
/// * Batches (`get_many`, `set_many`) run concurrently, at most `max_concurrency` requests at a
///   time, in key order.
/// * `clear(Some(ns))` lists and deletes the objects under `prefix/ns/`; `clear(None)` everything
///   under the prefix (the whole bucket when no prefix is configured).
/// * `ping` writes, reads back and deletes a small object under `prefix/%llm-cache-health/`.
/// * Errors are [`CacheError::Backend`]s with an honest transient flag; a missing object is a
///   miss.
pub struct ObjectStoreBackend {
    name: String,
    store: Arc<dyn ObjectStore>,
    naming: ObjectNaming,
    max_concurrency: usize,
    details: BTreeMap<String, String>,
    provisioner: Option<Arc<dyn Provisioner>>,
}

impl fmt::Debug for ObjectStoreBackend {
    // The store's `Display` (e.g. `AmazonS3(bucket)`), never its `Debug`: that would include
    // the credential provider.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("name", &self.name)
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.naming.prefix())
            .field("max_concurrency", &self.max_concurrency)
            .field("details", &self.details)
            .finish()
    }
}

impl ObjectStoreBackend {
    /// A backend named `name` (for logs and metrics: `s3`, `gcs`, `azure-blob`, ...) over any
    /// store, with objects named by `naming`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cache_object_store::{ObjectNaming, ObjectStoreBackend};
    /// use object_store::memory::InMemory;
    ///
    /// let naming = ObjectNaming::new(Some("llm-cache")).unwrap();
    /// let backend = ObjectStoreBackend::new("memory-objects", Arc::new(InMemory::new()), naming)
    ///     .with_max_concurrency(8);
    /// assert_eq!(cache_core::CacheBackend::name(&backend), "memory-objects");
    /// ```
    pub fn new(name: impl Into<String>, store: Arc<dyn ObjectStore>, naming: ObjectNaming) -> Self {
        ObjectStoreBackend {
            name: name.into(),
            store,
            naming,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            details: BTreeMap::new(),
            provisioner: None,
        }
    }

    /// Bounds the concurrent requests of one batch (at least 1).
    pub fn with_max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Adds a fact reported by `ping` (bucket, endpoint, ...). Never a secret.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    #[cfg_attr(not(feature = "azure"), allow(dead_code))]
    pub(crate) fn with_provisioner(mut self, p: Arc<dyn Provisioner>) -> Self {
        self.provisioner = Some(p);
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// How keys map to object names.
    pub fn naming(&self) -> &ObjectNaming {
        &self.naming
    }

    /// The object path of a cache key.
    pub fn object_path(&self, key: &str) -> Path {
        self.naming.object_path(key)
    }

    fn err(&self, op: &'static str, e: object_store::Error) -> CacheError {
        error::map(&self.name, op, e)
    }

    /// Deletes an expired object off the caller's path. A write racing with it may be lost
    /// (one extra miss), never served stale.
    fn delete_expired(&self, path: Path) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let name = self.name.clone();
        rt.spawn(async move {
            match tokio::time::timeout(EXPIRED_DELETE_TIMEOUT, store.delete(&path)).await {
                Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {
                    tracing::debug!(backend = %name, path = %path, "deleted expired object");
                }
                Ok(Err(e)) => {
                    tracing::debug!(backend = %name, path = %path, error = %e, "could not delete expired object");
                }
                Err(_) => {
                    tracing::debug!(backend = %name, path = %path, "timed out deleting expired object");
                }
            }
        });
    }

    async fn put(&self, path: &Path, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let mut attributes = Attributes::with_capacity(2);
        // The JSON envelope is served as JSON; the compact (binary) one as bytes.
        let content_type = if value.first() == Some(&b'{') {
            CONTENT_TYPE
        } else {
            BINARY_CONTENT_TYPE
        };
        attributes.insert(Attribute::ContentType, content_type.into());
        if let Some(ttl) = ttl {
            let expires =
                now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            attributes.insert(
                Attribute::Metadata(EXPIRES_AT_METADATA.into()),
                expires.to_string().into(),
            );
        }
        let opts = PutOptions::from(attributes);
        let payload = PutPayload::from_bytes(value);
        match self
            .store
            .put_opts(path, payload.clone(), opts.clone())
            .await
        {
            Ok(_) => Ok(()),
            // A missing container (Azure) is created, if permitted, and the write retried once.
            Err(object_store::Error::NotFound { .. }) if self.provisioner.is_some() => {
                let created = match &self.provisioner {
                    Some(p) => p.ensure().await,
                    None => false,
                };
                if !created {
                    return Err(CacheError::backend(
                        &self.name,
                        "set",
                        false,
                        "the container does not exist and could not be created",
                    ));
                }
                self.store
                    .put_opts(path, payload, opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.err("set", e))
            }
            Err(e) => Err(self.err("set", e)),
        }
    }
}

/// The expiry recorded in an object's metadata, if any.
fn expires_at(attributes: &Attributes) -> Option<u64> {
    attributes
        .get(&Attribute::Metadata(EXPIRES_AT_METADATA.into()))
        .and_then(|v| v.as_ref().trim().parse().ok())
}

fn health_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        now_ms(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[async_trait]
impl CacheBackend for ObjectStoreBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::local()
            .with_shared(true)
            .with_persistent(true)
            .with_native_ttl(false)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.object_path(key);
        let res = match self.store.get_opts(&path, GetOptions::default()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err("get", e)),
        };
        if expires_at(&res.attributes).is_some_and(|e| now_ms() >= e) {
            drop(res);
            self.delete_expired(path);
            return Ok(None);
        }
        match res.bytes().await {
            Ok(b) => Ok(Some(b)),
            // Deleted between the answer's headers and its body.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("get", e)),
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.put(&self.object_path(key), value, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        // S3 and GCS servers differ on deleting a missing object (success vs 404): `true`
        // means "existed, or the store does not say".
        match self.store.delete(&self.object_path(key)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("delete", e)),
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        // The futures are built up front: a lazily mapped iterator trips the compiler's
        // higher-ranked lifetime inference inside `async_trait`.
        let gets: Vec<_> = keys.iter().map(|k| self.get(k)).collect();
        futures::stream::iter(gets)
            .buffered(self.max_concurrency)
            .try_collect()
            .await
    }

    async fn set_many(&self, entries: Vec<(String, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let sets: Vec<_> = entries
            .into_iter()
            .map(|(k, v)| async move { self.set(&k, v, ttl).await })
            .collect();
        futures::stream::iter(sets)
            .buffer_unordered(self.max_concurrency)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let folder = match namespace {
            Some(ns) => Some(self.naming.namespace_folder(ns)),
            None => self.naming.root(),
        };
        // `list` matches whole path segments: `prefix/ns` lists `prefix/ns/...` only, never
        // `prefix/nsx/...`.
        let locations = self
            .store
            .list(folder.as_ref())
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        let mut n = 0u64;
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) => n += 1,
                // Deleted concurrently (another clear, an expiry delete).
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err("clear", e)),
            }
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<Health> {
        let start = Instant::now();
        let path = self.naming.health_object(&health_id());
        let probe = Bytes::from(format!("{{\"llm_cache_health\":{}}}", now_ms()));
        self.put(&path, probe.clone(), Some(Duration::from_secs(60)))
            .await
            .map_err(|e| match e {
                CacheError::Backend {
                    backend,
                    transient,
                    source,
                    ..
                } => CacheError::Backend {
                    backend,
                    operation: "ping",
                    transient,
                    source,
                },
                other => other,
            })?;
        let read = self.store.get(&path).await;
        let deleted = self.store.delete(&path).await;
        let got = read
            .map_err(|e| self.err("ping", e))?
            .bytes()
            .await
            .map_err(|e| self.err("ping", e))?;
        if got != probe {
            return Err(CacheError::backend(
                &self.name,
                "ping",
                false,
                "the health object read back differs from the one written",
            ));
        }
        match deleted {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err("ping", e)),
        }
        let mut health = Health::new(&self.name, start.elapsed())
            .with_detail("store", self.store.to_string())
            .with_detail("prefix", self.naming.prefix())
            .with_detail("writable", "true");
        for (k, v) in &self.details {
            health = health.with_detail(k, v);
        }
        Ok(health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn backend(prefix: &str) -> ObjectStoreBackend {
        ObjectStoreBackend::new(
            "memory-objects",
            Arc::new(InMemory::new()),
            ObjectNaming::new(Some(prefix)).unwrap(),
        )
    }

    #[tokio::test]
    async fn stores_json_objects_under_the_prefix() {
        let b = backend("p");
        b.set(
            "ns:abc",
            Bytes::from_static(b"{}"),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
        let res = b.store().get(&Path::from("p/ns/abc")).await.unwrap();
        assert_eq!(
            res.attributes
                .get(&Attribute::ContentType)
                .map(|v| v.as_ref()),
            Some(CONTENT_TYPE)
        );
        let exp = expires_at(&res.attributes).unwrap();
        assert!(exp > now_ms() + 50_000 && exp <= now_ms() + 60_000);
        b.set("ns:abc", Bytes::from_static(b"{}"), None)
            .await
            .unwrap();
        let res = b.store().get(&Path::from("p/ns/abc")).await.unwrap();
        assert_eq!(expires_at(&res.attributes), None, "a set replaces the TTL");
    }

    #[tokio::test]
    async fn expired_objects_are_misses_and_get_deleted() {
        let b = backend("p");
        b.set(
            "ns:k",
            Bytes::from_static(b"x"),
            Some(Duration::from_millis(1)),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(b.get("ns:k").await.unwrap(), None);
        let path = b.object_path("ns:k");
        for _ in 0..100 {
            if matches!(
                b.store().head(&path).await,
                Err(object_store::Error::NotFound { .. })
            ) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the expired object was not deleted");
    }

    #[tokio::test]
    async fn clear_none_stays_under_the_prefix() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mine =
            ObjectStoreBackend::new("a", store.clone(), ObjectNaming::new(Some("mine")).unwrap());
        let theirs = ObjectStoreBackend::new(
            "b",
            store.clone(),
            ObjectNaming::new(Some("theirs")).unwrap(),
        );
        mine.set("x", Bytes::from_static(b"1"), None).await.unwrap();
        mine.set("ns:y", Bytes::from_static(b"1"), None)
            .await
            .unwrap();
        theirs
            .set("x", Bytes::from_static(b"2"), None)
            .await
            .unwrap();
        assert_eq!(mine.clear(None).await.unwrap(), 2);
        assert_eq!(mine.get("x").await.unwrap(), None);
        assert_eq!(theirs.get("x").await.unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn debug_shows_no_store_internals() {
        let b = backend("p").with_detail("bucket", "b1");
        let s = format!("{b:?}");
        assert!(s.contains("InMemory") && s.contains("bucket"), "{s}");
    }
}
