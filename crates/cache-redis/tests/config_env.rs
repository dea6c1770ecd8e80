//! `cache_params` and `REDIS_*` parsing: LiteLLM's names, precedence and coercion.

use std::collections::HashMap;
use std::time::Duration;

use cache_core::params::Params;
use cache_redis::{Node, RedisConfig, Topology};
use serde_json::{Value, json};

fn params(v: Value) -> Params {
    Params::new(v.as_object().cloned().unwrap_or_default(), "cache_params")
}

fn parse(v: Value, env: &[(&str, &str)]) -> Result<RedisConfig, String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    RedisConfig::from_params_with_env(&params(v), |k| env.get(k).cloned())
        .map_err(|e| e.to_string())
}

fn ok(v: Value, env: &[(&str, &str)]) -> RedisConfig {
    parse(v, env).unwrap_or_else(|e| panic!("{e}"))
}

fn err(v: Value, env: &[(&str, &str)]) -> String {
    match parse(v, env) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn host_port_and_litellm_names() {
    let c = ok(
        json!({"host": "redis.local", "port": "6380", "password": "pw", "username": "app",
               "db": 3, "ssl": "true", "socket_timeout": 0.25, "socket_connect_timeout": "3",
               "max_connections": 8, "ssl_ca_certs": "/etc/ca.pem"}),
        &[],
    );
    assert_eq!(
        c.topology,
        Topology::Standalone(Node::new("redis.local", 6380))
    );
    assert_eq!(c.password.as_deref(), Some("pw"));
    assert_eq!(c.username.as_deref(), Some("app"));
    assert_eq!(c.db, Some(3));
    assert!(c.tls);
    assert_eq!(c.command_timeout, Duration::from_millis(250));
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.pool_size, 8);
    assert_eq!(
        c.tls_ca_certs.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
}

#[test]
fn env_fallbacks_and_explicit_wins() {
    let env = [
        ("REDIS_HOST", "env-host"),
        ("REDIS_PORT", "7000"),
        ("REDIS_PASSWORD", "env-pw"),
        ("REDIS_USERNAME", "env-user"),
        ("REDIS_DB", "2"),
        ("REDIS_SSL", "yes"),
        ("REDIS_SOCKET_TIMEOUT", "1.5"),
        ("REDIS_SOCKET_CONNECT_TIMEOUT", "4"),
        ("REDIS_MAX_CONNECTIONS", "1000"),
        ("REDIS_SSL_CA_CERTS", "/env/ca.pem"),
    ];
    let c = ok(json!({}), &env);
    assert_eq!(
        c.topology,
        Topology::Standalone(Node::new("env-host", 7000))
    );
    assert_eq!(c.password.as_deref(), Some("env-pw"));
    assert_eq!(c.username.as_deref(), Some("env-user"));
    assert_eq!(c.db, Some(2));
    assert!(c.tls);
    assert_eq!(c.command_timeout, Duration::from_millis(1500));
    assert_eq!(c.connect_timeout, Duration::from_secs(4));
    assert_eq!(
        c.pool_size,
        cache_redis::config::MAX_POOL_SIZE,
        "max_connections is clamped"
    );
    assert_eq!(
        c.tls_ca_certs.as_deref(),
        Some(std::path::Path::new("/env/ca.pem"))
    );

    let c = ok(
        json!({"host": "h", "port": 1, "password": "p", "db": 0, "ssl": false}),
        &env,
    );
    assert_eq!(c.topology, Topology::Standalone(Node::new("h", 1)));
    assert_eq!(c.password.as_deref(), Some("p"));
    assert_eq!(c.db, Some(0));
    assert!(!c.tls);
    assert_eq!(
        c.username.as_deref(),
        Some("env-user"),
        "unset keys still fall back"
    );
}

#[test]
fn client_type_precedence() {
    let cluster = json!([{"host": "c1", "port": 7001}, {"host": "c2", "port": "7002"}]);
    let sentinels = json!([["s1", 26379], ["s2", 26380]]);
    // startup nodes ⇒ Cluster, even with a URL and sentinels.
    let c = ok(
        json!({"redis_startup_nodes": cluster, "url": "redis://u:1", "sentinel_nodes": sentinels,
               "service_name": "m", "host": "h"}),
        &[],
    );
    assert_eq!(
        c.topology,
        Topology::Cluster(vec![Node::new("c1", 7001), Node::new("c2", 7002)])
    );
    // url ⇒ URL client (over sentinel and host).
    let c = ok(
        json!({"url": "redis://u:1/0", "sentinel_nodes": sentinels, "service_name": "m", "host": "h"}),
        &[],
    );
    assert_eq!(c.topology, Topology::Url("redis://u:1/0".to_owned()));
    // sentinel_nodes + service_name ⇒ Sentinel (over host).
    let c = ok(
        json!({"sentinel_nodes": sentinels, "service_name": "m", "sentinel_password": "sp", "host": "h"}),
        &[],
    );
    assert_eq!(
        c.topology,
        Topology::Sentinel {
            nodes: vec![Node::new("s1", 26379), Node::new("s2", 26380)],
            service_name: "m".to_owned()
        }
    );
    assert_eq!(c.sentinel_password.as_deref(), Some("sp"));
    // `startup_nodes` and `redis_url` are accepted as aliases.
    let c = ok(json!({"startup_nodes": ["a:1"]}), &[]);
    assert_eq!(c.topology, Topology::Cluster(vec![Node::new("a", 1)]));
    let c = ok(json!({"redis_url": "rediss://a:2"}), &[]);
    assert_eq!(c.topology, Topology::Url("rediss://a:2".to_owned()));
}

#[test]
fn env_topologies() {
    let c = ok(
        json!({}),
        &[(
            "REDIS_CLUSTER_NODES",
            r#"[{"host": "127.0.0.1", "port": 17101}, {"host": "127.0.0.1", "port": "17102"}]"#,
        )],
    );
    assert_eq!(
        c.topology,
        Topology::Cluster(vec![
            Node::new("127.0.0.1", 17101),
            Node::new("127.0.0.1", 17102)
        ])
    );
    let c = ok(
        json!({}),
        &[
            ("REDIS_SENTINEL_NODES", r#"[["127.0.0.1", 17311]]"#),
            ("REDIS_SERVICE_NAME", "mymaster"),
            ("REDIS_SENTINEL_PASSWORD", "spw"),
            ("REDIS_HOST", "ignored-because-sentinel-wins"),
        ],
    );
    assert!(matches!(c.topology, Topology::Sentinel { .. }), "{c:?}");
    assert_eq!(c.sentinel_password.as_deref(), Some("spw"));
    // REDIS_URL wins over REDIS_HOST ...
    let c = ok(
        json!({}),
        &[
            ("REDIS_URL", "redis://:pw@u:1/4"),
            ("REDIS_HOST", "h"),
            ("REDIS_PASSWORD", "x"),
        ],
    );
    assert_eq!(c.topology, Topology::Url("redis://:pw@u:1/4".to_owned()));
    assert_eq!(
        c.password, None,
        "a URL carries its own credentials (LiteLLM drops password)"
    );
    assert_eq!(c.db, None);
    // ... but an explicit host makes REDIS_URL (and the other topology variables) irrelevant.
    let c = ok(
        json!({"host": "explicit"}),
        &[
            ("REDIS_URL", "redis://u:1"),
            ("REDIS_CLUSTER_NODES", r#"["c:1"]"#),
        ],
    );
    assert_eq!(
        c.topology,
        Topology::Standalone(Node::new("explicit", 6379))
    );
    // A global REDIS_DB does not apply to a Cluster; an explicit non-zero db is an error.
    let c = ok(
        json!({"redis_startup_nodes": ["c:1"]}),
        &[("REDIS_DB", "3")],
    );
    assert_eq!(c.db, None);
    let e = err(json!({"redis_startup_nodes": ["c:1"], "db": 3}), &[]);
    assert!(
        e.contains("cache_params.db") && e.contains("Cluster"),
        "{e}"
    );
}

#[test]
fn errors_name_the_key_or_variable() {
    for (v, env, needle) in [
        (
            json!({"host": "h", "port": "abc"}),
            vec![],
            "cache_params.port",
        ),
        (
            json!({"host": "h", "port": 70000}),
            vec![],
            "cache_params.port",
        ),
        (json!({"host": "h", "db": "x"}), vec![], "cache_params.db"),
        (json!({"host": "h", "db": 300}), vec![], "cache_params.db"),
        (
            json!({"host": "h", "ssl": "maybe"}),
            vec![],
            "cache_params.ssl",
        ),
        (
            json!({"host": "h", "socket_timeout": "soon"}),
            vec![],
            "cache_params.socket_timeout",
        ),
        (
            json!({"host": "h", "socket_timeout": 0}),
            vec![],
            "cache_params.socket_timeout",
        ),
        (
            json!({"host": "h", "max_connections": 0}),
            vec![],
            "cache_params.max_connections",
        ),
        (json!({"host": ["h"]}), vec![], "cache_params.host"),
        (
            json!({"redis_startup_nodes": 5}),
            vec![],
            "cache_params.redis_startup_nodes",
        ),
        (
            json!({"redis_startup_nodes": [{"host": "a", "port": "x"}]}),
            vec![],
            "cache_params.redis_startup_nodes",
        ),
        (
            json!({"redis_startup_nodes": []}),
            vec![],
            "cache_params.redis_startup_nodes",
        ),
        (
            json!({"sentinel_nodes": [["s", 1]]}),
            vec![],
            "service_name",
        ),
        (json!({"url": "http://h:1"}), vec![], "cache_params.url"),
        (
            json!({"url": "redis-sentinel://h:1"}),
            vec![],
            "sentinelServiceName",
        ),
        (
            json!({}),
            vec![("REDIS_HOST", "h"), ("REDIS_PORT", "x")],
            "REDIS_PORT",
        ),
        (
            json!({}),
            vec![("REDIS_HOST", "h"), ("REDIS_SSL", "perhaps")],
            "REDIS_SSL",
        ),
        (
            json!({}),
            vec![("REDIS_HOST", "h"), ("REDIS_SOCKET_TIMEOUT", "-1")],
            "REDIS_SOCKET_TIMEOUT",
        ),
        (
            json!({}),
            vec![("REDIS_CLUSTER_NODES", "[{\"port\": 1}]")],
            "REDIS_CLUSTER_NODES",
        ),
        (json!({}), vec![("REDIS_URL", "ftp://x")], "REDIS_URL"),
    ] {
        let e = err(v.clone(), &env);
        assert!(e.contains(needle), "{v} {env:?}: {e}");
    }
}

#[test]
fn nothing_configured_is_a_clear_error() {
    let e = err(json!({}), &[]);
    assert!(
        e.contains("host") && e.contains("url") && e.contains("REDIS_HOST"),
        "{e}"
    );
}

#[test]
fn url_errors_do_not_leak_the_password() {
    let e = err(json!({"url": "http://user:supersecret@h:1"}), &[]);
    assert!(!e.contains("supersecret"), "{e}");
}

/// The real environment path (`from_params` reads `std::env`). Setting variables is `unsafe` in
/// edition 2024 (and unsafe code is forbidden), so the check runs again in a child process that
/// has them.
#[test]
fn reads_the_process_environment() {
    const MARK: &str = "CACHE_REDIS_ENV_CHILD";
    if std::env::var(MARK).is_err() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "reads_the_process_environment", "--nocapture"])
            .env(MARK, "1")
            .env("REDIS_HOST", "from-env")
            .env("REDIS_PORT", "17001")
            .env("REDIS_PASSWORD", "pw-from-env")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_NODES")
            .env_remove("REDIS_SENTINEL_NODES")
            .status()
            .unwrap();
        assert!(status.success(), "child run failed");
        return;
    }
    let c = RedisConfig::from_params(&params(json!({}))).unwrap();
    assert_eq!(
        c.topology,
        Topology::Standalone(Node::new("from-env", 17001))
    );
    assert_eq!(c.password.as_deref(), Some("pw-from-env"));
    assert!(!format!("{c:?}").contains("pw-from-env"));
}
