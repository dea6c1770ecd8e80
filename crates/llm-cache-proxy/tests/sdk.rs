//! The official SDKs against the proxy: OpenAI's Python SDK (`responses.create`, streamed
//! responses, `audio.transcriptions.create`, chat) and Anthropic's (`messages.create`,
//! `messages.stream`), each a miss then a hit parsed by the SDK itself. Needs the `sdk` test
//! service (a venv with both SDKs; `cargo xtask services up sdk`).

use std::path::PathBuf;
use std::process::Command;

use llm_cache_tests::{FakeUpstream, Proxy};
use serde_json::Value;

const NEEDS: &str = "needs the sdk test service: `cargo xtask services up sdk`, then `cargo test -- --include-ignored` (cargo xtask test does both)";

fn python() -> PathBuf {
    let p = std::env::var_os("LLM_CACHE_SDK_PYTHON").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.test-services/sdk/venv/bin/python")
        },
        PathBuf::from,
    );
    if !p.exists() {
        cache_core::testing::service_unavailable::<()>(
            "the sdk venv (OpenAI and Anthropic Python SDKs)",
            &format!("{} does not exist", p.display()),
        );
    }
    p
}

const SCRIPT: &str = r#"
import json, sys
import openai, anthropic

base = sys.argv[1]
out = {}
oa = openai.OpenAI(base_url=base + "/v1", api_key="sk-client", max_retries=0)

def responses_create():
    raw = oa.responses.with_raw_response.create(model="gpt-test", input="Name a colour.", store=False)
    r = raw.parse()
    return raw.headers.get("cache-status"), r.id, r.output_text
out["responses"] = [responses_create(), responses_create()]

events = []
text = ""
with oa.responses.create(model="gpt-test", input="Name a colour.", store=False, stream=True) as stream:
    for e in stream:
        events.append(e.type)
        if e.type == "response.output_text.delta":
            text += e.delta
        if e.type == "response.completed":
            out["responses_stream_completed_id"] = e.response.id
out["responses_stream"] = {"events": events, "text": text}

def chat():
    raw = oa.chat.completions.with_raw_response.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    c = raw.parse()
    return raw.headers.get("cache-status"), c.choices[0].message.content
out["chat"] = [chat(), chat()]
chunks = oa.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
                                    stream_options={"include_usage": True})
streamed = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
out["chat_stream"] = streamed

audio = bytes(range(256)) * 400
def transcribe():
    raw = oa.audio.transcriptions.with_raw_response.create(model="whisper-test", file=("clip.wav", audio, "audio/wav"))
    t = raw.parse()
    return raw.headers.get("cache-status"), t.text
out["transcription"] = [transcribe(), transcribe()]

an = anthropic.Anthropic(base_url=base, api_key="sk-ant-client", max_retries=0)
def message():
    raw = an.messages.with_raw_response.create(model="claude-test", max_tokens=64,
                                               messages=[{"role": "user", "content": "Say hi"}])
    m = raw.parse()
    return raw.headers.get("cache-status"), m.id, m.content[0].text
out["messages"] = [message(), message()]
with an.messages.stream(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "Say hi"}]) as s:
    final = s.get_final_message()
    out["messages_stream"] = {"id": final.id, "text": final.content[0].text, "stop_reason": final.stop_reason,
                              "output_tokens": final.usage.output_tokens}
print(json.dumps(out))
"#;

#[tokio::test]
#[ignore = "needs the sdk test service: `cargo xtask services up sdk`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
async fn official_sdks_parse_misses_and_hits() {
    let _ = NEEDS;
    let py = python();
    let up = FakeUpstream::start().await;
    let base = up.base_url();
    let proxy = Proxy::start(&format!(
        "model_list:
  - {{model_name: gpt-test, litellm_params: {{model: openai/fake-model, api_base: '{base}', api_key: k}}}}
  - {{model_name: whisper-test, litellm_params: {{model: openai/fake-whisper, api_base: '{base}', api_key: k}}}}
  - {{model_name: claude-test, litellm_params: {{model: anthropic/claude-fake, api_base: '{base}', api_key: k}}}}
litellm_settings: {{cache: true, cache_params: {{type: local}}}}
"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sdk.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let base_url = proxy.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(&script)
            .arg(base_url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    let pair = |name: &str| -> (Value, Value) { (v[name][0].clone(), v[name][1].clone()) };

    let (miss, hit) = pair("responses");
    assert!(miss[0].as_str().unwrap().contains("fwd=miss"), "{v}");
    assert_eq!(hit[0], "llm-cache; hit");
    assert_eq!(miss[1], hit[1], "same response id");
    assert_eq!(miss[2], hit[2]);
    let stream = &v["responses_stream"];
    assert_eq!(
        stream["text"], miss[2],
        "the SDK reassembles the replayed events"
    );
    assert_eq!(v["responses_stream_completed_id"], miss[1]);
    assert_eq!(stream["events"][0], "response.created");

    let (miss, hit) = pair("chat");
    assert!(miss[0].as_str().unwrap().contains("fwd=miss"));
    assert_eq!(hit[0], "llm-cache; hit");
    assert_eq!(v["chat_stream"], hit[1]);

    let (miss, hit) = pair("transcription");
    assert!(miss[0].as_str().unwrap().contains("fwd=miss"));
    assert_eq!(hit[0], "llm-cache; hit");
    assert_eq!(miss[1], hit[1]);

    let (miss, hit) = pair("messages");
    assert!(miss[0].as_str().unwrap().contains("fwd=miss"));
    assert_eq!(hit[0], "llm-cache; hit");
    assert_eq!(miss[1], hit[1]);
    let ms = &v["messages_stream"];
    assert_eq!(
        ms["id"], miss[1],
        "messages.stream parses the replayed events"
    );
    assert_eq!(ms["text"], miss[2]);
    assert_eq!(ms["stop_reason"], "end_turn");
    assert_eq!(up.calls(), 4, "one upstream call per distinct request");
}
