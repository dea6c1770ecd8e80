//! Cache keys: which request parameters count, their canonical form, and the hash.
//!
//! The full specification, with golden vectors, is `docs/key-spec.md`. In short:
//!
//! ```text
//! preimage = "llm-cache/key/v1\n" + call_kind + "\n" + canonical_json(keyed params)
//! key      = [namespace + ":"] + lowercase_hex(blake3(preimage))
//! ```
//!
//! * Only the keyed parameters count: LiteLLM's allow-list ([`KEYED_PARAMS`]) minus `stream` and
//!   `stream_options` (one entry serves streaming and non-streaming callers), plus parameters the
//!   configuration adds. `null` equals absent, at every depth of an object.
//! * Canonical JSON: object members sorted by key at every depth, no whitespace, numbers
//!   normalised (`1`, `1.0` and `1e0` are the same number), strings escaped the one way
//!   `serde_json` escapes them.
//! * The model is replaced by its model group or caching group when the caller names one.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::error::{CacheError, Result};

/// Version of the key specification. Part of every hash input, so a change of the spec never
/// collides with entries written under an older one.
pub const KEY_SPEC_VERSION: u32 = 1;

const PREIMAGE_TAG: &str = "llm-cache/key/v1\n";

/// The kind of LLM call a request is. Part of the key: a chat request and a Responses request
/// with the same parameters never share an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CallKind {
    /// `/chat/completions` (LiteLLM `completion` / `acompletion`).
    Chat,
    /// Legacy `/completions` (LiteLLM `text_completion`).
    TextCompletion,
    /// `/embeddings` (LiteLLM `embedding`), cached per input.
    Embedding,
    /// `/rerank`.
    Rerank,
    /// `/audio/transcriptions`.
    Transcription,
    /// `/responses` (OpenAI Responses API).
    Responses,
    /// Anthropic `/v1/messages`.
    AnthropicMessages,
}

impl CallKind {
    /// Every call kind, in a fixed order.
    pub const ALL: [CallKind; 7] = [
        CallKind::Chat,
        CallKind::TextCompletion,
        CallKind::Embedding,
        CallKind::Rerank,
        CallKind::Transcription,
        CallKind::Responses,
        CallKind::AnthropicMessages,
    ];

    /// The stable name used in the key preimage and in the entry envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Chat => "chat",
            CallKind::TextCompletion => "text_completion",
            CallKind::Embedding => "embedding",
            CallKind::Rerank => "rerank",
            CallKind::Transcription => "transcription",
            CallKind::Responses => "responses",
            CallKind::AnthropicMessages => "anthropic_messages",
        }
    }

    /// Parses a name from [`CallKind::as_str`] or one of LiteLLM's `supported_call_types` names
    /// (`completion`, `acompletion`, `aembedding`, `atext_completion`, ...).
    pub fn parse(name: &str) -> Option<CallKind> {
        Some(match name {
            "chat" | "completion" | "acompletion" => CallKind::Chat,
            "text_completion" | "atext_completion" => CallKind::TextCompletion,
            "embedding" | "aembedding" => CallKind::Embedding,
            "rerank" | "arerank" => CallKind::Rerank,
            "transcription" | "atranscription" => CallKind::Transcription,
            "responses" | "aresponses" => CallKind::Responses,
            "anthropic_messages" | "aanthropic_messages" => CallKind::AnthropicMessages,
            _ => return None,
        })
    }
}

impl fmt::Display for CallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// LiteLLM's allow-list of keyed request parameters (reference §2.2, openai 3.57), plus its two
/// "always keyed" parameters, **minus** `stream` and `stream_options`, which llm-cache does not key.
pub const KEYED_PARAMS: &[&str] = &[
    "access_programs",
    "audio",
    "background",
    "background_options",
    "best_of",
    "cache_control",
    "chunking_strategy",
    "compaction",
    "container",
    "context_management",
    "continuation_token",
    "conversation",
    "dimensions",
    "documents",
    "echo",
    "encoding_format",
    "file",
    "frequency_penalty",
    "function_call",
    "functions",
    "image",
    "include",
    "inference_geo",
    "input",
    "instruction",
    "instructions",
    "keywords",
    "known_speaker_names",
    "known_speaker_references",
    "language",
    "languages",
    "logit_bias",
    "logprobs",
    "max_chunks_per_doc",
    "max_completion_tokens",
    "max_output_tokens",
    "max_tokens",
    "max_tokens_per_doc",
    "max_tokens_per_query",
    "max_tool_calls",
    "mcp_servers",
    "messages",
    "modalities",
    "model",
    "moderation",
    "n",
    "output_config",
    "output_format",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "previous_response_id",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "query",
    "rank_fields",
    "reasoning",
    "reasoning_effort",
    "response_format",
    "return_documents",
    "return_token_ids",
    "safeguards",
    "safety_identifier",
    "seed",
    "service_tier",
    "speed",
    "stop",
    "stop_sequences",
    "store",
    "suffix",
    "system",
    "temperature",
    "text",
    "thinking",
    "timestamp_granularities",
    "tool_choice",
    "tools",
    "top_k",
    "top_logprobs",
    "top_n",
    "top_p",
    "truncate_prompt_tokens",
    "truncation",
    "truncation_side",
    "user",
    "verbosity",
    "web_search_options",
];

/// Parameters that never count, whatever the configuration says: transport, credentials,
/// directives, bookkeeping. (`stream`/`stream_options` are here because one entry serves both
/// streaming and non-streaming callers.)
pub const NEVER_KEYED_PARAMS: &[&str] = &[
    "api_base",
    "api_key",
    "api_version",
    "base_url",
    "cache",
    "cache_key",
    "caching",
    "extra_headers",
    "litellm_metadata",
    "max_retries",
    "metadata",
    "mock_response",
    "num_retries",
    "organization",
    "request_timeout",
    "stream",
    "stream_options",
    "timeout",
    "ttl",
];

fn is_never_keyed(name: &str) -> bool {
    NEVER_KEYED_PARAMS.contains(&name)
        || name.starts_with("litellm_")
        || name.starts_with("_litellm")
        || name.starts_with("user_api_key")
}

fn is_allow_listed(name: &str) -> bool {
    KEYED_PARAMS.binary_search(&name).is_ok()
}

/// A user-supplied key function: given the call kind and the request, return the key (without
/// namespace) to use, or `None` to fall back to the standard key.
pub type KeyFn = Arc<dyn Fn(CallKind, &Value) -> Option<String> + Send + Sync>;

/// How keys are computed. Built once from the configuration and shared.
#[derive(Clone, Default)]
pub struct KeyOptions {
    /// Extra parameter names to key in addition to [`KEYED_PARAMS`] (provider-specific
    /// parameters such as `safety_settings`).
    pub extra_params: Vec<String>,
    /// Key every parameter that is not in [`NEVER_KEYED_PARAMS`] (LiteLLM's
    /// `enable_caching_on_provider_specific_optional_params`).
    pub key_all_params: bool,
    /// Model name → the name keyed instead (model groups and caching groups). A model that
    /// appears here shares entries with every other model mapped to the same name.
    pub model_aliases: HashMap<String, String>,
    /// Honour a caller-chosen `cache_key` request field (LiteLLM's `cache_key` kwarg). Off by
    /// default: with it on, any caller can read or overwrite any entry (LiteLLM F12).
    pub allow_client_cache_key: bool,
    /// A user-supplied key function, consulted first.
    pub key_fn: Option<KeyFn>,
}

impl fmt::Debug for KeyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyOptions")
            .field("extra_params", &self.extra_params)
            .field("key_all_params", &self.key_all_params)
            .field("model_aliases", &self.model_aliases)
            .field("allow_client_cache_key", &self.allow_client_cache_key)
            .field("key_fn", &self.key_fn.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl KeyOptions {
    /// Registers LiteLLM-style `caching_groups`: every model in a group is keyed as the group.
    pub fn with_caching_groups<I, G, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for group in groups {
            let members: Vec<String> = group.into_iter().map(Into::into).collect();
            let label = format!("caching_group:{}", members.join(","));
            for m in members {
                self.model_aliases.insert(m, label.clone());
            }
        }
        self
    }

    fn is_keyed(&self, name: &str) -> bool {
        if is_never_keyed(name) {
            return false;
        }
        self.key_all_params || is_allow_listed(name) || self.extra_params.iter().any(|p| p == name)
    }
}

/// Per-request inputs to the key besides the request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyContext<'a> {
    /// The model group the request was routed to (the proxy's `model_name`). Keyed instead of
    /// the request's `model`, so every deployment of a group shares entries.
    pub model_group: Option<&'a str>,
    /// Namespace, already resolved (per-request directive, else configuration).
    pub namespace: Option<&'a str>,
    /// Tenant partition (a virtual key, a team): when set it is part of the preimage, so
    /// different partitions never share an entry.
    pub partition: Option<&'a str>,
}

/// A computed cache key: an optional namespace and the hash (or a custom key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    full: String,
    ns_len: usize,
}

impl CacheKey {
    /// Builds a key from a namespace and a hash/custom part.
    pub fn new(namespace: Option<&str>, hash: &str) -> Self {
        match namespace.filter(|n| !n.is_empty()) {
            Some(ns) => {
                let mut full = String::with_capacity(ns.len() + 1 + hash.len());
                full.push_str(ns);
                full.push(':');
                full.push_str(hash);
                CacheKey {
                    full,
                    ns_len: ns.len(),
                }
            }
            None => CacheKey {
                full: hash.to_owned(),
                ns_len: 0,
            },
        }
    }

    /// Wraps an already complete key string (e.g. from `/cache/delete`). Everything before the
    /// last `:` counts as its namespace.
    pub fn from_raw(raw: impl Into<String>) -> Self {
        let full = raw.into();
        let ns_len = full.rfind(':').unwrap_or(0);
        CacheKey { full, ns_len }
    }

    /// The full key as stored: `namespace:hash` or `hash`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        (self.ns_len > 0).then(|| &self.full[..self.ns_len])
    }

    /// The part after the namespace.
    pub fn hash(&self) -> &str {
        if self.ns_len > 0 {
            &self.full[self.ns_len + 1..]
        } else {
            &self.full
        }
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl AsRef<str> for CacheKey {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

/// Computes keys according to [`KeyOptions`].
#[derive(Debug, Clone, Default)]
pub struct KeyBuilder {
    options: KeyOptions,
}

impl KeyBuilder {
    /// A builder with the given options.
    pub fn new(options: KeyOptions) -> Self {
        KeyBuilder { options }
    }

    /// The options in use.
    pub fn options(&self) -> &KeyOptions {
        &self.options
    }

    /// The key of a request. `request` must be a JSON object.
    ///
    /// # Errors
    /// [`CacheError::Config`] when the request is not an object, or a client `cache_key` is
    /// allowed, present, and not a non-empty string.
    pub fn key(&self, kind: CallKind, request: &Value, ctx: &KeyContext<'_>) -> Result<CacheKey> {
        let obj = as_object(request)?;
        if let Some(custom) = self.custom_key(kind, request, obj)? {
            return Ok(CacheKey::new(ctx.namespace, &custom));
        }
        let mut buf = Vec::with_capacity(estimate_len(request));
        self.write_preimage(&mut buf, kind, obj, ctx, None);
        Ok(CacheKey::new(ctx.namespace, &hash_hex(&buf)))
    }

    /// The standard key of a request, ignoring custom keys (`key_fn`, a client `cache_key`):
    /// what the semantic layer hashes into its exact scope.
    ///
    /// # Errors
    /// [`CacheError::Config`] when the request is not an object.
    pub fn standard_key(
        &self,
        kind: CallKind,
        request: &Value,
        ctx: &KeyContext<'_>,
    ) -> Result<CacheKey> {
        let obj = as_object(request)?;
        let mut buf = Vec::with_capacity(estimate_len(request));
        self.write_preimage(&mut buf, kind, obj, ctx, None);
        Ok(CacheKey::new(ctx.namespace, &hash_hex(&buf)))
    }

    /// The preimage (the bytes that are hashed), for debugging and for the golden vectors.
    pub fn preimage(
        &self,
        kind: CallKind,
        request: &Value,
        ctx: &KeyContext<'_>,
    ) -> Result<String> {
        let obj = as_object(request)?;
        let mut buf = Vec::new();
        self.write_preimage(&mut buf, kind, obj, ctx, None);
        Ok(String::from_utf8(buf).expect("canonical JSON is UTF-8"))
    }

    /// One key per embedding input, in input order: the request keyed with `input` replaced by
    /// that single element. A string input and a one-element list give the same key.
    ///
    /// Returns the inputs alongside their keys. A request without `input` is one key for `null`.
    pub fn embedding_item_keys(
        &self,
        request: &Value,
        ctx: &KeyContext<'_>,
    ) -> Result<Vec<(CacheKey, Value)>> {
        let obj = as_object(request)?;
        let inputs: Vec<Value> = match obj.get("input") {
            Some(Value::Array(items)) if !is_token_array(items) => items.clone(),
            Some(other) => vec![other.clone()],
            None => vec![Value::Null],
        };
        let mut buf = Vec::with_capacity(256);
        let mut keys = Vec::with_capacity(inputs.len());
        for input in inputs {
            buf.clear();
            self.write_preimage(&mut buf, CallKind::Embedding, obj, ctx, Some(&input));
            keys.push((CacheKey::new(ctx.namespace, &hash_hex(&buf)), input));
        }
        Ok(keys)
    }

    fn custom_key(
        &self,
        kind: CallKind,
        request: &Value,
        obj: &Map<String, Value>,
    ) -> Result<Option<String>> {
        if let Some(f) = &self.options.key_fn
            && let Some(k) = f(kind, request)
        {
            return Ok(Some(k));
        }
        if self.options.allow_client_cache_key {
            match obj.get("cache_key") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if !s.is_empty() => return Ok(Some(s.clone())),
                Some(_) => {
                    return Err(CacheError::Config(
                        "`cache_key` must be a non-empty string".to_owned(),
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Writes the preimage. With `item = Some(v)`, `input` is replaced by `v` (embedding items).
    fn write_preimage(
        &self,
        buf: &mut Vec<u8>,
        kind: CallKind,
        obj: &Map<String, Value>,
        ctx: &KeyContext<'_>,
        item: Option<&Value>,
    ) {
        buf.extend_from_slice(PREIMAGE_TAG.as_bytes());
        buf.extend_from_slice(kind.as_str().as_bytes());
        buf.push(b'\n');
        if let Some(p) = ctx.partition {
            buf.extend_from_slice(b"partition:");
            write_str(buf, p);
            buf.push(b'\n');
        }

        let model_override = self.model_value(obj, ctx);
        let mut members: Vec<(&str, &Value)> = Vec::with_capacity(obj.len());
        for (k, v) in obj {
            if !self.options.is_keyed(k) {
                continue;
            }
            let v = match (k.as_str(), item) {
                ("input", Some(item)) => item,
                _ => v,
            };
            if v.is_null() {
                continue;
            }
            members.push((k.as_str(), v));
        }
        if item.is_some() && !obj.contains_key("input") {
            members.push(("input", item.unwrap_or(&Value::Null)));
        }
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));

        buf.push(b'{');
        let mut first = true;
        for (k, v) in members {
            if v.is_null() {
                continue;
            }
            if !first {
                buf.push(b',');
            }
            first = false;
            write_str(buf, k);
            buf.push(b':');
            match (k, &model_override) {
                ("model", Some(m)) => write_str(buf, m),
                _ => write_canonical(buf, v),
            }
        }
        buf.push(b'}');
    }

    fn model_value<'a>(
        &'a self,
        obj: &'a Map<String, Value>,
        ctx: &KeyContext<'a>,
    ) -> Option<&'a str> {
        let model = ctx
            .model_group
            .or_else(|| obj.get("model").and_then(Value::as_str))?;
        Some(
            self.options
                .model_aliases
                .get(model)
                .map(String::as_str)
                .unwrap_or(model),
        )
    }
}

fn as_object(request: &Value) -> Result<&Map<String, Value>> {
    request
        .as_object()
        .ok_or_else(|| CacheError::Config("a request must be a JSON object".to_owned()))
}

/// An embedding `input` that is one tokenised prompt (a list of integers) is one input, not many.
fn is_token_array(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(Value::is_number)
}

fn estimate_len(v: &Value) -> usize {
    // A cheap guess that avoids most reallocations: small requests fit in 1 KiB; large ones are
    // dominated by message text, which we count.
    match v.get("messages").and_then(Value::as_array) {
        Some(msgs) if msgs.len() > 4 => msgs
            .iter()
            .map(|m| {
                m.get("content")
                    .and_then(Value::as_str)
                    .map_or(128, |s| s.len() + 64)
            })
            .sum::<usize>()
            .saturating_add(1024),
        _ => 1024,
    }
}

/// Lowercase hex BLAKE3 of `bytes`.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The canonical JSON text of a value: object members sorted by key at every depth, members
/// whose value is `null` dropped, no whitespace, numbers normalised.
pub fn canonical_json(value: &Value) -> String {
    let mut buf = Vec::with_capacity(estimate_len(value));
    write_canonical(&mut buf, value);
    String::from_utf8(buf).expect("canonical JSON is UTF-8")
}

fn write_canonical(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => buf.extend_from_slice(b"null"),
        Value::Bool(true) => buf.extend_from_slice(b"true"),
        Value::Bool(false) => buf.extend_from_slice(b"false"),
        Value::Number(n) => write_number(buf, n),
        Value::String(s) => write_str(buf, s),
        Value::Array(items) => {
            buf.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_canonical(buf, item);
            }
            buf.push(b']');
        }
        Value::Object(map) => write_object(buf, map),
    }
}

fn write_object(buf: &mut Vec<u8>, map: &Map<String, Value>) {
    buf.push(b'{');
    let sorted = map
        .keys()
        .zip(map.keys().skip(1))
        .all(|(a, b)| a.as_str() < b.as_str());
    let mut first = true;
    let mut emit = |buf: &mut Vec<u8>, k: &str, v: &Value| {
        if v.is_null() {
            return;
        }
        if !first {
            buf.push(b',');
        }
        first = false;
        write_str(buf, k);
        buf.push(b':');
        write_canonical(buf, v);
    };
    if sorted {
        for (k, v) in map {
            emit(buf, k, v);
        }
    } else {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in members {
            emit(buf, k, v);
        }
    }
    buf.push(b'}');
}

/// Largest integer magnitude an `f64` represents exactly.
const MAX_EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

fn write_number(buf: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        let _ = write!(buf, "{u}");
    } else if let Some(i) = n.as_i64() {
        let _ = write!(buf, "{i}");
    } else if let Some(f) = n.as_f64() {
        if f.is_finite() && f.fract() == 0.0 && f.abs() <= MAX_EXACT_F64_INT {
            // 1.0, 1e0 and 1 are the same number; -0.0 is 0.
            let _ = write!(buf, "{}", f as i64);
        } else {
            // Shortest round-trip significand in scientific form (`1e-5`, `1.5e0`, `1e300`):
            // defined by the spec, independent of how any JSON library prints floats.
            let _ = write!(buf, "{f:e}");
        }
    }
}

/// Writes a JSON string: `"` and `\\` escaped, `\b \f \n \r \t` for those controls, every other
/// byte below 0x20 as `\u00xx` (lowercase hex), everything else as raw UTF-8.
fn write_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip 8 clean bytes at a time (SWAR); fall back to bytes around anything to escape.
        while let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if needs_escape(word) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(b >> 4) as usize]);
                buf.push(HEX[(b & 0xf) as usize]);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        i += 1;
        start = i;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Whether any byte of `x` is below 0x20, `"` or `\\` (exact for "any"; which byte is unknown).
#[inline]
fn needs_escape(x: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let below_space = x.wrapping_sub(LO * 0x20) & !x & HI;
    let q = x ^ (LO * u64::from(b'"'));
    let quote = q.wrapping_sub(LO) & !q & HI;
    let bs = x ^ (LO * u64::from(b'\\'));
    let backslash = bs.wrapping_sub(LO) & !bs & HI;
    (below_space | quote | backslash) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(v: Value) -> String {
        KeyBuilder::default()
            .key(CallKind::Chat, &v, &KeyContext::default())
            .unwrap()
            .to_string()
    }

    #[test]
    fn allow_list_is_sorted_for_binary_search() {
        assert!(KEYED_PARAMS.windows(2).all(|w| w[0] < w[1]));
        assert!(!KEYED_PARAMS.contains(&"stream"));
        assert!(!KEYED_PARAMS.contains(&"stream_options"));
        assert!(!KEYED_PARAMS.contains(&"metadata"));
    }

    #[test]
    fn order_whitespace_and_number_form_do_not_matter() {
        let a: Value = serde_json::from_str(
            r#"{"model":"gpt-4o","temperature":1,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "messages" : [ {"content":"hi", "role":"user"} ],
                 "temperature": 1.0, "model": "gpt-4o" }"#,
        )
        .unwrap();
        let c: Value = serde_json::from_str(
            r#"{"temperature":1e0,"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(key(a.clone()), key(b));
        assert_eq!(key(a), key(c));
    }

    #[test]
    fn null_equals_absent_and_unkeyed_params_are_ignored() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with_noise = json!({
            "model": "m", "messages": [{"role": "user", "content": "x", "name": null}],
            "seed": null, "metadata": {"a": 1}, "cache": {"ttl": 5}, "api_key": "sk",
            "api_base": "http://x", "timeout": 3, "stream": true,
            "stream_options": {"include_usage": true}, "safety_settings": [1]
        });
        assert_eq!(key(base), key(with_noise));
    }

    #[test]
    fn keyed_params_change_the_key() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in [
            ("user", json!("u1")),
            ("n", json!(2)),
            ("seed", json!(7)),
            ("temperature", json!(0.2)),
            ("tools", json!([{"type": "function"}])),
        ] {
            let mut other = base.clone();
            other[k] = v;
            assert_ne!(key(base.clone()), key(other), "{k} must be keyed");
        }
    }

    #[test]
    fn model_group_and_caching_groups() {
        let req = json!({"model": "azure/gpt-4o-eu", "messages": []});
        let kb =
            KeyBuilder::new(KeyOptions::default().with_caching_groups([["gpt-4o", "gpt-4o-mini"]]));
        let k1 = kb
            .key(
                CallKind::Chat,
                &req,
                &KeyContext {
                    model_group: Some("gpt-4o"),
                    ..Default::default()
                },
            )
            .unwrap();
        let k2 = kb
            .key(
                CallKind::Chat,
                &json!({"model": "gpt-4o-mini", "messages": []}),
                &KeyContext::default(),
            )
            .unwrap();
        assert_eq!(k1, k2);
    }

    #[test]
    fn client_cache_key_is_off_by_default() {
        let a = json!({"model": "m", "messages": [], "cache_key": "shared"});
        let b = json!({"model": "m", "messages": [{"role":"user","content":"q"}], "cache_key": "shared"});
        assert_ne!(key(a.clone()), key(b.clone()));
        let kb = KeyBuilder::new(KeyOptions {
            allow_client_cache_key: true,
            ..Default::default()
        });
        let ctx = KeyContext {
            namespace: Some("ns"),
            ..Default::default()
        };
        let ka = kb.key(CallKind::Chat, &a, &ctx).unwrap();
        assert_eq!(ka.as_str(), "ns:shared");
        assert_eq!(ka, kb.key(CallKind::Chat, &b, &ctx).unwrap());
    }

    #[test]
    fn namespace_and_parsing() {
        let k = CacheKey::new(Some("team"), "abc");
        assert_eq!(k.as_str(), "team:abc");
        assert_eq!(k.namespace(), Some("team"));
        assert_eq!(k.hash(), "abc");
        let raw = CacheKey::from_raw("a:b:c");
        assert_eq!(raw.namespace(), Some("a:b"));
        assert_eq!(raw.hash(), "c");
        assert_eq!(CacheKey::new(Some(""), "h").as_str(), "h");
    }

    #[test]
    fn embedding_items_share_keys_with_single_inputs() {
        let kb = KeyBuilder::default();
        let ctx = KeyContext::default();
        let list = kb
            .embedding_item_keys(&json!({"model": "e", "input": ["a", "b"]}), &ctx)
            .unwrap();
        let single = kb
            .embedding_item_keys(&json!({"model": "e", "input": "a"}), &ctx)
            .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].0, single[0].0);
        assert_ne!(list[0].0, list[1].0);
        let tokens = kb
            .embedding_item_keys(&json!({"model": "e", "input": [1, 2, 3]}), &ctx)
            .unwrap();
        assert_eq!(tokens.len(), 1);
    }

    #[test]
    fn string_escaping_matches_serde_json() {
        let mut samples: Vec<String> = (0u8..0x80)
            .map(|b| format!("ab{}cdefghij", b as char))
            .collect();
        samples.push("plain ascii text that is longer than eight bytes".into());
        samples.push("é ✓ \u{1F600} \"q\" \\ \u{7f}\u{1}\u{1f}".into());
        samples.push(String::new());
        for s in samples {
            let mut buf = Vec::new();
            write_str(&mut buf, &s);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                serde_json::to_string(&s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn numbers_are_normalised() {
        assert_eq!(
            canonical_json(&json!([1, 1.0, -0.0, 1e-5, 0.1, 1e300, 1.5])),
            "[1,1,0,1e-5,1e-1,1e300,1.5e0]"
        );
        assert_eq!(
            canonical_json(&json!(18446744073709551615u64)),
            "18446744073709551615"
        );
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": null, "c": "é\n"}})),
            "{\"a\":{\"c\":\"é\\n\"},\"b\":1}"
        );
    }
}
