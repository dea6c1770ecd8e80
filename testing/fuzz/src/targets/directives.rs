//! `directives`: LiteLLM's `cache: {...}` body field and `metadata.redis_namespace`
//! (`CacheControl::from_json`, `CacheControl::from_request`), and the namespace encoding.

use std::time::Duration;

use cache_core::CacheControl;
use cache_core::directives::{MAX_NAMESPACE_LEN, encode_namespace};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::strategies;

/// Directive names, valid and near misses.
pub const DIRECTIVE_KEYS: &[&str] = &[
    "no-cache",
    "no-store",
    "ttl",
    "s-maxage",
    "s-max-age",
    "max-age",
    "namespace",
    "use-cache",
    "only-if-cached",
    "similarity-threshold",
    "similarity_threshold",
    "no_cache",
    "No-Cache",
    "maxage",
];

/// A request body around a `cache` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The `cache` field: `None` leaves it out.
    pub cache: Option<Value>,
    /// `metadata`: `None` leaves it out.
    pub metadata: Option<Value>,
    /// Other members of the body.
    pub extra: Value,
}

/// Well-typed directive values, so parsing gets past the type checks.
fn directive_value(name: &'static str) -> BoxedStrategy<Value> {
    match name {
        "no-cache" | "no-store" | "use-cache" | "only-if-cached" => prop_oneof![
            4 => any::<bool>().prop_map(Value::Bool),
            1 => strategies::json_leaf(),
        ]
        .boxed(),
        "namespace" => prop_oneof![
            4 => strategies::hostile_string().prop_map(Value::String),
            1 => "[a-z]{255,258}".prop_map(Value::String),
            1 => strategies::json_leaf(),
        ]
        .boxed(),
        _ => prop_oneof![
            4 => strategies::json_number().prop_map(Value::Number),
            1 => (0.0f64..1.0).prop_map(Value::from),
            1 => strategies::json_leaf(),
        ]
        .boxed(),
    }
}

fn cache_field() -> BoxedStrategy<Value> {
    let names: Vec<&'static str> = DIRECTIVE_KEYS[..10].to_vec();
    let typed = vec(
        proptest::sample::select(names).prop_flat_map(|n| (Just(n), directive_value(n))),
        0..8,
    )
    .prop_map(|members| {
        Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    });
    prop_oneof![
        6 => typed,
        3 => strategies::json_with_keys(DIRECTIVE_KEYS),
        1 => strategies::json_leaf(),
    ]
    .boxed()
}

fn metadata() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => strategies::json_leaf().prop_map(|ns| json!({"redis_namespace": ns})),
        1 => strategies::json_with_keys(&["redis_namespace", "user", "tags"]),
    ]
    .boxed()
}

/// The target.
#[derive(Debug)]
pub struct Directives;

impl crate::Target for Directives {
    const NAME: &'static str = "directives";
    const ABOUT: &'static str = "the body's `cache` directives and metadata.redis_namespace";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        (
            proptest::option::weighted(0.9, cache_field()),
            proptest::option::weighted(0.3, metadata()),
            strategies::json_with_keys(&["model", "messages", "cache", "metadata", "input"]),
        )
            .prop_map(|(cache, metadata, extra)| Input {
                cache,
                metadata,
                extra,
            })
            .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        let mut body = match &input.extra {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        body.remove("cache");
        body.remove("metadata");
        if let Some(c) = &input.cache {
            body.insert("cache".to_owned(), c.clone());
        }
        if let Some(m) = &input.metadata {
            body.insert("metadata".to_owned(), m.clone());
        }
        let body = Value::Object(body);

        let direct = CacheControl::from_json(input.cache.as_ref());
        let again = CacheControl::from_json(input.cache.as_ref());
        if direct != again {
            return Err("from_json is not deterministic".to_owned());
        }
        let reordered = input.cache.as_ref().map(strategies::reorder);
        if CacheControl::from_json(reordered.as_ref()).is_ok() != direct.is_ok() {
            return Err("from_json depends on member order".to_owned());
        }
        match &direct {
            Ok(cc) => valid(cc, "cache")?,
            Err(e) => {
                if !e.field.starts_with("cache") {
                    return Err(format!("error names field `{}`, not `cache...`", e.field));
                }
            }
        }
        let from_body = CacheControl::from_request(&body);
        match (&direct, &from_body) {
            (Err(_), Ok(_)) => {
                return Err("from_request accepted a `cache` field from_json rejects".to_owned());
            }
            (Ok(d), Ok(b)) => {
                valid(b, "request")?;
                if d.namespace.is_some() && b.namespace != d.namespace {
                    return Err("cache.namespace must win over metadata.redis_namespace".into());
                }
                let mut b2 = b.clone();
                b2.namespace = d.namespace.clone();
                if &b2 != d {
                    return Err("from_request changed a directive besides the namespace".into());
                }
            }
            (_, Err(e)) => {
                if !(e.field.starts_with("cache") || e.field == "metadata.redis_namespace") {
                    return Err(format!("error names field `{}`", e.field));
                }
            }
        }
        Ok(())
    }
}

/// The invariants of an accepted set of directives.
fn valid(cc: &CacheControl, what: &str) -> Result<(), String> {
    let max = Duration::from_secs(100 * 365 * 86_400);
    if cc.ttl.is_some_and(|t| t > max) || cc.max_age.is_some_and(|t| t > max) {
        return Err(format!(
            "{what}: a duration past the documented 100-year maximum"
        ));
    }
    if let Some(t) = cc.similarity_threshold
        && !(0.0..=1.0).contains(&t)
    {
        return Err(format!("{what}: similarity threshold {t} outside [0, 1]"));
    }
    if let Some(ns) = &cc.namespace {
        if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
            return Err(format!("{what}: namespace of {} bytes accepted", ns.len()));
        }
        let enc = encode_namespace(ns);
        if !enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-' | b'%'))
        {
            return Err(format!(
                "{what}: encoded namespace {enc:?} has unsafe bytes"
            ));
        }
        if decode_percent(&enc).as_deref() != Some(ns.as_bytes()) {
            return Err(format!(
                "{what}: namespace encoding is not reversible: {ns:?} → {enc:?}"
            ));
        }
    }
    Ok(())
}

fn decode_percent(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}
