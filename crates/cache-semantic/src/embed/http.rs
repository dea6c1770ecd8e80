//! [`HttpEmbedder`]: an OpenAI-compatible `/embeddings` client.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use cache_core::semantic::{Embedder, EmbeddingEndpoint};
use cache_core::{CacheError, Result};
use serde::Deserialize;
use serde_json::{Value, json};

const NAME: &str = "http-embedder";
/// Longest error body quoted in an error message.
const MAX_ERROR_BODY: usize = 300;

/// How vectors come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EncodingFormat {
    /// JSON arrays of numbers.
    Float,
    /// Little-endian f32 bytes, base64 (a third of the size; OpenAI's SDK default).
    #[default]
    Base64,
}

impl EncodingFormat {
    fn as_str(self) -> &'static str {
        match self {
            EncodingFormat::Float => "float",
            EncodingFormat::Base64 => "base64",
        }
    }
}

/// Where and how to call the embeddings API.
#[derive(Clone)]
#[non_exhaustive]
pub struct HttpEmbedderConfig {
    /// Where to send the requests, as whom (the one endpoint type: `cache-core`'s, also what a
    /// proxy's model list resolves a model name to).
    pub endpoint: EmbeddingEndpoint,
    /// `dimensions` request parameter (models that support shortening), and the expected size.
    pub dimensions: Option<usize>,
    /// Texts per request.
    pub batch_size: usize,
    /// Deadline of one request (`semantic_cache_embedding_timeout`).
    pub timeout: Duration,
    /// Requested response encoding (both are accepted whatever was requested).
    pub encoding: EncodingFormat,
}

impl fmt::Debug for HttpEmbedderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEmbedderConfig")
            .field("endpoint", &self.endpoint)
            .field("dimensions", &self.dimensions)
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl HttpEmbedderConfig {
    /// Defaults: no key, base64 responses, batches of 64, a 2 s timeout.
    pub fn new(api_base: impl Into<String>, model: impl Into<String>) -> Self {
        Self::from_endpoint(EmbeddingEndpoint::new(api_base, model))
    }

    /// A client configuration for an endpoint (e.g. one a model list resolved), with the
    /// defaults of [`HttpEmbedderConfig::new`].
    pub fn from_endpoint(mut endpoint: EmbeddingEndpoint) -> Self {
        endpoint.api_base = endpoint.api_base.trim_end_matches('/').to_owned();
        endpoint.api_key = endpoint.api_key.filter(|k| !k.is_empty());
        HttpEmbedderConfig {
            endpoint,
            dimensions: None,
            batch_size: 64,
            timeout: Duration::from_secs(2),
            encoding: EncodingFormat::default(),
        }
    }

    /// Sets the API key.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.endpoint.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// Sets the requested dimensions.
    pub fn with_dimensions(mut self, dims: Option<usize>) -> Self {
        self.dimensions = dims;
        self
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the batch size (at least 1).
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets the response encoding.
    pub fn with_encoding(mut self, encoding: EncodingFormat) -> Self {
        self.encoding = encoding;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.endpoint = self.endpoint.with_header(name, value);
        self
    }

    /// Adds a query parameter.
    pub fn with_query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.endpoint = self.endpoint.with_query(name, value);
        self
    }

    /// Marks an Azure OpenAI endpoint (the key goes in `api-key` too).
    pub fn with_azure(mut self, azure: bool) -> Self {
        self.endpoint.azure = azure;
        self
    }
}

/// An OpenAI-compatible embeddings client (`POST {api_base}/embeddings`).
///
/// One HTTP request per batch of [`HttpEmbedderConfig::batch_size`] texts, each bounded by
/// [`HttpEmbedderConfig::timeout`]. Errors and timeouts are [`CacheError`]s the semantic layer
/// turns into misses; 429, 5xx and transport errors are marked transient (they count towards
/// the semantic circuit breaker), 4xx are not. `Debug` and errors never show the API key.
pub struct HttpEmbedder {
    client: reqwest::Client,
    config: HttpEmbedderConfig,
    url: reqwest::Url,
    dims: AtomicUsize,
}

impl fmt::Debug for HttpEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEmbedder")
            .field("config", &self.config)
            .finish()
    }
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    index: Option<usize>,
    embedding: Value,
}

impl HttpEmbedder {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`CacheError::Config`] for an API base that is not an http(s) URL, or a TLS setup error.
    pub fn new(config: HttpEmbedderConfig) -> Result<Self> {
        let base = &config.endpoint.api_base;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CacheError::Config(format!(
                "embedding api_base `{base}` must be an http:// or https:// URL"
            )));
        }
        if config.endpoint.model.is_empty() {
            return Err(CacheError::Config(
                "embedding model name must not be empty".to_owned(),
            ));
        }
        // ring is the one TLS crypto provider of llm-cache's builds (reqwest has none built in).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| CacheError::Config(format!("embedding HTTP client: {e}")))?;
        let mut url = reqwest::Url::parse(&format!("{}/embeddings", config.endpoint.api_base))
            .map_err(|e| CacheError::Config(format!("embedding api_base `{base}`: {e}")))?;
        if !config.endpoint.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&config.endpoint.query);
        }
        Ok(HttpEmbedder {
            client,
            dims: AtomicUsize::new(config.dimensions.unwrap_or(0)),
            config,
            url,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HttpEmbedderConfig {
        &self.config
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut body = json!({
            "model": self.config.endpoint.model,
            "input": texts,
            "encoding_format": self.config.encoding.as_str(),
        });
        if let Some(d) = self.config.dimensions {
            body["dimensions"] = json!(d);
        }
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(self.config.timeout)
            .header("content-type", "application/json");
        if let Some(key) = &self.config.endpoint.api_key {
            req = req.bearer_auth(key);
            if self.config.endpoint.azure {
                req = req.header("api-key", key);
            }
        }
        for (k, v) in &self.config.endpoint.headers {
            req = req.header(k, v);
        }
        let body =
            serde_json::to_vec(&body).map_err(|e| CacheError::Serialization(e.to_string()))?;
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            if text.len() > MAX_ERROR_BODY {
                let mut cut = MAX_ERROR_BODY;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            let transient = status.as_u16() == 429 || status.is_server_error();
            return Err(CacheError::backend(
                NAME,
                "embed",
                transient,
                format!("{} answered {status}: {text}", self.url),
            ));
        }
        let parsed: Response = serde_json::from_slice(&bytes).map_err(|e| {
            CacheError::backend(
                NAME,
                "embed",
                false,
                format!("{}: not an embeddings response: {e}", self.url),
            )
        })?;
        if parsed.data.len() != texts.len() {
            return Err(CacheError::backend(
                NAME,
                "embed",
                false,
                format!(
                    "{}: {} vectors for {} inputs",
                    self.url,
                    parsed.data.len(),
                    texts.len()
                ),
            ));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (pos, item) in parsed.data.into_iter().enumerate() {
            let i = item.index.unwrap_or(pos);
            let v = decode_vector(&item.embedding).map_err(|m| {
                CacheError::backend(NAME, "embed", false, format!("{}: item {i}: {m}", self.url))
            })?;
            match out.get_mut(i) {
                Some(slot @ None) => *slot = Some(v),
                _ => {
                    return Err(CacheError::backend(
                        NAME,
                        "embed",
                        false,
                        format!("{}: bad or repeated index {i}", self.url),
                    ));
                }
            }
        }
        let out: Vec<Vec<f32>> = out.into_iter().map(|v| v.unwrap_or_default()).collect();
        if let Some(first) = out.first() {
            let expected = self.dims.load(Ordering::Relaxed);
            if expected != 0 && out.iter().any(|v| v.len() != expected) {
                return Err(CacheError::backend(
                    NAME,
                    "embed",
                    false,
                    format!(
                        "{}: model `{}` returned {} dimensions, expected {expected}",
                        self.url,
                        self.config.endpoint.model,
                        first.len()
                    ),
                ));
            }
            self.dims.store(first.len(), Ordering::Relaxed);
        }
        Ok(out)
    }

    fn transport(&self, e: &reqwest::Error) -> CacheError {
        if e.is_timeout() {
            return CacheError::Timeout {
                backend: NAME.to_owned(),
                operation: "embed",
                after: self.config.timeout,
            };
        }
        // reqwest's messages name the URL, never the headers.
        CacheError::unavailable(NAME, format!("{}: {e}", self.url))
    }
}

/// A vector as a JSON array of numbers or a base64 string of little-endian f32s.
fn decode_vector(v: &Value) -> std::result::Result<Vec<f32>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| format!("non-numeric component {x}"))
            })
            .collect(),
        Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| format!("invalid base64 embedding: {e}"))?;
            if bytes.len() % 4 != 0 {
                return Err(format!(
                    "base64 embedding of {} bytes is not a list of f32",
                    bytes.len()
                ));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }
        other => Err(format!("unexpected embedding type {}", type_name(other))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[async_trait]
impl Embedder for HttpEmbedder {
    fn model(&self) -> &str {
        &self.config.endpoint.model
    }

    fn dimensions(&self) -> Option<usize> {
        match self.dims.load(Ordering::Relaxed) {
            0 => None,
            d => Some(d),
        }
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if texts.len() <= self.config.batch_size {
            return self.embed_batch(texts).await;
        }
        let batches = texts
            .chunks(self.config.batch_size)
            .map(|chunk| self.embed_batch(chunk));
        let results = futures::future::try_join_all(batches).await?;
        Ok(results.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_float_and_base64() {
        assert_eq!(
            decode_vector(&json!([0.5, -1, 2.25])).unwrap(),
            vec![0.5, -1.0, 2.25]
        );
        let raw: Vec<u8> = [0.5f32, -1.0, 2.25]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(decode_vector(&json!(b64)).unwrap(), vec![0.5, -1.0, 2.25]);
        assert!(decode_vector(&json!("AAE=")).is_err());
        assert!(decode_vector(&json!("***")).is_err());
        assert!(decode_vector(&json!([1, "x"])).is_err());
        assert!(decode_vector(&json!({"a": 1})).is_err());
    }

    #[test]
    fn config_errors_and_debug_redacts_the_key() {
        assert!(HttpEmbedder::new(HttpEmbedderConfig::new("ftp://x", "m")).is_err());
        assert!(HttpEmbedder::new(HttpEmbedderConfig::new("http://x", "")).is_err());
        let c = HttpEmbedderConfig::new("http://127.0.0.1:1/v1/", "m")
            .with_api_key(Some("sk-secret".into()));
        assert_eq!(c.endpoint.api_base, "http://127.0.0.1:1/v1");
        let e = HttpEmbedder::new(c).unwrap();
        assert!(!format!("{e:?}").contains("sk-secret"));
    }
}
