//! [`RedisBackend`]: the [`CacheBackend`] over a fred client pool.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cache_core::params::Params;
use cache_core::{CacheBackend, CacheError, Capabilities, Coordinator, Entry, Health, Result};
use fred::clients::WithOptions;
use fred::prelude::{
    Client, ClientLike, Config, ConnectionConfig, Error as FredError, ErrorKind, EventInterface,
    Expiration, KeysInterface, Options, PerformanceConfig, Pool, ReconnectPolicy, Server,
    ServerConfig, TcpConfig,
};
use fred::types::config::{ClusterDiscoveryPolicy, UnresponsiveConfig};
use fred::types::scan::Scanner;
use fred::types::{InfoKind, Key};
use fred::util::redis_keyslot;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::config::{RedisConfig, Topology, UnixUrl, is_unix_url};
use crate::coordination::RedisCoordinator;
use crate::keys::{escape_glob, is_entry_key};
use crate::reads::Reads;

const NAME: &str = "redis";
/// Keys per MGET / UNLINK command and commands per pipeline.
const BATCH: usize = 500;
/// `SCAN ... COUNT` hint.
const SCAN_COUNT: u32 = 1000;

/// How the client reaches the data (after parsing a URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Standalone,
    Cluster,
    Sentinel,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Standalone => "standalone",
            Kind::Cluster => "cluster",
            Kind::Sentinel => "sentinel",
        }
    }
}

/// The Redis backend (`type: redis`): standalone, Cluster or Sentinel, over a small pool of
/// multiplexed, auto-pipelining fred connections.
///
/// * Values are the core's envelope bytes, written with `SET key value [PX ttl]`; no TTL means
///   no expiry.
/// * [`CacheBackend::get_many`] is `MGET`, [`CacheBackend::set_many`] a pipeline of `SET`s; on a
///   Cluster the keys are grouped by hash slot, so there is never a `CROSSSLOT` error.
/// * [`CacheBackend::clear`] is `SCAN MATCH` + `UNLINK` on every master, never `FLUSHALL`/`FLUSHDB`.
///   `clear(None)` removes only keys shaped like entry keys (`hash`, `namespace:hash`) whose
///   value starts like an envelope ([`Entry::has_marker`]): another application's keys in the
///   same database survive, even 64-hex ones.
/// * Commands fail fast while a connection is down (the cache turns that into a miss) and the
///   pool reconnects in the background with exponential backoff. [`RedisBackend::connect`]
///   never waits for Redis, so a cache configured while Redis is down starts degraded and
///   recovers by itself.
///
/// `Debug` shows the topology without passwords.
pub struct RedisBackend {
    pool: Pool,
    kind: Kind,
    options: Options,
    summary: String,
    command_timeout: Duration,
    tasks: Vec<JoinHandle<std::result::Result<(), FredError>>>,
    /// The configuration, to open the coordinator's subscriber connection when first asked.
    config: RedisConfig,
    coordinator: OnceLock<Option<Arc<RedisCoordinator>>>,
    /// Single-key reads, gathered into `MGET`s under load.
    pub(crate) reads: Arc<Reads>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("topology", &self.summary)
            .field("pool_size", &self.pool.size())
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        // The routing tasks own the sockets; stopping them closes the connections (also while
        // they are still trying to reconnect).
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A backend error that names the key it concerns.
#[derive(Debug)]
struct KeyError {
    key: String,
    source: FredError,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (key `{}`)", self.source, self.key)
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Whether retrying later can help.
fn is_transient(e: &FredError) -> bool {
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Cluster
        | ErrorKind::Routing
        | ErrorKind::Backpressure
        | ErrorKind::Sentinel => true,
        ErrorKind::Unknown => {
            let d = e.details();
            [
                // fred's router with no connection to send on (the server went away and the
                // reconnection has not finished): a connection failure like `IO`.
                "Failed to route command",
                "READONLY",
                "LOADING",
                "MASTERDOWN",
                "TRYAGAIN",
                "BUSY",
                "CLUSTERDOWN",
                "NOREPLICAS",
            ]
            .iter()
            .any(|p| d.starts_with(p))
        }
        _ => false,
    }
}

impl RedisBackend {
    /// From a `cache_params` mapping (LiteLLM names, `REDIS_*` fallbacks); see
    /// [`RedisConfig::from_params`].
    ///
    /// # Errors
    /// A configuration error; never a connection error.
    pub async fn from_params(params: &Params) -> Result<Self> {
        Self::connect(RedisConfig::from_params(params)?).await
    }

    /// Starts connecting in the background and returns at once.
    ///
    /// Redis being down is not an error: commands fail fast (and the cache treats them as
    /// misses) until a connection is up; the pool keeps reconnecting with exponential backoff
    /// between [`RedisConfig::reconnect_min_delay`] and [`RedisConfig::reconnect_max_delay`].
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// [`CacheError::Config`] for an unusable configuration (a malformed URL, TLS without the
    /// `tls` feature).
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let (pool, kind) = build_pool(&config, config.pool_size.max(1))?;
        let summary = config.topology.describe();
        let mut tasks = pool.connect_pool();
        if let Some(first) = pool.clients().first() {
            tasks.push(log_connection_events(first, summary.clone()));
        }
        let options = Options {
            fail_fast: true,
            timeout: Some(config.command_timeout),
            max_attempts: Some(1),
            ..Default::default()
        };
        let reads = Reads::new(pool.clone(), options.clone(), kind == Kind::Cluster);
        Ok(RedisBackend {
            pool,
            kind,
            options,
            reads,
            summary,
            command_timeout: config.command_timeout,
            tasks,
            config,
            coordinator: OnceLock::new(),
        })
    }

    /// Waits until every pooled connection is up, or `timeout` passes. Optional: the backend
    /// works (degraded) before that; useful for tests and for startup probes.
    ///
    /// # Errors
    /// [`CacheError::Unavailable`] when not all connections are up in time.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.pool.clients().iter().all(ClientLike::is_connected) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CacheError::unavailable(
                    NAME,
                    format!("not connected to {} within {timeout:?}", self.summary),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The topology, without secrets (as in `Debug`).
    pub fn describe(&self) -> &str {
        &self.summary
    }

    fn client(&self) -> WithOptions<Client> {
        self.pool.next_connected().with_options(&self.options)
    }

    fn error(&self, operation: &'static str, e: FredError) -> CacheError {
        if e.kind() == &ErrorKind::Timeout {
            return CacheError::Timeout {
                backend: NAME.to_owned(),
                operation,
                after: self.command_timeout,
            };
        }
        if e.kind() == &ErrorKind::Canceled {
            return CacheError::unavailable(
                NAME,
                format!(
                    "{operation}: not connected to {} (reconnecting in the background)",
                    self.summary
                ),
            );
        }
        let transient = is_transient(&e);
        CacheError::backend(NAME, operation, transient, e)
    }

    fn key_error(&self, operation: &'static str, key: &str, e: FredError) -> CacheError {
        match e.kind() {
            ErrorKind::Timeout | ErrorKind::Canceled => self.error(operation, e),
            _ => {
                let transient = is_transient(&e);
                CacheError::backend(
                    NAME,
                    operation,
                    transient,
                    KeyError {
                        key: key.to_owned(),
                        source: e,
                    },
                )
            }
        }
    }

    /// [`slot_groups`] of at most [`BATCH`] keys.
    fn groups(&self, keys: &[&str]) -> Vec<Vec<usize>> {
        slot_groups(keys, self.kind == Kind::Cluster, BATCH)
    }

    /// The keys of `keys` whose value starts like a cache entry ([`Entry::has_marker`]): one
    /// `GETRANGE` of the first bytes per key, pipelined. A key holding another type (a hash,
    /// a list) is not an entry.
    async fn entries_among<'k>(&self, keys: Vec<&'k str>) -> Result<Vec<&'k str>> {
        let client = self.client();
        let heads = futures::future::join_all(keys.iter().map(|&k| {
            let client = client.clone();
            async move {
                client
                    .getrange::<fred::prelude::Value, _>(k, 0, Entry::MARKER_LEN - 1)
                    .await
            }
        }))
        .await;
        let mut out = Vec::with_capacity(keys.len());
        for (key, head) in keys.into_iter().zip(heads) {
            match head {
                Ok(v) => {
                    if v.as_bytes().is_some_and(Entry::has_marker) {
                        out.push(key);
                    }
                }
                Err(e) if e.details().starts_with("WRONGTYPE") => {}
                Err(e) => return Err(self.key_error("clear", key, e)),
            }
        }
        Ok(out)
    }

    /// `UNLINK`s `keys` (grouped per slot on a Cluster); returns how many existed.
    async fn unlink_all(&self, keys: &[&str]) -> Result<u64> {
        let client = self.client();
        let futs = self.groups(keys).into_iter().map(|idxs| {
            let client = client.clone();
            let group: Vec<Key> = idxs.iter().map(|&i| Key::from(keys[i])).collect();
            async move { client.unlink::<u64, _>(group).await }
        });
        let counts = futures::future::try_join_all(futs)
            .await
            .map_err(|e| self.error("clear", e))?;
        Ok(counts.into_iter().sum())
    }

    async fn ping_one(&self, server: Option<Server>) -> std::result::Result<Duration, FredError> {
        let start = Instant::now();
        let opts = Options {
            cluster_node: server,
            ..self.options.clone()
        };
        let _: String = self
            .pool
            .next_connected()
            .with_options(&opts)
            .ping(None)
            .await?;
        Ok(start.elapsed())
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Logs connection trouble and recoveries of the first pooled client (one line per event, not
/// one per pooled connection). Errors never contain passwords or values.
fn log_connection_events(
    client: &Client,
    summary: String,
) -> JoinHandle<std::result::Result<(), FredError>> {
    let mut errors = client.error_rx();
    let mut reconnects = client.reconnect_rx();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                e = errors.recv() => match e {
                    Ok((e, server)) => {
                        let server = server.map(|s| s.to_string()).unwrap_or_default();
                        tracing::warn!(backend = NAME, topology = %summary, %server, error = %e, "redis connection error; reconnecting in the background");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                },
                s = reconnects.recv() => match s {
                    Ok(server) => tracing::info!(backend = NAME, topology = %summary, server = %server, "redis connected"),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                },
            }
        }
    })
}

/// A fred connection pool of `size` clients for `config`, not yet connected: the one connection
/// setup of every fred-based backend (this crate's, and `cache-semantic`'s Redis vector index).
///
/// Every command has the configured deadline and is never retried after a connection loss (the
/// cache already counts the miss; a retry would land after the caller's deadline); an
/// unresponsive server is noticed and the connection replaced; reconnection backs off
/// exponentially between the configured delays, forever; the first connection goes through the
/// same policy, so a Redis that is down at startup means a degraded start, not a failure
/// (LiteLLM #3400). Connect with [`Pool::connect_pool`].
///
/// # Errors
/// [`CacheError::Config`] for an unusable configuration (a malformed URL, TLS without the `tls`
/// feature).
pub fn connection_pool(config: &RedisConfig, size: usize) -> Result<Pool> {
    build_pool(config, size).map(|(pool, _)| pool)
}

/// fred's configuration of one connection to `config`'s store.
struct Parts {
    config: Config,
    perf: PerformanceConfig,
    connection: ConnectionConfig,
    policy: ReconnectPolicy,
    kind: Kind,
}

fn build_pool(config: &RedisConfig, size: usize) -> Result<(Pool, Kind)> {
    let p = parts(config)?;
    let pool = Pool::new(
        p.config,
        Some(p.perf),
        Some(p.connection),
        Some(p.policy),
        size.max(1),
    )
    .map_err(|e| CacheError::Config(format!("cache_params: redis client: {e}")))?;
    Ok((pool, p.kind))
}

fn parts(config: &RedisConfig) -> Result<Parts> {
    let (fred_config, kind) = fred_config(config)?;
    let perf = PerformanceConfig {
        default_command_timeout: config.command_timeout,
        ..Default::default()
    };
    let connection = ConnectionConfig {
        connection_timeout: config.connect_timeout,
        internal_command_timeout: config.command_timeout.max(Duration::from_secs(1)),
        max_command_attempts: 1,
        tcp: TcpConfig {
            nodelay: Some(true),
            ..Default::default()
        },
        unresponsive: UnresponsiveConfig {
            max_timeout: Some(config.command_timeout.max(Duration::from_millis(500)) * 2),
            interval: Duration::from_millis(250),
        },
        ..Default::default()
    };
    let policy = ReconnectPolicy::new_exponential(
        0, // forever
        millis(config.reconnect_min_delay).max(1),
        millis(config.reconnect_max_delay).max(1),
        2,
    );
    Ok(Parts {
        config: fred_config,
        perf,
        connection,
        policy,
        kind,
    })
}

/// Translates our configuration into fred's.
fn fred_config(c: &RedisConfig) -> Result<(Config, Kind)> {
    // fred builds a default rustls config for `rediss://` URLs from the process-level crypto
    // provider: ring, the one provider of llm-cache's builds (a program that compiled in a
    // second one elsewhere would otherwise leave rustls unable to pick).
    #[cfg(feature = "tls")]
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let server = |n: &crate::config::Node| Server::new(n.host.as_str(), n.port);
    let mut config = match &c.topology {
        Topology::Url(url) if is_unix_url(url) => {
            let u = crate::config::parse_url(url)
                .map_err(|e| e.to_string())
                .and_then(|u| UnixUrl::from_url(&u))
                .map_err(|why| {
                    CacheError::Config(format!(
                        "cache_params.url: cannot use {}: {why}",
                        crate::config::redact_url(url)
                    ))
                })?;
            unix_config(u)?
        }
        Topology::Unix(path) => unix_config(UnixUrl {
            path: path.clone(),
            username: c.username.clone(),
            password: c.password.clone(),
            db: c.db,
        })?,
        Topology::Url(url) => {
            // Errors from the URL parser could echo parts of the URL: report only the kind.
            let config = Config::from_url(url).map_err(|e| {
                CacheError::Config(format!(
                    "cache_params.url: cannot use {} ({:?})",
                    crate::config::redact_url(url),
                    e.kind()
                ))
            })?;
            #[cfg(feature = "tls")]
            let config = {
                let mut config = config;
                if config.tls.is_some() {
                    config.tls = Some(tls_config(c.tls_ca_certs.as_deref())?);
                }
                config
            };
            config
        }
        topology => {
            let server = match topology {
                Topology::Standalone(n) => ServerConfig::Centralized { server: server(n) },
                Topology::Cluster(nodes) => ServerConfig::Clustered {
                    hosts: nodes.iter().map(server).collect(),
                    policy: ClusterDiscoveryPolicy::default(),
                },
                Topology::Sentinel {
                    nodes,
                    service_name,
                } => ServerConfig::Sentinel {
                    hosts: nodes.iter().map(server).collect(),
                    service_name: service_name.clone(),
                    username: None,
                    password: c.sentinel_password.clone(),
                },
                Topology::Url(_) | Topology::Unix(_) => unreachable!("handled above"),
            };
            let mut config = Config {
                server,
                username: c.username.clone(),
                password: c.password.clone(),
                database: c.db,
                ..Default::default()
            };
            if c.tls {
                #[cfg(feature = "tls")]
                {
                    config.tls = Some(tls_config(c.tls_ca_certs.as_deref())?);
                }
                #[cfg(not(feature = "tls"))]
                return Err(CacheError::Config(
                    "cache_params.ssl: TLS needs the `tls` feature of cache-redis".to_owned(),
                ));
            }
            config
        }
    };
    // Start degraded instead of failing when Redis is down (LiteLLM #3400): the first
    // connection goes through the reconnect policy too.
    config.fail_fast = false;
    let kind = match &config.server {
        ServerConfig::Clustered { .. } => Kind::Cluster,
        ServerConfig::Sentinel { .. } => Kind::Sentinel,
        _ => Kind::Standalone,
    };
    Ok((config, kind))
}

/// fred's configuration of one server behind a Unix socket, with its credentials and database.
fn unix_config(u: UnixUrl) -> Result<Config> {
    #[cfg(unix)]
    return Ok(Config {
        server: ServerConfig::Unix { path: u.path },
        username: u.username,
        password: u.password,
        database: u.db,
        ..Default::default()
    });
    #[cfg(not(unix))]
    {
        let _ = u;
        Err(CacheError::Config(
            "cache_params: Unix sockets need a Unix system".to_owned(),
        ))
    }
}

/// rustls with the ring provider chosen explicitly (the one provider of llm-cache's builds:
/// another crate enabling a second one cannot make the default ambiguous) and the system's
/// trusted roots, or the CAs of `ssl_ca_certs`.
///
/// Public so other fred-based crates (the semantic Redis backend) build TLS the same way.
///
/// # Errors
/// An unreadable or empty `ssl_ca_certs` file, or no trusted roots on the system.
#[cfg(feature = "tls")]
pub fn tls_config(ca_certs: Option<&std::path::Path>) -> Result<fred::prelude::TlsConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    match ca_certs {
        Some(path) => {
            let bad = |why: String| {
                CacheError::Config(format!(
                    "cache_params.ssl_ca_certs: {}: {why}",
                    path.display()
                ))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no PEM certificate in the file".to_owned()));
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(CacheError::Config(format!(
                    "cache_params.ssl: no trusted root certificates found on this system{} (set ssl_ca_certs)",
                    loaded
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CacheError::Config(format!("cache_params.ssl: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(fred::prelude::TlsConnector::from(config).into())
}

/// The indexes of `keys` grouped so that each group can go into one multi-key command: one
/// group per hash slot on a Cluster, one group otherwise; groups are split at `max` keys.
pub(crate) fn slot_groups(keys: &[impl AsRef<[u8]>], cluster: bool, max: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    if cluster {
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            by_slot
                .entry(redis_keyslot(k.as_ref()))
                .or_default()
                .push(i);
        }
        for idxs in by_slot.into_values() {
            out.extend(idxs.chunks(max).map(<[usize]>::to_vec));
        }
    } else {
        let all: Vec<usize> = (0..keys.len()).collect();
        out.extend(all.chunks(max).map(<[usize]>::to_vec));
    }
    out
}

#[async_trait]
impl CacheBackend for RedisBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        // Persistence depends on the server's RDB/AOF settings; a cache that lives in a shared
        // server outlives our process either way.
        Capabilities::local()
            .with_shared(true)
            .with_persistent(true)
            .with_max_value_size(Some(512 << 20))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.reads
            .get(key)
            .await
            .map_err(|e| self.key_error("get", key, e))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let client = self.client();
        let expire = match ttl {
            None => None,
            // "Unreadable after 0 s": nothing to store, and a stale value must go.
            Some(t) if t.is_zero() => {
                return client
                    .unlink::<u64, _>(key)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.key_error("set", key, e));
            }
            Some(t) => Some(Expiration::PX(
                i64::try_from(t.as_millis()).unwrap_or(i64::MAX).max(1),
            )),
        };
        client
            .set::<(), _, _>(key, value, expire, None, false)
            .await
            .map_err(|e| self.key_error("set", key, e))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.client()
            .unlink::<u64, _>(key)
            .await
            .map(|n| n > 0)
            .map_err(|e| self.key_error("delete", key, e))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let client = self.client();
        let futs = self.groups(&refs).into_iter().map(|idxs| {
            let client = client.clone();
            let group: Vec<Key> = idxs.iter().map(|&i| Key::from(refs[i])).collect();
            async move {
                client
                    .mget::<Vec<Option<Bytes>>, _>(group)
                    .await
                    .map(|vals| (idxs, vals))
            }
        });
        let groups = futures::future::try_join_all(futs)
            .await
            .map_err(|e| self.error("get_many", e))?;
        let mut out = vec![None; keys.len()];
        for (idxs, vals) in groups {
            if vals.len() != idxs.len() {
                return Err(CacheError::backend(
                    NAME,
                    "get_many",
                    false,
                    format!("MGET of {} keys answered {} values", idxs.len(), vals.len()),
                ));
            }
            for (i, v) in idxs.into_iter().zip(vals) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    async fn set_many(&self, entries: Vec<(String, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            return self.unlink_all(&keys).await.map(|_| ());
        }
        let expire =
            ttl.map(|t| Expiration::PX(i64::try_from(t.as_millis()).unwrap_or(i64::MAX).max(1)));
        // A pipeline per chunk: fred routes each SET to its own node on a Cluster.
        for chunk in entries.chunks(BATCH) {
            let pipeline = self
                .pool
                .next_connected()
                .pipeline()
                .with_options(&self.options);
            for (key, value) in chunk {
                let _: () = pipeline
                    .set(key.as_str(), value.clone(), expire.clone(), None, false)
                    .await
                    .map_err(|e| self.key_error("set_many", key, e))?;
            }
            let results = pipeline.try_all::<fred::prelude::Value>().await;
            for (result, (key, _)) in results.into_iter().zip(chunk) {
                result.map_err(|e| self.key_error("set_many", key, e))?;
            }
        }
        Ok(())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let pattern = match namespace {
            Some(ns) => format!("{}:*", escape_glob(ns)),
            // Narrow on the server: keys ending in 64 hex digits; the exact shape
            // (`hash` or `namespace:hash`) is checked below.
            None => format!("*{}", "[0-9a-f]".repeat(64)),
        };
        let client = self.pool.next_connected().clone();
        let mut pages = if self.kind == Kind::Cluster {
            // SCAN on every master.
            client.scan_cluster(pattern, Some(SCAN_COUNT), None).boxed()
        } else {
            client.scan(pattern, Some(SCAN_COUNT), None).boxed()
        };
        let mut removed = 0u64;
        while let Some(page) = pages.next().await {
            let mut page = page.map_err(|e| self.error("clear", e))?;
            let keys = page.take_results().unwrap_or_default();
            let names: Vec<&str> = keys
                .iter()
                .filter_map(Key::as_str)
                .filter(|k| match namespace {
                    Some(_) => true,
                    None => is_entry_key(k),
                })
                .collect();
            // Without a namespace, a key's shape is not enough: another application sharing
            // the database may use 64 hex digits too (LiteLLM's own keys are SHA-256 hashes).
            // Only values that start like an envelope go.
            let names = match namespace {
                Some(_) => names,
                None => self.entries_among(names).await?,
            };
            if !names.is_empty() {
                removed += self.unlink_all(&names).await?;
            }
            // Dropping `page` requests the next one.
        }
        Ok(removed)
    }

    fn coordinator(&self) -> Option<Arc<dyn Coordinator>> {
        let c = self.coordinator.get_or_init(|| {
            // The subscriber task needs a runtime; without one there is no coordination.
            tokio::runtime::Handle::try_current().ok()?;
            let p = parts(&self.config).ok()?;
            let subscriber =
                Client::new(p.config, Some(p.perf), Some(p.connection), Some(p.policy));
            Some(Arc::new(RedisCoordinator::start(
                self.pool.clone(),
                self.options.clone(),
                self.kind == Kind::Cluster,
                subscriber,
            )))
        });
        c.clone().map(|c| c as Arc<dyn Coordinator>)
    }

    async fn ping(&self) -> Result<Health> {
        let client = self.pool.next_connected();
        if !client.is_connected() {
            return Err(CacheError::unavailable(
                NAME,
                format!(
                    "not connected to {} (reconnecting in the background)",
                    self.summary
                ),
            ));
        }
        let servers = client.active_connections();
        let latency = if self.kind == Kind::Cluster {
            // Every master must answer.
            let futs = servers.iter().map(|s| self.ping_one(Some(s.clone())));
            futures::future::try_join_all(futs)
                .await
                .map_err(|e| self.error("ping", e))?
                .into_iter()
                .max()
                .unwrap_or_default()
        } else {
            self.ping_one(None)
                .await
                .map_err(|e| self.error("ping", e))?
        };
        let version = match client.server_version() {
            Some(v) => v.to_string(),
            None => {
                let info: String = client
                    .with_options(&self.options)
                    .info(Some(InfoKind::Server))
                    .await
                    .map_err(|e| self.error("ping", e))?;
                info.lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))
                    .unwrap_or("unknown")
                    .trim()
                    .to_owned()
            }
        };
        // A Unix socket is a path (fred gives it port 0).
        let mut addrs: Vec<String> = servers
            .iter()
            .map(|s| match s.port {
                0 => s.host.to_string(),
                _ => s.to_string(),
            })
            .collect();
        addrs.sort();
        let health = Health::new(NAME, latency)
            .with_detail("topology", self.kind.as_str())
            .with_detail("server_version", version)
            .with_detail("pool_size", self.pool.size().to_string())
            .with_detail("config", self.summary.clone());
        Ok(match self.kind {
            Kind::Standalone => health.with_detail("address", addrs.join(",")),
            Kind::Cluster => health.with_detail("masters", addrs.join(",")),
            Kind::Sentinel => health.with_detail("master", addrs.join(",")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connection-level failures are transient (they count toward the breaker and may be
    /// retried); a command the server rejects for what it is, is not.
    #[test]
    fn transient_errors() {
        for (kind, details) in [
            (ErrorKind::IO, "connection reset"),
            (ErrorKind::Timeout, "timed out"),
            (ErrorKind::Routing, "Failed to route command."),
            // What fred answers while a dead server's connection is being replaced.
            (ErrorKind::Unknown, "Failed to route command."),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
        ] {
            assert!(
                is_transient(&FredError::new(kind.clone(), details)),
                "{kind:?} {details}"
            );
        }
        for (kind, details) in [
            (
                ErrorKind::Unknown,
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            ),
            (ErrorKind::Unknown, "ERR unknown command"),
            (ErrorKind::Parse, "bad frame"),
            (ErrorKind::Auth, "WRONGPASS"),
        ] {
            assert!(
                !is_transient(&FredError::new(kind.clone(), details)),
                "{kind:?} {details}"
            );
        }
    }
}
