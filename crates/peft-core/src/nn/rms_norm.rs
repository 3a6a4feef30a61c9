//! RMS normalisation (Llama's `RMSNorm`) as one autodiff node.
//!
//! Written with tensor ops, `x / sqrt(mean(x²) + eps) ⊙ weight` is about six tracked ops under
//! autodiff, each keeping its inputs and each with its own backward. [`rms_norm`] is one node: it
//! keeps its input and each row's `1/rms`, and its backward computes the input gradient, and the
//! weight's only when the weight is trained. On flex both are single f32 passes over the rows;
//! other backends compose burn's ops (fused lazily where the backend fuses).

// burn 0.22 deprecates ndarray in favour of flex; this build still offers it as a backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Tensor};

use super::layer_norm::broadcast_row;

/// What a backend runs for [`rms_norm`]. Every method has a default built from burn's ops;
/// flex overrides them with single-pass f32 kernels, and autodiff wraps them into one node.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait RmsNormOps: Backend {
    /// The normalised output `x ⊙ rstd ⊙ weight` over the last dim of `x`.
    fn rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::rms_norm_train(x, weight, epsilon).0
    }

    /// The output with what its backward needs besides the input: `(y, rstd)`,
    /// `rstd = 1 / sqrt(mean(x²) + eps)` shaped like `x` with a last dim of 1.
    fn rms_norm_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_rms_norm_train::<Self>(x, weight, epsilon)
    }

    /// `(dx, dweight)` from the input, the saved `rstd`, the weight and the output's gradient;
    /// `dweight` only when `weight_grad` is set.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weight_grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        composed_rms_norm_backward::<Self>(x, rstd, weight, grad, weight_grad)
    }
}

/// The forward from burn's ops, in transformers' order: `(x · rstd) · weight`.
fn composed_rms_norm_train<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let rank = x.shape().num_dims();
    let ms = B::float_mean_dim(B::float_mul(x.clone(), x.clone()), rank - 1);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(ms, epsilon.into())));
    let y = B::float_mul(
        B::float_mul(x, rstd.clone()),
        broadcast_row::<B>(weight, rank),
    );
    (y, rstd)
}

/// The backward from burn's ops: with `x̂ = x ⊙ rstd`,
/// `dx = rstd ⊙ (g⊙w − x̂ ⊙ mean(g⊙w⊙x̂))`, `dweight = Σ_rows g ⊙ x̂`.
fn composed_rms_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    rstd: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    weight_grad: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let shape = x.shape();
    let rank = shape.num_dims();
    let last = rank - 1;
    let d = shape[last];
    let rows = shape.num_elements() / d.max(1);
    let xhat = B::float_mul(x, rstd.clone());
    let dweight = weight_grad.then(|| {
        let gx = B::float_reshape(
            B::float_mul(grad.clone(), xhat.clone()),
            Shape::from([rows, d]),
        );
        B::float_reshape(B::float_sum_dim(gx, 0), Shape::from([d]))
    });
    let gw = B::float_mul(grad, broadcast_row::<B>(weight, rank));
    let mean_gwx = B::float_mean_dim(B::float_mul(gw.clone(), xhat.clone()), last);
    let dx = B::float_mul(B::float_sub(gw, B::float_mul(xhat, mean_gwx)), rstd);
    (dx, dweight)
}

#[cfg(feature = "flex")]
impl RmsNormOps for burn::backend::Flex {
    fn rms_norm_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let f32_dtype = burn::tensor::DType::F32;
        if x.dtype() == f32_dtype && weight.dtype() == f32_dtype {
            burn_flex::ops::activation::rms_norm_train_f32(x, weight, epsilon)
        } else {
            composed_rms_norm_train::<Self>(x, weight, epsilon)
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weight_grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let f32_dtype = burn::tensor::DType::F32;
        if [&x, &rstd, &weight, &grad]
            .iter()
            .all(|t| t.dtype() == f32_dtype)
        {
            burn_flex::ops::activation::rms_norm_backward_f32(x, rstd, weight, grad, weight_grad)
        } else {
            composed_rms_norm_backward::<Self>(x, rstd, weight, grad, weight_grad)
        }
    }
}

#[cfg(feature = "ndarray")]
impl RmsNormOps for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl RmsNormOps for burn::backend::Cube {}

/// The RMS norm's backward node: the input, `rstd` and the weight are all it needs.
#[derive(Debug)]
struct RmsNormBackward;

impl<B: RmsNormOps> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x, weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (xs, rstd, w) = ops.state;
        let (dx, dweight) = B::rms_norm_backward(xs, rstd, w, grad, weight.is_some());
        if let Some(x) = x {
            grads.register::<B>(x.id, dx);
        }
        if let (Some(weight), Some(dweight)) = (weight, dweight) {
            grads.register::<B>(weight.id, dweight);
        }
    }
}

impl<B: RmsNormOps, C: CheckpointStrategy> RmsNormOps for Autodiff<B, C> {
    fn rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match RmsNormBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xs, w) = (x.into_primitive(), weight.into_primitive());
                let (y, rstd) = B::rms_norm_train(xs.clone(), w.clone(), epsilon);
                prep.finish((xs, rstd, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as RmsNormOps>::rms_norm(
                x.into_primitive(),
                weight.into_primitive(),
                epsilon,
            )),
        }
    }

    // `rms_norm_train` and `rms_norm_backward` keep their composed defaults here: a caller
    // differentiating through them (a second derivative) gets tracked ops.
}

/// Llama's `RMSNorm` over the last dim as one autodiff node:
/// `x / sqrt(mean(x²) + eps) ⊙ weight`.
///
/// # Shapes
/// - `x`, output: `[..., d]`
/// - `weight`: `[d]`
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// let device = Device::flex();
/// let x = Tensor::<2>::from_floats([[3.0, 4.0]], &device);
/// let y = peft_core::nn::rms_norm(x, Tensor::from_floats([1.0, 2.0], &device), 0.0);
/// let rms = 12.5f32.sqrt();
/// y.into_data().assert_approx_eq::<f32>(
///     &burn::tensor::TensorData::from([[3.0 / rms, 8.0 / rms]]),
///     burn::tensor::Tolerance::absolute(1e-6),
/// );
/// ```
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, epsilon: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as RmsNormOps>::rms_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        epsilon,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// The reference: Llama's norm in tensor ops under burn's autodiff.
    fn ops_rms_norm(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
        let ms = x.clone().powi_scalar(2).mean_dim(2);
        x / ms.add_scalar(eps).sqrt() * weight.unsqueeze()
    }

    #[test]
    fn output_and_gradients_equal_the_ops_through_autodiff() {
        for device in crate::device::suite_devices() {
            let device = device.autodiff();
            // 70 rows: the flex kernels' row tasks (32 rows) and their weight-gradient sums.
            let x = Tensor::<3>::random([2, 35, 40], Distribution::Normal(0.5, 2.0), &device);
            let w = Tensor::<1>::random([40], Distribution::Normal(1.0, 0.3), &device);
            let up = Tensor::<3>::random([2, 35, 40], Distribution::Default, &device);
            let leaves = || {
                (
                    x.clone().detach().require_grad(),
                    w.clone().detach().require_grad(),
                )
            };
            let (x1, w1) = leaves();
            let y1 = rms_norm(x1.clone(), w1.clone(), 1e-6);
            let (x2, w2) = leaves();
            let y2 = ops_rms_norm(x2.clone(), w2.clone(), 1e-6);
            y1.clone()
                .into_data()
                .assert_approx_eq::<f32>(&y2.clone().into_data(), Tolerance::absolute(1e-5));
            let g1 = (y1 * up.clone()).sum().backward();
            let g2 = (y2 * up).sum().backward();
            let (Some(a), Some(b)) = (x1.grad(&g1), x2.grad(&g2)) else {
                panic!("{device:?}: no input gradient");
            };
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-4));
            let (Some(a), Some(b)) = (w1.grad(&g1), w2.grad(&g2)) else {
                panic!("{device:?}: no weight gradient");
            };
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-4));
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_gets_the_same_one() {
        let params = [Distribution::Normal(1.0, 0.3)];
        super::super::frozen_norm_check::frozen_params_leave_the_input_gradient(&params, |x, p| {
            rms_norm(x, p[0].clone(), 1e-6)
        });
    }
}
