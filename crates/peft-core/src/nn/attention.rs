//! Causal scaled-dot-product attention as one autodiff node.
//!
//! Under autodiff, attention built from burn's ops is two products, a mask and a softmax, and
//! keeps the `[batch, heads, q, k]` probabilities for the backward: 16 MiB a layer for OPT's
//! 16 heads of 256 tokens, batch 4. [`causal_attention`] is one node that keeps only its output
//! and one log-sum-exp per query row, and recomputes the scores in its backward (as
//! FlashAttention-2 does). On flex both directions run per (batch, head) in blocks of query rows
//! whose products stop at the last key the block sees, so the masked half of the scores is
//! mostly never computed, and the heads are read and written through their strides (no copies
//! to split or merge them). Other backends run the same node with burn's ops.

// burn 0.22 deprecates ndarray in favour of flex; this build still offers it as a backend.
#![allow(deprecated)]

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::tensor::{Shape, Tensor, TensorData};

/// The operations a backend runs for [`causal_attention`]. Every method has a default built
/// from burn's ops; flex overrides them with f32 kernels, and autodiff wraps them into one node.
///
/// Shapes: `q` `[batch, heads, q_len, dim]`, `k` `[batch, heads, k_len, dim]`, `v`
/// `[batch, heads, k_len, v_dim]`, `q_len ≤ k_len`; query `i` sees keys `0..=i + k_len − q_len`.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait CausalAttentionOps: Backend {
    /// `softmax(scale · q·kᵀ + causal mask)·v`: `[batch, heads, q_len, v_dim]`.
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed_attention::<Self>(q, k, v, scale)
    }

    /// The output with what the backward needs: `(out, lse)`, `lse` `[batch, heads, q_len]`
    /// being each query row's log-sum-exp of its scaled, masked scores.
    fn causal_attention_train(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_train::<Self>(q, k, v, scale)
    }

    /// `(dq, dk, dv)` from the inputs, the output, its `lse` and the output's gradient.
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_backward::<Self>(q, k, v, out, lse, grad, scale)
    }
}

/// An additive `[1, 1, q_len, k_len]` mask: 0 where query `i` sees key `j`, `−∞` elsewhere.
fn causal_mask<B: Backend>(like: &FloatTensor<B>, q_len: usize, k_len: usize) -> FloatTensor<B> {
    let offset = k_len - q_len;
    let mut mask = vec![0f32; q_len * k_len];
    for (i, row) in mask.chunks_exact_mut(k_len.max(1)).enumerate() {
        for m in row.iter_mut().skip(i + 1 + offset) {
            *m = f32::NEG_INFINITY;
        }
    }
    B::float_from_data(
        TensorData::new(mask, [1, 1, q_len, k_len]).convert_dtype(like.dtype()),
        &like.device(),
    )
}

/// The masked scores `scale · q·kᵀ + mask` from burn's ops.
fn composed_scores<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let (q_len, k_len) = (q.shape()[2], k.shape()[2]);
    // Scaling the queries: `[q_len, dim]` elements per head instead of `[q_len, k_len]`.
    let scores = B::float_matmul(
        B::float_mul_scalar(q, scale.into()),
        B::float_swap_dims(k, 2, 3),
    );
    let mask = causal_mask::<B>(&scores, q_len, k_len);
    B::float_add(scores, mask)
}

/// The forward from burn's ops: masked scores, `softmax`, the product with `v`.
fn composed_attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    B::float_matmul(B::softmax(composed_scores::<B>(q, k, scale), 3), v)
}

/// The forward with the log-sum-exp, from burn's ops.
fn composed_attention_train<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [batch, heads, q_len, _] = q.shape().dims();
    let scores = composed_scores::<B>(q, k, scale);
    let max = B::float_max_dim(scores.clone(), 3);
    let exp = B::float_exp(B::float_sub(scores, max.clone()));
    let sum = B::float_sum_dim(exp.clone(), 3);
    let out = B::float_matmul(B::float_div(exp, sum.clone()), v);
    let lse = B::float_add(max, B::float_log(sum));
    (
        out,
        B::float_reshape(lse, Shape::from([batch, heads, q_len])),
    )
}

/// The backward from burn's ops: `p = e^(s − lse)`, `ds = p ⊙ (grad·vᵀ − Σ grad ⊙ out)`,
/// `dq = scale · ds·k`, `dk = scale · dsᵀ·q`, `dv = pᵀ·grad`.
fn composed_attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let [batch, heads, q_len, _] = q.shape().dims();
    let lse = B::float_reshape(lse, Shape::from([batch, heads, q_len, 1]));
    let scores = composed_scores::<B>(q.clone(), k.clone(), scale);
    let p = B::float_exp(B::float_sub(scores, lse));
    let dp = B::float_matmul(grad.clone(), B::float_swap_dims(v, 2, 3));
    let dot = B::float_sum_dim(B::float_mul(grad.clone(), out), 3);
    let ds = B::float_mul(p.clone(), B::float_sub(dp, dot));
    let dq = B::float_mul_scalar(B::float_matmul(ds.clone(), k), scale.into());
    let dk = B::float_mul_scalar(
        B::float_matmul(B::float_swap_dims(ds, 2, 3), q),
        scale.into(),
    );
    let dv = B::float_matmul(B::float_swap_dims(p, 2, 3), grad);
    (dq, dk, dv)
}

#[cfg(feature = "flex")]
fn all_f32(tensors: &[&FloatTensor<burn::backend::Flex>]) -> bool {
    tensors
        .iter()
        .all(|t| t.dtype() == burn::tensor::DType::F32)
}

#[cfg(feature = "flex")]
impl CausalAttentionOps for burn::backend::Flex {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        if all_f32(&[&q, &k, &v]) {
            burn_flex::ops::causal_attention::causal_attention_f32(q, k, v, scale as f32).0
        } else {
            composed_attention::<Self>(q, k, v, scale)
        }
    }

    fn causal_attention_train(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if all_f32(&[&q, &k, &v]) {
            burn_flex::ops::causal_attention::causal_attention_f32(q, k, v, scale as f32)
        } else {
            composed_attention_train::<Self>(q, k, v, scale)
        }
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if all_f32(&[&q, &k, &v, &out, &lse, &grad]) {
            burn_flex::ops::causal_attention::causal_attention_backward_f32(
                q,
                k,
                v,
                out,
                lse,
                grad,
                scale as f32,
            )
        } else {
            composed_attention_backward::<Self>(q, k, v, out, lse, grad, scale)
        }
    }
}

#[cfg(feature = "ndarray")]
impl CausalAttentionOps for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl CausalAttentionOps for burn::backend::Cube {}

/// What the attention's backward keeps: the inputs, the output and its log-sum-exp.
type AttentionState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

/// The attention's backward node.
#[derive(Debug)]
struct CausalAttentionBackward {
    scale: f64,
}

impl<B: CausalAttentionOps> Backward<B, 3> for CausalAttentionBackward {
    type State = AttentionState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [q, k, v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (qt, kt, vt, out, lse) = ops.state;
        let (dq, dk, dv) = B::causal_attention_backward(qt, kt, vt, out, lse, grad, self.scale);
        for (parent, g) in [(q, dq), (k, dk), (v, dv)] {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, g);
            }
        }
    }
}

impl<B: CausalAttentionOps, C: CheckpointStrategy> CausalAttentionOps for Autodiff<B, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        match (CausalAttentionBackward { scale })
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
                let (out, lse) = B::causal_attention_train(q.clone(), k.clone(), v.clone(), scale);
                prep.finish((q, k, v, out.clone(), lse), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as CausalAttentionOps>::causal_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                scale,
            )),
        }
    }

    // `causal_attention_train` and `causal_attention_backward` keep their composed defaults
    // here: a caller differentiating through them (a second derivative) gets tracked ops.
}

/// Causal softmax attention, `softmax(scale · q·kᵀ + mask)·v`, as one autodiff node: query `i`
/// (the last `q_len` of `k_len` positions) attends to keys `0..=i + k_len − q_len`. Equal to
/// masking the scores with `−∞` and calling `softmax` then `matmul`; the backward keeps the
/// output and a log-sum-exp per query row, not the probabilities.
///
/// # Panics
/// If the batch, head or `dim` sizes of `q`, `k`, `v` disagree, or `q_len > k_len`.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, dim]`
/// - `k`: `[batch, heads, k_len, dim]`, `v`: `[batch, heads, k_len, v_dim]`
/// - output: `[batch, heads, q_len, v_dim]`
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// let device = Device::flex();
/// let q = Tensor::<4>::from_floats([[[[1.0], [1.0]]]], &device);
/// let k = Tensor::<4>::from_floats([[[[0.0], [0.0]]]], &device);
/// let v = Tensor::<4>::from_floats([[[[2.0], [4.0]]]], &device);
/// // The first query sees the first value only; the second averages both (equal scores).
/// peft_core::nn::causal_attention(q, k, v, 1.0).into_data().assert_approx_eq::<f32>(
///     &burn::tensor::TensorData::from([[[[2.0f32], [3.0]]]]),
///     burn::tensor::Tolerance::absolute(1e-6),
/// );
/// ```
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let ([batch, heads, q_len, dim], [kb, kh, k_len, kd], [vb, vh, v_len, _]) =
        (q.dims(), k.dims(), v.dims());
    assert!(
        [kb, kh, kd] == [batch, heads, dim] && [vb, vh, v_len] == [batch, heads, k_len],
        "causal_attention: q {:?}, k {:?}, v {:?} do not match",
        q.dims(),
        k.dims(),
        v.dims()
    );
    assert!(
        q_len <= k_len,
        "causal_attention: {q_len} queries > {k_len} keys"
    );
    Tensor::from_dispatch(<Dispatch as CausalAttentionOps>::causal_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, Tolerance};

    /// The reference: burn's ops (mask, softmax, products) under burn's autodiff.
    fn ops_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
        let [_, _, q_len, _] = q.dims();
        let k_len = k.dims()[2];
        let mut mask = vec![0f32; q_len * k_len];
        for i in 0..q_len {
            for j in i + 1 + (k_len - q_len)..k_len {
                mask[i * k_len + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::<4>::from_data(TensorData::new(mask, [1, 1, q_len, k_len]), &q.device());
        softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + mask, 3).matmul(v)
    }

    #[test]
    fn output_and_gradients_equal_the_ops_through_autodiff() {
        for device in crate::device::suite_devices() {
            let device = device.autodiff();
            // 70 queries: flex's blocks of 64 rows with a partial one; 70 of 90 keys: queries
            // that are the last positions (a KV cache); a value width unlike the key width.
            for (q_len, k_len, v_dim) in [(70, 70, 8), (70, 90, 5)] {
                let (b, h, d) = (2, 3, 8);
                let normal = Distribution::Normal(0.0, 1.0);
                let q = Tensor::<4>::random([b, q_len, h, d], normal, &device).swap_dims(1, 2);
                let k = Tensor::<4>::random([b, h, k_len, d], normal, &device);
                let v = Tensor::<4>::random([b, h, k_len, v_dim], normal, &device);
                let up = Tensor::<4>::random([b, h, q_len, v_dim], normal, &device);
                let leaves = || {
                    (
                        q.clone().detach().require_grad(),
                        k.clone().detach().require_grad(),
                        v.clone().detach().require_grad(),
                    )
                };
                let (q1, k1, v1) = leaves();
                let y1 = causal_attention(q1.clone(), k1.clone(), v1.clone(), 0.3);
                let (q2, k2, v2) = leaves();
                let y2 = ops_attention(q2.clone(), k2.clone(), v2.clone(), 0.3);
                y1.clone()
                    .into_data()
                    .assert_approx_eq::<f32>(&y2.clone().into_data(), Tolerance::absolute(1e-5));
                let g1 = (y1 * up.clone()).sum().backward();
                let g2 = (y2 * up).sum().backward();
                for (ours, theirs) in [(q1, q2), (k1, k2), (v1, v2)] {
                    let (Some(a), Some(b)) = (ours.grad(&g1), theirs.grad(&g2)) else {
                        panic!("{device:?}: no gradient");
                    };
                    a.into_data()
                        .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-4));
                }
            }
        }
    }

    #[test]
    fn without_autodiff_it_is_the_masked_attention() {
        for device in crate::device::suite_devices() {
            let normal = Distribution::Normal(0.0, 1.0);
            let q = Tensor::<4>::random([1, 2, 3, 4], normal, &device);
            let k = Tensor::<4>::random([1, 2, 6, 4], normal, &device);
            let v = Tensor::<4>::random([1, 2, 6, 4], normal, &device);
            causal_attention(q.clone(), k.clone(), v.clone(), 0.5)
                .into_data()
                .assert_approx_eq::<f32>(
                    &ops_attention(q, k, v, 0.5).into_data(),
                    Tolerance::absolute(1e-5),
                );
        }
    }

    #[test]
    fn a_frozen_key_and_value_get_no_gradient_and_the_query_still_does() {
        let device = burn::tensor::Device::default().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<4>::random([1, 1, 4, 2], normal, &device).require_grad();
        let k = Tensor::<4>::random([1, 1, 4, 2], normal, &device);
        let v = Tensor::<4>::random([1, 1, 4, 2], normal, &device);
        let grads = causal_attention(q.clone(), k.clone(), v.clone(), 1.0)
            .sum()
            .backward();
        assert!(k.grad(&grads).is_none() && v.grad(&grads).is_none());
        assert!(q.grad(&grads).is_some());
    }
}
