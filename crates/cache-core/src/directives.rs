//! Per-request cache directives: LiteLLM's `cache: {...}` body field and the standard
//! `Cache-Control` request header.
//!
//! Semantics (also in `docs/directives.md`):
//!
//! | directive | effect |
//! |---|---|
//! | `no-cache: true` | skip the lookup, call upstream, **store** the fresh result |
//! | `no-store: true` | look up, but never store this request's result |
//! | `ttl: N` | store this entry for N seconds (0: do not store) |
//! | `s-maxage: N` / `s-max-age: N` | an entry older than N seconds is a miss and is refreshed; `0` is always a miss |
//! | `namespace: "s"` | key prefix `s:`, nested under the configured namespace (`cfg:s:`) |
//! | `use-cache: true` | opt in when the cache runs in `mode: default_off` |
//! | `only-if-cached: true` | a miss is an error (HTTP 504 in the proxy); upstream is not called |
//! | `similarity-threshold: x` | semantic caches: raise the threshold for this request (never lower) |
//!
//! Types are strict: a wrong type, a negative number or an unknown directive is a
//! [`DirectiveError`] naming the field. `cache: null` is the same as no `cache` field.

use std::time::Duration;

use serde_json::Value;

/// A malformed directive. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache directive `{field}`: {message}")]
pub struct DirectiveError {
    /// The offending field (`cache.ttl`, `Cache-Control: max-age`, ...).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl DirectiveError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        DirectiveError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parsed per-request directives. `None` means "not given" (so body and header can be merged
/// field by field).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CacheControl {
    /// Skip the lookup; still store the result.
    pub no_cache: Option<bool>,
    /// Do not store the result; still look up.
    pub no_store: Option<bool>,
    /// Time to live of the entry written for this request.
    pub ttl: Option<Duration>,
    /// Maximum acceptable age of a cached entry (`s-maxage`, `s-max-age`, `max-age`).
    pub max_age: Option<Duration>,
    /// Namespace for this request (highest precedence).
    pub namespace: Option<String>,
    /// Opt-in for `mode: default_off`.
    pub use_cache: Option<bool>,
    /// Answer only from the cache; a miss is an error.
    pub only_if_cached: Option<bool>,
    /// Semantic caches: a per-request similarity threshold. It can only raise the configured one.
    pub similarity_threshold: Option<f32>,
}

/// Longest accepted namespace.
pub const MAX_NAMESPACE_LEN: usize = 256;

impl CacheControl {
    /// Directives that change nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Skip the lookup, still store.
    pub fn with_no_cache(mut self) -> Self {
        self.no_cache = Some(true);
        self
    }

    /// Look up, do not store.
    pub fn with_no_store(mut self) -> Self {
        self.no_store = Some(true);
        self
    }

    /// Time to live of the entry written for this request.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Maximum acceptable age.
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Namespace for this request.
    pub fn with_namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Opt in (for `mode: default_off`).
    pub fn with_use_cache(mut self) -> Self {
        self.use_cache = Some(true);
        self
    }

    /// Answer only from the cache.
    pub fn with_only_if_cached(mut self) -> Self {
        self.only_if_cached = Some(true);
        self
    }

    /// Whether the lookup is skipped.
    pub fn skips_lookup(&self) -> bool {
        self.no_cache == Some(true)
    }

    /// Whether the result must not be stored.
    pub fn skips_store(&self) -> bool {
        self.no_store == Some(true) || self.ttl == Some(Duration::ZERO)
    }

    /// Whether a miss must not go upstream.
    pub fn is_only_if_cached(&self) -> bool {
        self.only_if_cached == Some(true)
    }

    /// Parses LiteLLM's `cache` request field. `None` and `null` give no directives.
    ///
    /// # Errors
    /// A [`DirectiveError`] naming the field when `cache` is not an object, a directive has the
    /// wrong type or range, or a directive name is unknown.
    pub fn from_json(cache: Option<&Value>) -> Result<Self, DirectiveError> {
        let obj = match cache {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Object(obj)) => obj,
            Some(other) => {
                return Err(DirectiveError::new(
                    "cache",
                    format!("must be an object, got {}", type_name(other)),
                ));
            }
        };
        let mut cc = Self::default();
        for (name, value) in obj {
            let field = format!("cache.{name}");
            if value.is_null() {
                continue;
            }
            match name.as_str() {
                "no-cache" => cc.no_cache = Some(bool_value(&field, value)?),
                "no-store" => cc.no_store = Some(bool_value(&field, value)?),
                "use-cache" => cc.use_cache = Some(bool_value(&field, value)?),
                "only-if-cached" => cc.only_if_cached = Some(bool_value(&field, value)?),
                "ttl" => cc.ttl = Some(seconds_value(&field, value)?),
                "s-maxage" | "s-max-age" | "max-age" => {
                    let age = seconds_value(&field, value)?;
                    cc.max_age = Some(cc.max_age.map_or(age, |a| a.min(age)));
                }
                "namespace" => cc.namespace = Some(namespace_value(&field, value)?),
                "similarity-threshold" | "similarity_threshold" => {
                    cc.similarity_threshold = Some(threshold_value(&field, value)?);
                }
                _ => {
                    return Err(DirectiveError::new(
                        field,
                        "unknown directive (known: no-cache, no-store, ttl, s-maxage, \
                         s-max-age, namespace, use-cache, only-if-cached, similarity-threshold)",
                    ));
                }
            }
        }
        Ok(cc)
    }

    /// Parses the directives carried in a request body: LiteLLM's `cache` field, and
    /// `metadata.redis_namespace` as the namespace when `cache.namespace` is not given
    /// (LiteLLM's precedence: `cache.namespace` > `metadata.redis_namespace` > configuration).
    ///
    /// # Errors
    /// As [`CacheControl::from_json`]; also when `metadata.redis_namespace` is not a non-empty
    /// string.
    pub fn from_request(body: &Value) -> Result<Self, DirectiveError> {
        let mut cc = Self::from_json(body.get("cache"))?;
        if cc.namespace.is_none()
            && let Some(ns) = body
                .get("metadata")
                .filter(|m| m.is_object())
                .and_then(|m| m.get("redis_namespace"))
                .filter(|v| !v.is_null())
        {
            cc.namespace = Some(namespace_value("metadata.redis_namespace", ns)?);
        }
        Ok(cc)
    }

    /// Parses a `Cache-Control` request header (RFC 9111 §5.2.1): `no-cache`, `no-store`,
    /// `max-age=N`, `s-maxage=N`, `only-if-cached`. Other directives (extensions, whatever
    /// their bytes) are ignored, as RFC 9111 requires of caches; commas inside quoted values do
    /// not split directives; a `max-age` above 2^31 s is read as 2^31 s (RFC 9111 §1.2.2).
    ///
    /// # Errors
    /// A [`DirectiveError`] when a recognised directive has a malformed value.
    pub fn from_header(header: &str) -> Result<Self, DirectiveError> {
        let mut cc = Self::default();
        for part in split_directives(header) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part, None),
            };
            let name = name.to_ascii_lowercase();
            let field = format!("Cache-Control: {name}");
            match name.as_str() {
                "no-cache" => cc.no_cache = Some(true),
                "no-store" => cc.no_store = Some(true),
                "only-if-cached" => cc.only_if_cached = Some(true),
                "max-age" | "s-maxage" => {
                    let arg = arg.ok_or_else(|| DirectiveError::new(&field, "needs a value"))?;
                    let secs = delta_seconds(arg).ok_or_else(|| {
                        DirectiveError::new(
                            &field,
                            format!("`{arg}` is not a non-negative integer of seconds"),
                        )
                    })?;
                    let age = Duration::from_secs(secs);
                    cc.max_age = Some(cc.max_age.map_or(age, |a| a.min(age)));
                }
                _ => {}
            }
        }
        Ok(cc)
    }

    /// Merges two sets of directives: every field set in `self` wins over `other`.
    /// (The proxy calls `body.or(header)`: body directives win over the header.)
    pub fn or(self, other: CacheControl) -> CacheControl {
        CacheControl {
            no_cache: self.no_cache.or(other.no_cache),
            no_store: self.no_store.or(other.no_store),
            ttl: self.ttl.or(other.ttl),
            max_age: self.max_age.or(other.max_age),
            namespace: self.namespace.or(other.namespace),
            use_cache: self.use_cache.or(other.use_cache),
            only_if_cached: self.only_if_cached.or(other.only_if_cached),
            similarity_threshold: self.similarity_threshold.or(other.similarity_threshold),
        }
    }
}

/// Splits a `Cache-Control` value at the commas outside quoted strings (RFC 9110 §5.6.4,
/// backslash escapes included).
fn split_directives(header: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in header.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&header[start..]);
    parts
}

/// The largest delta-seconds value: RFC 9111 §1.2.2 has a cache read anything larger (or too
/// large to represent) as 2^31.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// RFC 9111 delta-seconds (`1*DIGIT`), capped at [`MAX_DELTA_SECONDS`]; `None` when not digits.
fn delta_seconds(arg: &str) -> Option<u64> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: parsing fails only on overflow, which caps too.
    Some(
        arg.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bool_value(field: &str, v: &Value) -> Result<bool, DirectiveError> {
    v.as_bool().ok_or_else(|| {
        DirectiveError::new(
            field,
            format!("must be a boolean (true/false), got {}", type_name(v)),
        )
    })
}

/// Largest accepted number of seconds (100 years): keeps `Duration` arithmetic far from overflow.
const MAX_SECONDS: f64 = 100.0 * 365.0 * 86_400.0;

fn seconds_value(field: &str, v: &Value) -> Result<Duration, DirectiveError> {
    let secs = v.as_f64().ok_or_else(|| {
        DirectiveError::new(
            field,
            format!("must be a number of seconds, got {}", type_name(v)),
        )
    })?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(DirectiveError::new(
            field,
            format!("must be a non-negative number of seconds, got {secs}"),
        ));
    }
    if secs > MAX_SECONDS {
        return Err(DirectiveError::new(
            field,
            format!("{secs} seconds is more than the maximum of {MAX_SECONDS}"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn namespace_value(field: &str, v: &Value) -> Result<String, DirectiveError> {
    let s = v.as_str().ok_or_else(|| {
        DirectiveError::new(field, format!("must be a string, got {}", type_name(v)))
    })?;
    if s.is_empty() {
        return Err(DirectiveError::new(field, "must not be empty"));
    }
    if s.len() > MAX_NAMESPACE_LEN {
        return Err(DirectiveError::new(
            field,
            format!("longer than {MAX_NAMESPACE_LEN} bytes"),
        ));
    }
    Ok(s.to_owned())
}

/// The form a per-request namespace takes in keys: every byte outside `A-Z a-z 0-9 . _ ~ -`
/// percent-encoded (`a:b` → `a%3Ab`). A caller's namespace is then one opaque segment: it can
/// never reach into another namespace's scope (`a:b` is not "b inside a"), nor carry glob or
/// control characters into a backend's scan pattern.
pub fn encode_namespace(ns: &str) -> std::borrow::Cow<'_, str> {
    let clean = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-');
    if ns.bytes().all(clean) {
        return std::borrow::Cow::Borrowed(ns);
    }
    let mut out = String::with_capacity(ns.len() + 8);
    for b in ns.bytes() {
        if clean(b) {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn threshold_value(field: &str, v: &Value) -> Result<f32, DirectiveError> {
    let x = v.as_f64().ok_or_else(|| {
        DirectiveError::new(field, format!("must be a number, got {}", type_name(v)))
    })?;
    if !(0.0..=1.0).contains(&x) {
        return Err(DirectiveError::new(
            field,
            format!("must be a cosine similarity in [0, 1], got {x}"),
        ));
    }
    Ok(x as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_directive() {
        let cc = CacheControl::from_json(Some(&json!({
            "no-cache": true, "no-store": false, "ttl": 60, "s-maxage": 1.5,
            "namespace": "team-a", "use-cache": true, "only-if-cached": true,
            "similarity-threshold": 0.9
        })))
        .unwrap();
        assert!(cc.skips_lookup());
        assert!(!cc.skips_store());
        assert_eq!(cc.ttl, Some(Duration::from_secs(60)));
        assert_eq!(cc.max_age, Some(Duration::from_millis(1500)));
        assert_eq!(cc.namespace.as_deref(), Some("team-a"));
        assert_eq!(cc.use_cache, Some(true));
        assert!(cc.is_only_if_cached());
        assert_eq!(cc.similarity_threshold, Some(0.9));
    }

    #[test]
    fn null_and_absent_are_no_directives() {
        assert_eq!(
            CacheControl::from_json(None).unwrap(),
            CacheControl::default()
        );
        assert_eq!(
            CacheControl::from_json(Some(&Value::Null)).unwrap(),
            CacheControl::default()
        );
        assert_eq!(
            CacheControl::from_json(Some(&json!({"ttl": null}))).unwrap(),
            CacheControl::default()
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            (json!("no-cache"), "cache"),
            (json!([1]), "cache"),
            (json!({"no-cache": "true"}), "cache.no-cache"),
            (json!({"no-store": 1}), "cache.no-store"),
            (json!({"ttl": "abc"}), "cache.ttl"),
            (json!({"ttl": -1}), "cache.ttl"),
            (json!({"s-maxage": "10"}), "cache.s-maxage"),
            (json!({"s-max-age": -0.5}), "cache.s-max-age"),
            (json!({"namespace": 5}), "cache.namespace"),
            (json!({"namespace": ""}), "cache.namespace"),
            (
                json!({"similarity-threshold": 1.5}),
                "cache.similarity-threshold",
            ),
            (json!({"no_cache": true}), "cache.no_cache"),
        ];
        for (input, field) in cases {
            let err = CacheControl::from_json(Some(&input)).unwrap_err();
            assert_eq!(err.field, field, "{input}");
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn namespaces_are_one_opaque_segment() {
        assert_eq!(encode_namespace("team-a.v2_x~"), "team-a.v2_x~");
        assert_eq!(encode_namespace("a:b"), "a%3Ab");
        assert_eq!(encode_namespace("a b*?[]"), "a%20b%2A%3F%5B%5D");
        assert_eq!(
            encode_namespace("%3A"),
            "%253A",
            "no two names encode alike"
        );
        assert_eq!(encode_namespace("é"), "%C3%A9");
    }

    #[test]
    fn metadata_redis_namespace_comes_after_cache_namespace() {
        let body = json!({"metadata": {"redis_namespace": "litellm:key:acompletion"}});
        let cc = CacheControl::from_request(&body).unwrap();
        assert_eq!(cc.namespace.as_deref(), Some("litellm:key:acompletion"));
        let body = json!({"cache": {"namespace": "mine"}, "metadata": {"redis_namespace": "x"}});
        assert_eq!(
            CacheControl::from_request(&body)
                .unwrap()
                .namespace
                .as_deref(),
            Some("mine")
        );
        let err =
            CacheControl::from_request(&json!({"metadata": {"redis_namespace": 5}})).unwrap_err();
        assert_eq!(err.field, "metadata.redis_namespace");
        assert_eq!(
            CacheControl::from_request(&json!({"metadata": "x"})).unwrap(),
            CacheControl::default()
        );
    }

    #[test]
    fn zero_ttl_means_do_not_store_and_both_maxage_spellings_take_the_stricter() {
        let cc = CacheControl::from_json(Some(&json!({"ttl": 0}))).unwrap();
        assert!(cc.skips_store());
        let cc = CacheControl::from_json(Some(&json!({"s-maxage": 10, "s-max-age": 5}))).unwrap();
        assert_eq!(cc.max_age, Some(Duration::from_secs(5)));
    }

    #[test]
    fn header_parsing() {
        let cc = CacheControl::from_header("no-cache, max-age=0,s-maxage=\"10\", private").unwrap();
        assert_eq!(cc.no_cache, Some(true));
        assert_eq!(cc.max_age, Some(Duration::ZERO));
        let cc = CacheControl::from_header("No-Store, only-if-cached").unwrap();
        assert!(cc.skips_store());
        assert!(cc.is_only_if_cached());
        let err = CacheControl::from_header("max-age=abc").unwrap_err();
        assert_eq!(err.field, "Cache-Control: max-age");
        assert!(CacheControl::from_header("s-maxage").is_err());
        assert!(CacheControl::from_header("max-age=-1").is_err());
        assert!(CacheControl::from_header("max-age=+5").is_err());
        assert!(CacheControl::from_header("max-age=1.5").is_err());
    }

    #[test]
    fn header_ages_are_capped_at_two_to_the_31_seconds() {
        let cap = Some(Duration::from_secs(MAX_DELTA_SECONDS));
        for v in ["2147483648", "2147483649", "99999999999999999999999999999"] {
            let cc = CacheControl::from_header(&format!("max-age={v}")).unwrap();
            assert_eq!(cc.max_age, cap, "{v}");
        }
        let cc = CacheControl::from_header("s-maxage=2147483647").unwrap();
        assert_eq!(cc.max_age, Some(Duration::from_secs(2_147_483_647)));
    }

    #[test]
    fn header_extensions_are_ignored_whatever_their_bytes() {
        let cc =
            CacheControl::from_header("x-café=\"ü\", \u{fffd}\u{fffd}-ext, foo=bar=baz, =, ,,")
                .unwrap();
        assert_eq!(cc, CacheControl::none());
        // A comma inside a quoted value does not start a directive (escapes included).
        let cc =
            CacheControl::from_header(r#"ext="a, no-store, \", no-cache", max-age=5"#).unwrap();
        assert_eq!(cc.no_store, None);
        assert_eq!(cc.no_cache, None);
        assert_eq!(cc.max_age, Some(Duration::from_secs(5)));
        // An unterminated quote swallows the rest: nothing after it is a directive.
        let cc = CacheControl::from_header(r#"ext="a, no-store"#).unwrap();
        assert_eq!(cc.no_store, None);
    }

    #[test]
    fn body_wins_over_header() {
        let body = CacheControl::from_json(Some(&json!({"no-cache": false, "ttl": 5}))).unwrap();
        let header = CacheControl::from_header("no-cache, no-store, max-age=30").unwrap();
        let cc = body.or(header);
        assert!(!cc.skips_lookup());
        assert!(cc.skips_store());
        assert_eq!(cc.ttl, Some(Duration::from_secs(5)));
        assert_eq!(cc.max_age, Some(Duration::from_secs(30)));
    }
}
