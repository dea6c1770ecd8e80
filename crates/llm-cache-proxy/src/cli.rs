//! The `llm-cache` command line: [`run`] with a backend [`Registry`]. The `llm-cache` binary is
//! `run(llm_cache::builtin_registry())`; a third party ships the same command line with its own
//! backend registered (see `examples/hashmap-proxy`).
//!
//! ```text
//! llm-cache serve [--config FILE] [--host 127.0.0.1] [--port 4000]
//! llm-cache ping --config FILE          check the cache backend (exit 1 when unhealthy)
//! llm-cache check-config --config FILE  validate a config and print its warnings
//! llm-cache key --config FILE [--kind chat] < request.json   print a request's cache key
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use llm_cache::{CacheControl, CallKind, Registry, RequestContext};
use tracing_subscriber::EnvFilter;

use crate::config::ProxyConfig;
use crate::server::Server;
use crate::upstream;

#[derive(Parser, Debug)]
#[command(
    name = "llm-cache",
    version,
    about = "Response caching for LLM applications: an OpenAI-compatible caching proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the caching proxy.
    Serve {
        /// LiteLLM-style config.yaml (default: disk cache in ./.llm_cache and one upstream from
        /// OPENAI_BASE_URL / OPENAI_API_KEY).
        #[arg(long, short, env = "LLM_CACHE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1", env = "LLM_CACHE_HOST")]
        host: String,
        /// Port to listen on.
        #[arg(long, default_value_t = 4000, env = "LLM_CACHE_PORT")]
        port: u16,
    },
    /// Check the configured cache backend (ping plus a test write).
    Ping {
        /// LiteLLM-style config.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and print its warnings.
    CheckConfig {
        /// LiteLLM-style config.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the cache key of a request read from stdin (JSON).
    Key {
        /// LiteLLM-style config.yaml (namespace, model groups, key options).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Call kind: chat, text_completion, embedding, responses, ...
        #[arg(long, default_value = "chat")]
        kind: String,
    },
}

fn load(path: Option<&PathBuf>, registry: &Registry) -> Result<ProxyConfig, String> {
    match path {
        Some(p) => ProxyConfig::load_in(p, registry).map_err(|e| e.to_string()),
        None => ProxyConfig::embedded_default_in(registry).map_err(|e| e.to_string()),
    }
}

/// Runs the `llm-cache` command line (`serve`, `ping`, `check-config`, `key`) with the backends
/// of `registry`: a binary's whole `main`.
pub fn run(registry: Registry) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config, host, port } => {
                serve(config.as_ref(), &registry, &host, port).await
            }
            Command::Ping { config } => ping(&config, &registry).await,
            Command::CheckConfig { config } => {
                let c = load(Some(&config), &registry)?;
                for w in &c.warnings {
                    println!("warning: {w}");
                }
                println!(
                    "ok: {} model group(s), cache: {}",
                    c.models.len(),
                    c.cache.as_ref().map_or("off", |c| c.backend_type())
                );
                Ok(())
            }
            Command::Key { config, kind } => key(config.as_ref(), &registry, &kind).await,
        }
    });
    // Whatever still runs (a detached upstream stream, a blocking write) must not hold the
    // process past shutdown: `serve` already spent the shutdown budget.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Option<&PathBuf>,
    registry: &Registry,
    host: &str,
    port: u16,
) -> Result<(), String> {
    let start = Instant::now();
    let cfg = load(config, registry)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("invalid --host/--port {host}:{port}: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let server = Server::new(cfg).await?;
    server.serve(listener, shutdown_signal(), start).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}

async fn ping(config: &PathBuf, registry: &Registry) -> Result<(), String> {
    let cfg = load(Some(config), registry)?;
    let Some(cache_cfg) = &cfg.cache else {
        return Err("caching is not enabled in this config (litellm_settings.cache)".to_owned());
    };
    let cache = cache_cfg.build().await.map_err(|e| e.to_string())?;
    let report = cache.ping().await.map_err(|e| format!("unhealthy: {e}"))?;
    println!(
        "{}: {} (latency {:.2} ms, test write {}, breaker {:?})",
        cache_cfg.backend_type(),
        if report.set_ok {
            "healthy"
        } else {
            "unhealthy"
        },
        report.health.latency.as_secs_f64() * 1000.0,
        if report.set_ok { "ok" } else { "failed" },
        report.breaker
    );
    for (k, v) in &report.health.details {
        println!("  {k}: {v}");
    }
    if report.set_ok {
        Ok(())
    } else {
        Err("the test write did not round-trip".to_owned())
    }
}

async fn key(config: Option<&PathBuf>, registry: &Registry, kind: &str) -> Result<(), String> {
    let cfg = match config {
        Some(p) => ProxyConfig::load_in(p, registry).map_err(|e| e.to_string())?,
        None => ProxyConfig::from_yaml_in(
            "litellm_settings: {cache: true, cache_params: {type: local}}",
            registry,
        )
        .map_err(|e| e.to_string())?,
    };
    let kind = CallKind::parse(kind).ok_or_else(|| format!("unknown call kind `{kind}`"))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| e.to_string())?;
    let request: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    let cc = CacheControl::from_request(&request).map_err(|e| e.to_string())?;
    let cache = match &cfg.cache {
        Some(c) => llm_cache::CacheBuilder::new(llm_cache::MemoryBackend::default())
            .settings(c.settings().map_err(|e| e.to_string())?)
            .build(),
        None => llm_cache::Cache::in_memory(),
    };
    let router = upstream::Router::new(cfg.models.clone());
    let model = request
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    let group = router
        .route(&model)
        .map(|r| r.model_group(&model).to_owned());
    let ctx = RequestContext {
        model_group: group.as_deref(),
        ..RequestContext::default()
    };
    let prepared = cache
        .prepare(kind, &request, &cc, &ctx)
        .map_err(|e| e.to_string())?;
    let engine = cache.engine().ok_or("cache disabled")?;
    let pre = engine
        .keys()
        .preimage(
            kind,
            &request,
            &llm_cache::core::KeyContext {
                model_group: ctx.model_group,
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
    println!(
        "{}",
        prepared.key().map(|k| k.to_string()).unwrap_or_default()
    );
    eprintln!("preimage: {pre:?}");
    Ok(())
}
