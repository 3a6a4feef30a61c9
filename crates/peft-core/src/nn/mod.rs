//! Adapter-aware layers: drop-in replacements for burn's `Linear` and `Embedding` that run any
//! registered adapter factored; and the decoders' causal attention, causal softmax, layer norm and
//! RMS norm as single autodiff nodes (backend extensions with fused flex kernels).

mod attention;
mod embedding;
mod factored;
#[cfg(test)]
mod frozen_norm_check;
mod layer_norm;
mod linear;
mod rms_norm;
mod softmax;

pub use attention::{CausalAttentionOps, causal_attention};
pub use burn::nn::EmbeddingConfig;
pub use embedding::{Embedding, FactoredEmbedding};
pub use factored::{FactoredAdapter, factored_adapter, register_factored};
pub use layer_norm::{LayerNormOps, layer_norm};
pub use linear::{FactoredLinear, InitFactored, Linear, LinearConfig};
pub use rms_norm::{RmsNormOps, rms_norm};
pub use softmax::{SoftmaxOps, causal_softmax};
