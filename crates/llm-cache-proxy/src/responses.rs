//! The OpenAI Responses API stream (`POST /v1/responses` with `stream: true`): assembling the
//! events into the response object to store, and replaying a stored response as events.
//!
//! A stream is stored only when it ends with `response.completed` (not `response.failed`,
//! `response.incomplete` or `error`): the `response` of that event is the same object a
//! non-streaming request returns, so streams and JSON share entries both ways. A replay emits
//! the event sequence OpenAI sends, with the stored ids: `response.created`,
//! `response.in_progress`, then per output item `response.output_item.added`, for messages
//! `response.content_part.added`, `response.output_text.delta` (word-sized pieces),
//! `response.output_text.done`, `response.content_part.done`, for function calls
//! `response.function_call_arguments.delta`/`.done`, then `response.output_item.done`, and
//! finally `response.completed`. Every event carries a `sequence_number`.

use std::io::Write as _;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::sse::{SseData, replay_pieces};

/// Collects a Responses stream; the stored value is the `response` of `response.completed`.
#[derive(Debug, Default)]
pub struct Assembler {
    completed: Option<Value>,
    failed: bool,
}

impl Assembler {
    /// Feeds one event.
    pub fn push(&mut self, event: &SseData) {
        let SseData::Json(v) = event else {
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("response.completed") => self.completed = v.get("response").cloned(),
            Some("response.failed" | "response.incomplete" | "error") => self.failed = true,
            _ => {}
        }
    }

    /// The complete response, if the stream completed cleanly.
    pub fn finish(self) -> Option<Value> {
        if self.failed {
            return None;
        }
        self.completed.filter(|r| {
            r.get("status").and_then(Value::as_str) == Some("completed")
                && r.get("output").is_some_and(Value::is_array)
        })
    }
}

struct Writer {
    out: Vec<u8>,
    seq: u64,
}

impl Writer {
    fn event(&mut self, kind: &str, mut data: Value) {
        if let Some(o) = data.as_object_mut() {
            o.insert("type".to_owned(), json!(kind));
            o.insert("sequence_number".to_owned(), json!(self.seq));
        }
        self.seq += 1;
        let _ = write!(self.out, "event: {kind}\ndata: {data}\n\n");
    }
}

/// Replays a stored response object as a Responses event stream.
pub fn replay(stored: &Value) -> Bytes {
    let mut w = Writer {
        out: Vec::with_capacity(1024),
        seq: 0,
    };
    let mut started = stored.clone();
    if let Some(o) = started.as_object_mut() {
        o.insert("status".to_owned(), json!("in_progress"));
        o.insert("output".to_owned(), json!([]));
        o.insert("usage".to_owned(), Value::Null);
    }
    w.event("response.created", json!({"response": started}));
    w.event("response.in_progress", json!({"response": started}));
    let items = stored
        .get("output")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (output_index, item) in items.iter().enumerate() {
        let item_id = item.get("id").cloned().unwrap_or(Value::Null);
        // Every delta repeats the item's id.
        let overhead = item_id.to_string().len();
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let mut added = item.clone();
                added["status"] = json!("in_progress");
                added["content"] = json!([]);
                w.event(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": added}),
                );
                let parts = item
                    .get("content")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (content_index, part) in parts.iter().enumerate() {
                    let ids = json!({"item_id": item_id, "output_index": output_index, "content_index": content_index});
                    let with = |mut base: Value, extra: Value| {
                        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
                            b.extend(e.clone());
                        }
                        base
                    };
                    match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => {
                            let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                            let mut empty = part.clone();
                            empty["text"] = json!("");
                            if empty.get("annotations").is_some() {
                                empty["annotations"] = json!([]);
                            }
                            w.event(
                                "response.content_part.added",
                                with(ids.clone(), json!({"part": empty})),
                            );
                            for piece in replay_pieces(text, overhead) {
                                w.event(
                                    "response.output_text.delta",
                                    with(ids.clone(), json!({"delta": piece, "logprobs": []})),
                                );
                            }
                            w.event(
                                "response.output_text.done",
                                with(ids.clone(), json!({"text": text, "logprobs": []})),
                            );
                        }
                        _ => {
                            w.event(
                                "response.content_part.added",
                                with(ids.clone(), json!({"part": part})),
                            );
                        }
                    }
                    w.event(
                        "response.content_part.done",
                        with(ids, json!({"part": part})),
                    );
                }
            }
            Some("function_call") => {
                let mut added = item.clone();
                added["status"] = json!("in_progress");
                added["arguments"] = json!("");
                w.event(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": added}),
                );
                let args = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                w.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": output_index, "delta": args}),
                );
                w.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": output_index, "arguments": args}),
                );
            }
            _ => {
                w.event(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                );
            }
        }
        w.event(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
    }
    w.event("response.completed", json!({"response": stored}));
    Bytes::from(w.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;

    fn stored() -> Value {
        json!({
            "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
            "model": "gpt-4o",
            "output": [
                {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Hello there, friend.", "annotations": []}]},
                {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
                 "name": "lookup", "arguments": "{\"q\":\"x\"}"}
            ],
            "usage": {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9}
        })
    }

    #[test]
    fn a_replay_assembles_back_to_the_stored_response() {
        let bytes = replay(&stored());
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with("event: response.created\n"));
        let events = SseParser::default().feed(&bytes);
        let mut a = Assembler::default();
        let mut deltas = String::new();
        let mut seq = Vec::new();
        for e in &events {
            a.push(e);
            if let SseData::Json(v) = e {
                seq.push(v["sequence_number"].as_u64().unwrap());
                if v["type"] == "response.output_text.delta" {
                    assert_eq!(v["item_id"], "msg_1");
                    deltas.push_str(v["delta"].as_str().unwrap());
                }
            }
        }
        assert_eq!(deltas, "Hello there, friend.");
        assert!(seq.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(a.finish().unwrap(), stored());
    }

    #[test]
    fn failed_or_unfinished_streams_are_not_stored() {
        let mut a = Assembler::default();
        a.push(&SseData::Json(
            json!({"type": "response.created", "response": {}}),
        ));
        assert!(a.finish().is_none());
        let mut a = Assembler::default();
        a.push(&SseData::Json(
            json!({"type": "response.completed", "response": stored()}),
        ));
        a.push(&SseData::Json(json!({"type": "error", "message": "x"})));
        assert!(a.finish().is_none());
    }
}
