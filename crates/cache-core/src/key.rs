//! Cache keys: which request members count, their canonical form, and the hash.
//!
//! The full specification, with golden vectors, is `docs/key-spec.md`. In short:
//!
//! ```text
//! preimage = "llm-cache/key/v2\n" + call_kind + "\n" [+ "partition:" + json(p) + "\n"]
//!            + canonical_json(keyed members)
//! key      = [namespace + ":"] + lowercase_hex(blake3(preimage))
//! ```
//!
//! * **The rule:** every member of a request is either *stripped* (never sent upstream: LiteLLM's
//!   own fields, credentials, endpoints, directives; [`is_stripped`]) or *keyed*. The only
//!   members that are forwarded but not keyed are [`UNKEYED_FORWARDED_PARAMS`] (`stream`,
//!   `stream_options`), which cannot change the answer: one entry serves streaming and
//!   non-streaming callers. A top-level `null` equals an omitted member; nested `null`s count.
//! * Canonical JSON: object members sorted by key at every depth, no whitespace, integers in
//!   decimal and floats in shortest round-trip scientific form (so `1` and `1.0` differ, as they
//!   do on the wire; `1.0` and `1e0` are the same float).
//! * The model is replaced by its model group or caching group when the caller names one.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{CacheError, Result};

/// Version of the key specification. It is written into every preimage
/// (`llm-cache/key/v{KEY_SPEC_VERSION}`), so entries written under another version simply miss.
pub const KEY_SPEC_VERSION: u32 = 2;

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

/// Request members that are LiteLLM's own (or llm-cache's): directives, credentials, endpoints,
/// retries, routing and bookkeeping. A provider must never see them, so the proxy strips them
/// before forwarding, and they are never keyed. Sorted (binary search). Names starting with
/// `litellm_`, `_litellm` or `user_api_key` are stripped too ([`is_stripped`]).
///
/// A deployment may opt in to forwarding `metadata` (OpenAI's stored-completions metadata); it
/// is then keyed like any forwarded member ([`KeyContext::forwarded`]).
pub const STRIPPED_PARAMS: &[&str] = &[
    "acompletion",
    "api_base",
    "api_key",
    "api_version",
    "azure",
    "azure_ad_token",
    "azure_ad_token_provider",
    "base_model",
    "base_url",
    "budget_duration",
    "cache",
    "cache_key",
    "caching",
    "caching_groups",
    "client_id",
    "client_secret",
    "context_window_fallback_dict",
    "cooldown_time",
    "custom_llm_provider",
    "deployment_id",
    "drop_params",
    "extra_headers",
    "fallback_depth",
    "fallbacks",
    "force_timeout",
    "headers",
    "input_cost_per_second",
    "input_cost_per_token",
    "logger_fn",
    "max_budget",
    "max_fallbacks",
    "max_parallel_requests",
    "max_retries",
    "metadata",
    "mock_response",
    "mock_timeout",
    "mock_tool_calls",
    "model_file_id_mapping",
    "model_info",
    "model_list",
    "no-log",
    "num_retries",
    "organization",
    "output_cost_per_second",
    "output_cost_per_token",
    "preset_cache_key",
    "proxy_server_request",
    "region_name",
    "request_timeout",
    "retry_policy",
    "retry_strategy",
    "rpm",
    "secret_fields",
    "stream_timeout",
    "tags",
    "tenant_id",
    "timeout",
    "tpm",
    "ttl",
    "use_in_pass_through",
    "verbose",
    "weight",
];

/// Members that are forwarded upstream but not keyed, because they cannot change the answer:
/// one stored entry serves streaming and non-streaming callers (the proxy reshapes
/// `stream_options` itself when it replays an entry as a stream).
pub const UNKEYED_FORWARDED_PARAMS: &[&str] = &["stream", "stream_options"];

/// Members a deployment may opt in to forwarding (and then keys): see
/// [`KeyContext::forwarded`].
pub const OPT_IN_FORWARDED_PARAMS: &[&str] = &["metadata"];

/// Whether a request member is stripped before forwarding (and so never keyed): a name in
/// [`STRIPPED_PARAMS`] or one starting with `litellm_`, `_litellm` or `user_api_key`.
pub fn is_stripped(name: &str) -> bool {
    STRIPPED_PARAMS.binary_search(&name).is_ok()
        || name.starts_with("litellm_")
        || name.starts_with("_litellm")
        || name.starts_with("user_api_key")
}

/// A user-supplied key function: given the call kind and the request, return the key (without
/// namespace) to use, or `None` to fall back to the standard key.
pub type KeyFn = Arc<dyn Fn(CallKind, &Value) -> Option<String> + Send + Sync>;

/// How keys are computed. Built once from the configuration and shared.
#[derive(Clone, Default)]
pub struct KeyOptions {
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
    /// different partitions never share an entry (custom keys included).
    pub partition: Option<&'a str>,
    /// Members of [`OPT_IN_FORWARDED_PARAMS`] this request forwards upstream (a deployment
    /// that opts in to `metadata`): they are keyed instead of ignored.
    pub forwarded: &'a [&'a str],
    /// Request headers forwarded upstream that can change the answer (Anthropic's
    /// `anthropic-version`, `anthropic-beta`): `(lowercase name, value)`, keyed.
    pub headers: &'a [(&'a str, &'a str)],
    /// Top-level members of the request kept as raw JSON text (one value each) instead of
    /// parsed (the bulk of a large body, which is only forwarded): keyed exactly as if they
    /// were members of the request object, without building a tree (the preimage is byte for
    /// byte the same; text that is not one JSON value is an error). They must not also be
    /// members of the request value. A `key_fn` sees the parsed members only.
    pub raw: &'a [(&'a str, &'a str)],
}

/// Whether a top-level member is keyed, given the opt-in members the request forwards.
pub fn is_keyed(name: &str, forwarded: &[&str]) -> bool {
    if UNKEYED_FORWARDED_PARAMS.contains(&name) {
        return false;
    }
    !is_stripped(name) || forwarded.contains(&name)
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
            // A custom key never crosses a partition: the partition is hashed into it.
            return Ok(match ctx.partition {
                None => CacheKey::new(ctx.namespace, &custom),
                Some(p) => {
                    let mut buf = Vec::with_capacity(custom.len() + p.len() + 48);
                    write_tag(&mut buf, "custom-key");
                    buf.extend_from_slice(b"partition:");
                    write_str(&mut buf, p);
                    buf.push(b'\n');
                    buf.extend_from_slice(custom.as_bytes());
                    CacheKey::new(ctx.namespace, &hash_hex(&buf))
                }
            });
        }
        let mut buf = Vec::with_capacity(estimate_len(request, ctx));
        self.write_preimage(&mut buf, kind, obj, ctx, None)?;
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
        let mut buf = Vec::with_capacity(estimate_len(request, ctx));
        self.write_preimage(&mut buf, kind, obj, ctx, None)?;
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
        self.write_preimage(&mut buf, kind, obj, ctx, None)?;
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
        // The preimages differ only in the input: the part before it is hashed once (a blake3
        // state cloned per input), the part after it is written once, so N inputs beside a large
        // rest of the request cost the rest about once, not N times.
        let mut shared: Option<(blake3::Hasher, Vec<u8>)> = None;
        // A null input is an absent one: every null input has the same key.
        let mut null_key: Option<CacheKey> = None;
        let mut item = Vec::new();
        for input in inputs {
            if let (Some(key), true) = (&null_key, input.is_null()) {
                keys.push((key.clone(), input));
                continue;
            }
            if let (Some((before, after)), false) = (&shared, input.is_null()) {
                item.clear();
                write_canonical(&mut item, &input);
                let mut h = before.clone();
                h.update(&item);
                h.update(after);
                let hex = h.finalize().to_hex();
                keys.push((CacheKey::new(ctx.namespace, &hex), input));
                continue;
            }
            buf.clear();
            let at = self.write_preimage(&mut buf, CallKind::Embedding, obj, ctx, Some(&input))?;
            if shared.is_none()
                && let Some((start, end)) = at
            {
                let mut before = blake3::Hasher::new();
                before.update(&buf[..start]);
                shared = Some((before, buf[end..].to_vec()));
            }
            let key = CacheKey::new(ctx.namespace, &hash_hex(&buf));
            if input.is_null() {
                null_key = Some(key.clone());
            }
            keys.push((key, input));
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

    /// Writes the preimage. With `item = Some(v)`, `input` is replaced by `v` (embedding items),
    /// and the returned range is where `v` was written.
    fn write_preimage(
        &self,
        buf: &mut Vec<u8>,
        kind: CallKind,
        obj: &Map<String, Value>,
        ctx: &KeyContext<'_>,
        item: Option<&Value>,
    ) -> Result<Option<(usize, usize)>> {
        write_tag(buf, "key");
        buf.extend_from_slice(kind.as_str().as_bytes());
        buf.push(b'\n');
        if let Some(p) = ctx.partition {
            buf.extend_from_slice(b"partition:");
            write_str(buf, p);
            buf.push(b'\n');
        }
        if !ctx.headers.is_empty() {
            let mut headers: Vec<(&str, &str)> = ctx.headers.to_vec();
            headers.sort_unstable();
            buf.extend_from_slice(b"headers:{");
            for (i, (name, value)) in headers.into_iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_str(buf, name);
                buf.push(b':');
                write_str(buf, value);
            }
            buf.extend_from_slice(b"}\n");
        }

        let model_override = self.model_value(obj, ctx);
        let mut members: Vec<(&str, Member<'_>)> = Vec::with_capacity(obj.len() + ctx.raw.len());
        for (k, v) in obj {
            if !is_keyed(k, ctx.forwarded) {
                continue;
            }
            let v = match (k.as_str(), item) {
                ("input", Some(item)) => item,
                _ => v,
            };
            if v.is_null() {
                continue;
            }
            members.push((k.as_str(), Member::Value(v)));
        }
        if item.is_some() && !obj.contains_key("input") {
            members.push(("input", Member::Value(item.unwrap_or(&Value::Null))));
        }
        for (k, raw) in ctx.raw {
            if is_keyed(k, ctx.forwarded) && raw.trim() != "null" {
                members.push((k, Member::Raw(raw)));
            }
        }
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));

        buf.push(b'{');
        let mut first = true;
        let mut item_at = None;
        for (k, v) in members {
            if !first {
                buf.push(b',');
            }
            first = false;
            write_str(buf, k);
            buf.push(b':');
            match (k, &model_override, v) {
                ("model", Some(m), _) => write_str(buf, m),
                ("input", _, Member::Value(v)) if item.is_some() => {
                    let start = buf.len();
                    write_canonical(buf, v);
                    item_at = Some((start, buf.len()));
                }
                (_, _, Member::Value(v)) => write_canonical(buf, v),
                (_, _, Member::Raw(raw)) => write_canonical_raw(buf, raw).map_err(|e| {
                    CacheError::Config(format!("request member `{k}` is not valid JSON: {e}"))
                })?,
            }
        }
        buf.push(b'}');
        Ok(item_at)
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

/// `llm-cache/{what}/v{KEY_SPEC_VERSION}\n`: the first line of every hash input.
fn write_tag(buf: &mut Vec<u8>, what: &str) {
    buf.extend_from_slice(b"llm-cache/");
    buf.extend_from_slice(what.as_bytes());
    let _ = writeln!(buf, "/v{KEY_SPEC_VERSION}");
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

/// A keyed member: parsed, or raw JSON text.
#[derive(Clone, Copy)]
enum Member<'a> {
    Value(&'a Value),
    Raw(&'a str),
}

fn estimate_len(v: &Value, ctx: &KeyContext<'_>) -> usize {
    let raw: usize = ctx.raw.iter().map(|(k, r)| k.len() + r.len() + 4).sum();
    raw + estimate_value_len(v)
}

fn estimate_value_len(v: &Value) -> usize {
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

/// The canonical JSON text of a value: object members sorted by key at every depth, no
/// whitespace, integers in decimal, floats in shortest round-trip scientific form. Nested `null`s
/// are kept (`{"const": null}` is not `{}`); only the request's top-level `null` members are
/// dropped, by the key itself.
pub fn canonical_json(value: &Value) -> String {
    let mut buf = Vec::with_capacity(estimate_value_len(value));
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

/// Writes the canonical JSON of raw JSON text without building a tree: byte for byte what
/// [`canonical_json`] writes for the parsed value (duplicate object members: the last wins, as
/// when parsed). Memory: the output, plus the members of one object at a time.
///
/// # Errors
/// The text is not one JSON value.
pub fn write_canonical_raw(buf: &mut Vec<u8>, raw: &str) -> serde_json::Result<()> {
    let mut de = serde_json::Deserializer::from_str(raw);
    Canonical(buf).deserialize(&mut de)?;
    de.end()
}

/// A serde seed and visitor that writes the canonical form of what it visits.
struct Canonical<'b>(&'b mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        self.0.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<(), E> {
        self.0
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<(), E> {
        write_number(self.0, &Number::from(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<(), E> {
        write_number(self.0, &Number::from(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<(), E> {
        // As `Value` does: a float that is not finite is null.
        match Number::from_f64(v) {
            Some(n) => write_number(self.0, &n),
            None => self.0.extend_from_slice(b"null"),
        }
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<(), E> {
        write_str(self.0, v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let buf = self.0;
        buf.push(b'[');
        let mut first = true;
        loop {
            let mark = buf.len();
            if !first {
                buf.push(b',');
            }
            if seq.next_element_seed(Canonical(&mut *buf))?.is_none() {
                buf.truncate(mark);
                break;
            }
            first = false;
        }
        buf.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let mut v = Vec::new();
            map.next_value_seed(Canonical(&mut v))?;
            members.push((k, v));
        }
        // Sorted by key; of duplicates the last one (a stable sort keeps their order).
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let buf = self.0;
        buf.push(b'{');
        let mut first = true;
        for (i, (k, v)) in members.iter().enumerate() {
            if members.get(i + 1).is_some_and(|next| next.0 == *k) {
                continue;
            }
            if !first {
                buf.push(b',');
            }
            first = false;
            write_str(buf, k);
            buf.push(b':');
            buf.extend_from_slice(v);
        }
        buf.push(b'}');
        Ok(())
    }
}

fn write_number(buf: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        let _ = write!(buf, "{u}");
    } else if let Some(i) = n.as_i64() {
        let _ = write!(buf, "{i}");
    } else if let Some(f) = n.as_f64() {
        // A float stays a float (`1.0` is not `1`: typed parsers upstream tell them apart), in
        // scientific form with the shortest significand that round-trips (`1e0`, `1e-5`,
        // `1.5e0`, `-0e0`): defined by the spec, independent of any JSON library's printing.
        let _ = write!(buf, "{f:e}");
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
    fn stripped_list_is_sorted_and_disjoint_from_forwarded() {
        assert!(STRIPPED_PARAMS.windows(2).all(|w| w[0] < w[1]));
        for p in UNKEYED_FORWARDED_PARAMS {
            assert!(!is_stripped(p), "{p}");
        }
        for p in OPT_IN_FORWARDED_PARAMS {
            assert!(is_stripped(p), "{p}");
        }
        assert!(is_stripped("litellm_trace_id") && is_stripped("user_api_key_team_id"));
        assert!(!is_stripped("user") && !is_stripped("repetition_penalty"));
    }

    #[test]
    fn the_version_is_in_the_preimage() {
        let p = KeyBuilder::default()
            .preimage(
                CallKind::Chat,
                &json!({"model": "m"}),
                &KeyContext::default(),
            )
            .unwrap();
        assert!(
            p.starts_with(&format!("llm-cache/key/v{KEY_SPEC_VERSION}\nchat\n")),
            "{p}"
        );
    }

    #[test]
    fn every_forwarded_member_is_keyed_at_any_depth() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        for (k, v1, v2) in [
            ("repetition_penalty", json!(1.0), json!(2.0)),
            ("min_p", json!(0.1), json!(0.2)),
            ("guided_choice", json!(["a", "b"]), json!(["b", "a"])),
            (
                "guided_json",
                json!({"type": "object"}),
                json!({"type": "array"}),
            ),
            (
                "chat_template_kwargs",
                json!({"enable_thinking": true}),
                json!({"enable_thinking": false}),
            ),
            (
                "options",
                json!({"num_ctx": 4096}),
                json!({"num_ctx": 8192}),
            ),
            ("input_type", json!("query"), json!("document")),
            (
                "extra_body",
                json!({"a": {"b": [1]}}),
                json!({"a": {"b": [2]}}),
            ),
        ] {
            let mut a = base.clone();
            a[k] = v1;
            let mut b = base.clone();
            b[k] = v2;
            assert_ne!(
                key(a.clone()),
                key(b),
                "{k} must be keyed, nested values too"
            );
            assert_ne!(key(a), key(base.clone()), "{k} present vs absent");
        }
    }

    #[test]
    fn top_level_null_is_absent_nested_null_counts() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let mut top = base.clone();
        top["seed"] = Value::Null;
        assert_eq!(key(base.clone()), key(top));
        let mut nested = base.clone();
        nested["messages"][0]["name"] = Value::Null;
        assert_ne!(key(base.clone()), key(nested), "a nested null is a member");
        let schema_a = json!({"model": "m", "response_format": {"schema": {"const": null}}});
        let schema_b = json!({"model": "m", "response_format": {"schema": {}}});
        assert_ne!(key(schema_a), key(schema_b));
    }

    #[test]
    fn stripped_and_stream_members_are_not_keyed() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with_noise = json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "seed": null, "metadata": {"a": 1}, "cache": {"ttl": 5}, "api_key": "sk",
            "api_base": "http://x", "timeout": 3, "stream": true, "num_retries": 2,
            "stream_options": {"include_usage": true}, "litellm_metadata": {"x": 1},
            "mock_response": "hi", "fallbacks": ["a"], "request_timeout": 3
        });
        assert_eq!(key(base), key(with_noise));
    }

    #[test]
    fn forwarded_metadata_is_keyed() {
        let kb = KeyBuilder::default();
        let a = json!({"model": "m", "metadata": {"k": "a"}});
        let b = json!({"model": "m", "metadata": {"k": "b"}});
        let plain = KeyContext::default();
        assert_eq!(
            kb.key(CallKind::Chat, &a, &plain).unwrap(),
            kb.key(CallKind::Chat, &b, &plain).unwrap()
        );
        let fwd = KeyContext {
            forwarded: &["metadata"],
            ..Default::default()
        };
        assert_ne!(
            kb.key(CallKind::Chat, &a, &fwd).unwrap(),
            kb.key(CallKind::Chat, &b, &fwd).unwrap()
        );
    }

    #[test]
    fn forwarded_headers_are_keyed() {
        let kb = KeyBuilder::default();
        let req = json!({"model": "claude", "messages": []});
        let with = |h: &[(&str, &str)]| {
            kb.preimage(
                CallKind::AnthropicMessages,
                &req,
                &KeyContext {
                    headers: h,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        assert!(!with(&[]).contains("headers:"));
        let a = with(&[("anthropic-version", "2023-06-01"), ("anthropic-beta", "x")]);
        let b = with(&[("anthropic-beta", "x"), ("anthropic-version", "2023-06-01")]);
        assert_eq!(a, b, "order does not matter");
        assert!(
            a.contains("headers:{\"anthropic-beta\":\"x\",\"anthropic-version\":\"2023-06-01\"}\n")
        );
        assert_ne!(a, with(&[("anthropic-version", "2024-01-01")]));
    }

    #[test]
    fn a_custom_key_never_crosses_a_partition() {
        let kb = KeyBuilder::new(KeyOptions {
            allow_client_cache_key: true,
            ..Default::default()
        });
        let req = json!({"model": "m", "cache_key": "shared"});
        let k = |p: Option<&str>| {
            kb.key(
                CallKind::Chat,
                &req,
                &KeyContext {
                    partition: p,
                    namespace: Some("ns"),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        assert_eq!(k(None).as_str(), "ns:shared");
        assert_ne!(k(Some("a")), k(Some("b")));
        assert_ne!(k(Some("a")), k(None));
        assert_eq!(k(Some("a")), k(Some("a")));
        assert_eq!(k(Some("a")).namespace(), Some("ns"));
    }

    #[test]
    fn order_whitespace_and_number_form_do_not_matter() {
        let a: Value = serde_json::from_str(
            r#"{"model":"gpt-4o","temperature":1,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "messages" : [ {"content":"hi", "role":"user"} ],
                 "temperature": 1, "model": "gpt-4o" }"#,
        )
        .unwrap();
        let c: Value = serde_json::from_str(
            r#"{"temperature":1e0,"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(key(a.clone()), key(b));
        assert_ne!(key(a), key(c.clone()), "an integer is not a float");
        let d: Value = serde_json::from_str(
            r#"{"temperature":1.0,"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(key(c), key(d), "1e0 and 1.0 are the same float");
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
    fn every_item_keys_as_if_sent_alone() {
        // Item keys after the first reuse the shared parts of the preimage: each must equal the
        // key of a request with that input alone (nulls, nested lists, members on both sides of
        // `input`, a partition, an alias).
        let kb = KeyBuilder::new(KeyOptions {
            model_aliases: [("e".to_owned(), "emb".to_owned())].into(),
            ..KeyOptions::default()
        });
        let ctx = KeyContext {
            partition: Some("t1"),
            ..KeyContext::default()
        };
        let inputs = json!(["a", null, "b", ["x", 1], {"k": [null]}, "", null, "a"]);
        let request = json!({"model": "e", "dimensions": 8, "user": "u", "zz": {"big": "rest"},
            "encoding_format": "float", "input": inputs});
        let keys = kb.embedding_item_keys(&request, &ctx).unwrap();
        assert_eq!(keys.len(), 8);
        for (i, (key, item)) in keys.iter().enumerate() {
            assert_eq!(item, &inputs[i]);
            let mut alone = request.clone();
            alone["input"] = json!([item]);
            let single = kb.embedding_item_keys(&alone, &ctx).unwrap();
            assert_eq!(&single[0].0, key, "input {i}: {item}");
        }
        assert_eq!(keys[0].0, keys[7].0);
        assert_ne!(keys[0].0, keys[2].0);
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
            canonical_json(&json!([1, 1.0, -0.0, 1e-5, 0.1, 1e300, 1.5, -3])),
            "[1,1e0,-0e0,1e-5,1e-1,1e300,1.5e0,-3]"
        );
        assert_eq!(
            canonical_json(&json!(18446744073709551615u64)),
            "18446744073709551615"
        );
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": null, "c": "é\n"}})),
            "{\"a\":{\"c\":\"é\\n\",\"d\":null},\"b\":1}"
        );
    }

    /// A JSON text with the variety clients send: nesting, escapes, every number form, random
    /// whitespace and member order, duplicate members.
    fn random_json(seed: &mut u64, depth: u32, out: &mut String) {
        fn step(seed: &mut u64, n: u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed % n
        }
        macro_rules! next {
            ($n:expr) => {
                step(seed, $n)
            };
        }
        let ws = [" ", "", "\n  ", "\t"];
        let choice = if depth > 3 { next!(6) } else { next!(8) };
        match choice {
            0 => out.push_str(["null", "true", "false"][next!(3) as usize]),
            1 => out.push_str(
                [
                    "0",
                    "-0",
                    "1",
                    "-1",
                    "1.0",
                    "1e3",
                    "1E-7",
                    "-2.5e+10",
                    "18446744073709551615",
                    "18446744073709551616",
                    "-9223372036854775808",
                    "-9223372036854775809",
                    "0.1",
                    "123456789.123456789",
                    "5e-324",
                    "1.7976931348623157e308",
                ][next!(16) as usize],
            ),
            2..=5 => {
                let parts = [
                    "a",
                    "é",
                    "\\n",
                    "\\u00e9",
                    "\\ud83d\\ude00",
                    "\\\"",
                    "\\\\",
                    "\\/",
                    "\\u0001",
                    "\\t",
                    "x y",
                    "💡",
                ];
                out.push('"');
                for _ in 0..next!(5) {
                    out.push_str(parts[next!(parts.len() as u64) as usize]);
                }
                out.push('"');
            }
            6 => {
                out.push('[');
                for i in 0..next!(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws[next!(4) as usize]);
                    random_json(seed, depth + 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..next!(5) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws[next!(4) as usize]);
                    // A small key space: duplicates happen.
                    let key = ["a", "b", "é", "role", "content", "A", "\\u0061"][next!(7) as usize];
                    out.push_str(&format!("\"{key}\":"));
                    out.push_str(ws[next!(4) as usize]);
                    random_json(seed, depth + 1, out);
                }
                out.push('}');
            }
        }
    }

    #[test]
    fn raw_text_is_keyed_as_its_parsed_value() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            let mut text = String::new();
            random_json(&mut seed, 0, &mut text);
            let parsed: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let mut raw = Vec::new();
            write_canonical_raw(&mut raw, &text).unwrap();
            assert_eq!(
                String::from_utf8(raw).unwrap(),
                canonical_json(&parsed),
                "{text}"
            );
        }
        // Duplicate members: the last one wins, as when parsed.
        let mut raw = Vec::new();
        write_canonical_raw(&mut raw, r#"{"b":1,"a":2,"b":{"y":1,"x":2},"a":3}"#).unwrap();
        assert_eq!(raw, br#"{"a":3,"b":{"x":2,"y":1}}"#);
        // Not one JSON value: an error, never a key.
        for bad in ["", "{", "[1,]", "1 2", "{\"a\" 1}", "nul"] {
            assert!(write_canonical_raw(&mut Vec::new(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn raw_members_give_the_key_of_the_parsed_request() {
        let kb = KeyBuilder::default();
        let full = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}, {"content": "x", "role": "assistant"}],
            "temperature": 0.5,
            "user": "stripped",
            "metadata": {"a": 1},
            "tools": null,
        });
        let ctx = KeyContext::default();
        let expected = kb.key(CallKind::Chat, &full, &ctx).unwrap();
        let texts = [
            (
                "messages",
                r#"[ {"content":"hi","role":"user"}, {"role":"assistant","content":"x"} ]"#,
            ),
            ("user", r#""stripped""#),
            ("metadata", r#"{"a": 1}"#),
            ("tools", "null"),
        ];
        let raw: Vec<(&str, &str)> = texts.to_vec();
        let split = KeyContext { raw: &raw, ..ctx };
        let parsed = json!({"model": "m", "temperature": 0.5});
        assert_eq!(kb.key(CallKind::Chat, &parsed, &split).unwrap(), expected);
        // A raw member is keyed: changing it changes the key.
        let raw2 = [("messages", r#"[{"role":"user","content":"ho"}]"#)];
        let changed = KeyContext { raw: &raw2, ..ctx };
        assert_ne!(kb.key(CallKind::Chat, &parsed, &changed).unwrap(), expected);
        // Opt-in forwarded members are keyed when forwarded, raw or not.
        let fwd = ["metadata"];
        let with_fwd = KeyContext {
            forwarded: &fwd,
            ..ctx
        };
        let split_fwd = KeyContext {
            forwarded: &fwd,
            raw: &raw,
            ..ctx
        };
        assert_eq!(
            kb.key(CallKind::Chat, &parsed, &split_fwd).unwrap(),
            kb.key(CallKind::Chat, &full, &with_fwd).unwrap()
        );
    }
}
