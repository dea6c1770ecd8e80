//! **TEST-ONLY** adapter in front of fake-gcs-server: gives it the XML-API simple upload.
//!
//! `object_store` writes to GCS with the XML API (`PUT /<bucket>/<object>`); fake-gcs-server
//! implements the XML API's reads, listing and deletes but answers that upload with
//! `400 invalid uploadType` (fsouza/fake-gcs-server#331). This adapter listens on a free
//! loopback port and:
//!
//! * turns `PUT /<bucket>/<object>` (without `x-goog-copy-source`, i.e. a simple upload) into
//!   fake-gcs-server's JSON media upload,
//!   `POST /upload/storage/v1/b/<bucket>/o?uploadType=media&name=<object>`, forwarding the body,
//!   `Content-Type`, `Cache-Control`, `Content-Disposition`, `Content-Encoding`,
//!   `Content-Language` and every `x-goog-meta-*` header, and `x-goog-if-generation-match` as
//!   `ifGenerationMatch`; it answers as the XML API does: status 200 with `ETag` and
//!   `x-goog-generation` (and `x-goog-metageneration`) taken from the stored object's JSON
//!   resource, or the emulator's error status and body;
//! * passes every other request (GET, HEAD, DELETE, list, ...) through unchanged, with the
//!   emulator's status, headers and body.
//!
//! So the bytes, metadata, generations, listings and deletes the tests see all come from
//! fake-gcs-server; only the shape of one request and its answer is translated. Not covered:
//! copy (`x-goog-copy-source`, answered with 501), XML multipart uploads (`POST ?uploads`,
//! passed through and refused by the emulator), and anything real GCS does that
//! fake-gcs-server does not (IAM, signatures, quotas, its exact error bodies).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A running adapter (it lives until the process exits).
#[derive(Debug, Clone)]
pub struct GcsXmlUploadAdapter {
    addr: SocketAddr,
    upstream: String,
}

/// Headers a simple upload carries over to the JSON upload.
const FORWARDED: &[&str] = &[
    "content-type",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
];

impl GcsXmlUploadAdapter {
    /// Starts an adapter in front of the fake-gcs-server at `upstream`
    /// (`http://127.0.0.1:17501`), on its own thread and Tokio runtime, listening on a free
    /// port of 127.0.0.1.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub fn start(upstream: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local address");
        let upstream = upstream.trim_end_matches('/').to_owned();
        let up = upstream.clone();
        std::thread::Builder::new()
            .name("gcs-xml-upload-adapter".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("adapter runtime");
                rt.block_on(serve(listener, up));
            })
            .expect("spawn the adapter thread");
        GcsXmlUploadAdapter { addr, upstream }
    }

    /// One adapter per process and upstream, started on first use.
    pub fn shared(upstream: &str) -> &'static GcsXmlUploadAdapter {
        static ADAPTER: OnceLock<GcsXmlUploadAdapter> = OnceLock::new();
        let a = ADAPTER.get_or_init(|| GcsXmlUploadAdapter::start(upstream));
        assert_eq!(
            a.upstream,
            upstream.trim_end_matches('/'),
            "one shared adapter per process"
        );
        a
    }

    /// The adapter's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The adapter's base URL (`http://127.0.0.1:<port>`), for `gcs_base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve(listener: std::net::TcpListener, upstream: String) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    // reqwest is built without a TLS crypto provider in llm-cache's workspace: ring is the one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, client.clone(), upstream.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    client: reqwest::Client,
    upstream: String,
) -> Result<Resp, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, format!("adapter: {e}"))),
    };
    let simple_upload = parts.method == Method::PUT
        && parts.uri.query().is_none()
        && !parts.headers.contains_key("x-goog-copy-source");
    let result = if parts.method == Method::PUT && parts.headers.contains_key("x-goog-copy-source")
    {
        Ok(reply(
            StatusCode::NOT_IMPLEMENTED,
            "test adapter: copy (x-goog-copy-source) is not translated",
        ))
    } else if simple_upload {
        upload(&parts.uri, &parts.headers, body, &client, &upstream).await
    } else {
        pass_through(
            &parts.method,
            &parts.uri,
            &parts.headers,
            body,
            &client,
            &upstream,
        )
        .await
    };
    Ok(result.unwrap_or_else(|e| reply(StatusCode::BAD_GATEWAY, format!("test adapter: {e}"))))
}

/// `PUT /<bucket>/<object>` → `POST /upload/storage/v1/b/<bucket>/o?uploadType=media&name=...`.
async fn upload(
    uri: &hyper::Uri,
    headers: &HeaderMap,
    body: Bytes,
    client: &reqwest::Client,
    upstream: &str,
) -> Result<Resp, String> {
    let path = uri.path().trim_start_matches('/');
    let Some((bucket, object)) = path.split_once('/') else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "test adapter: no object name",
        ));
    };
    let bucket = percent_decode(bucket)?;
    let object = percent_decode(object)?;
    let mut url = format!(
        "{upstream}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
        percent_encode(&bucket),
        percent_encode(&object)
    );
    if let Some(g) = headers.get("x-goog-if-generation-match") {
        let g = g.to_str().map_err(|e| e.to_string())?;
        url.push_str(&format!("&ifGenerationMatch={}", percent_encode(g)));
    }
    let mut out = client.post(url).body(body);
    for (name, value) in headers {
        let n = name.as_str();
        if FORWARDED.contains(&n) || n.starts_with("x-goog-meta-") {
            out = out.header(n, value.as_bytes());
        }
    }
    let res = out.send().await.map_err(|e| e.to_string())?;
    let status = res.status();
    let bytes = res.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Ok(reply(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            bytes,
        ));
    }
    let resource: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("upload answer is not JSON: {e}"))?;
    let field = |k: &str| -> Result<String, String> {
        match &resource[k] {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => Err(format!("upload answer has no `{k}`")),
        }
    };
    let mut r = reply(StatusCode::OK, Bytes::new());
    let h = r.headers_mut();
    let etag = format!("\"{}\"", field("etag")?);
    h.insert(
        "etag",
        HeaderValue::from_str(&etag).map_err(|e| e.to_string())?,
    );
    h.insert(
        "x-goog-generation",
        HeaderValue::from_str(&field("generation")?).map_err(|e| e.to_string())?,
    );
    if let Ok(m) = field("metageneration") {
        h.insert(
            "x-goog-metageneration",
            HeaderValue::from_str(&m).map_err(|e| e.to_string())?,
        );
    }
    Ok(r)
}

async fn pass_through(
    method: &Method,
    uri: &hyper::Uri,
    headers: &HeaderMap,
    body: Bytes,
    client: &reqwest::Client,
    upstream: &str,
) -> Result<Resp, String> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let method =
        reqwest::Method::from_bytes(method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut out = client.request(method, format!("{upstream}{pq}")).body(body);
    for (name, value) in headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let res = out.send().await.map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response_headers = HeaderMap::new();
    for (name, value) in res.headers() {
        if matches!(name.as_str(), "connection" | "transfer-encoding") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            response_headers.append(n, v);
        }
    }
    let bytes = res.bytes().await.map_err(|e| e.to_string())?;
    let mut r = reply(status, bytes);
    *r.headers_mut() = response_headers;
    Ok(r)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        for s in ["a/b.txt", "%empty", "é ✓", "ns/%2E%2E"] {
            assert_eq!(percent_decode(&percent_encode(s)).unwrap(), s);
        }
        assert_eq!(percent_decode("test%2Dbucket").unwrap(), "test-bucket");
        assert!(percent_decode("%zz").is_err());
    }
}
