//! `llm-cache`: an OpenAI-compatible caching proxy that reads a LiteLLM-style `config.yaml`, with
//! every backend of this build. (A third party's binary is the same line with its own factory
//! registered: see `examples/hashmap-proxy`.)

fn main() -> std::process::ExitCode {
    llm_cache_proxy::cli::run(llm_cache::builtin_registry())
}

/// The allocator of the binary (the library crates leave it to the application).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
