//! Test support for llm-cache's cross-crate and black-box tests: a fake OpenAI-compatible
//! upstream and a fixture that runs the real `llm-cache` binary.

pub mod fake_upstream;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fake_upstream::FakeUpstream;

/// The `llm-cache` binary: `LLM_CACHE_BIN`, else [`binary`]`("llm-cache")`.
pub fn proxy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("LLM_CACHE_BIN") {
        return PathBuf::from(p);
    }
    binary("llm-cache")
}

/// A binary of the workspace next to the test executable (`target/<profile>/<name>`). Cargo
/// builds a package's binaries before its integration tests, so a test in the package of
/// `name` always finds it (`llm-cache`'s tests live in `llm-cache-proxy`, `hashmap-proxy`'s in
/// its example crate).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} does not exist: tests that run it belong in the package that builds it",
        bin.display()
    );
    bin
}

/// Installs ring as the process's rustls crypto provider: in llm-cache's workspace reqwest is
/// built without one (ring is the one provider of every build), so a test must install it
/// before it builds a client. [`FakeUpstream::start`] and [`Proxy::start`] do.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `llm-cache serve`, killed on drop.
#[derive(Debug)]
pub struct Proxy {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Working directory (holds the config and any disk cache).
    pub dir: tempfile::TempDir,
    /// When it was spawned and when it became ready.
    pub ready_after: Duration,
}

impl Proxy {
    /// Writes `config` (YAML) to a temp dir and starts the proxy with it; waits until
    /// `/health/liveliness` answers.
    pub async fn start(config: &str) -> Proxy {
        Self::start_with(config, &[]).await
    }

    /// As [`Proxy::start`], with extra environment variables.
    pub async fn start_with(config: &str, env: &[(&str, &str)]) -> Proxy {
        Self::spawn(proxy_binary(), Some(config), env).await
    }

    /// Starts the proxy without `--config` (the embedded default), in a temp working directory.
    pub async fn start_default(env: &[(&str, &str)]) -> Proxy {
        Self::spawn(proxy_binary(), None, env).await
    }

    /// As [`Proxy::start`], with another binary that has llm-cache's command line (a third
    /// party's proxy).
    pub async fn start_binary(bin: PathBuf, config: &str) -> Proxy {
        Self::spawn(bin, Some(config), &[]).await
    }

    async fn spawn(bin: PathBuf, config: Option<&str>, env: &[(&str, &str)]) -> Proxy {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let start = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.arg("serve");
        if let Some(config) = config {
            let path = dir.path().join("config.yaml");
            std::fs::write(&path, config).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        cmd.arg("--port")
            .arg(port.to_string())
            .current_dir(dir.path())
            .env(
                "RUST_LOG",
                std::env::var("PROXY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn llm-cache");
        let mut proxy = Proxy {
            child: Some(child),
            port,
            dir,
            ready_after: Duration::ZERO,
        };
        let client = reqwest::Client::new();
        loop {
            if let Some(status) = proxy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("llm-cache exited during startup: {status}");
            }
            if let Ok(r) = client.get(proxy.url("/health/liveliness")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "proxy not ready after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.ready_after = start.elapsed();
        proxy
    }

    /// Waits (up to 15 s) until `/health/readiness` answers 200: the cache backend is
    /// reachable (before that, every lookup of a shared backend is a miss). Panics otherwise.
    pub async fn wait_ready(&self) {
        let start = Instant::now();
        while !reqwest::get(self.url("/health/readiness"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the proxy never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Sends SIGTERM and waits for the exit (graceful shutdown).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxy did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal config: one model group on the fake upstream, the given `cache_params` (YAML flow
/// mapping), optional master key.
pub fn config(upstream: &FakeUpstream, cache_params: &str, master_key: Option<&str>) -> String {
    let mut c = format!(
        "model_list:\n  - model_name: gpt-test\n    litellm_params:\n      model: openai/fake-model\n      api_base: {base}\n      api_key: sk-upstream\n  - model_name: embed-test\n    litellm_params:\n      model: openai/fake-embed\n      api_base: {base}\n      api_key: sk-upstream\n  - model_name: text-test\n    litellm_params:\n      model: openai/fake-instruct\n      api_base: {base}\n      api_key: sk-upstream\nlitellm_settings:\n  cache: true\n  cache_params: {cache_params}\n",
        base = upstream.base_url()
    );
    if let Some(k) = master_key {
        c.push_str(&format!("general_settings:\n  master_key: {k}\n"));
    }
    c
}

/// A response's `Cache-Status` header, empty when absent.
pub fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// POSTs `body` as JSON to `url`, expects 200; returns the `Cache-Status` header (empty when
/// absent) and the whole body.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (String, bytes::Bytes) {
    let r = http.post(url).json(body).send().await.expect("request");
    assert_eq!(r.status(), 200, "POST {url}");
    let status = cache_status(&r);
    (status, r.bytes().await.expect("body"))
}

/// The text of an SSE chat stream: every chunk's `choices[0].delta.content`, joined.
pub fn streamed_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}
