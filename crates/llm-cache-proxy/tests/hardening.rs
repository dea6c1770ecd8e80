//! Black-box tests of the proxy's bounds, as a hostile client or an operator would try them:
//! idle and half-sent connections, stalled bodies, a low descriptor limit flooded with idle
//! sockets, shutdown within `shutdown_timeout` whatever clients and the upstream do, readiness
//! that reflects the backend, upstream addresses kept out of error bodies, `Cache-Control` read
//! as RFC 9111 asks.

use std::time::{Duration, Instant};

use llm_cache_tests::{FakeUpstream, Proxy, config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOCAL: &str = "{type: local, ttl: 600}";

fn with_general(base: String, general: &str) -> String {
    format!("{base}general_settings:\n{general}")
}

fn chat_req(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

/// Reads until the server closes the connection (or `within` passes: `None`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .expect("connect")
}

/// A proxy (and its upstream) with these `keep_alive_timeout` and `header_read_timeout`.
async fn with_timeouts(keep_alive_s: u32, header_s: u32) -> (FakeUpstream, Proxy) {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&with_general(
        config(&up, LOCAL, None),
        &format!("  keep_alive_timeout: {keep_alive_s}\n  header_read_timeout: {header_s}\n"),
    ))
    .await;
    (up, proxy)
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed() {
    let (_up, proxy) = with_timeouts(1, 1).await;
    let started = Instant::now();
    // Connected, nothing sent.
    let mut silent = connect(&proxy).await;
    // Half a request head.
    let mut half = connect(&proxy).await;
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        .await
        .unwrap();
    // One whole request, then the keep-alive connection left idle.
    let mut kept = connect(&proxy).await;
    kept.write_all(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, stream) in [
        ("silent", &mut silent),
        ("half-sent head", &mut half),
        ("idle keep-alive", &mut kept),
    ] {
        let got = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(got.is_some(), "{name}: connection still open after 10 s");
        if name == "idle keep-alive" {
            let text = String::from_utf8_lossy(got.as_ref().unwrap()).into_owned();
            assert!(text.starts_with("HTTP/1.1 200"), "{name}: {text}");
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the 1 s timeouts: {:?}",
        started.elapsed()
    );
    // The proxy still serves.
    let r = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_req("after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// How long until the server closes `stream` (reading and dropping what it sends), if it does
/// within `within`.
async fn closes_after(mut stream: TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    read_until_closed(&mut stream, within)
        .await
        .map(|_| started.elapsed())
}

/// Sends one whole request and reads its whole response: the connection is then an idle
/// keep-alive one.
async fn one_request(proxy: &Proxy) -> TcpStream {
    let mut s = connect(proxy).await;
    s.write_all(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .expect("a content-length");
        body.len() >= length
    };
    while !complete(&got) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    s
}

/// `header_read_timeout` bounds a request head, from the connection's opening or the head's
/// first byte; a keep-alive connection waiting for its next request is bounded by
/// `keep_alive_timeout` alone (hyper's own header timer closed it after `header_read_timeout`),
/// and an HTTP/2 connection has no head timeout.
#[tokio::test]
async fn a_slow_head_gets_header_read_timeout_and_an_idle_connection_keep_alive_timeout() {
    let (_up, proxy) = with_timeouts(5, 1).await;
    let head = Duration::from_secs(1);
    let keep_alive = Duration::from_secs(5);
    let window = Duration::from_secs(15);
    // Connected, nothing sent; half a head on a new connection.
    let silent = tokio::spawn(closes_after(connect(&proxy).await, window));
    let mut half = connect(&proxy).await;
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();
    let half = tokio::spawn(closes_after(half, window));
    // An idle keep-alive connection.
    let idle = tokio::spawn(closes_after(one_request(&proxy).await, window));
    // A keep-alive connection idle 2 s, then half of its next head.
    let mut late = one_request(&proxy).await;
    // An HTTP/2 connection (prior knowledge): the preface and an empty SETTINGS frame.
    let mut h2 = connect(&proxy).await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let h2 = tokio::spawn(closes_after(h2, window));
    tokio::time::sleep(Duration::from_secs(2)).await;
    late.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("the keep-alive connection is still open after 2 s idle");
    let late = closes_after(late, window).await;

    let slack = Duration::from_millis(100);
    for (name, closed) in [
        ("silent", silent.await.unwrap()),
        ("half-sent head", half.await.unwrap()),
    ] {
        let after = closed.unwrap_or_else(|| panic!("{name}: still open after {window:?}"));
        assert!(
            after + slack >= head && after < keep_alive - slack,
            "{name}: closed after {after:?}, not after header_read_timeout (1 s)"
        );
    }
    let after = late.expect("late head: still open");
    assert!(
        after + slack >= head && after < keep_alive - slack,
        "late head: closed {after:?} after its first byte, not after header_read_timeout (1 s)"
    );
    for (name, closed) in [
        ("idle keep-alive", idle.await.unwrap()),
        ("HTTP/2", h2.await.unwrap()),
    ] {
        let after = closed.unwrap_or_else(|| panic!("{name}: still open after {window:?}"));
        assert!(
            after + slack >= keep_alive,
            "{name}: closed after {after:?}, before keep_alive_timeout (5 s)"
        );
    }
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_an_oversized_one_413() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&with_general(
        config(&up, LOCAL, None),
        "  request_body_timeout: 1\n  max_request_body_bytes: 4096\n",
    ))
    .await;
    let mut s = connect(&proxy).await;
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("closed within 10 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_body_timeout"), "{text}");

    // Declared too large, and too large while streamed without a length.
    let client = reqwest::Client::new();
    let big = "x".repeat(8000);
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_req(&big))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_request_body_bytes")
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(up.chat_calls(), 0);
    let metrics = client
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("llm_cache_request_body_timeouts_total 1"),
        "{metrics}"
    );
}

/// A shell wrapper that runs the proxy with a 256-descriptor limit.
fn limited_binary(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("llm-cache-nofile-256");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nulimit -n 256 || exit 97\nexec '{}' \"$@\"\n",
            llm_cache_tests::proxy_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn idle_sockets_do_not_lock_out_clients_at_the_descriptor_limit() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Default limits: the connection cap follows the 256-descriptor limit.
    let proxy = Proxy::start_binary(limited_binary(dir.path()), &config(&up, LOCAL, None)).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(connect(&proxy).await);
    }
    // Half of them with half a request head.
    for s in idle.iter_mut().step_by(2) {
        let _ = s
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHo")
            .await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..5 {
        let r = client
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat_req(&format!("real client {i}")))
            .send()
            .await
            .expect("a real client is served despite 300 idle sockets");
        assert_eq!(r.status(), 200);
    }
    let metrics = client
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llm_cache_connections_evicted_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("evictions metric");
    assert!(evicted > 0, "{metrics}");
    drop(idle);
}

#[tokio::test]
async fn sigterm_ends_within_shutdown_timeout_whatever_clients_and_upstream_do() {
    let up = FakeUpstream::start().await;
    // The upstream hangs (far beyond the shutdown timeout).
    up.set_latency(Duration::from_secs(600));
    let mut proxy = Proxy::start(&with_general(
        config(&up, LOCAL, None),
        "  shutdown_timeout: 2\n",
    ))
    .await;
    let mut idle = connect(&proxy).await;
    idle.write_all(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut half = connect(&proxy).await;
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut stalled = connect(&proxy).await;
    stalled
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
        .await
        .unwrap();
    // An idle HTTP/2 connection (pooled by the client after one request).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(proxy.url("/health/liveliness"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // A request waiting on the hung upstream.
    let url = proxy.url("/v1/chat/completions");
    let hung = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&chat_req("hung"))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_millis(3500),
        "SIGTERM took {took:?} with shutdown_timeout 2 s"
    );
    assert!(
        hung.await.unwrap().is_err(),
        "the hung request was cut, not answered"
    );
    drop((idle, half, stalled, h2));
}

async fn readiness(proxy: &Proxy) -> (u16, Value) {
    let r = reqwest::get(proxy.url("/health/readiness")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls readiness until its status is no longer `connecting` (the first check runs at once).
async fn settled_readiness(proxy: &Proxy) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = readiness(proxy).await;
        if body["status"] != "connecting" || Instant::now() > deadline {
            return (code, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readiness_reflects_the_backend_and_needs_no_key() {
    let up = FakeUpstream::start().await;
    // A disk cache: ready once opened, even with a master key set (readiness needs none).
    let ok = Proxy::start(&config(&up, "{type: disk}", Some("sk-master"))).await;
    let (code, body) = settled_readiness(&ok).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["cache_backend"], "connected");

    // A Redis nobody listens on: not ready, and the error (which names the host) stays in the
    // log.
    let port = llm_cache_tests::free_port();
    let redis = format!("{{type: redis, host: 127.0.0.1, port: {port}}}");
    let down = Proxy::start(&with_general(
        config(&up, &redis, None),
        "  readiness_check_interval: 0.2\n",
    ))
    .await;
    let (code, body) = settled_readiness(&down).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["cache_backend"], "unreachable");
    assert!(!body.to_string().contains(&port.to_string()), "{body}");
    // Requests are still answered (fail-open).
    let r = reqwest::Client::new()
        .post(down.url("/v1/chat/completions"))
        .json(&chat_req("no redis"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Opted out: ready (serving uncached), the cache reported.
    let lenient = Proxy::start(&with_general(
        config(&up, &redis, None),
        "  readiness_requires_cache: false\n",
    ))
    .await;
    let (code, body) = settled_readiness(&lenient).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "degraded");
}

#[tokio::test]
async fn cache_control_is_read_as_rfc_9111_asks() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let client = reqwest::Client::new();
    let send = |cc: reqwest::header::HeaderValue, prompt: &'static str| {
        client
            .post(proxy.url("/v1/chat/completions"))
            .header("cache-control", cc)
            .json(&chat_req(prompt))
            .send()
    };
    // A huge max-age is capped, not refused.
    let huge = reqwest::header::HeaderValue::from_static("max-age=999999999999999999999999");
    assert_eq!(send(huge.clone(), "huge").await.unwrap().status(), 200);
    // Unknown extensions, non-ASCII bytes included, are ignored; a quoted comma does not split.
    let ext = reqwest::header::HeaderValue::from_bytes(
        b"x-caf\xc3\xa9=\"a, no-store, b\", \xff\xfe-ext, private",
    )
    .unwrap();
    let a = send(ext.clone(), "ext").await.unwrap();
    assert_eq!(a.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = send(ext, "ext").await.unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(
        b.headers()["cache-status"].to_str().unwrap(),
        "llm-cache; hit",
        "the quoted no-store is not a directive"
    );
    // A known directive with a malformed value stays a clear 400.
    let bad = reqwest::header::HeaderValue::from_static("max-age=soon");
    let r = send(bad, "bad").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max-age"),
        "{body}"
    );
}

#[tokio::test]
async fn a_large_body_is_keyed_and_forwarded_as_if_parsed_whole() {
    let up = FakeUpstream::start().await;
    let cfg = |extra: &str| config(&up, &format!("{{type: local, ttl: 600{extra}}}"), None);
    // Large bodies keep their bulk as raw JSON text; `max_messages` makes the proxy parse them
    // whole (the gate counts messages): both must key and forward alike.
    let raw_path = Proxy::start(&cfg("")).await;
    let tree_path = Proxy::start(&cfg(", max_messages: 1000000")).await;
    let messages: Vec<Value> = (0..16_000)
        .map(|i: u32| {
            json!({
                "role": if i.is_multiple_of(2) { "user" } else { "assistant" },
                "content": format!("turn {i}: caf\u{e9} \"quoted\" \\ back\nslash and a float {}.5", i),
                "name": null,
            })
        })
        .collect();
    let tools: Vec<Value> = (0..200)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}"), "parameters": {"type": "object", "properties": {"x": {"type": "number", "minimum": 1.0, "maximum": 1e3}}}}}))
        .collect();
    let request = json!({
        "model": "gpt-test",
        "messages": messages,
        "tools": tools,
        "temperature": 0.25,
        "metadata": {"trace": "t-1"},
        "user": "u-1",
        "seed": null,
    });
    let compact = serde_json::to_vec(&request).unwrap();
    assert!(compact.len() > 1_500_000, "{}", compact.len());
    let client = reqwest::Client::new();
    let send = |proxy: &Proxy, body: Vec<u8>| {
        client
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let a = send(&raw_path, compact.clone()).await.unwrap();
    assert_eq!(a.status(), 200);
    let key_a = a.headers()["x-litellm-cache-key"]
        .to_str()
        .unwrap()
        .to_owned();
    let b = send(&tree_path, compact.clone()).await.unwrap();
    assert_eq!(b.status(), 200);
    let key_b = b.headers()["x-litellm-cache-key"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(key_a, key_b, "the raw path keys as the parsed one");
    let bodies = up.bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[0], bodies[1],
        "the raw path forwards as the parsed one"
    );
    assert_eq!(bodies[0]["messages"], request["messages"]);
    assert!(
        bodies[0].get("seed").is_none(),
        "top-level nulls are not forwarded"
    );

    // The same request, pretty-printed: a hit. One character changed deep inside: a miss.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pretty = serde_json::to_vec_pretty(&request).unwrap();
    let c = send(&raw_path, pretty).await.unwrap();
    assert_eq!(
        c.headers()["cache-status"].to_str().unwrap(),
        "llm-cache; hit"
    );
    assert_eq!(c.headers()["x-litellm-cache-key"].to_str().unwrap(), key_a);
    let mut changed = request.clone();
    changed["messages"][15_999]["content"] = json!("turn 15999: something else");
    let d = send(&raw_path, serde_json::to_vec(&changed).unwrap())
        .await
        .unwrap();
    assert_eq!(d.status(), 200);
    assert_ne!(d.headers()["x-litellm-cache-key"].to_str().unwrap(), key_a);
    assert_eq!(up.chat_calls(), 3);
    // A large body that is not an object, or not JSON: the same clear 400s.
    let not_object = format!("[{}]", "1,".repeat(700_000) + "1");
    let r = send(&raw_path, not_object.into_bytes()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "the request body must be a JSON object"
    );
    let mut broken = compact.clone();
    broken.truncate(compact.len() - 10);
    let r = send(&raw_path, broken).await.unwrap();
    assert_eq!(r.status(), 400);
}
