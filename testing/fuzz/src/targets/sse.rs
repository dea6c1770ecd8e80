//! `sse`: the SSE parser (`sse::SseParser`) and the stream assemblers (`sse::Assembler`,
//! `responses::Assembler`, `anthropic::Assembler`, through `endpoints::StreamAssembler`): raw
//! bytes in arbitrary chunks, hostile event streams of each format, and replay → assemble round
//! trips of generated responses, split at arbitrary byte boundaries, with CRLF line ends,
//! comments, `event:`/`id:`/`retry:` lines, garbage events and split `data:` lines injected.

use llm_cache_proxy::endpoints::{StreamAssembler, StreamFormat, replay};
use llm_cache_proxy::sse::{SseData, SseParser};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::strategies::{self, Blob};

const FORMATS: [StreamFormat; 4] = [
    StreamFormat::Chat,
    StreamFormat::Text,
    StreamFormat::Responses,
    StreamFormat::Anthropic,
];

fn format(i: u8) -> StreamFormat {
    FORMATS[i as usize % FORMATS.len()]
}

/// A change to a replayed stream that must not change what it assembles to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Benign {
    /// A `: comment` event before event `at`.
    Comment { at: u32, text: String },
    /// An `event:`, `id:` or `retry:` line at the start of event `at`.
    Field { at: u32, line: String },
    /// Extra blank lines before event `at`.
    Blank { at: u32, n: u8 },
    /// An event whose data is not a JSON object (`garbage`, `5`, `[]`, ...), before event `at`.
    Garbage { at: u32, data: String },
    /// Event `at`'s data line split in two `data:` lines after its `{`.
    SplitData { at: u32 },
    /// `data:` without the space, in event `at`.
    NoSpace { at: u32 },
}

/// One case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Arbitrary bytes, fed in chunks to every assembler.
    Raw {
        /// The stream.
        bytes: Blob,
        /// Chunk sizes (cycled; 0 counts as 1).
        chunks: Vec<u16>,
    },
    /// Bytes fed in chunks of exactly `chunk` bytes (no bound on the number of feeds).
    Feed {
        /// The stream.
        bytes: Blob,
        /// Chunk size (0 counts as 1).
        chunk: u16,
    },
    /// Hostile events of one format, framed as SSE.
    Events {
        /// Index into the formats (chat, text, responses, anthropic).
        format: u8,
        /// Event payloads.
        events: Vec<Value>,
        /// End with `data: [DONE]`.
        done: bool,
        /// Chunk sizes.
        chunks: Vec<u16>,
    },
    /// A response replayed as a stream, changed harmlessly, re-assembled.
    RoundTrip {
        /// Index into the formats.
        format: u8,
        /// The stored response (in the form the assembler produces).
        response: Value,
        /// Ask for the usage chunk (chat and text).
        include_usage: bool,
        /// Harmless changes.
        changes: Vec<Benign>,
        /// CRLF line ends.
        crlf: bool,
        /// Chunk sizes.
        chunks: Vec<u16>,
    },
}

fn chunks() -> BoxedStrategy<Vec<u16>> {
    prop_oneof![
        3 => vec(any::<u16>(), 1..8),
        2 => vec(1u16..16, 1..8),
        1 => Just(vec![1]),
        1 => Just(vec![u16::MAX]),
    ]
    .boxed()
}

fn non_empty_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => strategies::hostile_string(),
        2 => "[a-z ,.\n]{1,80}",
        1 => "[ \t]{0,3}[a-z]{1,8}( [a-z]{1,8}){0,400}[ \n]{0,3}",
    ]
    .prop_filter("non-empty", |s| !s.is_empty())
    .boxed()
}

fn head() -> BoxedStrategy<Map<String, Value>> {
    (
        strategies::hostile_string(),
        any::<u32>(),
        strategies::hostile_string(),
        proptest::option::of(strategies::hostile_string()),
        proptest::option::of(strategies::hostile_string()),
    )
        .prop_map(|(id, created, model, fp, tier)| {
            let mut m = Map::new();
            m.insert("id".to_owned(), json!(id));
            m.insert("created".to_owned(), json!(created));
            m.insert("model".to_owned(), json!(model));
            if let Some(f) = fp {
                m.insert("system_fingerprint".to_owned(), json!(f));
            }
            if let Some(t) = tier {
                m.insert("service_tier".to_owned(), json!(t));
            }
            m
        })
        .boxed()
}

fn usage() -> BoxedStrategy<Value> {
    (any::<u32>(), any::<u32>(), proptest::option::of(strategies::json()))
        .prop_map(|(p, c, extra)| {
            let mut u = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": u64::from(p) + u64::from(c)});
            if let Some(x) = extra {
                u["details"] = x;
            }
            u
        })
        .boxed()
}

/// A chat completion in the assembled form.
fn chat_response() -> BoxedStrategy<Value> {
    let tool = (strategies::hostile_string(), strategies::hostile_string(), strategies::hostile_string()).prop_map(
        |(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}),
    );
    let message = (
        proptest::option::weighted(
            0.95,
            proptest::sample::select(&["assistant", "tool", ""][..]),
        ),
        proptest::option::weighted(0.8, non_empty_text()),
        proptest::option::weighted(0.2, non_empty_text()),
        proptest::option::weighted(0.2, non_empty_text()),
        proptest::option::weighted(0.1, non_empty_text()),
        proptest::option::weighted(
            0.1,
            (strategies::hostile_string(), strategies::hostile_string()),
        ),
        proptest::option::weighted(0.3, vec(tool, 1..4)),
    )
        .prop_map(|(role, content, rc, r, refusal, fc, tools)| {
            let mut m = Map::new();
            m.insert("role".to_owned(), json!(role.unwrap_or("assistant")));
            m.insert(
                "content".to_owned(),
                content.map_or(Value::Null, Value::String),
            );
            if let Some(x) = rc {
                m.insert("reasoning_content".to_owned(), json!(x));
            }
            if let Some(x) = r {
                m.insert("reasoning".to_owned(), json!(x));
            }
            if let Some(x) = refusal {
                m.insert("refusal".to_owned(), json!(x));
            }
            if let Some((name, arguments)) = fc {
                m.insert(
                    "function_call".to_owned(),
                    json!({"name": name, "arguments": arguments}),
                );
            }
            if let Some(t) = tools {
                m.insert("tool_calls".to_owned(), Value::Array(t));
            }
            Value::Object(m)
        });
    let choice = (
        message,
        proptest::option::weighted(0.2, vec(strategies::json(), 1..4)),
        strategies::hostile_string(),
    );
    (head(), vec(choice, 1..4), proptest::option::of(usage()))
        .prop_map(|(mut out, choices, usage)| {
            out.insert("object".to_owned(), json!("chat.completion"));
            let choices: Vec<Value> = choices
                .into_iter()
                .enumerate()
                .map(|(i, (message, lp, finish))| {
                    json!({
                        "index": i,
                        "message": message,
                        "logprobs": lp.map_or(Value::Null, |c| json!({"content": c})),
                        "finish_reason": finish,
                    })
                })
                .collect();
            out.insert("choices".to_owned(), Value::Array(choices));
            if let Some(u) = usage {
                out.insert("usage".to_owned(), u);
            }
            Value::Object(out)
        })
        .boxed()
}

/// A text completion in the assembled form.
fn text_response() -> BoxedStrategy<Value> {
    (
        head(),
        vec(
            (strategies::hostile_string(), strategies::hostile_string()),
            1..4,
        ),
        proptest::option::of(usage()),
    )
        .prop_map(|(mut out, choices, usage)| {
            out.insert("object".to_owned(), json!("text_completion"));
            let choices: Vec<Value> = choices
                .into_iter()
                .enumerate()
                .map(|(i, (text, finish))| {
                    json!({"index": i, "text": text, "logprobs": null, "finish_reason": finish})
                })
                .collect();
            out.insert("choices".to_owned(), Value::Array(choices));
            if let Some(u) = usage {
                out.insert("usage".to_owned(), u);
            }
            Value::Object(out)
        })
        .boxed()
}

/// A completed Responses object.
fn responses_response() -> BoxedStrategy<Value> {
    let part = prop_oneof![
        3 => (strategies::hostile_string(), any::<bool>()).prop_map(|(text, ann)| {
            let mut p = json!({"type": "output_text", "text": text});
            if ann {
                p["annotations"] = json!([{"type": "url_citation", "url": "http://x"}]);
            }
            p
        }),
        1 => strategies::json_with_keys(&["type", "text", "refusal"]),
    ];
    let item = prop_oneof![
        3 => (strategies::hostile_string(), vec(part, 0..4)).prop_map(|(id, content)| {
            json!({"id": id, "type": "message", "status": "completed", "role": "assistant", "content": content})
        }),
        2 => (strategies::hostile_string(), strategies::hostile_string(), strategies::hostile_string()).prop_map(|(id, name, arguments)| {
            json!({"id": id, "type": "function_call", "status": "completed", "call_id": "c", "name": name, "arguments": arguments})
        }),
        1 => strategies::json_with_keys(&["id", "type", "content", "arguments", "summary"]),
    ];
    (
        strategies::hostile_string(),
        vec(item, 0..5),
        proptest::option::of(strategies::json()),
        proptest::option::of(usage()),
    )
        .prop_map(|(id, output, extra, usage)| {
            let mut r = json!({"id": id, "object": "response", "created_at": 1, "status": "completed", "model": "m", "output": output});
            if let Some(x) = extra {
                r["metadata"] = x;
            }
            if let Some(u) = usage {
                r["usage"] = u;
            }
            r
        })
        .boxed()
}

/// An Anthropic message in the assembled form.
fn anthropic_response() -> BoxedStrategy<Value> {
    let block = prop_oneof![
        3 => (strategies::hostile_string(), proptest::option::weighted(0.2, vec(strategies::json(), 1..3))).prop_map(|(text, cit)| {
            let mut b = json!({"type": "text", "text": text});
            if let Some(c) = cit {
                b["citations"] = Value::Array(c);
            }
            b
        }),
        2 => (any::<bool>(), strategies::hostile_string(), strategies::hostile_string(), strategies::json()).prop_map(|(server, id, name, input)| {
            json!({"type": if server { "server_tool_use" } else { "tool_use" }, "id": id, "name": name, "input": input})
        }),
        1 => (strategies::hostile_string(), strategies::hostile_string()).prop_map(|(thinking, signature)| {
            json!({"type": "thinking", "thinking": thinking, "signature": signature})
        }),
        1 => strategies::hostile_string().prop_map(|data| json!({"type": "redacted_thinking", "data": data})),
    ];
    (
        strategies::hostile_string(),
        vec(block, 0..5),
        proptest::option::of(strategies::hostile_string()),
        proptest::option::of(strategies::hostile_string()),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::option::of(strategies::json()),
        ),
        proptest::option::weighted(0.1, strategies::json()),
    )
        .prop_map(
            |(id, content, stop_reason, stop_sequence, (i, o, cache), container)| {
                let mut usage = json!({"input_tokens": i, "output_tokens": o});
                if let Some(c) = cache {
                    usage["server_tool_use"] = c;
                }
                let mut m = json!({
                    "id": id, "type": "message", "role": "assistant", "model": "claude",
                    "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                    "usage": usage,
                });
                if let Some(c) = container {
                    m["container"] = c;
                }
                m
            },
        )
        .boxed()
}

/// Hostile events of one format (structure-aware: the members each assembler reads).
fn hostile_event(format: StreamFormat) -> BoxedStrategy<Value> {
    const CHAT: &[&str] = &[
        "id",
        "created",
        "model",
        "choices",
        "index",
        "delta",
        "content",
        "role",
        "text",
        "tool_calls",
        "function",
        "name",
        "arguments",
        "finish_reason",
        "logprobs",
        "usage",
        "error",
        "refusal",
        "reasoning_content",
        "function_call",
        "type",
    ];
    const RESPONSES: &[&str] = &["type", "response", "status", "output", "delta", "item_id"];
    const ANTHROPIC: &[&str] = &[
        "type",
        "index",
        "message",
        "content_block",
        "delta",
        "text",
        "partial_json",
        "thinking",
        "signature",
        "citation",
        "usage",
        "stop_reason",
        "content",
    ];
    match format {
        StreamFormat::Chat | StreamFormat::Text => prop_oneof![
            2 => strategies::json_with_keys(CHAT),
            3 => (
                proptest::option::of(strategies::json_leaf()),
                vec(
                    (
                        proptest::option::of(strategies::json_number()),
                        strategies::json_with_keys(CHAT),
                        proptest::option::of(strategies::json_leaf()),
                        proptest::option::of(strategies::json_leaf()),
                    ),
                    0..4,
                ),
            )
                .prop_map(|(usage, choices)| {
                    let choices: Vec<Value> = choices
                        .into_iter()
                        .map(|(index, delta, finish, text)| {
                            let mut c = json!({"delta": delta});
                            if let Some(i) = index {
                                c["index"] = Value::Number(i);
                            }
                            if let Some(f) = finish {
                                c["finish_reason"] = f;
                            }
                            if let Some(t) = text {
                                c["text"] = t;
                            }
                            c
                        })
                        .collect();
                    let mut e = json!({"id": "x", "choices": choices});
                    if let Some(u) = usage {
                        e["usage"] = u;
                    }
                    e
                }),
        ]
        .boxed(),
        StreamFormat::Responses => prop_oneof![
            1 => strategies::json_with_keys(RESPONSES),
            2 => (
                proptest::sample::select(&[
                    "response.created", "response.completed", "response.failed",
                    "response.incomplete", "error", "response.output_text.delta",
                ][..]),
                strategies::json_with_keys(RESPONSES),
            )
                .prop_map(|(t, response)| json!({"type": t, "response": response})),
        ]
        .boxed(),
        StreamFormat::Anthropic => prop_oneof![
            1 => strategies::json_with_keys(ANTHROPIC),
            3 => (
                proptest::sample::select(&[
                    "message_start", "content_block_start", "content_block_delta",
                    "content_block_stop", "message_delta", "message_stop", "ping", "error",
                ][..]),
                proptest::option::of(strategies::json_number()),
                strategies::json_with_keys(ANTHROPIC),
                proptest::sample::select(&[
                    "text_delta", "input_json_delta", "thinking_delta", "signature_delta",
                    "citations_delta", "other",
                ][..]),
            )
                .prop_map(|(t, index, body, delta_type)| {
                    let mut e = match body {
                        Value::Object(m) => Value::Object(m),
                        other => json!({"message": other, "content_block": other, "usage": other}),
                    };
                    e["type"] = json!(t);
                    if let Some(i) = index {
                        e["index"] = Value::Number(i);
                    }
                    if t == "content_block_delta" {
                        let mut d = e.get("delta").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
                        d["type"] = json!(delta_type);
                        e["delta"] = d;
                    }
                    e
                }),
        ]
        .boxed(),
    }
}

fn benign() -> BoxedStrategy<Benign> {
    prop_oneof![
        (any::<u32>(), "[ -~]{0,20}").prop_map(|(at, text)| Benign::Comment { at, text }),
        (
            any::<u32>(),
            proptest::sample::select(
                &[
                    "event: x",
                    "event: error",
                    "id: 7",
                    "retry: 1000",
                    "event:",
                    "id"
                ][..]
            )
        )
            .prop_map(|(at, line)| Benign::Field {
                at,
                line: line.to_owned()
            }),
        (any::<u32>(), 1u8..4).prop_map(|(at, n)| Benign::Blank { at, n }),
        (
            any::<u32>(),
            proptest::sample::select(
                &[
                    "garbage",
                    "{",
                    "5",
                    "[]",
                    "\"s\"",
                    "null",
                    "{\"unrelated\":true}",
                    "[DONE] ",
                    "",
                    "data: x"
                ][..]
            )
        )
            .prop_map(|(at, data)| Benign::Garbage {
                at,
                data: data.to_owned()
            }),
        any::<u32>().prop_map(|at| Benign::SplitData { at }),
        any::<u32>().prop_map(|at| Benign::NoSpace { at }),
    ]
    .boxed()
}

/// Feeds `bytes` in chunks, at most ~256 of them; returns every event.
///
/// The parser rescans its whole buffer on every feed, so one large event in tiny chunks takes
/// quadratic time (the open bug `regressions/sse-20261130.json`, replayed exactly by
/// [`Input::Feed`]). Bounding the number of feeds keeps the fuzzer from spending its time there.
fn parse(bytes: &[u8], chunks: &[u16]) -> Vec<SseData> {
    feed(bytes, chunks, bytes.len() / 256)
}

/// Feeds `bytes` in chunks of the given sizes (cycled), none smaller than `min`.
fn feed(bytes: &[u8], chunks: &[u16], min: usize) -> Vec<SseData> {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = usize::from(
            chunks
                .get(i % chunks.len().max(1))
                .copied()
                .unwrap_or(u16::MAX),
        )
        .max(min)
        .max(1);
        let end = (pos + n).min(bytes.len());
        out.extend(p.feed(&bytes[pos..end]));
        pos = end;
        i += 1;
    }
    out
}

fn assemble(format: StreamFormat, events: &[SseData]) -> Option<Value> {
    let mut a = StreamAssembler::new(format);
    for e in events {
        a.push(e);
    }
    a.finish()
}

/// Splits an SSE body into its events (each without the blank line that ends it).
fn split_events(body: &[u8]) -> Vec<Vec<u8>> {
    let text = body;
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < text.len() {
        if &text[i..i + 2] == b"\n\n" {
            out.push(text[start..i].to_vec());
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

fn apply_benign(events: &mut Vec<Vec<u8>>, changes: &[Benign]) {
    for c in changes {
        let n = events.len();
        let at = |a: u32| if n == 0 { 0 } else { a as usize % (n + 1) };
        match c {
            Benign::Comment { at: a, text } => {
                let text = text.replace(['\n', '\r'], " ");
                events.insert(at(*a), format!(":{text}").into_bytes());
            }
            Benign::Field { at: a, line } => {
                if n > 0 {
                    let i = *a as usize % n;
                    let mut e = format!("{line}\n").into_bytes();
                    e.extend_from_slice(&events[i]);
                    events[i] = e;
                }
            }
            Benign::Blank { at: a, n: k } => {
                // An empty event is a blank line more in the stream.
                for _ in 0..*k {
                    events.insert(at(*a), Vec::new());
                }
            }
            Benign::Garbage { at: a, data } => {
                events.insert(at(*a), format!("data: {data}").into_bytes());
            }
            Benign::SplitData { at: a } => {
                if n > 0 {
                    let i = *a as usize % n;
                    let e = String::from_utf8_lossy(&events[i]).into_owned();
                    if let Some(p) = e.find("data: {") {
                        let cut = p + "data: {".len();
                        events[i] = format!("{}\ndata: {}", &e[..cut], &e[cut..]).into_bytes();
                    }
                }
            }
            Benign::NoSpace { at: a } => {
                if n > 0 {
                    let i = *a as usize % n;
                    // Only the field prefix: payloads may contain "data: " themselves.
                    let e = String::from_utf8_lossy(&events[i])
                        .split('\n')
                        .map(|l| match l.strip_prefix("data: ") {
                            Some(rest) => format!("data:{rest}"),
                            None => l.to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    events[i] = e.into_bytes();
                }
            }
        }
    }
}

fn join_events(events: &[Vec<u8>], crlf: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(e);
        out.extend_from_slice(b"\n\n");
    }
    if crlf {
        let mut c = Vec::with_capacity(out.len() * 2);
        for b in out {
            if b == b'\n' {
                c.extend_from_slice(b"\r\n");
            } else {
                c.push(b);
            }
        }
        c
    } else {
        out
    }
}

/// What the assembler must produce from the replay of `response`.
fn expected(format: StreamFormat, response: &Value, include_usage: bool) -> Value {
    let mut r = response.clone();
    if matches!(format, StreamFormat::Chat | StreamFormat::Text)
        && !include_usage
        && let Some(o) = r.as_object_mut()
    {
        o.remove("usage");
    }
    r
}

/// Checks the shape of an assembled response.
fn assembled_shape(format: StreamFormat, v: &Value) -> Result<(), String> {
    match format {
        StreamFormat::Chat | StreamFormat::Text => {
            let choices = v
                .get("choices")
                .and_then(Value::as_array)
                .ok_or("assembled completion without choices")?;
            if choices.is_empty() {
                return Err("assembled completion with no choice".to_owned());
            }
            let idx: Vec<Option<u64>> = choices.iter().map(|c| c["index"].as_u64()).collect();
            if idx.iter().any(Option::is_none) || !idx.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!("choice indexes not increasing: {idx:?}"));
            }
            if choices.iter().any(|c| c["finish_reason"].is_null()) {
                return Err("a choice without finish_reason was assembled".to_owned());
            }
        }
        StreamFormat::Responses => {
            if v["status"] != "completed" || !v["output"].is_array() {
                return Err("an incomplete Responses stream was assembled".to_owned());
            }
        }
        StreamFormat::Anthropic => {
            if !v["content"].is_array() {
                return Err("a message without content was assembled".to_owned());
            }
        }
    }
    Ok(())
}

/// The target.
#[derive(Debug)]
pub struct Sse;

impl crate::Target for Sse {
    const NAME: &'static str = "sse";
    const ABOUT: &'static str = "the SSE parser, the four stream assemblers, replay round trips";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        let round_trip = (0u8..4).prop_flat_map(|f| {
            let response = match format(f) {
                StreamFormat::Chat => chat_response(),
                StreamFormat::Text => text_response(),
                StreamFormat::Responses => responses_response(),
                StreamFormat::Anthropic => anthropic_response(),
            };
            (
                Just(f),
                response,
                any::<bool>(),
                vec(benign(), 0..6),
                proptest::bool::weighted(0.2),
                chunks(),
            )
                .prop_map(
                    |(format, response, include_usage, changes, crlf, chunks)| Input::RoundTrip {
                        format,
                        response,
                        include_usage,
                        changes,
                        crlf,
                        chunks,
                    },
                )
        });
        let events = (0u8..4).prop_flat_map(|f| {
            (
                Just(f),
                vec(hostile_event(format(f)), 0..12),
                any::<bool>(),
                chunks(),
            )
                .prop_map(|(format, events, done, chunks)| Input::Events {
                    format,
                    events,
                    done,
                    chunks,
                })
        });
        let raw = (
            prop_oneof![
                2 => strategies::bytes(),
                // A valid stream with byte edits.
                2 => (chat_response(), strategies::mutations(8)).prop_map(|(r, edits)| {
                    let mut b = replay(StreamFormat::Chat, &r, true).to_vec();
                    strategies::apply(&mut b, &edits);
                    b
                }),
                1 => (anthropic_response(), strategies::mutations(8)).prop_map(|(r, edits)| {
                    let mut b = replay(StreamFormat::Anthropic, &r, true).to_vec();
                    strategies::apply(&mut b, &edits);
                    b
                }),
            ],
            chunks(),
        )
            .prop_map(|(bytes, chunks)| Input::Raw {
                bytes: Blob::new(bytes),
                chunks,
            });
        let exact = (proptest::collection::vec(any::<u8>(), 0..2048), 1u16..8).prop_map(
            |(bytes, chunk)| Input::Feed {
                bytes: Blob::new(bytes),
                chunk,
            },
        );
        prop_oneof![
            6 => round_trip,
            4 => events,
            4 => raw,
            1 => exact,
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        match input {
            Input::Raw { bytes, chunks } => {
                let whole = parse(bytes.bytes(), &[u16::MAX]);
                let pieces = parse(bytes.bytes(), chunks);
                if whole != pieces {
                    return Err(format!(
                        "chunking changed the events: {} at once, {} in pieces",
                        whole.len(),
                        pieces.len()
                    ));
                }
                for f in FORMATS {
                    if let Some(v) = assemble(f, &pieces) {
                        assembled_shape(f, &v)?;
                    }
                }
                Ok(())
            }
            Input::Feed { bytes, chunk } => {
                let whole = feed(bytes.bytes(), &[u16::MAX], 0);
                let pieces = feed(bytes.bytes(), &[*chunk], 0);
                if whole != pieces {
                    return Err("chunking changed the events".to_owned());
                }
                Ok(())
            }
            Input::Events {
                format: f,
                events,
                done,
                chunks,
            } => {
                let mut body = Vec::new();
                for e in events {
                    body.extend_from_slice(format!("data: {e}\n\n").as_bytes());
                }
                if *done {
                    body.extend_from_slice(b"data: [DONE]\n\n");
                }
                let parsed = parse(&body, chunks);
                if parsed.len() != events.len() + usize::from(*done) {
                    return Err(format!(
                        "{} events framed, {} parsed",
                        events.len() + usize::from(*done),
                        parsed.len()
                    ));
                }
                let f = format(*f);
                if let Some(v) = assemble(f, &parsed) {
                    assembled_shape(f, &v)?;
                }
                Ok(())
            }
            Input::RoundTrip {
                format: f,
                response,
                include_usage,
                changes,
                crlf,
                chunks,
            } => {
                let f = format(*f);
                let body = replay(f, response, *include_usage);
                let want = expected(f, response, *include_usage);
                // As replayed, at once.
                let clean = assemble(f, &parse(&body, &[u16::MAX]));
                if !clean
                    .as_ref()
                    .is_some_and(|c| strategies::same_json(c, &want))
                {
                    return Err(format!(
                        "replay does not assemble back: got {}, want {}",
                        clean.map_or("nothing".to_owned(), |c| strategies::short(&c)),
                        strategies::short(&want)
                    ));
                }
                if f == StreamFormat::Responses {
                    let seq: Vec<Option<u64>> = parse(&body, &[u16::MAX])
                        .iter()
                        .map(|e| match e {
                            SseData::Json(v) => v["sequence_number"].as_u64(),
                            _ => None,
                        })
                        .collect();
                    if seq.iter().enumerate().any(|(i, s)| *s != Some(i as u64)) {
                        return Err("sequence numbers are not 0, 1, 2, ...".to_owned());
                    }
                }
                // Harmlessly changed, in chunks.
                let mut events = split_events(&body);
                apply_benign(&mut events, changes);
                let changed = join_events(&events, *crlf);
                let got = assemble(f, &parse(&changed, chunks));
                if !got
                    .as_ref()
                    .is_some_and(|c| strategies::same_json(c, &want))
                {
                    return Err(format!(
                        "a harmless change broke the stream: got {}, want {}",
                        got.map_or("nothing".to_owned(), |c| strategies::short(&c)),
                        strategies::short(&want)
                    ));
                }
                Ok(())
            }
        }
    }
}
