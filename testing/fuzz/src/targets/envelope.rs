//! `envelope`: the stored-entry decoder (`Entry::decode`) on arbitrary bytes and on valid
//! envelopes (JSON and compact: compressed, packed floats) with bytes flipped, inserted,
//! removed, duplicated and truncated; and `Usage::from_response` on arbitrary response JSON.

use bytes::Bytes;
use cache_core::envelope::{Encoding, Entry, Usage};
use cache_core::key::CallKind;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::strategies::{self, Blob, Mutation};

/// An entry to encode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntrySpec {
    /// Index into `CallKind::ALL`.
    pub kind: u8,
    /// Stored at (Unix ms).
    pub stored_at: u64,
    /// Expires at (Unix ms).
    pub expires_at: Option<u64>,
    /// Usage: prompt, completion, total.
    pub usage: Option<(u64, u64, u64)>,
    /// Upstream time.
    pub upstream_ms: Option<u64>,
    /// The body.
    pub body: Blob,
    /// Encoded in the compact form (else JSON).
    #[serde(default)]
    pub compact: bool,
}

impl EntrySpec {
    fn entry(&self) -> Entry {
        let mut e = Entry::new(
            CallKind::ALL[self.kind as usize % CallKind::ALL.len()],
            Bytes::copy_from_slice(self.body.bytes()),
            self.usage.map(|(p, c, t)| Usage {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: t,
            }),
            None,
        );
        e.stored_at_ms = self.stored_at;
        e.expires_at_ms = self.expires_at;
        e.upstream_ms = self.upstream_ms;
        e
    }

    fn encode(&self) -> Bytes {
        let enc = if self.compact {
            Encoding::COMPACT
        } else {
            Encoding::JSON
        };
        self.entry().encode_with(&enc)
    }
}

/// An embeddings response whose arrays are printed in one style, sometimes spoilt.
fn embeddings_body() -> BoxedStrategy<Blob> {
    (
        proptest::collection::vec(proptest::num::f32::NORMAL | proptest::num::f32::ZERO, 1..64),
        0u8..4,
        prop_oneof![Just(","), Just(", "), Just(",\n        ")],
        proptest::option::weighted(0.2, (any::<usize>(), "[a-z0-9 .e+-]{0,3}")),
    )
        .prop_map(|(vals, style, sep, spoil)| {
            let mut nums: Vec<String> = vals
                .iter()
                .map(|v| match style {
                    0 => ryu::Buffer::new().format_finite(*v).to_owned(),
                    1 => ryu::Buffer::new().format_finite(f64::from(*v)).to_owned(),
                    2 => format!("{v:e}"),
                    _ => format!("{}", f64::from(*v)),
                })
                .collect();
            if let Some((i, junk)) = spoil {
                let n = nums.len();
                nums[i % n] = junk;
            }
            Blob::Text(format!(
                "{{\"object\":\"list\",\"data\":[{{\"object\":\"embedding\",\"index\":0,\"embedding\":[{}]}}],\"model\":\"m\"}}",
                nums.join(sep)
            ))
        })
        .boxed()
}

/// One case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// A valid envelope, then edits.
    Mutated {
        /// The entry.
        entry: EntrySpec,
        /// The edits.
        edits: Vec<Mutation>,
    },
    /// Arbitrary bytes.
    Raw(Blob),
    /// `Usage::from_response` on a response.
    Usage(Value),
}

fn body() -> BoxedStrategy<Blob> {
    prop_oneof![
        6 => strategies::json().prop_map(|v| Blob::Text(v.to_string())),
        2 => strategies::bytes().prop_map(Blob::new),
        1 => (0usize..2_000_000).prop_map(|n| Blob::Text(format!("\"{}\"", "x".repeat(n)))),
        2 => embeddings_body(),
    ]
    .boxed()
}

fn entry() -> BoxedStrategy<EntrySpec> {
    let big = || {
        prop_oneof![
            3 => 0u64..10_000,
            1 => Just(u64::MAX),
            1 => any::<u64>(),
        ]
    };
    (
        any::<u8>(),
        prop_oneof![Just(1_795_000_000_123u64), any::<u64>()],
        proptest::option::of(big()),
        proptest::option::of((big(), big(), big())),
        proptest::option::of(big()),
        body(),
        any::<bool>(),
    )
        .prop_map(
            |(kind, stored_at, expires_at, usage, upstream_ms, body, compact)| EntrySpec {
                kind,
                stored_at,
                expires_at,
                usage,
                upstream_ms,
                body,
                compact,
            },
        )
        .boxed()
}

fn usage_response() -> BoxedStrategy<Value> {
    const KEYS: &[&str] = &[
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
    ];
    let n = strategies::json_leaf;
    prop_oneof![
        3 => (n(), n(), proptest::option::of(n()), any::<bool>()).prop_map(|(p, c, t, responses)| {
            let (pk, ck) = if responses { ("input_tokens", "output_tokens") } else { ("prompt_tokens", "completion_tokens") };
            let mut u = serde_json::Map::new();
            u.insert(pk.to_owned(), p);
            u.insert(ck.to_owned(), c);
            if let Some(t) = t {
                u.insert("total_tokens".to_owned(), t);
            }
            serde_json::json!({"usage": u})
        }),
        1 => strategies::json_with_keys(KEYS),
    ]
    .boxed()
}

/// The target.
#[derive(Debug)]
pub struct Envelope;

impl crate::Target for Envelope {
    const NAME: &'static str = "envelope";
    const ABOUT: &'static str = "the stored-entry envelope decoder and response usage";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        prop_oneof![
            6 => (entry(), strategies::mutations(6)).prop_map(|(entry, edits)| Input::Mutated { entry, edits }),
            2 => strategies::bytes().prop_map(|b| Input::Raw(Blob::new(b))),
            1 => (entry(), strategies::mutations(3)).prop_map(|(e, edits)| {
                // A foreign prefix in front of a valid envelope.
                let mut raw = e.encode().to_vec();
                strategies::apply(&mut raw, &edits);
                Input::Raw(Blob::new(raw))
            }),
            2 => usage_response().prop_map(Input::Usage),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        match input {
            Input::Mutated { entry, edits } => {
                let e = entry.entry();
                let raw = entry.encode();
                match Entry::decode(&raw) {
                    Ok(d) if d == e => {}
                    Ok(d) => return Err(format!("round trip changed the entry: {d:?} vs {e:?}")),
                    Err(err) => return Err(format!("a fresh envelope does not decode: {err}")),
                }
                if !entry.compact
                    && let Ok(body) = serde_json::from_slice::<Value>(entry.body.bytes())
                {
                    let whole: Value = serde_json::from_slice(&raw)
                        .map_err(|err| format!("the envelope of a JSON body is not JSON: {err}"))?;
                    if whole.get("body") != Some(&body) {
                        return Err("the envelope's `body` member is not the body".to_owned());
                    }
                }
                let mut bad = raw.to_vec();
                strategies::apply(&mut bad, edits);
                let changed = bad != raw.as_ref();
                if let Ok(d) = Entry::decode(&Bytes::from(bad))
                    && changed
                    && d.body != e.body
                {
                    return Err(format!(
                        "a damaged envelope decoded to another body ({} bytes instead of {})",
                        d.body.len(),
                        e.body.len()
                    ));
                }
                Ok(())
            }
            Input::Raw(blob) => {
                let raw = Bytes::copy_from_slice(blob.bytes());
                if let Ok(d) = Entry::decode(&raw) {
                    if !Entry::is_compact(&raw) && crc32(&d.body) != header_crc(&raw) {
                        return Err("decoded a body whose checksum does not match".to_owned());
                    }
                    // What decodes re-encodes to an envelope that decodes to the same entry.
                    if Entry::decode(&d.encode()).as_ref() != Ok(&d) {
                        return Err("a decoded entry does not round-trip".to_owned());
                    }
                    if Entry::decode(&d.encode_with(&Encoding::COMPACT)).as_ref() != Ok(&d) {
                        return Err("a decoded entry does not round-trip compactly".to_owned());
                    }
                }
                Ok(())
            }
            Input::Usage(v) => {
                if let Some(u) = Usage::from_response(v) {
                    let obj = v.get("usage").and_then(Value::as_object);
                    if obj.is_none() {
                        return Err("usage read from a response without a usage object".into());
                    }
                    if let Some(t) = obj
                        .and_then(|o| o.get("total_tokens"))
                        .and_then(Value::as_u64)
                        && u.total_tokens != t
                    {
                        return Err("total_tokens not taken as given".to_owned());
                    }
                }
                Ok(())
            }
        }
    }
}

fn crc32(b: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: independent of the crate under test.
    let mut crc = 0xffff_ffffu32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The `crc` the header announces (read independently of the decoder, with serde ignoring the
/// other members the same way: a header may hold an unknown member with a number out of range,
/// `"x":1e9991`, that a `Value` cannot hold; regressions/envelope-1796074136.json).
fn header_crc(raw: &[u8]) -> u32 {
    #[derive(Deserialize)]
    struct Crc {
        crc: u32,
    }
    let window = &raw[..raw.len().min(1024)];
    let Some(pos) = window.windows(8).position(|w| w == b",\"body\":") else {
        return 0;
    };
    let mut header = window[..pos].to_vec();
    header.push(b'}');
    serde_json::from_slice::<Crc>(&header).map_or(0, |h| h.crc)
}
