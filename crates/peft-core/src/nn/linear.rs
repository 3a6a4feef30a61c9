//! An adapter-aware drop-in for burn's `Linear`.

use burn::module::{Module, Param};
use burn::nn::LinearConfig as BurnLinearConfig;
use burn::tensor::{Device, Tensor, module::linear};

use super::factored::factored_adapter;

/// The adapter-aware Linear layer.
pub type Linear = FactoredLinear;

/// Configuration of a [`Linear`] layer: exactly burn's [`burn::nn::LinearConfig`].
pub type LinearConfig = BurnLinearConfig;

/// Applies `y = x·W + b`, plus the contribution of an adapter attached to `W`, computed
/// factored (LoRA: `s·(dropout(x)·A)·B`) without composing `W + ΔW`.
///
/// Same parameter names and record layout as [`burn::nn::Linear`] (`weight` `[d_input, d_output]`,
/// `bias` `[d_output]`), so checkpoints load unchanged. Without an adapter it computes exactly
/// what burn's layer does. An adapter type that was not registered with
/// [`register_factored`](super::register_factored) (e.g. burn's own `apply_lora`) falls back to
/// the dense effective weight.
///
/// The struct is named `FactoredLinear` so that injection can tell it from burn's `Linear` (the
/// module type is all a model traversal reveals); use it as `peft_core::nn::Linear`.
#[derive(Module, Debug)]
pub struct FactoredLinear {
    /// Weight `[d_input, d_output]`.
    pub weight: Param<Tensor<2>>,
    /// Bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
}

/// Builds adapter-aware layers from burn's configs.
pub trait InitFactored {
    /// The layer built.
    type Layer;
    /// Initialises the adapter-aware layer on `device`.
    fn init_factored(&self, device: &Device) -> Self::Layer;
}

impl InitFactored for LinearConfig {
    type Layer = Linear;
    fn init_factored(&self, device: &Device) -> Linear {
        Linear::from(self.init(device))
    }
}

impl From<burn::nn::Linear> for Linear {
    fn from(l: burn::nn::Linear) -> Self {
        Self {
            weight: l.weight,
            bias: l.bias,
        }
    }
}

impl FactoredLinear {
    /// Applies the layer.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let dims = input.dims();
        let tokens = dims[..D - 1].iter().product::<usize>();
        let Some(adapter) = factored_adapter(&self.weight, tokens) else {
            return linear(input, self.weight.val(), bias);
        };
        let weight = self.weight.base();
        let [d_in, d_out] = weight.dims();
        let x = input.reshape([tokens, d_in]);
        let base = x.clone().matmul(weight.clone());
        let y = adapter.linear_output(x, &weight, base);
        let y = match bias {
            Some(b) => y + b.unsqueeze(),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }

    /// The weight `W` `[d_input, d_output]` when, for an input of `tokens` rows, the layer
    /// computes exactly the product `x·W`: no bias and no adapter that runs factored (an adapter
    /// composed into the weight is part of `W`, with its autodiff graph). `None` otherwise.
    ///
    /// For callers that run the product themselves, such as a training step that computes a
    /// language-model head's logits and their gradients outside autodiff.
    pub fn plain_weight(&self, tokens: usize) -> Option<Tensor<2>> {
        if self.bias.is_some() || factored_adapter(&self.weight, tokens).is_some() {
            return None;
        }
        Some(self.weight.val())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn plain_weight_is_the_product_the_layer_computes() {
        let device = Device::default();
        let x = Tensor::<2>::random([3, 4], Distribution::Default, &device);
        let plain = LinearConfig::new(4, 5)
            .with_bias(false)
            .init_factored(&device);
        let w = plain.plain_weight(3).expect("no bias, no adapter");
        let diff = (plain.forward(x.clone()) - x.clone().matmul(w))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(diff, 0.0);
        let biased = LinearConfig::new(4, 5).init_factored(&device);
        assert!(biased.plain_weight(3).is_none(), "a bias is not x·W");
    }
}
