//! Layer normalisation as one autodiff node.
//!
//! Written with tensor ops, `(x − mean) / sqrt(var + eps) · weight + bias` is about nine tracked
//! ops under autodiff, each keeping its inputs and each with its own backward. [`layer_norm`] is
//! one node: the forward also returns the normalised input `x̂` and each row's `1/σ`, and the
//! backward computes the input gradient from them, and the weight and bias gradients only when
//! they are trained. On flex both are single
//! f32 passes over the rows; other backends compose burn's ops (fused lazily where the backend
//! fuses).

// burn 0.22 deprecates ndarray in favour of flex; this build still offers it as a backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Tensor};

/// What a backend runs for [`layer_norm`]. Every method has a default built from burn's ops;
/// flex overrides the forward and backward with single-pass f32 kernels, and autodiff wraps
/// them into one node.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait LayerNormOps: Backend {
    /// The normalised output `x̂ ⊙ weight + bias` over the last dim of `x`; by default burn's
    /// own `layer_norm` (a fused kernel on flex), which keeps nothing for a backward.
    fn layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::layer_norm(x, weight, Some(bias), epsilon)
    }

    /// The output with what its backward needs: `(y, x̂, rstd)`, `rstd = 1 / sqrt(var + eps)`
    /// shaped like `x` with a last dim of 1.
    fn layer_norm_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_layer_norm_train::<Self>(x, weight, bias, epsilon)
    }

    /// `(dx, Some(dweight), Some(dbias))` from the saved `x̂` and `rstd`, the weight and the
    /// output's gradient; `(dx, None, None)` when `param_grads` is not set (frozen
    /// parameters).
    fn layer_norm_backward(
        xhat: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        param_grads: bool,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    ) {
        composed_layer_norm_backward::<Self>(xhat, rstd, weight, grad, param_grads)
    }
}

/// `[d]` viewed as `[1, …, 1, d]` for a rank-`rank` tensor (the norms' weight and bias).
pub(super) fn broadcast_row<B: Backend>(v: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let d = v.shape().num_elements();
    let mut dims = vec![1; rank];
    dims[rank - 1] = d;
    B::float_reshape(v, Shape::from(dims))
}

/// The forward from burn's ops (biased variance, as `torch.nn.LayerNorm`).
fn composed_layer_norm_train<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let rank = x.shape().num_dims();
    let last = rank - 1;
    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x, mean);
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, epsilon.into())));
    let xhat = B::float_mul(centered, rstd.clone());
    let y = B::float_add(
        B::float_mul(xhat.clone(), broadcast_row::<B>(weight, rank)),
        broadcast_row::<B>(bias, rank),
    );
    (y, xhat, rstd)
}

/// The backward from burn's ops: `dx = rstd ⊙ (g⊙w − mean(g⊙w) − x̂ ⊙ mean(g⊙w⊙x̂))`, and
/// when `param_grads` is set `dweight = Σ_rows g ⊙ x̂`, `dbias = Σ_rows g`.
fn composed_layer_norm_backward<B: Backend>(
    xhat: FloatTensor<B>,
    rstd: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    param_grads: bool,
) -> (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
) {
    let shape = xhat.shape();
    let rank = shape.num_dims();
    let last = rank - 1;
    let d = shape[last];
    let rows = shape.num_elements() / d.max(1);
    let flat = |t: FloatTensor<B>| B::float_reshape(t, Shape::from([rows, d]));
    let dweight = param_grads.then(|| {
        B::float_reshape(
            B::float_sum_dim(flat(B::float_mul(grad.clone(), xhat.clone())), 0),
            Shape::from([d]),
        )
    });
    let dbias = param_grads
        .then(|| B::float_reshape(B::float_sum_dim(flat(grad.clone()), 0), Shape::from([d])));
    let gw = B::float_mul(grad, broadcast_row::<B>(weight, rank));
    let mean_gw = B::float_mean_dim(gw.clone(), last);
    let mean_gwx = B::float_mean_dim(B::float_mul(gw.clone(), xhat.clone()), last);
    let dx = B::float_mul(
        B::float_sub(B::float_sub(gw, mean_gw), B::float_mul(xhat, mean_gwx)),
        rstd,
    );
    (dx, dweight, dbias)
}

#[cfg(feature = "flex")]
impl LayerNormOps for burn::backend::Flex {
    fn layer_norm_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let f32_dtype = burn::tensor::DType::F32;
        if [&x, &weight, &bias].iter().all(|t| t.dtype() == f32_dtype) {
            burn_flex::ops::activation::layer_norm_train_f32(x, weight, bias, epsilon)
        } else {
            composed_layer_norm_train::<Self>(x, weight, bias, epsilon)
        }
    }

    fn layer_norm_backward(
        xhat: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        param_grads: bool,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    ) {
        let f32_dtype = burn::tensor::DType::F32;
        if [&xhat, &rstd, &weight, &grad]
            .iter()
            .all(|t| t.dtype() == f32_dtype)
        {
            let (dx, params) = burn_flex::ops::activation::layer_norm_backward_f32(
                xhat,
                rstd,
                weight,
                grad,
                param_grads,
            );
            let (dweight, dbias) = params.unzip();
            (dx, dweight, dbias)
        } else {
            composed_layer_norm_backward::<Self>(xhat, rstd, weight, grad, param_grads)
        }
    }
}

#[cfg(feature = "ndarray")]
impl LayerNormOps for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl LayerNormOps for burn::backend::Cube {}

/// The layer norm's backward node: `x̂`, `rstd` and the weight are all it needs.
#[derive(Debug)]
struct LayerNormBackward;

impl<B: LayerNormOps> Backward<B, 3> for LayerNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x, weight, bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (xhat, rstd, w) = ops.state;
        // A frozen weight and bias (a LoRA step's) cost no sums over the rows.
        let param_grads = weight.is_some() || bias.is_some();
        let (dx, dweight, dbias) = B::layer_norm_backward(xhat, rstd, w, grad, param_grads);
        for (parent, g) in [(x, Some(dx)), (weight, dweight), (bias, dbias)] {
            if let (Some(parent), Some(g)) = (parent, g) {
                grads.register::<B>(parent.id, g);
            }
        }
    }
}

impl<B: LayerNormOps, C: CheckpointStrategy> LayerNormOps for Autodiff<B, C> {
    fn layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let w = weight.into_primitive();
                let (y, xhat, rstd) = B::layer_norm_train(
                    x.into_primitive(),
                    w.clone(),
                    bias.into_primitive(),
                    epsilon,
                );
                prep.finish((xhat, rstd, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as LayerNormOps>::layer_norm(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                epsilon,
            )),
        }
    }

    // `layer_norm_train` and `layer_norm_backward` keep their composed defaults here: a caller
    // differentiating through them (a second derivative) gets tracked ops.
}

/// `torch.nn.LayerNorm` over the last dim as one autodiff node:
/// `(x − mean) / sqrt(var + eps) ⊙ weight + bias`, with the biased variance.
///
/// # Shapes
/// - `x`, output: `[..., d]`
/// - `weight`, `bias`: `[d]`
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// let device = Device::flex();
/// let x = Tensor::<2>::from_floats([[1.0, 3.0], [5.0, 1.0]], &device);
/// let y = peft_core::nn::layer_norm(x, Tensor::ones([2], &device), Tensor::zeros([2], &device), 0.0);
/// y.into_data().assert_approx_eq::<f32>(
///     &burn::tensor::TensorData::from([[-1.0f32, 1.0], [1.0, -1.0]]),
///     burn::tensor::Tolerance::absolute(1e-6),
/// );
/// ```
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<1>,
    bias: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as LayerNormOps>::layer_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        epsilon,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// The reference: tensor ops under burn's autodiff.
    fn ops_layer_norm(x: Tensor<3>, weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Tensor<3> {
        let mean = x.clone().mean_dim(2);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(2);
        let normed = centered / var.add_scalar(eps).sqrt();
        normed * weight.unsqueeze() + bias.unsqueeze()
    }

    #[test]
    fn output_and_gradients_equal_the_ops_through_autodiff() {
        for device in crate::device::suite_devices() {
            let device = device.autodiff();
            // 70 rows: the flex kernels' row tasks (32 rows) and their weight-gradient sums.
            let x = Tensor::<3>::random([2, 35, 40], Distribution::Normal(0.5, 2.0), &device);
            let w = Tensor::<1>::random([40], Distribution::Normal(1.0, 0.3), &device);
            let b = Tensor::<1>::random([40], Distribution::Default, &device);
            let up = Tensor::<3>::random([2, 35, 40], Distribution::Default, &device);
            let leaves = || {
                (
                    x.clone().detach().require_grad(),
                    w.clone().detach().require_grad(),
                    b.clone().detach().require_grad(),
                )
            };
            let (x1, w1, b1) = leaves();
            let y1 = layer_norm(x1.clone(), w1.clone(), b1.clone(), 1e-5);
            let (x2, w2, b2) = leaves();
            let y2 = ops_layer_norm(x2.clone(), w2.clone(), b2.clone(), 1e-5);
            let tol = Tolerance::absolute(1e-5);
            y1.clone()
                .into_data()
                .assert_approx_eq::<f32>(&y2.clone().into_data(), tol);
            let g1 = (y1 * up.clone()).sum().backward();
            let g2 = (y2 * up).sum().backward();
            let grad = |t: &Tensor<3>, g| t.grad(g).map(|t| t.into_data());
            let (Some(a), Some(b)) = (grad(&x1, &g1), grad(&x2, &g2)) else {
                panic!("{device:?}: no input gradient");
            };
            a.assert_approx_eq::<f32>(&b, Tolerance::absolute(1e-4));
            for (ours, theirs) in [(w1, w2), (b1, b2)] {
                let (Some(a), Some(b)) = (ours.grad(&g1), theirs.grad(&g2)) else {
                    panic!("{device:?}: no parameter gradient");
                };
                a.into_data()
                    .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-4));
            }
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_still_does() {
        let device = Device::default().autodiff();
        let x = Tensor::<3>::random([1, 3, 8], Distribution::Default, &device).require_grad();
        let w = Tensor::<1>::ones([8], &device);
        let b = Tensor::<1>::zeros([8], &device);
        let grads = layer_norm(x.clone(), w.clone(), b, 1e-5).sum().backward();
        assert!(w.grad(&grads).is_none());
        // Σ_j ∂y_j/∂x is 0 for a layer norm with unit weight: the gradient of the sum vanishes.
        let g = x.grad(&grads).expect("input gradient");
        let max: f32 = g.abs().max().into_scalar();
        assert!(max < 1e-5, "{max}");
    }

    #[test]
    fn frozen_parameters_leave_the_input_gradient_as_it_is() {
        let params = [Distribution::Normal(1.0, 0.3), Distribution::Default];
        super::super::frozen_norm_check::frozen_params_leave_the_input_gradient(&params, |x, p| {
            layer_norm(x, p[0].clone(), p[1].clone(), 1e-5)
        });
    }
}
