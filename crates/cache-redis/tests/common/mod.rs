//! Shared helpers of the integration tests: the shared services (`cargo xtask services up
//! redis redis-cluster redis-sentinel`) and private `redis-server` processes started by a test
//! on free ports in 17800-17999 (stopped by their PID when dropped).
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use cache_core::testing::service_unavailable;
use cache_redis::{Node, RedisBackend, RedisConfig};

pub const STANDALONE_PORT: u16 = 17001;
pub const CLUSTER_PORTS: [u16; 6] = [17101, 17102, 17103, 17104, 17105, 17106];
pub const SENTINEL_PORTS: [u16; 3] = [17311, 17312, 17313];
pub const SENTINEL_SERVICE: &str = "mymaster";

pub fn reachable(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Runs `redis-cli -p PORT ARGS...` and returns its stdout (trimmed).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub async fn connected(config: RedisConfig, what: &str) -> Option<RedisBackend> {
    let backend = RedisBackend::connect(config)
        .await
        .expect("configuration is valid");
    match backend.wait_connected(Duration::from_secs(10)).await {
        Ok(()) => Some(backend),
        Err(e) => service_unavailable(what, &e.to_string()),
    }
}

/// The shared standalone server (port 17001), in database `db`.
pub async fn standalone_db(db: u8) -> Option<RedisBackend> {
    if !reachable(STANDALONE_PORT) {
        return service_unavailable("redis (127.0.0.1:17001)", "connection refused");
    }
    connected(
        RedisConfig::standalone("127.0.0.1", STANDALONE_PORT).with_db(db),
        "redis",
    )
    .await
}

/// The Unix socket of the shared standalone server (it answers `CONFIG GET unixsocket`).
pub fn standalone_socket() -> Option<String> {
    if !reachable(STANDALONE_PORT) {
        return service_unavailable("redis (127.0.0.1:17001)", "connection refused");
    }
    let out = cli(STANDALONE_PORT, &["config", "get", "unixsocket"]);
    match out.lines().nth(1).map(str::trim) {
        Some(path) if !path.is_empty() => Some(path.to_owned()),
        _ => service_unavailable(
            "redis on a Unix socket",
            "the redis service listens on no Unix socket (it was started before it did): \
             `cargo xtask services down redis && cargo xtask services up redis`",
        ),
    }
}

/// The shared standalone server through its Unix socket, named by a redis-py-style URL
/// (`unix:///path?db=N`), in database `db`.
pub async fn standalone_unix(db: u8) -> Option<RedisBackend> {
    let path = standalone_socket()?;
    connected(
        RedisConfig::url(format!("unix://{path}?db={db}")),
        "redis (Unix socket)",
    )
    .await
}

pub async fn standalone() -> Option<RedisBackend> {
    standalone_db(0).await
}

pub fn cluster_config() -> RedisConfig {
    // Three seeds are enough: the client discovers the rest with CLUSTER SLOTS.
    RedisConfig::cluster(
        CLUSTER_PORTS[..3]
            .iter()
            .map(|p| Node::new("127.0.0.1", *p))
            .collect(),
    )
}

pub async fn cluster() -> Option<RedisBackend> {
    if !reachable(CLUSTER_PORTS[0]) {
        return service_unavailable(
            "redis-cluster (127.0.0.1:17101-17106)",
            "connection refused",
        );
    }
    if !cli(CLUSTER_PORTS[0], &["cluster", "info"]).contains("cluster_state:ok") {
        return service_unavailable("redis-cluster", "cluster_state is not ok");
    }
    connected(cluster_config(), "redis-cluster").await
}

pub async fn sentinel() -> Option<RedisBackend> {
    if !SENTINEL_PORTS.iter().any(|p| reachable(*p)) {
        return service_unavailable(
            "redis-sentinel (sentinels 127.0.0.1:17311-17313)",
            "connection refused",
        );
    }
    connected(
        RedisConfig::sentinel(
            SENTINEL_PORTS
                .iter()
                .map(|p| Node::new("127.0.0.1", *p))
                .collect(),
            SENTINEL_SERVICE,
        ),
        "redis-sentinel",
    )
    .await
}

/// Whether `redis-server` is installed (private servers need it).
pub fn have_redis_server() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free port in 17800-17989 (unique within this process, free at the time of the call;
/// 17990-17999 stay unused so tests can rely on nothing listening there).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 38) as u16 * 5;
    for _ in 0..190 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 17800 + (start + offset) % 190;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && !reachable(port) {
            return port;
        }
    }
    panic!("no free port in 17800-17989");
}

/// A `redis-server` (or sentinel) process owned by the test; killed (by PID) on drop.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Server {
    /// A plain server without persistence on a free port.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Self::start_on(free_port(), dir, extra)
    }

    pub fn start_on(port: u16, dir: &Path, extra: &[&str]) -> Server {
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("server dir");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            dir.to_str().expect("utf-8 path"),
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            port,
            dir,
            child: None,
            args,
        };
        s.spawn(None);
        s
    }

    /// A sentinel monitoring `master_port` as `service`.
    pub fn sentinel(dir: &Path, service: &str, master_port: u16) -> Server {
        let port = free_port();
        let dir = dir.join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
                 sentinel monitor {service} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 5000\n\
                 sentinel parallel-syncs {service} 1\n",
                dir.display()
            ),
        )
        .expect("sentinel.conf");
        let mut s = Server {
            port,
            dir,
            child: None,
            args: vec![conf.to_string_lossy().into_owned(), "--sentinel".to_owned()],
        };
        s.spawn(None);
        s
    }

    fn spawn(&mut self, _: Option<()>) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(self.port, &["ping"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same server again (same port, same arguments).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(None);
    }

    /// SIGSTOP / SIGCONT: the server keeps its sockets but stops answering.
    pub fn pause(&self, paused: bool) {
        let pid = self.pid().expect("running");
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A paused process must be resumed to die quickly and cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        self.kill();
    }
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A 64-hex key like the cache writes (`ns:hash`, or a bare hash).
pub fn entry_key(ns: Option<&str>, seed: u64) -> String {
    let hash = format!("{:016x}", seed).repeat(4);
    match ns {
        Some(ns) => format!("{ns}:{hash}"),
        None => hash,
    }
}
