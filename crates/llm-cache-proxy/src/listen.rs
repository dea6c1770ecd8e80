//! The accept loop: every connection bounded in time and number, and a shutdown bounded by
//! `shutdown_timeout` whatever clients or the upstream do.
//!
//! * **Connections** are capped (`max_connections`). At the cap the connection idle the longest
//!   (no request in flight) is closed to make room; when every connection is busy, new ones wait
//!   in the listen backlog. Running out of descriptors (`EMFILE`) is handled the same way.
//! * **Idle connections** (no request in flight, HTTP/1 or HTTP/2) are closed after
//!   `keep_alive_timeout`; a connection that has not yet sent a whole request counts as idle, so
//!   a half-sent request head is bounded too.
//! * **HTTP/1 request heads** must arrive within `header_read_timeout`, counted from the
//!   connection's opening or from the first byte of the head. The connection's own idle timer
//!   checks it (from what the socket reader records), so a request costs no timer of its own,
//!   and a keep-alive connection waiting for its next request is bounded by
//!   `keep_alive_timeout` alone.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// When the request head being received began (connection opened, or first byte read
    /// while idle), in ms since the server started, plus one; 0: no head being received.
    head_since_ms: AtomicU64,
    /// The connection speaks HTTP/2 (its first bytes were the preface): no head timeout.
    h2: AtomicBool,
}

impl ConnState {
    fn new(now_ms: u64) -> Self {
        ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            evict: Notify::new(),
            // Connecting counts as beginning a head: a silent socket is bounded by
            // `header_read_timeout` too.
            head_since_ms: AtomicU64::new(now_ms + 1),
            h2: AtomicBool::new(false),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Since when an HTTP/1 request head has been awaited (ms since the server started), if
    /// one is.
    fn head_since(&self) -> Option<u64> {
        if self.h2.load(Ordering::Relaxed) || !self.is_idle() {
            return None;
        }
        self.head_since_ms.load(Ordering::Acquire).checked_sub(1)
    }
}

/// The client socket, watched as it is read: the first byte of a request head starts the
/// head's clock (`header_read_timeout`), and an HTTP/2 preface turns the clock off.
struct Watched {
    stream: TcpStream,
    conn: Arc<ConnState>,
    clock: Arc<Clock>,
    /// How many bytes of the HTTP/2 preface the connection began with, while undecided.
    preface_matched: Option<usize>,
}

/// What an HTTP/2 connection begins with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol, decided on a connection's first bytes however reads split them: after
/// `matched` bytes of the HTTP/2 preface, `got` is read. `Ok(n)`: still undecided, `n` bytes
/// matched; `Err(true)`: HTTP/2; `Err(false)`: not.
fn preface_step(matched: usize, got: &[u8]) -> Result<usize, bool> {
    let n = got.len().min(H2_PREFACE.len() - matched);
    if got[..n] != H2_PREFACE[matched..matched + n] {
        Err(false)
    } else if matched + n == H2_PREFACE.len() {
        Err(true)
    } else {
        Ok(matched + n)
    }
}

impl Watched {
    fn on_read(&mut self, got: &[u8]) {
        if got.is_empty() {
            return;
        }
        if let Some(matched) = self.preface_matched {
            match preface_step(matched, got) {
                Ok(n) => self.preface_matched = Some(n),
                Err(h2) => {
                    self.preface_matched = None;
                    self.conn.h2.store(h2, Ordering::Relaxed);
                }
            }
        }
        if self.conn.is_idle() && self.conn.head_since_ms.load(Ordering::Relaxed) == 0 {
            self.conn
                .head_since_ms
                .store(self.clock.now_ms() + 1, Ordering::Release);
        }
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
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
        // The head is in: the next one's clock starts at its first byte.
        conn.head_since_ms.store(0, Ordering::Release);
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
    // No hyper timer for HTTP/1: hyper would arm one per request for its header timeout, and
    // that timeout also closes keep-alive connections waiting for their next request. `drive`
    // bounds heads instead (`header_read_timeout`), with the idle check's timer.
    builder.http1().header_read_timeout(None::<Duration>);
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
        let conn = Arc::new(ConnState::new(clock.now_ms()));
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
        let timeouts = Timeouts {
            idle: limits.keep_alive_timeout,
            head: limits.header_read_timeout,
        };
        metrics.connections_opened.fetch_add(1, Ordering::Relaxed);
        let metrics = metrics.clone();
        tasks.spawn(async move {
            let stream = Watched {
                stream,
                conn: conn.clone(),
                clock: clock.clone(),
                preface_matched: Some(0),
            };
            let end = drive(stream, service, &builder, &conn, &clock, timeouts, stop).await;
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
    /// An HTTP/1 request head not received within `header_read_timeout`.
    HeadTimeout,
    /// Closed to make room at the connection cap.
    Evicted,
    /// Idle when the server began shutting down.
    Shutdown,
}

/// A connection's time bounds.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// Without a request in flight (`keep_alive_timeout`).
    idle: Duration,
    /// To receive an HTTP/1 request head (`header_read_timeout`).
    head: Duration,
}

impl Timeouts {
    /// What is overdue on `conn` at `now_ms`, else how long until something may be.
    fn check(&self, conn: &ConnState, now_ms: u64) -> Result<Duration, End> {
        let idle = conn.is_idle();
        let idle_ms = now_ms.saturating_sub(conn.idle_since_ms.load(Ordering::Acquire));
        if idle && idle_ms >= self.idle.as_millis() as u64 {
            tracing::debug!(idle_ms, "idle connection closed (keep_alive_timeout)");
            return Err(End::Idle);
        }
        // Busy: the idle timeout counts from the end of the request, a whole timeout away.
        let mut wait = if idle {
            self.idle.saturating_sub(Duration::from_millis(idle_ms))
        } else {
            self.idle
        };
        // A head may begin at any moment (a busy connection's next request): look at least
        // once per head timeout, so a head overdue is seen on time.
        wait = wait.min(self.head);
        if let Some(since) = conn.head_since() {
            let head_ms = now_ms.saturating_sub(since);
            if head_ms >= self.head.as_millis() as u64 {
                tracing::debug!(
                    head_ms,
                    "request head not received in time (header_read_timeout): connection closed"
                );
                return Err(End::HeadTimeout);
            }
            wait = wait.min(self.head - Duration::from_millis(head_ms));
        }
        Ok(wait.max(Duration::from_millis(5)))
    }
}

/// Drives one connection to its end: closed by the client, idle too long, a request head too
/// slow, evicted, or asked to finish at shutdown.
async fn drive(
    stream: Watched,
    service: ConnService,
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    conn: &Arc<ConnState>,
    clock: &Clock,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) -> End {
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut finishing = false;
    let mut next_check = match timeouts.check(conn, clock.now_ms()) {
        Ok(wait) => tokio::time::Instant::now() + wait,
        Err(end) => return end,
    };
    loop {
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
            () = tokio::time::sleep_until(next_check) => {
                next_check = match timeouts.check(conn, clock.now_ms()) {
                    Ok(wait) => tokio::time::Instant::now() + wait,
                    Err(end) => return end,
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_preface_is_recognised_however_reads_split_it() {
        assert_eq!(preface_step(0, H2_PREFACE), Err(true));
        // Split, and followed by frames in the same read.
        assert_eq!(preface_step(0, b"PRI * HT"), Ok(8));
        assert_eq!(
            preface_step(8, b"TP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04"),
            Err(true)
        );
        // HTTP/1 methods sharing its first byte, one byte at a time.
        assert_eq!(preface_step(0, b"P"), Ok(1));
        assert_eq!(preface_step(1, b"OST /v1/chat/completions"), Err(false));
        assert_eq!(preface_step(1, b"UT /"), Err(false));
        assert_eq!(preface_step(0, b"GET / HTTP/1.1"), Err(false));
        // Almost the preface.
        assert_eq!(preface_step(0, b"PRI * HTTP/1.1\r\n"), Err(false));
    }
}
