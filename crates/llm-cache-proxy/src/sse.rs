//! Server-sent events: parse an upstream stream, assemble the complete response to store, and
//! replay a stored response as a stream.
//!
//! A stream is stored only when it ended cleanly (`data: [DONE]`, no `error` event, every choice
//! finished). A stored response is replayed as `chat.completion.chunk` (or `text_completion`)
//! events: reasoning first, then the content in word-sized pieces (`\s*\S+\s*`, lossless),
//! tool calls, the finish chunk, a usage chunk when the request asked for
//! `stream_options.include_usage`, then `[DONE]` — the same shape LiteLLM replays (reference
//! §5.2), so a non-streaming request can hit an entry stored from a stream and the other way round.

use std::collections::BTreeMap;
use std::io::Write as _;

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// Splits an SSE byte stream into events and collects their `data:` payloads.
///
/// Linear in the bytes fed, however they are chunked: the search for an event's end resumes where
/// the last one stopped, and consumed events are dropped from the buffer once per `feed`.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for an event end without finding one (minus the few a
    /// separator split across chunks may still need).
    scanned: usize,
}

/// One parsed event payload.
#[derive(Debug, PartialEq)]
pub enum SseData {
    /// `data: [DONE]`.
    Done,
    /// A JSON payload.
    Json(Value),
    /// A payload that is not JSON.
    Other,
}

impl SseParser {
    /// Feeds bytes; returns the payloads of every complete event.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseData> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let from = self.scanned.max(start);
            match find_event_end(&self.buf, from) {
                Some((end, sep)) => {
                    parse_event(&self.buf[start..end], &mut out);
                    start = end + sep;
                    self.scanned = start;
                }
                None => {
                    // A separator is at most 4 bytes: 3 may already be here.
                    self.scanned = self.buf.len().saturating_sub(3).max(start);
                    break;
                }
            }
        }
        self.buf.drain(..start);
        self.scanned -= start;
        out
    }
}

fn parse_event(event: &[u8], out: &mut Vec<SseData>) {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    if data.is_empty() {
        return;
    }
    if data == b"[DONE]" {
        out.push(SseData::Done);
    } else {
        out.push(
            serde_json::from_slice(&data)
                .map(SseData::Json)
                .unwrap_or(SseData::Other),
        );
    }
}

/// The first event end (`\n\n` or `\r\n\r\n`) starting at or after `from`: its position and
/// length. One pass over the newlines from `from`.
fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|b| *b == b'\n') {
        let p = i + off;
        // `\r\n\r\n` starting just before this newline comes first, then `\n\n` starting at it.
        if p > from && buf[p - 1] == b'\r' && buf.get(p + 1..p + 3) == Some(b"\r\n") {
            return Some((p - 1, 4));
        }
        if buf.get(p + 1) == Some(&b'\n') {
            return Some((p, 2));
        }
        i = p + 1;
    }
    None
}

#[derive(Debug, Default)]
struct ToolAcc {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
struct ChoiceAcc {
    role: Option<String>,
    content: Option<String>,
    text: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u64, ToolAcc>,
    function_call: Option<(String, String)>,
    finish_reason: Option<Value>,
    logprobs: Vec<Value>,
}

fn append(slot: &mut Option<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        slot.get_or_insert_with(String::new).push_str(s);
    }
}

/// Assembles chunks of a chat or text completion stream into the complete response.
#[derive(Debug, Default)]
pub struct Assembler {
    head: Map<String, Value>,
    choices: BTreeMap<u64, ChoiceAcc>,
    usage: Option<Value>,
    done: bool,
    error: bool,
    text_completion: bool,
}

impl Assembler {
    /// For a chat (`chat.completion.chunk`) or text completion (`text_completion`) stream.
    pub fn new(text_completion: bool) -> Self {
        Assembler {
            text_completion,
            ..Default::default()
        }
    }

    /// Feeds one event payload.
    pub fn push(&mut self, data: &SseData) {
        let chunk = match data {
            SseData::Done => {
                self.done = true;
                return;
            }
            SseData::Other => return,
            SseData::Json(v) => v,
        };
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            self.error = true;
            return;
        }
        for k in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(v) = chunk.get(k).filter(|v| !v.is_null()) {
                self.head.entry(k.to_owned()).or_insert_with(|| v.clone());
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for (pos, c) in choices.iter().enumerate() {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            let acc = self.choices.entry(idx).or_default();
            if let Some(fr) = c.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish_reason = Some(fr.clone());
            }
            if let Some(lp) = c
                .get("logprobs")
                .and_then(|l| l.get("content"))
                .and_then(Value::as_array)
            {
                acc.logprobs.extend(lp.iter().cloned());
            }
            append(&mut acc.text, c.get("text"));
            let Some(delta) = c.get("delta") else {
                continue;
            };
            if let Some(r) = delta.get("role").and_then(Value::as_str) {
                acc.role = Some(r.to_owned());
            }
            append(&mut acc.content, delta.get("content"));
            append(&mut acc.reasoning_content, delta.get("reasoning_content"));
            append(&mut acc.reasoning, delta.get("reasoning"));
            append(&mut acc.refusal, delta.get("refusal"));
            if let Some(fc) = delta.get("function_call") {
                let (name, args) = acc.function_call.get_or_insert_with(Default::default);
                if let Some(n) = fc.get("name").and_then(Value::as_str) {
                    name.push_str(n);
                }
                if let Some(a) = fc.get("arguments").and_then(Value::as_str) {
                    args.push_str(a);
                }
            }
            if let Some(tcs) = delta.get("tool_calls").and_then(Value::as_array) {
                for (tpos, tc) in tcs.iter().enumerate() {
                    let tidx = tc
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(tpos as u64);
                    let t = acc.tool_calls.entry(tidx).or_default();
                    if let Some(id) = tc.get("id").filter(|v| !v.is_null()) {
                        t.id = Some(id.clone());
                    }
                    if let Some(k) = tc.get("type").filter(|v| !v.is_null()) {
                        t.kind = Some(k.clone());
                    }
                    if let Some(f) = tc.get("function") {
                        if let Some(n) = f.get("name").and_then(Value::as_str) {
                            t.name.push_str(n);
                        }
                        if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                            t.arguments.push_str(a);
                        }
                    }
                }
            }
        }
    }

    /// The complete response, if the stream ended cleanly.
    pub fn finish(self) -> Option<Value> {
        if !self.done || self.error || self.choices.is_empty() {
            return None;
        }
        if self.choices.values().any(|c| c.finish_reason.is_none()) {
            return None;
        }
        let mut out = self.head;
        out.insert(
            "object".to_owned(),
            Value::String(
                if self.text_completion {
                    "text_completion"
                } else {
                    "chat.completion"
                }
                .to_owned(),
            ),
        );
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| {
                let logprobs = if c.logprobs.is_empty() {
                    Value::Null
                } else {
                    json!({"content": c.logprobs})
                };
                if self.text_completion {
                    return json!({
                        "index": index,
                        "text": c.text.unwrap_or_default(),
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                    });
                }
                let mut m = Map::new();
                m.insert("role".to_owned(), Value::String(c.role.unwrap_or_else(|| "assistant".to_owned())));
                m.insert("content".to_owned(), c.content.map_or(Value::Null, Value::String));
                if let Some(r) = c.reasoning_content {
                    m.insert("reasoning_content".to_owned(), Value::String(r));
                }
                if let Some(r) = c.reasoning {
                    m.insert("reasoning".to_owned(), Value::String(r));
                }
                if let Some(r) = c.refusal {
                    m.insert("refusal".to_owned(), Value::String(r));
                }
                if let Some((name, arguments)) = c.function_call {
                    m.insert("function_call".to_owned(), json!({"name": name, "arguments": arguments}));
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .into_values()
                        .map(|t| {
                            json!({
                                "id": t.id.unwrap_or(Value::Null),
                                "type": t.kind.unwrap_or_else(|| Value::String("function".to_owned())),
                                "function": {"name": t.name, "arguments": t.arguments},
                            })
                        })
                        .collect();
                    m.insert("tool_calls".to_owned(), Value::Array(calls));
                }
                json!({"index": index, "message": m, "logprobs": logprobs, "finish_reason": c.finish_reason})
            })
            .collect();
        out.insert("choices".to_owned(), Value::Array(choices));
        if let Some(u) = self.usage {
            out.insert("usage".to_owned(), u);
        }
        Some(Value::Object(out))
    }
}

/// Splits text into word-sized pieces whose concatenation is the text (LiteLLM's `\s*\S+\s*`).
pub fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut seen_word = false;
    let mut in_trailing_space = false;
    for (i, ch) in text.char_indices() {
        if ch.is_whitespace() {
            if seen_word {
                in_trailing_space = true;
            }
        } else if in_trailing_space {
            pieces.push(&text[start..i]);
            start = i;
            in_trailing_space = false;
        } else {
            seen_word = true;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Per-event bytes a replay repeats (ids, model) up to which text is replayed word by word.
const FREE_EVENT_OVERHEAD: usize = 256;

/// The pieces a replay sends `text` in: word pieces, as LiteLLM does, unless each event repeats
/// more than [`FREE_EVENT_OVERHEAD`] bytes (a stored response with a huge `id` or `model`):
/// then consecutive pieces are joined until each is at least that overhead long, so a replay
/// stays within about twice the stored text plus its events' fixed parts, never the text's
/// word count times the overhead.
pub fn replay_pieces(text: &str, overhead: usize) -> Vec<&str> {
    let words = word_pieces(text);
    if overhead <= FREE_EVENT_OVERHEAD {
        return words;
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for w in words {
        end += w.len();
        if end - start >= overhead {
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    if start < end {
        pieces.push(&text[start..end]);
    }
    pieces
}

struct ChunkWriter {
    out: Vec<u8>,
    prefix: Vec<u8>,
    usage_null: bool,
}

impl ChunkWriter {
    fn new(stored: &Value, object: &str, include_usage: bool) -> Self {
        let mut prefix = Vec::with_capacity(160);
        prefix.extend_from_slice(b"{");
        for k in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(v) = stored.get(k).filter(|v| !v.is_null()) {
                let _ = write!(prefix, "\"{k}\":");
                let _ = serde_json::to_writer(&mut prefix, v);
                prefix.push(b',');
            }
        }
        let _ = write!(prefix, "\"object\":\"{object}\",");
        ChunkWriter {
            out: Vec::with_capacity(4096),
            prefix,
            usage_null: include_usage,
        }
    }

    fn event(&mut self, choices: &[u8]) {
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(&self.prefix);
        self.out.extend_from_slice(b"\"choices\":");
        self.out.extend_from_slice(choices);
        if self.usage_null {
            self.out.extend_from_slice(b",\"usage\":null");
        }
        self.out.extend_from_slice(b"}\n\n");
    }

    fn usage(&mut self, usage: &Value) {
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(&self.prefix);
        self.out.extend_from_slice(b"\"choices\":[],\"usage\":");
        let _ = serde_json::to_writer(&mut self.out, usage);
        self.out.extend_from_slice(b"}\n\n");
    }

    fn done(mut self) -> Bytes {
        self.out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(self.out)
    }
}

fn chat_delta(index: u64, delta: &Value, finish: &Value, logprobs: &Value) -> Vec<u8> {
    let mut c = Vec::with_capacity(96);
    let _ = write!(c, "[{{\"index\":{index},\"delta\":");
    let _ = serde_json::to_writer(&mut c, delta);
    c.extend_from_slice(b",\"logprobs\":");
    let _ = serde_json::to_writer(&mut c, logprobs);
    c.extend_from_slice(b",\"finish_reason\":");
    let _ = serde_json::to_writer(&mut c, finish);
    c.extend_from_slice(b"}]");
    c
}

/// Replays a stored chat completion as an SSE body.
pub fn replay_chat(stored: &Value, include_usage: bool) -> Bytes {
    let mut w = ChunkWriter::new(stored, "chat.completion.chunk", include_usage);
    let empty = Vec::new();
    let choices = stored
        .get("choices")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (pos, choice) in choices.iter().enumerate() {
        let index = choice
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let msg = choice.get("message").cloned().unwrap_or(Value::Null);
        let role = msg
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("assistant");
        let mut first = true;
        let delta = |mut d: Map<String, Value>, first: &mut bool| {
            if *first {
                d.insert("role".to_owned(), Value::String(role.to_owned()));
                *first = false;
            }
            Value::Object(d)
        };
        let null = Value::Null;
        for field in ["reasoning_content", "reasoning"] {
            if let Some(text) = msg.get(field).and_then(Value::as_str) {
                for piece in replay_pieces(text, w.prefix.len()) {
                    let d = delta(
                        Map::from_iter([(field.to_owned(), Value::String(piece.to_owned()))]),
                        &mut first,
                    );
                    w.event(&chat_delta(index, &d, &null, &null));
                }
            }
        }
        if let Some(blocks) = msg.get("thinking_blocks").filter(|b| !b.is_null()) {
            let d = delta(
                Map::from_iter([("thinking_blocks".to_owned(), blocks.clone())]),
                &mut first,
            );
            w.event(&chat_delta(index, &d, &null, &null));
        }
        if let Some(text) = msg.get("content").and_then(Value::as_str) {
            for piece in replay_pieces(text, w.prefix.len()) {
                let d = delta(
                    Map::from_iter([("content".to_owned(), Value::String(piece.to_owned()))]),
                    &mut first,
                );
                w.event(&chat_delta(index, &d, &null, &null));
            }
        }
        if let Some(refusal) = msg.get("refusal").filter(|r| !r.is_null()) {
            let d = delta(
                Map::from_iter([("refusal".to_owned(), refusal.clone())]),
                &mut first,
            );
            w.event(&chat_delta(index, &d, &null, &null));
        }
        if let Some(fc) = msg.get("function_call").filter(|r| !r.is_null()) {
            let d = delta(
                Map::from_iter([("function_call".to_owned(), fc.clone())]),
                &mut first,
            );
            w.event(&chat_delta(index, &d, &null, &null));
        }
        if let Some(calls) = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut c = c.as_object().cloned().unwrap_or_default();
                    c.insert("index".to_owned(), json!(i));
                    Value::Object(c)
                })
                .collect();
            let d = delta(
                Map::from_iter([("tool_calls".to_owned(), Value::Array(calls))]),
                &mut first,
            );
            w.event(&chat_delta(index, &d, &null, &null));
        }
        for extra in ["audio", "annotations", "images"] {
            if let Some(v) = msg.get(extra).filter(|v| !v.is_null()) {
                let d = delta(Map::from_iter([(extra.to_owned(), v.clone())]), &mut first);
                w.event(&chat_delta(index, &d, &null, &null));
            }
        }
        let d = delta(Map::new(), &mut first);
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        w.event(&chat_delta(index, &d, &finish, &logprobs));
    }
    if include_usage && let Some(u) = stored.get("usage").filter(|u| !u.is_null()) {
        w.usage(u);
    }
    w.done()
}

/// Replays a stored text completion as an SSE body.
pub fn replay_text(stored: &Value, include_usage: bool) -> Bytes {
    let mut w = ChunkWriter::new(stored, "text_completion", include_usage);
    let empty = Vec::new();
    let choices = stored
        .get("choices")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (pos, choice) in choices.iter().enumerate() {
        let index = choice
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let piece = |text: &str, finish: &Value| {
            let mut c = Vec::with_capacity(96);
            c.extend_from_slice(b"[{\"text\":");
            let _ = serde_json::to_writer(&mut c, text);
            let _ = write!(c, ",\"index\":{index},\"logprobs\":null,\"finish_reason\":");
            let _ = serde_json::to_writer(&mut c, finish);
            c.extend_from_slice(b"}]");
            c
        };
        if let Some(text) = choice.get("text").and_then(Value::as_str) {
            for p in replay_pieces(text, w.prefix.len()) {
                w.event(&piece(p, &Value::Null));
            }
        }
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        w.event(&piece("", &finish));
    }
    if include_usage && let Some(u) = stored.get("usage").filter(|u| !u.is_null()) {
        w.usage(u);
    }
    w.done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_pieces_match_litellm_and_are_lossless() {
        assert_eq!(
            word_pieces("Hello there, general Kenobi!"),
            vec!["Hello ", "there, ", "general ", "Kenobi!"]
        );
        for s in ["", "   ", "  lead", "trail  ", "a\n\nb\tc ", "é ✓ 😀 x"] {
            assert_eq!(word_pieces(s).concat(), s, "{s:?}");
        }
    }

    #[test]
    fn parser_handles_split_events_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: {\"a\"").is_empty());
        let got = p.feed(b":1}\n\ndata: [DONE]\r\n\r\n");
        assert_eq!(got, vec![SseData::Json(json!({"a": 1})), SseData::Done]);
        assert_eq!(p.feed(b": comment\n\n"), vec![]);
    }

    #[test]
    fn parser_is_independent_of_chunking() {
        // Every split point of every chunk size, across both separators and mixed line ends.
        let stream: &[u8] = b"data: {\"a\":1}\n\n\r\n\r\ndata: {\"b\":\ndata: 2}\r\n\r\n: c\n\n\
            data: x\r\n\n\ndata: [DONE]\n\ndata: {\"t\":3}";
        let whole = SseParser::default().feed(stream);
        assert_eq!(whole.len(), 4, "{whole:?}");
        for size in 1..stream.len() {
            let mut p = SseParser::default();
            let got: Vec<SseData> = stream.chunks(size).flat_map(|c| p.feed(c)).collect();
            assert_eq!(got, whole, "chunks of {size}");
            assert_eq!(p.feed(b"\n\n"), vec![SseData::Json(json!({"t": 3}))]);
        }
    }

    fn stream_of(chunks: &[Value], done: bool) -> Vec<SseData> {
        let mut body = Vec::new();
        for c in chunks {
            body.extend_from_slice(format!("data: {c}\n\n").as_bytes());
        }
        if done {
            body.extend_from_slice(b"data: [DONE]\n\n");
        }
        SseParser::default().feed(&body)
    }

    #[test]
    fn assembles_content_tools_reasoning_and_usage() {
        let head =
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m"});
        let mk = |choices: Value| {
            let mut c = head.clone();
            c["choices"] = choices;
            c
        };
        let chunks = vec![
            mk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}])),
            mk(json!([{"index": 0, "delta": {"reasoning_content": "think "}}])),
            mk(json!([{"index": 0, "delta": {"content": "Hello "}}])),
            mk(json!([{"index": 0, "delta": {"content": "world"}}])),
            mk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}}]),
            ),
            mk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]),
            ),
            mk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
            {
                let mut u = mk(json!([]));
                u["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7});
                u
            },
        ];
        let mut a = Assembler::new(false);
        for d in stream_of(&chunks, true) {
            a.push(&d);
        }
        let full = a.finish().unwrap();
        assert_eq!(full["object"], "chat.completion");
        assert_eq!(full["id"], "c1");
        let m = &full["choices"][0]["message"];
        assert_eq!(m["content"], "Hello world");
        assert_eq!(m["reasoning_content"], "think ");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(m["tool_calls"][0]["id"], "t1");
        assert_eq!(full["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(full["usage"]["total_tokens"], 7);

        // Replaying and re-assembling gives the same message.
        let replay = replay_chat(&full, true);
        let mut b = Assembler::new(false);
        for d in SseParser::default().feed(&replay) {
            b.push(&d);
        }
        let again = b.finish().unwrap();
        assert_eq!(again["choices"], full["choices"]);
        assert_eq!(again["usage"], full["usage"]);
        assert_eq!(again["id"], full["id"]);
    }

    #[test]
    fn incomplete_or_failed_streams_are_not_assembled() {
        let c = json!({"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]});
        let mut a = Assembler::new(false);
        for d in stream_of(std::slice::from_ref(&c), true) {
            a.push(&d);
        }
        assert!(a.finish().is_none(), "no finish_reason");
        let f = json!({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let mut a = Assembler::new(false);
        for d in stream_of(&[c.clone(), f.clone()], false) {
            a.push(&d);
        }
        assert!(a.finish().is_none(), "no [DONE]");
        let e = json!({"error": {"message": "overloaded"}});
        let mut a = Assembler::new(false);
        for d in stream_of(&[c, e, f], true) {
            a.push(&d);
        }
        assert!(a.finish().is_none(), "error event");
    }

    #[test]
    fn replay_shape() {
        let stored = json!({"id": "c", "created": 1, "model": "m", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, general Kenobi!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let body = replay_chat(&stored, false);
        let events = SseParser::default().feed(&body);
        assert_eq!(events.len(), 6, "4 pieces + finish + DONE");
        let SseData::Json(first) = &events[0] else {
            panic!()
        };
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"content": "Hello ", "role": "assistant"})
        );
        assert!(first.get("usage").is_none());
        let SseData::Json(fin) = &events[4] else {
            panic!()
        };
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        assert_eq!(events[5], SseData::Done);
        let with_usage = SseParser::default().feed(&replay_chat(&stored, true));
        let SseData::Json(u) = &with_usage[5] else {
            panic!()
        };
        assert_eq!(u["usage"]["total_tokens"], 3);
        assert_eq!(u["choices"], json!([]));
    }

    #[test]
    fn text_completion_round_trip() {
        let stored = json!({"id": "t", "created": 1, "model": "m", "object": "text_completion",
            "choices": [{"index": 0, "text": "one two three", "logprobs": null, "finish_reason": "length"}]});
        let mut a = Assembler::new(true);
        for d in SseParser::default().feed(&replay_text(&stored, false)) {
            a.push(&d);
        }
        let again = a.finish().unwrap();
        assert_eq!(again["choices"][0]["text"], "one two three");
        assert_eq!(again["choices"][0]["finish_reason"], "length");
        assert_eq!(again["object"], "text_completion");
    }

    #[test]
    fn a_huge_id_does_not_multiply_the_replay() {
        // Every chunk repeats `id`: 20,000 words under a 100 KB id would replay as 2 GB.
        let text = "word ".repeat(20_000);
        let id = "i".repeat(100_000);
        let stored = json!({"id": id, "created": 1, "model": "m", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
        let body = replay_chat(&stored, false);
        assert!(
            body.len() < 6 * (text.len() + id.len()),
            "{} bytes",
            body.len()
        );
        let mut a = Assembler::new(false);
        for d in SseParser::default().feed(&body) {
            a.push(&d);
        }
        let again = a.finish().unwrap();
        assert_eq!(again["choices"][0]["message"]["content"], text.as_str());
        // A usual id keeps LiteLLM's word-by-word shape.
        assert_eq!(replay_pieces("a b c", 40), vec!["a ", "b ", "c"]);
        assert_eq!(replay_pieces("a b c", 1000), vec!["a b c"]);
    }
}
