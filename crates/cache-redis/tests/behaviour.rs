//! Redis-specific behaviour beyond the conformance kit: native TTL, glob-safe and
//! shape-restricted `clear`, database selection, Cluster batches and hash tags, `ping` details,
//! foreign values, and the L1 tier in front of Redis.
mod common;

use std::time::Duration;

use cache_core::{
    Bytes, Cache, CacheBackend, CacheBuilder, CacheControl, CacheStatus, CallKind, L1Config,
    MemoryConfig, SharedBackend, Tier,
};
use cache_redis::RedisBackend;
use common::{STANDALONE_PORT, cli, entry_key};
use serde_json::{Value, json};

fn unique(tag: &str) -> String {
    cache_core::testing::unique_namespace(tag)
}

fn rt() -> tokio::runtime::Runtime {
    cache_core::testing::runtime()
}

#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn ttl_is_native_and_none_means_no_expiry() {
    rt().block_on(async {
        let Some(b) = common::standalone().await else {
            return;
        };
        let ns = unique("ttl");
        let (k1, k2, k3) = (format!("{ns}:a"), format!("{ns}:b"), format!("{ns}:c"));
        b.set(
            &k1,
            Bytes::from_static(b"x"),
            Some(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
        let pttl: i64 = cli(STANDALONE_PORT, &["pttl", &k1]).parse().unwrap();
        assert!((1..=1500).contains(&pttl), "PTTL {pttl}");
        b.set(&k2, Bytes::from_static(b"x"), None).await.unwrap();
        assert_eq!(
            cli(STANDALONE_PORT, &["pttl", &k2]),
            "-1",
            "no TTL, no expiry"
        );
        // A zero TTL stores nothing and removes an older value.
        b.set(&k3, Bytes::from_static(b"old"), None).await.unwrap();
        b.set(&k3, Bytes::from_static(b"new"), Some(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(b.get(&k3).await.unwrap(), None);
        // set_many with a TTL sets it on every key.
        b.set_many(
            vec![(k2.clone(), Bytes::from_static(b"y"))],
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        let pttl: i64 = cli(STANDALONE_PORT, &["pttl", &k2]).parse().unwrap();
        assert!((29_000..=30_000).contains(&pttl), "PTTL {pttl}");
        assert_eq!(b.clear(Some(&ns)).await.unwrap(), 2);
    });
}

/// Namespaces are literal: `*`, `?`, `[`, `]` and `\` in a namespace never widen `clear`.
async fn clear_is_glob_safe(b: &RedisBackend) {
    let base = unique("glob");
    let ns = format!("{base}*[ab]?\\");
    let lookalike = format!("{base}XYZa!\\"); // what an unescaped pattern would also match
    let ttl = Some(Duration::from_secs(60));
    for k in [format!("{ns}:1"), format!("{ns}:sub:2")] {
        b.set(&k, Bytes::from_static(b"v"), ttl).await.unwrap();
    }
    b.set(&format!("{lookalike}:1"), Bytes::from_static(b"v"), ttl)
        .await
        .unwrap();
    assert_eq!(b.clear(Some(&ns)).await.unwrap(), 2);
    assert_eq!(b.get(&format!("{ns}:1")).await.unwrap(), None);
    assert!(
        b.get(&format!("{lookalike}:1")).await.unwrap().is_some(),
        "a key outside the namespace was cleared"
    );
    assert_eq!(b.clear(Some(&lookalike)).await.unwrap(), 1);
}

#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn clear_is_glob_safe_standalone() {
    rt().block_on(async {
        if let Some(b) = common::standalone().await {
            clear_is_glob_safe(&b).await;
        }
    });
}

#[test]
#[ignore = "needs the redis-cluster test service: `cargo xtask services up redis-cluster`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn clear_is_glob_safe_cluster() {
    rt().block_on(async {
        if let Some(b) = common::cluster().await {
            clear_is_glob_safe(&b).await;
        }
    });
}

/// A Redis on the same host through its Unix socket, configured as LiteLLM would pass it on
/// (`unix_socket_path` with `db`, and a redis-py `unix://` URL with `?db=`): the writes land in
/// that database of that server (read back over TCP), and the server sees socket clients.
#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn unix_socket_reaches_the_server_and_its_database() {
    rt().block_on(async {
        let Some(path) = common::standalone_socket() else {
            return;
        };
        let params = cache_core::params::Params::new(
            json!({"unix_socket_path": path, "db": 6})
                .as_object()
                .cloned()
                .unwrap(),
            "cache_params",
        );
        let by_param = cache_redis::RedisConfig::from_params_with_env(&params, |_| None).unwrap();
        let by_url = cache_redis::RedisConfig::url(format!("unix://{path}?db=7"));
        for (config, db) in [(by_param, "6"), (by_url, "7")] {
            let described = config.topology.describe();
            let Some(b) = common::connected(config, "redis (Unix socket)").await else {
                return;
            };
            let key = entry_key(Some(&unique("unix")), 1);
            b.set(&key, Bytes::from_static(b"over the socket"), None)
                .await
                .unwrap();
            assert_eq!(
                cli(STANDALONE_PORT, &["-n", db, "get", &key]),
                "over the socket",
                "{described}: the entry is not in database {db}"
            );
            assert_eq!(cli(STANDALONE_PORT, &["-n", "0", "exists", &key]), "0");
            let clients = cli(STANDALONE_PORT, &["client", "list"]);
            assert!(
                clients
                    .lines()
                    .any(|l| l.contains(&format!("addr={path}")) && l.contains(&format!("db={db}"))),
                "{described}: no client on the socket in database {db}:\n{clients}"
            );
            let health = b.ping().await.unwrap();
            assert_eq!(health.details["address"], path, "{described}: {health:?}");
            b.delete(&key).await.unwrap();
        }
    });
}

/// `clear(None)` removes the cache's entries (key `hash` or `ns:hash`, value an envelope of
/// either form) and nothing else: not other keys, and not another application's values under
/// 64-hex keys (a LiteLLM entry, a hash). Runs in database 9 of the shared server, which nothing
/// else uses, so it cannot remove another test's entries; also checks `db` selects the database.
#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn clear_all_removes_only_entry_shaped_keys() {
    rt().block_on(async {
        let Some(b) = common::standalone_db(9).await else {
            return;
        };
        let ours = [
            entry_key(None, 1),
            entry_key(Some("app"), 2),
            entry_key(Some("app:team"), 3),
        ];
        let hash = entry_key(None, 4);
        let foreign = [
            "session:42".to_owned(),
            format!("x{hash}"),
            format!("app:{}", &hash[1..]),
            format!("app:{}", hash.to_uppercase().replace('0', "A")),
            "llm-cache-health-check".to_owned(),
        ];
        let entry = cache_core::Entry::new(CallKind::Chat, Bytes::from_static(b"{}"), None, None);
        let ttl = Some(Duration::from_secs(60));
        for (i, k) in ours.iter().enumerate() {
            let value = if i % 2 == 0 {
                entry.encode()
            } else {
                entry.encode_with(&cache_core::Encoding::COMPACT)
            };
            b.set(k, value, ttl).await.unwrap();
        }
        for k in &foreign {
            b.set(k, Bytes::from_static(b"v"), ttl).await.unwrap();
        }
        // Entry-shaped keys that are not ours: a LiteLLM-style JSON value, a short value, an
        // empty one, and a hash (GETRANGE on it is WRONGTYPE).
        let lookalikes = [
            entry_key(None, 5),
            entry_key(Some("app"), 6),
            entry_key(None, 7),
            entry_key(None, 8),
        ];
        b.set(
            &lookalikes[0],
            Bytes::from_static(br#"{"timestamp": 1.0, "response": "{}"}"#),
            ttl,
        )
        .await
        .unwrap();
        b.set(&lookalikes[1], Bytes::from_static(b"\0LC"), ttl)
            .await
            .unwrap();
        b.set(&lookalikes[2], Bytes::new(), ttl).await.unwrap();
        cli(
            STANDALONE_PORT,
            &["-n", "9", "hset", &lookalikes[3], "f", "v"],
        );
        assert_eq!(
            cli(STANDALONE_PORT, &["-n", "0", "exists", &ours[0]]),
            "0",
            "db 9 is not db 0"
        );
        let removed = b.clear(None).await.unwrap();
        assert!(removed >= 3, "removed {removed}");
        for k in &ours {
            assert_eq!(b.get(k).await.unwrap(), None, "{k} must be cleared");
        }
        for k in foreign.iter().chain(&lookalikes[..3]) {
            assert!(b.get(k).await.unwrap().is_some(), "{k} must survive");
            b.delete(k).await.unwrap();
        }
        assert_eq!(
            cli(STANDALONE_PORT, &["-n", "9", "hget", &lookalikes[3], "f"]),
            "v",
            "a hash under an entry-shaped key must survive"
        );
        cli(STANDALONE_PORT, &["-n", "9", "del", &lookalikes[3]]);
    });
}

#[test]
#[ignore = "needs the redis-cluster test service: `cargo xtask services up redis-cluster`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn cluster_batches_span_slots_and_hash_tags_work() {
    rt().block_on(async {
        let Some(b) = common::cluster().await else {
            return;
        };
        let ns = unique("slots");
        let entries: Vec<(String, Bytes)> = (0..300)
            .map(|i| (format!("{ns}:{i}"), Bytes::from(format!("v{i}"))))
            .collect();
        let slots: std::collections::BTreeSet<u16> = entries
            .iter()
            .map(|(k, _)| fred::util::redis_keyslot(k.as_bytes()))
            .collect();
        assert!(slots.len() > 100, "keys should spread over many slots");
        b.set_many(entries.clone(), Some(Duration::from_secs(60)))
            .await
            .unwrap();
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        let got = b.get_many(&keys).await.unwrap();
        for ((k, v), g) in entries.iter().zip(&got) {
            assert_eq!(g.as_ref(), Some(v), "{k}");
        }
        assert_eq!(b.clear(Some(&ns)).await.unwrap(), 300);
        assert!(b.get_many(&keys).await.unwrap().iter().all(Option::is_none));

        // A hash-tagged namespace puts every key in one slot; everything still works.
        let tagged = format!("{{{}}}", unique("tag"));
        let entries: Vec<(String, Bytes)> = (0..50)
            .map(|i| (format!("{tagged}:{i}"), Bytes::from(format!("t{i}"))))
            .collect();
        b.set_many(entries.clone(), None).await.unwrap();
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        assert!(b.get_many(&keys).await.unwrap().iter().all(Option::is_some));
        assert_eq!(b.clear(Some(&tagged)).await.unwrap(), 50);
    });
}

#[test]
#[ignore = "needs the redis, redis-cluster and redis-sentinel test services: `cargo xtask services up redis redis-cluster redis-sentinel`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn ping_reports_topology() {
    rt().block_on(async {
        if let Some(b) = common::standalone().await {
            let h = b.ping().await.unwrap();
            assert_eq!(h.backend, "redis");
            assert_eq!(h.details["topology"], "standalone");
            assert_eq!(h.details["address"], "127.0.0.1:17001");
            assert!(h.details["server_version"].starts_with(char::is_numeric));
            assert!(h.latency < Duration::from_secs(1));
        }
        if let Some(b) = common::cluster().await {
            let h = b.ping().await.unwrap();
            assert_eq!(h.details["topology"], "cluster");
            let masters: Vec<&str> = h.details["masters"].split(',').collect();
            assert_eq!(masters.len(), 3, "{masters:?}");
        }
        if let Some(b) = common::sentinel().await {
            let h = b.ping().await.unwrap();
            assert_eq!(h.details["topology"], "sentinel");
            let addr = cli(
                common::SENTINEL_PORTS[0],
                &[
                    "sentinel",
                    "get-master-addr-by-name",
                    common::SENTINEL_SERVICE,
                ],
            )
            .replace('\n', ":");
            assert_eq!(h.details["master"], addr);
        }
    });
}

#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn foreign_values_are_errors_naming_the_key_and_misses_in_the_cache() {
    rt().block_on(async {
        let Some(b) = common::standalone().await else {
            return;
        };
        let ns = unique("foreign");
        let b: SharedBackend = std::sync::Arc::new(b);
        let cache = CacheBuilder::from_shared(b.clone())
            .namespace(&ns)
            .configure(|s| s.read_timeout = Duration::from_secs(2))
            .build();
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "hash"}]});
        let key = cache
            .prepare(
                CallKind::Chat,
                &req,
                &CacheControl::none(),
                &Default::default(),
            )
            .unwrap()
            .key()
            .unwrap()
            .clone();
        cli(STANDALONE_PORT, &["hset", key.as_str(), "f", "v"]);
        let err = b.get(key.as_str()).await.unwrap_err();
        assert!(err.to_string().contains(key.as_str()), "{err}");
        assert!(
            !err.is_transient(),
            "WRONGTYPE will not go away by retrying"
        );
        let reply = cache
            .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), || async {
                Ok::<Value, std::io::Error>(json!({"ok": 1}))
            })
            .await
            .unwrap();
        assert!(!reply.status.is_hit());
        cli(STANDALONE_PORT, &["del", key.as_str()]);
    });
}

async fn fetch(cache: &Cache, req: &Value) -> CacheStatus {
    cache
        .get_or_fetch(CallKind::Chat, req, &CacheControl::none(), || async {
            Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "hi"}}]}))
        })
        .await
        .unwrap()
        .status
}

/// The core's L1 tier in front of Redis: hits come from memory, and `delete`/`clear` reach both
/// tiers (LiteLLM's `/cache/delete` leaves its memory tier serving the entry: F3).
#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn l1_in_front_of_redis_and_delete_clear_reach_both_tiers() {
    rt().block_on(async {
        let Some(b) = common::standalone().await else {
            return;
        };
        let ns = unique("l1");
        let b: SharedBackend = std::sync::Arc::new(b);
        let cache = CacheBuilder::from_shared(b.clone())
            .namespace(&ns)
            .l1(L1Config::new(
                MemoryConfig::default().with_max_items(Some(100)),
                Duration::from_secs(60),
            ))
            .configure(|s| s.read_timeout = Duration::from_secs(2))
            .build();
        // L1 is used once the coordinator hears other replicas' invalidations.
        let engine = cache.engine().unwrap();
        let start = std::time::Instant::now();
        while !engine.l1_live() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "L1 never went live"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "tiers"}]});
        assert!(!fetch(&cache, &req).await.is_hit());
        cache.flush(Duration::from_secs(5)).await.unwrap();
        let key = cache
            .prepare(
                CallKind::Chat,
                &req,
                &CacheControl::none(),
                &Default::default(),
            )
            .unwrap()
            .key()
            .unwrap()
            .clone();
        assert!(
            b.get(key.as_str()).await.unwrap().is_some(),
            "written to Redis"
        );
        // Served by a tier: after one read, by L1.
        let _ = fetch(&cache, &req).await;
        assert!(matches!(
            fetch(&cache, &req).await,
            CacheStatus::Hit { tier: Tier::L1, .. }
        ));
        // delete through the cache: gone from both tiers.
        assert_eq!(cache.delete(&[key.as_str().to_owned()]).await.unwrap(), 1);
        assert_eq!(b.get(key.as_str()).await.unwrap(), None);
        assert!(!fetch(&cache, &req).await.is_hit(), "L1 still served it");
        cache.flush(Duration::from_secs(5)).await.unwrap();
        let _ = fetch(&cache, &req).await;
        assert!(fetch(&cache, &req).await.is_hit());
        // clear through the cache: both tiers.
        assert!(cache.clear(None).await.unwrap() >= 1);
        assert_eq!(b.get(key.as_str()).await.unwrap(), None);
        assert!(!fetch(&cache, &req).await.is_hit(), "L1 still served it");
        cache.flush(Duration::from_secs(5)).await.unwrap();
        b.clear(Some(&ns)).await.unwrap();
    });
}

/// Heartbeats travel on each replica's own channel: the shared coordination channel carries
/// none (N replicas would otherwise make N² deliveries a second), each replica publishes about
/// one a second, and each still hears its own (L1 stays live past the 3 s heartbeat timeout).
#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn heartbeats_stay_off_the_shared_channel() {
    use fred::prelude::{ClientLike, Config, EventInterface, PubsubInterface};
    rt().block_on(async {
        let mut caches = Vec::new();
        for _ in 0..2 {
            let Some(b) = common::standalone().await else {
                return;
            };
            let b: SharedBackend = std::sync::Arc::new(b);
            caches.push(
                CacheBuilder::from_shared(b)
                    .namespace(unique("heartbeat"))
                    .l1(L1Config::new(
                        MemoryConfig::default(),
                        Duration::from_secs(60),
                    ))
                    .build(),
            );
        }
        let live = |caches: &[Cache]| caches.iter().all(|c| c.engine().unwrap().l1_live());
        let start = std::time::Instant::now();
        while !live(&caches) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "L1 never went live"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let url = format!("redis://127.0.0.1:{STANDALONE_PORT}");
        let listener =
            fred::prelude::Client::new(Config::from_url(&url).unwrap(), None, None, None);
        listener.init().await.unwrap();
        let mut rx = listener.message_rx();
        listener
            .subscribe(cache_redis::coordination::CHANNEL)
            .await
            .unwrap();
        let heartbeat_channels = format!("{}:heartbeat:*", cache_redis::coordination::CHANNEL);
        listener.psubscribe(heartbeat_channels).await.unwrap();
        let (mut shared, mut own) = (Vec::new(), std::collections::HashMap::new());
        let until = tokio::time::Instant::now() + Duration::from_millis(4500);
        while let Ok(Ok(msg)) = tokio::time::timeout_at(until, rx.recv()).await {
            let text =
                String::from_utf8_lossy(msg.value.as_bytes().unwrap_or_default()).into_owned();
            if &*msg.channel == cache_redis::coordination::CHANNEL {
                shared.push(text);
            } else {
                *own.entry(msg.channel.to_string()).or_insert(0) += 1;
            }
        }
        assert!(
            !shared.iter().any(|m| m.starts_with(r#"{"h":"#)),
            "heartbeats on the shared channel: {shared:?}"
        );
        // Both caches of this test, and maybe other tests' running at the same time.
        assert!(own.len() >= 2, "heartbeat channels heard: {own:?}");
        assert!(
            own.values().filter(|&&n| n >= 3).count() >= 2,
            "about one heartbeat a second per replica: {own:?}"
        );
        assert!(live(&caches), "a replica stopped hearing its own heartbeat");
        let _ = listener.quit().await;
    });
}
