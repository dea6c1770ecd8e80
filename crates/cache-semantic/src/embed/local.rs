//! [`LocalEmbedder`]: model2vec static embeddings in-process (potion-base-2M bundled).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use cache_core::semantic::Embedder;
use cache_core::{CacheError, Result};
use model2vec_rs::model::StaticModel;

const NAME: &str = "local-embedder";

static POTION_TOKENIZER: &[u8] = include_bytes!("../../assets/potion-base-2M/tokenizer.json");
static POTION_MODEL: &[u8] = include_bytes!("../../assets/potion-base-2M/model.safetensors");
static POTION_CONFIG: &[u8] = include_bytes!("../../assets/potion-base-2M/config.json");

/// Texts longer than this many tokens are truncated (model2vec's default).
const MAX_TOKENS: usize = 512;
/// Batches above this size are embedded on the blocking pool instead of inline.
const INLINE_BATCH: usize = 32;

/// A model2vec static-embedding model running in-process: tokenise, look up one vector per
/// token, mean-pool, normalise. No network, no GPU, no files at run time for the bundled model.
///
/// [`LocalEmbedder::potion_base_2m`] is `minishlab/potion-base-2M` (64 dimensions, English,
/// MIT), compiled into the binary (8 MB) and loaded once per process.
#[derive(Clone)]
pub struct LocalEmbedder {
    model: Arc<StaticModel>,
    name: String,
    dims: usize,
}

impl fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("model", &self.name)
            .field("dims", &self.dims)
            .finish()
    }
}

impl LocalEmbedder {
    /// Model name of the bundled model.
    pub const POTION_BASE_2M: &'static str = "minishlab/potion-base-2M";

    /// Names that select the bundled model in configuration (`*_semantic_cache_embedding_model`).
    pub const ALIASES: &'static [&'static str] = &[
        "minishlab/potion-base-2M",
        "potion-base-2M",
        "local",
        "local/potion-base-2M",
    ];

    /// The bundled potion-base-2M (parsed on first use, then shared by every caller).
    ///
    /// # Errors
    /// Never in practice (the bundled files are fixed); kept fallible because parsing is.
    pub fn potion_base_2m() -> Result<Self> {
        static MODEL: OnceLock<std::result::Result<Arc<StaticModel>, String>> = OnceLock::new();
        let model = MODEL
            .get_or_init(|| {
                StaticModel::from_bytes(POTION_TOKENIZER, POTION_MODEL, POTION_CONFIG, None)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| CacheError::Config(format!("bundled potion-base-2M: {e}")))?;
        Ok(Self::from_model(model, Self::POTION_BASE_2M))
    }

    /// A model2vec model from a folder holding `tokenizer.json`, `model.safetensors` and
    /// `config.json` (any model2vec/potion model, e.g. potion-base-8M or a multilingual one).
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the folder when a file is missing or unreadable.
    pub fn from_folder(path: &Path) -> Result<Self> {
        let read = |f: &str| {
            std::fs::read(path.join(f)).map_err(|e| {
                CacheError::Config(format!(
                    "local embedding model {}: cannot read {f}: {e}",
                    path.display()
                ))
            })
        };
        let model = StaticModel::from_bytes(
            read("tokenizer.json")?,
            read("model.safetensors")?,
            read("config.json")?,
            None,
        )
        .map_err(|e| {
            CacheError::Config(format!("local embedding model {}: {e:#}", path.display()))
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Self::from_model(Arc::new(model), &format!("local/{name}")))
    }

    fn from_model(model: Arc<StaticModel>, name: &str) -> Self {
        let dims = model.dim();
        LocalEmbedder {
            model,
            name: name.to_owned(),
            dims,
        }
    }

    /// Embeds synchronously (a few microseconds per short text).
    pub fn embed_sync(&self, texts: &[String]) -> Vec<Vec<f32>> {
        self.model
            .encode_with_args(texts, Some(MAX_TOKENS), texts.len().max(1))
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> Option<usize> {
        Some(self.dims)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.len() <= INLINE_BATCH {
            return Ok(self.embed_sync(texts));
        }
        let this = self.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || this.embed_sync(&texts))
            .await
            .map_err(|e| CacheError::backend(NAME, "embed", false, e))
    }
}
