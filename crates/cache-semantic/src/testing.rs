//! The semantic conformance kit: the checks every [`SemanticBackend`] must pass, run through the
//! real [`SemanticCache`] layer and the bundled local embedder (potion-base-2M) where text is
//! involved, and through raw vectors where exact similarities matter.
//!
//! **Not covered by semver.** Use it from a backend's integration tests (feature `testing`):
//!
//! ```ignore
//! cache_semantic::semantic_conformance!(backend = async { my_backend() });
//! ```
//!
//! The macro expands to one `#[test]` per check in [`CHECKS`], each with its own runtime. The
//! factory returns `B` with `backend`, or `Option<B>` with `optional_backend`. For a backend that
//! needs a service, name it: `service = "redis-stack", optional_backend = ...` marks every check
//! `#[ignore]` with a reason, so a plain `cargo test` lists them as ignored instead of passing
//! them silently; `cargo test -- --include-ignored` (what `cargo xtask test` runs, with the
//! services up) runs them, and a service that is not reachable then fails them
//! ([`service_unavailable`]).
//!
//! Every check works in its own random namespace (and therefore its own scopes), so checks run
//! concurrently against one shared index, and removes its records at the end. Vectors have 64
//! dimensions (the local embedder's), so one index serves every check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::semantic::{
    Embedder, SemanticBackend, SemanticLayer, SemanticRecord, SemanticRequest,
};
use cache_core::{Cache, CacheControl, CacheStatus, CallKind, MemoryBackend, Tier};
use serde_json::{Value, json};

pub use cache_core::testing::{runtime, service_unavailable, unique_namespace};

use crate::embed::{HttpEmbedder, HttpEmbedderConfig, LocalEmbedder, cosine};
use crate::guard::GuardConfig;
use crate::layer::{SemanticCache, SemanticConfig};

/// A shared semantic backend handle.
pub type SharedSemanticBackend = Arc<dyn SemanticBackend>;

/// Dimension of every vector the kit stores.
pub const DIMS: usize = 64;

/// The one list of checks, in the order [`run_all`] runs them. [`CHECKS`], [`run_all`] and
/// [`semantic_conformance!`](crate::semantic_conformance) all expand it, so a check is added in
/// exactly one place.
#[doc(hidden)]
#[macro_export]
macro_rules! __semantic_conformance_checks {
    ($callback:ident ! { $($args:tt)* }) => {
        $crate::$callback! { $($args)*
            paraphrase_hits exact_repeat_hits_with_similarity_one unrelated_prompt_misses
            different_model_never_hits different_params_never_hit
            different_system_prompt_never_hits different_earlier_turns_never_hit
            different_namespace_never_hits different_tenant_never_hits scope_is_a_pre_filter
            threshold_edges request_threshold_only_raises ttl_expiry
            dimension_mismatch_is_an_error embedder_outage_is_a_miss_within_the_deadline
            guard_rejects_near_miss_traps shadow_mode_counts_without_serving
            same_prompt_overwrites clear_namespace_removes_nested_only ping
        }
    };
    (local $callback:ident ! { $($args:tt)* }) => {
        $callback! { $($args)*
            paraphrase_hits exact_repeat_hits_with_similarity_one unrelated_prompt_misses
            different_model_never_hits different_params_never_hit
            different_system_prompt_never_hits different_earlier_turns_never_hit
            different_namespace_never_hits different_tenant_never_hits scope_is_a_pre_filter
            threshold_edges request_threshold_only_raises ttl_expiry
            dimension_mismatch_is_an_error embedder_outage_is_a_miss_within_the_deadline
            guard_rejects_near_miss_traps shadow_mode_counts_without_serving
            same_prompt_overwrites clear_namespace_removes_nested_only ping
        }
    };
}

macro_rules! define_checks {
    ($($name:ident)*) => {
        /// Names of every check, in order.
        pub const CHECKS: &[&str] = &[$(stringify!($name)),*];

        /// Runs every check in order (for backends that prefer one test).
        pub async fn run_all(b: &SharedSemanticBackend) {
            $($name(b).await;)*
        }
    };
}

__semantic_conformance_checks!(local define_checks! {});

fn embedder() -> Arc<LocalEmbedder> {
    Arc::new(LocalEmbedder::potion_base_2m().expect("bundled model"))
}

fn layer(b: &SharedSemanticBackend, config: SemanticConfig) -> SemanticCache {
    SemanticCache::new(embedder(), b.clone(), config)
}

fn threshold(t: f32) -> SemanticConfig {
    SemanticConfig::new(t).expect("threshold")
}

fn chat(model: &str, user: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": user}]})
}

fn envelope(text: &str) -> Bytes {
    cache_core::Entry::new(
        CallKind::Chat,
        Bytes::from(
            serde_json::to_vec(
                &json!({"choices": [{"message": {"role": "assistant", "content": text}}]}),
            )
            .expect("json"),
        ),
        None,
        None,
    )
    .encode()
}

fn req<'a>(request: &'a Value, ns: &'a str) -> SemanticRequest<'a> {
    SemanticRequest::new(CallKind::Chat, request, None, Some(ns), None)
}

async fn sim(a: &str, b: &str) -> f32 {
    let v = embedder()
        .embed(&[a.to_owned(), b.to_owned()])
        .await
        .expect("embed");
    cosine(&v[0], &v[1])
}

async fn cleanup(b: &SharedSemanticBackend, ns: &str) {
    let _ = b.clear(Some(ns)).await;
}

/// A unit vector: `cos` along axis 0 and `sin` along `axis`.
fn unit(cos: f32, axis: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIMS];
    v[0] = cos;
    v[axis] = (1.0 - cos * cos).max(0.0).sqrt();
    v
}

fn scope_for(ns: &str, tag: &str) -> String {
    blake3::hash(format!("{ns}/{tag}").as_bytes())
        .to_hex()
        .to_string()
}

const STORED: &str = "How do I cancel my gym membership?";
const TYPO: &str = "how can i cancel my gym membership";
const UNRELATED: &str = "How long should I boil an egg for a runny yolk?";

/// A paraphrase above the threshold is served, end to end through [`Cache`], with its similarity.
pub async fn paraphrase_hits(b: &SharedSemanticBackend) {
    let ns = unique_namespace("paraphrase_hits");
    let s = sim(STORED, TYPO).await;
    assert!(s > 0.9, "fixture: the paraphrase scores {s}");
    let cache = Cache::builder(MemoryBackend::default())
        .namespace(ns.clone())
        .semantic(Arc::new(layer(b, threshold(0.8))))
        .build();
    let answer =
        json!({"choices": [{"message": {"role": "assistant", "content": "Yes, from the app."}}]});
    let first = cache
        .get_or_fetch(
            CallKind::Chat,
            &chat("m", STORED),
            &CacheControl::none(),
            || async { Ok::<_, std::io::Error>(answer.clone()) },
        )
        .await
        .expect("first call");
    assert!(!first.status.is_hit());
    cache.flush(Duration::from_secs(5)).await.expect("flush");
    let second = cache
        .get_or_fetch(
            CallKind::Chat,
            &chat("m", TYPO),
            &CacheControl::none(),
            || async { Ok::<Value, std::io::Error>(json!({"choices": []})) },
        )
        .await
        .expect("second call");
    match second.status {
        CacheStatus::Hit {
            tier: Tier::Semantic,
            similarity: Some(got),
            ..
        } => assert!((got - s).abs() < 0.01, "similarity {got}, expected {s}"),
        other => panic!("expected a semantic hit, got {other:?}"),
    }
    assert_eq!(second.value, answer);
    cleanup(b, &ns).await;
}

/// The very same text (an exact repeat that reaches the semantic tier, e.g. with a different
/// exact key) hits with similarity ≈ 1 (LiteLLM's semantic caches missed exact repeats).
pub async fn exact_repeat_hits_with_similarity_one(b: &SharedSemanticBackend) {
    let ns = unique_namespace("exact_repeat");
    let l = layer(b, threshold(0.99));
    let r = chat("m", STORED);
    let stored = envelope("a");
    l.store(&req(&r, &ns), stored.clone(), None)
        .await
        .expect("store");
    let hit = l
        .lookup(&req(&r, &ns))
        .await
        .expect("lookup")
        .expect("a hit");
    assert!(hit.similarity > 0.999, "similarity {}", hit.similarity);
    assert_eq!(hit.value, stored);
    cleanup(b, &ns).await;
}

/// An unrelated prompt in the same scope misses.
pub async fn unrelated_prompt_misses(b: &SharedSemanticBackend) {
    let ns = unique_namespace("unrelated");
    let l = layer(b, threshold(0.8));
    assert!(sim(STORED, UNRELATED).await < 0.8);
    l.store(&req(&chat("m", STORED), &ns), envelope("a"), None)
        .await
        .expect("store");
    assert!(
        l.lookup(&req(&chat("m", UNRELATED), &ns))
            .await
            .expect("lookup")
            .is_none()
    );
    cleanup(b, &ns).await;
}

/// Stores `stored`, then looks up `probe` — the *same* last user message — with threshold 0
/// (anything in the scope would hit): it must miss.
async fn never_hits(
    b: &SharedSemanticBackend,
    check: &str,
    stored: (Value, Option<&str>, Option<&str>),
    probe: (Value, Option<&str>, Option<&str>),
    probe_ns: Option<&str>,
) {
    let ns = unique_namespace(check);
    let l = layer(b, threshold(0.0).with_guard(GuardConfig::off()));
    let sreq = SemanticRequest::new(CallKind::Chat, &stored.0, stored.1, Some(&ns), None)
        .with_partition(stored.2);
    l.store(&sreq, envelope("stored"), None)
        .await
        .expect("store");
    // The same request hits (the check would be vacuous otherwise).
    assert!(
        l.lookup(&sreq).await.expect("lookup").is_some(),
        "{check}: the stored request itself must hit"
    );
    let probe_ns = probe_ns.map_or_else(|| ns.clone(), str::to_owned);
    let preq = SemanticRequest::new(CallKind::Chat, &probe.0, probe.1, Some(&probe_ns), None)
        .with_partition(probe.2);
    assert!(
        l.lookup(&preq).await.expect("lookup").is_none(),
        "{check}: a request outside the stored scope was served"
    );
    cleanup(b, &ns).await;
    cleanup(b, &probe_ns).await;
}

/// Same text, another model (or model group): never a hit.
pub async fn different_model_never_hits(b: &SharedSemanticBackend) {
    never_hits(
        b,
        "different_model",
        (chat("gpt-4o", STORED), None, None),
        (chat("gpt-4o-mini", STORED), None, None),
        None,
    )
    .await;
    never_hits(
        b,
        "different_model_group",
        (chat("x", STORED), Some("group-a"), None),
        (chat("x", STORED), Some("group-b"), None),
        None,
    )
    .await;
}

/// Same text, another keyed parameter (temperature, tools, response_format): never a hit.
pub async fn different_params_never_hit(b: &SharedSemanticBackend) {
    for (k, v) in [
        ("temperature", json!(0.7)),
        ("response_format", json!({"type": "json_object"})),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("n", json!(2)),
    ] {
        let mut other = chat("m", STORED);
        other[k] = v;
        never_hits(
            b,
            "different_params",
            (chat("m", STORED), None, None),
            (other, None, None),
            None,
        )
        .await;
    }
}

/// Same last user message, another system prompt: never a hit.
pub async fn different_system_prompt_never_hits(b: &SharedSemanticBackend) {
    let with_system = |s: &str| {
        json!({"model": "m", "messages": [
            {"role": "system", "content": s},
            {"role": "user", "content": STORED}
        ]})
    };
    never_hits(
        b,
        "different_system_prompt",
        (with_system("Answer in French."), None, None),
        (with_system("Answer in German."), None, None),
        None,
    )
    .await;
}

/// Same last user message in another conversation: never a hit.
pub async fn different_earlier_turns_never_hit(b: &SharedSemanticBackend) {
    let convo = |first: &str| {
        json!({"model": "m", "messages": [
            {"role": "user", "content": first},
            {"role": "assistant", "content": "OK."},
            {"role": "user", "content": "And how much does it cost?"}
        ]})
    };
    never_hits(
        b,
        "different_turns",
        (convo("I want a new passport."), None, None),
        (convo("I want a new driving licence."), None, None),
        None,
    )
    .await;
}

/// Same request in another namespace: never a hit.
pub async fn different_namespace_never_hits(b: &SharedSemanticBackend) {
    let other = unique_namespace("different_namespace_other");
    never_hits(
        b,
        "different_namespace",
        (chat("m", STORED), None, None),
        (chat("m", STORED), None, None),
        Some(&other),
    )
    .await;
}

/// Same request from another tenant partition: never a hit.
pub async fn different_tenant_never_hits(b: &SharedSemanticBackend) {
    never_hits(
        b,
        "different_tenant",
        (chat("m", STORED), None, Some("team-a")),
        (chat("m", STORED), None, Some("team-b")),
        None,
    )
    .await;
}

/// The scope filters *before* ranking: many closer records in another scope do not hide the
/// only record of the searched scope (a post-filtered top-k would return nothing).
pub async fn scope_is_a_pre_filter(b: &SharedSemanticBackend) {
    let ns = unique_namespace("pre_filter");
    let crowd = scope_for(&ns, "crowd");
    let lonely = scope_for(&ns, "lonely");
    for i in 0..200 {
        // Near-copies of the query vector in another scope.
        let v = unit(0.999, 1 + i % (DIMS - 1));
        b.store(SemanticRecord::new(
            crowd.clone(),
            Some(ns.clone()),
            format!("crowd {i}"),
            v,
            envelope("crowd"),
            None,
        ))
        .await
        .expect("store");
    }
    b.store(SemanticRecord::new(
        lonely.clone(),
        Some(ns.clone()),
        "lonely".to_owned(),
        unit(0.6, 5),
        envelope("lonely"),
        None,
    ))
    .await
    .expect("store");
    let found = b
        .search(&lonely, &unit(1.0, 1), 0.5, 1)
        .await
        .expect("search");
    assert_eq!(found.len(), 1, "the scope's only record must be found");
    assert_eq!(found[0].prompt, "lonely");
    assert!((found[0].similarity - 0.6).abs() < 0.01);
    let crowd_found = b
        .search(&crowd, &unit(1.0, 1), 0.5, 3)
        .await
        .expect("search");
    assert_eq!(crowd_found.len(), 3);
    assert!(crowd_found.iter().all(|m| m.prompt.starts_with("crowd")));
    cleanup(b, &ns).await;
}

/// Similarity exactly as configured: a record at cosine 0.8 is found with `min_similarity`
/// 0.79 (reported ≈ 0.8), not with 0.81; results come best first.
pub async fn threshold_edges(b: &SharedSemanticBackend) {
    let ns = unique_namespace("threshold");
    let scope = scope_for(&ns, "s");
    for (cos, axis, name) in [(0.8f32, 3, "p80"), (0.9, 4, "p90"), (0.5, 6, "p50")] {
        b.store(SemanticRecord::new(
            scope.clone(),
            Some(ns.clone()),
            name.to_owned(),
            unit(cos, axis),
            envelope(name),
            None,
        ))
        .await
        .expect("store");
    }
    let q = unit(1.0, 1);
    let got = b.search(&scope, &q, 0.79, 10).await.expect("search");
    let names: Vec<&str> = got.iter().map(|m| m.prompt.as_str()).collect();
    assert_eq!(names, vec!["p90", "p80"], "best first, 0.5 excluded");
    assert!(
        (got[1].similarity - 0.8).abs() < 0.005,
        "{}",
        got[1].similarity
    );
    assert!(
        (got[0].similarity - 0.9).abs() < 0.005,
        "{}",
        got[0].similarity
    );
    let got = b.search(&scope, &q, 0.81, 10).await.expect("search");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].prompt, "p90");
    assert!(
        b.search(&scope, &q, 0.95, 10)
            .await
            .expect("search")
            .is_empty()
    );
    let all = b.search(&scope, &q, 0.0, 10).await.expect("search");
    assert_eq!(all.len(), 3, "threshold 0 returns everything in scope");
    let one = b.search(&scope, &q, 0.0, 1).await.expect("search");
    assert_eq!(one.len(), 1, "limit is honoured");
    assert_eq!(one[0].prompt, "p90");
    cleanup(b, &ns).await;
}

/// A per-request threshold raises the configured one, never lowers it.
pub async fn request_threshold_only_raises(b: &SharedSemanticBackend) {
    let ns = unique_namespace("request_threshold");
    let s = sim(STORED, TYPO).await;
    let stored = chat("m", STORED);
    let probe = chat("m", TYPO);
    let with_min =
        |min: Option<f32>| SemanticRequest::new(CallKind::Chat, &probe, None, Some(&ns), min);
    let low = layer(b, threshold(s - 0.05));
    low.store(&req(&stored, &ns), envelope("a"), None)
        .await
        .expect("store");
    assert!(low.lookup(&with_min(None)).await.expect("lookup").is_some());
    assert!(
        low.lookup(&with_min(Some(s + 0.02)))
            .await
            .expect("lookup")
            .is_none(),
        "a higher request threshold applies"
    );
    let high = layer(b, threshold((s + 0.02).min(1.0)));
    assert!(
        high.lookup(&with_min(Some(0.0)))
            .await
            .expect("lookup")
            .is_none(),
        "a lower request threshold is ignored"
    );
    cleanup(b, &ns).await;
}

/// A record stored with a TTL disappears after it.
pub async fn ttl_expiry(b: &SharedSemanticBackend) {
    let ns = unique_namespace("ttl");
    let l = layer(b, threshold(0.9));
    let r = chat("m", STORED);
    l.store(
        &req(&r, &ns),
        envelope("short"),
        Some(Duration::from_secs(1)),
    )
    .await
    .expect("store");
    let long = chat("m", UNRELATED);
    l.store(
        &req(&long, &ns),
        envelope("long"),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("store");
    assert!(l.lookup(&req(&r, &ns)).await.expect("lookup").is_some());
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if l.lookup(&req(&r, &ns)).await.expect("lookup").is_none() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "record still served 5 s after a 1 s TTL"
        );
    }
    assert!(
        l.lookup(&req(&long, &ns)).await.expect("lookup").is_some(),
        "a longer TTL is unaffected"
    );
    cleanup(b, &ns).await;
}

/// A vector of another dimension than the index holds is an error, not a silent miss.
pub async fn dimension_mismatch_is_an_error(b: &SharedSemanticBackend) {
    let ns = unique_namespace("dims");
    let scope = scope_for(&ns, "s");
    b.store(SemanticRecord::new(
        scope.clone(),
        Some(ns.clone()),
        "sixty-four".to_owned(),
        unit(1.0, 1),
        envelope("a"),
        None,
    ))
    .await
    .expect("store");
    let short = vec![0.5f32; 32];
    let err = b
        .search(&scope, &short, 0.0, 1)
        .await
        .expect_err("a 32-dimension query against a 64-dimension index");
    assert!(err.to_string().contains("32"), "{err}");
    assert!(!err.is_transient());
    let err = b
        .store(SemanticRecord::new(
            scope.clone(),
            Some(ns.clone()),
            "thirty-two".to_owned(),
            short,
            envelope("b"),
            None,
        ))
        .await
        .expect_err("a 32-dimension record in a 64-dimension index");
    assert!(err.to_string().contains("32"), "{err}");
    cleanup(b, &ns).await;
}

/// An embedding API that hangs or refuses: the request is a miss within the semantic
/// deadline, and the upstream call goes on.
pub async fn embedder_outage_is_a_miss_within_the_deadline(b: &SharedSemanticBackend) {
    let ns = unique_namespace("outage");
    // A socket that accepts and never answers, and a port nobody listens on.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hang_addr = hang.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    for addr in [hang_addr, closed] {
        let embedder = HttpEmbedder::new(
            HttpEmbedderConfig::new(format!("http://{addr}/v1"), "e5")
                .with_timeout(Duration::from_secs(30)),
        )
        .expect("embedder");
        let l = SemanticCache::new(Arc::new(embedder), b.clone(), threshold(0.5));
        let deadline = Duration::from_millis(300);
        let cache = Cache::builder(MemoryBackend::default())
            .namespace(ns.clone())
            .configure(|s| s.semantic_timeout = deadline)
            .semantic(Arc::new(l))
            .build();
        let start = Instant::now();
        let out = cache
            .get_or_fetch(
                CallKind::Chat,
                &chat("m", STORED),
                &CacheControl::none(),
                || async {
                    Ok::<Value, std::io::Error>(
                        json!({"choices": [{"message": {"content": "up"}}]}),
                    )
                },
            )
            .await
            .expect("the call succeeds");
        let took = start.elapsed();
        assert!(!out.status.is_hit());
        assert_eq!(out.value["choices"][0]["message"]["content"], "up");
        assert!(
            took < deadline + Duration::from_millis(700),
            "lookup took {took:?} with a {deadline:?} semantic deadline ({addr})"
        );
        assert!(cache.stats().error_total() >= 1, "the outage is counted");
    }
    holder.abort();
    cleanup(b, &ns).await;
}

/// The guard rejects a near-miss trap that passes the threshold (and only the guard does).
pub async fn guard_rejects_near_miss_traps(b: &SharedSemanticBackend) {
    let ns = unique_namespace("guard");
    let stored = "Is a 2-bedroom flat available in March?";
    let trap = "Is a 3-bedroom flat available in March?";
    let s = sim(stored, trap).await;
    let t = (s - 0.02).max(0.0);
    let guarded = layer(b, threshold(t));
    guarded
        .store(&req(&chat("m", stored), &ns), envelope("2-bed"), None)
        .await
        .expect("store");
    assert!(
        guarded
            .lookup(&req(&chat("m", trap), &ns))
            .await
            .expect("lookup")
            .is_none(),
        "the guard must reject a different number"
    );
    let stats = guarded.stats().expect("stats");
    assert!(
        stats
            .guard_rejections
            .iter()
            .any(|(r, n)| *r == "numbers" && *n == 1),
        "{stats:?}"
    );
    let unguarded = layer(b, threshold(t).with_guard(GuardConfig::off()));
    assert!(
        unguarded
            .lookup(&req(&chat("m", trap), &ns))
            .await
            .expect("lookup")
            .is_some(),
        "without the guard the trap is served (similarity {s})"
    );
    cleanup(b, &ns).await;
}

/// Shadow mode stores and counts would-be hits with their similarity, and serves none.
pub async fn shadow_mode_counts_without_serving(b: &SharedSemanticBackend) {
    let ns = unique_namespace("shadow");
    let l = layer(b, threshold(0.8).with_shadow_mode(true));
    l.store(&req(&chat("m", STORED), &ns), envelope("a"), None)
        .await
        .expect("store");
    assert!(
        l.lookup(&req(&chat("m", TYPO), &ns))
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        l.lookup(&req(&chat("m", UNRELATED), &ns))
            .await
            .expect("lookup")
            .is_none()
    );
    let stats = l.stats().expect("stats");
    assert_eq!(stats.shadow_hits, 1, "{stats:?}");
    assert_eq!(stats.hits, 0);
    assert_eq!(stats.lookups, 2);
    assert_eq!(stats.stores, 1);
    let s = sim(STORED, TYPO).await;
    assert!(
        (stats.shadow_similarity_sum - f64::from(s)).abs() < 0.01,
        "{stats:?}"
    );
    cleanup(b, &ns).await;
}

/// Storing the same prompt in the same scope replaces the record (no duplicates).
pub async fn same_prompt_overwrites(b: &SharedSemanticBackend) {
    let ns = unique_namespace("overwrite");
    let scope = scope_for(&ns, "s");
    let (old, new) = (envelope("old"), envelope("new"));
    for value in [&old, &new] {
        b.store(SemanticRecord::new(
            scope.clone(),
            Some(ns.clone()),
            "same prompt".to_owned(),
            unit(1.0, 1),
            value.clone(),
            None,
        ))
        .await
        .expect("store");
    }
    let got = b
        .search(&scope, &unit(1.0, 1), 0.5, 10)
        .await
        .expect("search");
    assert_eq!(got.len(), 1, "one record per scope and prompt");
    assert_eq!(got[0].value, new);
    cleanup(b, &ns).await;
}

/// `clear(ns)` removes the namespace and its nested namespaces, and nothing else.
pub async fn clear_namespace_removes_nested_only(b: &SharedSemanticBackend) {
    let base = unique_namespace("clear");
    let spaces = [
        base.clone(),
        format!("{base}:sub"),
        format!("{base}x"),
        format!("other-{base}"),
    ];
    let l = layer(b, threshold(0.9));
    let r = chat("m", STORED);
    for ns in &spaces {
        l.store(&req(&r, ns), envelope(ns), None)
            .await
            .expect("store");
    }
    let removed = b.clear(Some(&base)).await.expect("clear");
    assert_eq!(removed, 2, "the namespace and its nested one");
    assert!(
        l.lookup(&req(&r, &spaces[0]))
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        l.lookup(&req(&r, &spaces[1]))
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        l.lookup(&req(&r, &spaces[2]))
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(
        l.lookup(&req(&r, &spaces[3]))
            .await
            .expect("lookup")
            .is_some()
    );
    for ns in &spaces {
        cleanup(b, ns).await;
    }
    assert!(
        l.lookup(&req(&r, &spaces[2]))
            .await
            .expect("lookup")
            .is_none()
    );
}

/// `ping` answers with the backend's name.
pub async fn ping(b: &SharedSemanticBackend) {
    let h = b.ping().await.expect("ping");
    assert_eq!(h.backend, b.name());
}

/// Expands to one `#[test]` per check of [`CHECKS`] against a backend factory.
///
/// * `semantic_conformance!(backend = <future resolving to a backend>);`
/// * `semantic_conformance!(optional_backend = <future resolving to Option<backend>>);`
///   (the factory returns `None` after [`service_unavailable`], which fails the test).
/// * `semantic_conformance!(service = "redis-stack", optional_backend = ...);`: as above, with
///   every check `#[ignore]`d for a plain `cargo test` (the reason names the service); `cargo
///   test -- --include-ignored` runs them.
///
/// ```ignore
/// cache_semantic::semantic_conformance!(backend = async { MemorySemanticBackend::default() });
/// cache_semantic::semantic_conformance!(
///     service = "redis-stack",
///     optional_backend = async { connect_or_fail().await }
/// );
/// ```
///
/// The future is evaluated once per check, so each check gets a fresh client.
#[macro_export]
macro_rules! semantic_conformance {
    (backend = $factory:expr) => {
        $crate::__semantic_conformance_checks!(semantic_conformance! {
            @each (any(), "") (async { ::core::option::Option::Some($factory.await) })
        });
    };
    (optional_backend = $factory:expr) => {
        $crate::__semantic_conformance_checks!(semantic_conformance! {
            @each (any(), "") ($factory)
        });
    };
    (service = $service:literal, optional_backend = $factory:expr) => {
        $crate::__semantic_conformance_checks!(semantic_conformance! {
            @each (all(), concat!("needs the ", $service, " test service: `cargo xtask services up ", $service, "`, then `cargo test -- --include-ignored` (cargo xtask test does both)"))
            ($factory)
        });
    };
    (@each ($ignored:meta, $reason:expr) ($factory:expr) $($check:ident)+) => {
        $(
            #[test]
            #[cfg_attr($ignored, ignore = $reason)]
            fn $check() {
                $crate::testing::runtime().block_on(async {
                    // No silent skip: a factory reports a missing service by failing.
                    let ::core::option::Option::Some(backend) = $factory.await else {
                        ::core::panic!(
                            "the backend factory returned None (a missing service must fail the check)"
                        );
                    };
                    let backend: $crate::testing::SharedSemanticBackend =
                        ::std::sync::Arc::new(backend);
                    $crate::testing::$check(&backend).await;
                });
            }
        )+
    };
}
