//! The stored entry envelope.
//!
//! Every backend stores the same bytes: a small JSON document whose header fields come first and
//! whose `body` (the upstream response, verbatim) comes last:
//!
//! ```text
//! {"llmc":1,"kind":"chat","stored_at":1795000000123,"expires_at":1795000600123,
//!  "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21},
//!  "len":1234,"crc":3735928559,"body":{...the response, byte for byte...}}
//! ```
//!
//! * `llmc` is the envelope version; anything else (a LiteLLM entry, another program's value)
//!   is foreign and decodes to [`DecodeError::Foreign`].
//! * Times are Unix milliseconds; `expires_at` is absent for entries without expiry.
//! * `len` and `crc` (CRC-32 of the body) make truncation and corruption detectable without
//!   parsing the body, so a damaged entry is a miss, never a wrong answer.
//!
//! The whole envelope is valid JSON (object stores serve it as `application/json`), and a decode
//! borrows the body from the stored buffer without copying it.
//!
//! A second, **compact** form ([`Entry::encode_with`], module `compact`) is what shared and
//! persistent backends store by default: a binary header, the body compressed with zstd (and a
//! built-in dictionary of LLM answer skeletons) when that saves bytes, and embeddings stored as
//! packed floats when they print back exactly. [`Entry::decode`] reads both forms, so entries
//! written before and after coexist; the in-memory tiers keep the JSON form (no decompression on
//! a memory hit).

mod compact;
mod floats;
mod varint;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::CallKind;

/// Current envelope version.
pub const ENVELOPE_VERSION: u32 = 1;

const BODY_MARKER: &[u8] = b",\"body\":";
/// How a JSON envelope starts.
const JSON_PREFIX: &[u8] = b"{\"llmc\":";
/// Headers are far smaller than this; a marker further in means the value is not ours.
const MAX_HEADER_LEN: usize = 1024;

/// How an entry is written to a backend ([`Entry::encode_with`]). Reads accept every form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Encoding {
    /// The compact binary envelope (else the JSON one, and the fields below are ignored).
    pub compact: bool,
    /// Compress bodies with zstd when that saves bytes.
    pub compress: bool,
    /// Bodies (after float packing) shorter than this are not compressed.
    pub compress_min_bytes: usize,
    /// Store `"embedding": [...]` arrays as packed floats when they print back exactly.
    pub pack_floats: bool,
}

impl Encoding {
    /// The JSON envelope ([`Entry::encode`]).
    pub const JSON: Encoding = Encoding {
        compact: false,
        compress: false,
        compress_min_bytes: 0,
        pack_floats: false,
    };

    /// The compact envelope with compression and packed floats: the default of shared and
    /// persistent backends.
    pub const COMPACT: Encoding = Encoding {
        compact: true,
        compress: true,
        compress_min_bytes: 64,
        pack_floats: true,
    };

    /// Sets [`Encoding::compress`].
    pub const fn with_compress(mut self, v: bool) -> Self {
        self.compress = v;
        self
    }

    /// Sets [`Encoding::compress_min_bytes`].
    pub const fn with_compress_min_bytes(mut self, v: usize) -> Self {
        self.compress_min_bytes = v;
        self
    }

    /// Sets [`Encoding::pack_floats`].
    pub const fn with_pack_floats(mut self, v: bool) -> Self {
        self.pack_floats = v;
        self
    }
}

/// Token usage recorded with an entry (what a hit saves).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt (input) tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Total tokens.
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Member by member, saturating: an upstream's absurd counts cannot overflow a sum.
    pub fn saturating_add(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(other.total_tokens),
        }
    }

    /// Reads the `usage` object of an OpenAI-style response (`prompt_tokens`/`completion_tokens`,
    /// or the Responses/Anthropic `input_tokens`/`output_tokens`).
    pub fn from_response(response: &Value) -> Option<Usage> {
        let u = response.get("usage")?.as_object()?;
        let get = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| u.get(*n).and_then(Value::as_u64))
                .unwrap_or(0)
        };
        let prompt = get(&["prompt_tokens", "input_tokens"]);
        let completion = get(&["completion_tokens", "output_tokens"]);
        let total = u
            .get("total_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(prompt.saturating_add(completion));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
        })
    }
}

/// A decoded cache entry.
#[derive(Clone, PartialEq)]
pub struct Entry {
    /// The call kind the entry was stored for.
    pub kind: CallKind,
    /// When it was stored (Unix ms).
    pub stored_at_ms: u64,
    /// When it expires (Unix ms), if ever.
    pub expires_at_ms: Option<u64>,
    /// Token usage of the stored response.
    pub usage: Option<Usage>,
    /// How long the upstream call that produced it took (what a hit saves), if known.
    pub upstream_ms: Option<u64>,
    /// The response body, byte for byte.
    pub body: Bytes,
}

impl std::fmt::Debug for Entry {
    // Never print cached payloads: they may hold private conversation text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("kind", &self.kind)
            .field("stored_at_ms", &self.stored_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("usage", &self.usage)
            .field("upstream_ms", &self.upstream_ms)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Why a stored value did not decode. Every case is treated as a miss.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not an llm-cache envelope (another program's value, a LiteLLM entry).
    #[error("not an llm-cache envelope")]
    Foreign,
    /// An envelope of a version this build does not read.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u32),
    /// Shorter or longer than its header says.
    #[error("truncated or padded envelope: body is {actual} bytes, header says {expected}")]
    Truncated {
        /// Length announced by the header.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// The body checksum does not match.
    #[error("corrupt envelope: checksum mismatch")]
    Corrupt,
    /// The header is not valid.
    #[error("invalid envelope header: {0}")]
    Header(String),
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    llmc: u32,
    kind: &'a str,
    stored_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<u64>,
    len: usize,
    crc: u32,
}

#[derive(Deserialize)]
struct HeaderIn<'a> {
    llmc: u32,
    #[serde(borrow)]
    kind: &'a str,
    stored_at: u64,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    upstream_ms: Option<u64>,
    len: usize,
    crc: u32,
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Entry {
    /// A new entry stored now, expiring after `ttl` (if any).
    pub fn new(kind: CallKind, body: Bytes, usage: Option<Usage>, ttl: Option<Duration>) -> Self {
        let now = now_ms();
        Entry {
            kind,
            stored_at_ms: now,
            expires_at_ms: ttl.map(|t| now.saturating_add(t.as_millis() as u64)),
            usage,
            upstream_ms: None,
            body,
        }
    }

    /// Records how long the upstream call took.
    pub fn with_upstream_time(mut self, d: Option<Duration>) -> Self {
        self.upstream_ms = d.map(|d| d.as_millis() as u64);
        self
    }

    /// Age of the entry at `now_ms`.
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms))
    }

    /// Whether the entry has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| now_ms >= e)
    }

    /// Time left before expiry at `now_ms` (`None`: never expires).
    pub fn remaining_ttl(&self, now_ms: u64) -> Option<Duration> {
        self.expires_at_ms
            .map(|e| Duration::from_millis(e.saturating_sub(now_ms)))
    }

    /// Encodes the envelope.
    ///
    /// The body must be one JSON value (every response llm-cache stores is); it is embedded
    /// verbatim.
    pub fn encode(&self) -> Bytes {
        let header = HeaderOut {
            llmc: ENVELOPE_VERSION,
            kind: self.kind.as_str(),
            stored_at: self.stored_at_ms,
            expires_at: self.expires_at_ms,
            usage: self.usage.as_ref(),
            upstream_ms: self.upstream_ms,
            len: self.body.len(),
            crc: crc32fast::hash(&self.body),
        };
        let mut out = BytesMut::with_capacity(self.body.len() + 200);
        serde_json::to_writer((&mut out).writer(), &header).expect("header serializes");
        out.truncate(out.len() - 1); // drop the closing '}'
        out.extend_from_slice(BODY_MARKER);
        out.extend_from_slice(&self.body);
        out.put_u8(b'}');
        out.freeze()
    }

    /// Encodes the envelope in the form `enc` asks for: [`Entry::encode`] for
    /// [`Encoding::JSON`], else the compact form.
    pub fn encode_with(&self, enc: &Encoding) -> Bytes {
        if enc.compact {
            compact::encode(self, enc)
        } else {
            self.encode()
        }
    }

    /// Whether `raw` is a compact envelope (a memory tier re-encodes it as JSON).
    pub fn is_compact(raw: &[u8]) -> bool {
        raw.starts_with(compact::MAGIC)
    }

    /// How many leading bytes [`Entry::has_marker`] looks at.
    pub const MARKER_LEN: usize = 8;

    /// Whether `head` (the first [`Entry::MARKER_LEN`] bytes of a stored value, or all of a
    /// shorter one) starts like an envelope of either form. A shared store uses it to tell the
    /// cache's entries from another application's values under keys of the same shape. It
    /// does not check the rest: [`Entry::decode`] does.
    ///
    /// ```
    /// use cache_core::{CallKind, Encoding, Entry};
    /// let e = Entry::new(CallKind::Chat, "{}".into(), None, None);
    /// assert!(Entry::has_marker(&e.encode()[..Entry::MARKER_LEN]));
    /// assert!(Entry::has_marker(&e.encode_with(&Encoding::COMPACT)[..Entry::MARKER_LEN]));
    /// assert!(!Entry::has_marker(b"{\"timestamp\":1}"));
    /// ```
    pub fn has_marker(head: &[u8]) -> bool {
        const _: () = assert!(JSON_PREFIX.len() <= Entry::MARKER_LEN);
        head.starts_with(compact::MAGIC) || head.starts_with(JSON_PREFIX)
    }

    /// Decodes an envelope (either form), borrowing the body from `raw` when it is stored
    /// as is.
    ///
    /// # Errors
    /// A [`DecodeError`] for anything that is not an intact envelope of this version. Never
    /// panics, whatever the input.
    pub fn decode(raw: &Bytes) -> Result<Entry, DecodeError> {
        if raw.starts_with(compact::MAGIC) {
            return compact::decode(raw);
        }
        if !raw.starts_with(JSON_PREFIX) {
            return Err(DecodeError::Foreign);
        }
        let window = &raw[..raw.len().min(MAX_HEADER_LEN)];
        let pos = window
            .windows(BODY_MARKER.len())
            .position(|w| w == BODY_MARKER)
            .ok_or(DecodeError::Foreign)?;
        let mut header_buf = Vec::with_capacity(pos + 1);
        header_buf.extend_from_slice(&raw[..pos]);
        header_buf.push(b'}');
        let header: HeaderIn<'_> =
            serde_json::from_slice(&header_buf).map_err(|e| DecodeError::Header(e.to_string()))?;
        if header.llmc != ENVELOPE_VERSION {
            return Err(DecodeError::UnsupportedVersion(header.llmc));
        }
        let kind = CallKind::parse(header.kind)
            .ok_or_else(|| DecodeError::Header(format!("unknown kind `{}`", header.kind)))?;
        let body_start = pos + BODY_MARKER.len();
        let actual = raw.len().saturating_sub(body_start + 1);
        if raw.len() < body_start + 1 || raw[raw.len() - 1] != b'}' || actual != header.len {
            return Err(DecodeError::Truncated {
                expected: header.len,
                actual,
            });
        }
        let body = raw.slice(body_start..raw.len() - 1);
        if crc32fast::hash(&body) != header.crc {
            return Err(DecodeError::Corrupt);
        }
        Ok(Entry {
            kind,
            stored_at_ms: header.stored_at,
            expires_at_ms: header.expires_at,
            usage: header.usage,
            upstream_ms: header.upstream_ms,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Entry {
        Entry {
            kind: CallKind::Chat,
            stored_at_ms: 1_795_000_000_123,
            expires_at_ms: Some(1_795_000_600_123),
            usage: Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 12,
                total_tokens: 21,
            }),
            upstream_ms: None,
            body: Bytes::from_static(
                br#"{"id":"chatcmpl-1","choices":[{"message":{"content":"hi \"body\":"}}]}"#,
            ),
        }
    }

    #[test]
    fn round_trip_is_exact_and_valid_json() {
        let e = sample();
        let raw = e.encode();
        let v: Value = serde_json::from_slice(&raw).expect("envelope is JSON");
        assert_eq!(v["llmc"], json!(1));
        assert_eq!(v["body"]["id"], json!("chatcmpl-1"));
        let d = Entry::decode(&raw).unwrap();
        assert_eq!(d, e);
        let no_exp = Entry {
            expires_at_ms: None,
            usage: None,
            ..sample()
        };
        assert_eq!(Entry::decode(&no_exp.encode()).unwrap(), no_exp);
        let timed = sample().with_upstream_time(Some(Duration::from_millis(1234)));
        assert_eq!(
            Entry::decode(&timed.encode()).unwrap().upstream_ms,
            Some(1234)
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let raw = sample().encode();
        for cut in 0..raw.len() {
            assert!(Entry::decode(&raw.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_single_byte_corruption_is_detected_or_harmless() {
        let e = sample();
        let raw = e.encode();
        for i in 0..raw.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut bad = raw.to_vec();
                bad[i] ^= flip;
                match Entry::decode(&Bytes::from(bad)) {
                    Err(_) => {}
                    // A flip in a header number can still decode; the body must be intact.
                    Ok(d) => assert_eq!(d.body, e.body, "byte {i} flip {flip:#x}"),
                }
            }
        }
    }

    #[test]
    fn foreign_values_are_rejected() {
        for raw in [
            &b""[..],
            b"{}",
            b"null",
            b"\x00\x01\x02",
            br#"{"timestamp": 1795000000.1, "response": "{\"id\":1}"}"#,
            br#"{"llmc":2,"kind":"chat","stored_at":1,"len":2,"crc":0,"body":{}}"#,
            br#"{"llmc":1,"kind":"video","stored_at":1,"len":2,"crc":0,"body":{}}"#,
        ] {
            assert!(Entry::decode(&Bytes::copy_from_slice(raw)).is_err());
        }
    }

    fn answer(words: usize) -> Bytes {
        let text: Vec<String> = (0..words)
            .map(|i| {
                [
                    "the", "cache", "answers", "quickly", "when", "asked", "again",
                ][i % 7]
                    .to_owned()
            })
            .collect();
        Bytes::from(format!(
            r#"{{"id":"chatcmpl-AbC123","object":"chat.completion","created":1795000000,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":{words},"total_tokens":{}}},"system_fingerprint":"fp_1"}}"#,
            text.join(" "),
            words + 12
        ))
    }

    #[test]
    fn compact_round_trips_and_is_smaller() {
        for body in [
            sample().body,
            answer(5),
            answer(400),
            Bytes::from_static(b"{}"),
            Bytes::new(),
        ] {
            let e = Entry {
                body: body.clone(),
                ..sample()
            };
            for enc in [
                Encoding::COMPACT,
                Encoding::COMPACT.with_compress(false),
                Encoding::COMPACT.with_pack_floats(false),
            ] {
                let raw = e.encode_with(&enc);
                assert!(Entry::is_compact(&raw));
                assert_eq!(Entry::decode(&raw).unwrap(), e);
            }
            let plain = Entry {
                expires_at_ms: None,
                usage: None,
                ..e.clone()
            };
            assert_eq!(
                Entry::decode(&plain.encode_with(&Encoding::COMPACT)).unwrap(),
                plain
            );
        }
        let e = Entry {
            body: answer(400),
            ..sample()
        };
        let (json, compact) = (e.encode().len(), e.encode_with(&Encoding::COMPACT).len());
        assert!(compact * 4 < json, "{compact} vs {json}");
        // The header alone is much smaller than the JSON one.
        let tiny = Entry {
            body: Bytes::from_static(b"{}"),
            ..sample()
        };
        assert!(tiny.encode_with(&Encoding::COMPACT).len() + 60 < tiny.encode().len());
    }

    #[test]
    fn compact_truncations_and_corruptions_are_detected() {
        for body in [answer(40), answer(3)] {
            let e = Entry { body, ..sample() };
            let raw = e.encode_with(&Encoding::COMPACT);
            for cut in 0..raw.len() {
                assert!(Entry::decode(&raw.slice(..cut)).is_err(), "cut at {cut}");
            }
            for i in 0..raw.len() {
                for flip in [0x01u8, 0x20, 0x80] {
                    let mut bad = raw.to_vec();
                    bad[i] ^= flip;
                    if let Ok(d) = Entry::decode(&Bytes::from(bad)) {
                        assert_eq!(d, e, "byte {i} flip {flip:#x} decoded to another entry");
                    }
                }
            }
        }
    }

    #[test]
    fn usage_is_read_from_responses() {
        let u =
            Usage::from_response(&json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}));
        assert_eq!(u.unwrap().total_tokens, 7);
        let u = Usage::from_response(
            &json!({"usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 8}}),
        );
        assert_eq!(u.unwrap().total_tokens, 8);
        assert!(Usage::from_response(&json!({})).is_none());
    }
}
