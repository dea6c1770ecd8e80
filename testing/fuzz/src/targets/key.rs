//! `key`: the canonical key writer (`KeyBuilder::key`, `preimage`, `embedding_item_keys`,
//! `canonical_json`) on hostile requests and contexts.

use std::collections::HashMap;

use cache_core::key::{
    CallKind, KeyBuilder, KeyContext, KeyOptions, canonical_json, hash_hex, is_stripped,
    write_canonical_raw,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::strategies::{self, Mutation};

/// Request member names: keyed, stripped, unkeyed and opt-in ones.
pub const REQUEST_KEYS: &[&str] = &[
    "model",
    "messages",
    "input",
    "prompt",
    "temperature",
    "tools",
    "user",
    "n",
    "stream",
    "stream_options",
    "metadata",
    "cache",
    "cache_key",
    "api_key",
    "litellm_trace_id",
    "user_api_key_hash",
    "_litellm_x",
    "ttl",
    "role",
    "content",
];

/// One case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Index into `CallKind::ALL`.
    pub kind: u8,
    /// The request (usually an object).
    pub request: Value,
    /// `KeyContext::model_group`.
    pub model_group: Option<String>,
    /// `KeyContext::namespace`.
    pub namespace: Option<String>,
    /// `KeyContext::partition`.
    pub partition: Option<String>,
    /// Forward `metadata` (keyed then).
    pub forward_metadata: bool,
    /// Keyed headers.
    pub headers: Vec<(String, String)>,
    /// Model aliases.
    pub aliases: Vec<(String, String)>,
    /// Honour a client `cache_key`.
    pub allow_client_cache_key: bool,
    /// A member to add: name and value (stripped ones must not change the key).
    pub extra: (String, Value),
    /// Top-level members passed as raw JSON text (`KeyContext::raw`): bit i moves the i-th
    /// member (in name order).
    #[serde(default)]
    pub raw_members: u64,
    /// Byte edits of the request's JSON text, for `write_canonical_raw` against the parser.
    #[serde(default)]
    pub text_edits: Vec<Mutation>,
}

fn request() -> BoxedStrategy<Value> {
    let message = (
        proptest::sample::select(&["user", "system", "assistant", "tool"][..]),
        strategies::json_leaf(),
    )
        .prop_map(|(role, content)| serde_json::json!({"role": role, "content": content}));
    let chat = (
        strategies::hostile_string(),
        vec(message, 0..6),
        vec(
            (
                strategies::key_from(REQUEST_KEYS),
                strategies::json_with_keys(REQUEST_KEYS),
            ),
            0..6,
        ),
    )
        .prop_map(|(model, messages, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("model".to_owned(), Value::String(model));
            m.insert("messages".to_owned(), Value::Array(messages));
            Value::Object(m)
        });
    prop_oneof![
        5 => chat,
        3 => strategies::json_with_keys(REQUEST_KEYS),
        1 => strategies::json_leaf(),
    ]
    .boxed()
}

fn opt_string() -> BoxedStrategy<Option<String>> {
    proptest::option::weighted(0.3, strategies::hostile_string()).boxed()
}

/// The target.
#[derive(Debug)]
pub struct Key;

impl crate::Target for Key {
    const NAME: &'static str = "key";
    const ABOUT: &'static str = "the canonical key writer and canonical JSON";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        (
            (
                any::<u8>(),
                request(),
                opt_string(),
                opt_string(),
                opt_string(),
            ),
            (
                any::<bool>(),
                vec(
                    (strategies::hostile_string(), strategies::hostile_string()),
                    0..4,
                ),
                vec(
                    (strategies::hostile_string(), strategies::hostile_string()),
                    0..3,
                ),
                any::<bool>(),
                (strategies::key_from(REQUEST_KEYS), strategies::json()),
            ),
            (any::<u64>(), strategies::mutations(4)),
        )
            .prop_map(
                |(
                    (kind, request, model_group, namespace, partition),
                    (forward_metadata, headers, aliases, allow_client_cache_key, extra),
                    (raw_members, text_edits),
                )| Input {
                    kind,
                    request,
                    model_group,
                    namespace,
                    partition,
                    forward_metadata,
                    headers,
                    aliases,
                    allow_client_cache_key,
                    extra,
                    raw_members,
                    text_edits,
                },
            )
            .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        let kind = CallKind::ALL[input.kind as usize % CallKind::ALL.len()];
        // canonical JSON: parses back, idempotent, independent of member order.
        let canon = canonical_json(&input.request);
        let parsed: Value = serde_json::from_str(&canon).map_err(|e| {
            format!(
                "canonical JSON does not parse ({e}): {}",
                strategies::short(&canon)
            )
        })?;
        // (No exact fixed-point check: serde_json here parses floats best-effort, without
        // `float_roundtrip`, so a re-parsed float may differ in the last bit.)
        if canonical_json(&strategies::reorder(&input.request)) != canon {
            return Err("canonical JSON depends on member order".to_owned());
        }
        if !same_shape(&parsed, &input.request) {
            return Err(format!(
                "canonical JSON lost data: {}",
                strategies::short(&canon)
            ));
        }

        // The streaming canonical writer agrees with the parser on any text: the same output
        // when it parses, an error when it does not.
        let mut text = input.request.to_string().into_bytes();
        strategies::apply(&mut text, &input.text_edits);
        let text = String::from_utf8_lossy(&text).into_owned();
        let mut streamed = Vec::new();
        match (
            write_canonical_raw(&mut streamed, &text),
            serde_json::from_str::<Value>(&text),
        ) {
            (Ok(()), Ok(v)) if streamed != canonical_json(&v).into_bytes() => {
                return Err(format!(
                    "write_canonical_raw differs from canonical_json for {}",
                    strategies::short(&text)
                ));
            }
            (Ok(()), Err(e)) => {
                return Err(format!(
                    "write_canonical_raw accepted text the parser rejects ({e})"
                ));
            }
            (Err(e), Ok(_)) => {
                return Err(format!("write_canonical_raw rejected valid JSON: {e}"));
            }
            _ => {}
        }

        let options = KeyOptions {
            model_aliases: input.aliases.iter().cloned().collect::<HashMap<_, _>>(),
            allow_client_cache_key: input.allow_client_cache_key,
            key_fn: None,
        };
        let builder = KeyBuilder::new(options);
        let headers: Vec<(&str, &str)> = input
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let forwarded: &[&str] = if input.forward_metadata {
            &["metadata"]
        } else {
            &[]
        };
        let ctx = KeyContext {
            model_group: input.model_group.as_deref(),
            namespace: input.namespace.as_deref(),
            partition: input.partition.as_deref(),
            forwarded,
            headers: &headers,
            ..KeyContext::default()
        };
        let key = builder.key(kind, &input.request, &ctx);
        let again = builder.key(kind, &input.request, &ctx);
        if key.as_ref().ok() != again.as_ref().ok() || key.is_ok() != again.is_ok() {
            return Err("the key is not deterministic".to_owned());
        }
        let Ok(key) = key else {
            let obj = input.request.as_object();
            let bad_custom = input.allow_client_cache_key
                && obj
                    .and_then(|o| o.get("cache_key"))
                    .is_some_and(|c| !c.is_null() && c.as_str().is_none_or(str::is_empty));
            if obj.is_some() && !bad_custom {
                return Err("no key for a request object".to_owned());
            }
            return Ok(());
        };
        let reordered = strategies::reorder(&input.request);
        let mut reversed = headers.clone();
        reversed.reverse();
        let ctx_reordered = KeyContext {
            headers: &reversed,
            ..ctx
        };
        match builder.key(kind, &reordered, &ctx_reordered) {
            Ok(k) if k == key => {}
            other => return Err(format!("member or header order changed the key: {other:?}")),
        }
        let custom = input.allow_client_cache_key
            && input.request.get("cache_key").is_some_and(|c| !c.is_null());
        let preimage = builder
            .preimage(kind, &input.request, &ctx)
            .map_err(|e| format!("preimage failed where key did not: {e}"))?;
        if !preimage.starts_with("llm-cache/key/v") {
            return Err("preimage without its version tag".to_owned());
        }
        if !custom && key.hash() != hash_hex(preimage.as_bytes()) {
            return Err("key is not blake3(preimage)".to_owned());
        }
        match input.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) if !key.as_str().starts_with(&format!("{ns}:")) => {
                return Err("namespace missing from the key".to_owned());
            }
            None if key.namespace().is_some() => {
                return Err("a namespace appeared from nowhere".to_owned());
            }
            _ => {}
        }
        // Members never sent upstream never change the key; a top-level null is an absent member.
        let (name, value) = &input.extra;
        if let Some(obj) = input.request.as_object()
            && !obj.contains_key(name)
            && !(name == "cache_key" && input.allow_client_cache_key)
        {
            let unkeyed = (is_stripped(name) && !(input.forward_metadata && name == "metadata"))
                || name == "stream"
                || name == "stream_options"
                || value.is_null();
            let mut with = obj.clone();
            with.insert(name.clone(), value.clone());
            let k2 = builder
                .key(kind, &Value::Object(with), &ctx)
                .map_err(|e| format!("adding a member broke the key: {e}"))?;
            if unkeyed && k2 != key {
                return Err(format!("unkeyed member `{name}` changed the key"));
            }
            if !unkeyed && !custom && k2 == key && name != "model" {
                return Err(format!("keyed member `{name}` did not change the key"));
            }
        }
        // Members passed as raw text key exactly as the same text parsed (both sides parse the
        // same text: serde_json's best-effort float parsing is not a fixed point of its printing).
        if let Some(obj) = input.request.as_object()
            && !custom
        {
            let mut reparsed = obj.clone();
            let mut parsed = obj.clone();
            let mut raw_texts: Vec<(String, String)> = Vec::new();
            for (i, (k, v)) in obj.iter().enumerate() {
                let movable = !matches!(k.as_str(), "model" | "input" | "cache_key");
                if movable && i < 64 && (input.raw_members >> i) & 1 == 1 {
                    let text = v.to_string();
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    reparsed.insert(k.clone(), value);
                    parsed.remove(k);
                    raw_texts.push((k.clone(), text));
                }
            }
            if !raw_texts.is_empty() {
                let raw: Vec<(&str, &str)> = raw_texts
                    .iter()
                    .map(|(k, t)| (k.as_str(), t.as_str()))
                    .collect();
                let full = builder.key(kind, &Value::Object(reparsed), &ctx);
                let split = builder.key(
                    kind,
                    &Value::Object(parsed),
                    &KeyContext { raw: &raw, ..ctx },
                );
                if full.as_ref().ok() != split.as_ref().ok() {
                    return Err(format!(
                        "raw members key differently: {full:?} vs {split:?} (raw: {})",
                        raw_texts
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        // Embeddings: one key per input; a non-list input and a one-element list agree.
        let items = builder
            .embedding_item_keys(&input.request, &ctx)
            .map_err(|e| format!("embedding_item_keys failed on an object: {e}"))?;
        if let Some(obj) = input.request.as_object()
            && let Some(first) = items.first()
            && items.len() == 1
            && !matches!(first.1, Value::Array(_) | Value::Number(_))
        {
            let mut single = obj.clone();
            single.insert("input".to_owned(), Value::Array(vec![first.1.clone()]));
            let mut scalar = obj.clone();
            scalar.insert("input".to_owned(), first.1.clone());
            let a = builder.embedding_item_keys(&Value::Object(single), &ctx);
            let b = builder.embedding_item_keys(&Value::Object(scalar), &ctx);
            if a.as_ref().ok().map(|v| &v[0].0) != b.as_ref().ok().map(|v| &v[0].0) {
                return Err("a scalar input and its one-element list key differently".to_owned());
            }
        }
        Ok(())
    }
}

fn same_shape(a: &Value, b: &Value) -> bool {
    strategies::same_json(a, b)
}
