//! What counts as a response worth storing.
//!
//! Responses without output (every choice empty, no tool call; a Responses object with an empty
//! `output`; an embedding list without data) are never stored, and such an entry found in a
//! cache is treated as a miss (reference §0, LiteLLM's `is_response_without_output`).

use serde_json::Value;

use crate::key::CallKind;

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn message_has_output(m: &Value) -> bool {
    [
        "content",
        "tool_calls",
        "function_call",
        "refusal",
        "audio",
        "reasoning_content",
        "reasoning",
        "thinking_blocks",
        "images",
    ]
    .iter()
    .any(|f| non_empty(m.get(*f)))
}

/// Whether a response carries output and may be stored.
pub fn has_output(kind: CallKind, response: &Value) -> bool {
    match kind {
        CallKind::Chat => response
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| {
                choices.iter().any(|c| {
                    c.get("message").is_some_and(message_has_output)
                        || c.get("delta").is_some_and(message_has_output)
                })
            }),
        CallKind::TextCompletion => response
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| choices.iter().any(|c| non_empty(c.get("text")))),
        CallKind::Embedding => {
            non_empty(response.get("data")) || non_empty(response.get("embedding"))
        }
        CallKind::Responses => non_empty(response.get("output")),
        CallKind::AnthropicMessages => non_empty(response.get("content")),
        CallKind::Rerank => non_empty(response.get("results")),
        CallKind::Transcription => non_empty(response.get("text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_responses_have_no_output() {
        assert!(!has_output(CallKind::Chat, &json!({"choices": []})));
        assert!(!has_output(
            CallKind::Chat,
            &json!({"choices": [{"message": {"role": "assistant", "content": ""}}]})
        ));
        assert!(!has_output(
            CallKind::Chat,
            &json!({"choices": [{"message": {"content": null, "tool_calls": []}}]})
        ));
        assert!(!has_output(CallKind::Responses, &json!({"output": []})));
        assert!(!has_output(CallKind::Embedding, &json!({"data": []})));
        assert!(!has_output(
            CallKind::TextCompletion,
            &json!({"choices": [{"text": ""}]})
        ));
        assert!(!has_output(
            CallKind::Chat,
            &json!({"error": {"message": "x"}})
        ));
    }

    #[test]
    fn real_output_counts() {
        assert!(has_output(
            CallKind::Chat,
            &json!({"choices": [{"message": {"content": "hi"}}]})
        ));
        assert!(has_output(
            CallKind::Chat,
            &json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "t"}]}}]})
        ));
        assert!(has_output(
            CallKind::TextCompletion,
            &json!({"choices": [{"text": "x"}]})
        ));
        assert!(has_output(
            CallKind::Embedding,
            &json!({"data": [{"embedding": [0.1]}]})
        ));
    }
}
