//! Black-box test of the third party's binary: `type: hashmap` selected from a config.yaml and
//! served by the llm-cache proxy, end to end through HTTP against a fake upstream.

use llm_cache_tests::{FakeUpstream, Proxy, binary};
use serde_json::json;

#[tokio::test]
async fn the_third_party_backend_serves_hits_from_a_config() {
    let up = FakeUpstream::start().await;
    let config = format!(
        "model_list:
  - {{model_name: gpt-test, litellm_params: {{model: openai/fake-model, api_base: '{}', api_key: k}}}}
litellm_settings:
  cache: true
  cache_params: {{type: hashmap, hashmap_max_entries: 100, namespace: third-party}}
",
        up.base_url()
    );
    let proxy = Proxy::start_binary(binary("hashmap-proxy"), &config).await;
    let client = reqwest::Client::new();
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = client
            .post(proxy.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let key = r.headers()["x-litellm-cache-key"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(key.starts_with("third-party:"), "{key}");
        statuses.push(r.headers()["cache-status"].to_str().unwrap().to_owned());
    }
    assert_eq!(statuses, ["llm-cache; fwd=miss; stored", "llm-cache; hit"]);
    assert_eq!(up.chat_calls(), 1);
    let ping: serde_json::Value = client
        .get(proxy.url("/cache/ping"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ping["cache_type"], "hashmap");
    assert_eq!(ping["health_check_cache_params"]["entries"], "1");
}

#[tokio::test]
async fn its_config_errors_are_clear() {
    let dir = tempdir();
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "litellm_settings: {cache: true, cache_params: {type: hashmap, hashmap_max_entries: 0}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary("hashmap-proxy"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cache_params.hashmap_max_entries") && err.contains("at least 1"),
        "{err}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hashmap-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
