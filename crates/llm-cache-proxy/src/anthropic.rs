//! Anthropic's Messages API stream (`POST /v1/messages` with `stream: true`): assembling the
//! events into the message to store, and replaying a stored message as events.
//!
//! Events: `message_start` (the message with empty content), per content block
//! `content_block_start`, `content_block_delta` (`text_delta`, `input_json_delta`,
//! `thinking_delta`, `signature_delta`, `citations_delta`), `content_block_stop`, then
//! `message_delta` (stop reason, output tokens) and `message_stop`; `ping` may come anywhere and
//! `error` ends a failed stream. A stream is stored only when it reached `message_stop` without
//! an `error`; the assembled message is the same object a non-streaming request returns, so
//! streams and JSON share entries both ways.

use std::collections::BTreeMap;
use std::io::Write as _;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::sse::{SseData, word_pieces};

#[derive(Debug, Default)]
struct Block {
    start: Map<String, Value>,
    text: Option<String>,
    thinking: Option<String>,
    signature: Option<String>,
    partial_json: Option<String>,
    citations: Vec<Value>,
}

/// Collects a Messages stream into the complete message.
#[derive(Debug, Default)]
pub struct Assembler {
    message: Option<Map<String, Value>>,
    blocks: BTreeMap<u64, Block>,
    stopped: bool,
    failed: bool,
}

impl Assembler {
    /// Feeds one event.
    pub fn push(&mut self, event: &SseData) {
        let SseData::Json(v) = event else {
            return;
        };
        let index = v.get("index").and_then(Value::as_u64);
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                self.message = v.get("message").and_then(Value::as_object).cloned();
            }
            Some("content_block_start") => {
                if let (Some(i), Some(b)) =
                    (index, v.get("content_block").and_then(Value::as_object))
                {
                    let block = self.blocks.entry(i).or_default();
                    block.start = b.clone();
                }
            }
            Some("content_block_delta") => {
                let (Some(i), Some(d)) = (index, v.get("delta")) else {
                    return;
                };
                let block = self.blocks.entry(i).or_default();
                let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => block.text.get_or_insert_default().push_str(&s("text")),
                    Some("thinking_delta") => {
                        block
                            .thinking
                            .get_or_insert_default()
                            .push_str(&s("thinking"));
                    }
                    Some("signature_delta") => {
                        block
                            .signature
                            .get_or_insert_default()
                            .push_str(&s("signature"));
                    }
                    Some("input_json_delta") => {
                        block
                            .partial_json
                            .get_or_insert_default()
                            .push_str(&s("partial_json"));
                    }
                    Some("citations_delta") => {
                        if let Some(c) = d.get("citation") {
                            block.citations.push(c.clone());
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(m) = self.message.as_mut() {
                    if let Some(delta) = v.get("delta").and_then(Value::as_object) {
                        for (k, val) in delta {
                            m.insert(k.clone(), val.clone());
                        }
                    }
                    if let Some(usage) = v.get("usage").and_then(Value::as_object) {
                        let u = m
                            .entry("usage")
                            .or_insert_with(|| json!({}))
                            .as_object_mut();
                        if let Some(u) = u {
                            for (k, val) in usage {
                                u.insert(k.clone(), val.clone());
                            }
                        }
                    }
                }
            }
            Some("message_stop") => self.stopped = true,
            Some("error") => self.failed = true,
            _ => {}
        }
    }

    /// The complete message, if the stream ended cleanly.
    pub fn finish(self) -> Option<Value> {
        if self.failed || !self.stopped {
            return None;
        }
        let mut message = self.message?;
        let mut content = Vec::with_capacity(self.blocks.len());
        for (_, b) in self.blocks {
            let mut block = b.start;
            if let Some(t) = b.text {
                block.insert("text".to_owned(), json!(t));
            }
            if let Some(t) = b.thinking {
                block.insert("thinking".to_owned(), json!(t));
            }
            if let Some(s) = b.signature {
                block.insert("signature".to_owned(), json!(s));
            }
            if let Some(p) = b.partial_json {
                // A tool's input arrives as JSON text in pieces; an unparsable one is no answer.
                let input = if p.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&p).ok()?
                };
                block.insert("input".to_owned(), input);
            }
            if !b.citations.is_empty() {
                block.insert("citations".to_owned(), Value::Array(b.citations));
            }
            content.push(Value::Object(block));
        }
        message.insert("content".to_owned(), Value::Array(content));
        Some(Value::Object(message))
    }
}

fn event(out: &mut Vec<u8>, kind: &str, mut data: Value) {
    if let Some(o) = data.as_object_mut() {
        o.insert("type".to_owned(), json!(kind));
    }
    let _ = write!(out, "event: {kind}\ndata: {data}\n\n");
}

/// Replays a stored message as a Messages event stream.
pub fn replay(stored: &Value) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    let mut start = stored.clone();
    if let Some(o) = start.as_object_mut() {
        o.insert("content".to_owned(), json!([]));
        o.insert("stop_reason".to_owned(), Value::Null);
        o.insert("stop_sequence".to_owned(), Value::Null);
        if let Some(u) = o.get_mut("usage").and_then(Value::as_object_mut) {
            u.insert("output_tokens".to_owned(), json!(0));
        }
    }
    event(&mut out, "message_start", json!({"message": start}));
    let blocks = stored
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (index, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        let mut first = block.clone();
        let delta = |out: &mut Vec<u8>, d: Value| {
            event(
                out,
                "content_block_delta",
                json!({"index": index, "delta": d}),
            );
        };
        match kind {
            "text" => {
                first["text"] = json!("");
                if let Some(o) = first.as_object_mut() {
                    o.remove("citations");
                }
                event(
                    &mut out,
                    "content_block_start",
                    json!({"index": index, "content_block": first}),
                );
                if let Some(citations) = block.get("citations").and_then(Value::as_array) {
                    for c in citations {
                        delta(&mut out, json!({"type": "citations_delta", "citation": c}));
                    }
                }
                let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                for piece in word_pieces(text) {
                    delta(&mut out, json!({"type": "text_delta", "text": piece}));
                }
            }
            "tool_use" | "server_tool_use" => {
                first["input"] = json!({});
                event(
                    &mut out,
                    "content_block_start",
                    json!({"index": index, "content_block": first}),
                );
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                delta(
                    &mut out,
                    json!({"type": "input_json_delta", "partial_json": input.to_string()}),
                );
            }
            "thinking" => {
                first["thinking"] = json!("");
                first["signature"] = json!("");
                event(
                    &mut out,
                    "content_block_start",
                    json!({"index": index, "content_block": first}),
                );
                let thinking = block.get("thinking").and_then(Value::as_str).unwrap_or("");
                for piece in word_pieces(thinking) {
                    delta(
                        &mut out,
                        json!({"type": "thinking_delta", "thinking": piece}),
                    );
                }
                if let Some(sig) = block.get("signature").and_then(Value::as_str) {
                    delta(
                        &mut out,
                        json!({"type": "signature_delta", "signature": sig}),
                    );
                }
            }
            _ => {
                // Blocks without deltas (redacted thinking, tool results): whole at the start.
                event(
                    &mut out,
                    "content_block_start",
                    json!({"index": index, "content_block": block}),
                );
            }
        }
        event(&mut out, "content_block_stop", json!({"index": index}));
    }
    let mut delta = json!({
        "stop_reason": stored.get("stop_reason").cloned().unwrap_or(Value::Null),
        "stop_sequence": stored.get("stop_sequence").cloned().unwrap_or(Value::Null),
    });
    if let Some(container) = stored.get("container") {
        delta["container"] = container.clone();
    }
    let usage = stored.get("usage").cloned().unwrap_or_else(|| json!({}));
    event(
        &mut out,
        "message_delta",
        json!({"delta": delta, "usage": usage}),
    );
    event(&mut out, "message_stop", json!({}));
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn stored() -> Value {
        json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
                {"type": "text", "text": "The answer is 42."},
                {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"x": [1, 2]}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 30, "cache_read_input_tokens": 0}
        })
    }

    #[test]
    fn a_replay_assembles_back_to_the_stored_message() {
        let bytes = replay(&stored());
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with("event: message_start\ndata: {"));
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        for line in text.lines().filter(|l| l.starts_with("event: ")) {
            let kind = &line["event: ".len()..];
            assert!(text.contains(&format!("\"type\":\"{kind}\"")), "{kind}");
        }
        let mut a = Assembler::default();
        for e in SseParser::default().feed(&bytes) {
            a.push(&e);
        }
        assert_eq!(a.finish().unwrap(), stored());
    }

    #[test]
    fn errors_and_cut_streams_are_not_stored() {
        let bytes = replay(&stored());
        let events = SseParser::default().feed(&bytes);
        let mut a = Assembler::default();
        for e in &events[..events.len() - 1] {
            a.push(e);
        }
        assert!(a.finish().is_none(), "no message_stop");
        let mut a = Assembler::default();
        for e in &events {
            a.push(e);
        }
        a.push(&SseData::Json(
            json!({"type": "error", "error": {"type": "overloaded_error"}}),
        ));
        assert!(a.finish().is_none());
    }
}
