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

pub(crate) fn forwarded_auth<'a>(st: &AppState, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    // The client's own key goes upstream only when it is not one of ours (master or tenant).
    if st.auth_enabled() {
        None
    } else {
        headers.get(header::AUTHORIZATION)
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
            let credential = forwarded_auth(st, headers).map_or(&[][..], HeaderValue::as_bytes);
            return Some(format!("credential:{}", short(credential)));
        }
        Caller::Open | Caller::Master => {}
    }
    if !st.partition_by_api_key {
        return None;
    }
    presented_key(headers).map(|k| format!("key:{}", short(k.as_bytes())))
}
