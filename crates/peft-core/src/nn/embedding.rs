//! An adapter-aware drop-in for burn's `Embedding`.

use burn::module::{Module, Param};
use burn::nn::EmbeddingConfig;
use burn::tensor::{Device, Int, Tensor, module::embedding};

use super::factored::registered_adapter;
use super::linear::InitFactored;

/// The adapter-aware Embedding layer.
pub type Embedding = FactoredEmbedding;

/// Looks up rows of `W` `[n_embedding, d_model]`, plus the contribution of an adapter attached to
/// `W`, computed factored (LoRA: `s·A[ids]·B`) without composing `W + ΔW`.
///
/// Same parameter name and record layout as [`burn::nn::Embedding`].
///
/// Named `FactoredEmbedding` so that injection can tell it from burn's `Embedding`; use it as
/// `peft_core::nn::Embedding`.
#[derive(Module, Debug)]
pub struct FactoredEmbedding {
    /// Weight `[n_embedding, d_model]`.
    pub weight: Param<Tensor<2>>,
}

impl InitFactored for EmbeddingConfig {
    type Layer = Embedding;
    fn init_factored(&self, device: &Device) -> Embedding {
        Embedding::from(self.init(device))
    }
}

impl From<burn::nn::Embedding> for Embedding {
    fn from(e: burn::nn::Embedding) -> Self {
        Self { weight: e.weight }
    }
}

impl FactoredEmbedding {
    /// Looks up embeddings.
    ///
    /// # Shapes
    /// - input: `[batch, seq]`
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, input: Tensor<2, Int>) -> Tensor<3> {
        let Some(adapter) = registered_adapter(&self.weight) else {
            return embedding(self.weight.val(), input);
        };
        let weight = self.weight.base();
        let base = embedding(weight.clone(), input.clone());
        adapter.embedding_output(input, &weight, base)
    }
}
