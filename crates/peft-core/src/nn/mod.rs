//! Adapter-aware layers: drop-in replacements for burn's `Linear` and `Embedding` that run any
//! registered adapter factored.

mod embedding;
mod factored;
mod linear;

pub use burn::nn::EmbeddingConfig;
pub use embedding::{Embedding, FactoredEmbedding};
pub use factored::{FactoredAdapter, factored_adapter, register_factored};
pub use linear::{FactoredLinear, InitFactored, Linear, LinearConfig};
