//! Cross-process coordination, as a third party's backend would offer it: an in-memory store
//! whose [`Coordinator`] is shared by several caches ("replicas" in one process). Proves the
//! contract with the conformance check, then what the orchestration does with it: one upstream
//! call for a burst over every replica, invalidations reaching every L1, L1 off while the
//! coordinator cannot hear, and fail-open when the coordinator errs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::coordination::{Coordinator, Invalidation, InvalidationSink, Lease, LeaseAttempt};
use cache_core::{
    Cache, CacheBackend, CacheBuilder, CacheControl, CacheError, CacheStatus, CallKind,
    Capabilities, Health, L1Config, MemoryBackend, MemoryConfig, Result, SharedBackend, Tier,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

#[derive(Default)]
struct Hub {
    leases: Mutex<HashSet<String>>,
    released: Notify,
    sinks: Mutex<Vec<Weak<dyn InvalidationSink>>>,
    /// Every call fails while set.
    broken: AtomicBool,
    /// Deletes remove the key, then report a failure (a timeout after the work was done).
    deletes_fail: AtomicBool,
    /// Backend `get`s and lease attempts, over every replica.
    gets: AtomicUsize,
    lease_attempts: AtomicUsize,
    /// Milliseconds each lease attempt takes.
    lease_delay_ms: std::sync::atomic::AtomicU64,
}

impl Hub {
    fn check(&self) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            Err(CacheError::unavailable("hub", "broken"))
        } else {
            Ok(())
        }
    }

    fn set_live(&self, live: bool) {
        for s in self.sinks.lock().unwrap().iter().filter_map(Weak::upgrade) {
            s.connection(live);
        }
    }
}

/// The hub's coordinator; with the store's entries (`reads_entry`), its lease attempt returns
/// a stored entry as Redis's script does.
#[derive(Debug)]
struct HubCoordinator(Arc<Hub>, Option<Arc<MemoryBackend>>);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

#[derive(Debug)]
struct HubLease {
    hub: Arc<Hub>,
    key: String,
}

#[async_trait]
impl Lease for HubLease {
    async fn release(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl Drop for HubLease {
    fn drop(&mut self) {
        self.hub.leases.lock().unwrap().remove(&self.key);
        self.hub.released.notify_waiters();
    }
}

#[async_trait]
impl Coordinator for HubCoordinator {
    fn name(&self) -> &str {
        "hub"
    }

    // Without the entries, never reports a stored entry: the orchestration reads it itself
    // after a wait.
    async fn try_lease(&self, key: &str, _ttl: Duration) -> Result<LeaseAttempt> {
        self.0.check()?;
        self.0.lease_attempts.fetch_add(1, Ordering::SeqCst);
        let delay = self.0.lease_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Some(data) = &self.1
            && let Some(v) = data.get(key).await?
        {
            return Ok(LeaseAttempt::Stored(v));
        }
        if self.0.leases.lock().unwrap().insert(key.to_owned()) {
            Ok(LeaseAttempt::Acquired(Box::new(HubLease {
                hub: self.0.clone(),
                key: key.to_owned(),
            })))
        } else {
            Ok(LeaseAttempt::Held)
        }
    }

    fn reads_entry(&self) -> bool {
        self.1.is_some()
    }

    async fn wait_lease(&self, key: &str, max: Duration) -> Result<bool> {
        self.0.check()?;
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let notified = self.0.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.0.leases.lock().unwrap().contains(key) {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(false);
            }
        }
    }

    async fn publish(&self, what: &Invalidation) -> Result<()> {
        self.0.check()?;
        for s in self
            .0
            .sinks
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
        {
            s.invalidate(what);
        }
        Ok(())
    }

    fn subscribe(&self, sink: Weak<dyn InvalidationSink>) {
        if let Some(s) = sink.upgrade() {
            s.connection(true);
        }
        self.0.sinks.lock().unwrap().push(sink);
    }
}

/// The shared store: one memory backend behind every replica's handle, with the hub.
#[derive(Debug)]
struct SharedStore {
    data: Arc<MemoryBackend>,
    coordinator: Arc<HubCoordinator>,
}

#[async_trait]
impl CacheBackend for SharedStore {
    fn name(&self) -> &str {
        "shared-memory"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::local().with_shared(true)
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.coordinator.0.gets.fetch_add(1, Ordering::SeqCst);
        self.data.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.data.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        let existed = self.data.delete(key).await?;
        if self.coordinator.0.deletes_fail.load(Ordering::SeqCst) {
            return Err(CacheError::unavailable("shared-memory", "answer lost"));
        }
        Ok(existed)
    }
    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        self.data.clear(namespace).await
    }
    async fn ping(&self) -> Result<Health> {
        Ok(Health::new("shared-memory", Duration::ZERO))
    }
    fn coordinator(&self) -> Option<Arc<dyn Coordinator>> {
        Some(self.coordinator.clone())
    }
}

struct Fleet {
    hub: Arc<Hub>,
    replicas: Vec<Cache>,
}

fn fleet(n: usize, l1: bool) -> Fleet {
    fleet_with(n, l1, false)
}

/// `reads`: the coordinator reads the entry with the lease (`reads_entry`).
fn fleet_with(n: usize, l1: bool, reads: bool) -> Fleet {
    let hub = Arc::new(Hub::default());
    let data = Arc::new(MemoryBackend::default());
    let replicas = (0..n)
        .map(|_| {
            let store: SharedBackend = Arc::new(SharedStore {
                data: data.clone(),
                coordinator: Arc::new(HubCoordinator(hub.clone(), reads.then(|| data.clone()))),
            });
            let mut b = CacheBuilder::from_shared(store);
            if l1 {
                b = b.l1(L1Config::new(
                    MemoryConfig::default().with_max_items(Some(100)),
                    Duration::from_secs(60),
                ));
            }
            // A slow store (`lease_delay_ms`) is slow, not failing.
            b.configure(|s| s.read_timeout = Duration::from_secs(2))
                .build()
        })
        .collect();
    Fleet { hub, replicas }
}

/// One replica over a store with a reading coordinator, holding the answer to `request(text)`
/// (one upstream call, counted by the returned counter), `age` old.
async fn one_stored(text: &str, age: Duration) -> (Fleet, Value, Arc<AtomicUsize>) {
    let f = fleet_with(1, false, true);
    let upstream = Arc::new(AtomicUsize::new(0));
    let req = request(text);
    call(&f.replicas[0], &req, &upstream).await;
    f.replicas[0].flush(Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(age).await;
    (f, req, upstream)
}

fn request(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
}

async fn call(cache: &Cache, req: &Value, upstream: &AtomicUsize) -> (Value, CacheStatus) {
    let out = cache
        .get_or_fetch(CallKind::Chat, req, &CacheControl::none(), || async {
            let n = upstream.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<Value, std::io::Error>(
                json!({"choices": [{"message": {"content": format!("answer {n}")}}]}),
            )
        })
        .await
        .unwrap();
    (out.value, out.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_keeps_the_coordinator_contract() {
    let f = fleet(1, false);
    let b: SharedBackend = Arc::new(SharedStore {
        data: Arc::new(MemoryBackend::default()),
        coordinator: Arc::new(HubCoordinator(f.hub.clone(), None)),
    });
    cache_core::testing::coordination(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reading_hub_keeps_the_coordinator_contract() {
    let f = fleet(1, false);
    let data = Arc::new(MemoryBackend::default());
    let b: SharedBackend = Arc::new(SharedStore {
        data: data.clone(),
        coordinator: Arc::new(HubCoordinator(f.hub.clone(), Some(data))),
    });
    cache_core::testing::coordination(&b).await;
}

/// With a coordinator that reads the entry with the lease, a request that coordinates makes
/// one store call for its lookup and its lease: a storing miss makes no `get`, a hit is served
/// from the lease attempt and counted as a backend hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_reads_the_entry_is_the_lookup() {
    let f = fleet_with(2, false, true);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let upstream = AtomicUsize::new(0);
    let req = request("one trip");
    let (_, status) = call(a, &req, &upstream).await;
    assert!(
        matches!(
            status,
            CacheStatus::Miss {
                reason: cache_core::MissReason::NotFound,
                store: cache_core::StoreOutcome::Stored,
            }
        ),
        "{status:?}"
    );
    assert_eq!(
        f.hub.gets.load(Ordering::SeqCst),
        0,
        "no get for a storing miss"
    );
    assert_eq!(f.hub.lease_attempts.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().misses.load(Ordering::Relaxed), 1);
    a.flush(Duration::from_secs(1)).await.unwrap();

    for _ in 0..2 {
        let (v, status) = call(b, &req, &upstream).await;
        assert_eq!(v["choices"][0]["message"]["content"], "answer 0");
        assert!(
            matches!(
                status,
                CacheStatus::Hit {
                    tier: Tier::Backend,
                    ..
                }
            ),
            "{status:?}"
        );
    }
    assert_eq!(upstream.load(Ordering::SeqCst), 1);
    assert_eq!(
        f.hub.gets.load(Ordering::SeqCst),
        0,
        "hits read with the lease attempt"
    );
    assert_eq!(f.hub.lease_attempts.load(Ordering::SeqCst), 3);
    let s = b.stats();
    assert_eq!(s.hits_backend.load(Ordering::Relaxed), 2);
    assert_eq!(s.misses.load(Ordering::Relaxed), 0);
    assert_eq!(s.coalesced.load(Ordering::Relaxed), 0);
    assert!(
        f.hub.leases.lock().unwrap().is_empty(),
        "no lease left held"
    );

    // `no-store` and `only-if-cached` requests do not coordinate: a plain read.
    let out = b
        .get_or_fetch(
            CallKind::Chat,
            &req,
            &CacheControl::none().with_no_store(),
            || async { Ok::<Value, std::io::Error>(json!({})) },
        )
        .await
        .unwrap();
    assert!(out.status.is_hit(), "{:?}", out.status);
    assert_eq!(f.hub.gets.load(Ordering::SeqCst), 1);
}

/// The leader reads with its lease attempt only while most recent reads miss: a run of hits
/// switches it to a plain `get` (the store's cheaper read), a run of misses switches it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_read_is_used_while_reads_mostly_miss() {
    let f = fleet_with(1, false, true);
    let cache = &f.replicas[0];
    let upstream = AtomicUsize::new(0);
    let req = request("popular");
    call(cache, &req, &upstream).await;
    cache.flush(Duration::from_secs(1)).await.unwrap();
    let leases = || f.hub.lease_attempts.load(Ordering::SeqCst);
    let gets = || f.hub.gets.load(Ordering::SeqCst);
    let (l0, g0) = (leases(), gets());
    for _ in 0..40 {
        let (_, status) = call(cache, &req, &upstream).await;
        assert!(status.is_hit(), "{status:?}");
    }
    let (lease_reads, get_reads) = (leases() - l0, gets() - g0);
    assert_eq!(lease_reads + get_reads, 40, "one read per hit");
    assert!(
        (18..=26).contains(&lease_reads),
        "{lease_reads} hits read with the lease: it should stop once half the reads hit (~22)"
    );
    // Now misses: a `get`, then the lease, until they bring the share of hits below half.
    let mut last = (0, 0);
    for i in 0..40 {
        let (l, g) = (leases(), gets());
        cache
            .get_or_fetch(
                CallKind::Chat,
                &request(&format!("new {i}")),
                &CacheControl::none(),
                || async { Ok::<Value, std::io::Error>(json!({"choices": []})) },
            )
            .await
            .unwrap();
        last = (leases() - l, gets() - g);
    }
    assert_eq!(
        last,
        (1, 0),
        "a miss after a run of misses: the lease attempt alone"
    );
}

/// Concurrent identical requests on one replica over a stored entry, while the store is slow:
/// the in-process leader's one lease attempt answers every follower whose `max-age` its entry
/// satisfies, each counted as a hit; one whose `max-age` it does not satisfy reads the store
/// itself and goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_read_answers_its_followers_within_their_max_age() {
    let (f, req, upstream) = one_stored("handed on", Duration::from_millis(1100)).await;
    let cache = &f.replicas[0];
    // The leader's read takes 500 ms; the strict request joins 20 ms in: a follower.
    f.hub.lease_delay_ms.store(500, Ordering::SeqCst);
    let (attempts, gets) = (
        f.hub.lease_attempts.load(Ordering::SeqCst),
        f.hub.gets.load(Ordering::SeqCst),
    );
    let strict = CacheControl::none().with_max_age(Duration::from_secs(1));
    let outs = futures::future::join_all((0..11).map(|i| {
        let (cache, req, upstream) = (cache.clone(), req.clone(), upstream.clone());
        let cc = if i == 10 {
            strict.clone()
        } else {
            CacheControl::none()
        };
        async move {
            // The strict one joins last: a follower.
            if i == 10 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cache
                .get_or_fetch(CallKind::Chat, &req, &cc, || async {
                    upstream.fetch_add(1, Ordering::SeqCst);
                    Ok::<Value, std::io::Error>(
                        json!({"choices": [{"message": {"content": "new"}}]}),
                    )
                })
                .await
                .unwrap()
                .status
        }
    }))
    .await;
    for status in &outs[..10] {
        assert!(
            matches!(
                status,
                CacheStatus::Hit {
                    tier: Tier::Backend,
                    ..
                }
            ),
            "{status:?}"
        );
    }
    assert!(
        matches!(
            outs[10],
            CacheStatus::Miss {
                reason: cache_core::MissReason::Stale,
                ..
            }
        ),
        "{:?}",
        outs[10]
    );
    assert_eq!(
        upstream.load(Ordering::SeqCst),
        2,
        "only the strict one went upstream"
    );
    assert_eq!(cache.stats().hits_backend.load(Ordering::Relaxed), 10);
    // One lease attempt for the ten, one `get` and one lease attempt for the strict one.
    assert_eq!(f.hub.gets.load(Ordering::SeqCst) - gets, 1);
    assert_eq!(f.hub.lease_attempts.load(Ordering::SeqCst) - attempts, 2);
}

/// Concurrent identical requests on one replica over a stored entry: the in-process leader's
/// lease attempt finds it, and the others read it themselves: every one is a hit (none
/// reported coalesced), and none goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hits_behind_a_reading_lease_are_hits() {
    let (f, req, upstream) = one_stored("many hits", Duration::ZERO).await;
    let cache = &f.replicas[0];
    // A slow read, so that the other 19 join the first one's flight.
    f.hub.lease_delay_ms.store(200, Ordering::SeqCst);
    let reads = || f.hub.lease_attempts.load(Ordering::SeqCst) + f.hub.gets.load(Ordering::SeqCst);
    let before = reads();
    let outs = futures::future::join_all((0..20).map(|_| {
        let (cache, req, upstream) = (cache.clone(), req.clone(), upstream.clone());
        async move { call(&cache, &req, &upstream).await }
    }))
    .await;
    for (v, status) in &outs {
        assert_eq!(v["choices"][0]["message"]["content"], "answer 0");
        assert!(status.is_hit(), "{status:?}");
    }
    assert_eq!(upstream.load(Ordering::SeqCst), 1);
    assert_eq!(
        reads() - before,
        1,
        "one store read for the 20 concurrent hits"
    );
    let s = cache.stats();
    assert_eq!(s.hits_backend.load(Ordering::Relaxed), 20);
    assert_eq!(s.misses.load(Ordering::Relaxed), 1);
}

/// A leader whose read finds an entry too old for its own `max-age` goes upstream outside the
/// flight: the requests waiting behind it read the entry themselves and hit, instead of
/// waiting for its upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_leader_does_not_hold_back_followers_that_can_hit() {
    let (f, req, upstream) = one_stored("strict leader", Duration::from_millis(1100)).await;
    let cache = &f.replicas[0];
    f.hub.lease_delay_ms.store(300, Ordering::SeqCst);
    let strict = CacheControl::none().with_max_age(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let outs = futures::future::join_all((0..6).map(|i| {
        let (cache, req, upstream, strict) =
            (cache.clone(), req.clone(), upstream.clone(), strict.clone());
        async move {
            // The strict one leads; the others join 20 ms later.
            let cc = if i == 0 {
                strict
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                CacheControl::none()
            };
            let out = cache
                .get_or_fetch(CallKind::Chat, &req, &cc, || async {
                    upstream.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok::<Value, std::io::Error>(
                        json!({"choices": [{"message": {"content": "new"}}]}),
                    )
                })
                .await
                .unwrap();
            (out.status, started.elapsed())
        }
    }))
    .await;
    assert!(
        matches!(
            outs[0].0,
            CacheStatus::Miss {
                reason: cache_core::MissReason::Stale,
                ..
            }
        ),
        "{:?}",
        outs[0].0
    );
    for (status, after) in &outs[1..] {
        assert!(status.is_hit(), "{status:?}");
        assert!(
            *after < Duration::from_secs(2),
            "a follower waited {after:?}, as long as the strict leader's upstream call"
        );
    }
    assert_eq!(
        upstream.load(Ordering::SeqCst),
        2,
        "only the strict one went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_every_replica_makes_one_upstream_call() {
    burst(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_every_replica_makes_one_upstream_call_with_a_reading_lease() {
    burst(true).await;
}

async fn burst(reads: bool) {
    let f = fleet_with(3, false, reads);
    let upstream = Arc::new(AtomicUsize::new(0));
    let req = request("burst");
    let outs = futures::future::join_all((0..30).map(|i| {
        let (cache, req, upstream) = (f.replicas[i % 3].clone(), req.clone(), upstream.clone());
        async move { call(&cache, &req, &upstream).await }
    }))
    .await;
    assert_eq!(upstream.load(Ordering::SeqCst), 1);
    for (v, _) in &outs {
        assert_eq!(v, &outs[0].0);
    }
    let remote: u64 = f
        .replicas
        .iter()
        .map(|c| c.stats().coalesced_remote.load(Ordering::Relaxed))
        .sum();
    assert_eq!(
        remote, 2,
        "the two other replicas' leaders waited for the lease"
    );
    let (misses, coalesced): (u64, u64) = f.replicas.iter().fold((0, 0), |(m, c), r| {
        let s = r.stats();
        (
            m + s.misses.load(Ordering::Relaxed),
            c + s.coalesced.load(Ordering::Relaxed),
        )
    });
    assert_eq!(misses, 30, "every request of the burst missed");
    assert_eq!(coalesced, 29, "all but the leader were answered by it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_coordinator_fails_open() {
    broken(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reading_coordinator_fails_open() {
    broken(true).await;
}

async fn broken(reads: bool) {
    let f = fleet_with(2, false, reads);
    f.hub.broken.store(true, Ordering::SeqCst);
    let upstream = AtomicUsize::new(0);
    let (v, status) = call(&f.replicas[0], &request("broken"), &upstream).await;
    assert_eq!(v["choices"][0]["message"]["content"], "answer 0");
    assert!(matches!(status, CacheStatus::Miss { .. }), "{status:?}");
    let errors = f.replicas[0].stats().errors();
    assert!(
        errors.keys().any(|(_, op, _)| *op == "lease"),
        "the failed lease is counted: {errors:?}"
    );
}

/// A stores `req`'s answer, B reads it into its L1 (checked); returns the key.
async fn stored_by_a_in_l1_of_b(
    a: &Cache,
    b: &Cache,
    req: &Value,
    upstream: &AtomicUsize,
) -> String {
    call(a, req, upstream).await;
    a.flush(Duration::from_secs(1)).await.unwrap();
    call(b, req, upstream).await;
    let (_, status) = call(b, req, upstream).await;
    assert!(
        matches!(status, CacheStatus::Hit { tier: Tier::L1, .. }),
        "{status:?}"
    );
    a.prepare(
        CallKind::Chat,
        req,
        &CacheControl::none(),
        &Default::default(),
    )
    .unwrap()
    .key()
    .unwrap()
    .as_str()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_l1_and_l1_is_off_while_deaf() {
    let f = fleet(2, true);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let upstream = AtomicUsize::new(0);
    let req = request("inv");
    let key = stored_by_a_in_l1_of_b(a, b, &req, &upstream).await;

    // A delete on A reaches B's L1.
    assert_eq!(a.delete(&[key]).await.unwrap(), 1);
    let (_, status) = call(b, &req, &upstream).await;
    assert!(matches!(status, CacheStatus::Miss { .. }), "{status:?}");
    b.flush(Duration::from_secs(1)).await.unwrap();

    // A clear on B reaches A's L1.
    call(a, &req, &upstream).await;
    let (_, status) = call(a, &req, &upstream).await;
    assert!(
        matches!(status, CacheStatus::Hit { tier: Tier::L1, .. }),
        "{status:?}"
    );
    b.clear(None).await.unwrap();
    let (_, status) = call(a, &req, &upstream).await;
    assert!(matches!(status, CacheStatus::Miss { .. }), "{status:?}");
    a.flush(Duration::from_secs(1)).await.unwrap();

    // Deaf: L1 emptied and bypassed (served from the store), then back.
    call(a, &req, &upstream).await;
    f.hub.set_live(false);
    assert!(!a.engine().unwrap().l1_live());
    for _ in 0..2 {
        let (_, status) = call(a, &req, &upstream).await;
        assert!(
            matches!(
                status,
                CacheStatus::Hit {
                    tier: Tier::Backend,
                    ..
                }
            ),
            "{status:?}"
        );
    }
    f.hub.set_live(true);
    call(a, &req, &upstream).await;
    let (_, status) = call(a, &req, &upstream).await;
    assert!(
        matches!(status, CacheStatus::Hit { tier: Tier::L1, .. }),
        "{status:?}"
    );
}

/// A delete that fails after the store removed the key still reaches the other replicas' L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_still_invalidates_the_other_replicas() {
    let f = fleet(2, true);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let upstream = AtomicUsize::new(0);
    let req = request("failed delete");
    let key = stored_by_a_in_l1_of_b(a, b, &req, &upstream).await;
    f.hub.deletes_fail.store(true, Ordering::SeqCst);
    assert!(a.delete(&[key]).await.is_err(), "the failure is reported");
    let (_, status) = call(b, &req, &upstream).await;
    assert!(
        matches!(status, CacheStatus::Miss { .. }),
        "B's L1 kept the deleted entry: {status:?}"
    );
}
