//! The accept loop: every connection bounded in time and number, and a shutdown bounded by
//! `shutdown_timeout` whatever clients or the upstream do.
//!
//! * **Connections** are capped (`max_connections`). At the cap the connection idle the longest
//!   (no request in flight) is closed to make room; when every connection is busy, new ones wait
//!   in the listen backlog. Running out of descriptors (`EMFILE`) is handled the same way.
//! * **Idle connections** (no request in flight, HTTP/1 or HTTP/2) are closed after
//!   `keep_alive_timeout`; a connection that has not yet sent a whole request counts as idle, so
//!   a half-sent request head is bounded too (and HTTP/1 heads by `header_read_timeout`).
//! * **HTTP/2** connections are pinged (`http2_keep_alive_interval`, closed when a ping is not
//!   answered within `http2_keep_alive_timeout`) and limited to `http2_max_concurrent_streams`.
//! * **Shutdown**: the listener closes, idle connections close at once, busy ones are asked to
//!   finish (HTTP/1 `Connection: close`, HTTP/2 `GOAWAY`); whatever is still running when the
//!   grace period ends is cut. The caller then flushes the cache with the time that is left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

/// The connection limits of the server (`general_settings`, see `docs/proxy.md`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest time an HTTP/1 client may take to send a request head.
    pub header_read_timeout: Duration,
    /// Longest time a connection may stay open without a request in flight.
    pub keep_alive_timeout: Duration,
    /// HTTP/2 ping interval (`None`: no pings).
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long an HTTP/2 ping may go unanswered before the connection is closed.
    pub http2_keep_alive_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// Open client connections at most.
    pub max_connections: usize,
}

/// What one connection is doing, for the idle timeout and eviction.
#[derive(Debug)]
struct ConnState {
    /// Requests in flight (until their response body is done or dropped).
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened), in ms since the server started.
    idle_since_ms: AtomicU64,
    /// Told to close (eviction at the connection cap).
    evict: Notify,
}

impl ConnState {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

#[derive(Debug)]
struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Marks a request in flight on its connection for as long as it lives.
#[derive(Debug)]
struct InFlight {
    conn: Arc<ConnState>,
    clock: Arc<Clock>,
}

impl InFlight {
    fn enter(conn: &Arc<ConnState>, clock: &Arc<Clock>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            conn: conn.clone(),
            clock: clock.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .idle_since_ms
            .store(self.clock.now_ms(), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is sent (a stream included).
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The per-connection service: the router, with the peer address (axum's `ConnectInfo`) in
/// every request and the request counted in flight.
#[derive(Clone)]
struct ConnService {
    router: axum::Router,
    peer: SocketAddr,
    conn: Arc<ConnState>,
    clock: Arc<Clock>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::enter(&self.conn, &self.clock);
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = self.router.clone();
        Box::pin(async move {
            let resp = match tower_service::Service::call(&mut router, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

/// The open connections, for eviction at the cap.
#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn insert(&self, conn: Arc<ConnState>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the connection idle the longest to close; false when every connection is busy.
    fn evict_idlest(&self) -> bool {
        let conns = self.lock();
        let idlest = conns
            .values()
            .filter(|c| c.is_idle())
            .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire));
        match idlest {
            Some(c) => {
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains connections for at
/// most `grace` and cuts the rest. Returns how many connections were cut.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    metrics: &Arc<crate::metrics::ProxyMetrics>,
) -> usize {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let clock = Arc::new(Clock(Instant::now()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    let mut emfile_logged: Option<Instant> = None;

    'accept: loop {
        // A slot first: at the cap, make room by closing the idlest connection, or wait for one.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics
                    .connection_cap_reached
                    .fetch_add(1, Ordering::Relaxed);
                if !registry.evict_idlest() {
                    tracing::debug!("connection cap reached and every connection busy: waiting");
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break 'accept,
                    },
                    () = &mut shutdown => break 'accept,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    drop(permit);
                    if is_fd_exhaustion(&e) {
                        // Out of descriptors: free one (the idlest connection), back off briefly.
                        if emfile_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            tracing::error!(error = %e, "accept: out of file descriptors; closing idle connections (lower max_connections or raise the limit)");
                            emfile_logged = Some(Instant::now());
                        }
                        registry.evict_idlest();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    } else {
                        tracing::debug!(error = %e, "accept error");
                    }
                    continue;
                }
            },
            () = &mut shutdown => break 'accept,
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(clock.now_ms()),
            evict: Notify::new(),
        });
        let id = registry.insert(conn.clone());
        let service = ConnService {
            router: router.clone(),
            peer,
            conn: conn.clone(),
            clock: clock.clone(),
        };
        let builder = builder.clone();
        let registry = registry.clone();
        let clock = clock.clone();
        let stop = stop_rx.clone();
        let idle_timeout = limits.keep_alive_timeout;
        metrics.connections_opened.fetch_add(1, Ordering::Relaxed);
        let metrics = metrics.clone();
        tasks.spawn(async move {
            let end = drive(stream, service, &builder, &conn, &clock, idle_timeout, stop).await;
            if end == End::Evicted {
                metrics.connections_evicted.fetch_add(1, Ordering::Relaxed);
            }
            metrics.connections_closed.fetch_add(1, Ordering::Relaxed);
            registry.remove(id);
            drop(permit);
        });
        // Reap finished connection tasks as we go.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);

    // Shutdown: idle connections close now, busy ones finish within the grace period.
    let open = tasks.len();
    tracing::info!(
        connections = open,
        grace_ms = grace.as_millis() as u64,
        "listener closed: draining connections"
    );
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let cut = tasks.len();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        metrics
            .connections_closed
            .fetch_add(cut as u64, Ordering::Relaxed);
        tracing::warn!(
            connections = cut,
            "shutdown grace period over: cut the connections still busy"
        );
        return cut;
    }
    0
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Closed by the client, an error, or after a graceful shutdown.
    Done,
    /// Idle for `keep_alive_timeout`.
    Idle,
    /// Closed to make room at the connection cap.
    Evicted,
    /// Idle when the server began shutting down.
    Shutdown,
}

/// Drives one connection to its end: closed by the client, idle too long, evicted, or asked to
/// finish at shutdown.
async fn drive(
    stream: TcpStream,
    service: ConnService,
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    conn: &Arc<ConnState>,
    clock: &Clock,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> End {
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut finishing = false;
    loop {
        // Idle: wake when the idle timeout would be reached. Busy: look again a whole timeout
        // later (the timeout counts from the end of the last request).
        let idle_ms = clock
            .now_ms()
            .saturating_sub(conn.idle_since_ms.load(Ordering::Acquire));
        let next_check = if conn.is_idle() {
            idle_timeout
                .saturating_sub(Duration::from_millis(idle_ms))
                .max(Duration::from_millis(5))
        } else {
            idle_timeout.max(Duration::from_millis(5))
        };
        tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return End::Done;
            }
            _ = stop.changed(), if !finishing => {
                if conn.is_idle() {
                    return End::Shutdown;
                }
                connection.as_mut().graceful_shutdown();
                finishing = true;
            }
            () = conn.evict.notified() => {
                if conn.is_idle() {
                    tracing::debug!("idle connection closed to make room (max_connections)");
                    return End::Evicted;
                }
            }
            () = tokio::time::sleep(next_check) => {
                let idle_ms = clock
                    .now_ms()
                    .saturating_sub(conn.idle_since_ms.load(Ordering::Acquire));
                if conn.is_idle() && idle_ms >= idle_timeout.as_millis() as u64 {
                    tracing::debug!(idle_ms, "idle connection closed (keep_alive_timeout)");
                    return End::Idle;
                }
            }
        }
    }
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The default connection cap: half the open-file limit (each client connection may hold an
/// upstream connection too) minus room for the cache backend and logs; 1,024 where the limit is
/// unknown.
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(n) => (n.saturating_sub(64) / 2).clamp(16, 65_536) as usize,
        None => 1024,
    }
}

/// The soft open-file limit, from `/proc/self/limits` (Linux); `None` elsewhere or unlimited.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files            1024                 524288               files"
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
