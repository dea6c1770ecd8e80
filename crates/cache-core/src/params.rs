//! Typed access to a LiteLLM-style `cache_params` mapping, shared by every backend crate.
//!
//! Values may come from YAML, JSON or environment variables, so numbers and booleans are also
//! accepted as strings (`"6379"`, `"true"`), as LiteLLM coerces them. A value of the wrong type is
//! a [`CacheError::Config`] naming the key; an explicit key always wins over its environment
//! variable fallback.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{CacheError, Result};

/// A `cache_params` mapping (after `os.environ/NAME` resolution).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    map: Map<String, Value>,
    prefix: String,
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
        other => other.to_string(),
    }
}

impl Params {
    /// Wraps a mapping. `prefix` names it in errors (`cache_params`).
    pub fn new(map: Map<String, Value>, prefix: impl Into<String>) -> Self {
        Params {
            map,
            prefix: prefix.into(),
        }
    }

    /// The raw mapping.
    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// A raw value (`null` counts as absent).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether the key is present and not null.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// An error about `key`.
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> CacheError {
        CacheError::Config(format!("{}.{key}: {message}", self.prefix))
    }

    fn type_error(&self, key: &str, expected: &str, v: &Value) -> CacheError {
        self.error(key, format!("expected {expected}, got {}", describe(v)))
    }

    /// A string (numbers are accepted and rendered).
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.type_error(key, "a string", v)),
        }
    }

    /// A string from the key, else from the environment variable `env`.
    pub fn string_or_env(&self, key: &str, env: &str) -> Result<Option<String>> {
        match self.string(key)? {
            Some(s) => Ok(Some(s)),
            None => Ok(std::env::var(env).ok().filter(|s| !s.is_empty())),
        }
    }

    /// A non-negative integer (also from a numeric string).
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_u64(v)
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a non-negative integer", v)),
        }
    }

    /// An integer from the key, else from the environment variable `env`.
    pub fn u64_or_env(&self, key: &str, env: &str) -> Result<Option<u64>> {
        if self.has(key) {
            return self.u64(key);
        }
        match std::env::var(env) {
            Ok(s) if !s.is_empty() => s.trim().parse().map(Some).map_err(|_| {
                CacheError::Config(format!(
                    "environment variable {env}: expected a non-negative integer, got {s:?}"
                ))
            }),
            _ => Ok(None),
        }
    }

    /// A finite number (also from a numeric string).
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_f64(v)
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a number", v)),
        }
    }

    /// A boolean (also `"true"/"false"/"1"/"0"/"yes"/"no"`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_bool(v)
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a boolean", v)),
        }
    }

    /// A boolean from the key, else from the environment variable `env`.
    pub fn bool_or_env(&self, key: &str, env: &str) -> Result<Option<bool>> {
        if self.has(key) {
            return self.bool(key);
        }
        match std::env::var(env) {
            Ok(s) if !s.is_empty() => {
                parse_bool(&Value::String(s.clone()))
                    .map(Some)
                    .ok_or_else(|| {
                        CacheError::Config(format!(
                            "environment variable {env}: expected a boolean, got {s:?}"
                        ))
                    })
            }
            _ => Ok(None),
        }
    }

    /// A duration in seconds (integer or fraction), non-negative.
    pub fn seconds(&self, key: &str) -> Result<Option<Duration>> {
        match self.f64(key)? {
            None => Ok(None),
            Some(s) if (0.0..1e12).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
            Some(s) => Err(self.error(
                key,
                format!("expected a non-negative number of seconds, got {s}"),
            )),
        }
    }

    /// A list of strings (a single string is a one-element list).
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.type_error(key, "a list of strings", other)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.type_error(key, "a list of strings", v)),
        }
    }
}

fn parse_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// Replaces every string `"os.environ/NAME"` (at any depth) with the value of `NAME`, as
/// LiteLLM does.
///
/// # Errors
/// [`CacheError::Config`] naming the path and the variable when it is not set.
pub fn resolve_env_refs(value: &mut Value, path: &str) -> Result<()> {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("os.environ/") {
                *s = std::env::var(name).map_err(|_| {
                    CacheError::Config(format!(
                        "{path}: refers to environment variable {name}, which is not set"
                    ))
                })?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_env_refs(item, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                resolve_env_refs(v, &format!("{path}.{k}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The closest candidate to `word` (edit distance ≤ 2, or a shared prefix), for "did you mean".
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = strsim::levenshtein(word, c);
        if d <= 2.max(word.len() / 5) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Params {
        Params::new(v.as_object().unwrap().clone(), "cache_params")
    }

    #[test]
    fn coercion_and_errors_name_the_key() {
        let params =
            p(json!({"port": "6379", "ttl": 1.5, "ssl": "true", "db": 2, "bad": "x", "host": 5}));
        assert_eq!(params.u64("port").unwrap(), Some(6379));
        assert_eq!(
            params.seconds("ttl").unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(params.bool("ssl").unwrap(), Some(true));
        assert_eq!(params.string("host").unwrap().as_deref(), Some("5"));
        let err = params.u64("bad").unwrap_err().to_string();
        assert!(
            err.contains("cache_params.bad") && err.contains("integer"),
            "{err}"
        );
        assert!(params.bool("bad").is_err());
        assert_eq!(params.u64("missing").unwrap(), None);
    }

    #[test]
    fn env_refs_resolve_or_fail_clearly() {
        let name = "LLM_CACHE_TEST_ENV_REF_PARAMS";
        if std::env::var(name).is_err() {
            // `set_var` is unsafe in edition 2024 (and unsafe code is forbidden here): run this
            // test again in a child process that has the variable.
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "params::tests::env_refs_resolve_or_fail_clearly"])
                .env(name, "secret")
                .status()
                .unwrap();
            assert!(status.success(), "child run failed");
            return;
        }
        let mut v = json!({"password": format!("os.environ/{name}"), "nested": [format!("os.environ/{name}")]});
        resolve_env_refs(&mut v, "cache_params").unwrap();
        assert_eq!(v["password"], json!("secret"));
        assert_eq!(v["nested"][0], json!("secret"));
        let mut v = json!({"password": "os.environ/LLM_CACHE_SURELY_UNSET"});
        let err = resolve_env_refs(&mut v, "cache_params")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache_params.password") && err.contains("LLM_CACHE_SURELY_UNSET"));
    }

    #[test]
    fn suggestions() {
        let known = ["namespace", "ttl", "redis_startup_nodes"];
        assert_eq!(suggest("namspace", known), Some("namespace"));
        assert_eq!(
            suggest("redis_startup_node", known),
            Some("redis_startup_nodes")
        );
        assert_eq!(suggest("completely_else", known), None);
    }
}
