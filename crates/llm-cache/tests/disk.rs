//! `type: disk` through the façade: built from `cache_params`, persistent across a rebuild.
#![cfg(feature = "disk")]

use std::time::Duration;

use llm_cache::{CacheConfig, CacheControl, CallKind};
use serde_json::{Value, json};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        TempDir(std::env::temp_dir().join(format!(
            "llm-cache-facade-disk-{}-{nanos}",
            std::process::id()
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn type_disk_builds_a_persistent_cache() {
    let dir = TempDir::new();
    let yaml = format!(
        "type: disk\ndisk_cache_dir: {}\ndisk_cache_max_bytes: 10485760\nttl: 600\nnamespace: app\n",
        dir.0.display()
    );
    let config = CacheConfig::from_yaml(&yaml).unwrap();
    assert!(llm_cache::available_types().contains(&"disk"));
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let call = || async {
        Ok::<Value, std::io::Error>(json!({"choices": [{"message": {"content": "hello"}}]}))
    };
    {
        let cache = config.build().await.unwrap();
        assert_eq!(cache.engine().unwrap().backend().name(), "disk");
        let first = cache
            .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), call)
            .await
            .unwrap();
        assert!(!first.status.is_hit());
        // A second cache on the same directory is refused, naming it.
        let err = config.build().await.unwrap_err().to_string();
        assert!(err.contains(&dir.0.display().to_string()), "{err}");
        cache.flush(Duration::from_secs(5)).await.unwrap();
    }
    let cache = config.build().await.unwrap();
    let again = cache
        .get_or_fetch(CallKind::Chat, &req, &CacheControl::none(), call)
        .await
        .unwrap();
    assert!(again.status.is_hit(), "{:?}", again.status);
}

#[tokio::test]
async fn bad_disk_settings_name_the_key() {
    // Validated when the config is loaded, before anything is opened.
    let err = CacheConfig::from_yaml("type: disk\ndisk_cache_on_corruption: sometimes\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cache_params.disk_cache_on_corruption"),
        "{err}"
    );
}
