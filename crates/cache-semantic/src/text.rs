//! What is embedded and what must match exactly.
//!
//! A request is split in two:
//!
//! * the **prompt**: the text that is embedded and compared by similarity — by default the text
//!   parts of the *last user message* ([`EmbedMode::LastUserMessage`]); with
//!   [`EmbedMode::AllMessages`] (LiteLLM's behaviour) the text of every message;
//! * the **scope request**: the request with exactly that text replaced by a fixed placeholder.
//!   Everything left in it (model, every keyed parameter, the system prompt, earlier turns,
//!   images and other non-text parts, tools, ...) is hashed into the exact scope.
//!
//! Because the scope is the request *minus the embedded text*, nothing that is not compared by
//! similarity can be ignored by accident.

use cache_core::CallKind;
use serde_json::Value;

/// What replaces the embedded text in the scope request (never valid user text).
pub(crate) const PROMPT_SLOT: &str = "\u{0}llm-cache:semantic-prompt\u{0}";

/// Which text is embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EmbedMode {
    /// The text parts of the last user message (chat `messages`, Responses `input` items) or
    /// the `prompt` of a text completion. The system prompt and earlier turns are part of the
    /// exact scope. The default.
    #[default]
    LastUserMessage,
    /// The text of every message, joined with newlines (LiteLLM's
    /// `get_semantic_cache_prompt_from_messages`, which joins without separator). Only the
    /// message structure (roles, non-text parts) and the parameters are in the exact scope, so
    /// a different system prompt can still hit if the whole text is similar enough.
    AllMessages,
}

impl EmbedMode {
    /// Stable name, part of the scope hash.
    pub fn as_str(self) -> &'static str {
        match self {
            EmbedMode::LastUserMessage => "last-user-message",
            EmbedMode::AllMessages => "all-messages",
        }
    }
}

/// A request split into the text to embed and the rest.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The text to embed (trimmed, never empty).
    pub text: String,
    /// The request with the embedded text replaced by a placeholder.
    pub scope_request: Value,
}

/// Splits a request. `None` when the request has no text to compare (no user message, only
/// images, a list of prompts, token arrays): such requests are neither looked up nor stored
/// semantically (the exact cache still applies).
pub fn extract(kind: CallKind, request: &Value, mode: EmbedMode) -> Option<Extracted> {
    let mut scope_request = request.clone();
    let obj = scope_request.as_object_mut()?;
    let mut parts: Vec<String> = Vec::new();
    match kind {
        CallKind::Chat | CallKind::AnthropicMessages => {
            let messages = obj.get_mut("messages")?.as_array_mut()?;
            take_from_messages(messages, mode, &mut parts);
        }
        CallKind::Responses => match obj.get_mut("input")? {
            Value::String(s) => take_string(s, &mut parts),
            Value::Array(items) => take_from_messages(items, mode, &mut parts),
            _ => return None,
        },
        CallKind::TextCompletion => match obj.get_mut("prompt")? {
            Value::String(s) => take_string(s, &mut parts),
            Value::Array(items) if items.len() == 1 => match &mut items[0] {
                Value::String(s) => take_string(s, &mut parts),
                _ => return None,
            },
            _ => return None,
        },
        _ => return None,
    }
    let text = parts.join("\n");
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(Extracted {
        text: text.to_owned(),
        scope_request,
    })
}

fn take_string(s: &mut String, parts: &mut Vec<String>) {
    parts.push(std::mem::replace(s, PROMPT_SLOT.to_owned()));
}

fn role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

fn take_from_messages(messages: &mut [Value], mode: EmbedMode, parts: &mut Vec<String>) {
    match mode {
        EmbedMode::LastUserMessage => {
            if let Some(m) = messages.iter_mut().rev().find(|m| role(m) == Some("user")) {
                take_content(m, parts);
            }
        }
        EmbedMode::AllMessages => {
            for m in messages.iter_mut() {
                take_content(m, parts);
            }
        }
    }
}

/// Takes the text of one message: a string `content`, or the `text` of its text parts
/// (`text`, `input_text`, `output_text`); other parts (images, audio, files, tool calls) stay
/// in the scope.
fn take_content(message: &mut Value, parts: &mut Vec<String>) {
    let Some(content) = message.get_mut("content") else {
        return;
    };
    match content {
        Value::String(s) => take_string(s, parts),
        Value::Array(items) => {
            for item in items {
                let is_text = matches!(
                    item.get("type").and_then(Value::as_str),
                    Some("text" | "input_text" | "output_text")
                );
                if !is_text {
                    continue;
                }
                if let Some(Value::String(s)) = item.get_mut("text") {
                    take_string(s, parts);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_user_message_only() {
        let req = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "image_url", "image_url": {"url": "http://x/cat.png"}},
                    {"type": "text", "text": "this?"}
                ]}
            ]
        });
        let e = extract(CallKind::Chat, &req, EmbedMode::LastUserMessage).unwrap();
        assert_eq!(e.text, "What is\nthis?");
        let s = &e.scope_request["messages"];
        assert_eq!(s[0]["content"], "You are terse.");
        assert_eq!(s[1]["content"], "first");
        assert_eq!(s[3]["content"][0]["text"], PROMPT_SLOT);
        assert_eq!(s[3]["content"][1]["image_url"]["url"], "http://x/cat.png");
    }

    #[test]
    fn all_messages_mode_takes_every_text() {
        let req = json!({"messages": [
            {"role": "system", "content": "You are X."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "u"}}]}
        ]});
        let e = extract(CallKind::Chat, &req, EmbedMode::AllMessages).unwrap();
        assert_eq!(e.text, "You are X.\nHi");
        assert_eq!(e.scope_request["messages"][0]["content"], PROMPT_SLOT);
    }

    #[test]
    fn no_text_means_no_semantic_caching() {
        for (kind, req) in [
            (CallKind::Chat, json!({"messages": []})),
            (
                CallKind::Chat,
                json!({"messages": [{"role": "system", "content": "s"}]}),
            ),
            (
                CallKind::Chat,
                json!({"messages": [{"role": "user", "content": "   "}]}),
            ),
            (CallKind::TextCompletion, json!({"prompt": ["a", "b"]})),
            (CallKind::TextCompletion, json!({"prompt": [1, 2, 3]})),
            (CallKind::Embedding, json!({"input": "x"})),
            (CallKind::Chat, json!("not an object")),
        ] {
            assert!(
                extract(kind, &req, EmbedMode::LastUserMessage).is_none(),
                "{req}"
            );
        }
    }

    #[test]
    fn responses_and_text_completions() {
        let e = extract(
            CallKind::Responses,
            &json!({"input": "hello", "instructions": "be nice"}),
            EmbedMode::LastUserMessage,
        )
        .unwrap();
        assert_eq!(e.text, "hello");
        assert_eq!(e.scope_request["instructions"], "be nice");
        let e = extract(
            CallKind::Responses,
            &json!({"input": [
                {"role": "user", "content": [{"type": "input_text", "text": "one"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
                {"role": "user", "content": "three"}
            ]}),
            EmbedMode::LastUserMessage,
        )
        .unwrap();
        assert_eq!(e.text, "three");
        let e = extract(
            CallKind::TextCompletion,
            &json!({"prompt": ["only one"]}),
            EmbedMode::LastUserMessage,
        )
        .unwrap();
        assert_eq!(e.text, "only one");
    }
}
