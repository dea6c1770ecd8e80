//! Black-box tests of the `llm-cache` binary: the real proxy process, a fake upstream, HTTP.
//! Hits and misses are judged by the upstream's call count.

use std::time::Duration;

use llm_cache_tests::{FakeUpstream, Proxy, config};
use reqwest::StatusCode;
use serde_json::{Value, json};

const LOCAL: &str = "{type: local, ttl: 600}";

fn chat_req(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

struct Resp {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
}

async fn post(proxy: &Proxy, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let client = reqwest::Client::new();
    let mut rb = client.post(proxy.url(path)).json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("request");
    Resp {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.bytes().await.expect("body"),
    }
}

async fn chat(proxy: &Proxy, body: &Value) -> Resp {
    post(proxy, "/v1/chat/completions", body, &[]).await
}

async fn settle() {
    // Writes happen off the response path.
    tokio::time::sleep(Duration::from_millis(60)).await;
}

fn sse_events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

fn streamed_content(body: &[u8]) -> String {
    sse_events(body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn miss_then_byte_identical_hit_with_headers() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    assert!(
        proxy.ready_after < Duration::from_secs(2),
        "ready in {:?}",
        proxy.ready_after
    );
    let a = chat(&proxy, &chat_req("hello")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.cache_status(), "llm-cache; fwd=miss; stored");
    let key = a
        .header("x-litellm-cache-key")
        .expect("key on a miss (fixes LiteLLM #8570)")
        .to_owned();
    assert_eq!(key.len(), 64);
    settle().await;
    let b = chat(&proxy, &chat_req("hello")).await;
    assert_eq!(b.status, 200);
    assert_eq!(up.chat_calls(), 1, "the repeat is served from the cache");
    assert_eq!(a.body, b.body, "byte-for-byte (same id, created, usage)");
    assert_eq!(b.cache_status(), "llm-cache; hit");
    assert_eq!(b.header("x-litellm-cache-key"), Some(key.as_str()));
    assert!(b.header("age").is_some());
    assert_eq!(b.header("content-type"), Some("application/json"));
    // The `cache` field never reaches upstream; the model is the deployment's.
    let sent = &up.bodies()[0];
    assert_eq!(sent["model"], "fake-model");
    assert!(sent.get("cache").is_none());
    assert_eq!(up.auth_headers()[0].as_deref(), Some("Bearer sk-upstream"));
}

#[tokio::test]
async fn json_key_order_and_number_forms_share_an_entry() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let client = reqwest::Client::new();
    for body in [
        r#"{"model":"gpt-test","temperature":1.0,"messages":[{"role":"user","content":"order"}]}"#,
        r#"{ "messages": [ { "content": "order", "role": "user" } ], "temperature": 1.0, "model": "gpt-test" }"#,
        r#"{"temperature":1e0,"model":"gpt-test","messages":[{"content":"order","role":"user"}],"stream":false}"#,
        r#"{"temperature":1.0,"model":"gpt-test","seed":null,"messages":[{"content":"order","role":"user"}]}"#,
    ] {
        let r = client
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        settle().await;
    }
    assert_eq!(
        up.chat_calls(),
        1,
        "LiteLLM F1: order/format must not matter"
    );
    // The integer 1 is another body on the wire (typed parsers tell it from 1.0): a miss.
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-test","temperature":1,"messages":[{"role":"user","content":"order"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.chat_calls(), 2);
}

#[tokio::test]
async fn body_directives() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let with = |prompt: &str, cache: Value| {
        let mut r = chat_req(prompt);
        r["cache"] = cache;
        r
    };
    // no-cache: goes upstream, still stores (the refreshed entry is served next).
    chat(&proxy, &chat_req("nc")).await;
    settle().await;
    let r = chat(&proxy, &with("nc", json!({"no-cache": true}))).await;
    assert_eq!(r.cache_status(), "llm-cache; fwd=request; stored");
    settle().await;
    let r2 = chat(&proxy, &chat_req("nc")).await;
    assert_eq!(up.chat_calls(), 2);
    assert_eq!(
        r.json()["id"],
        r2.json()["id"],
        "no-cache refreshed the entry"
    );

    // no-store: not written.
    chat(&proxy, &with("ns", json!({"no-store": true}))).await;
    settle().await;
    chat(&proxy, &chat_req("ns")).await;
    assert_eq!(up.chat_calls(), 4);

    // ttl: expires.
    chat(&proxy, &with("ttl", json!({"ttl": 1}))).await;
    settle().await;
    chat(&proxy, &chat_req("ttl")).await;
    assert_eq!(up.chat_calls(), 5);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    chat(&proxy, &chat_req("ttl")).await;
    assert_eq!(up.chat_calls(), 6, "expired after its ttl");

    // s-maxage: 0 is always a miss.
    settle().await;
    let r = chat(&proxy, &with("ttl", json!({"s-maxage": 0}))).await;
    assert_eq!(up.chat_calls(), 7);
    assert!(
        r.cache_status().starts_with("llm-cache; fwd=stale"),
        "{}",
        r.cache_status()
    );

    // namespace isolates and prefixes the key.
    let r = chat(&proxy, &with("ttl", json!({"namespace": "team-a"}))).await;
    assert_eq!(up.chat_calls(), 8);
    assert!(
        r.header("x-litellm-cache-key")
            .unwrap()
            .starts_with("team-a:")
    );

    // only-if-cached: 504 without calling upstream.
    let r = chat(&proxy, &with("never-seen", json!({"only-if-cached": true}))).await;
    assert_eq!(r.status, 504);
    assert_eq!(up.chat_calls(), 8);

    // Malformed directives: 400 naming the field, upstream not called.
    for (cache, field) in [
        (json!({"ttl": "abc"}), "cache.ttl"),
        (json!({"no-cache": "true"}), "cache.no-cache"),
        (json!({"s-maxage": -1}), "cache.s-maxage"),
        (json!("no-cache"), "cache"),
        (json!({"nocache": true}), "cache.nocache"),
    ] {
        let r = chat(&proxy, &with("bad", cache.clone())).await;
        assert_eq!(r.status, 400, "{cache}");
        let e = r.json();
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{e}"
        );
        assert_eq!(e["error"]["param"], field);
    }
    // cache: null is no directive (LiteLLM F20 fails the request).
    let r = chat(&proxy, &with("null-cache", Value::Null)).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.chat_calls(), 9);
}

#[tokio::test]
async fn cache_control_header_and_precedence() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    chat(&proxy, &chat_req("h")).await;
    settle().await;
    post(
        &proxy,
        "/v1/chat/completions",
        &chat_req("h"),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(up.chat_calls(), 2, "no-cache header skips the lookup");
    settle().await;
    let r = post(
        &proxy,
        "/v1/chat/completions",
        &chat_req("h"),
        &[("cache-control", "max-age=3600")],
    )
    .await;
    assert_eq!(up.chat_calls(), 2);
    assert_eq!(r.cache_status(), "llm-cache; hit");
    post(
        &proxy,
        "/v1/chat/completions",
        &chat_req("h"),
        &[("cache-control", "max-age=0")],
    )
    .await;
    assert_eq!(up.chat_calls(), 3, "max-age=0 accepts nothing cached");
    settle().await;
    post(
        &proxy,
        "/v1/chat/completions",
        &chat_req("h2"),
        &[("cache-control", "no-store")],
    )
    .await;
    settle().await;
    chat(&proxy, &chat_req("h2")).await;
    assert_eq!(up.chat_calls(), 5, "no-store header");
    let r = post(
        &proxy,
        "/v1/chat/completions",
        &chat_req("unseen"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(up.chat_calls(), 5);
    // The body wins over the header.
    let mut body = chat_req("h");
    body["cache"] = json!({"no-cache": false});
    settle().await;
    let r = post(
        &proxy,
        "/v1/chat/completions",
        &body,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(
        up.chat_calls(),
        5,
        "body no-cache:false beats header no-cache"
    );
    assert_eq!(r.cache_status(), "llm-cache; hit");
    let r = post(
        &proxy,
        "/v1/chat/completions",
        &chat_req("h"),
        &[("cache-control", "max-age=soon")],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max-age")
    );
}

#[tokio::test]
async fn streaming_both_ways() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    // A streamed miss is forwarded and stored...
    let mut req = chat_req("stream me please");
    req["stream"] = json!(true);
    let r = chat(&proxy, &req).await;
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let upstream_text = streamed_content(&r.body);
    assert_eq!(upstream_text, "reply #1 to: stream me please");
    assert!(sse_events(&r.body).last().unwrap() == "[DONE]");
    settle().await;
    // ...and serves a non-streaming request...
    let j = chat(&proxy, &chat_req("stream me please")).await;
    assert_eq!(up.chat_calls(), 1);
    let v = j.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "reply #1 to: stream me please"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // ...and a streaming one, replayed in word-sized chunks.
    let s = chat(&proxy, &req).await;
    assert_eq!(up.chat_calls(), 1);
    assert_eq!(s.cache_status(), "llm-cache; hit");
    let events = sse_events(&s.body);
    assert_eq!(streamed_content(&s.body), "reply #1 to: stream me please");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["content"], "reply ");
    assert_eq!(events.last().unwrap(), "[DONE]");

    // A non-streaming entry serves a streaming request, with usage when asked.
    chat(&proxy, &chat_req("json first")).await;
    settle().await;
    let mut sreq = chat_req("json first");
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let s = chat(&proxy, &sreq).await;
    assert_eq!(up.chat_calls(), 2);
    let events = sse_events(&s.body);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(streamed_content(&s.body), "reply #2 to: json first");

    // Tool calls survive stream assembly and replay.
    let mut treq = chat_req("TOOL please");
    treq["stream"] = json!(true);
    chat(&proxy, &treq).await;
    settle().await;
    let j = chat(&proxy, &chat_req("TOOL please")).await;
    assert_eq!(up.chat_calls(), 3);
    let call = &j.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], "{\"q\":\"x\"}");

    // A stream that ends without [DONE] is not stored.
    let mut creq = chat_req("CUTSTREAM now");
    creq["stream"] = json!(true);
    chat(&proxy, &creq).await;
    settle().await;
    chat(&proxy, &creq).await;
    assert_eq!(up.chat_calls(), 5);
}

#[tokio::test]
async fn text_completions_and_their_streams() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let req = json!({"model": "text-test", "prompt": "Say hi", "max_tokens": 5});
    let a = post(&proxy, "/v1/completions", &req, &[]).await;
    settle().await;
    let b = post(&proxy, "/completions", &req, &[]).await;
    assert_eq!(a.body, b.body);
    assert_eq!(up.completion_calls(), 1);
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let s = post(&proxy, "/v1/completions", &sreq, &[]).await;
    assert_eq!(up.completion_calls(), 1);
    let text: String = sse_events(&s.body)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/text")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, a.json()["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test]
async fn embeddings_partial_hits() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let req = |input: Value| json!({"model": "embed-test", "input": input});
    let a = post(
        &proxy,
        "/v1/embeddings",
        &req(json!(["alpha", "beta"])),
        &[],
    )
    .await;
    assert_eq!(a.status, 200);
    settle().await;
    let b = post(
        &proxy,
        "/v1/embeddings",
        &req(json!(["alpha", "gamma", "beta"])),
        &[],
    )
    .await;
    assert_eq!(up.embedding_calls(), 2);
    assert_eq!(
        up.bodies().last().unwrap()["input"],
        json!(["gamma"]),
        "upstream sees only the missing input"
    );
    assert!(
        b.cache_status().contains("fwd=partial"),
        "{}",
        b.cache_status()
    );
    let v = b.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, word) in ["alpha", "gamma", "beta"].iter().enumerate() {
        assert_eq!(data[i]["index"], i);
        assert_eq!(
            data[i]["embedding"][0],
            json!(word.len() as f64),
            "{word} in place"
        );
    }
    assert_eq!(v["usage"]["prompt_tokens"], 6, "2+2+2 tokens summed");
    settle().await;
    let c = post(&proxy, "/v1/embeddings", &req(json!("gamma")), &[]).await;
    assert_eq!(
        up.embedding_calls(),
        2,
        "a single string hits the per-item entry"
    );
    assert_eq!(c.cache_status(), "llm-cache; hit");
    // encoding_format is keyed.
    post(
        &proxy,
        "/v1/embeddings",
        &json!({"model": "embed-test", "input": "gamma", "encoding_format": "base64"}),
        &[],
    )
    .await;
    assert_eq!(up.embedding_calls(), 3);
}

#[tokio::test]
async fn auth_with_master_key() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, Some("sk-master"))).await;
    let client = reqwest::Client::new();
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_req("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "auth_error");
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&chat_req("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for path in ["/cache/ping", "/metrics", "/v1/models"] {
        let r = client.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    for path in ["/health/liveliness", "/health/readiness"] {
        let r = client.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} is open: it reveals only states");
    }
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-master")
        .json(&chat_req("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .header("x-api-key", "sk-master")
        .json(&chat_req("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.auth_headers()[0].as_deref(),
        Some("Bearer sk-upstream"),
        "the master key never goes upstream"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, "{type: local, namespace: app}", None)).await;
    let client = reqwest::Client::new();
    let ping: Value = client
        .get(proxy.url("/cache/ping"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ping["status"], "healthy");
    assert_eq!(ping["cache_type"], "local");
    assert_eq!(ping["ping_response"], true);
    assert_eq!(ping["set_cache_response"], "success");

    let a = chat(&proxy, &chat_req("del")).await;
    let key = a.header("x-litellm-cache-key").unwrap().to_owned();
    assert!(key.starts_with("app:"));
    settle().await;
    chat(&proxy, &chat_req("del")).await;
    assert_eq!(up.chat_calls(), 1);
    let r = client
        .post(proxy.url("/cache/delete"))
        .json(&json!({"keys": [key]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "success");
    chat(&proxy, &chat_req("del")).await;
    assert_eq!(up.chat_calls(), 2, "deleted entry is gone");
    // The key without its namespace also works (LiteLLM fixes up `k` → `ns:k`).
    settle().await;
    let hash = key.strip_prefix("app:").unwrap();
    client
        .post(proxy.url("/cache/delete"))
        .json(&json!({"keys": [hash]}))
        .send()
        .await
        .unwrap();
    chat(&proxy, &chat_req("del")).await;
    assert_eq!(up.chat_calls(), 3);
    let r = client
        .post(proxy.url("/cache/delete"))
        .json(&json!({"nokeys": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    settle().await;
    let r = client
        .post(proxy.url("/cache/flushall"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    chat(&proxy, &chat_req("del")).await;
    assert_eq!(up.chat_calls(), 4, "flushall cleared our namespace");

    let metrics = client
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "llm_cache_hits_total{tier=\"backend\"}",
        "llm_cache_misses_total",
        "llm_cache_lookup_duration_seconds_bucket",
        "llm_cache_upstream_duration_seconds_count",
        "llm_cache_tokens_saved_total{type=\"prompt\"}",
        "llm_cache_coalesced_total",
        "llm_cache_bytes_served_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let models: Value = client
        .get(proxy.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gpt-test", "embed-test", "text-test"]);
}

#[tokio::test]
async fn upstream_errors_are_passed_through_and_never_cached() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    for _ in 0..2 {
        let r = chat(&proxy, &chat_req("FAIL500 now")).await;
        assert_eq!(r.status, 500);
        assert_eq!(
            r.json()["error"]["message"],
            "upstream says 500 Internal Server Error"
        );
        settle().await;
    }
    assert_eq!(up.chat_calls(), 2, "errors are not cached");
    let r = chat(&proxy, &chat_req("FAIL429")).await;
    assert_eq!(r.status, 429);
    // Empty responses are not stored.
    chat(&proxy, &chat_req("EMPTY")).await;
    settle().await;
    chat(&proxy, &chat_req("EMPTY")).await;
    assert_eq!(up.chat_calls(), 5);
    // Unknown model: OpenAI-style 400.
    let r = chat(&proxy, &json!({"model": "nope", "messages": []})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model=nope")
    );
    // Unreachable upstream: 502.
    let dead = format!("http://127.0.0.1:{}/v1", llm_cache_tests::free_port());
    let cfg = format!(
        "model_list:\n  - model_name: gpt-test\n    litellm_params: {{model: openai/x, api_base: \"{dead}\"}}\nlitellm_settings: {{cache: true, cache_params: {{type: local}}}}\n"
    );
    let p2 = Proxy::start(&cfg).await;
    let r = chat(&p2, &chat_req("x")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["type"], "upstream_error");
    // The internal upstream's address is logged, never told to the client.
    let port = dead.rsplit(':').next().unwrap().trim_end_matches("/v1");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        !text.contains(port) && !text.contains("127.0.0.1"),
        "the 502 body reveals the upstream: {text}"
    );
}

#[tokio::test]
async fn concurrent_identical_requests_make_one_upstream_call() {
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(300));
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = proxy.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&chat_req("together"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert_eq!(up.chat_calls(), 1, "single-flight");
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
}

fn stream_req(prompt: &str) -> Value {
    let mut req = chat_req(prompt);
    req["stream"] = json!(true);
    req
}

/// Sends a streaming request; returns `Cache-Status` and the whole body.
async fn stream_call(url: String, req: Value) -> (String, bytes::Bytes) {
    llm_cache_tests::post_json(&reqwest::Client::new(), &url, &req).await
}

#[tokio::test]
async fn one_in_flight_stream_fans_out_to_every_identical_streaming_request() {
    let up = FakeUpstream::start().await;
    // The upstream answers after 300 ms, then streams ~110 chunks 2 ms apart.
    up.set_latency(Duration::from_millis(300));
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let prompt = format!("fan out {}", "word ".repeat(60));
    let url = proxy.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(stream_call(url.clone(), stream_req(&prompt))));
    }
    // One more that arrives while the stream is already flowing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = tokio::spawn(stream_call(url.clone(), stream_req(&prompt)));
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let (late_status, late_body) = late.await.unwrap();
    assert_eq!(up.chat_calls(), 1, "one upstream stream for all");
    let leaders = results
        .iter()
        .filter(|(s, _)| s.contains("fwd=miss") && !s.contains("collapsed"));
    assert_eq!(leaders.count(), 1, "{results:?}");
    let followers = results
        .iter()
        .filter(|(s, _)| s.contains("collapsed"))
        .count();
    assert_eq!(followers, 7);
    // Every client got the upstream's bytes, identical, complete.
    let first = &results[0].1;
    assert!(results.iter().all(|(_, b)| b == first));
    assert_eq!(sse_events(first).last().map(String::as_str), Some("[DONE]"));
    let text = streamed_content(first);
    assert_eq!(text, format!("reply #1 to: {prompt}"));
    // The late one joined mid-stream (collapsed, same bytes) or, on a slow machine, found the
    // stored entry (a hit); never a second upstream call.
    if late_status.contains("collapsed") {
        assert_eq!(&late_body, first);
    } else {
        assert!(late_status.contains("hit"), "{late_status}");
        assert_eq!(streamed_content(&late_body), text);
    }
    settle().await;
    let (status, body) = stream_call(url, stream_req(&prompt)).await;
    assert!(status.contains("hit"), "{status}");
    assert_eq!(streamed_content(&body), text);
    assert_eq!(up.chat_calls(), 1);
}

#[tokio::test]
async fn a_stream_follower_survives_the_leader_disconnecting() {
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(300));
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let prompt = format!("leader leaves {}", "word ".repeat(60));
    let url = proxy.url("/v1/chat/completions");
    let leader = {
        let (url, req) = (url.clone(), stream_req(&prompt));
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&req)
                .send()
                .await
                .unwrap();
            // Headers only, then hang up.
            drop(r);
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = tokio::spawn(stream_call(url.clone(), stream_req(&prompt)));
    leader.await.unwrap();
    let (status, body) = follower.await.unwrap();
    assert!(status.contains("collapsed"), "{status}");
    assert_eq!(sse_events(&body).last().map(String::as_str), Some("[DONE]"));
    assert_eq!(up.chat_calls(), 1);
    settle().await;
    let (status, _) = stream_call(url, stream_req(&prompt)).await;
    assert!(
        status.contains("hit"),
        "stored after the leader left: {status}"
    );
    assert_eq!(up.chat_calls(), 1);
}

#[tokio::test]
async fn a_stream_nobody_listens_to_is_abandoned_and_not_stored() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let prompt = format!("abandoned {}", "word ".repeat(60));
    let url = proxy.url("/v1/chat/completions");
    let r = reqwest::Client::new()
        .post(url.clone())
        .json(&stream_req(&prompt))
        .send()
        .await
        .unwrap();
    drop(r); // hang up after the headers, ~200 ms before the upstream would end
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = stream_call(url, stream_req(&prompt)).await;
    assert!(
        status.contains("fwd=miss"),
        "an incomplete stream was stored: {status}"
    );
    assert_eq!(sse_events(&body).last().map(String::as_str), Some("[DONE]"));
    assert_eq!(up.chat_calls(), 2);
}

#[tokio::test]
async fn a_refused_stream_is_not_shared() {
    // An upstream error before streaming is the leader's answer; the others make their own
    // calls (and get their own errors), as with the non-streaming single-flight.
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(200));
    let proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let url = proxy.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&stream_req("please FAIL500"))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 500);
    }
    assert_eq!(up.chat_calls(), 3);
}

#[tokio::test]
async fn deployments_of_one_model_group_share_entries() {
    let up1 = FakeUpstream::start().await;
    let up2 = FakeUpstream::start().await;
    let cfg = format!(
        "model_list:\n  - model_name: gpt-test\n    litellm_params: {{model: openai/a, api_base: \"{}\"}}\n  - model_name: gpt-test\n    litellm_params: {{model: azure/b, api_base: \"{}\"}}\nlitellm_settings: {{cache: true, cache_params: {{type: local}}}}\n",
        up1.base_url(),
        up2.base_url()
    );
    let proxy = Proxy::start(&cfg).await;
    chat(&proxy, &chat_req("group")).await;
    settle().await;
    for _ in 0..4 {
        chat(&proxy, &chat_req("group")).await;
    }
    assert_eq!(
        up1.chat_calls() + up2.chat_calls(),
        1,
        "round-robin deployments share the entry"
    );
    chat(&proxy, &chat_req("other")).await;
    chat(&proxy, &chat_req("third")).await;
    assert_eq!(up1.chat_calls(), 2, "round-robin");
    assert_eq!(up2.chat_calls(), 1);
}

#[tokio::test]
async fn default_off_mode_and_call_types() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(
        &up,
        "{type: local, mode: default_off, supported_call_types: [acompletion]}",
        None,
    ))
    .await;
    chat(&proxy, &chat_req("off")).await;
    settle().await;
    let r = chat(&proxy, &chat_req("off")).await;
    assert_eq!(up.chat_calls(), 2);
    assert!(r.cache_status().contains("fwd=bypass"));
    let mut on = chat_req("off");
    on["cache"] = json!({"use-cache": true});
    chat(&proxy, &on).await;
    settle().await;
    chat(&proxy, &on).await;
    assert_eq!(up.chat_calls(), 3);
    // Embeddings are not a supported call type here: never cached (LiteLLM #41003 fixed).
    let mut e = json!({"model": "embed-test", "input": "x", "cache": {"use-cache": true}});
    post(&proxy, "/v1/embeddings", &e, &[]).await;
    settle().await;
    e["cache"] = json!({"use-cache": true});
    post(&proxy, "/v1/embeddings", &e, &[]).await;
    assert_eq!(up.embedding_calls(), 2);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(700));
    let mut proxy = Proxy::start(&config(&up, LOCAL, None)).await;
    let url = proxy.url("/v1/chat/completions");
    let inflight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&chat_req("slow"))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
}

#[tokio::test]
async fn embedded_default_config_caches_on_disk() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start_default(&[
        ("OPENAI_BASE_URL", &up.base_url()),
        ("OPENAI_API_KEY", "sk-env"),
    ])
    .await;
    let body =
        json!({"model": "any-model-name", "messages": [{"role": "user", "content": "default"}]});
    let a = chat(&proxy, &body).await;
    assert_eq!(a.status, 200);
    settle().await;
    let b = chat(&proxy, &body).await;
    assert_eq!(b.cache_status(), "llm-cache; hit");
    assert_eq!(up.chat_calls(), 1);
    assert_eq!(
        up.bodies()[0]["model"],
        "any-model-name",
        "wildcard passes the client's model"
    );
    assert_eq!(up.auth_headers()[0].as_deref(), Some("Bearer sk-env"));
    assert!(
        proxy.dir.path().join(".llm_cache").is_dir(),
        "disk cache in ./.llm_cache"
    );
}

#[tokio::test]
async fn tenant_partitions_and_client_cache_keys() {
    let up = FakeUpstream::start().await;
    let cfg = format!(
        "model_list:\n  - model_name: gpt-test\n    litellm_params: {{model: openai/x, api_base: \"{}\"}}\nlitellm_settings: {{cache: true, cache_params: {{type: local}}}}\nllm_cache_settings: {{partition_by_api_key: true}}\n",
        up.base_url()
    );
    let proxy = Proxy::start(&cfg).await;
    let proxy = &proxy;
    let as_key = |k: &'static str| async move {
        post(
            proxy,
            "/v1/chat/completions",
            &chat_req("tenant"),
            &[("authorization", k)],
        )
        .await
    };
    let a1 = as_key("Bearer sk-tenant-a").await;
    settle().await;
    let a2 = as_key("Bearer sk-tenant-a").await;
    assert_eq!(a2.cache_status(), "llm-cache; hit");
    let b = as_key("Bearer sk-tenant-b").await;
    assert!(
        !b.cache_status().contains("hit"),
        "another tenant never sees tenant a's entry"
    );
    assert_ne!(
        a1.header("x-litellm-cache-key"),
        b.header("x-litellm-cache-key")
    );
    assert_eq!(up.chat_calls(), 2);
    // The client's own key is forwarded upstream when the deployment has none.
    assert_eq!(up.auth_headers()[1].as_deref(), Some("Bearer sk-tenant-b"));

    // A caller-chosen `cache_key` is ignored unless allowed (LiteLLM F12).
    let mut one = chat_req("first prompt");
    one["cache_key"] = json!("shared");
    let mut two = chat_req("second prompt");
    two["cache_key"] = json!("shared");
    chat(proxy, &one).await;
    settle().await;
    let r = chat(proxy, &two).await;
    assert!(
        !r.cache_status().contains("hit"),
        "cache_key must not let one prompt read another's entry"
    );
    assert!(
        up.bodies().iter().all(|b| b.get("cache_key").is_none()),
        "cache_key is not forwarded"
    );
}
