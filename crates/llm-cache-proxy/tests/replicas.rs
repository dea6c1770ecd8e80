//! Many replicas, one cache: three `llm-cache` processes on loopback over one Redis (standalone,
//! and the Redis Cluster test service) behave like one cache.
//!
//! * A burst of identical misses spread over the replicas makes exactly one upstream call
//!   (cross-replica coalescing through a lease in Redis), streaming requests too.
//! * The replica holding the lease killed with SIGKILL mid-call: every client is answered (a
//!   client whose replica died retries on the next one, as a load balancer would), with at most
//!   two upstream calls, within the lease bound.
//! * A delete, a flush and a `no-cache` refresh on one replica reach the other replicas' L1.
//!
//! `cargo xtask bench replicas` runs [`invalidation_latency`] (1,000 deletes) for
//! docs/deployment.md.

use std::time::{Duration, Instant};

use futures::future::join_all;
use llm_cache_tests::{FakeUpstream, Proxy, post_json, streamed_text};
use serde_json::{Value, json};

const REDIS: &str = "host: 127.0.0.1, port: 17001";

fn cluster_nodes() -> String {
    let nodes: Vec<String> = (17101..=17106)
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!("redis_startup_nodes: [{}]", nodes.join(", "))
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("replicas-{name}-{}-{nanos:x}", std::process::id())
}

/// The tests take turns: they share the machine's two cores, and one of them cuts every
/// pub/sub connection of the Redis test service.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `n` proxies over one store; `extra` is appended to `cache_params`.
async fn replicas(n: usize, up: &FakeUpstream, store: &str, extra: &str) -> Vec<Proxy> {
    let params = format!(
        "{{type: redis, {store}, namespace: {ns}, ttl: 600, cache_read_timeout: 1, socket_timeout: 1{extra}}}",
        ns = unique("ns")
    );
    let config = llm_cache_tests::config(up, &params, None);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Proxy::start(&config).await);
    }
    // As a load balancer would: traffic once a replica is ready (its store reachable); L1
    // starts once the replica hears invalidations.
    for p in &out {
        p.wait_ready().await;
        wait_l1_live(p, extra.contains("l1_cache: true")).await;
    }
    out
}

async fn wait_l1_live(p: &Proxy, l1: bool) {
    if !l1 {
        return;
    }
    let start = Instant::now();
    while l1_live(p).await != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "L1 of a replica never went live"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `llm_cache_l1_live` of the proxy's metrics (`None`: not exposed or not reachable).
async fn l1_live(p: &Proxy) -> Option<bool> {
    let text = reqwest::get(p.url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("llm_cache_l1_live{"))
        .map(|l| l.trim_end().ends_with(" 1"))
}

fn chat_body(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

struct Answer {
    status: u16,
    cache_status: String,
    content: String,
    key: String,
}

async fn ask(http: &reqwest::Client, p: &Proxy, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut req = http.post(p.url("/v1/chat/completions")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let cache_status = header("cache-status");
    let key = header("x-litellm-cache-key");
    let v: Value = r.json().await.unwrap_or_default();
    Answer {
        status,
        cache_status,
        content: v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        key,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// 100 concurrent identical misses spread over 3 replicas: one upstream call, every answer the
/// same (and the right one).
async fn burst(store: &str) {
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(500));
    let proxies = replicas(3, &up, store, "").await;
    let prompt = unique("burst");
    let body = chat_body(&prompt);
    let http = http();
    let answers = join_all((0..100).map(|i| {
        let (http, body, p) = (http.clone(), body.clone(), &proxies[i % 3]);
        async move { ask(&http, p, &body, &[]).await }
    }))
    .await;
    assert_eq!(up.chat_calls(), 1, "one upstream call for the whole burst");
    let first = &answers[0].content;
    assert!(first.ends_with(&format!("to: {prompt}")), "{first}");
    for a in &answers {
        assert_eq!(a.status, 200);
        assert_eq!(&a.content, first, "every replica answers the same");
    }
    let collapsed = answers
        .iter()
        .filter(|a| a.cache_status.contains("collapsed"))
        .count();
    let hits = answers
        .iter()
        .filter(|a| a.cache_status.contains("; hit"))
        .count();
    assert_eq!(
        collapsed + hits,
        99,
        "all but the leader wait for it (or, arriving after it stored, hit)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn burst_across_replicas_makes_one_upstream_call() {
    let _turn = ONE_AT_A_TIME.lock().await;
    burst(REDIS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis-cluster (cargo xtask services up)"]
async fn burst_across_cluster_replicas_makes_one_upstream_call() {
    let _turn = ONE_AT_A_TIME.lock().await;
    burst(&cluster_nodes()).await;
}

/// Streaming followers on other replicas wait for the stored entry and replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn streaming_burst_across_replicas_makes_one_upstream_call() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(500));
    let proxies = replicas(3, &up, REDIS, "").await;
    // A long answer (~150 upstream events, 2 ms apart): the stream lasts ~300 ms after the
    // first byte, which shows what the followers on other replicas wait.
    let prompt = format!("{} {}", unique("stream"), "word ".repeat(80));
    let mut body = chat_body(&prompt);
    body["stream"] = json!(true);
    let http = http();
    let started = Instant::now();
    let results = join_all((0..30).map(|i| {
        let (http, body, p) = (http.clone(), body.clone(), &proxies[i % 3]);
        async move {
            let mut r = http
                .post(p.url("/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut text = Vec::new();
            let mut first = None;
            while let Some(chunk) = r.chunk().await.unwrap() {
                first.get_or_insert_with(|| started.elapsed());
                text.extend_from_slice(&chunk);
            }
            // The streamed words, joined.
            let words = streamed_text(&text);
            (i % 3, words, first.unwrap(), started.elapsed())
        }
    }))
    .await;
    assert_eq!(up.chat_calls(), 1, "one upstream stream for all replicas");
    for (_, t, _, _) in &results {
        assert!(t.ends_with(&format!("to: {prompt}")), "{t}");
        assert_eq!(t, &results[0].1);
    }
    // Time to first byte and to the end, per replica (the leader's replica streams live; the
    // others replay the stored answer once it is complete): docs/deployment.md.
    for replica in 0..3 {
        let span = |f: fn(&(usize, String, Duration, Duration)) -> Duration| {
            let mut v: Vec<u128> = results
                .iter()
                .filter(|r| r.0 == replica)
                .map(|r| f(r).as_millis())
                .collect();
            v.sort_unstable();
            format!("{}-{} ms", v[0], v[v.len() - 1])
        };
        println!(
            "replica {replica}: first byte {}, end {}",
            span(|r| r.2),
            span(|r| r.3)
        );
    }
}

/// The lease holder killed with SIGKILL mid-call: the others take over within the lease bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn a_replica_killed_holding_the_lease_frees_the_key_within_the_lease() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let up = FakeUpstream::start().await;
    let upstream = Duration::from_millis(1500);
    up.set_latency(upstream);
    let lease = Duration::from_secs(2);
    let mut proxies = replicas(3, &up, REDIS, ", coalesce_lease: 2").await;
    let prompt = unique("kill");
    let body = chat_body(&prompt);
    let http = http();
    let ports: Vec<u16> = proxies.iter().map(|p| p.port).collect();
    // One client on replica 0 first: it takes the lease.
    let ask_any = |first: usize| {
        let (http, body, ports) = (http.clone(), body.clone(), ports.clone());
        async move {
            // A load balancer's retry: on a connection error, the next replica.
            for attempt in 0..3 {
                let port = ports[(first + attempt) % 3];
                let r = http
                    .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await;
                if let Ok(r) = r {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or_default();
                    return (
                        status,
                        v["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                        Instant::now(),
                    );
                }
            }
            panic!("no replica answered");
        }
    };
    let leader = tokio::spawn(ask_any(0));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(up.chat_calls(), 1, "replica 0 called upstream");
    let followers: Vec<_> = (1..100).map(|i| tokio::spawn(ask_any(i % 3))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIGKILL: no release; the lease expires by itself.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &proxies[0].pid().to_string()])
        .status();
    let killed_at = Instant::now();
    let mut answers = vec![leader.await.unwrap()];
    for f in followers {
        answers.push(f.await.unwrap());
    }
    for (status, content, _) in &answers {
        assert_eq!(*status, 200);
        assert!(content.ends_with(&format!("to: {prompt}")), "{content}");
    }
    let calls = up.chat_calls();
    assert!(
        calls <= 2,
        "{calls} upstream calls (the killed one and its successor at most)"
    );
    let last = answers.iter().map(|a| a.2).max().unwrap();
    let took = last.duration_since(killed_at);
    // The lease expires within its TTL of the kill, waiters see it within 250 ms, then one
    // upstream call; the margin covers a busy two-core machine.
    let bound = lease + Duration::from_millis(250) + upstream + Duration::from_secs(2);
    assert!(
        took <= bound,
        "all answered {took:?} after the kill (bound {bound:?})"
    );
    println!("all 100 answered {took:?} after the kill; {calls} upstream calls");
    proxies.remove(0);
}

async fn assert_l1_hit(http: &reqwest::Client, p: &Proxy, body: &Value) -> Answer {
    let _ = ask(http, p, body, &[]).await;
    let a = ask(http, p, body, &[]).await;
    assert!(
        a.cache_status.contains("hit; detail=l1"),
        "served from L1: {}",
        a.cache_status
    );
    a
}

async fn assert_l1_gone(http: &reqwest::Client, p: &Proxy, body: &Value) {
    // `only-if-cached`: a 504 says no tier has it.
    let start = Instant::now();
    loop {
        let a = ask(http, p, body, &[("cache-control", "only-if-cached")]).await;
        if a.status == 504 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "still served ({}) 2 s after the invalidation",
            a.cache_status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn delete_flush_and_refresh_on_one_replica_reach_the_others_l1() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let up = FakeUpstream::start().await;
    let proxies = replicas(3, &up, REDIS, ", l1_cache: true, l1_ttl: 300").await;
    let (a, b, c) = (&proxies[0], &proxies[1], &proxies[2]);
    let http = http();

    // delete on A.
    let body = chat_body(&unique("delete"));
    let first = ask(&http, a, &body, &[]).await;
    assert!(first.cache_status.contains("fwd=miss"));
    assert_l1_hit(&http, b, &body).await;
    assert_l1_hit(&http, c, &body).await;
    let r = http
        .post(a.url("/cache/delete"))
        .json(&json!({"keys": [first.key]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_l1_gone(&http, b, &body).await;
    assert_l1_gone(&http, c, &body).await;
    let calls = up.chat_calls();
    assert!(
        ask(&http, b, &body, &[])
            .await
            .cache_status
            .contains("fwd=miss")
    );
    assert_eq!(
        up.chat_calls(),
        calls + 1,
        "B went upstream after the delete"
    );

    // flushall on B.
    let body = chat_body(&unique("flush"));
    let _ = ask(&http, b, &body, &[]).await;
    assert_l1_hit(&http, a, &body).await;
    assert_l1_hit(&http, c, &body).await;
    let r = http.post(b.url("/cache/flushall")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_l1_gone(&http, a, &body).await;
    assert_l1_gone(&http, c, &body).await;

    // A `no-cache` refresh on C: A and B serve the new answer.
    let body = chat_body(&unique("refresh"));
    let old = ask(&http, c, &body, &[]).await;
    assert_eq!(assert_l1_hit(&http, a, &body).await.content, old.content);
    assert_eq!(assert_l1_hit(&http, b, &body).await.content, old.content);
    let new = ask(&http, c, &body, &[("cache-control", "no-cache")]).await;
    assert_ne!(
        new.content, old.content,
        "the refresh is a new upstream answer"
    );
    for p in [a, b] {
        let start = Instant::now();
        loop {
            let got = ask(&http, p, &body, &[]).await;
            if got.content == new.content {
                break;
            }
            assert_eq!(got.content, old.content);
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "a replica still serves the replaced answer 2 s after the refresh"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Invalidation latency: from sending a delete to replica A until replica B's L1 no longer
/// serves the entry (B polled with `only-if-cached`, back to back, from the moment the delete
/// is sent: the figure includes up to one poll's round trip). `INVALIDATIONS` deletes (default 1,000;
/// the smoke run in `cargo test` does 50). Printed as a table row for docs/deployment.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn invalidation_latency() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let n: usize = std::env::var("INVALIDATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let up = FakeUpstream::start().await;
    let proxies = replicas(2, &up, REDIS, ", l1_cache: true, l1_ttl: 300").await;
    let (a, b) = (&proxies[0], &proxies[1]);
    let http = http();
    let mut delete_rtt = Vec::with_capacity(n);
    let mut to_miss = Vec::with_capacity(n);
    let mut polls = 0usize;
    for i in 0..n {
        let body = chat_body(&format!("{} {i}", unique("latency")));
        let stored = ask(&http, a, &body, &[]).await;
        assert_l1_hit(&http, b, &body).await;
        // B is polled from the moment the delete is sent, concurrently with it.
        let sent = Instant::now();
        let delete = {
            let (http, url, key) = (http.clone(), a.url("/cache/delete"), stored.key.clone());
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .json(&json!({"keys": [key]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                sent.elapsed()
            })
        };
        loop {
            polls += 1;
            let got = ask(&http, b, &body, &[("cache-control", "only-if-cached")]).await;
            if got.status == 504 {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(2),
                "B still served after 2 s"
            );
        }
        to_miss.push(sent.elapsed());
        delete_rtt.push(delete.await.unwrap());
    }
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    println!(
        "| deletes | delete response p50 / p99 ms | miss on B p50 / p99 / max ms | polls of B per delete |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {n} | {} / {} | {} / {} / {} | {:.2} |",
        ms(percentile(&mut delete_rtt, 0.5)),
        ms(percentile(&mut delete_rtt, 0.99)),
        ms(percentile(&mut to_miss, 0.5)),
        ms(percentile(&mut to_miss, 0.99)),
        ms(*to_miss.iter().max().unwrap()),
        polls as f64 / n as f64
    );
}

/// A replica that cannot hear invalidations empties its L1: here its pub/sub connection is cut
/// (`CLIENT KILL TYPE pubsub`); the next answer comes from Redis, not from the old L1 copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn a_lost_subscription_empties_l1() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let up = FakeUpstream::start().await;
    let proxies = replicas(1, &up, REDIS, ", l1_cache: true, l1_ttl: 300").await;
    let p = &proxies[0];
    let http = http();
    let body = chat_body(&unique("lost"));
    let _ = ask(&http, p, &body, &[]).await;
    assert_l1_hit(&http, p, &body).await;
    let out = std::process::Command::new("redis-cli")
        .args(["-p", "17001", "client", "kill", "type", "pubsub"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "{out:?}");
    let start = Instant::now();
    loop {
        let a = ask(&http, p, &body, &[]).await;
        assert!(a.cache_status.contains("hit"), "{}", a.cache_status);
        if !a.cache_status.contains("detail=l1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "L1 still served 3 s after the subscription was cut"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Back once resubscribed.
    wait_l1_live(p, true).await;
    assert_l1_hit(&http, p, &body).await;
}

/// A subscription that goes silent without an error (here: Redis refuses writes for 6 s, so
/// this process's heartbeats cannot be published and never come back) is declared lost within
/// the heartbeat bound: L1 goes off, then comes back once heartbeats flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn a_silent_subscription_turns_l1_off_until_heartbeats_return() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let up = FakeUpstream::start().await;
    let proxies = replicas(1, &up, REDIS, ", l1_cache: true, l1_ttl: 300").await;
    let p = &proxies[0];
    assert_eq!(l1_live(p).await, Some(true));
    let out = std::process::Command::new("redis-cli")
        .args(["-p", "17001", "client", "pause", "6000", "write"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "{out:?}");
    let paused = Instant::now();
    let mut off_after = None;
    while paused.elapsed() < Duration::from_secs(6) {
        if l1_live(p).await == Some(false) {
            off_after = Some(paused.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let off_after = off_after.expect("L1 still on while no heartbeat could come back");
    assert!(
        off_after <= Duration::from_millis(4500),
        "declared lost {off_after:?} after the heartbeats stopped (bound: 3 s + one tick)"
    );
    // And it stays off while the pause lasts: resubscribing succeeds (SUBSCRIBE is not a
    // write), but no heartbeat can come back through it.
    while paused.elapsed() < Duration::from_millis(5500) {
        assert_eq!(
            l1_live(p).await,
            Some(false),
            "L1 back on {:?} into the pause, with no heartbeat heard",
            paused.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes resume after 6 s: the subscription is checked again and L1 comes back.
    let start = Instant::now();
    while l1_live(p).await != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "L1 never came back after the pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redis-server` of this test alone (its command counts are this test's), killed on drop.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (cargo xtask services up redis installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { port, child }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Calls of `command` since the start (`INFO commandstats`; commands run inside scripts
    /// are counted under their own names).
    fn calls(&self, command: &str) -> u64 {
        let info = self.cli(&["info", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabelled counter of the proxy's `/metrics`.
async fn counter(p: &Proxy, name: &str) -> f64 {
    let text = reqwest::get(p.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A streamed request's text and `Cache-Status`.
async fn ask_stream(http: &reqwest::Client, p: &Proxy, body: &Value) -> (String, String) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let (status, bytes) = post_json(http, &p.url("/v1/chat/completions"), &body).await;
    (streamed_text(&bytes), status)
}

/// A streamed storing miss reads Redis with its lease attempt (one round trip before the
/// upstream call, as a non-streamed one): no `GET` while reads mostly miss. The same requests
/// again are hits, and lookups are counted once each, also for the identical streams that
/// followed another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server installed (cargo xtask services up redis)"]
async fn streamed_misses_read_redis_with_the_lease_attempt() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = PrivateRedis::start();
    let up = FakeUpstream::start().await;
    let store = format!("host: 127.0.0.1, port: {}", redis.port);
    let p = &replicas(1, &up, &store, "").await[0];
    let http = http();
    let prompts: Vec<String> = (0..20).map(|i| unique(&format!("streamed-{i}"))).collect();
    let (gets, evals) = (
        redis.calls("get"),
        redis.calls("evalsha") + redis.calls("eval"),
    );
    let mut answers = Vec::new();
    for prompt in &prompts {
        let (text, status) = ask_stream(&http, p, &chat_body(prompt)).await;
        assert!(status.contains("fwd=miss"), "{status}");
        assert!(text.ends_with(&format!("to: {prompt}")), "{text}");
        answers.push(text);
    }
    // The entries are written after each stream ends.
    let start = Instant::now();
    while redis.cli(&["dbsize"]).trim() != "20" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "20 entries never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.chat_calls(), 20);
    // Per miss: the lease attempt (the read) and the write that releases it, two scripts.
    // Each script reads once with a `GET` (counted as a `GET`), so any `GET` beyond one per
    // script is a read of its own (the old code's lookup before the lease: 60 `GET`s).
    assert_eq!(redis.calls("evalsha") + redis.calls("eval") - evals, 40);
    assert_eq!(
        redis.calls("get") - gets,
        40,
        "a streamed storing miss read with a GET before its lease"
    );
    assert_eq!(counter(p, "llm_cache_misses_total").await, 20.0);

    for (prompt, first) in prompts.iter().zip(&answers) {
        let (text, status) = ask_stream(&http, p, &chat_body(prompt)).await;
        assert!(status.contains("hit"), "{status}");
        assert_eq!(&text, first);
    }
    assert_eq!(up.chat_calls(), 20, "the second round was all hits");
    assert_eq!(counter(p, "llm_cache_misses_total").await, 20.0);

    // Ten identical streams at once: one upstream stream; each request's lookup is counted
    // once, as a miss (the leader's read, the followers' left to it).
    up.set_latency(Duration::from_millis(300));
    let body = chat_body(&unique("burst"));
    let burst = join_all((0..10).map(|_| ask_stream(&http, p, &body))).await;
    assert_eq!(up.chat_calls(), 21);
    for (text, _) in &burst {
        assert_eq!(text, &burst[0].0);
    }
    assert_eq!(counter(p, "llm_cache_misses_total").await, 30.0);
}

/// A streamed request that leads its fan-out but cannot use the stored entry (`s-maxage: 0`)
/// releases the identical streams that joined it: they read for themselves and hit, rather
/// than wait for its upstream stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "service: redis (cargo xtask services up)"]
async fn a_stale_stream_leader_releases_its_followers_to_hit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let up = FakeUpstream::start().await;
    let p = &replicas(1, &up, REDIS, "").await[0];
    let http = http();
    let body = chat_body(&unique("stale-leader"));
    let (first, status) = ask_stream(&http, p, &body).await;
    assert!(status.contains("fwd=miss"), "{status}");
    // The entry is written after the stream ends.
    let start = Instant::now();
    while !ask_stream(&http, p, &body).await.1.contains("hit") {
        assert!(start.elapsed() < Duration::from_secs(10), "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    up.set_latency(Duration::from_millis(1000));
    let mut fresh = body.clone();
    fresh["cache"] = json!({"s-maxage": 0});
    let leader = {
        let (http, p) = (http.clone(), p.url("/v1/chat/completions"));
        let mut fresh = fresh.clone();
        fresh["stream"] = json!(true);
        tokio::spawn(async move { post_json(&http, &p, &fresh).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers = join_all((0..5).map(|_| ask_stream(&http, p, &body))).await;
    for (text, status) in &followers {
        assert!(
            status.contains("hit"),
            "a follower of a stale leader: {status}"
        );
        assert_eq!(text, &first);
    }
    let (status, _) = leader.await.unwrap();
    assert!(status.contains("fwd=stale"), "{status}");
    assert_eq!(
        up.chat_calls(),
        2,
        "the first miss and the stale leader's refresh"
    );
}
