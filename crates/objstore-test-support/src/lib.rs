//! **TEST-ONLY** support for the object-store backends' tests, benches and the façade's tests.
//! Never a dependency of a library or binary.
//!
//! * Where the shared emulators of `cargo xtask services up` listen ([`s3_endpoint`],
//!   [`gcs_endpoint`], [`azurite_endpoint`]; each overridable by an environment variable) and
//!   whether they answer ([`reachable`]).
//! * [`GcsXmlUploadAdapter`]: the adapter that lets `object_store`'s GCS client write to
//!   fake-gcs-server (see its module docs for exactly what it translates).
//! * [`Emulator`]: a private emulator process on a free port, to stop, pause and restart in
//!   fault tests without disturbing the shared one.

pub mod gcs_adapter;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use gcs_adapter::GcsXmlUploadAdapter;

/// Bucket (S3, GCS) and container (Azure) the service recipes create.
pub const BUCKET: &str = "test-bucket";

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// moto's endpoint (`LLM_CACHE_TEST_S3_ENDPOINT`, default `http://127.0.0.1:17401`).
pub fn s3_endpoint() -> String {
    env_or("LLM_CACHE_TEST_S3_ENDPOINT", "http://127.0.0.1:17401")
}

/// fake-gcs-server's endpoint (`LLM_CACHE_TEST_GCS_ENDPOINT`, default `http://127.0.0.1:17501`).
pub fn gcs_endpoint() -> String {
    env_or("LLM_CACHE_TEST_GCS_ENDPOINT", "http://127.0.0.1:17501")
}

/// Azurite's blob endpoint (`LLM_CACHE_TEST_AZURITE_ENDPOINT`, default `http://127.0.0.1:17601`).
pub fn azurite_endpoint() -> String {
    env_or("LLM_CACHE_TEST_AZURITE_ENDPOINT", "http://127.0.0.1:17601")
}

fn socket_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// endpoints are supported in tests"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}

/// Whether something accepts TCP connections at `url`'s host and port (within 1 s).
///
/// # Errors
/// Why not, for `cache_core::testing::service_unavailable`.
pub fn reachable(url: &str) -> Result<(), String> {
    let addr = socket_addr(url)?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map(|_| ())
        .map_err(|e| format!("{addr}: {e}"))
}

/// Writes an `object_store` service-account file pointing at `base_url` without OAuth (the form
/// fake-gcs-server needs; it holds no secret) and returns its path.
///
/// # Panics
/// When the temporary directory is not writable.
pub fn gcs_service_account_file(base_url: &str) -> PathBuf {
    let name: String = base_url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    // One file per base URL, shared by every test process (they write the same bytes), in a
    // directory of its own whose files from earlier runs (an hour old) are removed here, so
    // runs against emulators on ever-new ports do not pile files up in the temporary directory.
    let dir = std::env::temp_dir().join("llm-cache-test-gcs");
    std::fs::create_dir_all(&dir).expect("create the service-account directory");
    remove_older_than(&dir, Duration::from_secs(3600));
    let path = dir.join(format!("{name}.json"));
    let json = serde_json::json!({
        "gcs_base_url": base_url,
        "disable_oauth": true,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    });
    // Written aside and renamed into place: tests running in parallel read this file while
    // others (re)write it, and a plain write let a reader see it empty (a client without
    // plain HTTP then failed with `BadScheme`, once in CI).
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, json.to_string()).expect("write the service-account file");
    std::fs::rename(&tmp, &path).expect("move the service-account file into place");
    path
}

/// Removes the files of `dir` last modified more than `age` ago (best effort).
fn remove_older_than(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The workspace root (for `.test-services/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/<name> lives in the workspace")
        .to_path_buf()
}

fn services_dir() -> PathBuf {
    std::env::var_os("SVC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".test-services"))
}

/// Which emulator an [`Emulator`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatorKind {
    /// moto (S3).
    Moto,
    /// fake-gcs-server (GCS).
    FakeGcs,
    /// Azurite (Azure Blob).
    Azurite,
}

/// A private emulator process on a free loopback port, stopped (by its PID) when dropped.
///
/// The bucket (`test-bucket`) is created on S3 and GCS; on Azure the backend creates its
/// container itself.
#[derive(Debug)]
pub struct Emulator {
    kind: EmulatorKind,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) && p.is_file() {
            return Some(p);
        }
        if depth > 0
            && p.is_dir()
            && let Some(found) = find_file(&p, name, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

impl Emulator {
    /// Starts one on a free port and waits until it answers (and its bucket exists).
    ///
    /// # Errors
    /// The emulator is not installed (`cargo xtask services up` installs it), or did not
    /// become ready within 30 s.
    pub async fn start(kind: EmulatorKind) -> Result<Emulator, String> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "llm-cache-test-{kind:?}-{port}-{}.log",
            std::process::id()
        ));
        let mut e = Emulator {
            kind,
            port,
            child: None,
            log,
        };
        e.spawn().await?;
        Ok(e)
    }

    fn command(&self) -> Result<Command, String> {
        let svc = services_dir();
        let port = self.port.to_string();
        match self.kind {
            EmulatorKind::Moto => {
                let bin = svc.join("moto/venv/bin/moto_server");
                if !bin.exists() {
                    return Err(format!("{} is not installed", bin.display()));
                }
                let mut c = Command::new(bin);
                c.args(["-H", "127.0.0.1", "-p", &port]);
                Ok(c)
            }
            EmulatorKind::FakeGcs => {
                let bin = find_file(
                    &svc.join("fake-gcs/venv/lib"),
                    "fake-gcs-server-linux-amd64",
                    8,
                )
                .ok_or("fake-gcs-server is not installed under .test-services/fake-gcs")?;
                let mut c = Command::new(bin);
                let host = format!("127.0.0.1:{port}");
                c.args([
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    &port,
                    "-backend",
                    "memory",
                    "-public-host",
                    &host,
                    "-external-url",
                    &format!("http://{host}"),
                    "-log-level",
                    "warn",
                ]);
                Ok(c)
            }
            EmulatorKind::Azurite => {
                let main = svc.join("azurite/node_modules/azurite/dist/src/blob/main.js");
                if !main.exists() {
                    return Err(format!("{} is not installed", main.display()));
                }
                let mut c = Command::new("node");
                c.arg(main).args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port,
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--loose",
                ]);
                Ok(c)
            }
        }
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = self
            .command()?
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{:?}: cannot start: {e}", self.kind))?;
        self.child = Some(child);
        let start = Instant::now();
        while reachable(&self.url()).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{:?} did not listen on {} within 30 s (log: {})",
                    self.kind,
                    self.url(),
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let created = match self.kind {
            EmulatorKind::Moto => Some(client.put(format!("{}/{BUCKET}", self.url())).send().await),
            EmulatorKind::FakeGcs => Some(
                client
                    .post(format!("{}/storage/v1/b", self.url()))
                    .header("content-type", "application/json")
                    .body(format!("{{\"name\":\"{BUCKET}\"}}"))
                    .send()
                    .await,
            ),
            EmulatorKind::Azurite => None,
        };
        if let Some(r) = created {
            let r = r.map_err(|e| format!("creating the bucket: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("creating the bucket: {}", r.status()));
            }
        }
        Ok(())
    }

    /// Its base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) -> Result<(), String> {
        let pid = self.pid().ok_or("not running")?;
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill {sig} {pid}: {status}"))
        }
    }

    /// Freezes the process (SIGSTOP): connections are accepted by the kernel but never
    /// answered, like a hung server.
    ///
    /// # Errors
    /// The process is not running.
    pub fn pause(&self) -> Result<(), String> {
        self.signal("-STOP")?;
        // `kill` returns once the signal is queued; each thread of the process stops when it
        // next enters the kernel. Wait until all of them are stopped, or a request sent right
        // after this may still be answered (it was, once in CI, by fake-gcs-server).
        let pid = self.pid().ok_or("not running")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let tasks =
                std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
            let all_stopped = tasks.filter_map(Result::ok).all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    // The state is the first field after the command name in parentheses.
                    stat.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.chars().next())
                        .is_some_and(|state| state == 'T' || state == 't')
                })
            });
            if all_stopped {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("process {pid} did not stop within 5 s of SIGSTOP"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Lets a paused process run again (SIGCONT); its data is intact.
    ///
    /// # Errors
    /// The process is not running.
    pub fn resume(&self) -> Result<(), String> {
        self.signal("-CONT")
    }

    /// Kills the process (its in-memory data is lost); connections are refused afterwards.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.signal_child(&c, "-CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal_child(&self, c: &Child, sig: &str) -> Result<(), String> {
        Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Starts it again on the same port, empty (bucket recreated).
    ///
    /// # Errors
    /// As [`Emulator::start`].
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
