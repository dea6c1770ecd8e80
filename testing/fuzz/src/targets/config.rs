//! `config`: the configuration parsers: YAML text (`llm_cache::config::parse_yaml`,
//! `CacheConfig::from_yaml`, `ProxyConfig::from_yaml`), JSON text (`CacheConfig::from_json`),
//! parsed documents (`from_value`), and the typed parameter getters and `os.environ/NAME`
//! resolution that the environment mapping uses (`cache_core::params`).

use std::sync::OnceLock;

use cache_core::params::{Params, resolve_env_refs};
use llm_cache::CacheConfig;
use llm_cache::config::{CORE_KEYS, parse_yaml};
use llm_cache_proxy::config::ProxyConfig;
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::strategies::{self, Mutation};

/// Valid configurations to mutate: the proxy's example configs (environment references replaced
/// by literal values) and a few written for this target.
const SEEDS: &[&str] = &[
    include_str!("../../../../examples/configs/local.yaml"),
    include_str!("../../../../examples/configs/tenants.yaml"),
    include_str!("../../../../examples/configs/redis.yaml"),
    include_str!("../../../../examples/configs/redis-cluster.yaml"),
    include_str!("../../../../examples/configs/redis-sentinel.yaml"),
    include_str!("../../../../examples/configs/disk.yaml"),
    include_str!("../../../../examples/configs/s3.yaml"),
    include_str!("../../../../examples/configs/gcs.yaml"),
    include_str!("../../../../examples/configs/azure-blob.yaml"),
    include_str!("../../../../examples/configs/local-semantic.yaml"),
    include_str!("../../../../examples/configs/redis-semantic.yaml"),
    include_str!("../../../../examples/configs/qdrant-semantic.yaml"),
    "model_list:\n  - model_name: \"*\"\n    litellm_params: {model: \"openai/*\", api_base: \"http://127.0.0.1:9/v1\"}\n  - model_name: claude\n    litellm_params:\n      model: anthropic/claude-x\n      input_cost_per_token: 0.000003\n      extra_headers: {x-a: b, x-n: 5}\nlitellm_settings:\n  cache: \"true\"\n  cache_params: {type: local, ttl: \"60\", l1_cache: yes, supported_call_types: completion, caching_groups: [[a, b]]}\n",
    "{\"litellm_settings\": {\"cache\": true, \"cache_params\": {\"type\": \"disk\", \"disk_cache_dir\": \"/tmp/x\", \"ttl\": 1.5}}, \"general_settings\": {\"master_key\": \"sk-m\"}}\n",
    "base: &b {type: local, ttl: 60}\nlitellm_settings:\n  cache: true\n  cache_params:\n    <<: *b\n    namespace: a\n",
];

/// Literal values for the examples' environment references.
const ENV_VALUES: &[(&str, &str)] = &[
    ("os.environ/OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
    ("os.environ/ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
    ("os.environ/REDIS_PORT", "6379"),
    ("os.environ/REDIS_HOST", "127.0.0.1"),
];

fn seed(i: usize) -> String {
    let mut text = SEEDS[i % SEEDS.len()].to_owned();
    for (from, to) in ENV_VALUES {
        text = text.replace(from, to);
    }
    // Every other reference: a literal secret (most would be unset here).
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(p) = rest.find("os.environ/") {
        out.push_str(&rest[..p]);
        out.push_str("secret-");
        rest = &rest[p + "os.environ/".len()..];
    }
    out.push_str(rest);
    out
}

/// One case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// A seed config with byte edits, parsed as YAML.
    Mutated {
        /// Which seed.
        seed: u8,
        /// The edits.
        edits: Vec<Mutation>,
    },
    /// Arbitrary text parsed as YAML and JSON.
    Text(String),
    /// A generated proxy config document (also rendered as JSON and YAML text).
    Document(Value),
    /// The typed getters and `os.environ/` resolution on a parameter mapping.
    Params {
        /// The mapping.
        map: Value,
        /// A key to read besides the mapping's own.
        key: String,
    },
}

fn cache_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys: Vec<&'static str> = CORE_KEYS.to_vec();
        for k in llm_cache::builtin_registry().all_keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.extend([
            "default_redis_ttl",
            "key_extra_params",
            "redis_flush_size",
            "typo_key",
        ]);
        Box::leak(keys.into_boxed_slice())
    })
}

fn cache_types() -> Vec<&'static str> {
    let mut t = llm_cache::builtin_registry().types();
    t.extend(["valkey-semantic", "redis-cluster", "LOCAL", ""]);
    t
}

/// A value a config key plausibly takes, or a hostile one.
fn config_value() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => strategies::json_leaf(),
        2 => proptest::sample::select(&[
            "true", "false", "0", "1", "60", "0.05", "-1", "1e12", "1e13", "default_on",
            "default_off", "acompletion", "os.environ/PATH", "os.environ/LLM_CACHE_FUZZ_UNSET",
            "redis://127.0.0.1:6379/0", "rediss://u:p@h:1/2", "http://127.0.0.1:9", "/tmp/x",
            "s3://bucket/prefix", "local/potion", "bert/nope", "openai/text-embedding-3-small",
        ][..])
        .prop_map(|s| Value::String(s.to_owned())),
        1 => vec(strategies::hostile_string(), 0..4).prop_map(|v| json!(v)),
        1 => vec(vec(strategies::hostile_string(), 0..3), 0..3).prop_map(|v| json!(v)),
        1 => strategies::json(),
    ]
    .boxed()
}

fn cache_params() -> BoxedStrategy<Value> {
    (
        proptest::sample::select(cache_types()),
        vec((strategies::key_from(cache_keys()), config_value()), 0..10),
    )
        .prop_map(|(t, members)| {
            let mut m: Map<String, Value> = members.into_iter().collect();
            m.insert("type".to_owned(), Value::String(t.to_owned()));
            Value::Object(m)
        })
        .boxed()
}

const LITELLM_PARAMS: &[&str] = &[
    "model",
    "cache",
    "forward_metadata",
    "api_base",
    "base_url",
    "api_key",
    "api_version",
    "timeout",
    "extra_headers",
    "input_cost_per_token",
    "output_cost_per_token",
    "input_cost_per_second",
    "rpm",
    "merge_reasoning_content_in_choices",
];
const SETTINGS: &[&str] = &[
    "request_log",
    "upstream_timeout",
    "upstream_connect_timeout",
    "max_request_body_bytes",
    "shutdown_timeout",
    "partition_by_api_key",
];
const KEY_FIELDS: &[&str] = &["key", "tenant", "team_id", "models", "key_alias"];

fn model_entry() -> BoxedStrategy<Value> {
    let model = prop_oneof![
        proptest::sample::select(
            &[
                "openai/gpt-4o",
                "gpt-4o",
                "anthropic/claude",
                "azure/x",
                "vllm/m",
                "bedrock/x",
                "databricks_agent/x",
                "openai/*",
                "/",
                "openai/",
            ][..]
        )
        .prop_map(|s| Value::String(s.to_owned())),
        strategies::json_leaf(),
    ];
    let params = (
        model,
        vec((strategies::key_from(LITELLM_PARAMS), config_value()), 0..5),
    )
        .prop_map(|(model, members)| {
            let mut m: Map<String, Value> = members.into_iter().collect();
            m.insert("model".to_owned(), model);
            Value::Object(m)
        });
    (
        strategies::hostile_string(),
        params,
        proptest::option::of(strategies::json()),
    )
        .prop_map(|(name, params, info)| {
            let mut m = Map::new();
            m.insert("model_name".to_owned(), Value::String(name));
            m.insert("litellm_params".to_owned(), params);
            if let Some(i) = info {
                m.insert("model_info".to_owned(), i);
            }
            Value::Object(m)
        })
        .boxed()
}

fn document() -> BoxedStrategy<Value> {
    let keys = vec(
        vec((strategies::key_from(KEY_FIELDS), config_value()), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        0..4,
    );
    (
        proptest::option::weighted(0.8, vec(model_entry(), 0..4)),
        proptest::option::weighted(
            0.8,
            (
                config_value(),
                proptest::option::weighted(0.8, cache_params()),
            ),
        ),
        proptest::option::weighted(
            0.4,
            (
                proptest::option::of(strategies::json_leaf()),
                proptest::option::of(keys),
            ),
        ),
        proptest::option::weighted(
            0.4,
            vec((strategies::key_from(SETTINGS), config_value()), 0..6),
        ),
        vec(
            (
                strategies::key_from(&[
                    "router_settings",
                    "callbacks",
                    "environment_variables",
                    "model_lists",
                ]),
                strategies::json(),
            ),
            0..2,
        ),
    )
        .prop_map(|(models, litellm, general, settings, extra)| {
            let mut doc: Map<String, Value> = extra.into_iter().collect();
            if let Some(m) = models {
                doc.insert("model_list".to_owned(), Value::Array(m));
            }
            if let Some((cache, params)) = litellm {
                let mut ls = Map::new();
                ls.insert("cache".to_owned(), cache);
                if let Some(p) = params {
                    ls.insert("cache_params".to_owned(), p);
                }
                doc.insert("litellm_settings".to_owned(), Value::Object(ls));
            }
            if let Some((master, keys)) = general {
                let mut gs = Map::new();
                if let Some(m) = master {
                    gs.insert("master_key".to_owned(), m);
                }
                if let Some(k) = keys {
                    gs.insert("keys".to_owned(), Value::Array(k));
                }
                doc.insert("general_settings".to_owned(), Value::Object(gs));
            }
            if let Some(s) = settings {
                doc.insert(
                    "llm_cache_settings".to_owned(),
                    Value::Object(s.into_iter().collect()),
                );
            }
            Value::Object(doc)
        })
        .boxed()
}

/// YAML that stresses the parser: deep nesting, alias fan-out, long scalars, odd indentation.
fn hostile_yaml() -> BoxedStrategy<String> {
    prop_oneof![
        (1usize..20_000).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
        (1usize..20_000).prop_map(|n| "{a: ".repeat(n) + &"}".repeat(n)),
        (1usize..2_000).prop_map(|n| (0..n).map(|i| format!("{}- x\n", " ".repeat(i * 2))).collect()),
        (1usize..2_000).prop_map(|n| (0..n).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>() + "v"),
        // The billion laughs: each level aliases the previous one ten times.
        (1usize..12).prop_map(|levels| {
            let mut s = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_owned();
            for i in 1..levels {
                let refs = vec![format!("*l{}", i - 1); 10].join(", ");
                s.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
            }
            s
        }),
        (1usize..1_000).prop_map(|n| (0..n).map(|i| format!("a{i}: &a{i} x\n")).collect::<String>() + "b: [" + &(0..n).map(|i| format!("*a{i}")).collect::<Vec<_>>().join(",") + "]"),
        (0usize..1_000_000).prop_map(|n| format!("k: \"{}\"", "x".repeat(n))),
        (any::<u64>(), 1usize..200).prop_map(|(x, n)| format!("k: !!binary {}\n", "QUJD".repeat(n)) + &format!("n: {x}\n")),
        Just("? [a, b]\n: c\n".to_owned()),
        Just("%YAML 1.2\n--- !tag\na: 1\n...\n--- \nb: 2\n".to_owned()),
        Just("a: 1\na: 2\n".to_owned()),
        Just("*unknown\n".to_owned()),
        Just("\t- a\n".to_owned()),
        Just("\u{feff}a: 1".to_owned()),
    ]
    .boxed()
}

/// A block-style YAML rendering of a JSON value (strings double-quoted with JSON escapes).
fn to_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                out.push_str(&pad);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if matches!(val, Value::Object(o) if !o.is_empty())
                    || matches!(val, Value::Array(a) if !a.is_empty())
                {
                    out.push('\n');
                    to_yaml(val, indent + 2, out);
                } else {
                    out.push(' ');
                    out.push_str(&val.to_string());
                    out.push('\n');
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for val in a {
                out.push_str(&pad);
                out.push_str("-\n");
                to_yaml(val, indent + 2, out);
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&other.to_string());
            out.push('\n');
        }
    }
}

/// The target.
#[derive(Debug)]
pub struct ConfigTarget;

impl crate::Target for ConfigTarget {
    const NAME: &'static str = "config";
    const ABOUT: &'static str =
        "config YAML/JSON text, documents, typed parameters and os.environ/ references";
    type Input = Input;

    fn strategy() -> BoxedStrategy<Input> {
        prop_oneof![
            4 => (any::<u8>(), strategies::mutations(8)).prop_map(|(seed, edits)| Input::Mutated { seed, edits }),
            2 => prop_oneof![strategies::hostile_string(), hostile_yaml()].prop_map(Input::Text),
            4 => document().prop_map(Input::Document),
            2 => (
                prop_oneof![
                    3 => vec((strategies::key_from(cache_keys()), config_value()), 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                    1 => strategies::json_with_keys(cache_keys()),
                ],
                strategies::key_from(cache_keys()),
            )
                .prop_map(|(map, key)| Input::Params { map, key }),
        ]
        .boxed()
    }

    fn check(input: &Input) -> Result<(), String> {
        match input {
            Input::Mutated { seed: s, edits } => {
                let mut text = seed(*s as usize).into_bytes();
                strategies::apply(&mut text, edits);
                text_checks(&String::from_utf8_lossy(&text))
            }
            Input::Text(t) => text_checks(t),
            Input::Document(doc) => {
                let proxy = ProxyConfig::from_value(doc.clone());
                let text = doc.to_string();
                if ProxyConfig::from_yaml(&text).is_ok() && proxy.is_err() {
                    return Err("the JSON text of a rejected document was accepted".to_owned());
                }
                let mut yaml = String::new();
                to_yaml(doc, 0, &mut yaml);
                let _ = ProxyConfig::from_yaml(&yaml);
                if let Ok(c) = &proxy
                    && let Some(cache) = &c.cache
                {
                    exercise(cache)?;
                }
                if let Some(p) = doc
                    .get("litellm_settings")
                    .and_then(|l| l.get("cache_params"))
                {
                    let from_value = CacheConfig::from_value(p.clone());
                    let from_json = CacheConfig::from_json(&p.to_string());
                    // Only without fractional floats: serde_json here parses floats best-effort
                    // (`0.9999999999999999` reads as `1.0`, an integer), so their text and their
                    // value may validate differently (regressions/config-1796074162.json).
                    if !has_float(p) && from_value.is_ok() != from_json.is_ok() {
                        return Err(format!(
                            "from_value and from_json disagree: {:?} vs {:?}",
                            from_value.err().map(|e| e.to_string()),
                            from_json.err().map(|e| e.to_string())
                        ));
                    }
                    if let Ok(c) = from_value {
                        exercise(&c)?;
                    }
                }
                Ok(())
            }
            Input::Params { map, key } => params_checks(map, key),
        }
    }
}

fn text_checks(text: &str) -> Result<(), String> {
    let parsed = parse_yaml(text);
    let _ = ProxyConfig::from_yaml(text);
    if let Ok(c) = CacheConfig::from_yaml(text) {
        exercise(&c)?;
    }
    if let Ok(c) = CacheConfig::from_json(text) {
        exercise(&c)?;
    }
    if let Ok(v) = &parsed
        && let Some(p) = v
            .get("litellm_settings")
            .and_then(|l| l.get("cache_params"))
        && let Ok(c) = CacheConfig::from_value(p.clone())
    {
        exercise(&c)?;
    }
    Ok(())
}

/// Everything a loaded cache config computes without connecting anywhere.
fn exercise(c: &CacheConfig) -> Result<(), String> {
    c.settings()
        .map_err(|e| format!("a validated config has invalid settings: {e}"))?;
    let _ = c.default_ttl();
    let _ = c.memory_config();
    let _ = c.memory_backend();
    let _ = c.profile();
    Ok(())
}

fn params_checks(map: &Value, key: &str) -> Result<(), String> {
    let mut resolved = map.clone();
    let r = resolve_env_refs(&mut resolved, "cache_params");
    if r.is_ok() && has_env_ref(&resolved) {
        return Err("an os.environ/ reference survived resolution".to_owned());
    }
    if r.is_err() && !has_env_ref(map) {
        return Err("resolution failed without any reference".to_owned());
    }
    let Value::Object(m) = map else {
        return Ok(());
    };
    let p = Params::new(m.clone(), "cache_params");
    let keys: Vec<&str> = m.keys().map(String::as_str).chain([key]).collect();
    for k in keys {
        let raw = p.get(k);
        if let Ok(Some(s)) = p.string(k)
            && !matches!(raw, Some(Value::String(_) | Value::Number(_)))
        {
            return Err(format!("string() gave {s:?} for {raw:?}"));
        }
        if let Ok(Some(n)) = p.u64(k)
            && let Some(Value::String(s)) = raw
            && s.trim().parse::<u64>().ok() != Some(n)
        {
            return Err(format!("u64() gave {n} for {s:?}"));
        }
        if let Ok(Some(f)) = p.f64(k)
            && !f.is_finite()
        {
            return Err(format!("f64() gave {f}"));
        }
        if let Ok(Some(d)) = p.seconds(k)
            && d.as_secs_f64() >= 1e12
        {
            return Err(format!("seconds() gave {d:?}"));
        }
        let _ = p.bool(k);
        if let Ok(Some(list)) = p.string_list(k)
            && matches!(raw, Some(Value::String(_)))
            && list.len() != 1
        {
            return Err("a string is a one-element list".to_owned());
        }
    }
    Ok(())
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

fn has_env_ref(v: &Value) -> bool {
    match v {
        Value::String(s) => s.starts_with("os.environ/"),
        Value::Array(a) => a.iter().any(has_env_ref),
        Value::Object(m) => m.values().any(has_env_ref),
        _ => false,
    }
}
