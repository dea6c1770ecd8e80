//! Wrapping an existing LLM client call with llm-cache, in a few lines.
//!
//! The client here is raw `reqwest` with typed serde request/response structs; with
//! async-openai it is the same: pass its request type (it implements `Serialize`) and return its
//! response type (`Serialize + Deserialize`) from the closure.
//!
//! ```sh
//! OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-... \
//!   cargo run -p llm-cache --example openai_client -- "What is a cache?"
//! ```

use llm_cache::{CacheConfig, CacheControl, CallKind};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    temperature: f32,
}

#[derive(Serialize, Deserialize, Debug)]
struct Message {
    role: String,
    content: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
struct ChatResponse {
    id: String,
    choices: Vec<Choice>,
}

#[derive(Serialize, Deserialize, Debug)]
struct Choice {
    message: Message,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Say hello.".into());
    // ring: the one TLS crypto provider of llm-cache's builds (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    // 1. A cache, from LiteLLM-style cache_params (in-memory here; `type: redis`, `disk`, ...
    //    with the matching cargo feature).
    let cache = CacheConfig::from_yaml("type: local\nttl: 3600\nnamespace: example\n")?
        .build()
        .await?;

    let request = ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![Message {
            role: "user".into(),
            content: Some(prompt),
        }],
        temperature: 0.0,
    };
    for attempt in 1..=2 {
        // 2. Wrap the call: a hit returns the stored response; a miss calls the closure and
        //    stores its result in the background.
        let reply = cache
            .get_or_fetch(CallKind::Chat, &request, &CacheControl::none(), || async {
                http.post(format!("{base}/chat/completions"))
                    .bearer_auth(&key)
                    .json(&request)
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<ChatResponse>()
                    .await
            })
            .await?;
        println!(
            "attempt {attempt}: {} [{}]",
            reply.value.choices[0]
                .message
                .content
                .as_deref()
                .unwrap_or(""),
            reply.status.header_value("llm-cache")
        );
        // Writes are off the response path; wait for them before the repeat.
        cache.flush(std::time::Duration::from_secs(1)).await?;
    }
    Ok(())
}
