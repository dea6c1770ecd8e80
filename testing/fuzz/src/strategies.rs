//! Shared generators: hostile strings, JSON-shaped values (deep, wide, with big numbers) and
//! byte-level mutations of valid inputs. Every generator shrinks (proptest).

use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// Deepest nesting the JSON generators build (serde_json's parser stops at 128).
pub const MAX_DEPTH: usize = 64;

/// Strings that broke parsers before, or that mean something to ours.
pub const HOSTILE_ATOMS: &[&str] = &[
    "",
    " ",
    "\0",
    "\u{1}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{feff}",
    "\u{2028}",
    "\u{2029}",
    "\u{fffd}",
    "\u{10ffff}",
    "é",
    "e\u{301}",
    "😀",
    "\u{202e}abc",
    "\\",
    "\"",
    "'",
    "\\u0000",
    "\\ud800",
    "%",
    "%3A",
    ":",
    "a:b",
    "*",
    "?",
    "[",
    "{",
    "}",
    "${X}",
    "\n",
    "\r\n",
    "\n\n",
    "\r\n\r\n",
    "\t",
    "data: [DONE]",
    "[DONE]",
    "data:",
    "event: error",
    ",\"body\":",
    "{\"llmc\":",
    "os.environ/",
    "os.environ/PATH",
    "os.environ/LLM_CACHE_FUZZ_SURELY_UNSET",
    "0",
    "-0",
    "1",
    "-1",
    "+5",
    "007",
    "1.5",
    "1e3",
    "1e309",
    "-1e309",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "0o7",
    "1_000",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "3153600000",
    "3153600001",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "null",
    "~",
    "TRUE",
    "<<",
    "&a",
    "*a",
    "!!binary",
    "- ",
    "? ",
    "# c",
    "---",
    "...",
    "no-cache",
    "no-store",
    "max-age",
    "s-maxage",
    "only-if-cached",
    "ttl",
    "namespace",
    "use-cache",
    "similarity-threshold",
    "local",
    "redis",
    "disk",
    "s3",
    "gcs",
    "azure-blob",
    "redis-semantic",
    "qdrant-semantic",
    "local-semantic",
    "http://",
    "https://[::1]:0/",
    "redis://:@/",
    "unix:///",
];

/// A hostile string: arbitrary Unicode, atoms from [`HOSTILE_ATOMS`], concatenations, and
/// sometimes long runs (up to ~256 KiB).
pub fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        30 => short_string(),
        1 => long_string(),
    ]
    .boxed()
}

/// A hostile string of at most a few hundred bytes.
pub fn short_string() -> BoxedStrategy<String> {
    let atom = proptest::sample::select(HOSTILE_ATOMS).prop_map(str::to_owned);
    prop_oneof![
        4 => any::<String>(),
        4 => atom.clone(),
        2 => "[a-z_\\-]{1,12}",
        2 => vec(atom, 1..6).prop_map(|v| v.concat()),
    ]
    .boxed()
}

/// A long run: an atom or a character repeated (up to ~256 KiB).
pub fn long_string() -> BoxedStrategy<String> {
    prop_oneof![
        (proptest::sample::select(HOSTILE_ATOMS), 1usize..4096)
            .prop_map(|(a, n)| a.repeat(n.min(65_536 / a.len().max(1)))),
        (any::<char>(), 1usize..65_536).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
    .boxed()
}

/// A string key drawn mostly from `keys` (the names a parser knows), sometimes hostile.
pub fn key_from(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    if keys.is_empty() {
        return short_string();
    }
    prop_oneof![
        6 => proptest::sample::select(keys).prop_map(str::to_owned),
        2 => short_string(),
        1 => proptest::sample::select(keys).prop_map(|k| k.to_ascii_uppercase()),
        1 => proptest::sample::select(keys).prop_map(|k| format!("{k} ")),
    ]
    .boxed()
}

/// JSON numbers at the edges: integers of every width, floats from tiny to huge.
pub fn json_number() -> BoxedStrategy<Number> {
    prop_oneof![
        3 => (0u64..100).prop_map(Number::from),
        2 => any::<u64>().prop_map(Number::from),
        2 => any::<i64>().prop_map(Number::from),
        1 => proptest::sample::select(&[
            0u64,
            1,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX,
            u64::MAX - 1,
            3_153_600_000,
            3_153_600_001,
        ][..])
        .prop_map(Number::from),
        1 => Just(Number::from(i64::MIN)),
        2 => any::<f64>().prop_filter_map("finite", Number::from_f64),
        2 => proptest::sample::select(&[
            0.0f64, -0.0, 0.5, 0.1, 1.0, 1.5, -1.0, 1e-7, 5e-324, 1e300, 1e308, -1e308,
            1.7976931348623157e308, 3.1536e9, 1e12, 1e19, 1.8e19, 18446744073709551616.0,
            0.9999999999999999, 1.0000000000000002,
        ][..])
        .prop_filter_map("finite", Number::from_f64),
    ]
    .boxed()
}

/// A JSON leaf.
pub fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => json_number().prop_map(Value::Number),
        4 => prop_oneof![100 => short_string(), 1 => long_string()].prop_map(Value::String),
    ]
    .boxed()
}

/// Arbitrary JSON whose object keys come mostly from `keys`. Nesting up to [`MAX_DEPTH`] (through
/// [`deep_json`]), wide arrays and objects.
pub fn json_with_keys(keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    let recursive = json_leaf().prop_recursive(8, 96, 8, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..10).prop_map(Value::Array),
            vec((key_from(keys), inner), 0..10)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    });
    prop_oneof![
        8 => recursive,
        1 => deep_json(keys),
        1 => wide_json(),
    ]
    .boxed()
}

/// Arbitrary JSON with hostile keys.
pub fn json() -> BoxedStrategy<Value> {
    json_with_keys(&[])
}

/// A chain of arrays and objects up to [`MAX_DEPTH`] deep around a leaf.
pub fn deep_json(keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    (
        vec((any::<bool>(), key_from(keys)), 0..=MAX_DEPTH),
        json_leaf(),
    )
        .prop_map(|(levels, leaf)| {
            levels.into_iter().fold(leaf, |inner, (array, key)| {
                if array {
                    Value::Array(vec![inner])
                } else {
                    Value::Object(Map::from_iter([(key, inner)]))
                }
            })
        })
        .boxed()
}

/// Wide arrays and objects (thousands of small members).
pub fn wide_json() -> BoxedStrategy<Value> {
    let small = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::String),
    ];
    prop_oneof![
        (small, 0usize..10_000).prop_map(|(v, n)| Value::Array(vec![v; n])),
        (0usize..5_000).prop_map(|n| Value::Object(
            (0..n).map(|i| (format!("k{i}"), Value::from(i))).collect()
        )),
    ]
    .boxed()
}

/// One byte-level edit. Positions are taken modulo the length, so every edit applies to any
/// input and shrinking an edit list keeps it meaningful.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Mutation {
    /// XOR the byte at `at` with `mask`.
    Flip { at: u32, mask: u8 },
    /// Set the byte at `at`.
    Set { at: u32, byte: u8 },
    /// Insert bytes at `at`.
    Insert { at: u32, bytes: Vec<u8> },
    /// Remove `len` bytes from `at`.
    Remove { at: u32, len: u32 },
    /// Copy `len` bytes from `from` to `at`.
    Duplicate { from: u32, len: u32, at: u32 },
    /// Cut the input to `at`.
    Truncate { at: u32 },
}

/// Tokens worth inserting into JSON, envelopes and event streams.
pub const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b",\"body\":",
    b"{\"llmc\":1,",
    b"data: ",
    b"data: [DONE]\n\n",
    b"event: error\n",
    b": ping\n\n",
    b"null",
    b"1e999",
    b"18446744073709551616",
    b"-1",
];

/// A single mutation.
pub fn mutation() -> BoxedStrategy<Mutation> {
    let bytes = prop_oneof![
        3 => proptest::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
        2 => vec(any::<u8>(), 1..16),
    ];
    prop_oneof![
        4 => (any::<u32>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        2 => (any::<u32>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        3 => (any::<u32>(), bytes).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (any::<u32>(), 1u32..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<u32>(), 1u32..256, any::<u32>())
            .prop_map(|(from, len, at)| Mutation::Duplicate { from, len, at }),
        1 => any::<u32>().prop_map(|at| Mutation::Truncate { at }),
    ]
    .boxed()
}

/// Applies edits in order.
pub fn apply(data: &mut Vec<u8>, edits: &[Mutation]) {
    for e in edits {
        let len = data.len();
        let pos = |at: u32, n: usize| if n == 0 { 0 } else { at as usize % n };
        match e {
            Mutation::Flip { at, mask } if len > 0 => data[pos(*at, len)] ^= mask,
            Mutation::Set { at, byte } if len > 0 => data[pos(*at, len)] = *byte,
            Mutation::Insert { at, bytes } => {
                let p = pos(*at, len + 1);
                data.splice(p..p, bytes.iter().copied());
            }
            Mutation::Remove { at, len: n } if len > 0 => {
                let p = pos(*at, len);
                let end = (p + *n as usize).min(len);
                data.drain(p..end);
            }
            Mutation::Duplicate { from, len: n, at } if len > 0 => {
                let f = pos(*from, len);
                let end = (f + *n as usize).min(len);
                let piece: Vec<u8> = data[f..end].to_vec();
                let p = pos(*at, len + 1);
                data.splice(p..p, piece);
            }
            Mutation::Truncate { at } => data.truncate(pos(*at, len + 1)),
            _ => {}
        }
    }
}

/// Up to `max` edits.
pub fn mutations(max: usize) -> BoxedStrategy<Vec<Mutation>> {
    vec(mutation(), 0..=max).boxed()
}

/// Rebuilds a value with every object's members inserted in reverse order (at every depth).
/// With serde_json's default sorted maps this is the same value; with `preserve_order` it is
/// the same members in another order.
pub fn reorder(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(reorder).collect()),
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.reverse();
            Value::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (k.clone(), reorder(v)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// Text of a value, shortened for messages.
pub fn short(v: &impl std::fmt::Display) -> String {
    let s = v.to_string();
    if s.len() <= 300 {
        return s;
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Bytes as text in regression files: UTF-8 when it is, else the lossless byte list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Blob {
    /// Valid UTF-8.
    Text(String),
    /// Anything else.
    Bytes(Vec<u8>),
}

impl Blob {
    /// From bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(s) => Blob::Text(s),
            Err(e) => Blob::Bytes(e.into_bytes()),
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Blob::Text(s) => s.as_bytes(),
            Blob::Bytes(b) => b,
        }
    }
}

/// Arbitrary bytes (shrinks towards short inputs), sometimes long.
pub fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 0..256),
        2 => vec(proptest::sample::select(TOKENS), 0..64).prop_map(|t| t.concat()),
        1 => vec(any::<u8>(), 0..65_536),
    ]
    .boxed()
}

/// JSON equality that allows the last bits of a float to differ (serde_json here parses floats
/// best-effort: without `float_roundtrip`, a printed and re-parsed float may move by an ulp, and
/// a subnormal by more).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                // Relative 1e-12, and an absolute slack for subnormals (whose parse is the
                // least precise: `-9.9325426066069e-310` came back as `-9.93254260660688e-310`).
                (Some(p), Some(q)) => {
                    p == q
                        || (p - q).abs() <= p.abs().max(q.abs()) * 1e-12
                        || (p - q).abs() < 1e-300
                }
                _ => false,
            }
        }
        _ => a == b,
    }
}
