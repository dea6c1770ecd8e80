//! `cargo xtask bench bodies`: what huge request bodies cost the proxy, and the requests beside
//! them. Several clients send 30 MB chat requests at once, again and again, while another
//! client repeats a small cached request; reported: the proxy's peak RSS (`VmHWM`), the hit's
//! latency percentiles next to a quiet baseline, and how long each large request took.
//!
//! ```text
//! large_bodies [--proxy PATH] [--clients 6] [--mb 30] [--rounds 2] [--shape messages|text]
//!              [--load-nice N]
//! ```
//! `messages`: a long conversation (many small messages, the worst case for a JSON tree);
//! `text`: one huge message. `--load-nice N` runs the large-body senders and the fake upstream
//! at nice N (the measuring client and the proxy stay at 0): on a machine with few cores this
//! models them being on other hosts, so the hit latency shows what the proxy's own large-body
//! work costs a hit rather than what the load generator takes from the proxy's cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use llm_cache_tests::{FakeUpstream, Proxy};
use serde_json::{Value, json};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

fn body(shape: &str, mb: usize, salt: usize) -> Vec<u8> {
    let target = mb * 1_000_000;
    let v = match shape {
        "text" => json!({
            "model": "gpt-test",
            "messages": [{"role": "user", "content": format!("{salt} {}", "lorem ipsum dolor sit amet ".repeat(target / 27))}],
        }),
        _ => {
            // ~250-byte messages, alternating roles.
            let message = |i: usize| {
                json!({
                    "role": if i.is_multiple_of(2) { "user" } else { "assistant" },
                    "content": format!("{salt}-{i}: the quick brown fox jumps over the lazy dog, and then some more words to make a realistic turn of a conversation about the weather, the news, some code and a plan for tomorrow; message {i}"),
                })
            };
            let each = serde_json::to_vec(&message(100_000)).unwrap().len() + 1;
            let messages: Vec<Value> = (0..target / each).map(message).collect();
            json!({"model": "gpt-test", "messages": messages})
        }
    };
    serde_json::to_vec(&v).unwrap()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

async fn hit_loop(url: String, until: Instant, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let req =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "small and cached"}]});
    let mut out = Vec::new();
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let r = http.post(&url).json(&req).send().await.expect("hit");
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

/// Lowers the calling thread's priority (Linux: nice applies per thread).
fn renice_this_thread(nice: i32) {
    if nice != 0 {
        #[cfg(target_os = "linux")]
        {
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
        }
    }
}

/// Runs `f` on a runtime of its own, on its own thread: the fake upstream, the large-body
/// senders and the measuring client must not delay each other's tasks.
fn on_own_runtime<F, T>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clients: usize = arg(&args, "--clients", "6").parse().unwrap();
    let mb: usize = arg(&args, "--mb", "30").parse().unwrap();
    let rounds: usize = arg(&args, "--rounds", "2").parse().unwrap();
    let shape = arg(&args, "--shape", "messages");
    let load_nice: i32 = arg(&args, "--load-nice", "0").parse().unwrap();
    let bin = std::path::PathBuf::from(arg(
        &args,
        "--proxy",
        &llm_cache_tests::proxy_binary().display().to_string(),
    ));
    // The fake upstream on its own runtime (a thread that lives as long as the process).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        renice_this_thread(load_nice);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let up = FakeUpstream::start().await;
            up.set_latency(Duration::from_millis(50));
            up.set_parse_limit(1 << 20);
            tx.send(up).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let up = rx.recv().unwrap();
    let limit = (mb + 2) * 1_000_000;
    let config = format!(
        "{}general_settings:\n  max_request_body_bytes: {limit}\n",
        llm_cache_tests::config(&up, "{type: local, ttl: 600}", None)
    );
    let proxy = Proxy::start_binary(bin, &config).await;
    let pid = proxy.pid();
    let url = proxy.url("/v1/chat/completions");
    // Warm the cached entry, then a quiet baseline.
    let never = Arc::new(AtomicBool::new(false));
    let quiet = {
        let url = url.clone();
        on_own_runtime(move || async move {
            let _ = hit_loop(
                url.clone(),
                Instant::now() + Duration::from_millis(300),
                never.clone(),
            )
            .await;
            hit_loop(url, Instant::now() + Duration::from_secs(2), never).await
        })
    };
    let baseline_rss = rss_kib(pid, "VmRSS:");
    let bodies: Vec<Vec<u8>> = (0..clients).map(|i| body(&shape, mb, i)).collect();
    println!(
        "proxy pid {pid}: {clients} clients × {rounds} rounds of {:.1} MB `{shape}` bodies (load at nice {load_nice}); RSS before: {} MiB",
        bodies[0].len() as f64 / 1e6,
        baseline_rss / 1024
    );

    // Every round's bodies built beforehand (distinct per round: misses that go upstream), so
    // that the load generator does no heavy work while the proxy is measured.
    let rounds_bodies: Vec<Vec<bytes::Bytes>> = (0..rounds)
        .map(|round| {
            bodies
                .iter()
                .map(|b| {
                    let mut b = b.clone();
                    let pos = b.len() / 2;
                    b[pos] = if round.is_multiple_of(2) { b'x' } else { b'y' };
                    bytes::Bytes::from(b)
                })
                .collect()
        })
        .collect();
    drop(bodies);
    let started = Instant::now();
    let big = std::thread::spawn({
        let url = url.clone();
        move || {
            renice_this_thread(load_nice);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let http = reqwest::Client::new();
                    let mut times = Vec::new();
                    for round in rounds_bodies {
                        let sends = round.into_iter().enumerate().map(|(i, b)| {
                            let http = http.clone();
                            let url = url.clone();
                            async move {
                                let t = Instant::now();
                                let r = http
                                    .post(&url)
                                    .header("content-type", "application/json")
                                    .body(b)
                                    .send()
                                    .await;
                                let status = match r {
                                    Ok(r) => {
                                        let s = r.status().as_u16();
                                        let _ = r.bytes().await;
                                        s
                                    }
                                    Err(_) => 0,
                                };
                                (i, status, t.elapsed())
                            }
                        });
                        times.extend(futures::future::join_all(sends).await);
                    }
                    times
                })
        }
    });
    let mut peak_sampled = 0;
    let stop = Arc::new(AtomicBool::new(false));
    let hits = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            on_own_runtime(move || hit_loop(url, Instant::now() + Duration::from_secs(3600), stop))
        })
    };
    while !big.is_finished() {
        peak_sampled = peak_sampled.max(rss_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    // The hits answered while the large requests ran.
    let loud = hits.join().unwrap();
    let times = big.join().unwrap();
    let elapsed = started.elapsed();
    println!(
        "large requests: {} in {:.1} s; statuses {:?}",
        times.len(),
        elapsed.as_secs_f64(),
        times.iter().map(|t| t.1).collect::<Vec<_>>()
    );
    let (p50, p99, max) = percentiles(times.iter().map(|t| t.2).collect());
    println!("large request latency: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    println!(
        "peak RSS: {} MiB (VmHWM), {} MiB sampled every 20 ms",
        rss_kib(pid, "VmHWM:") / 1024,
        peak_sampled / 1024
    );
    let (q50, q99, qmax) = percentiles(quiet);
    println!("cached hit, quiet: p50 {q50:?}, p99 {q99:?}, max {qmax:?}");
    let n = loud.len();
    let (l50, l99, lmax) = percentiles(loud);
    println!("cached hit, beside the large requests ({n}): p50 {l50:?}, p99 {l99:?}, max {lmax:?}");
}
