//! TLS end to end: a private `redis-server` with a TLS port and a certificate from a CA made by
//! this test (openssl CLI). `ssl: true` + `ssl_ca_certs` and `rediss://` connect and work; the
//! same server is refused without the CA (verification is on).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cache_core::params::Params;
use cache_core::testing::service_unavailable;
use cache_core::{Bytes, CacheBackend};
use cache_redis::{RedisBackend, RedisConfig};
use common::Server;
use serde_json::json;

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// CA, and a server certificate for 127.0.0.1 signed by it; returns the directory.
fn make_certs() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "cache-redis-tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let ok = openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=llm-cache test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ) && openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    ) && openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    ok.then_some(dir)
}

#[test]
#[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
fn tls_with_a_private_ca() {
    if !common::have_redis_server() {
        service_unavailable::<()>("redis-server", "the binary is not installed");
        return;
    }
    let Some(certs) = make_certs() else {
        service_unavailable::<()>("openssl", "cannot create test certificates");
        return;
    };
    let tls_port = common::free_port();
    let p = |f: &str| certs.join(f).to_string_lossy().into_owned();
    let _server = Server::start(
        &certs,
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &p("server.pem"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    let rt = cache_core::testing::runtime();
    rt.block_on(async {
        // `ssl: true` + `ssl_ca_certs`, the LiteLLM way.
        let params = Params::new(
            json!({"host": "127.0.0.1", "port": tls_port, "ssl": true, "ssl_ca_certs": p("ca.pem")})
                .as_object()
                .unwrap()
                .clone(),
            "cache_params",
        );
        let b = RedisBackend::from_params(&params).await.unwrap();
        b.wait_connected(Duration::from_secs(5)).await.unwrap();
        b.set("tls:k", Bytes::from_static(b"secret bytes"), None)
            .await
            .unwrap();
        assert_eq!(
            b.get("tls:k").await.unwrap().as_deref(),
            Some(&b"secret bytes"[..])
        );

        // `rediss://` with the same CA.
        let b = RedisBackend::connect(
            RedisConfig::url(format!("rediss://127.0.0.1:{tls_port}/0"))
                .with_tls_ca_certs(certs.join("ca.pem")),
        )
        .await
        .unwrap();
        b.wait_connected(Duration::from_secs(5)).await.unwrap();
        assert!(b.get("tls:k").await.unwrap().is_some());

        // Without the CA (system roots only) the certificate is refused: never connected.
        let b = RedisBackend::connect(
            RedisConfig::standalone("127.0.0.1", tls_port)
                .with_tls(true)
                .with_connect_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
        assert!(b.wait_connected(Duration::from_secs(2)).await.is_err());
        assert!(b.get("tls:k").await.is_err());

        // A bad CA file is a configuration error naming the key.
        let err = RedisBackend::connect(
            RedisConfig::standalone("127.0.0.1", tls_port)
                .with_tls(true)
                .with_tls_ca_certs(certs.join("missing.pem")),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("ssl_ca_certs"), "{err}");
    });
    drop(_server);
    let _ = std::fs::remove_dir_all(&certs);
}
