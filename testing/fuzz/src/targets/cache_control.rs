//! `cache_control`: the `Cache-Control` request header (`CacheControl::from_header`), as
//! arbitrary text and as generated directive lists checked against an independent model.

use std::time::Duration;

use cache_core::CacheControl;
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::strategies;

/// One generated directive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Directive {
    /// Name as written (any case, maybe padded).
    pub name: String,
    /// `=value` when present.
    pub value: Option<String>,
    /// Quote the value.
    pub quoted: bool,
    /// Spaces around `=`.
    pub spaced: bool,
}

/// A header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Arbitrary header text.
    Text(String),
    /// A directive list, joined with `separator`.
    List {
        /// The directives.
        directives: Vec<Directive>,
        /// Between directives (`,`, `, `, ` ,`, `,,`).
        separator: String,
    },
}

const NAMES: &[&str] = &[
    "no-cache",
    "no-store",
    "max-age",
    "s-maxage",
    "only-if-cached",
    "private",
    "public",
    "must-revalidate",
    "max-stale",
    "min-fresh",
    "no-transform",
    "stale-while-revalidate",
];

/// Values: valid delta-seconds and the classic invalid ones.
const VALUES: &[&str] = &[
    "0",
    "1",
    "60",
    "3600",
    "007",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "-1",
    "1.5",
    "1e3",
    "",
    "abc",
    "0x10",
    " 5",
    "５",
    "\u{0}",
];

fn directive() -> BoxedStrategy<Directive> {
    let name = prop_oneof![
        6 => proptest::sample::select(NAMES).prop_map(str::to_owned),
        2 => (proptest::sample::select(NAMES), any::<u64>()).prop_map(|(n, mask)| {
            n.chars()
                .enumerate()
                .map(|(i, c)| if (mask >> (i % 64)) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                .collect()
        }),
        1 => strategies::hostile_string(),
    ];
    let value = prop_oneof![
        4 => proptest::sample::select(VALUES).prop_map(str::to_owned),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => strategies::hostile_string(),
    ];
    (
        name,
        proptest::option::weighted(0.5, value),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, value, quoted, spaced)| Directive {
            name,
            value,
            quoted,
            spaced,
        })
        .boxed()
}

fn render(directives: &[Directive], separator: &str) -> String {
    directives
        .iter()
        .map(|d| match &d.value {
            None => d.name.clone(),
            Some(v) => {
                let v = if d.quoted {
                    format!("\"{v}\"")
                } else {
                    v.clone()
                };
                if d.spaced {
                    format!("{} = {v}", d.name)
                } else {
                    format!("{}={v}", d.name)
                }
            }
        })
        .collect::<Vec<_>>()
        .join(separator)
}

/// What RFC 9111 says the header means, for generated lists whose parts are plain (no commas,
/// `=` or quotes inside names and values). `None`: the header must be rejected.
fn model(directives: &[Directive]) -> Option<Option<CacheControl>> {
    let mut cc = CacheControl::none();
    for d in directives {
        // (A backslash in a quoted value escapes the closing quote: not modelled either.)
        let plain = |s: &str| !s.contains([',', '=', '"', '\\']) && s.trim() == s && !s.is_empty();
        if !plain(&d.name) || d.value.as_deref().is_some_and(|v| !plain(v)) {
            return None; // not modelled
        }
        match d.name.to_ascii_lowercase().as_str() {
            "no-cache" => cc.no_cache = Some(true),
            "no-store" => cc.no_store = Some(true),
            "only-if-cached" => cc.only_if_cached = Some(true),
            "max-age" | "s-maxage" => {
                let Some(v) = d.value.as_deref() else {
                    return Some(None);
                };
                // delta-seconds is 1*DIGIT; anything above 2^31 (or too large to represent)
                // counts as 2^31 (RFC 9111 §1.2.2).
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Some(None);
                }
                let secs = v.parse::<u64>().map_or(1 << 31, |n| n.min(1 << 31));
                let age = Duration::from_secs(secs);
                cc.max_age = Some(cc.max_age.map_or(age, |a| a.min(age)));
            }
            _ => {}
        }
    }
    Some(Some(cc))
}

/// The target.
#[derive(Debug)]
pub struct CacheControlHeader;

impl crate::Target for CacheControlHeader {
    const NAME: &'static str = "cache_control";
    const ABOUT: &'static str = "the Cache-Control request header";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        prop_oneof![
            1 => strategies::hostile_string().prop_map(Input::Text),
            1 => strategies::bytes().prop_map(|b| Input::Text(String::from_utf8_lossy(&b).into_owned())),
            4 => (
                vec(directive(), 0..8),
                proptest::sample::select(&[",", ", ", " ,", ",,", " , "][..]),
            )
                .prop_map(|(directives, sep)| Input::List {
                    directives,
                    separator: sep.to_owned(),
                }),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        let header = match input {
            Input::Text(t) => t.clone(),
            Input::List {
                directives,
                separator,
            } => render(directives, separator),
        };
        let parsed = CacheControl::from_header(&header);
        if let Ok(cc) = &parsed
            && (cc.ttl.is_some() || cc.namespace.is_some() || cc.use_cache.is_some())
        {
            return Err("the header set a body-only directive".to_owned());
        }
        // Directive names are case-insensitive (values here are digits or errors either way).
        let upper = CacheControl::from_header(&header.to_ascii_uppercase());
        if upper.is_ok() != parsed.is_ok() || upper.as_ref().ok() != parsed.as_ref().ok() {
            return Err(format!(
                "case changes the meaning: {parsed:?} vs {upper:?} for {}",
                strategies::short(&header)
            ));
        }
        if let Input::List { directives, .. } = input
            && let Some(expected) = model(directives)
        {
            match (expected, &parsed) {
                (None, Ok(cc)) => {
                    return Err(format!("accepted an invalid header as {cc:?}"));
                }
                (Some(e), Ok(cc)) if &e != cc => {
                    return Err(format!("parsed as {cc:?}, RFC 9111 says {e:?}"));
                }
                (Some(e), Err(err)) => {
                    return Err(format!("rejected a valid header ({err}); expected {e:?}"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
