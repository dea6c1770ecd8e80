//! `hashmap-proxy`: the whole llm-cache command line (`serve`, `ping`, `check-config`, `key`)
//! with one more backend, `type: hashmap`, from a crate outside llm-cache.
//!
//! ```sh
//! hashmap-proxy serve --config config.yaml   # cache_params: {type: hashmap, hashmap_max_entries: 1000}
//! ```

fn main() -> std::process::ExitCode {
    let registry = llm_cache::builtin_registry().with(hashmap_backend::HashMapFactory);
    llm_cache_proxy::cli::run(registry)
}
