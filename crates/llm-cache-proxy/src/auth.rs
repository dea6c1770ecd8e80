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

/// Admin endpoints: the master key when one is set; never a tenant key. Without any key, only
/// loopback peers (unless `allow_remote_admin_without_key`): anyone who reaches the port must not
/// be able to flush the cache or read its metrics.
pub(crate) async fn admin_only(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    match req.extensions().get::<Caller>() {
        Some(Caller::Master) => next.run(req).await,
        Some(Caller::Open) => {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            let local = peer.is_some_and(|ip| {
                ip.is_loopback()
                    || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
            });
            if local || st.settings.allow_remote_admin_without_key {
                next.run(req).await
            } else {
                tracing::warn!(
                    peer = ?peer,
                    path = %req.uri().path(),
                    "admin endpoint refused: no master key and the client is not on loopback"
                );
                error(
                    StatusCode::FORBIDDEN,
                    "admin endpoints without a master key answer loopback clients only (set general_settings.master_key, or allow_remote_admin_without_key)",
                    "auth_error",
                    None,
                )
            }
        }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;

    use crate::config::ProxyConfig;
    use crate::server::{app, state_from_config};

    async fn admin_status(yaml: &str, peer: Option<&str>, key: Option<&str>) -> u16 {
        let config = ProxyConfig::from_yaml(yaml).unwrap();
        let mut router = app(state_from_config(&config).await.unwrap());
        let mut req = Request::post("/cache/flushall");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let mut req = req.body(Body::empty()).unwrap();
        if let Some(p) = peer {
            req.extensions_mut()
                .insert(ConnectInfo(p.parse::<SocketAddr>().unwrap()));
        }
        let resp = tower_service::Service::call(&mut router, req)
            .await
            .unwrap();
        resp.status().as_u16()
    }

    const OPEN: &str =
        "model_list: []\nlitellm_settings: {cache: true, cache_params: {type: local}}\n";

    #[tokio::test]
    async fn admin_without_a_key_answers_loopback_peers_only() {
        for local in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert_eq!(admin_status(OPEN, Some(local), None).await, 200, "{local}");
        }
        for remote in ["10.1.2.3:5000", "[2001:db8::1]:5000", "192.168.0.2:1"] {
            assert_eq!(
                admin_status(OPEN, Some(remote), None).await,
                403,
                "{remote}"
            );
        }
        // Unknown peer (served without connect info): refused.
        assert_eq!(admin_status(OPEN, None, None).await, 403);
        // The operator's explicit opt-in.
        let opted = format!("{OPEN}general_settings: {{allow_remote_admin_without_key: true}}\n");
        assert_eq!(admin_status(&opted, Some("10.1.2.3:5000"), None).await, 200);
        // With a master key, the key decides, wherever the client is.
        let keyed = format!("{OPEN}general_settings: {{master_key: sk-m}}\n");
        assert_eq!(
            admin_status(&keyed, Some("10.1.2.3:5000"), Some("sk-m")).await,
            200
        );
        assert_eq!(admin_status(&keyed, Some("127.0.0.1:1"), None).await, 401);
    }
}
