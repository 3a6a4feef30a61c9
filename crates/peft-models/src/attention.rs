//! Causal scaled-dot-product attention shared by the decoders.

use burn::tensor::Tensor;
use peft_core::nn::causal_softmax;

/// Softmax attention of every position over itself and the positions before it.
///
/// Key/value heads are shared by `heads / kv_heads` query heads each (grouped-query attention).
/// `scale` multiplies the queries before the product (as OPT does), which equals scaling the
/// scores: `[seq, head_dim]` elements per head instead of `[seq, seq]` (a quarter of them for
/// 256 tokens of 64-wide heads).
///
/// # Shapes
/// - `q`: `[batch, heads, seq, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, seq, head_dim]`
/// - output: `[batch, heads, seq, head_dim]`
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let [batch, heads, seq, head_dim] = q.dims();
    let kv_heads = k.dims()[1];
    let (k, v) = if kv_heads == heads {
        (k, v)
    } else {
        let rep = heads / kv_heads;
        let repeat = |t: Tensor<4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([batch, kv_heads, rep, seq, head_dim])
                .reshape([batch, heads, seq, head_dim])
        };
        (repeat(k), repeat(v))
    };
    let scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
    causal_softmax(scores).matmul(v)
}

/// `[batch, seq, heads·head_dim]` → `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize, head_dim: usize) -> Tensor<4> {
    let [batch, seq, _] = x.dims();
    x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` → `[batch, seq, heads·head_dim]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}
