//! The orchestration end to end: directives, fail-open, breaker, single-flight, tiers,
//! embeddings partial hits, runtime replacement, events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_core::{
    BreakerConfig, BreakerState, Bytes, Cache, CacheBackend, CacheBuilder, CacheControl,
    CacheError, CacheEvent, CacheMode, CacheStatus, CallError, CallKind, Capabilities, EventKind,
    Health, L1Config, MemoryBackend, MemoryConfig, MissReason, RequestContext, Result,
    StoreFailure, StoreOutcome, Tier, async_trait,
};
use serde_json::{Value, json};

/// A memory backend that can be told to hang or fail, and counts calls.
#[derive(Debug, Default)]
struct Faulty {
    inner: MemoryBackend,
    hang: AtomicBool,
    fail: AtomicBool,
    panic_on_set: AtomicBool,
    fail_set: AtomicBool,
    /// Milliseconds a `get` waits after reading its value, before returning it.
    slow_get_ms: AtomicU64,
    gets: AtomicU64,
    sets: AtomicU64,
}

impl Faulty {
    async fn fault(&self) -> Result<()> {
        if self.hang.load(SeqCst) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        if self.fail.load(SeqCst) {
            return Err(CacheError::unavailable("faulty", "connection refused"));
        }
        Ok(())
    }
}

#[async_trait]
impl CacheBackend for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::local().with_shared(true)
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.gets.fetch_add(1, SeqCst);
        self.fault().await?;
        let value = self.inner.get(key).await;
        let delay = self.slow_get_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        value
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.sets.fetch_add(1, SeqCst);
        assert!(
            !self.panic_on_set.load(SeqCst),
            "faulty: set panics on demand"
        );
        self.fault().await?;
        if self.fail_set.load(SeqCst) {
            return Err(CacheError::backend(
                "faulty",
                "set",
                false,
                "OOM command not allowed",
            ));
        }
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.fault().await?;
        self.inner.delete(key).await
    }
    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        self.fault().await?;
        self.inner.clear(namespace).await
    }
    async fn ping(&self) -> Result<Health> {
        self.fault().await?;
        Ok(Health::new("faulty", Duration::ZERO))
    }
}

fn chat(text: &str) -> Value {
    json!({
        "id": format!("chatcmpl-{text}"), "object": "chat.completion", "created": 1,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
}

fn req(prompt: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": prompt}]})
}

async fn call(cache: &Cache, r: &Value, cc: &CacheControl, text: &str) -> (Value, CacheStatus) {
    let out = cache
        .get_or_fetch(CallKind::Chat, r, cc, || async {
            Ok::<_, std::io::Error>(chat(text))
        })
        .await
        .expect("call");
    (out.value, out.status)
}

async fn settle(cache: &Cache) {
    cache.flush(Duration::from_secs(5)).await.expect("flush");
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap()
}

#[tokio::test]
async fn miss_then_byte_identical_hit() {
    let cache = Cache::in_memory();
    let (v1, s1) = call(&cache, &req("q"), &CacheControl::none(), "a").await;
    assert!(matches!(
        s1,
        CacheStatus::Miss {
            reason: MissReason::NotFound,
            store: StoreOutcome::Stored
        }
    ));
    settle(&cache).await;
    let (v2, s2) = call(&cache, &req("q"), &CacheControl::none(), "b").await;
    assert!(s2.is_hit());
    assert_eq!(v1, v2);
    assert_eq!(cache.stats().hits(), 1);
    assert_eq!(cache.stats().prompt_tokens_saved.load(SeqCst), 5);
    assert_eq!(cache.stats().completion_tokens_saved.load(SeqCst), 2);
}

#[tokio::test]
async fn no_cache_skips_lookup_but_stores() {
    let cache = Cache::in_memory();
    call(&cache, &req("q"), &CacheControl::none(), "old").await;
    settle(&cache).await;
    let (v, s) = call(
        &cache,
        &req("q"),
        &CacheControl::none().with_no_cache(),
        "new",
    )
    .await;
    assert_eq!(content(&v), "new");
    assert_eq!(
        s.header_value("llm-cache"),
        "llm-cache; fwd=request; stored"
    );
    settle(&cache).await;
    let (v, s) = call(&cache, &req("q"), &CacheControl::none(), "unused").await;
    assert!(s.is_hit());
    assert_eq!(content(&v), "new", "no-cache refreshed the entry");
}

#[tokio::test]
async fn no_store_looks_up_but_does_not_store() {
    let cache = Cache::in_memory();
    let (_, s) = call(
        &cache,
        &req("q"),
        &CacheControl::none().with_no_store(),
        "x",
    )
    .await;
    assert!(matches!(
        s,
        CacheStatus::Miss {
            store: StoreOutcome::NotRequested,
            ..
        }
    ));
    settle(&cache).await;
    let (_, s) = call(&cache, &req("q"), &CacheControl::none(), "y").await;
    assert!(!s.is_hit(), "no-store must not write");
    settle(&cache).await;
    let (v, s) = call(
        &cache,
        &req("q"),
        &CacheControl::none().with_no_store(),
        "z",
    )
    .await;
    assert!(s.is_hit(), "no-store still reads");
    assert_eq!(content(&v), "y");
}

#[tokio::test]
async fn ttl_directive_and_default_ttl() {
    let cache = CacheBuilder::new(MemoryBackend::default())
        .default_ttl(Duration::from_secs(600))
        .build();
    call(
        &cache,
        &req("short"),
        &CacheControl::none().with_ttl(Duration::from_millis(300)),
        "a",
    )
    .await;
    call(&cache, &req("long"), &CacheControl::none(), "b").await;
    settle(&cache).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        !call(&cache, &req("short"), &CacheControl::none(), "c")
            .await
            .1
            .is_hit()
    );
    assert!(
        call(&cache, &req("long"), &CacheControl::none(), "d")
            .await
            .1
            .is_hit()
    );
}

#[tokio::test]
async fn max_age_zero_is_always_a_miss_and_refreshes() {
    let cache = Cache::in_memory();
    call(&cache, &req("q"), &CacheControl::none(), "v1").await;
    settle(&cache).await;
    let cc0 = CacheControl::none().with_max_age(Duration::ZERO);
    for i in 0..3 {
        let (v, s) = call(&cache, &req("q"), &cc0, &format!("v{}", i + 2)).await;
        assert_eq!(
            s,
            CacheStatus::Miss {
                reason: MissReason::Stale,
                store: StoreOutcome::Stored
            }
        );
        assert_eq!(content(&v), format!("v{}", i + 2));
        settle(&cache).await;
    }
    let (v, _) = call(&cache, &req("q"), &CacheControl::none(), "unused").await;
    assert_eq!(content(&v), "v4", "the stale miss refreshed the entry");
}

#[tokio::test]
async fn max_age_accepts_young_and_rejects_old_entries() {
    let cache = Cache::in_memory();
    call(&cache, &req("q"), &CacheControl::none(), "v1").await;
    settle(&cache).await;
    let cc = CacheControl::none().with_max_age(Duration::from_millis(400));
    assert!(call(&cache, &req("q"), &cc, "x").await.1.is_hit());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (v, s) = call(&cache, &req("q"), &cc, "v2").await;
    assert!(matches!(
        s,
        CacheStatus::Miss {
            reason: MissReason::Stale,
            ..
        }
    ));
    assert_eq!(content(&v), "v2");
    assert_eq!(s.header_value("llm-cache"), "llm-cache; fwd=stale; stored");
}

#[tokio::test]
async fn namespaces_isolate_and_request_namespaces_nest_under_the_configured_one() {
    let cache = CacheBuilder::new(MemoryBackend::default())
        .namespace("app")
        .build();
    call(&cache, &req("q"), &CacheControl::none(), "app").await;
    call(
        &cache,
        &req("q"),
        &CacheControl::none().with_namespace("team-a"),
        "team",
    )
    .await;
    settle(&cache).await;
    let (v, _) = call(&cache, &req("q"), &CacheControl::none(), "x").await;
    assert_eq!(content(&v), "app");
    let (v, _) = call(
        &cache,
        &req("q"),
        &CacheControl::none().with_namespace("team-a"),
        "x",
    )
    .await;
    assert_eq!(content(&v), "team");
    let key = |ns: &str| {
        cache
            .prepare(
                CallKind::Chat,
                &req("q"),
                &CacheControl::none().with_namespace(ns),
                &RequestContext::default(),
            )
            .unwrap()
            .key()
            .unwrap()
            .clone()
    };
    assert!(key("team-a").as_str().starts_with("app:team-a:"));
    // A caller's namespace is one opaque segment: `a:b` cannot reach into `a`'s scope.
    assert!(key("team-a:x").as_str().starts_with("app:team-a%3Ax:"));
    // clear() of the configured namespace also clears the request namespaces nested in it.
    cache.clear(None).await.unwrap();
    for ns in [None, Some("team-a")] {
        let cc = ns.map_or(CacheControl::none(), |n| {
            CacheControl::none().with_namespace(n)
        });
        assert!(
            !call(&cache, &req("q"), &cc, "y").await.1.is_hit(),
            "{ns:?}"
        );
    }
    // ... and nothing outside it: another namespace on the same backend keeps its entries.
    let shared: cache_core::SharedBackend = std::sync::Arc::new(MemoryBackend::default());
    let app = CacheBuilder::from_shared(shared.clone())
        .namespace("app")
        .build();
    let app2 = CacheBuilder::from_shared(shared).namespace("app2").build();
    call(
        &app2,
        &req("q"),
        &CacheControl::none().with_namespace("t"),
        "kept",
    )
    .await;
    settle(&app2).await;
    app.clear(None).await.unwrap();
    let (v, s) = call(
        &app2,
        &req("q"),
        &CacheControl::none().with_namespace("t"),
        "x",
    )
    .await;
    assert!(s.is_hit());
    assert_eq!(content(&v), "kept");
}

#[tokio::test]
async fn default_off_mode_needs_use_cache_on_both_requests() {
    let cache = CacheBuilder::new(MemoryBackend::default())
        .configure(|s| s.mode = CacheMode::DefaultOff)
        .build();
    let (_, s) = call(&cache, &req("q"), &CacheControl::none(), "a").await;
    assert_eq!(
        s,
        CacheStatus::Bypass {
            reason: "default-off"
        }
    );
    settle(&cache).await;
    let on = CacheControl::none().with_use_cache();
    assert!(!call(&cache, &req("q"), &on, "b").await.1.is_hit());
    settle(&cache).await;
    assert!(
        !call(&cache, &req("q"), &CacheControl::none(), "c")
            .await
            .1
            .is_hit()
    );
    assert!(call(&cache, &req("q"), &on, "d").await.1.is_hit());
}

#[tokio::test]
async fn only_if_cached_never_calls_upstream() {
    let cache = Cache::in_memory();
    let called = AtomicBool::new(false);
    let out = cache
        .get_or_fetch(
            CallKind::Chat,
            &req("q"),
            &CacheControl::none().with_only_if_cached(),
            || async {
                called.store(true, SeqCst);
                Ok::<_, std::io::Error>(chat("x"))
            },
        )
        .await;
    assert!(matches!(out, Err(CallError::NotCached)));
    assert!(!called.load(SeqCst));
}

#[tokio::test]
async fn gates_call_types_and_max_messages() {
    let cache = CacheBuilder::new(MemoryBackend::default())
        .configure(|s| {
            s.supported_call_types = [CallKind::Embedding].into_iter().collect();
        })
        .build();
    assert_eq!(
        call(&cache, &req("q"), &CacheControl::none(), "a").await.1,
        CacheStatus::Bypass {
            reason: "call-type"
        }
    );
    let cache = CacheBuilder::new(MemoryBackend::default())
        .configure(|s| s.max_messages = Some(2))
        .build();
    let long = json!({"model": "m", "messages": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "3"}]});
    assert_eq!(
        call(&cache, &long, &CacheControl::none(), "a").await.1,
        CacheStatus::Bypass {
            reason: "max-messages"
        }
    );
    // No default limit (LiteLLM's silent 4 is F15).
    let cache = Cache::in_memory();
    let many: Vec<Value> = (0..10)
        .map(|i| json!({"role": "user", "content": i.to_string()}))
        .collect();
    let r = json!({"model": "m", "messages": many});
    call(&cache, &r, &CacheControl::none(), "a").await;
    settle(&cache).await;
    assert!(
        call(&cache, &r, &CacheControl::none(), "b")
            .await
            .1
            .is_hit()
    );
}

#[tokio::test]
async fn responses_without_output_are_not_stored() {
    let cache = Cache::in_memory();
    let empty = json!({"choices": [{"message": {"role": "assistant", "content": ""}}]});
    let out = cache
        .get_or_fetch(CallKind::Chat, &req("q"), &CacheControl::none(), || async {
            Ok::<_, std::io::Error>(empty.clone())
        })
        .await
        .unwrap();
    assert!(matches!(
        out.status,
        CacheStatus::Miss {
            store: StoreOutcome::NotRequested,
            ..
        }
    ));
    settle(&cache).await;
    assert!(
        !call(&cache, &req("q"), &CacheControl::none(), "x")
            .await
            .1
            .is_hit()
    );
}

#[tokio::test]
async fn a_hanging_backend_costs_at_most_the_deadline() {
    let backend = Arc::new(Faulty::default());
    backend.hang.store(true, SeqCst);
    let cache = CacheBuilder::from_shared(backend.clone())
        .read_timeout(Duration::from_millis(50))
        .configure(|s| s.write_timeout = Duration::from_millis(100))
        .build();
    for _ in 0..3 {
        let start = Instant::now();
        let (v, s) = call(&cache, &req("q"), &CacheControl::none(), "fresh").await;
        assert_eq!(content(&v), "fresh");
        assert!(
            matches!(
                s,
                CacheStatus::Miss {
                    reason: MissReason::Error,
                    ..
                }
            ),
            "{s:?}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "took {:?}",
            start.elapsed()
        );
    }
    assert!(cache.stats().error_total() >= 3);
    let errors = cache.stats().errors();
    assert!(
        errors
            .keys()
            .any(|(b, op, kind)| b == "faulty" && *op == "get" && *kind == "timeout")
    );
}

/// A backend failing every call, behind a breaker opening after `threshold` failures for
/// `cool_down`.
fn failing_behind_breaker(threshold: u32, cool_down: Duration) -> (Arc<Faulty>, Cache) {
    let backend = Arc::new(Faulty::default());
    backend.fail.store(true, SeqCst);
    let cache = CacheBuilder::from_shared(backend.clone())
        .configure(|s| s.breaker = BreakerConfig::new(threshold, cool_down))
        .build();
    (backend, cache)
}

#[tokio::test]
async fn a_health_check_answered_ends_the_breaker_cool_down() {
    // A cool-down far longer than the test: only the health check can end it.
    let (backend, cache) = failing_behind_breaker(2, Duration::from_secs(600));
    for _ in 0..2 {
        call(&cache, &req("q"), &CacheControl::none(), "ok").await;
    }
    settle(&cache).await;
    let engine = cache.engine().unwrap();
    assert_eq!(engine.breaker_state(), BreakerState::Open);
    // Still failing: the health check fails and the breaker stays open.
    assert!(cache.probe().await.is_err());
    assert_eq!(engine.breaker_state(), BreakerState::Open);
    let (_, s) = call(&cache, &req("q"), &CacheControl::none(), "ok").await;
    assert!(matches!(
        s,
        CacheStatus::Miss {
            reason: MissReason::BreakerOpen,
            ..
        }
    ));
    // Back: the answered health check lets the next call probe, which closes the breaker.
    backend.fail.store(false, SeqCst);
    cache.probe().await.expect("the backend answers");
    assert_eq!(engine.breaker_state(), BreakerState::HalfOpen);
    call(&cache, &req("q"), &CacheControl::none(), "stored").await;
    settle(&cache).await;
    assert_eq!(engine.breaker_state(), BreakerState::Closed);
    let (v, s) = call(&cache, &req("q"), &CacheControl::none(), "unused").await;
    assert!(s.is_hit());
    assert_eq!(content(&v), "stored");
}

#[tokio::test]
async fn an_erroring_backend_is_a_miss_and_the_breaker_opens_then_recovers() {
    let (backend, cache) = failing_behind_breaker(3, Duration::from_millis(300));
    for _ in 0..3 {
        let (v, _) = call(
            &cache,
            &req("q"),
            &CacheControl::none().with_no_store(),
            "ok",
        )
        .await;
        assert_eq!(content(&v), "ok");
    }
    assert_eq!(cache.engine().unwrap().breaker_state(), BreakerState::Open);
    let gets = backend.gets.load(SeqCst);
    for _ in 0..10 {
        let (_, s) = call(
            &cache,
            &req("q"),
            &CacheControl::none().with_no_store(),
            "ok",
        )
        .await;
        assert!(matches!(
            s,
            CacheStatus::Miss {
                reason: MissReason::BreakerOpen,
                ..
            }
        ));
    }
    assert_eq!(
        backend.gets.load(SeqCst),
        gets,
        "an open breaker makes no backend calls"
    );
    assert_eq!(cache.stats().breaker_rejections.load(SeqCst), 10);

    // Backend recovers; after the cool-down one probe goes through and closes the breaker.
    backend.fail.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    call(&cache, &req("q"), &CacheControl::none(), "stored").await;
    settle(&cache).await;
    assert_eq!(
        cache.engine().unwrap().breaker_state(),
        BreakerState::Closed
    );
    let (v, s) = call(&cache, &req("q"), &CacheControl::none(), "unused").await;
    assert!(s.is_hit());
    assert_eq!(content(&v), "stored");
}

#[tokio::test]
async fn failed_writes_never_fail_the_call() {
    let backend = Arc::new(Faulty::default());
    backend.fail.store(true, SeqCst);
    let cache = CacheBuilder::from_shared(backend.clone()).build();
    let (v, _) = call(&cache, &req("q"), &CacheControl::none(), "fine").await;
    assert_eq!(content(&v), "fine");
    settle(&cache).await;
    assert!(backend.sets.load(SeqCst) >= 1);
    assert!(cache.stats().errors().keys().any(|(_, op, _)| *op == "set"));
}

#[tokio::test]
async fn a_panicking_write_never_fails_the_call() {
    // Writes that complete at once run in place (no task); a panic there must stay contained.
    let backend = Arc::new(Faulty::default());
    backend.panic_on_set.store(true, SeqCst);
    let cache = CacheBuilder::from_shared(backend.clone()).build();
    let (v, _) = call(&cache, &req("q"), &CacheControl::none(), "fine").await;
    assert_eq!(content(&v), "fine");
    assert_eq!(backend.sets.load(SeqCst), 1);
    backend.panic_on_set.store(false, SeqCst);
    let (_, status) = call(&cache, &req("q"), &CacheControl::none(), "again").await;
    assert!(matches!(status, CacheStatus::Miss { .. }), "{status:?}");
    settle(&cache).await;
    let (v, status) = call(&cache, &req("q"), &CacheControl::none(), "unused").await;
    assert!(matches!(status, CacheStatus::Hit { .. }), "{status:?}");
    assert_eq!(content(&v), "again");
}

#[tokio::test]
async fn an_in_memory_write_is_visible_as_soon_as_the_call_returns() {
    let cache = CacheBuilder::new(MemoryBackend::new(MemoryConfig::default())).build();
    call(&cache, &req("q"), &CacheControl::none(), "first").await;
    // No flush: the write to an in-process backend completed in place.
    let (v, status) = call(&cache, &req("q"), &CacheControl::none(), "unused").await;
    assert!(matches!(status, CacheStatus::Hit { .. }), "{status:?}");
    assert_eq!(content(&v), "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_misses_make_one_upstream_call() {
    let cache = Cache::in_memory();
    let fetches = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch(
                        CallKind::Chat,
                        &req("same"),
                        &CacheControl::none(),
                        || async move {
                            fetches.fetch_add(1, SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok::<_, std::io::Error>(chat("only-one"))
                        },
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut coalesced = 0;
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(content(&out.value), "only-one");
        coalesced += usize::from(out.status == CacheStatus::Coalesced);
    }
    assert_eq!(
        fetches.load(SeqCst),
        1,
        "100 concurrent identical misses → 1 fetch"
    );
    assert_eq!(coalesced, 99);
    assert_eq!(cache.stats().coalesced.load(SeqCst), 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leader_does_not_poison_its_followers() {
    let cache = Cache::in_memory();
    let fetches = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tokio::spawn(async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                cache
                    .get_or_fetch(
                        CallKind::Chat,
                        &req("same"),
                        &CacheControl::none(),
                        || async move {
                            let n = fetches.fetch_add(1, SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if n == 0 {
                                Err(std::io::Error::other("upstream 500"))
                            } else {
                                Ok(chat("second-try"))
                            }
                        },
                    )
                    .await
            })
        })
        .collect();
    let mut errors = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(out) => assert_eq!(content(&out.value), "second-try"),
            Err(CallError::Upstream(_)) => errors += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(errors, 1, "only the failed leader sees its error");
    assert_eq!(
        fetches.load(SeqCst),
        2,
        "one new leader, the rest follow it"
    );
}

#[tokio::test]
async fn l1_tier_serves_and_delete_and_clear_reach_both_tiers() {
    let backend = Arc::new(Faulty::default());
    let cache = CacheBuilder::from_shared(backend.clone())
        .namespace("ns")
        .l1(L1Config::new(
            MemoryConfig::default(),
            Duration::from_secs(60),
        ))
        .build();
    call(&cache, &req("q"), &CacheControl::none(), "v").await;
    settle(&cache).await;
    let gets = backend.gets.load(SeqCst);
    let out = cache
        .get_or_fetch(CallKind::Chat, &req("q"), &CacheControl::none(), || async {
            Ok::<_, std::io::Error>(chat("x"))
        })
        .await
        .unwrap();
    assert!(matches!(
        out.status,
        CacheStatus::Hit { tier: Tier::L1, .. }
    ));
    assert_eq!(
        backend.gets.load(SeqCst),
        gets,
        "L1 hit makes no backend call"
    );

    // delete by the key the client saw (x-litellm-cache-key) reaches both tiers (F3).
    let key = out.key.unwrap().to_string();
    assert_eq!(cache.delete(&[key]).await.unwrap(), 1);
    assert!(
        !call(&cache, &req("q"), &CacheControl::none(), "v2")
            .await
            .1
            .is_hit()
    );
    settle(&cache).await;
    assert!(
        call(&cache, &req("q"), &CacheControl::none(), "x")
            .await
            .1
            .is_hit()
    );
    cache.clear(None).await.unwrap();
    assert!(
        !call(&cache, &req("q"), &CacheControl::none(), "v3")
            .await
            .1
            .is_hit()
    );
}

#[tokio::test]
async fn l1_never_outlives_the_backend_entry() {
    let backend = Arc::new(Faulty::default());
    let cache = CacheBuilder::from_shared(backend.clone())
        .l1(L1Config::new(
            MemoryConfig::default(),
            Duration::from_secs(600),
        ))
        .build();
    // Another process writes the entry with a 400 ms TTL; we read it into L1.
    let writer = CacheBuilder::from_shared(backend.clone()).build();
    call(
        &writer,
        &req("q"),
        &CacheControl::none().with_ttl(Duration::from_millis(400)),
        "v",
    )
    .await;
    settle(&writer).await;
    let (_, s) = call(&cache, &req("q"), &CacheControl::none(), "x").await;
    assert!(matches!(
        s,
        CacheStatus::Hit {
            tier: Tier::Backend,
            ..
        }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (v, s) = call(&cache, &req("q"), &CacheControl::none(), "fresh").await;
    assert!(!s.is_hit(), "L1 kept an entry past the backend's expiry");
    assert_eq!(content(&v), "fresh");
}

#[tokio::test]
async fn embeddings_partial_hits_fetch_only_missing_inputs() {
    let cache = Cache::in_memory();
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let upstream = |seen: Arc<std::sync::Mutex<Vec<Value>>>| {
        move |r: Value| async move {
            seen.lock().unwrap().push(r["input"].clone());
            let inputs: Vec<String> = match &r["input"] {
                Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                Value::String(s) => vec![s.clone()],
                _ => unreachable!(),
            };
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": [s.len() as f64, 0.5]}))
                .collect();
            let tokens: usize = inputs.iter().map(String::len).sum();
            let body = json!({"object": "list", "data": data, "model": "emb-1", "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
            Ok::<_, std::io::Error>(Bytes::from(serde_json::to_vec(&body).unwrap()))
        }
    };
    let ctx = RequestContext::default();
    let cc = CacheControl::none();
    let first = cache
        .embeddings(
            &json!({"model": "e", "input": ["a", "bb"]}),
            &cc,
            &ctx,
            upstream(seen.clone()),
        )
        .await
        .unwrap();
    assert_eq!(first.fetched, 2);
    settle(&cache).await;
    let out = cache
        .embeddings(
            &json!({"model": "e", "input": ["a", "ccc", "bb"]}),
            &cc,
            &ctx,
            upstream(seen.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &json!(["ccc"]),
        "upstream sees only the missing input"
    );
    assert_eq!((out.cached, out.fetched), (2, 1));
    assert!(matches!(
        out.status,
        CacheStatus::Partial {
            cached: 2,
            total: 3,
            store: StoreOutcome::Stored
        }
    ));
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    let lens: Vec<f64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"][0].as_f64().unwrap())
        .collect();
    assert_eq!(lens, vec![1.0, 3.0, 2.0], "original order");
    let idx: Vec<u64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2]);
    assert_eq!(v["usage"]["prompt_tokens"], json!(6), "1 + 3 + 2 tokens");
    settle(&cache).await;

    // Everything cached now: no upstream call, and a single string hits the per-item entry.
    let calls = seen.lock().unwrap().len();
    let out = cache
        .embeddings(
            &json!({"model": "e", "input": "ccc"}),
            &cc,
            &ctx,
            upstream(seen.clone()),
        )
        .await
        .unwrap();
    assert!(out.status.is_hit());
    assert_eq!(seen.lock().unwrap().len(), calls);
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["data"][0]["embedding"][0], json!(3.0));
    assert_eq!(v["model"], json!("emb-1"));
    // A different model or dimensions misses.
    let out = cache
        .embeddings(
            &json!({"model": "e", "input": "ccc", "dimensions": 2}),
            &cc,
            &ctx,
            upstream(seen.clone()),
        )
        .await
        .unwrap();
    assert!(!out.status.is_hit());
}

#[tokio::test]
async fn runtime_disable_enable_and_update() {
    let cache = Cache::disabled();
    assert_eq!(
        call(&cache, &req("q"), &CacheControl::none(), "a").await.1,
        CacheStatus::Bypass { reason: "disabled" }
    );
    assert!(cache.enable(CacheBuilder::new(MemoryBackend::default()).build_engine()));
    assert!(
        !cache.enable(CacheBuilder::new(MemoryBackend::default()).build_engine()),
        "enable does not replace"
    );
    call(&cache, &req("q"), &CacheControl::none(), "a").await;
    settle(&cache).await;
    assert!(
        call(&cache, &req("q"), &CacheControl::none(), "b")
            .await
            .1
            .is_hit()
    );

    // An in-flight call started on the old engine finishes and stores there.
    let old_engine = cache.engine().unwrap();
    let slow = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_fetch(
                    CallKind::Chat,
                    &req("slow"),
                    &CacheControl::none(),
                    || async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(chat("slow"))
                    },
                )
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    cache.update(CacheBuilder::new(MemoryBackend::default()).build_engine());
    assert_eq!(content(&slow.await.unwrap().value), "slow");
    assert!(
        !call(&cache, &req("q"), &CacheControl::none(), "c")
            .await
            .1
            .is_hit(),
        "new engine is empty"
    );
    assert!(old_engine.backend().get("unused").await.unwrap().is_none());
    cache.disable();
    assert!(!cache.is_enabled());
}

#[tokio::test]
async fn observers_see_hits_misses_and_stores() {
    let cache = Cache::in_memory();
    type Log = std::sync::Mutex<Vec<(EventKind, Option<String>)>>;
    let events: Arc<Log> = Arc::default();
    let sink = events.clone();
    cache.add_observer(Arc::new(move |e: &CacheEvent<'_>| {
        sink.lock()
            .unwrap()
            .push((e.kind, e.key.map(str::to_owned)));
    }));
    call(&cache, &req("q"), &CacheControl::none(), "a").await;
    settle(&cache).await;
    call(&cache, &req("q"), &CacheControl::none(), "b").await;
    let kinds: Vec<EventKind> = events.lock().unwrap().iter().map(|e| e.0).collect();
    assert_eq!(
        kinds,
        vec![EventKind::Miss, EventKind::Store, EventKind::Hit]
    );
    assert!(events.lock().unwrap().iter().all(|e| e.1.is_some()));
}

#[tokio::test]
async fn ping_reports_health_and_a_write_round_trip() {
    let cache = Cache::in_memory();
    let report = cache.ping().await.unwrap();
    assert!(report.set_ok);
    assert_eq!(report.health.backend, "memory");
    let backend = Arc::new(Faulty::default());
    backend.fail.store(true, SeqCst);
    let cache = CacheBuilder::from_shared(backend).build();
    assert!(cache.ping().await.is_err());
}

#[tokio::test]
async fn typed_api_with_structs() {
    #[derive(serde::Serialize)]
    struct Req<'a> {
        model: &'a str,
        messages: Vec<Msg<'a>>,
        temperature: f32,
    }
    #[derive(serde::Serialize)]
    struct Msg<'a> {
        role: &'a str,
        content: &'a str,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Resp {
        choices: Vec<Choice>,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Choice {
        message: RespMsg,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct RespMsg {
        content: String,
    }
    let cache = Cache::in_memory();
    let r = Req {
        model: "m",
        messages: vec![Msg {
            role: "user",
            content: "hi",
        }],
        temperature: 0.0,
    };
    let make = || async {
        Ok::<_, std::io::Error>(Resp {
            choices: vec![Choice {
                message: RespMsg {
                    content: "typed".into(),
                },
            }],
        })
    };
    let a = cache
        .get_or_fetch(CallKind::Chat, &r, &CacheControl::none(), make)
        .await
        .unwrap();
    settle(&cache).await;
    let b = cache
        .get_or_fetch(CallKind::Chat, &r, &CacheControl::none(), make)
        .await
        .unwrap();
    assert!(b.status.is_hit());
    assert_eq!(a.value, b.value);
    // The same request as JSON with another key order and the float `0.0` hits too (the
    // integer `0` would not: it is another body on the wire).
    let json_req =
        json!({"temperature": 0.0, "messages": [{"content": "hi", "role": "user"}], "model": "m"});
    let c: cache_core::Cached<Value> = cache
        .get_or_fetch(CallKind::Chat, &json_req, &CacheControl::none(), || async {
            Ok::<_, std::io::Error>(json!({}))
        })
        .await
        .unwrap();
    assert!(c.status.is_hit());
}

#[tokio::test]
async fn a_probe_cancelled_mid_call_releases_the_breaker() {
    let backend = Arc::new(Faulty::default());
    backend.fail.store(true, SeqCst);
    let cache = CacheBuilder::from_shared(backend.clone())
        .configure(|s| {
            s.breaker = BreakerConfig::new(1, Duration::from_millis(50));
            s.read_timeout = Duration::from_secs(5);
        })
        .build();
    call(&cache, &req("q"), &CacheControl::none(), "a").await;
    assert_eq!(cache.engine().unwrap().breaker_state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(70)).await;
    // The probe hangs and its caller gives up: the future is dropped mid-call.
    backend.fail.store(false, SeqCst);
    backend.hang.store(true, SeqCst);
    let p = cache
        .prepare(
            CallKind::Chat,
            &req("q"),
            &CacheControl::none(),
            &RequestContext::default(),
        )
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(30), p.lookup())
            .await
            .is_err()
    );
    backend.hang.store(false, SeqCst);
    let gets = backend.gets.load(SeqCst);
    let (_, s) = call(&cache, &req("q"), &CacheControl::none(), "b").await;
    assert!(
        !matches!(
            s,
            CacheStatus::Miss {
                reason: MissReason::BreakerOpen,
                ..
            }
        ),
        "the next call probes: {s:?}"
    );
    assert_eq!(backend.gets.load(SeqCst), gets + 1);
    assert_eq!(
        cache.engine().unwrap().breaker_state(),
        BreakerState::Closed
    );
}

#[tokio::test]
async fn cache_status_says_stored_only_when_the_backend_accepted_the_write() {
    let backend = Arc::new(Faulty::default());
    let cache = CacheBuilder::from_shared(backend.clone())
        .configure(|s| s.breaker = BreakerConfig::new(1, Duration::from_secs(60)))
        .build();
    let (_, s) = call(&cache, &req("a"), &CacheControl::none(), "a").await;
    assert_eq!(s.header_value("c"), "c; fwd=miss; stored");

    backend.fail_set.store(true, SeqCst);
    let (_, s) = call(&cache, &req("b"), &CacheControl::none(), "b").await;
    assert_eq!(
        s.store(),
        Some(StoreOutcome::Failed(StoreFailure::Error)),
        "{s:?}"
    );
    assert_eq!(s.header_value("c"), "c; fwd=miss; detail=not-stored-error");
    assert_eq!(cache.stats().store_failures.load(SeqCst), 1);

    // The failed write opened the breaker (threshold 1, a non-transient error does not count:
    // use a transient one), so the next write is skipped and says so.
    backend.fail_set.store(false, SeqCst);
    backend.fail.store(true, SeqCst);
    let (_, s) = call(&cache, &req("c"), &CacheControl::none(), "c").await;
    assert_eq!(
        s.header_value("c"),
        "c; fwd=miss; detail=\"backend-error, not-stored-breaker-open\""
    );
    assert_eq!(cache.stats().store_failures.load(SeqCst), 2);

    // no-store: nothing asked for, nothing to report.
    let (_, s) = call(
        &cache,
        &req("d"),
        &CacheControl::none().with_no_store(),
        "d",
    )
    .await;
    assert_eq!(s.store(), Some(StoreOutcome::NotRequested));
}

#[tokio::test]
async fn a_too_large_response_says_not_stored() {
    let cache = CacheBuilder::new(MemoryBackend::new(
        MemoryConfig::default().with_max_item_bytes(200),
    ))
    .build();
    let big = "x".repeat(500);
    let (_, s) = call(&cache, &req("q"), &CacheControl::none(), &big).await;
    assert_eq!(
        s.store(),
        Some(StoreOutcome::Failed(StoreFailure::TooLarge))
    );
    assert!(s.header_value("c").ends_with("detail=not-stored-too-large"));
}

#[tokio::test]
async fn a_lookup_in_flight_during_a_delete_does_not_refill_l1() {
    let backend = Arc::new(Faulty::default());
    let cache = CacheBuilder::from_shared(backend.clone())
        .l1(L1Config::new(
            MemoryConfig::default(),
            Duration::from_secs(60),
        ))
        .read_timeout(Duration::from_secs(2))
        .build();
    call(&cache, &req("q"), &CacheControl::none(), "old").await;
    settle(&cache).await;
    let engine = cache.engine().unwrap();
    let key = cache
        .prepare(
            CallKind::Chat,
            &req("q"),
            &CacheControl::none(),
            &RequestContext::default(),
        )
        .unwrap()
        .key()
        .unwrap()
        .to_string();
    // Drop the L1 copy so the next lookup reads the backend, slowly.
    engine.l1().unwrap().delete_sync(&key);
    backend.slow_get_ms.store(200, SeqCst);
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let p = cache
                .prepare(
                    CallKind::Chat,
                    &req("q"),
                    &CacheControl::none(),
                    &RequestContext::default(),
                )
                .unwrap();
            p.lookup().await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cache.delete(std::slice::from_ref(&key)).await.unwrap(), 1);
    let raced = reader.await.unwrap();
    assert!(
        matches!(raced, cache_core::Lookup::Hit(_)),
        "it read before the delete"
    );
    backend.slow_get_ms.store(0, SeqCst);
    assert!(
        engine.l1().unwrap().get_sync(&key).is_none(),
        "the deleted entry came back into L1"
    );
    let (v, s) = call(&cache, &req("q"), &CacheControl::none(), "new").await;
    assert!(!s.is_hit(), "{s:?}");
    assert_eq!(content(&v), "new");
}

#[tokio::test]
async fn a_refresh_too_large_for_l1_removes_the_old_l1_copy() {
    let backend = Arc::new(Faulty::default());
    let cache = CacheBuilder::from_shared(backend.clone())
        .l1(L1Config::new(
            MemoryConfig::default().with_max_item_bytes(400),
            Duration::from_secs(60),
        ))
        .build();
    call(&cache, &req("q"), &CacheControl::none(), "small").await;
    settle(&cache).await;
    let big = "y".repeat(1000);
    let (_, s) = call(
        &cache,
        &req("q"),
        &CacheControl::none().with_no_cache(),
        &big,
    )
    .await;
    assert!(s.store().unwrap().is_stored());
    let (v, s) = call(&cache, &req("q"), &CacheControl::none(), "unused").await;
    assert!(
        matches!(
            s,
            CacheStatus::Hit {
                tier: Tier::Backend,
                ..
            }
        ),
        "{s:?}"
    );
    assert_eq!(content(&v), big, "never the replaced answer from L1");
}
