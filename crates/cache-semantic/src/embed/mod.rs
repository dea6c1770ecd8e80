//! Embedders: turn text into vectors ([`cache_core::semantic::Embedder`]).
//!
//! * `LocalEmbedder` (feature `local-model`): potion-base-2M (model2vec static embeddings, 64
//!   dimensions), compiled into the binary; fully offline, microseconds per text. The default
//!   when the feature is on.
//! * `BertEmbedder` (feature `bert`): a sentence-transformers BERT model (all-MiniLM-L6-v2,
//!   384 dimensions) in-process with candle, loaded from a folder.
//! * [`HttpEmbedder`]: any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Azure OpenAI,
//!   vLLM, Ollama, TEI, LiteLLM, a proxy `model_list` entry), float or base64 responses.
//!
//! Vectors are L2-normalised by the semantic layer before they are stored or searched, so
//! cosine similarity is a dot product everywhere.

#[cfg(feature = "bert")]
mod bert;
mod http;
#[cfg(feature = "local-model")]
mod local;

#[cfg(feature = "bert")]
pub use bert::BertEmbedder;
pub use http::{EncodingFormat, HttpEmbedder, HttpEmbedderConfig};
#[cfg(feature = "local-model")]
pub use local::LocalEmbedder;

/// Scales `v` to unit length in place; returns `false` for a zero or non-finite vector (which
/// is unusable for cosine similarity).
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return false;
    }
    let inv = (1.0 / norm) as f32;
    for x in v.iter_mut() {
        *x *= inv;
    }
    true
}

/// Dot product (cosine similarity of unit vectors) over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // Eight independent accumulators over exact chunks: no bounds checks in the loop, so the
    // compiler vectorises it (without fast-math, which Rust does not allow).
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// Cosine similarity of two vectors of any length (not necessarily normalised), clamped to
/// [0, 1] as the semantic layer reports it (negative cosine = unrelated = 0).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        ab += f64::from(*x) * f64::from(*y);
        aa += f64::from(*x) * f64::from(*x);
        bb += f64::from(*y) * f64::from(*y);
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ((ab / (aa.sqrt() * bb.sqrt())) as f32).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_dot() {
        let mut v = vec![3.0, 4.0, 0.0, 0.0, 0.0];
        assert!(normalize(&mut v));
        assert!((dot(&v, &v) - 1.0).abs() < 1e-6);
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
        assert!((v[0] - 0.6).abs() < 1e-6);
        let mut z = vec![0.0; 3];
        assert!(!normalize(&mut z));
        let mut nan = vec![f32::NAN, 1.0];
        assert!(!normalize(&mut nan));
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[-1.0, 0.0]), 0.0);
    }
}
