//! What the proxy writes to Redis: the compact envelope by default (a binary header, the body
//! compressed when that pays, embeddings as packed floats), the JSON one with
//! `entry_format: json`; a hit serves the same bytes either way, and each form reads the other's
//! entries.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llm_cache_tests::{FakeUpstream, Proxy};
use serde_json::{Value, json};

fn redis(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", "17001", "--raw"])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn namespace(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("format-{name}-{}-{nanos:x}", std::process::id())
}

async fn proxy(up: &FakeUpstream, ns: &str, extra: &str) -> Proxy {
    let params = format!(
        "{{type: redis, host: 127.0.0.1, port: 17001, namespace: {ns}, ttl: 600, cache_read_timeout: 1{extra}}}"
    );
    let config = format!(
        "{}general_settings:\n  readiness_check_interval: 0.1\n",
        llm_cache_tests::config(up, &params, None)
    );
    let p = Proxy::start(&config).await;
    p.wait_ready().await;
    p
}

async fn post(p: &Proxy, path: &str, body: &Value) -> (String, bytes::Bytes) {
    llm_cache_tests::post_json(&reqwest::Client::new(), &p.url(path), body).await
}

/// Waits (bounded) until every key of the namespace is written, returns them.
async fn keys(ns: &str, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let keys: Vec<String> = redis(&["--scan", "--pattern", &format!("{ns}:*")])
            .lines()
            .map(str::to_owned)
            .collect();
        if keys.len() >= n {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("entries of {ns} not written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn compact_by_default_json_on_request_and_both_read_back() {
    let up = FakeUpstream::start().await;
    let ns = namespace("chat");
    let compact = proxy(&up, &ns, "").await;
    let long = "explain caching in detail ".repeat(40);
    let chat = json!({"model": "gpt-test", "messages": [{"role": "user", "content": long}]});
    let (status, miss) = post(&compact, "/v1/chat/completions", &chat).await;
    assert!(status.contains("stored"), "{status}");
    let key = &keys(&ns, 1).await[0];
    assert_eq!(
        redis(&["getrange", key, "1", "3"]),
        "LC2",
        "the compact envelope"
    );
    let stored: usize = redis(&["strlen", key]).parse().unwrap();
    assert!(
        stored < miss.len(),
        "compressed: {stored} bytes stored for a {}-byte answer",
        miss.len()
    );
    let (status, hit) = post(&compact, "/v1/chat/completions", &chat).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(hit, miss, "the hit serves the upstream's bytes");

    // Embeddings: one entry per input, floats packed.
    let emb = json!({"model": "embed-test", "input": ["alpha", "beta", "gamma"]});
    let (_, first) = post(&compact, "/v1/embeddings", &emb).await;
    let all = keys(&ns, 4).await;
    let floats = serde_json::from_slice::<Value>(&first).unwrap()["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .len();
    for k in all.iter().filter(|k| *k != key) {
        let len: usize = redis(&["strlen", k]).parse().unwrap();
        assert!(
            len < floats * 4 + 200,
            "an embedding of {floats} floats is stored in {len} bytes"
        );
    }
    let (status, again) = post(&compact, "/v1/embeddings", &emb).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(
        serde_json::from_slice::<Value>(&again).unwrap()["data"],
        serde_json::from_slice::<Value>(&first).unwrap()["data"]
    );

    // A proxy writing JSON entries reads the compact ones, and the other way round.
    let json_proxy = proxy(&up, &ns, ", entry_format: json").await;
    let (status, hit) = post(&json_proxy, "/v1/chat/completions", &chat).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(hit, miss);
    let other =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "json please"}]});
    let (_, miss2) = post(&json_proxy, "/v1/chat/completions", &other).await;
    let all = keys(&ns, all.len() + 1).await;
    let json_key = all
        .iter()
        .find(|k| redis(&["getrange", k, "0", "7"]) == "{\"llmc\":")
        .expect("a JSON entry");
    assert!(!json_key.is_empty());
    let (status, hit2) = post(&compact, "/v1/chat/completions", &other).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(hit2, miss2);
    let _ = redis(&["--scan", "--pattern", &format!("{ns}:*")]);
}
