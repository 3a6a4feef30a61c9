//! Causal scaled-dot-product attention shared by the decoders.

use burn::tensor::Tensor;
use peft_core::nn;

/// Softmax attention of every position over itself and the positions before it.
///
/// Key/value heads are shared by `heads / kv_heads` query heads each (grouped-query attention;
/// repeated to one per query head). `scale` multiplies the scores. One autodiff node
/// ([`peft_core::nn::causal_attention`]): the backward keeps a log-sum-exp per query row, not
/// the `[batch, heads, seq, seq]` probabilities.
///
/// # Shapes
/// - `q`: `[batch, heads, seq, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, kv_len, head_dim]` (`kv_len ≥ seq`: cached positions first)
/// - output: `[batch, heads, seq, head_dim]`
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let heads = q.dims()[1];
    let [batch, kv_heads, kv_len, head_dim] = k.dims();
    let (k, v) = if kv_heads == heads {
        (k, v)
    } else {
        let rep = heads / kv_heads;
        let repeat = |t: Tensor<4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([batch, kv_heads, rep, kv_len, head_dim])
                .reshape([batch, heads, kv_len, head_dim])
        };
        (repeat(k), repeat(v))
    };
    nn::causal_attention(q, k, v, scale)
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
