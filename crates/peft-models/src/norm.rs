//! Normalisation layers with PyTorch's parameter names (`weight`, `bias`).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// `torch.nn.LayerNorm` over the last dimension: `(x − mean) / sqrt(var + eps) · weight + bias`,
/// with the biased variance.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale `[d]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `[d]`.
    pub bias: Param<Tensor<1>>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Ones and zeros, as PyTorch initialises it.
    pub fn new(d: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
            eps,
        }
    }

    /// Normalises.
    ///
    /// # Shapes
    /// - input and output: `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        peft_core::nn::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
    }
}

/// Llama's RMSNorm: `x / sqrt(mean(x²) + eps) · weight`, one autodiff node
/// ([`peft_core::nn::rms_norm`]).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Scale `[d]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// Ones, as transformers initialises it.
    pub fn new(d: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps,
        }
    }

    /// Normalises.
    ///
    /// # Shapes
    /// - input and output: `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        peft_core::nn::rms_norm(x, self.weight.val(), self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn layer_norm_normalises_rows() {
        let device = Device::default();
        let ln = LayerNorm::new(4, 1e-5, &device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2., 3., 4.], [1, 4]), &device);
        let y = ln.forward(x).into_data().try_into_vec::<f32>().unwrap();
        let expected = [-1.3416, -0.4472, 0.4472, 1.3416];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-3, "{y:?}");
        }
    }

    #[test]
    fn rms_norm_scales_to_unit_rms() {
        let device = Device::default();
        let n = RmsNorm::new(2, 0.0, &device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![3f32, 4.], [1, 2]), &device);
        let y = n.forward(x).into_data().try_into_vec::<f32>().unwrap();
        let rms = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / rms).abs() < 1e-6 && (y[1] - 4.0 / rms).abs() < 1e-6);
    }
}
