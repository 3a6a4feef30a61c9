//! DoRA (Weight-Decomposed Low-Rank Adaptation, Liu et al. 2024, arXiv 2402.09353) as PEFT 0.21.2
//! computes it (`use_dora: true`, `peft/tuners/lora/dora.py` and `variants.py`).
//!
//! A magnitude vector `m` (one value per output column in burn layout; `lora_magnitude_vector`
//! `[out]` in files) rescales the LoRA-updated weight column by column:
//!
//! `W' = m · (W + s·A·B) / ‖W + s·A·B‖`, the norm taken over `d_in` (PEFT: per output row of the
//! `[out, in]` weight) and detached from the graph, as PEFT does (DoRA paper §4.3).
//!
//! The factored forward never composes `W + s·A·B`: the norm comes from
//! `‖W‖² + 2s·⟨AᵀW, B⟩ + s²·⟨B, AᵀA·B⟩` per column, and the output from the layer's own `x·W`.

use burn::tensor::Tensor;

/// Column norms of `W + s·A·B` (burn layout: `W` `[d_in, d_out]`, `A` `[d_in, r]`, `B`
/// `[r, d_out]`), `[d_out]`, detached, without building the `[d_in, d_out]` sum: the factored
/// forward's norm. Its relative error grows as `(‖W_c‖ + ‖s·A·B_c‖)² / ‖W_c + s·A·B_c‖²` times
/// f32's rounding, which matters only for a column that nearly cancels.
///
/// Also serves Embedding weights `[num, dim]` with `A` `[num, r]`, `B` `[r, dim]`: PEFT takes
/// their norm per `dim` too.
pub fn column_norm(weight: &Tensor<2>, a: Tensor<2>, b: Tensor<2>, scaling: f64) -> Tensor<1> {
    let w = weight.clone().detach();
    let (a, b) = (a.detach(), b.detach());
    let d_out = w.dims()[1];
    // ‖W_c‖²: [1, d_out]
    let ww = w.clone().powi_scalar(2).sum_dim(0);
    // 2s·Σ_k (AᵀW)[k, c]·B[k, c]
    let cross = a
        .clone()
        .transpose()
        .matmul(w)
        .mul(b.clone())
        .sum_dim(0)
        .mul_scalar(2.0 * scaling);
    // s²·Σ_k B[k, c]·(AᵀA·B)[k, c]
    let gram = a.clone().transpose().matmul(a);
    let bb = gram
        .matmul(b.clone())
        .mul(b)
        .sum_dim(0)
        .mul_scalar(scaling * scaling);
    (ww + cross + bb).clamp_min(0.0).sqrt().reshape([d_out])
}

/// Column norms of `W + s·A·B`, `[d_out]`, detached, composing the sum as PEFT does: for the
/// one-off norms (the magnitude's initial value, the norm merge keeps for unmerge), where the
/// sum costs one temporary and [`column_norm`]'s expansion would lose precision on a column
/// that nearly cancels (its terms are each far larger than their sum).
pub fn composed_column_norm(
    weight: &Tensor<2>,
    a: Tensor<2>,
    b: Tensor<2>,
    scaling: f64,
) -> Tensor<1> {
    let sum = weight.clone().detach() + a.detach().matmul(b.detach()).mul_scalar(scaling);
    dense_column_norm(&sum)
}

/// Column norms of a dense weight `[d_in, d_out]`, `[d_out]` (the weight-space path and merge).
pub fn dense_column_norm(weight: &Tensor<2>) -> Tensor<1> {
    let d_out = weight.dims()[1];
    weight
        .clone()
        .powi_scalar(2)
        .sum_dim(0)
        .sqrt()
        .reshape([d_out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn factored_norm_equals_the_dense_norm() {
        let device = Device::default();
        let w = Tensor::<2>::random([24, 10], Distribution::Default, &device);
        let a = Tensor::<2>::random([24, 4], Distribution::Default, &device);
        let b = Tensor::<2>::random([4, 10], Distribution::Default, &device);
        let s = 0.7;
        let dense = dense_column_norm(&(w.clone() + a.clone().matmul(b.clone()).mul_scalar(s)));
        column_norm(&w, a, b, s)
            .into_data()
            .assert_approx_eq::<f32>(&dense.into_data(), Tolerance::relative(1e-5));
    }
}
