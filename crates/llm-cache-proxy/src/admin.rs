//! Health, metrics and the cache admin endpoints (`/cache/ping`, `/cache/delete`,
//! `/cache/flushall`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::server::{AppState, error};

pub(crate) async fn liveliness() -> impl IntoResponse {
    axum::Json("I'm alive!")
}

/// What the readiness checker last learnt of the cache backend.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The backend has answered a ping since the last failure.
    connected: std::sync::atomic::AtomicBool,
    /// At least one ping has finished (before that, the backend is "connecting").
    checked: std::sync::atomic::AtomicBool,
}

impl Readiness {
    fn record(&self, result: Result<(), String>) {
        use std::sync::atomic::Ordering::Release;
        let was = self.connected.load(std::sync::atomic::Ordering::Acquire);
        let first = !self.checked.load(std::sync::atomic::Ordering::Acquire);
        // Errors are logged, never put in the probe's answer (they may name internal hosts).
        match result {
            Ok(()) => {
                if !was {
                    tracing::info!("readiness: cache backend connected");
                }
                self.connected.store(true, Release);
            }
            Err(e) => {
                if was || first {
                    tracing::warn!(error = %e, "readiness: cache backend unreachable");
                }
                self.connected.store(false, Release);
            }
        }
        self.checked.store(true, Release);
    }

    fn connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Pings the cache backend now and every `readiness_check_interval`, for the readiness probe
/// (a disabled cache needs no checker).
pub(crate) fn spawn_readiness_checker(st: &Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let st = st.clone();
    tokio::spawn(async move {
        if st.cache.engine().is_none() {
            return;
        }
        let mut tick = tokio::time::interval(st.settings.readiness_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = st.cache.probe().await.map_err(|e| e.to_string());
            st.readiness.record(result);
        }
    })
}

/// Readiness: `healthy`; `connecting` until the cache backend first answers; `degraded` while it
/// does not answer or a circuit breaker is not closed. With `readiness_requires_cache` (the
/// default) anything but `healthy` is a 503, so no traffic is routed to a replica whose cache is
/// not there; without it the proxy stays ready (it fails open, serving uncached) and reports
/// the cache in the body. Needs no key: it reveals states, not data.
pub(crate) async fn readiness(State(st): State<Arc<AppState>>) -> Response {
    let engine = st.cache.engine();
    let label = |b: llm_cache::core::BreakerState| format!("{b:?}").to_lowercase();
    let breaker = engine.as_ref().map(|e| e.breaker_state());
    let semantic = engine.as_ref().and_then(|e| e.semantic_breaker_state());
    let closed = |b: Option<llm_cache::core::BreakerState>| {
        b.is_none_or(|b| b == llm_cache::core::BreakerState::Closed)
    };
    let checked = st
        .readiness
        .checked
        .load(std::sync::atomic::Ordering::Acquire);
    let backend = match (&engine, checked, st.readiness.connected()) {
        (None, _, _) => None,
        (Some(_), false, _) => Some("connecting"),
        (Some(_), true, true) => Some("connected"),
        (Some(_), true, false) => Some("unreachable"),
    };
    let status = match backend {
        Some("connecting") => "connecting",
        Some("unreachable") => "degraded",
        _ if closed(breaker) && closed(semantic) => "healthy",
        _ => "degraded",
    };
    let code = if status == "healthy" || !st.settings.readiness_requires_cache {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(json!({
            "status": status,
            "cache": st.cache_type,
            "cache_backend": backend,
            "cache_breaker": breaker.map(label),
            "semantic_breaker": semantic.map(label),
            "llm_cache_version": env!("CARGO_PKG_VERSION"),
        })),
    )
        .into_response()
}

pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render_with(&st.cache, Some(&st.accounting)),
    )
        .into_response()
}

pub(crate) async fn cache_ping(State(st): State<Arc<AppState>>) -> Response {
    let Some(cache_type) = &st.cache_type else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Cache not initialized. litellm.cache is None",
            "cache_ping_error",
            Some("cache_ping"),
        );
    };
    match st.cache.ping().await {
        Ok(report) => {
            let healthy = report.set_ok && report.semantic.as_ref().is_none_or(|s| s.is_ok());
            let body = json!({
                "status": if healthy { "healthy" } else { "unhealthy" },
                "cache_type": cache_type,
                "ping_response": true,
                "set_cache_response": if report.set_ok { "success" } else { "failed" },
                "latency_ms": report.health.latency.as_secs_f64() * 1000.0,
                "breaker": format!("{:?}", report.breaker).to_lowercase(),
                "health_check_cache_params": report.health.details,
                "semantic": report.semantic.map(|s| match s {
                    Ok(h) => json!({"status": "healthy", "details": h.details}),
                    Err(e) => json!({"status": "unhealthy", "error": e}),
                }),
            });
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(body)).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service Unhealthy ({e})"),
            "cache_ping_error",
            Some("cache_ping"),
        ),
    }
}

pub(crate) async fn cache_delete(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {e}"),
                "invalid_request_error",
                None,
            );
        }
    };
    let keys: Option<Vec<String>> = v
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|k| k.as_str().map(str::to_owned)).collect());
    let Some(keys) = keys else {
        return error(
            StatusCode::BAD_REQUEST,
            "`keys` must be a list of cache keys (strings)",
            "invalid_request_error",
            Some("keys"),
        );
    };
    if st.cache_type.is_none() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Cache not initialized",
            "cache_delete_error",
            None,
        );
    }
    match st.cache.delete(&keys).await {
        Ok(n) => axum::Json(json!({"status": "success", "deleted": n})).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Cache Delete Failed({e})"),
            "cache_delete_error",
            None,
        ),
    }
}

pub(crate) async fn cache_flushall(State(st): State<Arc<AppState>>) -> Response {
    if st.cache_type.is_none() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unhealthy (cache not initialized)",
            "cache_flushall_error",
            None,
        );
    }
    match st.cache.clear(None).await {
        Ok(n) => axum::Json(json!({"status": "success", "deleted": n})).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service Unhealthy ({e})"),
            "cache_flushall_error",
            None,
        ),
    }
}

/// `GET /cache/stats`: since the proxy started, the hit ratio, what the cache saved (cost,
/// tokens, upstream time) in all, per model and per tenant (admin).
pub(crate) async fn cache_stats(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(st.accounting.stats()).into_response()
}
