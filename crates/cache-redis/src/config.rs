//! Configuration: LiteLLM's `cache_params` names and `REDIS_*` environment variables.
//!
//! [`RedisConfig::from_params`] reads a `cache_params` mapping the way LiteLLM's
//! `litellm/_redis.py` does (reference §4.2): every setting can also come from its `REDIS_*`
//! environment variable, an explicit key always wins over the variable, and the client type is
//! chosen by the same precedence — startup nodes ⇒ Cluster, URL ⇒ URL client, Sentinel nodes +
//! service name ⇒ Sentinel, else host/port.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::{CacheError, Result};
use serde_json::Value;

/// Port used when none is given.
pub const DEFAULT_PORT: u16 = 6379;
/// Per-command timeout when `socket_timeout` is not set.
///
/// LiteLLM's default is 5 s. Ours is shorter because the cache already gives up on a read after
/// `cache_read_timeout` (50 ms by default) and on a write after `cache_write_timeout` (2 s); this
/// timeout bounds how long an abandoned command can sit in the client's queue.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP (and TLS) connect timeout when `socket_connect_timeout` is not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Multiplexed connections when `max_connections` is not set. Each connection pipelines every
/// concurrent command; on the 2-core project machine 1-2 connections gave the best hit
/// throughput at concurrency 50 (more connections only shrink the pipelined batches), and two
/// let two cores drive I/O.
pub const DEFAULT_POOL_SIZE: usize = 2;
/// Upper bound of the pool: `max_connections` above it is clamped (redis-py configurations often
/// say 100 or more, which for pipelined, multiplexed connections is far more than useful).
pub const MAX_POOL_SIZE: usize = 32;
/// First reconnect delay; doubles on every failed attempt up to [`DEFAULT_RECONNECT_MAX_DELAY`].
pub const DEFAULT_RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// Longest delay between two reconnect attempts.
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_millis(1000);

/// A `host:port` pair.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Node {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Node {
    /// A node.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Node {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where the data lives and how the client finds it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One server (LiteLLM `host` + `port`).
    Standalone(Node),
    /// A URL: `redis://[[user:]password@]host[:port][/db]`, `rediss://` for TLS, and fred's
    /// `redis-cluster://host:port?node=host:port` and
    /// `redis-sentinel://host:port?sentinelServiceName=name&node=host:port` schemes; a Unix
    /// socket as redis-py writes it, `unix://[[user:]password@]/path/redis.sock[?db=N]`, or as
    /// fred does, `redis+unix://[user:password@host]/path/redis.sock`. Credentials, database and
    /// TLS come from the URL only (as in LiteLLM, `password`, `db` and `ssl` are dropped when a
    /// URL is used).
    Url(String),
    /// One server on the same host, through its Unix socket (redis-py's `unix_socket_path`,
    /// which LiteLLM passes on from `cache_params` and `REDIS_UNIX_SOCKET_PATH`).
    Unix(PathBuf),
    /// A Redis Cluster, found through any of these seed nodes (LiteLLM `redis_startup_nodes`).
    Cluster(Vec<Node>),
    /// A master found through Sentinel (LiteLLM `sentinel_nodes` + `service_name`).
    Sentinel {
        /// The sentinels.
        nodes: Vec<Node>,
        /// The monitored master's name (`sentinel monitor <name> ...`).
        service_name: String,
    },
}

impl Topology {
    /// A short description without secrets (`standalone 127.0.0.1:6379`, `url redis://***@h:1/0`).
    pub fn describe(&self) -> String {
        match self {
            Topology::Standalone(n) => format!("standalone {n}"),
            Topology::Url(u) => format!("url {}", redact_url(u)),
            Topology::Unix(path) => format!("unix {}", path.display()),
            Topology::Cluster(nodes) => format!("cluster {}", join(nodes)),
            Topology::Sentinel {
                nodes,
                service_name,
            } => format!("sentinel {service_name} via {}", join(nodes)),
        }
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn join(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(Node::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL with its password (and any `password` or `sentinelPassword` query value) replaced by
/// `***`.
pub fn redact_url(raw: &str) -> String {
    match parse_url(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("sentinelPassword")
                        || k.eq_ignore_ascii_case("password")
                    {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// Everything needed to connect. Build it with [`RedisConfig::from_params`] (LiteLLM names and
/// `REDIS_*` variables) or programmatically with [`RedisConfig::new`] and the `with_*` setters.
///
/// `Debug` never shows passwords.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Where the servers are.
    pub topology: Topology,
    /// ACL user name (`username`, `REDIS_USERNAME`). Ignored with [`Topology::Url`].
    pub username: Option<String>,
    /// Password (`password`, `REDIS_PASSWORD`). Ignored with [`Topology::Url`].
    pub password: Option<String>,
    /// Password of the sentinels themselves (`sentinel_password`, `REDIS_SENTINEL_PASSWORD`).
    pub sentinel_password: Option<String>,
    /// Database number (`db`, `REDIS_DB`); Cluster has only database 0. Ignored with
    /// [`Topology::Url`].
    pub db: Option<u8>,
    /// TLS (`ssl`, `REDIS_SSL`). Ignored with [`Topology::Url`] (`rediss://` means TLS).
    pub tls: bool,
    /// PEM file of the certificate authorities to trust for TLS instead of the system's roots
    /// (`ssl_ca_certs`, `REDIS_SSL_CA_CERTS`): for servers with a private CA.
    pub tls_ca_certs: Option<std::path::PathBuf>,
    /// Per-command timeout (`socket_timeout`, `REDIS_SOCKET_TIMEOUT`).
    pub command_timeout: Duration,
    /// Connect timeout (`socket_connect_timeout`, `REDIS_SOCKET_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// Number of multiplexed, pipelining connections (`max_connections`,
    /// `REDIS_MAX_CONNECTIONS`, clamped to [`MAX_POOL_SIZE`]). With a Cluster, each one connects
    /// to every master.
    pub pool_size: usize,
    /// First delay of the exponential reconnect backoff.
    pub reconnect_min_delay: Duration,
    /// Longest delay of the reconnect backoff.
    pub reconnect_max_delay: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| if s.is_some() { "<redacted>" } else { "none" };
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("sentinel_password", &secret(&self.sentinel_password))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("tls_ca_certs", &self.tls_ca_certs)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .finish()
    }
}

impl RedisConfig {
    /// A configuration with llm-cache's defaults for everything but the topology.
    pub fn new(topology: Topology) -> Self {
        RedisConfig {
            topology,
            username: None,
            password: None,
            sentinel_password: None,
            db: None,
            tls: false,
            tls_ca_certs: None,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            reconnect_min_delay: DEFAULT_RECONNECT_MIN_DELAY,
            reconnect_max_delay: DEFAULT_RECONNECT_MAX_DELAY,
        }
    }

    /// One server at `host:port`.
    pub fn standalone(host: impl Into<String>, port: u16) -> Self {
        Self::new(Topology::Standalone(Node::new(host, port)))
    }

    /// A URL (see [`Topology::Url`]).
    pub fn url(url: impl Into<String>) -> Self {
        Self::new(Topology::Url(url.into()))
    }

    /// One server through its Unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::new(Topology::Unix(path.into()))
    }

    /// A Redis Cluster found through `nodes`.
    pub fn cluster(nodes: Vec<Node>) -> Self {
        Self::new(Topology::Cluster(nodes))
    }

    /// The master `service_name` found through the sentinels `nodes`.
    pub fn sentinel(nodes: Vec<Node>, service_name: impl Into<String>) -> Self {
        Self::new(Topology::Sentinel {
            nodes,
            service_name: service_name.into(),
        })
    }

    /// Sets [`RedisConfig::username`].
    pub fn with_username(mut self, v: impl Into<String>) -> Self {
        self.username = Some(v.into());
        self
    }

    /// Sets [`RedisConfig::password`].
    pub fn with_password(mut self, v: impl Into<String>) -> Self {
        self.password = Some(v.into());
        self
    }

    /// Sets [`RedisConfig::sentinel_password`].
    pub fn with_sentinel_password(mut self, v: impl Into<String>) -> Self {
        self.sentinel_password = Some(v.into());
        self
    }

    /// Sets [`RedisConfig::db`].
    pub fn with_db(mut self, db: u8) -> Self {
        self.db = Some(db);
        self
    }

    /// Sets [`RedisConfig::tls`].
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Sets [`RedisConfig::tls_ca_certs`] (TLS itself is [`RedisConfig::with_tls`] or a
    /// `rediss://` URL).
    pub fn with_tls_ca_certs(mut self, pem_file: impl Into<std::path::PathBuf>) -> Self {
        self.tls_ca_certs = Some(pem_file.into());
        self
    }

    /// Sets [`RedisConfig::command_timeout`].
    pub fn with_command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    /// Sets [`RedisConfig::connect_timeout`].
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`RedisConfig::pool_size`] (clamped to `1..=MAX_POOL_SIZE`).
    pub fn with_pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.clamp(1, MAX_POOL_SIZE);
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn with_reconnect_delays(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max.max(min);
        self
    }

    /// From a `cache_params` mapping, with `REDIS_*` environment variables as fallbacks.
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the key (or the environment variable) for a value of the
    /// wrong type, an unusable URL, a Sentinel without service name, or when nothing says where
    /// Redis is.
    pub fn from_params(params: &Params) -> Result<Self> {
        Self::from_params_with_env(params, |name| std::env::var(name).ok())
    }

    /// As [`RedisConfig::from_params`], reading environment variables through `env` (tests and
    /// embedders that keep their settings elsewhere).
    ///
    /// # Errors
    /// As [`RedisConfig::from_params`].
    pub fn from_params_with_env(
        params: &Params,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        Reader {
            p: params,
            env: &env,
        }
        .config()
    }
}

struct Reader<'a> {
    p: &'a Params,
    env: &'a dyn Fn(&str) -> Option<String>,
}

fn env_error(var: &str, expected: &str, got: &str) -> CacheError {
    CacheError::Config(format!(
        "environment variable {var}: expected {expected}, got {got:?}"
    ))
}

impl Reader<'_> {
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|s| !s.trim().is_empty())
    }

    /// The first of `keys` that is set (aliases: `url`/`redis_url`).
    fn first_key(&self, keys: &[&'static str]) -> Option<&'static str> {
        keys.iter().copied().find(|k| self.p.has(k))
    }

    fn string(&self, key: &str, var: &str) -> Result<Option<String>> {
        match self.p.string(key)? {
            Some(s) => Ok(Some(s)),
            None => Ok(self.var(var)),
        }
    }

    fn u64(&self, key: &str, var: &str) -> Result<Option<u64>> {
        if self.p.has(key) {
            return self.p.u64(key);
        }
        match self.var(var) {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| env_error(var, "a non-negative integer", &s)),
        }
    }

    fn bool(&self, key: &str, var: &str) -> Result<Option<bool>> {
        if self.p.has(key) {
            return self.p.bool(key);
        }
        match self.var(var) {
            None => Ok(None),
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(env_error(var, "a boolean", &s)),
            },
        }
    }

    fn seconds(&self, key: &str, var: &str) -> Result<Option<Duration>> {
        if self.p.has(key) {
            return self.p.seconds(key);
        }
        match self.var(var) {
            None => Ok(None),
            Some(s) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && (0.0..1e9).contains(&f) => {
                    Ok(Some(Duration::from_secs_f64(f)))
                }
                _ => Err(env_error(var, "a non-negative number of seconds", &s)),
            },
        }
    }

    fn port(&self, key: &str, var: &str) -> Result<Option<u16>> {
        match self.u64(key, var)? {
            None => Ok(None),
            Some(p) => match u16::try_from(p) {
                Ok(port) if port > 0 => Ok(Some(port)),
                _ => Err(self.named(key, var, format!("expected a port (1-65535), got {p}"))),
            },
        }
    }

    /// An error about `key` (or `var` when the value came from the environment).
    fn named(&self, key: &str, var: &str, message: String) -> CacheError {
        if self.p.has(key) {
            self.p.error(key, message)
        } else {
            CacheError::Config(format!("environment variable {var}: {message}"))
        }
    }

    /// A node list from a key (YAML/JSON value) or a variable (JSON text).
    fn nodes(&self, key: &str, var: Option<&str>) -> Result<Option<Vec<Node>>> {
        if let Some(v) = self.p.get(key) {
            return parse_nodes(v).map(Some).map_err(|m| self.p.error(key, m));
        }
        let Some(var) = var else { return Ok(None) };
        let Some(text) = self.var(var) else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        parse_nodes(&v)
            .map(Some)
            .map_err(|m| CacheError::Config(format!("environment variable {var}: {m}")))
    }

    fn config(&self) -> Result<RedisConfig> {
        let cluster_key = self.first_key(&["redis_startup_nodes", "startup_nodes"]);
        let url_key = self.first_key(&["url", "redis_url"]);
        let explicit = cluster_key.is_some()
            || url_key.is_some()
            || self.p.has("sentinel_nodes")
            || self.p.has("unix_socket_path")
            || self.p.has("host");
        // An explicit topology key makes every topology variable irrelevant (LiteLLM ignores
        // REDIS_URL when host/startup_nodes/sentinel_nodes are given; we extend that to
        // REDIS_CLUSTER_NODES and REDIS_SENTINEL_NODES, so explicit configuration always wins).
        let (cluster, url, sentinel, socket, host) = if explicit {
            (
                match cluster_key {
                    Some(k) => self.nodes(k, None)?,
                    None => None,
                },
                match url_key {
                    Some(k) => self.p.string(k)?,
                    None => None,
                },
                self.nodes("sentinel_nodes", None)?,
                self.p.string("unix_socket_path")?,
                self.p.string("host")?,
            )
        } else {
            (
                self.nodes("redis_startup_nodes", Some("REDIS_CLUSTER_NODES"))?,
                self.var("REDIS_URL"),
                self.nodes("sentinel_nodes", Some("REDIS_SENTINEL_NODES"))?,
                self.var("REDIS_UNIX_SOCKET_PATH"),
                self.var("REDIS_HOST"),
            )
        };
        let service_name = self.string("service_name", "REDIS_SERVICE_NAME")?;

        let topology = if let Some(nodes) = cluster {
            if nodes.is_empty() {
                return Err(self.named(
                    cluster_key.unwrap_or("redis_startup_nodes"),
                    "REDIS_CLUSTER_NODES",
                    "expected at least one {host, port} node".to_owned(),
                ));
            }
            Topology::Cluster(nodes)
        } else if let Some(url) = url {
            check_url(&url).map_err(|m| self.named(url_key.unwrap_or("url"), "REDIS_URL", m))?;
            Topology::Url(url)
        } else if let Some(nodes) = sentinel {
            let Some(service_name) = service_name.filter(|s| !s.is_empty()) else {
                return Err(self.named(
                    "sentinel_nodes",
                    "REDIS_SENTINEL_NODES",
                    "Sentinel needs `service_name` (or REDIS_SERVICE_NAME): the name the sentinels monitor".to_owned(),
                ));
            };
            if nodes.is_empty() {
                return Err(self.named(
                    "sentinel_nodes",
                    "REDIS_SENTINEL_NODES",
                    "expected at least one [host, port] sentinel".to_owned(),
                ));
            }
            Topology::Sentinel {
                nodes,
                service_name,
            }
        } else if let Some(path) = socket {
            // As redis-py: a socket path wins over `host`/`port`.
            if path.trim().is_empty() {
                return Err(self.named(
                    "unix_socket_path",
                    "REDIS_UNIX_SOCKET_PATH",
                    "expected the path of the server's Unix socket, got an empty string".to_owned(),
                ));
            }
            if !cfg!(unix) {
                return Err(self.named(
                    "unix_socket_path",
                    "REDIS_UNIX_SOCKET_PATH",
                    "Unix sockets need a Unix system".to_owned(),
                ));
            }
            Topology::Unix(PathBuf::from(path))
        } else if let Some(host) = host.filter(|h| !h.is_empty()) {
            let port = self.port("port", "REDIS_PORT")?.unwrap_or(DEFAULT_PORT);
            Topology::Standalone(Node::new(host, port))
        } else {
            return Err(CacheError::Config(
                "cache_params: Redis needs `host` (or REDIS_HOST), `url` (or REDIS_URL), \
                 `unix_socket_path` (or REDIS_UNIX_SOCKET_PATH), `redis_startup_nodes` (or REDIS_CLUSTER_NODES) or `sentinel_nodes` + \
                 `service_name` (or REDIS_SENTINEL_NODES + REDIS_SERVICE_NAME)"
                    .to_owned(),
            ));
        };

        let mut c = RedisConfig::new(topology);
        let is_url = matches!(c.topology, Topology::Url(_));
        let is_cluster = matches!(c.topology, Topology::Cluster(_));
        if !is_url {
            // As LiteLLM: a URL carries its own credentials, database and TLS.
            c.username = self.string("username", "REDIS_USERNAME")?;
            c.password = self.string("password", "REDIS_PASSWORD")?;
            c.tls = self.bool("ssl", "REDIS_SSL")?.unwrap_or(false);
            if c.tls && matches!(c.topology, Topology::Unix(_)) {
                return Err(self.named(
                    "ssl",
                    "REDIS_SSL",
                    "TLS does not apply to a Unix socket (`unix_socket_path`)".to_owned(),
                ));
            }
            let db = if is_cluster && !self.p.has("db") {
                None // a global REDIS_DB does not apply to a Cluster
            } else {
                self.u64("db", "REDIS_DB")?
            };
            c.db = match db {
                None => None,
                Some(0) => Some(0),
                Some(_) if is_cluster => {
                    return Err(self.p.error("db", "Redis Cluster has only database 0"));
                }
                Some(n) => Some(u8::try_from(n).map_err(|_| {
                    self.named(
                        "db",
                        "REDIS_DB",
                        format!("expected a database number (0-255), got {n}"),
                    )
                })?),
            };
        }
        c.sentinel_password = self.string("sentinel_password", "REDIS_SENTINEL_PASSWORD")?;
        c.tls_ca_certs = self
            .string("ssl_ca_certs", "REDIS_SSL_CA_CERTS")?
            .filter(|s| !s.is_empty())
            .map(Into::into);
        if let Some(t) = self.seconds("socket_timeout", "REDIS_SOCKET_TIMEOUT")? {
            if t.is_zero() {
                return Err(self.named(
                    "socket_timeout",
                    "REDIS_SOCKET_TIMEOUT",
                    "expected a positive number of seconds, got 0".to_owned(),
                ));
            }
            c.command_timeout = t;
        }
        if let Some(t) = self.seconds("socket_connect_timeout", "REDIS_SOCKET_CONNECT_TIMEOUT")? {
            if t.is_zero() {
                return Err(self.named(
                    "socket_connect_timeout",
                    "REDIS_SOCKET_CONNECT_TIMEOUT",
                    "expected a positive number of seconds, got 0".to_owned(),
                ));
            }
            c.connect_timeout = t;
        }
        if let Some(n) = self.u64("max_connections", "REDIS_MAX_CONNECTIONS")? {
            if n == 0 {
                return Err(self.named(
                    "max_connections",
                    "REDIS_MAX_CONNECTIONS",
                    "expected at least 1 connection, got 0".to_owned(),
                ));
            }
            c.pool_size = usize::try_from(n)
                .unwrap_or(MAX_POOL_SIZE)
                .min(MAX_POOL_SIZE);
        }
        Ok(c)
    }
}

/// Checks a URL's syntax and scheme without echoing it (it may hold a password).
fn check_url(raw: &str) -> std::result::Result<(), String> {
    let u = parse_url(raw).map_err(|e| format!("not a valid URL ({e})"))?;
    if is_unix_scheme(u.scheme()) {
        return UnixUrl::from_url(&u).map(drop);
    }
    const SCHEMES: &[&str] = &[
        "redis",
        "rediss",
        "redis-cluster",
        "rediss-cluster",
        "redis-sentinel",
        "rediss-sentinel",
        "valkey",
        "valkeys",
        "valkey-cluster",
        "valkeys-cluster",
        "valkey-sentinel",
        "valkeys-sentinel",
    ];
    if !SCHEMES.contains(&u.scheme()) {
        return Err(format!(
            "unsupported URL scheme `{}` (expected redis://, rediss://, redis-cluster://, redis-sentinel:// or unix://)",
            u.scheme()
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    let tls_scheme = u.scheme().starts_with("rediss") || u.scheme().starts_with("valkeys");
    if tls_scheme && !cfg!(feature = "tls") {
        return Err("TLS URLs need the `tls` feature of cache-redis".to_owned());
    }
    if u.scheme().ends_with("-sentinel")
        && !u
            .query_pairs()
            .any(|(k, v)| k == "sentinelServiceName" && !v.is_empty())
    {
        return Err("a redis-sentinel:// URL needs ?sentinelServiceName=<name>".to_owned());
    }
    Ok(())
}

/// Parses a Redis URL. redis-py's `unix://user:password@/path` has credentials but no host, which
/// a URL parser rejects: a placeholder host (ignored, as in fred's `redis+unix://` form) goes in.
pub(crate) fn parse_url(raw: &str) -> std::result::Result<url::Url, url::ParseError> {
    if is_unix_url(raw)
        && let Some((scheme, rest)) = raw.split_once("://")
        && let Some((userinfo, path)) = rest.split_once("@/")
        && !userinfo.contains('/')
    {
        return url::Url::parse(&format!("{scheme}://{userinfo}@localhost/{path}"));
    }
    url::Url::parse(raw)
}

/// Whether a URL (not yet parsed) names a Unix socket.
pub(crate) fn is_unix_url(raw: &str) -> bool {
    raw.split_once("://")
        .is_some_and(|(scheme, _)| is_unix_scheme(&scheme.to_ascii_lowercase()))
}

/// Whether a URL scheme names a Unix socket: redis-py's `unix`, fred's `redis+unix` (and
/// `valkey+unix`).
pub(crate) fn is_unix_scheme(scheme: &str) -> bool {
    matches!(scheme, "unix" | "redis+unix" | "valkey+unix")
}

/// A Unix socket with its credentials and database (from a `unix://` URL, or from
/// `unix_socket_path` and the other keys).
#[derive(Debug, PartialEq)]
pub(crate) struct UnixUrl {
    pub(crate) path: PathBuf,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: Option<u8>,
}

impl UnixUrl {
    /// Parses `unix://[[user:]password@]/path/redis.sock[?db=N&username=U&password=P]`
    /// (redis-py's form: credentials in the URL win over the query's) or fred's
    /// `redis+unix://[user:password@host]/path` (the host, needed only to carry credentials,
    /// is ignored). Errors never echo the URL (it may hold a password).
    pub(crate) fn from_url(u: &url::Url) -> std::result::Result<Self, String> {
        if !cfg!(unix) {
            return Err("Unix sockets need a Unix system".to_owned());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let path = decode(u.path());
        if path.is_empty() || path == "/" {
            return Err(
                "a unix:// URL needs the socket's path (unix:///path/to/redis.sock)".to_owned(),
            );
        }
        let mut out = UnixUrl {
            path: PathBuf::from(path),
            username: None,
            password: None,
            db: None,
        };
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "db" => {
                    out.db = Some(v.trim().parse::<u8>().map_err(|_| {
                        format!(
                            "db in a unix:// URL: expected a database number (0-255), got {v:?}"
                        )
                    })?);
                }
                "password" => out.password = Some(v.into_owned()),
                "username" => out.username = Some(v.into_owned()),
                // redis-py's connection options (socket_timeout, ...) have their own keys here.
                _ => {}
            }
        }
        if !u.username().is_empty() {
            out.username = Some(decode(u.username()));
        }
        if let Some(p) = u.password() {
            out.password = Some(decode(p));
        }
        Ok(out)
    }
}

/// Parses a node list: `[{host, port}, ...]` (LiteLLM `redis_startup_nodes`),
/// `[[host, port], ...]` (LiteLLM `sentinel_nodes`) or `["host:port", ...]`; a single string may
/// also be comma-separated `host:port,host:port`.
fn parse_nodes(v: &Value) -> std::result::Result<Vec<Node>, String> {
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        Value::String(s) => {
            return s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(parse_host_port)
                .collect();
        }
        Value::Object(_) => vec![v],
        _ => return Err(NODES_EXPECTED.to_owned()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_node(item).map_err(|m| format!("node {i}: {m}")))
        .collect()
}

const NODES_EXPECTED: &str =
    "expected a list of nodes: [{host: h, port: p}, ...], [[h, p], ...] or [\"h:p\", ...]";

fn parse_node(v: &Value) -> std::result::Result<Node, String> {
    match v {
        Value::String(s) => parse_host_port(s),
        Value::Object(m) => {
            let host = match m.get("host") {
                Some(Value::String(h)) if !h.is_empty() => h.clone(),
                _ => return Err("expected a `host` string".to_owned()),
            };
            let port = match m.get("port") {
                None | Some(Value::Null) => DEFAULT_PORT,
                Some(p) => port_value(p)?,
            };
            Ok(Node::new(host, port))
        }
        Value::Array(pair) if pair.len() == 2 => {
            let host = match &pair[0] {
                Value::String(h) if !h.is_empty() => h.clone(),
                _ => return Err("expected [host, port] with a host string".to_owned()),
            };
            Ok(Node::new(host, port_value(&pair[1])?))
        }
        _ => Err(NODES_EXPECTED.to_owned()),
    }
}

fn port_value(v: &Value) -> std::result::Result<u16, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.and_then(|n| u16::try_from(n).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("expected a port (1-65535), got {v}"))
}

fn parse_host_port(s: &str) -> std::result::Result<Node, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected host:port, got {s:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("expected host:port, got {s:?}"));
    }
    let port = port_value(&Value::String(port.to_owned()))?;
    Ok(Node::new(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Params {
        Params::new(v.as_object().cloned().unwrap_or_default(), "cache_params")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn node_forms() {
        let want = vec![Node::new("a", 1), Node::new("b", 2)];
        for v in [
            json!([{"host": "a", "port": 1}, {"host": "b", "port": "2"}]),
            json!([["a", 1], ["b", 2]]),
            json!(["a:1", "b:2"]),
            json!("a:1, b:2"),
        ] {
            assert_eq!(parse_nodes(&v).unwrap(), want, "{v}");
        }
        assert_eq!(
            parse_nodes(&json!([{"host": "a"}])).unwrap(),
            vec![Node::new("a", 6379)]
        );
        assert_eq!(
            parse_nodes(&json!(["[::1]:7000"])).unwrap(),
            vec![Node::new("::1", 7000)]
        );
        for bad in [
            json!([{"port": 1}]),
            json!([["a", 70000]]),
            json!(["a"]),
            json!(5),
            json!([["a", 1, 2]]),
        ] {
            assert!(parse_nodes(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_redaction() {
        assert_eq!(
            redact_url("redis://user:secret@h:1/2"),
            "redis://user:***@h:1/2"
        );
        let r = redact_url(
            "redis-sentinel://:pw@h:1?sentinelServiceName=m&sentinelPassword=spw&node=h:2",
        );
        assert!(!r.contains("pw@") && !r.contains("spw"), "{r}");
        assert!(r.contains("node=h%3A2") || r.contains("node=h:2"), "{r}");
        assert_eq!(redact_url("not a url"), "<unparsable URL>");
    }

    #[test]
    fn url_checks() {
        assert!(check_url("redis://h:1/0").is_ok());
        assert!(check_url("redis-cluster://h:1?node=h:2").is_ok());
        assert!(check_url("redis-sentinel://h:1?sentinelServiceName=m").is_ok());
        assert!(check_url("redis-sentinel://h:1").is_err());
        assert!(
            check_url("http://h:1")
                .unwrap_err()
                .contains("scheme `http`")
        );
        assert!(check_url("h:1").is_err());
        let err = check_url("redis://user:topsecret@:1").unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn unix_socket_urls() {
        let parse = |raw: &str| UnixUrl::from_url(&parse_url(raw).unwrap());
        let unix = |path: &str, user: Option<&str>, pw: Option<&str>, db: Option<u8>| UnixUrl {
            path: path.into(),
            username: user.map(Into::into),
            password: pw.map(Into::into),
            db,
        };
        assert_eq!(
            parse("unix:///tmp/r.sock").unwrap(),
            unix("/tmp/r.sock", None, None, None)
        );
        // redis-py's query options; `+` in a password is a plus, not a space.
        assert_eq!(
            parse("unix:///tmp/r.sock?db=3&password=p%2Bq+r&socket_timeout=5").unwrap(),
            unix("/tmp/r.sock", None, Some("p+q r"), Some(3))
        );
        // Credentials in the URL win over the query's (as in redis-py).
        assert_eq!(
            parse("unix://u:s%40cret@/tmp/r.sock?password=other&username=x").unwrap(),
            unix("/tmp/r.sock", Some("u"), Some("s@cret"), None)
        );
        // fred's form: the host only carries the credentials.
        assert_eq!(
            parse("redis+unix://u:pw@ignored/var/run/redis/redis.sock").unwrap(),
            unix("/var/run/redis/redis.sock", Some("u"), Some("pw"), None)
        );
        assert_eq!(
            parse("unix:///tmp/my%20dir/r.sock").unwrap(),
            unix("/tmp/my dir/r.sock", None, None, None)
        );
        for bad in ["unix:///", "unix://", "redis+unix://h"] {
            assert!(parse(bad).unwrap_err().contains("socket's path"), "{bad}");
        }
        let err = check_url("unix://:topsecret@/tmp/r.sock?db=300").unwrap_err();
        assert!(err.contains("0-255") && !err.contains("topsecret"), "{err}");
        assert!(check_url("unix:///tmp/r.sock?db=2").is_ok());
        assert!(check_url("redis+unix:///tmp/r.sock").is_ok());
        let r = redact_url("unix:///tmp/r.sock?db=1&password=hunter2");
        assert!(!r.contains("hunter2") && r.contains("db=1"), "{r}");
        let r = redact_url("unix://:hunter2@/tmp/r.sock");
        assert!(!r.contains("hunter2") && r.contains("/tmp/r.sock"), "{r}");
    }

    /// Random passwords of every printable character, percent-encoded into each URL form:
    /// each parses back to exactly that password, and neither redaction nor a configuration
    /// error ever shows it.
    #[test]
    fn unix_url_passwords_round_trip_and_never_leak() {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let chars: Vec<char> = (0x21u8..0x7f).map(char::from).chain(['é', '€']).collect();
        for _ in 0..2000 {
            let len = 8 + (next() % 16) as usize;
            let pw: String = (0..len)
                .map(|_| chars[(next() % chars.len() as u64) as usize])
                .collect();
            let enc = utf8_percent_encode(&pw, NON_ALPHANUMERIC).to_string();
            for raw in [
                format!("unix://:{enc}@/tmp/r.sock"),
                format!("unix://user:{enc}@/tmp/r.sock?db=1"),
                format!("unix:///tmp/r.sock?db=1&password={enc}"),
                format!("redis+unix://user:{enc}@h/tmp/r.sock"),
            ] {
                let u = UnixUrl::from_url(&parse_url(&raw).unwrap()).unwrap();
                assert_eq!(u.password.as_deref(), Some(pw.as_str()), "{raw}");
                assert_eq!(u.path, PathBuf::from("/tmp/r.sock"), "{raw}");
                let shown = redact_url(&raw);
                assert!(
                    !shown.contains(&pw) && !shown.contains(&enc),
                    "{raw} -> {shown}"
                );
                let bad = format!("{raw}{}db=999", if raw.contains('?') { '&' } else { '?' });
                let err = check_url(&bad).unwrap_err();
                assert!(!err.contains(&pw) && !err.contains(&enc), "{bad} -> {err}");
            }
        }
    }

    #[test]
    fn unix_socket_path_param() {
        let cfg = |v: Value, env: &dyn Fn(&str) -> Option<String>| {
            RedisConfig::from_params_with_env(&params(v), env)
        };
        let c = cfg(
            json!({"unix_socket_path": "/tmp/r.sock", "password": "pw", "db": 2}),
            &no_env,
        )
        .unwrap();
        assert_eq!(c.topology, Topology::Unix("/tmp/r.sock".into()));
        assert_eq!((c.password.as_deref(), c.db), (Some("pw"), Some(2)));
        assert_eq!(c.topology.describe(), "unix /tmp/r.sock");
        // As redis-py: the socket wins over host/port.
        let c = cfg(
            json!({"host": "h", "port": 1, "unix_socket_path": "/tmp/r.sock"}),
            &no_env,
        )
        .unwrap();
        assert_eq!(c.topology, Topology::Unix("/tmp/r.sock".into()));
        // From the environment when nothing explicit is given; an explicit host ignores it.
        let env = |k: &str| (k == "REDIS_UNIX_SOCKET_PATH").then(|| "/run/r.sock".to_owned());
        let c = cfg(json!({}), &env).unwrap();
        assert_eq!(c.topology, Topology::Unix("/run/r.sock".into()));
        let c = cfg(json!({"host": "h"}), &env).unwrap();
        assert_eq!(c.topology, Topology::Standalone(Node::new("h", 6379)));
        // TLS does not apply; an empty path is a clear error.
        let err = cfg(
            json!({"unix_socket_path": "/tmp/r.sock", "ssl": true}),
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("TLS does not apply"), "{err}");
        let err = cfg(json!({"unix_socket_path": " "}), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unix_socket_path"), "{err}");
    }

    #[test]
    fn debug_is_redacted() {
        let c = RedisConfig::url("redis://u:hunter2@h:1")
            .with_password("hunter3")
            .with_sentinel_password("hunter4");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter"), "{d}");
        assert!(d.contains("<redacted>"), "{d}");
    }

    #[test]
    fn defaults() {
        let c = RedisConfig::from_params_with_env(&params(json!({"host": "h"})), no_env).unwrap();
        assert_eq!(c.topology, Topology::Standalone(Node::new("h", 6379)));
        assert_eq!(c.command_timeout, DEFAULT_COMMAND_TIMEOUT);
        assert_eq!(c.pool_size, DEFAULT_POOL_SIZE);
        assert!(!c.tls);
        assert_eq!(c.db, None);
    }
}
