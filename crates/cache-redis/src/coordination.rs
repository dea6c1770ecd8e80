//! [`RedisCoordinator`]: cross-replica coalescing and L1 invalidation over the Redis the
//! replicas share (see `cache_core::coordination`).
//!
//! * **Leases.** `try_lease` runs one script on the entry's node: the entry if it is stored,
//!   else `SET <lease> <token> NX PX <ttl>`. The lease key hashes to the entry's slot on a
//!   Cluster (`llm-cache:lease:{<tag>}:<key>`, `<tag>` a short string of that slot), so the two
//!   keys are read and written in one step. Lease keys end in `:lease`, so `clear(None)` (which
//!   removes keys shaped like entries) leaves them to expire. The holder renews the lease every third of its TTL
//!   while it lives; a release deletes it only if the token is still ours (fencing) and
//!   publishes a wake-up if a waiter marked itself (`<lease stem>:waiters`, set by the
//!   waiter's check of the lease in the same script, so no wake-up is lost and a release
//!   nobody waits for sends no message to every replica). The holder's entry write and its
//!   release are one script (`Lease::store_and_release`): a storing miss costs one round trip
//!   for the lease and one for the write.
//! * **Wake-ups and invalidations** travel on one pub/sub channel, [`CHANNEL`], that a
//!   dedicated connection subscribes to (again after each reconnection). A waiter also polls the
//!   lease with a bounded backoff (10 ms doubling to 250 ms), so a holder that died (its lease
//!   expired, with no wake-up) is noticed within the lease TTL plus 250 ms.
//! * **Connection state.** While the subscription is down (an error, an unresponsive server, a
//!   lagging receiver, or this process's own heartbeat, published every second on a channel
//!   only this process subscribes to, not heard back within 3 s) the sinks are told `connection(false)`: the engines empty and bypass L1.
//!   After each (re)subscription, once this process's heartbeat has come back through it (a
//!   server that refuses writes accepts a subscription but delivers nothing), they are told
//!   `connection(true)` and L1 starts again, empty.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::coordination::{Coordinator, Invalidation, InvalidationSink, Lease, LeaseAttempt};
use cache_core::{CacheError, Result};
use fred::prelude::{
    Client, ClientLike, Error as FredError, ErrorKind, EventInterface, LuaInterface, Options, Pool,
    PubsubInterface, Value,
};
use fred::util::redis_keyslot;
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// The pub/sub channel of wake-ups and invalidations.
pub const CHANNEL: &str = "llm-cache:coordination";

const NAME: &str = "redis-coordinator";

/// How long this process's own heartbeat may take to come back before the subscription is
/// declared lost (heartbeats go out every second).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// The channel this process's heartbeats travel on (`<CHANNEL>:heartbeat:<origin>`): only this
/// process subscribes to it.
fn heartbeat_channel(origin: &str) -> String {
    format!("{CHANNEL}:heartbeat:{origin}")
}

/// The entry if stored (`{2, value}`), else the lease if free (`{1}`), else `{0}`.
const ACQUIRE: &str = r"
local v = redis.call('GET', KEYS[2])
if v then return {2, v} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end
return {0}";

/// Extends the lease if it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// The release (the tail of RELEASE and STORE_RELEASE): deletes the lease if it is still ours,
/// then wakes the waiters if one marked itself (WAIT): a release nobody waits for publishes
/// nothing, so a storing miss costs no message to every replica.
macro_rules! release_script {
    () => {
        r"
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  released = redis.call('DEL', KEYS[1])
end
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return released"
    };
}

/// Releases the lease. KEYS: lease, waiters mark. ARGV: token, channel, message.
const RELEASE: &str = release_script!();

/// The lease holder's write: the entry (`SET`, with `PX` unless ARGV[5] is 0), then the
/// release, in one round trip. KEYS: lease, waiters mark, entry (one slot). ARGV: token,
/// channel, message, value, milliseconds.
const STORE_RELEASE: &str = concat!(
    r"
if ARGV[5] == '0' then
  redis.call('SET', KEYS[3], ARGV[4])
else
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
end",
    release_script!()
);

/// A waiter marks itself while the lease is held (1), so its release publishes; 0: the lease
/// is free. KEYS: lease, waiters mark. ARGV: the mark's lifetime in milliseconds.
const WAIT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  return 1
end
return 0";

/// For each Cluster slot, a short string that hashes to it.
fn slot_tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        const SLOTS: usize = 16384;
        let mut tags = vec![String::new(); SLOTS];
        let mut filled = 0;
        let mut n: u64 = 0;
        // Four base-36 characters reach every slot (checked by a test); the bound only guards.
        while filled < SLOTS && n < 36u64.pow(5) {
            let tag = base36(n);
            let slot = usize::from(redis_keyslot(tag.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = tag;
                filled += 1;
            }
            n += 1;
        }
        tags
    })
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// The lease key of the entry `key`: on a Cluster it hashes to the entry's slot.
pub(crate) fn lease_key(key: &str, cluster: bool) -> String {
    if cluster {
        let tag = &slot_tags()[usize::from(redis_keyslot(key.as_bytes()))];
        format!("llm-cache:lease:{{{tag}}}:{key}:lease")
    } else {
        format!("llm-cache:lease:{key}:lease")
    }
}

/// The mark of processes waiting for the lease `lease` (see [`lease_key`]): same slot.
fn waiters_key(lease: &str) -> String {
    let stem = lease.strip_suffix(":lease").unwrap_or(lease);
    format!("{stem}:waiters")
}

/// The wake-up message of the lease of `key`.
fn released_message(key: &str) -> String {
    json!({ "r": key }).to_string()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Whether retrying can help: not for a server that refuses the commands (an ACL without
/// `EVAL`/`PUBLISH`, a proxy without scripting, keys in different slots).
fn is_transient(e: &FredError) -> bool {
    match e.kind() {
        ErrorKind::Config
        | ErrorKind::Auth
        | ErrorKind::InvalidCommand
        | ErrorKind::InvalidArgument
        | ErrorKind::Url => false,
        ErrorKind::Unknown => {
            let d = e.details();
            ![
                "NOPERM",
                "ERR unknown command",
                "ERR Error running script",
                "ERR user_script",
                "CROSSSLOT",
                "WRONGTYPE",
                "NOSCRIPT",
            ]
            .iter()
            .any(|p| d.starts_with(p))
        }
        _ => true,
    }
}

fn error(operation: &'static str, e: FredError) -> CacheError {
    let transient = is_transient(&e);
    CacheError::backend(NAME, operation, transient, e)
}

/// Releases a lease whose acquisition was cut short (a deadline, a client gone) after Redis
/// may have granted it: nobody would renew or release it, and the others would wait for it to
/// expire. Fenced by the token: harmless if the lease was never ours.
struct PendingLease {
    inner: Option<Arc<Inner>>,
    lease: String,
    key: String,
    token: String,
}

impl PendingLease {
    fn disarm(mut self) -> (String, String) {
        self.inner = None;
        (
            std::mem::take(&mut self.lease),
            std::mem::take(&mut self.token),
        )
    }
}

impl Drop for PendingLease {
    fn drop(&mut self) {
        if let (Some(inner), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current()) {
            let (lease, key, token) = (
                std::mem::take(&mut self.lease),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            );
            rt.spawn(async move {
                let _ = release(&inner, &lease, &key, &token).await;
            });
        }
    }
}

struct Waiter {
    notify: Arc<Notify>,
    count: usize,
}

pub(crate) struct Inner {
    pool: Pool,
    options: Options,
    cluster: bool,
    /// Unique per process and coordinator: the prefix of lease tokens.
    origin: String,
    tokens: AtomicU64,
    waiters: Mutex<HashMap<String, Waiter>>,
    sinks: Mutex<Vec<Weak<dyn InvalidationSink>>>,
    live: AtomicBool,
}

impl Inner {
    fn client(&self) -> fred::clients::WithOptions<Client> {
        self.pool.next_connected().with_options(&self.options)
    }

    fn token(&self) -> String {
        format!(
            "{}-{}",
            self.origin,
            self.tokens.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn sinks(&self) -> Vec<Arc<dyn InvalidationSink>> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.retain(|s| s.strong_count() > 0);
        sinks.iter().filter_map(Weak::upgrade).collect()
    }

    /// Under the sinks' lock, so a sink registering meanwhile sees one consistent state.
    fn set_live(&self, live: bool) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        self.live.store(live, Ordering::SeqCst);
        sinks.retain(|s| s.strong_count() > 0);
        for s in sinks.iter().filter_map(Weak::upgrade) {
            s.connection(live);
        }
    }

    fn dispatch(&self, payload: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(payload) else {
            tracing::debug!(backend = NAME, "unreadable coordination message ignored");
            return;
        };
        if let Some(key) = msg.get("r").and_then(serde_json::Value::as_str) {
            let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = waiters.get(key) {
                w.notify.notify_waiters();
            }
            return;
        }
        let what = if let Some(keys) = msg.get("k").and_then(serde_json::Value::as_array) {
            Invalidation::Keys(
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect(),
            )
        } else if let Some(ns) = msg.get("c") {
            Invalidation::Clear(ns.as_str().map(str::to_owned))
        } else {
            return;
        };
        for s in self.sinks() {
            s.invalidate(&what);
        }
    }

    async fn publish_raw(&self, msg: String) -> Result<()> {
        self.publish_on(CHANNEL, msg).await
    }

    async fn publish_on(&self, channel: &str, msg: String) -> Result<()> {
        self.client()
            .publish::<i64, _, _>(channel, msg)
            .await
            .map(|_| ())
            .map_err(|e| error("publish", e))
    }

    fn register(&self, key: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let w = waiters.entry(key.to_owned()).or_insert_with(|| Waiter {
            notify: Arc::new(Notify::new()),
            count: 0,
        });
        w.count += 1;
        w.notify.clone()
    }

    fn unregister(&self, key: &str) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = waiters.get_mut(key) {
            w.count -= 1;
            if w.count == 0 {
                waiters.remove(key);
            }
        }
    }
}

/// The [`Coordinator`] of a [`crate::RedisBackend`] (see the module docs). Obtained with
/// [`cache_core::CacheBackend::coordinator`]; one per backend, sharing its connection pool,
/// plus one subscriber connection.
pub struct RedisCoordinator {
    inner: Arc<Inner>,
    tasks: Vec<AbortHandle>,
}

impl fmt::Debug for RedisCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCoordinator")
            .field("live", &self.inner.live.load(Ordering::Relaxed))
            .field("cluster", &self.inner.cluster)
            .finish()
    }
}

impl Drop for RedisCoordinator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisCoordinator {
    /// Starts the subscriber (`subscriber` not yet connected) in the current runtime.
    pub(crate) fn start(pool: Pool, options: Options, cluster: bool, subscriber: Client) -> Self {
        let origin = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{:x}-{nanos:x}", std::process::id())
        };
        let inner = Arc::new(Inner {
            pool,
            options,
            cluster,
            origin,
            tokens: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            sinks: Mutex::new(Vec::new()),
            live: AtomicBool::new(false),
        });
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let mut errors = subscriber.error_rx();
        let mut unresponsive = subscriber.unresponsive_rx();
        let connection = subscriber.connect();
        let weak = Arc::downgrade(&inner);
        // Heartbeats go to a channel only this process subscribes to: each one is delivered
        // once, not to every replica (N replicas on the shared channel would make N² a second).
        let heartbeats = heartbeat_channel(&inner.origin);
        let heartbeat = json!({ "h": inner.origin }).to_string();
        let listener = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let sub = subscriber;
            // Every second: this process's heartbeat is published (through the pool, on its own
            // channel) and must come back on the subscription within HEARTBEAT_TIMEOUT, else the subscription is
            // declared lost (a connection that died without a reset raises no error: its
            // socket is idle) and reconnected. A connection that is up while the subscription
            // is not (an error event with no reconnection after it) is subscribed again.
            let mut check = tokio::time::interval(Duration::from_secs(1));
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut heard = Instant::now();
            loop {
                tokio::select! {
                    _ = check.tick() => {
                        let Some(inner) = weak.upgrade() else { return };
                        if inner.live.load(Ordering::SeqCst) {
                            if heard.elapsed() > HEARTBEAT_TIMEOUT {
                                tracing::warn!(backend = NAME, "coordination subscription silent for {HEARTBEAT_TIMEOUT:?}: L1 emptied and off, reconnecting");
                                inner.set_live(false);
                                let sub = sub.clone();
                                tokio::spawn(async move {
                                    let _ = sub.force_reconnection().await;
                                });
                            } else {
                                let (inner, msg) = (inner.clone(), heartbeat.clone());
                                let channel = heartbeats.clone();
                                tokio::spawn(async move {
                                    let _ = inner.publish_on(&channel, msg).await;
                                });
                            }
                        } else if sub.is_connected() && sub.subscribe(vec![CHANNEL, heartbeats.as_str()]).await.is_ok() {
                            // Subscribed is not proof that messages flow (a server refusing
                            // writes accepts SUBSCRIBE but no PUBLISH): L1 comes back when this
                            // heartbeat comes back through the subscription.
                            let (inner, msg) = (inner.clone(), heartbeat.clone());
                            let channel = heartbeats.clone();
                            tokio::spawn(async move {
                                let _ = inner.publish_on(&channel, msg).await;
                            });
                        }
                    }
                    r = reconnects.recv() => match r {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            match sub.subscribe(vec![CHANNEL, heartbeats.as_str()]).await {
                                Ok(()) => {
                                    // Live once a heartbeat comes back through it (see above).
                                    let Some(inner) = weak.upgrade() else { return };
                                    let (msg, channel) = (heartbeat.clone(), heartbeats.clone());
                                    tokio::spawn(async move {
                                        let _ = inner.publish_on(&channel, msg).await;
                                    });
                                }
                                Err(e) => {
                                    tracing::warn!(backend = NAME, error = %e, "cannot subscribe to the coordination channel; L1 stays off until it can");
                                }
                            }
                        }
                        Err(RecvError::Closed) => return,
                    },
                    e = errors.recv() => match e {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            let Some(inner) = weak.upgrade() else { return };
                            if inner.live.load(Ordering::SeqCst) {
                                tracing::warn!(backend = NAME, "coordination connection lost: L1 emptied and off until it is back");
                                inner.set_live(false);
                            }
                        }
                        Err(RecvError::Closed) => return,
                    },
                    u = unresponsive.recv() => match u {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            let Some(inner) = weak.upgrade() else { return };
                            inner.set_live(false);
                        }
                        Err(RecvError::Closed) => return,
                    },
                    m = messages.recv() => {
                        let Some(inner) = weak.upgrade() else { return };
                        match m {
                            Ok(msg) => {
                                if &*msg.channel == heartbeats.as_str() {
                                    if msg.value.as_bytes() == Some(heartbeat.as_bytes()) {
                                        heard = Instant::now();
                                        if !inner.live.load(Ordering::SeqCst) {
                                            inner.set_live(true);
                                            tracing::info!(backend = NAME, channel = CHANNEL, "subscribed, heartbeat heard: invalidations from other replicas are heard");
                                        }
                                    }
                                } else if let Some(b) = msg.value.as_bytes() {
                                    inner.dispatch(b);
                                }
                            }
                            // Messages were lost: what L1 holds may be stale.
                            Err(RecvError::Lagged(n)) => {
                                tracing::warn!(backend = NAME, lost = n, "coordination messages lost: L1 emptied");
                                inner.set_live(false);
                                inner.set_live(true);
                            }
                            Err(RecvError::Closed) => return,
                        }
                    }
                }
            }
        });
        RedisCoordinator {
            inner,
            tasks: vec![listener.abort_handle(), connection.abort_handle()],
        }
    }

    /// Whether the subscriber connection is up and subscribed.
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Coordinator for RedisCoordinator {
    fn name(&self) -> &str {
        "redis"
    }

    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<LeaseAttempt> {
        let pending = PendingLease {
            inner: Some(self.inner.clone()),
            lease: lease_key(key, self.inner.cluster),
            key: key.to_owned(),
            token: self.inner.token(),
        };
        let reply: std::result::Result<Value, FredError> = self
            .inner
            .client()
            .eval(
                ACQUIRE,
                vec![pending.lease.clone(), key.to_owned()],
                vec![pending.token.clone(), millis(ttl).to_string()],
            )
            .await;
        // An answer (even an error reply): the script ran or not, nothing is left pending.
        let (lease, token) = pending.disarm();
        let reply = reply.map_err(|e| error("lease", e))?;
        let mut parts = reply.into_array().into_iter();
        match parts.next().and_then(|v| v.as_i64()) {
            Some(1) => Ok(LeaseAttempt::Acquired(Box::new(RedisLease::start(
                self.inner.clone(),
                lease,
                key.to_owned(),
                token,
                ttl,
            )))),
            Some(2) => match parts.next().and_then(Value::into_bytes) {
                Some(v) => Ok(LeaseAttempt::Stored(v)),
                None => Ok(LeaseAttempt::Held),
            },
            _ => Ok(LeaseAttempt::Held),
        }
    }

    fn reads_entry(&self) -> bool {
        true
    }

    async fn wait_lease(&self, key: &str, max: Duration) -> Result<bool> {
        struct Registered<'a>(&'a Inner, &'a str);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                self.0.unregister(self.1);
            }
        }
        let lease = lease_key(key, self.inner.cluster);
        let notify = self.inner.register(key);
        let _registered = Registered(&self.inner, key);
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before the first check: a release in between is not missed.
        notified.as_mut().enable();
        let deadline = Instant::now() + max;
        let mut delay = Duration::from_millis(10);
        let waiters = waiters_key(&lease);
        loop {
            // Marks this wait (so the release publishes) while checking the lease, atomically:
            // a release just before is seen here, one after publishes.
            let left = deadline.saturating_duration_since(Instant::now());
            let held: i64 = self
                .inner
                .client()
                .eval(
                    WAIT,
                    vec![lease.clone(), waiters.clone()],
                    millis(left + Duration::from_secs(1)),
                )
                .await
                .map_err(|e| error("wait_lease", e))?;
            if held == 0 {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            tokio::select! {
                () = &mut notified => return Ok(true),
                () = tokio::time::sleep(delay.min(left)) => {}
            }
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    async fn publish(&self, what: &Invalidation) -> Result<()> {
        let msg = match what {
            Invalidation::Keys(keys) => json!({ "k": keys }),
            Invalidation::Clear(ns) => json!({ "c": ns }),
        };
        self.inner.publish_raw(msg.to_string()).await
    }

    fn subscribe(&self, sink: Weak<dyn InvalidationSink>) {
        // Under the lock `set_live` takes: the sink cannot be told "live" while the
        // connection is being declared lost, nor miss the next change.
        let mut sinks = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sink.upgrade()
            && self.inner.live.load(Ordering::SeqCst)
        {
            s.connection(true);
        }
        sinks.push(sink);
    }
}

/// A held lease: renewed in the background until released or dropped.
struct RedisLease {
    inner: Arc<Inner>,
    lease: String,
    key: String,
    token: String,
    renewal: AbortHandle,
    released: bool,
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    fn start(inner: Arc<Inner>, lease: String, key: String, token: String, ttl: Duration) -> Self {
        let renewal = {
            let inner = inner.clone();
            let lease = lease.clone();
            let token = token.clone();
            let every = (ttl / 3).max(Duration::from_millis(10));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let res: std::result::Result<i64, FredError> = inner
                        .client()
                        .eval(RENEW, lease.as_str(), vec![token.clone(), millis(ttl).to_string()])
                        .await;
                    match res {
                        Ok(0) => {
                            tracing::warn!(backend = NAME, "lease lost before its holder finished (expired while the store was unreachable?)");
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(backend = NAME, error = %e, "lease renewal failed; retrying"),
                    }
                }
            })
            .abort_handle()
        };
        RedisLease {
            inner,
            lease,
            key,
            token,
            renewal,
            released: false,
        }
    }
}

async fn release(inner: &Inner, lease: &str, key: &str, token: &str) -> Result<()> {
    let _: i64 = inner
        .client()
        .eval(
            RELEASE,
            vec![lease.to_owned(), waiters_key(lease)],
            vec![token.to_owned(), CHANNEL.to_owned(), released_message(key)],
        )
        .await
        .map_err(|e| error("release", e))?;
    Ok(())
}

#[async_trait]
impl Lease for RedisLease {
    async fn release(mut self: Box<Self>) -> Result<()> {
        self.renewal.abort();
        self.released = true;
        release(&self.inner, &self.lease, &self.key, &self.token).await
    }

    fn stores_entry(&self) -> bool {
        true
    }

    async fn store_and_release(
        mut self: Box<Self>,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.renewal.abort();
        let ms = ttl.map_or(0, millis);
        let args: Vec<Value> = vec![
            self.token.as_str().into(),
            CHANNEL.into(),
            released_message(&self.key).into(),
            Value::Bytes(value),
            ms.into(),
        ];
        let res: std::result::Result<i64, FredError> = self
            .inner
            .client()
            .eval(
                STORE_RELEASE,
                vec![
                    self.lease.clone(),
                    waiters_key(&self.lease),
                    self.key.clone(),
                ],
                args,
            )
            .await;
        match res {
            Ok(_) => {
                self.released = true;
                Ok(())
            }
            // Not marked released: dropping the lease releases it in the background.
            Err(e) => Err(error("store", e)),
        }
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        // Dropped without a release (upstream failed, the client left): free the key now
        // rather than at expiry.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            let (lease, key, token) = (
                std::mem::take(&mut self.lease),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            );
            rt.spawn(async move {
                if let Err(e) = release(&inner, &lease, &key, &token).await {
                    tracing::debug!(backend = NAME, error = %e, "lease release failed; it expires by itself");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag() {
        let tags = slot_tags();
        for (slot, tag) in tags.iter().enumerate() {
            assert!(!tag.is_empty(), "slot {slot} has no tag");
            assert_eq!(usize::from(redis_keyslot(tag.as_bytes())), slot);
            assert!(tag.len() <= 4);
        }
    }

    #[test]
    fn lease_keys_share_the_entry_slot() {
        let h = "0123456789abcdef".repeat(4);
        for key in [
            h.clone(),
            format!("team:{h}"),
            format!("{{tagged}}:{h}"),
            format!("weird}}{{ns:{h}"),
            format!("{{}}empty:{h}"),
        ] {
            let lease = lease_key(&key, true);
            assert_eq!(
                redis_keyslot(lease.as_bytes()),
                redis_keyslot(key.as_bytes()),
                "{key} vs {lease}"
            );
            // `clear(None)` leaves leases alone (they expire by themselves).
            assert!(!crate::is_entry_key(&lease));
        }
        assert_eq!(lease_key("k", false), "llm-cache:lease:k:lease");
    }
}
