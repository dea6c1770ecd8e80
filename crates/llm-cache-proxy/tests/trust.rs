//! "A hit is only ever the answer this request would have got, for someone allowed to get it":
//! randomized black-box tests of the real binary against a fake upstream that records every
//! body it receives.
//!
//! * Key pairs: requests mutated at any depth (add, remove, change, reorder, nest, null, number
//!   spelling); a hit is allowed only when the upstream would have received the same body
//!   (`stream`/`stream_options` aside) for the same model group, and is required when it would.
//! * Tenants: N tenants × M prompts × (exact, streaming, embeddings, semantic), interleaved and
//!   concurrent; every answer must come from an upstream call made for the same tenant.
//! * Pass-through credentials: a hit only for the credential the upstream accepted.
//!
//! `LLM_CACHE_TRUST_PAIRS` (default 1500) and `LLM_CACHE_TRUST_SEED` widen a run; `cargo xtask
//! trust --pairs N --seed S` sets them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use llm_cache_tests::{FakeUpstream, Proxy, cache_status};
use serde_json::{Map, Value, json};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: a small, seedable generator (reproducible runs from a printed seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Members a client may send: forwarded ones (keyed), LiteLLM-only ones (stripped), and the
/// stream options (forwarded, not keyed).
const FORWARDED: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "n",
    "seed",
    "stop",
    "presence_penalty",
    "user",
    "response_format",
    "tools",
    "logit_bias",
    "tool_choice",
    "repetition_penalty",
    "min_p",
    "top_k",
    "guided_choice",
    "guided_json",
    "chat_template_kwargs",
    "options",
    "extra_body",
    "input_type",
    "logprobs",
    "parallel_tool_calls",
    "reasoning_effort",
    "dimensions",
];
const STRIPPED: &[&str] = &[
    "metadata",
    "timeout",
    "num_retries",
    "api_base",
    "api_key",
    "litellm_metadata",
    "fallbacks",
    "request_timeout",
    "caching",
    "ttl",
    "max_retries",
    "organization",
    "tags",
    "litellm_trace_id",
    "user_api_key_team_id",
    "mock_response",
];
const NESTED_NAMES: &[&str] = &["a", "b", "type", "const", "name", "properties", "x y"];
const WORDS: &[&str] = &["a", "b", "x y", "é", "\n", "", "q\"", "1"];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth >= 3 { 6 } else { 8 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => json!(rng.below(4)),
        3 => json!(*rng.pick(&[0.0f64, 0.5, 1.0, 1.5, 2.0, -0.0, 1e-5, 0.1])),
        4 => json!(*rng.pick(WORDS)),
        5 => json!(*rng.pick(&[u64::MAX, 9_007_199_254_740_993, 2])),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(4) {
                m.insert(
                    (*rng.pick(NESTED_NAMES)).to_owned(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Chat,
    Text,
    Embedding,
    Responses,
    Messages,
    Rerank,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Text => "/v1/completions",
            Kind::Embedding => "/v1/embeddings",
            Kind::Responses => "/v1/responses",
            Kind::Messages => "/v1/messages",
            Kind::Rerank => "/v1/rerank",
        }
    }
}

fn base_request(rng: &mut Rng, kind: Kind, id: usize) -> Value {
    let text = format!("pair {id} {}", rng.pick(WORDS));
    let mut r = match kind {
        Kind::Chat => json!({"model": "gpt-test", "messages": [{"role": "user", "content": text}]}),
        Kind::Text => json!({"model": "text-test", "prompt": text}),
        Kind::Embedding => json!({"model": "embed-test", "input": text}),
        Kind::Responses => json!({"model": "gpt-test", "input": text}),
        Kind::Messages => json!({"model": "claude-test", "max_tokens": 16,
            "messages": [{"role": "user", "content": text}]}),
        Kind::Rerank => json!({"model": "rerank-test", "query": text, "documents": ["a", "b"]}),
    };
    let obj = r.as_object_mut().expect("object");
    for _ in 0..rng.below(4) {
        let name = if rng.chance(70) {
            rng.pick(FORWARDED)
        } else {
            rng.pick(STRIPPED)
        };
        obj.insert((*name).to_owned(), random_value(rng, 1));
    }
    r
}

/// Every path below the top level (object members and array elements), except into `model` and
/// an embedding `input` (whose shape decides per-input caching).
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>, kind: Kind) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if prefix.is_empty() && (k == "model" || (kind == Kind::Embedding && k == "input"))
                {
                    continue;
                }
                prefix.push(k.clone());
                out.push(prefix.clone());
                paths(child, prefix, out, kind);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(format!("#{i}"));
                out.push(prefix.clone());
                paths(child, prefix, out, kind);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg.strip_prefix('#') {
            Some(i) => cur.get_mut(i.parse::<usize>().ok()?)?,
            None => cur.get_mut(seg.as_str())?,
        };
    }
    Some(cur)
}

/// One random mutation of a request, at any depth.
fn mutate(rng: &mut Rng, r: &mut Value, kind: Kind) {
    let mut all = Vec::new();
    paths(r, &mut Vec::new(), &mut all, kind);
    match rng.below(9) {
        // Add a member at the top level (forwarded, stripped or stream_options).
        0 | 1 => {
            let name = match rng.below(10) {
                0..=5 => rng.pick(FORWARDED),
                6..=8 => rng.pick(STRIPPED),
                _ => &"stream_options",
            };
            r[*name] = random_value(rng, 1);
        }
        // Switch the model group (same upstream model).
        2 if kind == Kind::Chat => {
            let other = if r["model"] == "gpt-test" {
                "gpt-alt"
            } else {
                "gpt-test"
            };
            r["model"] = json!(other);
        }
        // Set an embedding's input to another text.
        2 if kind == Kind::Embedding => r["input"] = json!(format!("other {}", rng.below(3))),
        _ if all.is_empty() => r["seed"] = json!(rng.below(3)),
        op => {
            let path = rng.pick(&all).clone();
            let (parent_path, last) = path.split_at(path.len() - 1);
            let Some(target) = at_mut(r, &path) else {
                return;
            };
            match op {
                // Change (possibly to an equal value).
                3 | 4 => *target = random_value(rng, path.len()),
                // Nest.
                5 => {
                    let inner = target.take();
                    *target = if rng.chance(50) {
                        json!([inner])
                    } else {
                        json!({"a": inner})
                    };
                }
                // Null (at the top level the same as absent; nested it counts).
                6 => *target = Value::Null,
                // Add a nested member.
                7 => {
                    if let Value::Object(m) = target {
                        m.insert(
                            (*rng.pick(NESTED_NAMES)).to_owned(),
                            random_value(rng, path.len() + 1),
                        );
                    } else if let Value::Array(a) = target {
                        a.push(random_value(rng, path.len() + 1));
                    } else {
                        *target = json!({"a": target.take()});
                    }
                }
                // Remove.
                _ => {
                    let Some(parent) = at_mut(r, parent_path) else {
                        return;
                    };
                    match (parent, last[0].strip_prefix('#')) {
                        (Value::Object(m), None) => {
                            m.remove(&last[0]);
                        }
                        (Value::Array(a), Some(i)) => {
                            let i: usize = i.parse().expect("index");
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// JSON text with members in a random order, random whitespace, and floats spelled in one of
/// several equivalent ways (`1.0`, `1e0`, `10e-1`): what a client may send for one value.
fn write_json(v: &Value, rng: &mut Rng, out: &mut String) {
    let ws = |rng: &mut Rng, out: &mut String| {
        if rng.chance(20) {
            out.push_str(rng.pick::<&str>(&[" ", "\n", "\t ", "  "]));
        }
    };
    match v {
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            for i in (1..members.len()).rev() {
                let j = rng.below(i + 1);
                members.swap(i, j);
            }
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                out.push_str(&serde_json::to_string(k).expect("string"));
                ws(rng, out);
                out.push(':');
                write_json(v, rng, out);
            }
            ws(rng, out);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                write_json(v, rng, out);
            }
            out.push(']');
        }
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().expect("f64");
            let text = match rng.below(3) {
                0 => format!("{f:?}"),
                1 => format!("{f:e}"),
                _ => {
                    // Same float, another spelling: mantissa × 10 with the exponent one lower.
                    let e = format!("{f:e}");
                    let (m, x) = e.split_once('e').expect("exponent");
                    let x: i32 = x.parse().expect("int");
                    let m: f64 = m.parse().expect("mantissa");
                    let candidate = format!("{}e{}", m * 10.0, x - 1);
                    if candidate.parse::<f64>().ok() == Some(f) {
                        candidate
                    } else {
                        format!("{f:?}")
                    }
                }
            };
            out.push_str(&text);
        }
        other => out.push_str(&other.to_string()),
    }
}

struct Sent {
    status: u16,
    hit: bool,
    /// The upstream call whose answer this is (from the chat/completion id or `fake_call`).
    call: Option<usize>,
    cache_status: String,
}

async fn send(
    client: &reqwest::Client,
    proxy: &Proxy,
    path: &str,
    text: String,
    auth: Option<&str>,
) -> Sent {
    let mut rb = client
        .post(proxy.url(path))
        .header("content-type", "application/json")
        .body(text);
    if let Some(a) = auth {
        rb = rb.bearer_auth(a);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let cache_status = cache_status(&r);
    let is_sse = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = r.bytes().await.expect("body");
    let call = if is_sse {
        String::from_utf8_lossy(&body)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .find_map(|v| call_of(&v))
    } else {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| call_of(&v))
    };
    Sent {
        status,
        hit: cache_status.contains("; hit"),
        call,
        cache_status,
    }
}

fn call_of(v: &Value) -> Option<usize> {
    if let Some(id) = v.get("id").and_then(Value::as_str) {
        return id.rsplit('-').next()?.parse().ok();
    }
    v.pointer("/data/0/fake_call")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
}

/// What the upstream got, as the oracle compares it: JSON text with object members sorted at
/// every depth (JSON objects are unordered; serde_json may keep insertion order when a
/// dependency enables `preserve_order`), without the two members that are forwarded but
/// documented as not keyed.
fn comparable(body: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut members: Vec<(&String, &Value)> = m.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    members
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut b = sorted(body);
    if let Some(o) = b.as_object_mut() {
        o.remove("stream");
        o.remove("stream_options");
    }
    serde_json::to_string(&b).expect("serialize")
}

fn key_config(up: &FakeUpstream) -> String {
    let base = up.base_url();
    format!(
        "model_list:
  - {{model_name: gpt-test, litellm_params: {{model: openai/fake-model, api_base: '{base}', api_key: sk-upstream}}}}
  - {{model_name: gpt-alt, litellm_params: {{model: openai/fake-model, api_base: '{base}', api_key: sk-upstream}}}}
  - {{model_name: text-test, litellm_params: {{model: openai/fake-instruct, api_base: '{base}', api_key: sk-upstream}}}}
  - {{model_name: embed-test, litellm_params: {{model: openai/fake-embed, api_base: '{base}', api_key: sk-upstream}}}}
  - {{model_name: claude-test, litellm_params: {{model: anthropic/claude-fake, api_base: '{base}', api_key: sk-upstream}}}}
  - {{model_name: rerank-test, litellm_params: {{model: openai/fake-rerank, api_base: '{base}', api_key: sk-upstream}}}}
litellm_settings:
  cache: true
  cache_params: {{type: local, ttl: 600, max_size_in_memory: 1000000, max_size_in_memory_bytes: 1000000000}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_pairs_hit_only_when_the_upstream_body_is_the_same() {
    let pairs = env_u64("LLM_CACHE_TRUST_PAIRS", 1500) as usize;
    let seed = env_u64("LLM_CACHE_TRUST_SEED", 0x11ca_c4e0);
    eprintln!("trust pairs: {pairs} pairs, seed {seed} (LLM_CACHE_TRUST_PAIRS / _SEED)");
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&key_config(&up)).await;
    let client = reqwest::Client::new();
    let mut rng = Rng(seed);
    // call number → (model group asked for, comparable upstream body)
    let mut origin: HashMap<usize, (String, String)> = HashMap::new();
    let (mut hits, mut equal_pairs) = (0usize, 0usize);

    // Sends a request; returns (its would-be upstream body, the response). A miss's body is the
    // one the upstream recorded for it; a hit's is learnt by sending it again with
    // `no-cache` + `no-store` (the `cache` member is stripped, so the upstream body is the same).
    async fn observe(
        client: &reqwest::Client,
        proxy: &Proxy,
        up: &FakeUpstream,
        rng: &mut Rng,
        kind: Kind,
        req: &Value,
        origin: &mut HashMap<usize, (String, String)>,
    ) -> (String, Sent) {
        let mut text = String::new();
        write_json(req, rng, &mut text);
        let sent = send(client, proxy, kind.path(), text, None).await;
        assert_eq!(sent.status, 200, "{req}");
        let model = req["model"].as_str().unwrap_or_default().to_owned();
        let call = sent.call.expect("every answer names its upstream call");
        if !sent.hit {
            let body = comparable(&up.bodies()[call - 1]);
            origin.insert(call, (model, body.clone()));
            return (body, sent);
        }
        let mut probe = req.clone();
        probe["cache"] = json!({"no-cache": true, "no-store": true});
        let mut text = String::new();
        write_json(&probe, rng, &mut text);
        let again = send(client, proxy, kind.path(), text, None).await;
        assert!(!again.hit);
        let body = comparable(&up.bodies()[again.call.expect("call") - 1]);
        (body, sent)
    }

    for i in 0..pairs {
        let kind = match rng.below(14) {
            0..=5 => Kind::Chat,
            6 => Kind::Text,
            7..=8 => Kind::Embedding,
            9..=10 => Kind::Responses,
            11..=12 => Kind::Messages,
            _ => Kind::Rerank,
        };
        let a = base_request(&mut rng, kind, i);
        let mut b = a.clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut b, kind);
        }
        let (body_a, sent_a) = observe(&client, &proxy, &up, &mut rng, kind, &a, &mut origin).await;
        let (body_b, sent_b) = observe(&client, &proxy, &up, &mut rng, kind, &b, &mut origin).await;
        for (req, body, sent) in [(&a, &body_a, &sent_a), (&b, &body_b, &sent_b)] {
            if sent.hit {
                hits += 1;
                let call = sent.call.expect("call");
                let (model, stored) = origin.get(&call).expect("the answer came from a call");
                assert!(
                    stored == body && req["model"] == json!(model),
                    "pair {i} (seed {seed}): a hit for a request the upstream would have seen differently\n request: {req}\n upstream body: {body}\n answer from: {stored} (model {model})\n cache-status: {}",
                    sent.cache_status
                );
            }
        }
        if body_a == body_b && a["model"] == b["model"] {
            equal_pairs += 1;
            assert!(
                sent_b.hit,
                "pair {i} (seed {seed}): the upstream would have seen the same body, yet a miss\n a: {a}\n b: {b}\n cache-status: {}",
                sent_b.cache_status
            );
        }
    }
    eprintln!("trust pairs: {hits} hits checked, {equal_pairs} equal-body pairs hit");
    assert!(
        equal_pairs > pairs / 20 && hits > pairs / 20,
        "the generator must produce both outcomes ({equal_pairs} equal pairs, {hits} hits)"
    );
}

/// One request of the tenant test and what came back.
struct Outcome {
    tenant: String,
    hit: bool,
    call: Option<usize>,
    status: u16,
    what: String,
}

fn tenant_config(up: &FakeUpstream, cache_params: &str, tenants: &[(&str, &str)]) -> String {
    let base = up.base_url();
    let mut keys = String::new();
    for (key, tenant) in tenants {
        keys.push_str(&format!("    - {{key: {key}, tenant: {tenant}}}\n"));
    }
    format!(
        "model_list:
  - {{model_name: gpt-test, litellm_params: {{model: openai/fake-model, api_base: '{base}', api_key: sk-upstream}}}}
  - {{model_name: embed-test, litellm_params: {{model: openai/fake-embed, api_base: '{base}', api_key: sk-upstream}}}}
litellm_settings:
  cache: true
  cache_params: {cache_params}
general_settings:
  master_key: sk-master
  keys:
{keys}"
    )
}

/// Random interleaved traffic of several tenants (4 requests at a time); checks every answer
/// came from an upstream call made for the same tenant.
async fn tenant_traffic(
    proxy: &Proxy,
    tenants: &[(&'static str, &'static str)],
    kinds: &[&'static str],
    requests: usize,
    seed: u64,
) -> Vec<Outcome> {
    let prompts = [
        "What is the capital of France?",
        "What's the capital city of France?",
        "Summarise my last three invoices.",
        "Translate 'good morning' into Spanish.",
        "How many legs does a spider have?",
        "Write a haiku about the sea.",
    ];
    let client = reqwest::Client::new();
    let proxy = Arc::new(proxy.url(""));
    let mut rng = Rng(seed);
    let mut plan = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (key, tenant) = *rng.pick(tenants);
        let prompt = *rng.pick(&prompts);
        let kind = *rng.pick(kinds);
        plan.push((key, tenant, prompt, kind));
    }
    let mut outcomes = Vec::with_capacity(requests);
    for batch in plan.chunks(4) {
        let mut tasks = Vec::new();
        for &(key, tenant, prompt, kind) in batch {
            let client = client.clone();
            let base = proxy.clone();
            tasks.push(tokio::spawn(async move {
                let (path, body) = match kind {
                    "embedding" => ("/v1/embeddings", json!({"model": "embed-test", "input": prompt})),
                    "stream" => (
                        "/v1/chat/completions",
                        json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": prompt}]}),
                    ),
                    _ => (
                        "/v1/chat/completions",
                        json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}),
                    ),
                };
                let mut rb = client.post(format!("{base}{path}")).json(&body);
                if !key.is_empty() {
                    rb = rb.bearer_auth(key);
                }
                let r = rb.send().await.expect("request");
                let status = r.status().as_u16();
                let cache_status = cache_status(&r);
                let bytes = r.bytes().await.expect("body");
                let call = if kind == "stream" {
                    String::from_utf8_lossy(&bytes)
                        .split("\n\n")
                        .filter_map(|e| e.strip_prefix("data: "))
                        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                        .find_map(|v| call_of(&v))
                } else {
                    serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| call_of(&v))
                };
                Outcome {
                    tenant: tenant.to_owned(),
                    hit: cache_status.contains("; hit"),
                    call,
                    status,
                    what: format!("{kind} {prompt:?} → {cache_status}"),
                }
            }));
        }
        for t in tasks {
            outcomes.push(t.await.expect("task"));
        }
    }
    outcomes
}

/// Every upstream call is attributed to the tenant whose request made it (a miss or a
/// coalesced follower of it); every hit must carry a call of its own tenant.
fn assert_no_cross_tenant_answers(outcomes: &[Outcome]) -> usize {
    let mut owner: HashMap<usize, &str> = HashMap::new();
    for o in outcomes.iter().filter(|o| !o.hit && o.status == 200) {
        let call = o.call.expect("an answer names its call");
        let prev = owner.insert(call, &o.tenant);
        assert!(
            prev.is_none_or(|p| p == o.tenant),
            "call {call} answered tenants {prev:?} and {} (coalesced across tenants): {}",
            o.tenant,
            o.what
        );
    }
    let mut hits = 0;
    for o in outcomes.iter().filter(|o| o.hit) {
        hits += 1;
        let call = o.call.expect("a hit names its call");
        assert_eq!(
            owner.get(&call).copied(),
            Some(o.tenant.as_str()),
            "tenant {} was served call {call}: {}",
            o.tenant,
            o.what
        );
    }
    hits
}

const TENANTS: &[(&str, &str)] = &[
    ("sk-team-a-1", "team-a"),
    ("sk-team-a-2", "team-a"),
    ("sk-team-b", "team-b"),
    ("sk-team-c", "team-c"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_tenants_never_share_exact_streaming_or_embeddings() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&tenant_config(
        &up,
        "{type: local, ttl: 600, max_size_in_memory: 100000}",
        TENANTS,
    ))
    .await;
    let seed = env_u64("LLM_CACHE_TRUST_SEED", 7);
    let outcomes =
        tenant_traffic(&proxy, TENANTS, &["chat", "stream", "embedding"], 400, seed).await;
    assert!(outcomes.iter().all(|o| o.status == 200));
    let hits = assert_no_cross_tenant_answers(&outcomes);
    assert!(hits > 100, "the traffic must produce hits ({hits})");
    // The two keys of team-a share: team-a's hits include answers first fetched by the other key.
    // (Checked by construction above: a hit's call belongs to its tenant, whichever key.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_tenants_never_share_semantic_hits() {
    let up = FakeUpstream::start().await;
    // Similar prompts in every tenant: the semantic lookup must stay inside the tenant.
    let proxy = Proxy::start(&tenant_config(
        &up,
        "{type: local-semantic, similarity_threshold: 0.5, ttl: 600}",
        TENANTS,
    ))
    .await;
    let seed = env_u64("LLM_CACHE_TRUST_SEED", 11);
    let outcomes = tenant_traffic(&proxy, TENANTS, &["chat"], 200, seed).await;
    assert!(outcomes.iter().all(|o| o.status == 200));
    let hits = assert_no_cross_tenant_answers(&outcomes);
    assert!(hits > 50, "the traffic must produce hits ({hits})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_pass_through_credentials_never_share() {
    let up = FakeUpstream::start().await;
    up.require_keys(&["sk-real-1", "sk-real-2"]);
    let base = up.base_url();
    // No master key, no api_key on the deployment: the upstream checks each caller's own key.
    let proxy = Proxy::start(&format!(
        "model_list:
  - {{model_name: gpt-test, litellm_params: {{model: openai/fake-model, api_base: '{base}'}}}}
  - {{model_name: embed-test, litellm_params: {{model: openai/fake-embed, api_base: '{base}'}}}}
litellm_settings:
  cache: true
  cache_params: {{type: local, ttl: 600, max_size_in_memory: 100000}}
"
    ))
    .await;
    let callers: &[(&str, &str)] = &[
        ("sk-real-1", "real-1"),
        ("sk-real-2", "real-2"),
        ("sk-made-up", "made-up"),
        ("", "anonymous"),
    ];
    let seed = env_u64("LLM_CACHE_TRUST_SEED", 13);
    let outcomes =
        tenant_traffic(&proxy, callers, &["chat", "stream", "embedding"], 400, seed).await;
    for o in &outcomes {
        if o.tenant == "made-up" || o.tenant == "anonymous" {
            assert_eq!(
                o.status, 401,
                "an unaccepted credential got an answer: {}",
                o.what
            );
            assert!(!o.hit, "an unaccepted credential got a hit: {}", o.what);
        } else {
            assert_eq!(o.status, 200, "{}", o.what);
        }
    }
    let hits = assert_no_cross_tenant_answers(&outcomes);
    assert!(hits > 100, "the traffic must produce hits ({hits})");
}

// ---- Specific cases ----------------------------------------------------------------------

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

async fn post(proxy: &Proxy, body: &Value, key: Option<&str>) -> (u16, String, Value) {
    let client = reqwest::Client::new();
    let mut rb = client.post(proxy.url("/v1/chat/completions")).json(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let cs = cache_status(&r);
    let v = r.json().await.unwrap_or(Value::Null);
    (status, cs, v)
}

#[tokio::test]
async fn stripped_members_never_reach_the_upstream_nor_redirect_it() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&key_config(&up)).await;
    let mut body = chat("strip me");
    for (k, v) in [
        ("api_base", json!("http://169.254.169.254/latest")),
        ("api_key", json!("sk-injected")),
        ("metadata", json!({"user": "x"})),
        ("litellm_metadata", json!({"a": 1})),
        ("timeout", json!(3)),
        ("num_retries", json!(2)),
        ("mock_response", json!("fake")),
        ("cache", json!({"ttl": 60})),
        ("seed", Value::Null),
    ] {
        body[k] = v;
    }
    let (status, _, _) = post(&proxy, &body, None).await;
    assert_eq!(status, 200);
    let sent = up.bodies().pop().expect("one upstream call");
    let mut keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["messages", "model"], "{sent}");
    assert_eq!(
        up.auth_headers().pop().flatten().as_deref(),
        Some("Bearer sk-upstream"),
        "the client's api_key is never used"
    );
}

#[tokio::test]
async fn extra_headers_is_refused_with_a_400_naming_it() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&key_config(&up)).await;
    let mut body = chat("headers");
    body["extra_headers"] = json!({"x-tenant": "b"});
    let (status, _, v) = post(&proxy, &body, None).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "extra_headers");
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn identity_dependent_deployments_are_never_cached() {
    let up = FakeUpstream::start().await;
    let base = up.base_url();
    let proxy = Proxy::start(&format!(
        "model_list:
  - {{model_name: agent, litellm_params: {{model: databricks_agent/my-agent, api_base: '{base}', api_key: k}}}}
  - {{model_name: nocache, litellm_params: {{model: openai/fake-model, api_base: '{base}', api_key: k, cache: false}}}}
  - {{model_name: '*', litellm_params: {{model: 'openai/*', api_base: '{base}', api_key: k}}}}
litellm_settings: {{cache: true, cache_params: {{type: local}}}}
"
    ))
    .await;
    for model in ["agent", "nocache", "microsoft_365_copilot/x"] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "who am I"}]});
        for _ in 0..2 {
            let (status, cs, _) = post(&proxy, &body, None).await;
            assert_eq!(status, 200);
            assert!(cs.contains("fwd=bypass"), "{model}: {cs}");
        }
    }
    assert_eq!(up.chat_calls(), 6, "every call went upstream");
}

#[tokio::test]
async fn client_cache_keys_never_cross_tenants_and_namespaces_are_one_segment() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&tenant_config(
        &up,
        "{type: local, namespace: app, allow_client_cache_key: true}",
        TENANTS,
    ))
    .await;
    let mut a = chat("one prompt");
    a["cache_key"] = json!("shared");
    let mut b = chat("another prompt");
    b["cache_key"] = json!("shared");
    let (_, cs, _) = post(&proxy, &a, Some("sk-team-a-1")).await;
    assert!(cs.contains("fwd=miss"), "{cs}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, cs, _) = post(&proxy, &b, Some("sk-team-a-2")).await;
    assert!(cs.contains("hit"), "same tenant, same custom key: {cs}");
    let (_, cs, _) = post(&proxy, &b, Some("sk-team-b")).await;
    assert!(
        cs.contains("fwd=miss"),
        "another tenant never reads it: {cs}"
    );

    // A namespace `app:x` sent by a client stays one segment under the configured one.
    let mut c = chat("ns");
    c["cache"] = json!({"namespace": "x:y"});
    let client = reqwest::Client::new();
    let r = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-master")
        .json(&c)
        .send()
        .await
        .unwrap();
    let key = r
        .headers()
        .get("x-litellm-cache-key")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(key.starts_with("app:x%3Ay:"), "{key}");
}

#[tokio::test]
async fn flushall_clears_request_namespaces_too() {
    let up = FakeUpstream::start().await;
    let mut config = key_config(&up);
    config = config.replace(
        "{type: local, ttl: 600,",
        "{type: local, namespace: app, ttl: 600,",
    );
    let proxy = Proxy::start(&config).await;
    let mut with_ns = chat("flush");
    with_ns["cache"] = json!({"namespace": "team"});
    let mut via_metadata = chat("flush meta");
    via_metadata["metadata"] = json!({"redis_namespace": "litellm:key:acompletion"});
    for body in [&chat("flush"), &with_ns, &via_metadata] {
        post(&proxy, body, None).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for body in [&chat("flush"), &with_ns, &via_metadata] {
        let (_, cs, _) = post(&proxy, body, None).await;
        assert!(cs.contains("hit"), "{cs}");
    }
    let r = reqwest::Client::new()
        .post(proxy.url("/cache/flushall"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for body in [&chat("flush"), &with_ns, &via_metadata] {
        let (_, cs, _) = post(&proxy, body, None).await;
        assert!(cs.contains("fwd=miss"), "{cs}");
    }
}

#[tokio::test]
async fn forwarded_metadata_is_keyed() {
    let up = FakeUpstream::start().await;
    let base = up.base_url();
    let proxy = Proxy::start(&format!(
        "model_list:
  - {{model_name: gpt-test, litellm_params: {{model: openai/fake-model, api_base: '{base}', api_key: k, forward_metadata: true}}}}
litellm_settings: {{cache: true, cache_params: {{type: local}}}}
"
    ))
    .await;
    let mut a = chat("meta");
    a["metadata"] = json!({"purpose": "a"});
    let mut b = chat("meta");
    b["metadata"] = json!({"purpose": "b"});
    post(&proxy, &a, None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, cs, _) = post(&proxy, &b, None).await;
    assert!(cs.contains("fwd=miss"), "{cs}");
    assert_eq!(up.bodies()[1]["metadata"], json!({"purpose": "b"}));
    let (_, cs, _) = post(&proxy, &a, None).await;
    assert!(cs.contains("hit"), "{cs}");
}

#[tokio::test]
async fn each_stream_follower_gets_the_usage_shape_it_asked_for() {
    let up = FakeUpstream::start().await;
    up.set_latency(Duration::from_millis(300));
    let proxy = Proxy::start(&key_config(&up)).await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let include_usage = i % 2 == 0;
        let body = json!({"model": "gpt-test", "stream": true,
            "stream_options": {"include_usage": include_usage},
            "messages": [{"role": "user", "content": "fan out"}]});
        let url = proxy.url("/v1/chat/completions");
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let text = client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            (include_usage, text)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        let (include_usage, text) = t.await.unwrap();
        let usage_chunks = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter(|v| v.get("usage").is_some_and(|u| !u.is_null()))
            .count();
        assert_eq!(
            usage_chunks,
            usize::from(include_usage),
            "include_usage={include_usage}: {text}"
        );
    }
    assert!(up.chat_calls() <= 2, "one flight per shape");
}
