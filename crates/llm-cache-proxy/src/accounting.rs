//! What the cache saved: per (model, tenant) totals for `/metrics` and `/cache/stats`, and the
//! request log (JSON lines, one record per request; the proxy's equivalent of LiteLLM's logging
//! callbacks).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Most distinct model labels kept apart; later ones are counted as `other` (a wildcard
/// deployment lets clients choose model names: metrics must not grow without bound).
const MAX_MODELS: usize = 256;

/// One request, as logged and counted.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Unix time, milliseconds.
    pub time_ms: u64,
    /// The tenant (`default` without tenant keys).
    pub tenant: String,
    /// The model group the request was routed to.
    pub model: String,
    /// `chat`, `text_completion`, `embedding`, `responses`, `anthropic_messages`, `rerank`,
    /// `transcription`.
    pub call_type: &'static str,
    /// `hit`, `miss`, `coalesced`, `partial`, `bypass`, `upstream_error`, ...
    pub cache: &'static str,
    /// The `Cache-Status` header sent.
    pub cache_status: String,
    /// The cache key (namespace included).
    pub key: Option<String>,
    /// Age of the entry served, seconds (hits).
    pub age_s: Option<u64>,
    /// HTTP status sent.
    pub status: u16,
    /// Time to the response headers, milliseconds.
    pub latency_ms: f64,
    /// Whether the response is a stream.
    pub stream: bool,
    /// Prompt (input) tokens of the answer.
    pub prompt_tokens: Option<u64>,
    /// Completion (output) tokens of the answer.
    pub completion_tokens: Option<u64>,
    /// What the request cost upstream (USD; 0 for a hit; absent when unpriced).
    pub cost: Option<f64>,
    /// What the cache avoided (USD; hits and partial embedding hits; absent when unpriced).
    pub saved_cost: Option<f64>,
    /// Prompt tokens the cache avoided.
    pub saved_prompt_tokens: Option<u64>,
    /// Completion tokens the cache avoided.
    pub saved_completion_tokens: Option<u64>,
    /// Upstream seconds the cache avoided.
    pub saved_upstream_s: Option<f64>,
}

/// Totals of one (model, tenant).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Requests served from the cache.
    pub hits: u64,
    /// Upstream cost of the requests that went upstream (USD, priced deployments).
    pub cost: f64,
    /// Cost the hits avoided (USD).
    pub saved_cost: f64,
    /// Prompt tokens the hits avoided.
    pub saved_prompt_tokens: u64,
    /// Completion tokens the hits avoided.
    pub saved_completion_tokens: u64,
    /// Upstream seconds the hits avoided.
    pub saved_upstream_seconds: f64,
}

/// Per (call type, cache outcome) traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    /// Requests.
    pub requests: u64,
    /// Response bytes sent (streams: the replayed bytes of hits only).
    pub bytes: u64,
}

/// The accounting of one proxy process.
#[derive(Debug)]
pub struct Accounting {
    started_ms: u64,
    totals: Mutex<BTreeMap<(String, String), Totals>>,
    traffic: Mutex<BTreeMap<(&'static str, &'static str), Traffic>>,
    log: Option<mpsc::Sender<String>>,
    /// Records dropped because the log writer fell behind.
    pub log_dropped: AtomicU64,
}

impl Default for Accounting {
    fn default() -> Self {
        Self::new(None)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Accounting {
    /// Accounting with an optional request log: `stdout`, or a file path (appended to). Must be
    /// called within a Tokio runtime when a log is configured.
    pub fn new(log: Option<&str>) -> Self {
        Accounting {
            started_ms: now_ms(),
            totals: Mutex::default(),
            traffic: Mutex::default(),
            log: log.map(spawn_writer),
            log_dropped: AtomicU64::new(0),
        }
    }

    /// Whether records are logged (else only counted: their `cache_status` and `key` are not
    /// read, and callers may leave them empty).
    pub fn logs(&self) -> bool {
        self.log.is_some()
    }

    /// Counts bytes of a response sent after its record (a stream's replayed body).
    pub fn add_bytes(&self, call_type: &'static str, cache: &'static str, bytes: u64) {
        self.traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((call_type, cache))
            .or_default()
            .bytes += bytes;
    }

    /// Counts a request and logs it.
    pub fn record(&self, r: Record, bytes: u64) {
        {
            let mut traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
            let t = traffic.entry((r.call_type, r.cache)).or_default();
            t.requests += 1;
            t.bytes += bytes;
        }
        if let Some(tx) = &self.log {
            let sent = serde_json::to_string(&r).is_ok_and(|line| tx.try_send(line).is_ok());
            if !sent {
                self.log_dropped.fetch_add(1, Relaxed);
            }
        }
        // The record's own strings become the key (no copy for a (model, tenant) seen before).
        let key = (r.model, r.tenant);
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let t = match totals.get_mut(&key) {
            Some(t) => t,
            None => {
                let known = totals.keys().any(|(m, _)| *m == key.0);
                let models = totals
                    .keys()
                    .map(|(m, _)| m)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                let key = if known || models < MAX_MODELS {
                    key
                } else {
                    ("other".to_owned(), key.1)
                };
                totals.entry(key).or_default()
            }
        };
        t.requests += 1;
        if r.cache == "hit" {
            t.hits += 1;
        }
        t.cost += r.cost.unwrap_or(0.0);
        t.saved_cost += r.saved_cost.unwrap_or(0.0);
        t.saved_prompt_tokens = t
            .saved_prompt_tokens
            .saturating_add(r.saved_prompt_tokens.unwrap_or(0));
        t.saved_completion_tokens = t
            .saved_completion_tokens
            .saturating_add(r.saved_completion_tokens.unwrap_or(0));
        t.saved_upstream_seconds += r.saved_upstream_s.unwrap_or(0.0);
    }

    /// Totals by (model, tenant).
    pub fn totals(&self) -> BTreeMap<(String, String), Totals> {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Traffic by (call type, cache outcome).
    pub fn traffic(&self) -> BTreeMap<(&'static str, &'static str), Traffic> {
        self.traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `GET /cache/stats`: since start, the hit ratio, saved cost, tokens and upstream time, in
    /// all and per model.
    pub fn stats(&self) -> Value {
        let totals = self.totals();
        let mut all = Totals::default();
        let mut per_model: BTreeMap<&str, Totals> = BTreeMap::new();
        for ((model, _), t) in &totals {
            for acc in [&mut all, per_model.entry(model.as_str()).or_default()] {
                acc.requests += t.requests;
                acc.hits += t.hits;
                acc.cost += t.cost;
                acc.saved_cost += t.saved_cost;
                acc.saved_prompt_tokens = acc
                    .saved_prompt_tokens
                    .saturating_add(t.saved_prompt_tokens);
                acc.saved_completion_tokens = acc
                    .saved_completion_tokens
                    .saturating_add(t.saved_completion_tokens);
                acc.saved_upstream_seconds += t.saved_upstream_seconds;
            }
        }
        let ratio = |t: &Totals| {
            if t.requests == 0 {
                0.0
            } else {
                t.hits as f64 / t.requests as f64
            }
        };
        let view = |t: &Totals| {
            let mut v = serde_json::to_value(t).unwrap_or_default();
            v["hit_ratio"] = json!(ratio(t));
            v
        };
        json!({
            "since_ms": self.started_ms,
            "uptime_s": Duration::from_millis(now_ms().saturating_sub(self.started_ms)).as_secs(),
            "totals": view(&all),
            "per_model": per_model.iter().map(|(m, t)| (m.to_string(), view(t))).collect::<serde_json::Map<_, _>>(),
            "per_tenant": totals.iter().fold(BTreeMap::<&str, Totals>::new(), |mut acc, ((_, tenant), t)| {
                let a = acc.entry(tenant.as_str()).or_default();
                a.requests += t.requests;
                a.hits += t.hits;
                a.saved_cost += t.saved_cost;
                a.cost += t.cost;
                acc
            }).iter().map(|(k, t)| (k.to_string(), view(t))).collect::<serde_json::Map<_, _>>(),
            "request_log_dropped": self.log_dropped.load(Relaxed),
        })
    }
}

/// The request log writer: a bounded queue drained by one task, so a slow disk or terminal
/// never slows a request (records that do not fit are dropped and counted).
fn spawn_writer(target: &str) -> mpsc::Sender<String> {
    let (tx, mut rx) = mpsc::channel::<String>(16_384);
    let target = target.to_owned();
    tokio::spawn(async move {
        let mut sink: Box<dyn std::io::Write + Send> = if target == "stdout" || target == "-" {
            Box::new(std::io::stdout())
        } else {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&target)
            {
                Ok(f) => Box::new(std::io::BufWriter::new(f)),
                Err(e) => {
                    tracing::error!(path = %target, error = %e, "cannot open the request log; records are dropped");
                    return;
                }
            }
        };
        while let Some(line) = rx.recv().await {
            let mut ok = writeln!(sink, "{line}").is_ok();
            // Drain what is queued, then flush once.
            while let Ok(line) = rx.try_recv() {
                ok &= writeln!(sink, "{line}").is_ok();
            }
            if !(ok && sink.flush().is_ok()) {
                tracing::warn!(path = %target, "writing the request log failed");
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(model: &str, cache: &'static str) -> Record {
        Record {
            time_ms: 0,
            tenant: "default".into(),
            model: model.into(),
            call_type: "chat",
            cache,
            cache_status: String::new(),
            key: None,
            age_s: None,
            status: 200,
            latency_ms: 1.0,
            stream: false,
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            cost: Some(if cache == "hit" { 0.0 } else { 0.5 }),
            saved_cost: (cache == "hit").then_some(0.5),
            saved_prompt_tokens: (cache == "hit").then_some(10),
            saved_completion_tokens: (cache == "hit").then_some(5),
            saved_upstream_s: (cache == "hit").then_some(2.0),
        }
    }

    #[test]
    fn totals_and_stats() {
        let a = Accounting::default();
        a.record(record("m", "miss"), 100);
        a.record(record("m", "hit"), 100);
        a.record(record("m", "hit"), 100);
        let s = a.stats();
        assert_eq!(s["totals"]["requests"], 3);
        assert_eq!(s["totals"]["hits"], 2);
        assert!((s["totals"]["hit_ratio"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s["totals"]["saved_cost"], 1.0);
        assert_eq!(s["totals"]["cost"], 0.5);
        assert_eq!(s["totals"]["saved_prompt_tokens"], 20);
        assert_eq!(s["per_model"]["m"]["saved_upstream_seconds"], 4.0);
        assert_eq!(a.traffic()[&("chat", "hit")].bytes, 200);
    }

    #[test]
    fn model_labels_are_bounded() {
        let a = Accounting::default();
        for i in 0..(MAX_MODELS + 10) {
            a.record(record(&format!("m{i}"), "miss"), 0);
        }
        let totals = a.totals();
        assert_eq!(totals.len(), MAX_MODELS + 1);
        assert_eq!(
            totals[&("other".to_owned(), "default".to_owned())].requests,
            10
        );
    }
}
