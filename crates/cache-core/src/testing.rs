//! The conformance kit: the checks every exact backend must pass, ours or a third party's.
//!
//! **Not covered by semver**: checks are added as the contract is sharpened.
//!
//! Use it from a backend crate's integration tests with one line per backend:
//!
//! ```ignore
//! // tests/conformance.rs of a backend crate, with
//! // [dev-dependencies] cache-core = { version = "...", features = ["testing"] }
//! cache_core::cache_conformance!(backend = async { my_backend::MyBackend::new() });
//! ```
//!
//! The macro expands to one `#[test]` per check of [`CHECKS`] (named after it), each with its own
//! Tokio runtime. For a backend that needs a service, return `Option<B>` and use
//! `optional_backend = ...`, and name the service: `service = "redis"` marks every check
//! `#[ignore]` with a reason, so a plain `cargo test` lists them as ignored instead of passing
//! them silently; `cargo test -- --include-ignored` (what `cargo xtask test` runs, with the
//! services up) runs them, and a service that is not reachable then fails them
//! ([`service_unavailable`]).
//!
//! A check that needs a capability the backend does not claim ([`CHECKS`] says which) prints
//! `skipped (capability X not claimed)` where the test runner shows it, and passes.
//!
//! Checks take a [`SharedBackend`] (`Arc<dyn CacheBackend>`), so they can also build a
//! [`Cache`] over it and check the orchestration end to end.
//!
//! Every check uses its own random namespace, so checks can run concurrently against one shared
//! service, and cleans up after itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::backend::{CacheBackend, SharedBackend};
use crate::cache::{Cache, CacheBuilder, CacheStatus};
use crate::directives::CacheControl;
use crate::key::CallKind;

/// The one list of checks, `[name (capability it needs, if any)]`, in the order [`run_all`]
/// runs them. [`CHECKS`], [`run_all`] and [`cache_conformance!`](crate::cache_conformance) all
/// expand it, so a check is added in exactly one place.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    ($callback:ident ! { $($args:tt)* }) => {
        $crate::$callback! { $($args)*
            [round_trip] [binary_safe] [overwrite] [overwrite_replaces_ttl (native_ttl)]
            [ttl_expiry] [no_ttl_persists] [delete (delete)] [namespaces_are_isolated]
            [clear_namespace (clear)] [clear_all (clear)] [batch] [large_value]
            [concurrent_writers] [ping] [cache_round_trip] [corrupt_entry_is_a_miss]
            [coordination (coordinator)]
        }
    };
    (local $callback:ident ! { $($args:tt)* }) => {
        $callback! { $($args)*
            [round_trip] [binary_safe] [overwrite] [overwrite_replaces_ttl (native_ttl)]
            [ttl_expiry] [no_ttl_persists] [delete (delete)] [namespaces_are_isolated]
            [clear_namespace (clear)] [clear_all (clear)] [batch] [large_value]
            [concurrent_writers] [ping] [cache_round_trip] [corrupt_entry_is_a_miss]
            [coordination (coordinator)]
        }
    };
}

/// One conformance check: its name and the capability it needs, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// The check's name (also its function and its test's name).
    pub name: &'static str,
    /// The [`crate::Capabilities`] field it needs (`native_ttl`, `delete`, `clear`), or
    /// `coordinator` for a backend that offers [`CacheBackend::coordinator`].
    pub needs: Option<&'static str>,
}

macro_rules! define_checks {
    ($([$name:ident $(($cap:ident))?])*) => {
        /// Every check, in order.
        pub const CHECKS: &[Check] = &[$(Check {
            name: stringify!($name),
            needs: define_checks!(@cap $($cap)?),
        }),*];

        /// Runs every check in order (capability-gated ones only when claimed).
        pub async fn run_all(b: &SharedBackend) {
            $(
                if claims(b, stringify!($name), define_checks!(@cap $($cap)?)) {
                    $name(b).await;
                }
            )*
        }
    };
    (@cap) => { None };
    (@cap $cap:ident) => { Some(stringify!($cap)) };
}

__conformance_checks!(local define_checks! {});

/// Whether `b` claims `capability`; when it does not, says so where the test runner shows it
/// (written to the process's stderr, which the harness does not capture) and returns false.
pub fn claims(b: &SharedBackend, check: &str, capability: Option<&str>) -> bool {
    let Some(cap) = capability else {
        return true;
    };
    let c = b.capabilities();
    let claimed = match cap {
        "native_ttl" => c.native_ttl,
        "delete" => c.delete,
        "clear" => c.clear,
        "shared" => c.shared,
        "persistent" => c.persistent,
        "coordinator" => b.coordinator().is_some(),
        other => panic!("unknown capability `{other}` in the conformance list"),
    };
    if !claimed {
        announce(&format!(
            "conformance check {check}: skipped (capability {cap} not claimed by {})",
            b.name()
        ));
    }
    claimed
}

/// Writes a line to the process's stderr directly: the test harness captures `eprintln!` of
/// passing tests, not this, so skips stay visible.
pub fn announce(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Checks that must not run alongside others in the same process: `clear_all` clears every
/// entry the backend owns (on a shared service, other checks' entries too).
static EXCLUSIVE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The guard a check holds while it runs: exclusive for `clear_all`, shared for the others.
#[doc(hidden)]
pub enum CheckGuard {
    /// Any other check.
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    /// `clear_all`.
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

impl std::fmt::Debug for CheckGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckGuard::Shared(_) => "CheckGuard::Shared",
            CheckGuard::Exclusive(_) => "CheckGuard::Exclusive",
        })
    }
}

/// Takes the guard of `check` (used by the macro).
#[doc(hidden)]
pub fn guard(check: &str) -> CheckGuard {
    if check == "clear_all" {
        CheckGuard::Exclusive(EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        CheckGuard::Shared(EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A Tokio runtime for one check (used by the macro).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Reports an unreachable service a test needs: the test fails, saying how to start it. (Tests
/// that need a service are `#[ignore]`d with a reason, so a plain `cargo test` lists them as
/// ignored; one that runs, with `--include-ignored`, asked for the service.) Returns `Option`
/// so `let Some(x) = ... else { return }` call sites read as before.
pub fn service_unavailable<T>(what: &str, why: &str) -> Option<T> {
    panic!(
        "{what} is not reachable ({why}): start it with `cargo xtask services up` (or run `cargo xtask test`)"
    );
}

/// This process's resident set size in MiB (`VmRSS` of `/proc/self/status`; 0 where there is
/// none): for benches and examples that report memory next to the conformance checks.
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A namespace unique to this process, check and call.
pub fn unique_namespace(check: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "conf-{check}-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn cleanup(b: &SharedBackend, ns: &str) {
    if b.capabilities().clear {
        let _ = b.clear(Some(ns)).await;
    }
}

fn k(ns: &str, name: &str) -> String {
    format!("{ns}:{name}")
}

/// Polls `get` until it returns `None` or `limit` passes; returns whether it disappeared.
async fn wait_gone(b: &SharedBackend, key: &str, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        if b.get(key).await.expect("get").is_none() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `set` then `get` returns the same bytes; a missing key is `None`.
pub async fn round_trip(b: &SharedBackend) {
    let ns = unique_namespace("round_trip");
    let key = k(&ns, "a");
    assert_eq!(
        b.get(&key).await.expect("get missing"),
        None,
        "missing key must be None"
    );
    b.set(
        &key,
        Bytes::from_static(b"{\"v\":1}"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set");
    assert_eq!(
        b.get(&key).await.expect("get").as_deref(),
        Some(&b"{\"v\":1}"[..]),
        "get after set"
    );
    cleanup(b, &ns).await;
}

/// Arbitrary bytes survive: every byte value, NUL, invalid UTF-8, the empty value.
pub async fn binary_safe(b: &SharedBackend) {
    let ns = unique_namespace("binary_safe");
    let all: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let cases: Vec<Bytes> = vec![
        Bytes::from(all),
        Bytes::from_static(b"\x00\x00\xff\xfe"),
        Bytes::from_static(b""),
        Bytes::from("é ✓ \u{1F600} \"quoted\" \\ \r\n"),
    ];
    for (i, v) in cases.into_iter().enumerate() {
        let key = k(&ns, &format!("bin{i}"));
        b.set(&key, v.clone(), Some(Duration::from_secs(60)))
            .await
            .expect("set");
        assert_eq!(b.get(&key).await.expect("get"), Some(v), "case {i}");
    }
    cleanup(b, &ns).await;
}

/// A second `set` replaces the value.
pub async fn overwrite(b: &SharedBackend) {
    let ns = unique_namespace("overwrite");
    let key = k(&ns, "a");
    b.set(
        &key,
        Bytes::from_static(b"one"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set 1");
    b.set(
        &key,
        Bytes::from_static(b"two"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set 2");
    assert_eq!(
        b.get(&key).await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
    cleanup(b, &ns).await;
}

/// A second `set` replaces the TTL too (LiteLLM F7): a short TTL followed by a long one
/// survives past the short one. Native-TTL backends only.
pub async fn overwrite_replaces_ttl(b: &SharedBackend) {
    let ns = unique_namespace("overwrite_ttl");
    let key = k(&ns, "a");
    b.set(
        &key,
        Bytes::from_static(b"short"),
        Some(Duration::from_secs(1)),
    )
    .await
    .expect("set short");
    b.set(
        &key,
        Bytes::from_static(b"long"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set long");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        b.get(&key).await.expect("get").as_deref(),
        Some(&b"long"[..]),
        "the second set's TTL must replace the first"
    );
    cleanup(b, &ns).await;
}

/// An entry written with a TTL disappears after it. For backends with native TTL the backend
/// itself must stop returning it; for the others, the cache (which checks the envelope's
/// expiry) must stop serving it.
pub async fn ttl_expiry(b: &SharedBackend) {
    let ns = unique_namespace("ttl_expiry");
    if b.capabilities().native_ttl {
        let key = k(&ns, "a");
        b.set(&key, Bytes::from_static(b"x"), Some(Duration::from_secs(1)))
            .await
            .expect("set");
        assert!(
            b.get(&key).await.expect("get").is_some(),
            "present before expiry"
        );
        assert!(
            wait_gone(b, &key, Duration::from_secs(5)).await,
            "an entry with a 1 s TTL is still there after 5 s"
        );
    }
    // Through the orchestration: every backend.
    let cache = cache_over(b, &ns);
    let req = json!({"model": "conformance", "messages": [{"role": "user", "content": "ttl"}]});
    let cc = CacheControl::none().with_ttl(Duration::from_secs(1));
    let first = fetch_once(&cache, &req, &cc, "ttl-body").await;
    assert!(!first.is_hit());
    cache.flush(Duration::from_secs(10)).await.expect("flush");
    assert!(
        fetch_once(&cache, &req, &cc, "unused").await.is_hit(),
        "hit before expiry"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        !fetch_once(&cache, &req, &cc, "refetched").await.is_hit(),
        "the cache served an entry past its TTL"
    );
    cache.flush(Duration::from_secs(10)).await.expect("flush");
    cleanup(b, &ns).await;
}

/// An entry written without a TTL is still there later.
pub async fn no_ttl_persists(b: &SharedBackend) {
    let ns = unique_namespace("no_ttl");
    let key = k(&ns, "a");
    b.set(&key, Bytes::from_static(b"forever"), None)
        .await
        .expect("set");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        b.get(&key).await.expect("get").as_deref(),
        Some(&b"forever"[..])
    );
    cleanup(b, &ns).await;
    if !b.capabilities().clear {
        let _ = b.delete(&key).await;
    }
}

/// `delete` removes a key; deleting a missing key is not an error.
pub async fn delete(b: &SharedBackend) {
    let ns = unique_namespace("delete");
    let key = k(&ns, "a");
    b.set(
        &key,
        Bytes::from_static(b"x"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set");
    b.delete(&key).await.expect("delete existing");
    assert_eq!(
        b.get(&key).await.expect("get"),
        None,
        "deleted key must be gone"
    );
    b.delete(&k(&ns, "never-written"))
        .await
        .expect("deleting a missing key is not an error");
}

/// The same name in two namespaces is two entries.
pub async fn namespaces_are_isolated(b: &SharedBackend) {
    let ns1 = unique_namespace("ns_a");
    let ns2 = unique_namespace("ns_b");
    b.set(
        &k(&ns1, "same"),
        Bytes::from_static(b"1"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set 1");
    b.set(
        &k(&ns2, "same"),
        Bytes::from_static(b"2"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set 2");
    assert_eq!(
        b.get(&k(&ns1, "same")).await.expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        b.get(&k(&ns2, "same")).await.expect("get").as_deref(),
        Some(&b"2"[..])
    );
    cleanup(b, &ns1).await;
    cleanup(b, &ns2).await;
}

/// `clear(Some(ns))` removes exactly the keys under `ns:` (including nested namespaces) and
/// nothing else, not even keys whose namespace merely starts with the same letters.
pub async fn clear_namespace(b: &SharedBackend) {
    let ns = unique_namespace("clear");
    let other = unique_namespace("clear_other");
    let lookalike = format!("{ns}x");
    let ttl = Some(Duration::from_secs(60));
    let mine = [k(&ns, "a"), k(&ns, "b"), k(&ns, "nested:c")];
    let theirs = [k(&other, "a"), k(&lookalike, "a")];
    for key in mine.iter().chain(theirs.iter()) {
        b.set(key, Bytes::from_static(b"v"), ttl)
            .await
            .expect("set");
    }
    b.clear(Some(&ns)).await.expect("clear");
    for key in &mine {
        assert_eq!(
            b.get(key).await.expect("get"),
            None,
            "{key} must be cleared"
        );
    }
    for key in &theirs {
        assert!(
            b.get(key).await.expect("get").is_some(),
            "{key} must survive"
        );
    }
    cleanup(b, &other).await;
    cleanup(b, &lookalike).await;
}

/// `clear(None)` removes every entry the backend owns: a no-op `clear(None)` fails here. Entries
/// are written as the cache writes them, keys of its shape (`namespace:<64 hex>` and a bare
/// `<64 hex>`) holding envelopes of both forms, since a shared backend may clear only keys and
/// values of its own shape ([`Entry::has_marker`](crate::Entry::has_marker)). Runs alone in its
/// process ([`guard`]).
pub async fn clear_all(b: &SharedBackend) {
    let ns = unique_namespace("clear_all");
    let hash = |i: u32| crate::key::hash_hex(format!("{ns}-{i}").as_bytes());
    let keys = [
        k(&ns, &hash(1)),
        k(&ns, &format!("nested:{}", hash(2))),
        hash(3),
    ];
    let entry = crate::Entry::new(crate::CallKind::Chat, Bytes::from_static(b"{}"), None, None);
    for (i, key) in keys.iter().enumerate() {
        let value = if i % 2 == 0 {
            entry.encode()
        } else {
            entry.encode_with(&crate::Encoding::COMPACT)
        };
        b.set(key, value, Some(Duration::from_secs(60)))
            .await
            .expect("set");
    }
    let removed = b.clear(None).await.expect("clear(None)");
    for key in &keys {
        assert_eq!(
            b.get(key).await.expect("get"),
            None,
            "clear(None) left {key} in place"
        );
    }
    assert!(
        removed >= keys.len() as u64,
        "clear(None) says it removed {removed} entries, fewer than the {} written",
        keys.len()
    );
}

/// `set_many` then `get_many` (with missing keys in between) keeps order.
pub async fn batch(b: &SharedBackend) {
    let ns = unique_namespace("batch");
    let entries: Vec<(String, Bytes)> = (0..20)
        .map(|i| {
            (
                k(&ns, &format!("item{i}")),
                Bytes::from(format!("value-{i}")),
            )
        })
        .collect();
    b.set_many(entries.clone(), Some(Duration::from_secs(60)))
        .await
        .expect("set_many");
    let mut keys: Vec<String> = Vec::new();
    for (i, (key, _)) in entries.iter().enumerate() {
        keys.push(key.clone());
        if i % 5 == 0 {
            keys.push(k(&ns, &format!("missing{i}")));
        }
    }
    let got = b.get_many(&keys).await.expect("get_many");
    assert_eq!(got.len(), keys.len(), "one slot per key");
    for (key, value) in keys.iter().zip(got) {
        match entries.iter().find(|(k2, _)| k2 == key) {
            Some((_, v)) => assert_eq!(value.as_ref(), Some(v), "{key}"),
            None => assert_eq!(value, None, "{key} was never written"),
        }
    }
    assert!(b.get_many(&[]).await.expect("empty get_many").is_empty());
    cleanup(b, &ns).await;
}

/// A value of 4 MiB (or the backend's limit) round-trips intact.
pub async fn large_value(b: &SharedBackend) {
    let ns = unique_namespace("large");
    let size = b
        .capabilities()
        .max_value_size
        .map_or(4 << 20, |m| m.min(4 << 20) - 256);
    let value: Bytes = (0..size)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let key = k(&ns, "big");
    b.set(&key, value.clone(), Some(Duration::from_secs(60)))
        .await
        .expect("set large");
    let got = b
        .get(&key)
        .await
        .expect("get large")
        .expect("large value present");
    assert_eq!(got.len(), value.len());
    assert!(got == value, "large value corrupted");
    cleanup(b, &ns).await;
}

/// 16 concurrent writers: every key readable; a contended key holds one of the written values.
pub async fn concurrent_writers(b: &SharedBackend) {
    let ns = unique_namespace("concurrent");
    let shared = k(&ns, "contended");
    let futs = (0..16).map(|w| {
        let ns = ns.clone();
        let shared = shared.clone();
        async move {
            for i in 0..10 {
                let key = k(&ns, &format!("w{w}-{i}"));
                b.set(
                    &key,
                    Bytes::from(format!("{w}-{i}")),
                    Some(Duration::from_secs(60)),
                )
                .await
                .expect("set");
                b.set(
                    &shared,
                    Bytes::from(format!("writer-{w}")),
                    Some(Duration::from_secs(60)),
                )
                .await
                .expect("set contended");
            }
        }
    });
    futures::future::join_all(futs).await;
    for w in 0..16 {
        for i in 0..10 {
            let key = k(&ns, &format!("w{w}-{i}"));
            assert_eq!(
                b.get(&key).await.expect("get"),
                Some(Bytes::from(format!("{w}-{i}")))
            );
        }
    }
    let v = b
        .get(&shared)
        .await
        .expect("get contended")
        .expect("present");
    let s = String::from_utf8(v.to_vec()).expect("utf8");
    assert!(
        s.starts_with("writer-"),
        "contended key holds a torn value: {s:?}"
    );
    cleanup(b, &ns).await;
}

/// `ping` answers and names the backend.
pub async fn ping(b: &SharedBackend) {
    let h = b.ping().await.expect("ping");
    assert_eq!(h.backend, b.name());
}

/// A cache over the backend: a miss is stored, the repeat is a byte-identical hit.
pub async fn cache_round_trip(b: &SharedBackend) {
    let ns = unique_namespace("cache_rt");
    let cache = cache_over(b, &ns);
    let req = json!({"model": "conformance", "messages": [{"role": "user", "content": "hello"}]});
    let cc = CacheControl::none();
    let first = cache
        .get_or_fetch(CallKind::Chat, &req, &cc, || async {
            Ok::<_, std::io::Error>(chat_body("first"))
        })
        .await
        .expect("first call");
    assert!(
        // Stored, or still being written when the read deadline ran out (a slow backend).
        matches!(
            first.status,
            CacheStatus::Miss {
                store: crate::StoreOutcome::Stored | crate::StoreOutcome::Pending,
                ..
            }
        ),
        "{:?}",
        first.status
    );
    cache.flush(Duration::from_secs(10)).await.expect("flush");
    let second = cache
        .get_or_fetch(CallKind::Chat, &req, &cc, || async {
            Ok::<_, std::io::Error>(chat_body("second"))
        })
        .await
        .expect("second call");
    assert!(second.status.is_hit(), "{:?}", second.status);
    assert_eq!(first.value, second.value);
    cleanup(b, &ns).await;
}

/// Garbage at an entry's key is a miss (never a panic or a wrong body), then gets replaced.
pub async fn corrupt_entry_is_a_miss(b: &SharedBackend) {
    let ns = unique_namespace("corrupt");
    let cache = cache_over(b, &ns);
    let req = json!({"model": "conformance", "messages": [{"role": "user", "content": "corrupt"}]});
    let key = cache
        .prepare(
            CallKind::Chat,
            &req,
            &CacheControl::none(),
            &Default::default(),
        )
        .expect("prepare")
        .key()
        .expect("key")
        .clone();
    for garbage in [
        &b"not json"[..],
        b"{\"llmc\":1,\"kind\":\"chat\",\"stored_at\":1,\"len\":999,\"crc\":1,\"body\":{}}",
        b"{\"timestamp\": 1.0, \"response\": \"{}\"}",
    ] {
        b.set(
            key.as_str(),
            Bytes::copy_from_slice(garbage),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("set garbage");
        let got = fetch_once(&cache, &req, &CacheControl::none(), "fresh").await;
        assert!(!got.is_hit(), "garbage served as a hit");
        cache.flush(Duration::from_secs(10)).await.expect("flush");
    }
    let again = fetch_once(&cache, &req, &CacheControl::none(), "unused").await;
    assert!(again.is_hit(), "the good entry replaced the garbage");
    cleanup(b, &ns).await;
}

fn cache_over(b: &SharedBackend, ns: &str) -> Cache {
    CacheBuilder::from_shared(b.clone())
        .namespace(ns)
        .configure(|s| {
            s.read_timeout = Duration::from_secs(5);
            s.write_timeout = Duration::from_secs(10);
        })
        .build()
}

fn chat_body(text: &str) -> Value {
    json!({
        "id": format!("chatcmpl-{text}"),
        "object": "chat.completion",
        "created": 1_795_000_000,
        "model": "conformance",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    })
}

async fn fetch_once(cache: &Cache, req: &Value, cc: &CacheControl, text: &str) -> CacheStatus {
    cache
        .get_or_fetch(CallKind::Chat, req, cc, || async {
            Ok::<_, std::io::Error>(chat_body(text))
        })
        .await
        .expect("call")
        .status
}

/// Expands to one `#[test]` per conformance check ([`CHECKS`]).
///
/// * `cache_conformance!(backend = <future resolving to a backend>);`
/// * `cache_conformance!(optional_backend = <future resolving to Option<backend>>);`
///   (the factory returns `None` after [`service_unavailable`], which fails the test).
/// * `cache_conformance!(service = "redis", optional_backend = ...);`: as above, with every
///   check `#[ignore]`d for a plain `cargo test` (the reason names the service); `cargo test --
///   --include-ignored` runs them.
///
/// The future is evaluated once per check, so each check gets a fresh client.
#[macro_export]
macro_rules! cache_conformance {
    (backend = $factory:expr) => {
        $crate::__conformance_checks!(cache_conformance! {
            @each (any(), "") (async { ::core::option::Option::Some($factory.await) })
        });
    };
    (optional_backend = $factory:expr) => {
        $crate::__conformance_checks!(cache_conformance! { @each (any(), "") ($factory) });
    };
    (service = $service:literal, optional_backend = $factory:expr) => {
        $crate::__conformance_checks!(cache_conformance! {
            @each (all(), concat!("needs the ", $service, " test service: `cargo xtask services up ", $service, "`, then `cargo test -- --include-ignored` (cargo xtask test does both)"))
            ($factory)
        });
    };
    (@each ($ignored:meta, $reason:expr) ($factory:expr) $([$check:ident $(($cap:ident))?])+) => {
        $(
            #[test]
            #[cfg_attr($ignored, ignore = $reason)]
            fn $check() {
                let _guard = $crate::testing::guard(stringify!($check));
                $crate::testing::runtime().block_on(async {
                    let ::core::option::Option::Some(backend) = $factory.await else {
                        ::core::panic!(
                            "the backend factory of conformance check `{}` returned None: a check that runs needs its backend (mark checks that need a service with `service = \"...\"`)",
                            stringify!($check)
                        );
                    };
                    let backend: $crate::SharedBackend = ::std::sync::Arc::new(backend);
                    let needs: ::core::option::Option<&str> =
                        $crate::cache_conformance!(@cap $($cap)?);
                    if $crate::testing::claims(&backend, stringify!($check), needs) {
                        $crate::testing::$check(&backend).await;
                    }
                });
            }
        )+
    };
    (@cap) => { ::core::option::Option::None };
    (@cap $cap:ident) => { ::core::option::Option::Some(stringify!($cap)) };
}

/// The backend's [`crate::Coordinator`] keeps its contract: one lease holder at a time, a
/// release (or a dropped lease) wakes waiters and frees the key, an existing entry is reported
/// or the lease granted, and published invalidations reach a subscribed sink, keys and clears
/// alike.
pub async fn coordination(b: &SharedBackend) {
    use crate::coordination::{Invalidation, InvalidationSink, LeaseAttempt};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Sink {
        live: Mutex<Option<bool>>,
        heard: Mutex<Vec<Invalidation>>,
    }
    impl InvalidationSink for Sink {
        fn invalidate(&self, what: &Invalidation) {
            self.heard.lock().unwrap().push(what.clone());
        }
        fn connection(&self, live: bool) {
            *self.live.lock().unwrap() = Some(live);
        }
    }
    async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    let c = b.coordinator().expect("coordinator");
    let ns = unique_namespace("coordination");
    let key = k(&ns, "leased");
    let ttl = Duration::from_secs(3);

    // One holder at a time.
    let LeaseAttempt::Acquired(first) = c.try_lease(&key, ttl).await.expect("try_lease") else {
        panic!("a free key's lease is granted");
    };
    assert!(
        matches!(
            c.try_lease(&key, ttl).await.expect("try_lease"),
            LeaseAttempt::Held
        ),
        "a held lease is not granted twice"
    );
    assert!(
        !c.wait_lease(&key, Duration::from_millis(200))
            .await
            .expect("wait_lease"),
        "wait_lease reports a lease still held after `max`"
    );

    // A release wakes a waiter.
    let waiter = {
        let c = c.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let freed = c.wait_lease(&key, Duration::from_secs(10)).await;
            (freed, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.release().await.expect("release");
    let (freed, after) = waiter.await.expect("waiter");
    assert!(freed.expect("wait_lease"), "the waiter sees the release");
    assert!(
        after < Duration::from_secs(2),
        "the waiter woke {after:?} after the wait began (release at ~100 ms)"
    );

    // A lease dropped without release is freed too (in the background, or by expiry).
    let LeaseAttempt::Acquired(second) = c.try_lease(&key, ttl).await.expect("try_lease") else {
        panic!("a released lease is granted again");
    };
    drop(second);
    let freed = c
        .wait_lease(&key, ttl + Duration::from_secs(2))
        .await
        .expect("wait_lease");
    assert!(freed, "a dropped lease is freed within its ttl");

    // An entry already stored is reported (or the lease granted).
    let entry_key = k(&ns, "stored");
    b.set(
        &entry_key,
        Bytes::from_static(b"entry"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("set");
    match c.try_lease(&entry_key, ttl).await.expect("try_lease") {
        LeaseAttempt::Stored(v) => assert_eq!(&v[..], b"entry", "the stored entry's bytes"),
        LeaseAttempt::Acquired(l) => {
            assert!(
                !c.reads_entry(),
                "a coordinator that reads the entry with the lease (`reads_entry`) granted the \
                 lease of a stored entry: a lookup through it would miss"
            );
            l.release().await.expect("release");
        }
        LeaseAttempt::Held => panic!("nobody holds this lease"),
    }
    // Even while another holds the lease (an entry stored by a writer that did not lead).
    if c.reads_entry() {
        let LeaseAttempt::Acquired(held) = c.try_lease(&key, ttl).await.expect("try_lease") else {
            panic!("a free key's lease is granted");
        };
        b.set(
            &key,
            Bytes::from_static(b"written"),
            Some(Duration::from_secs(60)),
        )
        .await
        .expect("set");
        match c.try_lease(&key, ttl).await.expect("try_lease") {
            LeaseAttempt::Stored(v) => assert_eq!(&v[..], b"written"),
            other => panic!("`reads_entry`: a stored entry is returned, not {other:?}"),
        }
        held.release().await.expect("release");
        b.delete(&key).await.expect("delete");
    }

    // A lease that stores its entry: the entry is readable through the backend with its ttl,
    // the lease is free, and a waiter is woken (not left to poll until the ttl).
    let committed = k(&ns, "committed");
    let LeaseAttempt::Acquired(lease) = c.try_lease(&committed, ttl).await.expect("try_lease")
    else {
        panic!("a free key's lease is granted");
    };
    if lease.stores_entry() {
        let waiter = {
            let c = c.clone();
            let key = committed.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let freed = c.wait_lease(&key, Duration::from_secs(10)).await;
                (freed, start.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        lease
            .store_and_release(
                Bytes::from_static(b"committed entry"),
                Some(Duration::from_millis(1500)),
            )
            .await
            .expect("store_and_release");
        let (freed, after) = waiter.await.expect("waiter");
        assert!(freed.expect("wait_lease"), "the waiter sees the release");
        assert!(
            after < Duration::from_secs(2),
            "the waiter woke {after:?} after the wait began (store_and_release at ~100 ms)"
        );
        assert_eq!(
            b.get(&committed).await.expect("get").as_deref(),
            Some(&b"committed entry"[..]),
            "store_and_release stores the entry under the leased key"
        );
        match c.try_lease(&committed, ttl).await.expect("try_lease") {
            LeaseAttempt::Stored(v) => assert_eq!(&v[..], b"committed entry"),
            LeaseAttempt::Acquired(l) => l.release().await.expect("release"),
            LeaseAttempt::Held => panic!("store_and_release left the lease held"),
        }
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(
            b.get(&committed).await.expect("get").is_none(),
            "store_and_release's ttl (1.5 s) expires the entry"
        );
    } else {
        lease.release().await.expect("release");
    }

    // Invalidations reach a subscriber.
    let sink = Arc::new(Sink::default());
    let dyn_sink: Arc<dyn InvalidationSink> = sink.clone();
    c.subscribe(Arc::downgrade(&dyn_sink));
    assert!(
        until(Duration::from_secs(10), || *sink.live.lock().unwrap()
            == Some(true))
        .await,
        "the subscriber goes live"
    );
    let keys = Invalidation::Keys(vec![k(&ns, "a"), k(&ns, "b")]);
    let clear = Invalidation::Clear(Some(ns.clone()));
    c.publish(&keys).await.expect("publish keys");
    c.publish(&clear).await.expect("publish clear");
    assert!(
        until(Duration::from_secs(5), || {
            let heard = sink.heard.lock().unwrap();
            heard.contains(&keys) && heard.contains(&clear)
        })
        .await,
        "published invalidations are heard: {:?}",
        sink.heard.lock().unwrap()
    );
    drop(dyn_sink);
    cleanup(b, &ns).await;
}
