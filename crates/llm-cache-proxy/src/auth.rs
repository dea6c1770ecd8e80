//! Who is calling, and which cache partition their requests share: the master key, tenants'
//! static keys, pass-through credentials (see docs/proxy.md, "What is shared, with whom").

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::config::TenantKey;
use crate::server::{AppState, error};

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        return Some(
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim(),
        );
    }
    headers
        .get("x-api-key")
        .or_else(|| headers.get("api-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Who is calling, as established by [`auth`].
#[derive(Debug, Clone)]
pub enum Caller {
    /// No authentication is configured (no master key, no tenant keys).
    Open,
    /// The master key: the admin, and the default (unpartitioned) cache scope.
    Master,
    /// A tenant's static key: its own cache partition.
    Tenant(Arc<TenantKey>),
}

impl AppState {
    /// Whether the proxy authenticates callers (a master key or tenant keys).
    pub fn auth_enabled(&self) -> bool {
        self.master_key.is_some() || !self.keys.is_empty()
    }
}

pub(crate) async fn auth(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = if st.auth_enabled() {
        let presented = presented_key(req.headers()).unwrap_or("");
        let master = st
            .master_key
            .as_ref()
            .is_some_and(|m| constant_time_eq(presented.as_bytes(), m.as_bytes()));
        // Compare against every key (no early exit: the time taken says nothing of which).
        let tenant = st.keys.iter().fold(None, |found, k| {
            if constant_time_eq(presented.as_bytes(), k.key.as_bytes()) {
                Some(k.clone())
            } else {
                found
            }
        });
        match (master, tenant) {
            (true, _) => Caller::Master,
            (false, Some(t)) => Caller::Tenant(t),
            (false, None) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "Authentication Error: a valid key is required (Authorization: Bearer <key> or x-api-key)",
                    "auth_error",
                    None,
                );
            }
        }
    } else {
        Caller::Open
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Admin endpoints: the master key when one is set; never a tenant key.
pub(crate) async fn admin_only(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(Caller::Master | Caller::Open) => next.run(req).await,
        _ => error(
            StatusCode::FORBIDDEN,
            "admin endpoints need the master key (general_settings.master_key)",
            "auth_error",
            None,
        ),
    }
}

/// The caller's own credential, as forwarded to a deployment speaking `api` that has no key of
/// its own (pass-through): `Authorization` for OpenAI-style upstreams, `x-api-key` (else
/// `Authorization`) for Anthropic's. Never when the proxy authenticates callers itself.
pub(crate) fn client_credential(
    st: &AppState,
    headers: &HeaderMap,
    api: crate::config::Api,
) -> Option<(axum::http::HeaderName, HeaderValue)> {
    if st.auth_enabled() {
        return None;
    }
    let x_api_key = axum::http::HeaderName::from_static("x-api-key");
    match api {
        crate::config::Api::OpenAi => headers
            .get(header::AUTHORIZATION)
            .map(|v| (header::AUTHORIZATION, v.clone())),
        crate::config::Api::Anthropic => headers
            .get(&x_api_key)
            .map(|v| (x_api_key.clone(), v.clone()))
            .or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .map(|v| (header::AUTHORIZATION, v.clone()))
            }),
    }
}

/// The cache partition of a request: requests in different partitions never share an entry.
///
/// * A tenant key: the tenant.
/// * No authentication and a deployment without its own `api_key` (pass-through: the upstream
///   checks the caller's credential): the credential forwarded upstream, hashed. A hit then
///   only ever goes to a caller presenting the credential the upstream accepted for it.
/// * `partition_by_api_key`: the presented key, hashed.
pub(crate) fn partition(
    st: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
    deployment: &crate::config::Deployment,
) -> Option<String> {
    let short = |bytes: &[u8]| llm_cache::core::key::hash_hex(bytes)[..32].to_owned();
    match caller {
        Caller::Tenant(t) => return Some(format!("tenant:{}", t.tenant)),
        Caller::Open if deployment.api_key.is_none() => {
            let credential = client_credential(st, headers, deployment.api);
            let mut bytes = Vec::new();
            if let Some((name, value)) = &credential {
                bytes.extend_from_slice(name.as_str().as_bytes());
                bytes.push(b':');
                bytes.extend_from_slice(value.as_bytes());
            }
            return Some(format!("credential:{}", short(&bytes)));
        }
        Caller::Open | Caller::Master => {}
    }
    if !st.partition_by_api_key {
        return None;
    }
    presented_key(headers).map(|k| format!("key:{}", short(k.as_bytes())))
}
