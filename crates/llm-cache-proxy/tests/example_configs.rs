//! Every config under `examples/configs/` is valid: `llm-cache check-config` accepts it, with no
//! warning, when the environment variables it names are set.

use std::path::Path;
use std::process::Command;

/// A plausible value for an environment variable an example names.
fn value_for(name: &str) -> String {
    if name.ends_with("_URL") {
        if name.starts_with("REDIS") {
            "redis://127.0.0.1:6379".to_owned()
        } else {
            "http://127.0.0.1:1/v1".to_owned()
        }
    } else if name.ends_with("_PORT") {
        "6379".to_owned()
    } else {
        // Keys, hosts, passwords: distinct per name (tenant keys must differ from each other).
        format!("example-{}", name.to_ascii_lowercase())
    }
}

fn env_refs(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split("os.environ/")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs");
    let mut checked = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/configs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    let key_file = tempfile::NamedTempFile::new().expect("temp file");
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("read");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_llm-cache"));
        cmd.args(["check-config", "--config"]).arg(&path);
        for name in env_refs(&text) {
            let value = if name == "GCS_PATH_SERVICE_ACCOUNT" {
                key_file.path().display().to_string()
            } else {
                value_for(&name)
            };
            cmd.env(name, value);
        }
        let out = cmd.output().expect("run llm-cache check-config");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: check-config failed: {stderr}",
            path.display()
        );
        assert!(
            !stdout.contains("warning:"),
            "{}: warnings: {stdout}",
            path.display()
        );
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for backend in [
        "local.yaml",
        "redis.yaml",
        "redis-cluster.yaml",
        "redis-sentinel.yaml",
        "disk.yaml",
        "s3.yaml",
        "gcs.yaml",
        "azure-blob.yaml",
        "redis-semantic.yaml",
        "qdrant-semantic.yaml",
        "local-semantic.yaml",
        "tenants.yaml",
        "fleet-redis.yaml",
        "fleet-redis-cluster.yaml",
        "fleet-redis-sentinel.yaml",
    ] {
        assert!(
            checked.iter().any(|c| c == backend),
            "examples/configs/{backend} is missing"
        );
    }
}
