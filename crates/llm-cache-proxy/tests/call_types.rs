//! Black-box tests of the call types beyond chat, completions and embeddings: the Responses API,
//! Anthropic's Messages API, rerank and audio transcriptions; and of cost accounting (headers,
//! `/cache/stats`, `/metrics`, the request log). The real binary against a fake upstream.

use std::time::Duration;

use llm_cache_tests::{FakeUpstream, Proxy};
use serde_json::{Value, json};

fn config(up: &FakeUpstream, extra_general: &str) -> String {
    let base = up.base_url();
    format!(
        "model_list:
  - model_name: gpt-test
    litellm_params: {{model: openai/fake-model, api_base: '{base}', api_key: sk-up,
                      input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}
  - model_name: claude-test
    litellm_params: {{model: anthropic/claude-fake, api_base: '{base}', api_key: sk-ant-up,
                      input_cost_per_token: 0.000003, output_cost_per_token: 0.000015}}
  - model_name: claude-passthrough
    litellm_params: {{model: anthropic/claude-fake, api_base: '{base}'}}
  - model_name: rerank-test
    litellm_params: {{model: openai/fake-rerank, api_base: '{base}', api_key: sk-up, input_cost_per_query: 0.002}}
  - model_name: whisper-test
    litellm_params: {{model: openai/fake-whisper, api_base: '{base}', api_key: sk-up, input_cost_per_second: 0.0001}}
litellm_settings:
  cache: true
  cache_params: {{type: local, ttl: 600}}
{extra_general}"
    )
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    fn events(&self) -> Vec<(String, Value)> {
        let text = String::from_utf8_lossy(&self.body).into_owned();
        text.split("\n\n")
            .filter_map(|e| {
                let mut name = String::new();
                let mut data = None;
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).ok();
                    }
                }
                data.map(|d| (name, d))
            })
            .collect()
    }
}

async fn post(proxy: &Proxy, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let mut rb = reqwest::Client::new().post(proxy.url(path)).json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("request");
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.expect("body"),
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn responses_json_and_streams_share_entries_both_ways() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, "")).await;
    let req = json!({"model": "gpt-test", "input": "Name a colour.", "store": false});
    let first = post(&proxy, "/v1/responses", &req, &[]).await;
    assert_eq!(first.status, 200);
    assert!(
        first.header("cache-status").contains("fwd=miss"),
        "{}",
        first.header("cache-status")
    );
    settle().await;
    let again = post(&proxy, "/responses", &req, &[]).await;
    assert_eq!(again.header("cache-status"), "llm-cache; hit");
    assert_eq!(again.body, first.body, "byte for byte");
    // A streaming request hits the same entry and replays the Responses events, original ids.
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let s = post(&proxy, "/v1/responses", &streamed, &[]).await;
    assert_eq!(s.header("cache-status"), "llm-cache; hit");
    assert_eq!(s.header("content-type"), "text/event-stream");
    let events = s.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    assert!(names.contains(&"response.output_text.delta"));
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, first.json()["output"][0]["content"][0]["text"]);
    assert_eq!(events.last().unwrap().1["response"], first.json());
    assert_eq!(up.calls(), 1);

    // A stream miss is stored and serves a later JSON request.
    let req2 =
        json!({"model": "gpt-test", "input": "Name a fruit.", "stream": true, "store": false});
    let s = post(&proxy, "/v1/responses", &req2, &[]).await;
    assert!(s.header("cache-status").contains("fwd=miss"));
    let completed = s.events().last().unwrap().1["response"].clone();
    settle().await;
    let mut as_json = req2.clone();
    as_json["stream"] = json!(false);
    let j = post(&proxy, "/v1/responses", &as_json, &[]).await;
    assert_eq!(j.header("cache-status"), "llm-cache; hit");
    assert_eq!(j.json(), completed);
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn responses_that_change_server_state_are_never_cached() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, "")).await;
    for req in [
        json!({"model": "gpt-test", "input": "hi", "conversation": "conv_123"}),
        json!({"model": "gpt-test", "input": "hi", "background": true}),
    ] {
        for _ in 0..2 {
            let r = post(&proxy, "/v1/responses", &req, &[]).await;
            assert!(
                r.header("cache-status").contains("fwd=bypass"),
                "{req}: {}",
                r.header("cache-status")
            );
        }
    }
    assert_eq!(up.calls(), 4);
    // previous_response_id is forwarded, so keyed: another id is another entry.
    let a = json!({"model": "gpt-test", "input": "and then?", "previous_response_id": "resp_a"});
    let b = json!({"model": "gpt-test", "input": "and then?", "previous_response_id": "resp_b"});
    post(&proxy, "/v1/responses", &a, &[]).await;
    settle().await;
    assert!(
        post(&proxy, "/v1/responses", &b, &[])
            .await
            .header("cache-status")
            .contains("fwd=miss")
    );
    assert_eq!(
        post(&proxy, "/v1/responses", &a, &[])
            .await
            .header("cache-status"),
        "llm-cache; hit"
    );
}

#[tokio::test]
async fn anthropic_messages_json_and_streams_with_their_headers_keyed() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, "")).await;
    let req = json!({"model": "claude-test", "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hi"}]});
    let v1 = [("anthropic-version", "2023-06-01")];
    let first = post(&proxy, "/v1/messages", &req, &v1).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let sent = up.headers().pop().unwrap();
    assert_eq!(
        sent["x-api-key"], "sk-ant-up",
        "the deployment's key, as x-api-key"
    );
    assert_eq!(sent["anthropic-version"], "2023-06-01");
    assert_eq!(up.bodies().pop().unwrap()["model"], "claude-fake");
    settle().await;
    let hit = post(&proxy, "/v1/messages", &req, &v1).await;
    assert_eq!(hit.header("cache-status"), "llm-cache; hit");
    assert_eq!(hit.body, first.body);
    // The version and beta headers are keyed.
    let other = post(
        &proxy,
        "/v1/messages",
        &req,
        &[("anthropic-version", "2024-10-22")],
    )
    .await;
    assert!(other.header("cache-status").contains("fwd=miss"));
    let beta = post(
        &proxy,
        "/v1/messages",
        &req,
        &[
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024-05-16"),
        ],
    )
    .await;
    assert!(beta.header("cache-status").contains("fwd=miss"));
    assert_eq!(
        up.headers().pop().unwrap()["anthropic-beta"],
        "tools-2024-05-16"
    );
    // No version header: the default is sent, and keyed as such.
    settle().await;
    let default = post(&proxy, "/v1/messages", &req, &[]).await;
    assert_eq!(
        default.header("cache-status"),
        "llm-cache; hit",
        "2023-06-01 is the default"
    );

    // A stream hits the entry and replays Anthropic's events; a stream miss serves JSON later.
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let s = post(&proxy, "/v1/messages", &streamed, &v1).await;
    assert_eq!(s.header("cache-status"), "llm-cache; hit");
    let names: Vec<String> = s.events().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(names.iter().any(|n| n == "content_block_delta"));
    let text: String = s
        .events()
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, first.json()["content"][0]["text"]);
    let fresh = json!({"model": "claude-test", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "Stream first"}]});
    let s = post(&proxy, "/v1/messages", &fresh, &v1).await;
    assert!(s.header("cache-status").contains("fwd=miss"));
    settle().await;
    let mut as_json = fresh.clone();
    as_json["stream"] = json!(false);
    let j = post(&proxy, "/v1/messages", &as_json, &v1).await;
    assert_eq!(j.header("cache-status"), "llm-cache; hit");
    assert_eq!(j.json()["id"], s.events()[0].1["message"]["id"]);

    // cache_control blocks (Anthropic's own prompt caching) are forwarded and keyed.
    let cc = json!({"model": "claude-test", "max_tokens": 64, "system": [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say hi"}]});
    let r = post(&proxy, "/v1/messages", &cc, &v1).await;
    assert!(r.header("cache-status").contains("fwd=miss"));
    assert_eq!(
        up.bodies().pop().unwrap()["system"][0]["cache_control"]["type"],
        "ephemeral"
    );

    // The wrong protocol for a deployment is a clear 400.
    let wrong = post(&proxy, "/v1/chat/completions", &req, &[]).await;
    assert_eq!(wrong.status, 400);
    assert!(String::from_utf8_lossy(&wrong.body).contains("/v1/messages"));
}

#[tokio::test]
async fn anthropic_pass_through_forwards_and_partitions_by_x_api_key() {
    let up = FakeUpstream::start().await;
    up.require_keys(&["sk-ant-real"]);
    let proxy = Proxy::start(&config(&up, "")).await;
    let req = json!({"model": "claude-passthrough", "max_tokens": 8,
        "messages": [{"role": "user", "content": "who pays?"}]});
    let ok = post(
        &proxy,
        "/v1/messages",
        &req,
        &[("x-api-key", "sk-ant-real")],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(up.headers().pop().unwrap()["x-api-key"], "sk-ant-real");
    settle().await;
    let hit = post(
        &proxy,
        "/v1/messages",
        &req,
        &[("x-api-key", "sk-ant-real")],
    )
    .await;
    assert_eq!(hit.header("cache-status"), "llm-cache; hit");
    let fake = post(&proxy, "/v1/messages", &req, &[("x-api-key", "sk-made-up")]).await;
    assert_eq!(
        fake.status, 401,
        "a made-up key never gets the real key's hit"
    );
}

#[tokio::test]
async fn rerank_is_cached() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, "")).await;
    let req = json!({"model": "rerank-test", "query": "capital of France",
        "documents": ["Paris is the capital.", "Berlin is in Germany."], "top_n": 2});
    let first = post(&proxy, "/v1/rerank", &req, &[]).await;
    assert_eq!(first.status, 200);
    settle().await;
    let hit = post(&proxy, "/rerank", &req, &[]).await;
    assert_eq!(hit.header("cache-status"), "llm-cache; hit");
    assert_eq!(hit.body, first.body);
    let mut other = req.clone();
    other["top_n"] = json!(1);
    assert!(
        post(&proxy, "/v1/rerank", &other, &[])
            .await
            .header("cache-status")
            .contains("fwd=miss")
    );
    assert_eq!(hit.header("x-litellm-response-cost"), "0");
    assert_eq!(hit.header("x-llm-cache-saved-cost"), "0.002");
}

async fn transcribe(proxy: &Proxy, audio: &[u8], name: &str, fields: &[(&str, &str)]) -> Resp {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(audio.to_vec())
            .file_name(name.to_owned())
            .mime_str("audio/wav")
            .unwrap(),
    );
    for (k, v) in fields {
        form = form.text((*k).to_owned(), (*v).to_owned());
    }
    let r = reqwest::Client::new()
        .post(proxy.url("/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap(),
    }
}

#[tokio::test]
async fn transcriptions_are_keyed_by_the_audio_and_every_field() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up, "")).await;
    let audio: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let model = [("model", "whisper-test")];
    let first = transcribe(&proxy, &audio, "a.wav", &model).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert!(
        first.json()["text"]
            .as_str()
            .unwrap()
            .contains("of 200000 bytes")
    );
    assert_eq!(up.bodies().pop().unwrap()["model"], "fake-whisper");
    settle().await;
    let hit = transcribe(&proxy, &audio, "a.wav", &model).await;
    assert_eq!(hit.header("cache-status"), "llm-cache; hit");
    assert_eq!(hit.body, first.body);
    let mut changed = audio.clone();
    changed[100_000] ^= 1;
    let miss = transcribe(&proxy, &changed, "a.wav", &model).await;
    assert!(
        miss.header("cache-status").contains("fwd=miss"),
        "one byte of audio differs"
    );
    let lang = transcribe(
        &proxy,
        &audio,
        "a.wav",
        &[("model", "whisper-test"), ("language", "fr")],
    )
    .await;
    assert!(
        lang.header("cache-status").contains("fwd=miss"),
        "a field differs"
    );
    // Text formats come back as text, with their content type, from the cache too.
    let fields = [("model", "whisper-test"), ("response_format", "text")];
    let t = transcribe(&proxy, &audio, "a.wav", &fields).await;
    assert!(t.header("content-type").starts_with("text/plain"));
    settle().await;
    let t2 = transcribe(&proxy, &audio, "a.wav", &fields).await;
    assert_eq!(t2.header("cache-status"), "llm-cache; hit");
    assert!(t2.header("content-type").starts_with("text/plain"));
    assert_eq!(t2.body, t.body);
    // verbose_json has a duration: priced per second.
    let fields = [
        ("model", "whisper-test"),
        ("response_format", "verbose_json"),
    ];
    let v = transcribe(&proxy, &audio, "a.wav", &fields).await;
    assert_eq!(v.header("x-litellm-response-cost"), "0.00035");
    assert_eq!(up.calls(), 5);
}

#[tokio::test]
async fn cost_headers_stats_metrics_and_the_request_log() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let proxy = Proxy::start(&format!(
        "{}llm_cache_settings:\n  request_log: '{}'\n",
        config(&up, ""),
        log.display()
    ))
    .await;
    let req = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "price me"}]});
    let miss = post(&proxy, "/v1/chat/completions", &req, &[]).await;
    let usage = miss.json()["usage"].clone();
    let expected = usage["prompt_tokens"].as_f64().unwrap() * 0.000001
        + usage["completion_tokens"].as_f64().unwrap() * 0.000002;
    let cost: f64 = miss.header("x-litellm-response-cost").parse().unwrap();
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    assert_eq!(miss.header("x-llm-cache-saved-cost"), "");
    settle().await;
    for _ in 0..3 {
        let hit = post(&proxy, "/v1/chat/completions", &req, &[]).await;
        assert_eq!(hit.header("x-litellm-response-cost"), "0");
        let saved: f64 = hit.header("x-llm-cache-saved-cost").parse().unwrap();
        assert!((saved - expected).abs() < 1e-12);
    }
    // Unpriced: no cost header at all.
    let up2 = FakeUpstream::start().await;
    let plain = Proxy::start(&llm_cache_tests::config(&up2, "{type: local}", None)).await;
    let r = post(&plain, "/v1/chat/completions", &req, &[]).await;
    assert_eq!(r.header("x-litellm-response-cost"), "");

    let client = reqwest::Client::new();
    let stats: Value = client
        .get(proxy.url("/cache/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &stats["per_model"]["gpt-test"];
    assert_eq!(m["requests"], 4);
    assert_eq!(m["hits"], 3);
    assert_eq!(m["hit_ratio"], 0.75);
    assert!((m["saved_cost"].as_f64().unwrap() - 3.0 * expected).abs() < 1e-9);
    assert_eq!(
        m["saved_prompt_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() * 3
    );
    assert!(m["saved_upstream_seconds"].as_f64().unwrap() >= 0.0);
    let metrics = client
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("llm_cache_saved_cost_usd_total{model=\"gpt-test\",tenant=\"default\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("llm_cache_call_requests_total{call_type=\"chat\",cache=\"hit\"} 3"));
    assert!(metrics.contains(
        "llm_cache_saved_tokens_total{model=\"gpt-test\",tenant=\"default\",type=\"completion\"}"
    ));

    // The request log: one JSON line per request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["cache"], "miss");
    assert_eq!(lines[0]["call_type"], "chat");
    assert_eq!(lines[0]["model"], "gpt-test");
    assert_eq!(lines[0]["tenant"], "default");
    assert!(lines[0]["key"].as_str().unwrap().len() >= 64);
    assert_eq!(lines[1]["cache"], "hit");
    assert_eq!(lines[1]["cost"], 0.0);
    assert!(lines[1]["age_s"].is_u64());
    assert!((lines[1]["saved_cost"].as_f64().unwrap() - expected).abs() < 1e-12);
}

#[tokio::test]
async fn a_streamed_miss_is_accounted_when_it_ends() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let proxy = Proxy::start(&format!(
        "{}llm_cache_settings:\n  request_log: '{}'\n",
        config(&up, ""),
        log.display()
    ))
    .await;
    let req = json!({"model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream me"}]});
    let s = post(&proxy, "/v1/chat/completions", &req, &[]).await;
    assert_eq!(s.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["stream"], true);
    assert_eq!(line["cache"], "miss");
    assert!(line["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(line["cost"].as_f64().unwrap() > 0.0, "{line}");
}
