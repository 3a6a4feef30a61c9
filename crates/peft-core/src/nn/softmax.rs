//! Causal softmax as one autodiff node.
//!
//! `burn::tensor::activation::softmax` under autodiff is five tracked ops (max, subtract, exp,
//! sum, divide), each with its own backward, after a mask added to the scores: about ten passes
//! over a `[batch, heads, seq, seq]` tensor per attention layer and step. [`causal_softmax`] is
//! one node: its forward applies the causal mask inside the row kernel on flex (no mask tensor;
//! the masked tail of a row is neither read nor exponentiated), and its backward is
//! `dx = y ⊙ (g − Σ g ⊙ y)` from the saved output, one pass per row on flex. Other backends run
//! the same node with burn's ops (mask added, `softmax`; four ops for the backward), lazily fused
//! where the backend fuses.

// burn 0.22 deprecates ndarray in favour of flex; this build still offers it as a backend.
#![allow(deprecated)]

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::tensor::{Tensor, TensorData};

/// The two operations a backend runs for [`causal_softmax`]. Every method has a default built
/// from burn's ops; flex overrides both with single-pass f32 kernels, and autodiff wraps them
/// into one node.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait SoftmaxOps: Backend {
    /// Softmax along the last dim of `[..., q, k]` scores where query `i` sees key `j` only
    /// when `j ≤ i + k − q`; masked entries are 0.
    fn causal_softmax(scores: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_causal_softmax::<Self>(scores)
    }

    /// The input gradient of a last-dim softmax from its output `y` and the output's gradient
    /// `g`: `y ⊙ (g − Σ_last g ⊙ y)`.
    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_softmax_backward::<Self>(output, grad)
    }
}

/// The causal softmax from burn's ops: an additive `−∞` mask, then `softmax`.
fn composed_causal_softmax<B: Backend>(scores: FloatTensor<B>) -> FloatTensor<B> {
    let shape = scores.shape();
    let rank = shape.num_dims();
    let (q, k) = (shape[rank - 2], shape[rank - 1]);
    let offset = k.saturating_sub(q);
    let mut mask = vec![0f32; q * k];
    for (i, row) in mask.chunks_exact_mut(k.max(1)).enumerate() {
        for m in row.iter_mut().skip(i + 1 + offset) {
            *m = f32::NEG_INFINITY;
        }
    }
    let mut mask_shape = vec![1; rank];
    mask_shape[rank - 2] = q;
    mask_shape[rank - 1] = k;
    let device = scores.device();
    let mask = B::float_from_data(
        TensorData::new(mask, mask_shape).convert_dtype(scores.dtype()),
        &device,
    );
    B::softmax(B::float_add(scores, mask), rank - 1)
}

/// The softmax backward from burn's ops.
fn composed_softmax_backward<B: Backend>(
    output: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let last = output.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(grad.clone(), output.clone()), last);
    B::float_mul(output, B::float_sub(grad, dot))
}

#[cfg(feature = "flex")]
impl SoftmaxOps for burn::backend::Flex {
    fn causal_softmax(scores: FloatTensor<Self>) -> FloatTensor<Self> {
        if scores.dtype() == burn::tensor::DType::F32 {
            burn_flex::ops::activation::causal_softmax_f32(scores)
        } else {
            composed_causal_softmax::<Self>(scores)
        }
    }

    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let f32_dtype = burn::tensor::DType::F32;
        if output.dtype() == f32_dtype && grad.dtype() == f32_dtype {
            burn_flex::ops::activation::softmax_backward_f32(output, grad)
        } else {
            composed_softmax_backward::<Self>(output, grad)
        }
    }
}

#[cfg(feature = "ndarray")]
impl SoftmaxOps for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl SoftmaxOps for burn::backend::Cube {}

/// The softmax's backward node: the saved output is all it needs.
#[derive(Debug)]
struct CausalSoftmaxBackward;

impl<B: SoftmaxOps> Backward<B, 1> for CausalSoftmaxBackward {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = parent {
            grads.register::<B>(parent.id, B::softmax_backward(ops.state, grad));
        }
    }
}

impl<B: SoftmaxOps, C: CheckpointStrategy> SoftmaxOps for Autodiff<B, C> {
    fn causal_softmax(scores: FloatTensor<Self>) -> FloatTensor<Self> {
        match CausalSoftmaxBackward
            .prepare::<C>([scores.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::causal_softmax(scores.into_primitive());
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_softmax(scores.into_primitive())),
        }
    }

    fn softmax_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // A backward of a backward (a second derivative) is not needed by any caller here; this
        // keeps it differentiable by composing tracked ops.
        composed_softmax_backward::<Self>(output, grad)
    }
}

/// Softmax along the last dim of `[..., q, k]` attention scores under a causal mask: query `i`
/// (the last `q` of `k` positions) sees keys `0..=i + k − q`, and the masked probabilities are 0.
/// Equal to adding a `−∞` upper triangle and calling `softmax(scores, D − 1)`, as one autodiff
/// node.
///
/// # Panics
/// If `D < 2` or `q > k`.
///
/// # Shapes
/// - `scores`, output: `[..., q, k]`
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// let scores = Tensor::<2>::from_floats([[1.0, 5.0], [2.0, 2.0]], &Device::flex());
/// let probs = peft_core::nn::causal_softmax(scores);
/// probs.into_data().assert_approx_eq::<f32>(
///     &burn::tensor::TensorData::from([[1.0f32, 0.0], [0.5, 0.5]]),
///     burn::tensor::Tolerance::absolute(1e-6),
/// );
/// ```
pub fn causal_softmax<const D: usize>(scores: Tensor<D>) -> Tensor<D> {
    let dims = scores.dims();
    assert!(dims.len() >= 2, "causal_softmax: rank {D} < 2");
    let [q, k] = [dims[D - 2], dims[D - 1]];
    assert!(q <= k, "causal_softmax: {q} queries > {k} keys");
    Tensor::from_dispatch(<Dispatch as SoftmaxOps>::causal_softmax(
        scores.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, Tolerance};

    /// The reference: the mask as a tensor, burn's `softmax`, burn's autodiff.
    fn masked_softmax(scores: Tensor<4>) -> Tensor<4> {
        let [_, _, q, k] = scores.dims();
        let mut mask = vec![0f32; q * k];
        for i in 0..q {
            for j in i + 1 + (k - q)..k {
                mask[i * k + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::<4>::from_data(TensorData::new(mask, [1, 1, q, k]), &scores.device());
        softmax(scores + mask, 3)
    }

    #[test]
    fn forward_and_gradient_equal_the_masked_softmax_through_autodiff() {
        for device in crate::device::suite_devices() {
            let device = device.autodiff();
            // 70 queries: the flex kernel's row chunks (64 rows) start inside a matrix.
            for (q, k) in [(70, 70), (5, 9)] {
                let x = Tensor::<4>::random([2, 3, q, k], Distribution::Normal(0.0, 2.0), &device);
                let weight = Tensor::<4>::random([2, 3, q, k], Distribution::Default, &device);

                let ours = x.clone().detach().require_grad();
                let y = causal_softmax(ours.clone());
                let theirs = x.detach().require_grad();
                let want = masked_softmax(theirs.clone());
                y.clone()
                    .into_data()
                    .assert_approx_eq::<f32>(&want.clone().into_data(), Tolerance::absolute(1e-6));

                let g_ours = (y * weight.clone()).sum().backward();
                let g_theirs = (want * weight).sum().backward();
                let (Some(a), Some(b)) = (ours.grad(&g_ours), theirs.grad(&g_theirs)) else {
                    panic!("{device:?}: no gradient reached the scores");
                };
                a.into_data()
                    .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-6));
            }
        }
    }

    #[test]
    fn without_autodiff_it_is_the_masked_softmax() {
        for device in crate::device::suite_devices() {
            let x = Tensor::<4>::random([1, 2, 6, 6], Distribution::Default, &device);
            causal_softmax(x.clone())
                .into_data()
                .assert_approx_eq::<f32>(&masked_softmax(x).into_data(), Tolerance::absolute(1e-6));
        }
    }
}
