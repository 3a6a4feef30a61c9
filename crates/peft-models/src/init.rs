//! Random weights as transformers' `_init_weights` draws them for OPT and Llama: every Linear
//! and Embedding weight from `normal(0, std)` (`init_std` / `initializer_range`, 0.02 by
//! default), biases zero. The padding row transformers zeroes in the token embedding is drawn
//! like the others.
//!
//! The scale matters beyond the looks of a fresh model: burn's default `Embedding` draws from
//! `normal(0, 1)`, which makes a tied head's logits so spread that most softmax probabilities,
//! and so most of the loss gradient, are subnormal floats, which multiply many times slower.

use burn::nn::Initializer;
use burn::tensor::Device;
use peft_core::nn::{Embedding, EmbeddingConfig, InitFactored, Linear, LinearConfig};

/// transformers' default `init_std` (OPT) and `initializer_range` (Llama).
pub fn default_std() -> f64 {
    0.02
}

/// A `d_in → d_out` Linear with `normal(0, std)` weights and a zero bias (if any).
pub fn linear(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init_factored(device);
    layer.bias = layer.bias.map(|_| Initializer::Zeros.init([d_out], device));
    layer
}

/// A `num × dim` Embedding with `normal(0, std)` weights.
pub fn embedding(num: usize, dim: usize, std: f64, device: &Device) -> Embedding {
    EmbeddingConfig::new(num, dim)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init_factored(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_have_the_requested_spread_and_biases_are_zero() {
        let device = Device::default();
        let layer = linear(256, 128, true, 0.02, &device);
        let w = layer.weight.val();
        let std = w.clone().var(0).mean().sqrt().into_scalar::<f32>();
        assert!((std - 0.02).abs() < 0.002, "std {std}");
        let bias = layer.bias.map(|b| b.val().abs().max().into_scalar::<f32>());
        assert_eq!(bias, Some(0.0));
        let table = embedding(300, 64, 0.02, &device).weight.val();
        let std = table.var(0).mean().sqrt().into_scalar::<f32>();
        assert!((std - 0.02).abs() < 0.002, "std {std}");
    }

    #[test]
    fn opt_and_llama_draw_as_transformers() {
        let device = Device::default();
        let spread = |w: burn::tensor::Tensor<2>| w.var(0).mean().sqrt().into_scalar::<f32>();
        let mut opt = crate::opt::OptConfig::opt_125m();
        (
            opt.vocab_size,
            opt.hidden_size,
            opt.ffn_dim,
            opt.num_hidden_layers,
        ) = (500, 64, 128, 1);
        opt.num_attention_heads = 4;
        opt.word_embed_proj_dim = Some(64);
        let model = opt.init(&device).unwrap();
        let decoder = &model.model.decoder;
        assert!((spread(decoder.embed_tokens.weight.val()) - 0.02).abs() < 0.002);
        let fc1 = &decoder.layers[0].fc1;
        assert!((spread(fc1.weight.val()) - 0.02).abs() < 0.002);
        let bias = fc1
            .bias
            .as_ref()
            .map(|b| b.val().abs().max().into_scalar::<f32>());
        assert_eq!(bias, Some(0.0));
        let llama: crate::llama::LlamaConfig = serde_json::from_str(
            r#"{"vocab_size": 500, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 1, "num_attention_heads": 4, "initializer_range": 0.05}"#,
        )
        .unwrap();
        let model = llama.init(&device).unwrap();
        assert!((spread(model.model.embed_tokens.weight.val()) - 0.05).abs() < 0.005);
    }
}
