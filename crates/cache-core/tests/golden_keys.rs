//! Golden vectors of the key spec (`docs/key-spec.md`): inputs in `golden/key-vectors.json`,
//! expected preimages and keys below. A change here is a change of the spec: bump
//! `KEY_SPEC_VERSION` instead of editing these.

use cache_core::{CallKind, KeyBuilder, KeyContext, KeyOptions};
use serde_json::Value;

const EXPECTED: &[(&str, &str)] = &[
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\"}",
        "e54d4b6f0f196d2f8d5be06db03e6d80a7296c628ee8f4d592c1ea8284e0af21",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\"}",
        "e54d4b6f0f196d2f8d5be06db03e6d80a7296c628ee8f4d592c1ea8284e0af21",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\"}",
        "e54d4b6f0f196d2f8d5be06db03e6d80a7296c628ee8f4d592c1ea8284e0af21",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\"}",
        "e54d4b6f0f196d2f8d5be06db03e6d80a7296c628ee8f4d592c1ea8284e0af21",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\",\"temperature\":2e-1}",
        "163f11b38d9c26a2f8d005a6a9093af2ce7b8e77fc1babbc2830423f7856dd52",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\",\"temperature\":1}",
        "80dbdacb8e9eb3d17bbebc3797a480cf3dced7d7b96562be7475f4ec8ba6c389",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\",\"temperature\":1e0}",
        "ea0cf024c2976b849210270aaf83014de4b67d093759b17bac7d22fda8b6f54c",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"it's\\n\\\"é\\\" ✓\\u0001\",\"role\":\"user\"}],\"model\":\"gpt-4o\",\"temperature\":1e-5,\"top_p\":1e300}",
        "070e57007bcded1a964faf35cca247f77109bcf191217700054ecc34f95dd4c4",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"logit_bias\":{\"50256\":-100},\"max_tokens\":10,\"messages\":[{\"content\":\"x\",\"role\":\"user\"}],\"model\":\"gpt-4o\",\"n\":1,\"response_format\":{\"type\":\"json_object\"},\"stop\":[\"\\n\"],\"temperature\":1e-1,\"tools\":[{\"function\":{\"name\":\"f\",\"parameters\":{\"properties\":{},\"type\":\"object\"}},\"type\":\"function\"}],\"user\":\"u-1\"}",
        "eae9bf7085d37cc306c1c2f71dc85fa8c08eb47f3b2667e86503337b51ab8e45",
    ),
    (
        "llm-cache/key/v2\ntext_completion\n{\"max_tokens\":5,\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":\"Say hi\"}",
        "c4fe6c89f152ff0b18efed4686a65ff59d01b98ac4a8d2c1a9ca5e512ed42952",
    ),
    (
        "llm-cache/key/v2\nembedding\n{\"input\":\"hello\",\"model\":\"text-embedding-3-small\"}",
        "2aef204abb0ee59360df8b3e1833c229141e3e67566e123f6eb0bdf39fdf5530",
    ),
    (
        "llm-cache/key/v2\nresponses\n{\"input\":\"hi\",\"model\":\"gpt-4o\"}",
        "b596eff46c59e6880344972012476e71a98c17d1ab316ba375afe4b4e27cda5c",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\"}",
        "myapp:e54d4b6f0f196d2f8d5be06db03e6d80a7296c628ee8f4d592c1ea8284e0af21",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\"}",
        "e54d4b6f0f196d2f8d5be06db03e6d80a7296c628ee8f4d592c1ea8284e0af21",
    ),
    (
        "llm-cache/key/v2\nchat\npartition:\"team-a\"\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\"}",
        "b2ead4db92775ff94fd363b661b4bb84ee29adcdd8c31f8f4f7685112fb183ba",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-4o\",\"temperature\":1e0}",
        "ea0cf024c2976b849210270aaf83014de4b67d093759b17bac7d22fda8b6f54c",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"guided_json\":{\"properties\":{\"a\":{\"const\":null}}},\"messages\":[{\"content\":\"hi\",\"name\":null,\"role\":\"user\"}],\"model\":\"gpt-4o\",\"options\":{\"num_ctx\":4096},\"repetition_penalty\":1.1e0}",
        "6895341b5c09c22dfb0ef59bddd7a35ddb9a41032e2aecd6e2013c617f86f2e7",
    ),
    (
        "llm-cache/key/v2\nchat\n{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"metadata\":{\"purpose\":\"eval\"},\"model\":\"gpt-4o\"}",
        "58a713070a96ad7d4d2fb2f0f2a78a1cdd513ff1ba7127b44e2467598aeb11b0",
    ),
    (
        "llm-cache/key/v2\nembedding\n{\"input\":\"hello\",\"input_type\":\"search_query\",\"model\":\"embed-v3\"}",
        "929a42a22c389d7285fdf7a39a18ccff7c2af363797b83e21b179f5ad81c7160",
    ),
    (
        "llm-cache/key/v2\nanthropic_messages\nheaders:{\"anthropic-beta\":\"tools-2024-05-16\",\"anthropic-version\":\"2023-06-01\"}\n{\"max_tokens\":64,\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"claude-x\"}",
        "6402a2b0343aaeb7640f5e6184da37707cf8455737c72c2b4cf5610d4d8283f7",
    ),
];

fn vectors() -> Vec<Value> {
    serde_json::from_str(include_str!("golden/key-vectors.json")).expect("vectors parse")
}

fn compute(v: &Value) -> (String, String) {
    let kind = CallKind::parse(v["kind"].as_str().unwrap()).unwrap();
    let forwarded: Vec<&str> = v["forwarded"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let headers: Vec<(&str, &str)> = v["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    let ctx = KeyContext {
        model_group: v["model_group"].as_str(),
        namespace: v["namespace"].as_str(),
        partition: v["partition"].as_str(),
        forwarded: &forwarded,
        headers: &headers,
        raw: &[],
    };
    let kb = KeyBuilder::new(KeyOptions::default());
    let pre = kb.preimage(kind, &v["request"], &ctx).unwrap();
    let key = kb.key(kind, &v["request"], &ctx).unwrap().to_string();

    // The same key when the request's members (all but `model`) are passed as raw JSON text,
    // as the proxy does with a large body.
    let mut parsed = v["request"].as_object().unwrap().clone();
    let texts: Vec<(String, String)> = parsed
        .iter()
        .filter(|(k, _)| k.as_str() != "model")
        // Whitespace of the client's text does not matter.
        .map(|(k, m)| (k.clone(), serde_json::to_string_pretty(m).unwrap()))
        .collect();
    parsed.retain(|k, _| k == "model");
    let raw: Vec<(&str, &str)> = texts
        .iter()
        .map(|(k, r)| (k.as_str(), r.as_str()))
        .collect();
    let split = KeyContext { raw: &raw, ..ctx };
    let parsed = Value::Object(parsed);
    assert_eq!(
        kb.preimage(kind, &parsed, &split).unwrap(),
        pre,
        "{}: raw members",
        v["name"]
    );
    (pre, key)
}

#[test]
fn golden_vectors() {
    let vs = vectors();
    if EXPECTED.is_empty() || std::env::var("PRINT_GOLDEN").is_ok() {
        for v in &vs {
            let (pre, key) = compute(v);
            println!(
                "{:?}\n    ({:?}, {:?}),",
                v["name"].as_str().unwrap(),
                pre,
                key
            );
        }
    }
    assert_eq!(
        vs.len(),
        EXPECTED.len(),
        "one expected (preimage, key) per vector"
    );
    for (v, (pre, key)) in vs.iter().zip(EXPECTED) {
        let (p, k) = compute(v);
        assert_eq!(&p, pre, "preimage of {:?}", v["name"]);
        assert_eq!(&k, key, "key of {:?}", v["name"]);
    }
}
