//! Activation function operations for the Flex backend.
//!
//! Each activation is implemented as a single-pass unary operation,
//! replacing the default multi-op compositions from Burn's trait defaults.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::Scalar;
use burn_backend::ops::{ActivationOps, FloatTensorOps};
use burn_backend::tensor::FloatTensor;
use burn_backend::{DType, TensorMetadata};
use burn_std::{Bytes, bf16, f16};
#[cfg(not(feature = "std"))]
#[allow(unused_imports)]
use num_traits::Float;
use num_traits::ToPrimitive;

use crate::ops::binary::binary_op;
use crate::ops::unary::unary_op;
use crate::{Flex, FlexTensor, Layout};

impl ActivationOps<Flex> for Flex {
    fn relu(tensor: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // `max` returns the non-NaN operand, which would map NaN to the bound.
        // Testing `is_nan` first lets NaN propagate, as PyTorch does. `!(x <= 0.0)` is
        // equivalent and compiles to the same code, but trips
        // `clippy::neg_cmp_op_on_partial_ord`.
        unary_op(
            tensor,
            |x: f32| if x.is_nan() || x > 0.0 { x } else { 0.0 },
            |x: f64| if x.is_nan() || x > 0.0 { x } else { 0.0 },
        )
    }

    fn relu_backward(output: FloatTensor<Flex>, grad: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // Zero the gradient where the output was zero, but keep it for a NaN output:
        // the trait default masks with `float_lower_equal_elem(output, 0)`, which is
        // false for NaN.
        binary_op(
            output,
            grad,
            |out: f32, g| if out.is_nan() || out > 0.0 { g } else { 0.0 },
            |out: f64, g| if out.is_nan() || out > 0.0 { g } else { 0.0 },
            None,
        )
    }

    fn leaky_relu(tensor: FloatTensor<Flex>, negative_slope: Scalar) -> FloatTensor<Flex> {
        let ns32 = negative_slope.to_f32().unwrap();
        let ns64 = negative_slope.to_f64().unwrap();
        unary_op(
            tensor,
            move |x: f32| if x >= 0.0 { x } else { ns32 * x },
            move |x: f64| if x >= 0.0 { x } else { ns64 * x },
        )
    }

    fn prelu(tensor: FloatTensor<Flex>, alpha: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // x if x >= 0, alpha * x otherwise
        binary_op(
            tensor,
            alpha,
            |x: f32, a| if x >= 0.0 { x } else { a * x },
            |x: f64, a| if x >= 0.0 { x } else { a * x },
            None,
        )
    }

    fn gelu(tensor: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // 0.5 * x * (1 + erf(x / sqrt(2)))
        use crate::ops::unary::{erf_f32, erf_f64};
        let sqrt2_f32: f32 = core::f32::consts::SQRT_2;
        let sqrt2_f64: f64 = core::f64::consts::SQRT_2;
        unary_op(
            tensor,
            move |x: f32| 0.5 * x * (1.0 + erf_f32(x / sqrt2_f32)),
            move |x: f64| 0.5 * x * (1.0 + erf_f64(x / sqrt2_f64)),
        )
    }

    fn gelu_backward(x: FloatTensor<Flex>, grad: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // d/dx[gelu(x)] = 0.5 * (1 + erf(x/sqrt(2))) + x * (1/sqrt(2*pi)) * exp(-x^2/2)
        use crate::ops::unary::{erf_f32, erf_f64};
        let sqrt2_f32: f32 = core::f32::consts::SQRT_2;
        let sqrt2_f64: f64 = core::f64::consts::SQRT_2;
        let inv_sqrt_2pi_f32: f32 = 1.0 / (2.0 * core::f32::consts::PI).sqrt();
        let inv_sqrt_2pi_f64: f64 = 1.0 / (2.0 * core::f64::consts::PI).sqrt();
        binary_op(
            x,
            grad,
            move |x: f32, g| {
                let cdf = 0.5 * (1.0 + erf_f32(x / sqrt2_f32));
                let pdf = inv_sqrt_2pi_f32 * (-0.5 * x * x).exp();
                g * (cdf + x * pdf)
            },
            move |x: f64, g| {
                let cdf = 0.5 * (1.0 + erf_f64(x / sqrt2_f64));
                let pdf = inv_sqrt_2pi_f64 * (-0.5 * x * x).exp();
                g * (cdf + x * pdf)
            },
            None,
        )
    }

    fn sigmoid(tensor: FloatTensor<Flex>) -> FloatTensor<Flex> {
        unary_op(tensor, sigmoid_f32, sigmoid_f64)
    }

    fn sigmoid_backward(output: FloatTensor<Flex>, grad: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // grad * output * (1 - output)
        binary_op(
            output,
            grad,
            |s: f32, g| g * s * (1.0 - s),
            |s: f64, g| g * s * (1.0 - s),
            None,
        )
    }

    fn hard_sigmoid(tensor: FloatTensor<Flex>, alpha: Scalar, beta: Scalar) -> FloatTensor<Flex> {
        let alpha32 = alpha.to_f32().unwrap();
        let beta32 = beta.to_f32().unwrap();
        let alpha64 = alpha.to_f64().unwrap();
        let beta64 = beta.to_f64().unwrap();
        unary_op(
            tensor,
            move |x: f32| (alpha32 * x + beta32).clamp(0.0, 1.0),
            move |x: f64| (alpha64 * x + beta64).clamp(0.0, 1.0),
        )
    }

    fn log_sigmoid(tensor: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // Numerically stable: -softplus(-x) = -log(1 + exp(-x))
        // For x >= 0: -log(1 + exp(-x))  (standard form, exp(-x) is small)
        // For x < 0: x - log(1 + exp(x))  (avoids exp of large positive)
        unary_op(
            tensor,
            |x: f32| {
                if x >= 0.0 {
                    -((-x).exp().ln_1p())
                } else {
                    x - x.exp().ln_1p()
                }
            },
            |x: f64| {
                if x >= 0.0 {
                    -((-x).exp().ln_1p())
                } else {
                    x - x.exp().ln_1p()
                }
            },
        )
    }

    fn log_sigmoid_backward(x: FloatTensor<Flex>, grad: FloatTensor<Flex>) -> FloatTensor<Flex> {
        // d/dx[log_sigmoid(x)] = sigmoid(-x) * (-1) * (-1) = 1 - sigmoid(x) = sigmoid(-x)
        // So: grad * sigmoid(-x)
        binary_op(
            x,
            grad,
            |x: f32, g| g * sigmoid_f32(-x),
            |x: f64, g| g * sigmoid_f64(-x),
            None,
        )
    }

    fn softmax(tensor: FloatTensor<Flex>, dim: usize) -> FloatTensor<Flex> {
        softmax(tensor, dim)
    }
}

#[inline]
fn sigmoid_f32(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[inline]
fn sigmoid_f64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

// ============================================================================
// Fused softmax
// ============================================================================
//
// Backs the `ActivationOps::softmax` hook, replacing the default 5-op
// decomposition (`max_dim`/`sub`/`exp`/`sum_dim`/`div`).

/// Fused softmax along `dim`.
///
/// Three-pass row-wise algorithm (max, exp+sum, normalize) keeping each row
/// cache-hot. Rows are processed in parallel via rayon. For axes other than
/// the last, the tensor is permuted to put `dim` last, the fused kernel runs,
/// and the result is permuted back (both permutes are metadata-only; the
/// fused kernel's internal `to_contiguous` materializes the permuted layout
/// once).
///
/// # Panics
///
/// * If `dim` is out of range for `input`.
/// * If `input`'s dtype is not one of `f32`/`f64`/`f16`/`bf16`.
pub fn softmax(tensor: FloatTensor<Flex>, dim: usize) -> FloatTensor<Flex> {
    let rank = tensor.shape().num_dims();
    assert!(
        dim < rank,
        "softmax dim {} out of range for rank {}",
        dim,
        rank
    );

    if dim != rank - 1 {
        let swapped = Flex::float_swap_dims(tensor, dim, rank - 1);
        let normed = softmax_last(swapped);
        return Flex::float_swap_dims(normed, dim, rank - 1);
    }

    softmax_last(tensor)
}

fn softmax_last(tensor: FloatTensor<Flex>) -> FloatTensor<Flex> {
    let tensor = tensor.to_contiguous();
    match tensor.dtype() {
        DType::F32 => softmax_last_f32(tensor),
        DType::F64 => softmax_last_f64(tensor),
        DType::F16 => softmax_last_f16(tensor),
        DType::BF16 => softmax_last_bf16(tensor),
        dtype => panic!("softmax: unsupported dtype {:?}", dtype),
    }
}

fn softmax_last_f32(tensor: FlexTensor) -> FlexTensor {
    let shape = tensor.layout().shape().clone();
    let last = *shape.last().expect("softmax: empty shape");
    if last == 0 {
        return tensor;
    }
    let input: &[f32] = tensor.storage();
    let n = input.len();

    // Zero-initialize the output. The previous implementation used
    // `Vec::with_capacity` + `spare_capacity_mut` + a raw-pointer cast to
    // `&mut [f32]` to skip the memset, but forming a `&mut [f32]` over
    // uninitialized memory violates Rust's validity invariant (references
    // must point to initialized values of the correct type) even if every
    // element is written before it is read. The sound zero-memset
    // alternative would require threading `&mut [MaybeUninit<f32>]` through
    // the row kernel, which does not compose with macerator's `#[with_simd]`
    // signature. The memset is a streaming write on a bandwidth-bound
    // kernel, so the overhead is small (~10% at the largest bench shape)
    // and the fused path remains well ahead of decomposed and candle.
    let mut output: Vec<f32> = vec![0.0; n];
    let out_slice = output.as_mut_slice();

    // Row-parallel via rayon: one macerator dispatch per chunk of rows,
    // amortized over all rows in the chunk.
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        const ROWS_PER_TASK: usize = 64;
        let chunk_elems = ROWS_PER_TASK * last;
        out_slice
            .par_chunks_mut(chunk_elems)
            .zip(input.par_chunks(chunk_elems))
            .for_each(|(o, i)| softmax_rows_f32(i, o, last));
    }
    #[cfg(not(feature = "rayon"))]
    {
        softmax_rows_f32(input, out_slice, last);
    }

    FlexTensor::new(
        Bytes::from_elems(output),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// Row sweep for f32 softmax. With the `simd` feature, delegates to the
/// `#[macerator::with_simd]` SIMD kernel (one dispatch per chunk of rows,
/// amortized over all rows in the chunk). Without `simd`, uses a scalar
/// row kernel.
#[inline]
fn softmax_rows_f32(input: &[f32], output: &mut [f32], row_len: usize) {
    // Release-mode invariant checks. These run once per chunk of rows
    // (dozens of times per call, not per-element), so the overhead is
    // unmeasurable against the kernel work. A debug-only check would
    // silently pass a short final chunk to the row kernel on release
    // builds if a future refactor broke the row alignment at the call
    // site, yielding wrong softmax output with no panic.
    assert_eq!(input.len(), output.len());
    assert_eq!(input.len() % row_len, 0);
    #[cfg(feature = "simd")]
    softmax_rows_f32_simd(input, output, row_len);
    #[cfg(not(feature = "simd"))]
    {
        for (in_row, out_row) in input.chunks(row_len).zip(output.chunks_mut(row_len)) {
            softmax_row_f32_scalar(in_row, out_row);
        }
    }
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn softmax_rows_f32_simd<S: macerator::Simd>(input: &[f32], output: &mut [f32], row_len: usize) {
    debug_assert_eq!(input.len(), output.len());
    debug_assert_eq!(input.len() % row_len, 0);
    for (in_row, out_row) in input.chunks(row_len).zip(output.chunks_mut(row_len)) {
        softmax_row_f32_simd::<S>(in_row, out_row);
    }
}

/// Scalar fallback row kernel for f32 softmax when the `simd` feature is
/// disabled. Uses the same 3-pass algorithm as the SIMD path; LLVM
/// autovectorizes the max-reduce and normalize loops on most targets.
#[cfg(not(feature = "simd"))]
#[inline]
fn softmax_row_f32_scalar(input: &[f32], output: &mut [f32]) {
    let mut max_val = f32::NEG_INFINITY;
    for &x in input {
        if x > max_val {
            max_val = x;
        }
    }
    let mut sum = 0.0f32;
    for (i, &x) in input.iter().enumerate() {
        let e = (x - max_val).exp();
        output[i] = e;
        sum += e;
    }
    let inv = 1.0f32 / sum;
    for x in output.iter_mut() {
        *x *= inv;
    }
}

/// Inner row kernel for a single softmax row. `#[inline(always)]` so it
/// inlines into `softmax_rows_f32_simd`'s loop body for each monomorphized S,
/// avoiding a per-row call boundary.
#[cfg(feature = "simd")]
#[inline(always)]
fn softmax_row_f32_simd<S: macerator::Simd>(input: &[f32], output: &mut [f32]) {
    use macerator::{Scalar, vload_unaligned, vstore_unaligned};
    let lanes = <f32 as Scalar>::lanes::<S>();
    let len = input.len();
    let simd_len = len / lanes * lanes;

    // Pass 1: row max for numerical stability.
    // SIMD max-reduction across the row, scalar tail.
    let (mut max_val, tail_start) = if simd_len >= lanes {
        let mut max_vec = unsafe { vload_unaligned::<S, _>(input.as_ptr()) };
        let mut j = lanes;
        while j < simd_len {
            let v = unsafe { vload_unaligned::<S, _>(input.as_ptr().add(j)) };
            max_vec = max_vec.max(v);
            j += lanes;
        }
        (max_vec.reduce_max(), simd_len)
    } else {
        (f32::NEG_INFINITY, 0)
    };
    for &x in &input[tail_start..] {
        if x > max_val {
            max_val = x;
        }
    }

    // Pass 2: compute exp(x - max), store in output, accumulate sum.
    // Scalar exp (no SIMD exp in macerator). This pass is the one that
    // actually does memory reads + writes on the whole row, so scalar
    // here still lands us at memory bandwidth.
    // `exp_f32` vectorises (libm's `exp` does not), and the sum runs on partial sums.
    let sum = crate::simd::exp::exp_shifted_sum_f32(input, output, max_val);

    // Pass 3: normalize.
    // SIMD splat + multiply, scalar tail.
    let inv = 1.0f32 / sum;
    let inv_vec = inv.splat::<S>();
    let mut i = 0;
    while i < simd_len {
        unsafe {
            let v = vload_unaligned::<S, _>(output.as_ptr().add(i));
            vstore_unaligned::<S, _>(output.as_mut_ptr().add(i), v * inv_vec);
        }
        i += lanes;
    }
    for x in &mut output[i..] {
        *x *= inv;
    }
}

// ============================================================================
// Causal softmax and the softmax backward (f32)
// ============================================================================
//
// Autodiff decomposes `softmax` into five tracked ops and backpropagates through each
// (about ten passes over the scores, plus the mask added before it). These two kernels let an
// autodiff wrapper run the softmax as one node: the forward with the causal mask applied in the
// row kernel (no mask tensor, and the masked tail of each row is neither read nor exponentiated),
// and the backward `dx = y ⊙ (g − Σ g ⊙ y)` in one pass per row.

/// Rows handed to one rayon task by the row-parallel kernels below.
const SOFTMAX_ROWS_PER_TASK: usize = 64;

/// Causal softmax of f32 scores `[..., q, k]` along the last dim: row `i` of each `[q, k]`
/// matrix is the softmax of its first `i + 1 + k − q` entries (key `j` is seen by query `i` when
/// `j ≤ i + k − q`, the queries being the last `q` of `k` positions) and 0 after them.
///
/// # Panics
///
/// * If the tensor is not f32, has fewer than two dims, or has `q > k`.
pub fn causal_softmax_f32(tensor: FlexTensor) -> FlexTensor {
    assert_eq!(tensor.dtype(), DType::F32, "causal_softmax_f32: not f32");
    let tensor = tensor.to_contiguous();
    let shape = tensor.layout().shape().clone();
    let rank = shape.num_dims();
    assert!(rank >= 2, "causal_softmax_f32: rank {rank} < 2");
    let (q, k) = (shape[rank - 2], shape[rank - 1]);
    assert!(q <= k, "causal_softmax_f32: {q} queries > {k} keys");
    let input: &[f32] = tensor
        .as_slice()
        .expect("causal_softmax_f32: contiguous after to_contiguous");
    // Zeroed: the masked tail of each row is never written.
    let mut output: Vec<f32> = vec![0.0; input.len()];
    if q == 0 {
        return FlexTensor::new(
            Bytes::from_elems(output),
            Layout::contiguous(shape),
            DType::F32,
        );
    }

    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        let chunk_elems = SOFTMAX_ROWS_PER_TASK * k;
        output
            .par_chunks_mut(chunk_elems)
            .zip(input.par_chunks(chunk_elems))
            .enumerate()
            .for_each(|(t, (o, i))| causal_softmax_rows_f32(i, o, k, q, t * SOFTMAX_ROWS_PER_TASK));
    }
    #[cfg(not(feature = "rayon"))]
    causal_softmax_rows_f32(input, &mut output, k, q, 0);

    FlexTensor::new(
        Bytes::from_elems(output),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// Rows `first_row..` (counted over the whole tensor) of a causal softmax.
#[inline]
fn causal_softmax_rows_f32(
    input: &[f32],
    output: &mut [f32],
    row_len: usize,
    rows_per_matrix: usize,
    first_row: usize,
) {
    assert_eq!(input.len(), output.len());
    assert_eq!(input.len() % row_len, 0);
    #[cfg(feature = "simd")]
    causal_softmax_rows_f32_simd(input, output, row_len, rows_per_matrix, first_row);
    #[cfg(not(feature = "simd"))]
    for (r, (i, o)) in input
        .chunks_exact(row_len)
        .zip(output.chunks_exact_mut(row_len))
        .enumerate()
    {
        let seen = (first_row + r) % rows_per_matrix + 1 + row_len - rows_per_matrix;
        softmax_row_f32_scalar(&i[..seen], &mut o[..seen]);
    }
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn causal_softmax_rows_f32_simd<S: macerator::Simd>(
    input: &[f32],
    output: &mut [f32],
    row_len: usize,
    rows_per_matrix: usize,
    first_row: usize,
) {
    for (r, (i, o)) in input
        .chunks_exact(row_len)
        .zip(output.chunks_exact_mut(row_len))
        .enumerate()
    {
        let seen = (first_row + r) % rows_per_matrix + 1 + row_len - rows_per_matrix;
        softmax_row_f32_simd::<S>(&i[..seen], &mut o[..seen]);
    }
}

/// The gradient of a softmax along the last dim from its f32 output `y` and the gradient `g` of
/// that output: `dx = y ⊙ (g − Σ_last g ⊙ y)`, row by row. Written into `g`'s buffer when the
/// gradient is its only owner.
///
/// # Panics
///
/// * If either tensor is not f32 or their shapes differ.
pub fn softmax_backward_f32(output: FlexTensor, grad: FlexTensor) -> FlexTensor {
    assert_eq!(
        output.dtype(),
        DType::F32,
        "softmax_backward_f32: output not f32"
    );
    assert_eq!(
        grad.dtype(),
        DType::F32,
        "softmax_backward_f32: gradient not f32"
    );
    let shape = output.layout().shape().clone();
    assert_eq!(
        &shape,
        grad.layout().shape(),
        "softmax_backward_f32: output and gradient shapes differ"
    );
    let y = output.to_contiguous();
    let y: &[f32] = y.as_slice().expect("contiguous after to_contiguous");
    let mut dx = owned_contiguous_f32(grad);
    let last = *dx
        .layout()
        .shape()
        .last()
        .expect("softmax_backward_f32: rank 0");
    if last == 0 {
        return dx;
    }
    let dx_slice: &mut [f32] = dx.storage_mut();

    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        let chunk_elems = SOFTMAX_ROWS_PER_TASK * last;
        dx_slice
            .par_chunks_mut(chunk_elems)
            .zip(y.par_chunks(chunk_elems))
            .for_each(|(g, y)| softmax_backward_rows_f32(y, g, last));
    }
    #[cfg(not(feature = "rayon"))]
    softmax_backward_rows_f32(y, dx_slice, last);

    dx
}

/// `tensor` as a contiguous f32 tensor that owns its whole buffer, so that a kernel can write
/// its result into it: the tensor itself when it already is one, else a copy.
pub(crate) fn owned_contiguous_f32(tensor: FlexTensor) -> FlexTensor {
    let tensor = tensor.into_contiguous();
    let n = tensor.layout().num_elements();
    if tensor.is_unique()
        && tensor.layout().contiguous_offsets() == Some((0, n))
        && tensor.bytes().len() == n * size_of::<f32>()
    {
        return tensor;
    }
    let copy = tensor.as_slice::<f32>().expect("contiguous").to_vec();
    FlexTensor::new(
        Bytes::from_elems(copy),
        Layout::contiguous(tensor.layout().shape().clone()),
        DType::F32,
    )
}

#[inline]
fn softmax_backward_rows_f32(y: &[f32], g: &mut [f32], row_len: usize) {
    assert_eq!(y.len(), g.len());
    assert_eq!(y.len() % row_len, 0);
    #[cfg(feature = "simd")]
    softmax_backward_rows_f32_simd(y, g, row_len);
    #[cfg(not(feature = "simd"))]
    for (y, g) in y.chunks_exact(row_len).zip(g.chunks_exact_mut(row_len)) {
        softmax_backward_row_f32(y, g);
    }
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn softmax_backward_rows_f32_simd<S: macerator::Simd>(y: &[f32], g: &mut [f32], row_len: usize) {
    for (y, g) in y.chunks_exact(row_len).zip(g.chunks_exact_mut(row_len)) {
        softmax_backward_row_f32(y, g);
    }
}

/// One row of the softmax backward, in place on the gradient. The dot product runs on sixteen
/// partial sums so that it vectorises (inlined into each SIMD level's row loop).
#[inline(always)]
fn softmax_backward_row_f32(y: &[f32], g: &mut [f32]) {
    let mut acc = [0.0f32; 16];
    let mut yc = y.chunks_exact(16);
    let mut gc = g.chunks_exact(16);
    for (y, g) in (&mut yc).zip(&mut gc) {
        for ((a, &y), &g) in acc.iter_mut().zip(y).zip(g) {
            *a += y * g;
        }
    }
    let tail: f32 = yc
        .remainder()
        .iter()
        .zip(gc.remainder())
        .map(|(&y, &g)| y * g)
        .sum();
    let dot = acc.iter().sum::<f32>() + tail;
    for (g, &y) in g.iter_mut().zip(y) {
        *g = y * (*g - dot);
    }
}

// ============================================================================
// Layer norm for training (f32): the forward keeps what its backward needs
// ============================================================================
//
// Autodiff runs a layer norm as about nine tracked ops (mean, subtract, square, mean, add,
// sqrt, divide, scale, shift) and backpropagates through each. These two kernels let an autodiff
// wrapper run it as one node: the forward also returns the normalised input `x̂` and each row's
// `1/σ`, and the backward computes the input, weight and bias gradients in one pass per row.

/// Rows handed to one rayon task by the layer-norm kernels below.
const LAYER_NORM_ROWS_PER_TASK: usize = 32;

/// The f32 layer norm over the last dim for training: `y = x̂ ⊙ weight + bias` with
/// `x̂ = (x − mean) / sqrt(var + eps)` (biased variance), returned with `x̂` (the shape of `x`)
/// and `rstd = 1 / sqrt(var + eps)` (the shape of `x` with a last dim of 1).
///
/// # Panics
///
/// * If a tensor is not f32, or `weight` / `bias` are not `[d]` for `x` `[..., d]`.
pub fn layer_norm_train_f32(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    epsilon: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    for t in [&x, &weight, &bias] {
        assert_eq!(t.dtype(), DType::F32, "layer_norm_train_f32: not f32");
    }
    let shape = x.layout().shape().clone();
    let d = *shape.last().expect("layer_norm_train_f32: rank 0");
    for (name, t) in [("weight", &weight), ("bias", &bias)] {
        assert_eq!(
            t.layout().shape().to_vec(),
            [d],
            "layer_norm_train_f32: {name} is not [{d}]"
        );
    }
    let x = x.to_contiguous();
    let (weight, bias) = (weight.to_contiguous(), bias.to_contiguous());
    let x_data: &[f32] = x.as_slice().expect("contiguous");
    let w: &[f32] = weight.as_slice().expect("contiguous");
    let b: &[f32] = bias.as_slice().expect("contiguous");
    let n = x_data.len();
    let rows = if d == 0 { 0 } else { n / d };
    let mut y = vec![0.0f32; n];
    let mut xhat = vec![0.0f32; n];
    let mut rstd = vec![0.0f32; rows];
    let eps = epsilon as f32;
    if d > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let chunk = LAYER_NORM_ROWS_PER_TASK * d;
            y.par_chunks_mut(chunk)
                .zip(xhat.par_chunks_mut(chunk))
                .zip(rstd.par_chunks_mut(LAYER_NORM_ROWS_PER_TASK))
                .zip(x_data.par_chunks(chunk))
                .for_each(|(((y, xh), r), x)| layer_norm_train_rows_f32(x, w, b, eps, y, xh, r));
        }
        #[cfg(not(feature = "rayon"))]
        layer_norm_train_rows_f32(x_data, w, b, eps, &mut y, &mut xhat, &mut rstd);
    }
    let mut rstd_shape = shape.clone();
    let last = rstd_shape.num_dims() - 1;
    rstd_shape[last] = 1;
    let tensor =
        |v: Vec<f32>, s| FlexTensor::new(Bytes::from_elems(v), Layout::contiguous(s), DType::F32);
    (
        tensor(y, shape.clone()),
        tensor(xhat, shape),
        tensor(rstd, rstd_shape),
    )
}

#[inline]
fn layer_norm_train_rows_f32(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let d = w.len();
    assert_eq!(x.len(), y.len());
    assert_eq!(x.len(), xhat.len());
    assert_eq!(x.len(), rstd.len() * d);
    assert_eq!(b.len(), d);
    #[cfg(feature = "simd")]
    layer_norm_train_rows_f32_simd(x, w, b, eps, y, xhat, rstd);
    #[cfg(not(feature = "simd"))]
    layer_norm_train_rows_f32_body(x, w, b, eps, y, xhat, rstd);
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn layer_norm_train_rows_f32_simd<S: macerator::Simd>(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    layer_norm_train_rows_f32_body(x, w, b, eps, y, xhat, rstd);
}

/// Sum of a slice on sixteen partial sums, so that it vectorises.
#[inline(always)]
fn sum16(a: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = a.chunks_exact(16);
    for c in &mut chunks {
        for (s, &a) in acc.iter_mut().zip(c) {
            *s += a;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Dot product on sixteen partial sums, so that it vectorises.
#[inline(always)]
fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut ac = a.chunks_exact(16);
    let mut bc = b.chunks_exact(16);
    for (a, b) in (&mut ac).zip(&mut bc) {
        for ((s, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *s += a * b;
        }
    }
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&a, &b)| a * b)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn layer_norm_train_rows_f32_body(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    for (((x, y), xh), r) in x
        .chunks_exact(d)
        .zip(y.chunks_exact_mut(d))
        .zip(xhat.chunks_exact_mut(d))
        .zip(rstd.iter_mut())
    {
        let mean = sum16(x) * inv_d;
        // x − mean into x̂ first: the variance reads it back, then it is scaled in place.
        for (xh, &x) in xh.iter_mut().zip(x) {
            *xh = x - mean;
        }
        let var = dot16(xh, xh) * inv_d;
        let rs = 1.0 / (var + eps).sqrt();
        *r = rs;
        for (((y, xh), &w), &b) in y.iter_mut().zip(xh.iter_mut()).zip(w).zip(b) {
            *xh *= rs;
            *y = *xh * w + b;
        }
    }
}

/// The gradients of [`layer_norm_train_f32`] from its saved `x̂` and `rstd`, the weight, and the
/// output's gradient `g`: `dx = rstd ⊙ (g⊙w − mean(g⊙w) − x̂ ⊙ mean(g⊙w⊙x̂))` per row, and,
/// when `param_grads` is set, `(dweight, dbias)` = `(Σ_rows g ⊙ x̂, Σ_rows g)` (`None`
/// otherwise: frozen parameters cost nothing). `dx` is written into `g`'s buffer when the
/// gradient is its only owner.
///
/// # Panics
///
/// * If a tensor is not f32 or the shapes disagree.
pub fn layer_norm_backward_f32(
    xhat: FlexTensor,
    rstd: FlexTensor,
    weight: FlexTensor,
    grad: FlexTensor,
    param_grads: bool,
) -> (FlexTensor, Option<(FlexTensor, FlexTensor)>) {
    for t in [&xhat, &rstd, &weight, &grad] {
        assert_eq!(t.dtype(), DType::F32, "layer_norm_backward_f32: not f32");
    }
    let shape = xhat.layout().shape().clone();
    assert_eq!(
        &shape,
        grad.layout().shape(),
        "layer_norm_backward_f32: x̂ and gradient shapes differ"
    );
    let d = *shape.last().expect("layer_norm_backward_f32: rank 0");
    let xhat = xhat.to_contiguous();
    let (rstd, weight) = (rstd.to_contiguous(), weight.to_contiguous());
    let xh: &[f32] = xhat.as_slice().expect("contiguous");
    let rs: &[f32] = rstd.as_slice().expect("contiguous");
    let w: &[f32] = weight.as_slice().expect("contiguous");
    assert_eq!(w.len(), d, "layer_norm_backward_f32: weight is not [{d}]");
    let rows = if d == 0 { 0 } else { xh.len() / d };
    assert_eq!(
        rs.len(),
        rows,
        "layer_norm_backward_f32: rstd is not one per row"
    );
    let mut dx = owned_contiguous_f32(grad);
    // dweight then dbias, summed over each task's rows, then over the tasks; empty when not
    // wanted.
    let sums_len = if param_grads { 2 * d } else { 0 };
    let mut sums = vec![0.0f32; sums_len];
    if d > 0 {
        let g: &mut [f32] = dx.storage_mut();
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let chunk = LAYER_NORM_ROWS_PER_TASK * d;
            let partial: Vec<Vec<f32>> = g
                .par_chunks_mut(chunk)
                .zip(xh.par_chunks(chunk))
                .zip(rs.par_chunks(LAYER_NORM_ROWS_PER_TASK))
                .map(|((g, xh), rs)| {
                    let mut sums = vec![0.0f32; sums_len];
                    layer_norm_backward_rows_f32(xh, rs, w, g, &mut sums);
                    sums
                })
                .collect();
            for p in partial {
                for (s, p) in sums.iter_mut().zip(p) {
                    *s += p;
                }
            }
        }
        #[cfg(not(feature = "rayon"))]
        layer_norm_backward_rows_f32(xh, rs, w, g, &mut sums);
    }
    let param = |v: Vec<f32>| {
        FlexTensor::new(
            Bytes::from_elems(v),
            Layout::contiguous([d].into()),
            DType::F32,
        )
    };
    let params = param_grads.then(|| {
        let db = sums.split_off(d);
        (param(sums), param(db))
    });
    (dx, params)
}

#[inline]
fn layer_norm_backward_rows_f32(
    xh: &[f32],
    rs: &[f32],
    w: &[f32],
    g: &mut [f32],
    sums: &mut [f32],
) {
    let d = w.len();
    assert_eq!(xh.len(), g.len());
    assert_eq!(xh.len(), rs.len() * d);
    assert!(sums.is_empty() || sums.len() == 2 * d);
    #[cfg(feature = "simd")]
    layer_norm_backward_rows_f32_simd(xh, rs, w, g, sums);
    #[cfg(not(feature = "simd"))]
    layer_norm_backward_rows_f32_body(xh, rs, w, g, sums);
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn layer_norm_backward_rows_f32_simd<S: macerator::Simd>(
    xh: &[f32],
    rs: &[f32],
    w: &[f32],
    g: &mut [f32],
    sums: &mut [f32],
) {
    layer_norm_backward_rows_f32_body(xh, rs, w, g, sums);
}

#[inline(always)]
fn layer_norm_backward_rows_f32_body(
    xh: &[f32],
    rs: &[f32],
    w: &[f32],
    g: &mut [f32],
    sums: &mut [f32],
) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    // Both empty when the parameters' gradients are not wanted.
    let (dw, db) = sums.split_at_mut(sums.len() / 2);
    for ((xh, &rs), g) in xh.chunks_exact(d).zip(rs).zip(g.chunks_exact_mut(d)) {
        for (((dw, db), &g), &xh) in dw.iter_mut().zip(db.iter_mut()).zip(g.iter()).zip(xh) {
            *dw += g * xh;
            *db += g;
        }
        // g ⊙ w in place, then its two row means.
        for (g, &w) in g.iter_mut().zip(w) {
            *g *= w;
        }
        let mean_gw = sum16(g) * inv_d;
        let mean_gwx = dot16(g, xh) * inv_d;
        for (g, &xh) in g.iter_mut().zip(xh) {
            *g = rs * (*g - mean_gw - xh * mean_gwx);
        }
    }
}

// ============================================================================
// RMS norm for training (f32): Llama's `x / sqrt(mean(x²) + eps) ⊙ weight`
// ============================================================================
//
// Autodiff runs it as about six tracked ops (square, mean, add, sqrt, divide, scale). These two
// kernels let an autodiff wrapper run it as one node that keeps only its input (which its caller
// holds anyway) and each row's `1/rms`.

/// The f32 RMS norm over the last dim: `y = x ⊙ rstd ⊙ weight` with
/// `rstd = 1 / sqrt(mean(x²) + eps)` per row, returned with `rstd` (the shape of `x` with a last
/// dim of 1).
///
/// # Panics
///
/// * If a tensor is not f32, or `weight` is not `[d]` for `x` `[..., d]`.
pub fn rms_norm_train_f32(
    x: FlexTensor,
    weight: FlexTensor,
    epsilon: f64,
) -> (FlexTensor, FlexTensor) {
    for t in [&x, &weight] {
        assert_eq!(t.dtype(), DType::F32, "rms_norm_train_f32: not f32");
    }
    let shape = x.layout().shape().clone();
    let d = *shape.last().expect("rms_norm_train_f32: rank 0");
    assert_eq!(
        weight.layout().shape().to_vec(),
        [d],
        "rms_norm_train_f32: weight is not [{d}]"
    );
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let x_data: &[f32] = x.as_slice().expect("contiguous");
    let w: &[f32] = weight.as_slice().expect("contiguous");
    let n = x_data.len();
    let rows = if d == 0 { 0 } else { n / d };
    // SAFETY: the row kernels write every element of `y` (`n` is 0 when `d` is).
    let mut y = unsafe { crate::par::uninit_vec::<f32>(n) };
    let mut rstd = vec![0.0f32; rows];
    let eps = epsilon as f32;
    if d > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let chunk = LAYER_NORM_ROWS_PER_TASK * d;
            y.par_chunks_mut(chunk)
                .zip(rstd.par_chunks_mut(LAYER_NORM_ROWS_PER_TASK))
                .zip(x_data.par_chunks(chunk))
                .for_each(|((y, r), x)| rms_norm_train_rows_f32(x, w, eps, y, r));
        }
        #[cfg(not(feature = "rayon"))]
        rms_norm_train_rows_f32(x_data, w, eps, &mut y, &mut rstd);
    }
    let mut rstd_shape = shape.clone();
    let last = rstd_shape.num_dims() - 1;
    rstd_shape[last] = 1;
    let tensor =
        |v: Vec<f32>, s| FlexTensor::new(Bytes::from_elems(v), Layout::contiguous(s), DType::F32);
    (tensor(y, shape), tensor(rstd, rstd_shape))
}

#[inline]
fn rms_norm_train_rows_f32(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    assert_eq!(x.len(), y.len());
    assert_eq!(x.len(), rstd.len() * d);
    #[cfg(feature = "simd")]
    rms_norm_train_rows_f32_simd(x, w, eps, y, rstd);
    #[cfg(not(feature = "simd"))]
    rms_norm_train_rows_f32_body(x, w, eps, y, rstd);
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn rms_norm_train_rows_f32_simd<S: macerator::Simd>(
    x: &[f32],
    w: &[f32],
    eps: f32,
    y: &mut [f32],
    rstd: &mut [f32],
) {
    rms_norm_train_rows_f32_body(x, w, eps, y, rstd);
}

#[inline(always)]
fn rms_norm_train_rows_f32_body(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    for ((x, y), r) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(rstd.iter_mut()) {
        let rs = 1.0 / (dot16(x, x) * inv_d + eps).sqrt();
        *r = rs;
        // (x · rstd) · weight, in transformers' order.
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = (x * rs) * w;
        }
    }
}

/// The gradients of [`rms_norm_train_f32`] from its input `x`, saved `rstd`, the weight and the
/// output's gradient `g`: with `x̂ = x ⊙ rstd`, `dx = rstd ⊙ (g⊙w − x̂ ⊙ mean(g⊙w⊙x̂))` per row,
/// and, when `weight_grad` is set, `dweight = Σ_rows g ⊙ x̂` (`None` otherwise: a frozen weight
/// costs nothing). `dx` is written into `g`'s buffer when the gradient is its only owner.
///
/// # Panics
///
/// * If a tensor is not f32 or the shapes disagree.
pub fn rms_norm_backward_f32(
    x: FlexTensor,
    rstd: FlexTensor,
    weight: FlexTensor,
    grad: FlexTensor,
    weight_grad: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    for t in [&x, &rstd, &weight, &grad] {
        assert_eq!(t.dtype(), DType::F32, "rms_norm_backward_f32: not f32");
    }
    let shape = x.layout().shape().clone();
    assert_eq!(
        &shape,
        grad.layout().shape(),
        "rms_norm_backward_f32: input and gradient shapes differ"
    );
    let d = *shape.last().expect("rms_norm_backward_f32: rank 0");
    let x = x.to_contiguous();
    let (rstd, weight) = (rstd.to_contiguous(), weight.to_contiguous());
    let xs: &[f32] = x.as_slice().expect("contiguous");
    let rs: &[f32] = rstd.as_slice().expect("contiguous");
    let w: &[f32] = weight.as_slice().expect("contiguous");
    assert_eq!(w.len(), d, "rms_norm_backward_f32: weight is not [{d}]");
    let rows = if d == 0 { 0 } else { xs.len() / d };
    assert_eq!(
        rs.len(),
        rows,
        "rms_norm_backward_f32: rstd is not one per row"
    );
    let mut dx = owned_contiguous_f32(grad);
    // dweight, summed over each task's rows, then over the tasks; empty when not wanted.
    let mut dw = vec![0.0f32; if weight_grad { d } else { 0 }];
    if d > 0 {
        let g: &mut [f32] = dx.storage_mut();
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let chunk = LAYER_NORM_ROWS_PER_TASK * d;
            let partial: Vec<Vec<f32>> = g
                .par_chunks_mut(chunk)
                .zip(xs.par_chunks(chunk))
                .zip(rs.par_chunks(LAYER_NORM_ROWS_PER_TASK))
                .map(|((g, xs), rs)| {
                    let mut dw = vec![0.0f32; if weight_grad { d } else { 0 }];
                    rms_norm_backward_rows_f32(xs, rs, w, g, &mut dw);
                    dw
                })
                .collect();
            for p in partial {
                for (s, p) in dw.iter_mut().zip(p) {
                    *s += p;
                }
            }
        }
        #[cfg(not(feature = "rayon"))]
        rms_norm_backward_rows_f32(xs, rs, w, g, &mut dw);
    }
    let dw = weight_grad.then(|| {
        FlexTensor::new(
            Bytes::from_elems(dw),
            Layout::contiguous([d].into()),
            DType::F32,
        )
    });
    (dx, dw)
}

/// `dw` is empty when the weight's gradient is not wanted, else `[d]`.
#[inline]
fn rms_norm_backward_rows_f32(xs: &[f32], rs: &[f32], w: &[f32], g: &mut [f32], dw: &mut [f32]) {
    let d = w.len();
    assert_eq!(xs.len(), g.len());
    assert_eq!(xs.len(), rs.len() * d);
    assert!(dw.is_empty() || dw.len() == d);
    #[cfg(feature = "simd")]
    rms_norm_backward_rows_f32_simd(xs, rs, w, g, dw);
    #[cfg(not(feature = "simd"))]
    rms_norm_backward_rows_f32_body(xs, rs, w, g, dw);
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn rms_norm_backward_rows_f32_simd<S: macerator::Simd>(
    xs: &[f32],
    rs: &[f32],
    w: &[f32],
    g: &mut [f32],
    dw: &mut [f32],
) {
    rms_norm_backward_rows_f32_body(xs, rs, w, g, dw);
}

#[inline(always)]
fn rms_norm_backward_rows_f32_body(
    xs: &[f32],
    rs: &[f32],
    w: &[f32],
    g: &mut [f32],
    dw: &mut [f32],
) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    for ((x, &rs), g) in xs.chunks_exact(d).zip(rs).zip(g.chunks_exact_mut(d)) {
        if !dw.is_empty() {
            for ((dw, &g), &x) in dw.iter_mut().zip(g.iter()).zip(x) {
                *dw += g * (x * rs);
            }
        }
        // g ⊙ w in place; mean(g⊙w⊙x̂) = rstd · mean(g⊙w⊙x).
        for (g, &w) in g.iter_mut().zip(w) {
            *g *= w;
        }
        let scale = rs * rs * dot16(g, x) * inv_d;
        for (g, &x) in g.iter_mut().zip(x) {
            *g = rs * (*g - x * scale);
        }
    }
}

// f64, f16, bf16 softmax share the same row-parallel dispatcher shell and
// differ only in their row kernel (native f64 vs via-f32 for half
// precision). Generated via macros to keep the three variants in lockstep.
// Only f32 has a dedicated SIMD fast path above.

macro_rules! softmax_last_dtype {
    ($fn_name:ident, $T:ty, $zero:expr, $dtype:expr, $row_fn:ident) => {
        fn $fn_name(tensor: FlexTensor) -> FlexTensor {
            let shape = tensor.layout().shape().clone();
            let last = *shape.last().expect("softmax: empty shape");
            if last == 0 {
                return tensor;
            }
            let input: &[$T] = tensor.storage();
            let mut output: Vec<$T> = vec![$zero; input.len()];

            #[cfg(feature = "rayon")]
            {
                use rayon::prelude::*;
                const ROWS_PER_TASK: usize = 64;
                let chunk_elems = ROWS_PER_TASK * last;
                output
                    .par_chunks_mut(chunk_elems)
                    .zip(input.par_chunks(chunk_elems))
                    .for_each(|(o_chunk, i_chunk)| {
                        for (i, o) in i_chunk
                            .chunks_exact(last)
                            .zip(o_chunk.chunks_exact_mut(last))
                        {
                            $row_fn(i, o);
                        }
                    });
            }
            #[cfg(not(feature = "rayon"))]
            {
                for (i, o) in input.chunks_exact(last).zip(output.chunks_exact_mut(last)) {
                    $row_fn(i, o);
                }
            }

            FlexTensor::new(Bytes::from_elems(output), Layout::contiguous(shape), $dtype)
        }
    };
}

/// Half-precision softmax row kernel. Accumulates in f32 for numerical
/// stability and converts back to the target type at each write. This
/// double-rounds across passes 2 and 3; acceptable for half precision. An
/// f32 scratch buffer would remove the double rounding at the cost of a
/// per-row allocation.
macro_rules! softmax_row_half {
    ($fn_name:ident, $T:ty) => {
        #[inline]
        fn $fn_name(input: &[$T], output: &mut [$T]) {
            let mut max_val = f32::NEG_INFINITY;
            for &x in input {
                let xf = x.to_f32();
                if xf > max_val {
                    max_val = xf;
                }
            }
            let mut sum = 0.0f32;
            for (i, &x) in input.iter().enumerate() {
                let e = (x.to_f32() - max_val).exp();
                output[i] = <$T>::from_f32(e);
                sum += e;
            }
            let inv = 1.0f32 / sum;
            for x in output.iter_mut() {
                *x = <$T>::from_f32(x.to_f32() * inv);
            }
        }
    };
}

#[inline]
fn softmax_row_f64(input: &[f64], output: &mut [f64]) {
    let mut max_val = f64::NEG_INFINITY;
    for &x in input {
        if x > max_val {
            max_val = x;
        }
    }
    let mut sum = 0.0f64;
    for (i, &x) in input.iter().enumerate() {
        let e = (x - max_val).exp();
        output[i] = e;
        sum += e;
    }
    let inv = 1.0f64 / sum;
    for x in output.iter_mut() {
        *x *= inv;
    }
}

softmax_row_half!(softmax_row_f16, f16);
softmax_row_half!(softmax_row_bf16, bf16);

softmax_last_dtype!(softmax_last_f64, f64, 0.0f64, DType::F64, softmax_row_f64);
softmax_last_dtype!(
    softmax_last_f16,
    f16,
    f16::from_f32(0.0),
    DType::F16,
    softmax_row_f16
);
softmax_last_dtype!(
    softmax_last_bf16,
    bf16,
    bf16::from_f32(0.0),
    DType::BF16,
    softmax_row_bf16
);

// ============================================================================
// Fused layer_norm
// ============================================================================
//
// Backs the `ModuleOps::layer_norm` hook, replacing the default decomposition
// into ~6 primitive tensor ops with intermediate allocations. The f32 SIMD
// row kernel makes three passes (mean, centered variance, normalize+affine)
// via macerator; the scalar fallback and f64 paths use Welford.

/// Fused layer normalization along the last axis.
///
/// Applies `y = ((x - mean) / sqrt(var + eps)) * gamma + beta`, where
/// `mean` and `var` are computed per row along the last axis of `input`.
/// `gamma` and `beta` are 1-D tensors of length `input.shape()[-1]`;
/// `beta` is optional (set to `None` for a bias-free layer norm).
///
/// The f32 SIMD row kernel makes three passes (mean, centered variance,
/// normalize+affine) via macerator; each row stays cache-hot across them.
/// With the `simd` feature off, the scalar fallback uses Welford.
///
/// Supports `f32` (SIMD-vectorized), `f64` (scalar + LLVM autovec), and
/// `f16`/`bf16` (via an f32 cast-fuse-cast shell; the f32 row kernel
/// already accumulates in f32, so this matches the precision a
/// half-precision-native kernel would produce).
///
/// # Panics
///
/// * If `input`'s dtype is not one of `f32`/`f64`/`f16`/`bf16`.
/// * If `input` has rank 0.
/// * If `gamma` (or `beta`, when present) is not a 1-D tensor of length
///   equal to the last dim of `input`.
pub fn layer_norm(
    input: FloatTensor<Flex>,
    gamma: FloatTensor<Flex>,
    beta: Option<FloatTensor<Flex>>,
    epsilon: f64,
) -> FloatTensor<Flex> {
    let rank = input.shape().num_dims();
    assert!(rank >= 1, "layer_norm: input must have at least one dim");
    // Keep gamma/beta dtypes aligned with the input. The half-precision path
    // (see `layer_norm_via_f32`) ultimately accesses storage using the input's
    // element type, and a mismatch would panic there; reject it up front with
    // a clearer layer_norm-specific error message.
    assert_eq!(
        gamma.dtype(),
        input.dtype(),
        "layer_norm: gamma dtype {:?} does not match input dtype {:?}",
        gamma.dtype(),
        input.dtype(),
    );
    if let Some(ref b) = beta {
        assert_eq!(
            b.dtype(),
            input.dtype(),
            "layer_norm: beta dtype {:?} does not match input dtype {:?}",
            b.dtype(),
            input.dtype(),
        );
    }
    let input = input.to_contiguous();
    let gamma = gamma.to_contiguous();
    let beta = beta.map(|b| b.to_contiguous());

    let d_model = *input
        .layout()
        .shape()
        .last()
        .expect("layer_norm: empty shape");
    // Validate rank + length explicitly rather than just last-dim == d_model.
    // A gamma shaped like `[2, d_model]` would pass a last-dim check but
    // has 2*d_model elements, which would index the wrong data in the row
    // kernel (caught by an inner assert, but with a confusing message).
    let gamma_shape = gamma.layout().shape();
    assert!(
        gamma_shape.len() == 1 && gamma_shape[0] == d_model,
        "layer_norm: gamma must be a 1-D tensor of length equal to last dim of input \
         (got shape {:?}, expected [{}])",
        gamma_shape,
        d_model,
    );
    if let Some(ref b) = beta {
        let beta_shape = b.layout().shape();
        assert!(
            beta_shape.len() == 1 && beta_shape[0] == d_model,
            "layer_norm: beta must be a 1-D tensor of length equal to last dim of input \
             (got shape {:?}, expected [{}])",
            beta_shape,
            d_model,
        );
    }

    match input.dtype() {
        DType::F32 => layer_norm_f32(input, gamma, beta, epsilon as f32),
        DType::F64 => layer_norm_f64(input, gamma, beta, epsilon),
        DType::F16 => {
            layer_norm_via_f32::<f16>(input, gamma, beta, epsilon, f16::to_f32, f16::from_f32)
        }
        DType::BF16 => {
            layer_norm_via_f32::<bf16>(input, gamma, beta, epsilon, bf16::to_f32, bf16::from_f32)
        }
        dtype => panic!("burn_flex::layer_norm: unsupported dtype {:?}", dtype),
    }
}

fn layer_norm_via_f32<E: burn_backend::Element + bytemuck::Pod + Copy>(
    input: FlexTensor,
    gamma: FlexTensor,
    beta: Option<FlexTensor>,
    epsilon: f64,
    to_f32: fn(E) -> f32,
    from_f32: fn(f32) -> E,
) -> FlexTensor {
    let input_f32 = crate::ops::module::cast_to_f32::<E>(input, to_f32);
    let gamma_f32 = crate::ops::module::cast_to_f32::<E>(gamma, to_f32);
    let beta_f32 = beta.map(|b| crate::ops::module::cast_to_f32::<E>(b, to_f32));
    let out = layer_norm_f32(input_f32, gamma_f32, beta_f32, epsilon as f32);
    crate::ops::module::cast_from_f32::<E>(out, from_f32)
}

/// Fused f64 layer_norm. The Welford mean/variance pass is serial (the
/// mean update on iteration `k` depends on iteration `k-1`); the
/// normalize+affine pass autovectorizes on targets with f64 SIMD. A
/// macerator f64 path can be added if profiling shows it matters.
fn layer_norm_f64(
    input: FlexTensor,
    gamma: FlexTensor,
    beta: Option<FlexTensor>,
    epsilon: f64,
) -> FlexTensor {
    let shape = input.layout().shape().clone();
    let d_model = *shape.last().expect("layer_norm: empty shape");
    if d_model == 0 {
        return input;
    }
    let input_data: &[f64] = input.storage();
    let gamma_data: &[f64] = gamma.storage();
    let beta_data: Option<&[f64]> = beta.as_ref().map(|b| b.storage());
    let mut output: Vec<f64> = vec![0.0; input_data.len()];

    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        const ROWS_PER_TASK: usize = 64;
        let chunk_elems = ROWS_PER_TASK * d_model;
        match beta_data {
            Some(beta_slice) => {
                output
                    .par_chunks_mut(chunk_elems)
                    .zip(input_data.par_chunks(chunk_elems))
                    .for_each(|(o, i)| {
                        layer_norm_rows_f64_with_beta(
                            i, o, gamma_data, beta_slice, d_model, epsilon,
                        );
                    });
            }
            None => {
                output
                    .par_chunks_mut(chunk_elems)
                    .zip(input_data.par_chunks(chunk_elems))
                    .for_each(|(o, i)| {
                        layer_norm_rows_f64_no_beta(i, o, gamma_data, d_model, epsilon);
                    });
            }
        }
    }
    #[cfg(not(feature = "rayon"))]
    {
        match beta_data {
            Some(beta_slice) => layer_norm_rows_f64_with_beta(
                input_data,
                output.as_mut_slice(),
                gamma_data,
                beta_slice,
                d_model,
                epsilon,
            ),
            None => layer_norm_rows_f64_no_beta(
                input_data,
                output.as_mut_slice(),
                gamma_data,
                d_model,
                epsilon,
            ),
        }
    }

    FlexTensor::new(
        Bytes::from_elems(output),
        Layout::contiguous(shape),
        DType::F64,
    )
}

#[inline]
fn layer_norm_rows_f64_with_beta(
    input: &[f64],
    output: &mut [f64],
    gamma: &[f64],
    beta: &[f64],
    d_model: usize,
    epsilon: f64,
) {
    for (in_row, out_row) in input.chunks(d_model).zip(output.chunks_mut(d_model)) {
        let (mean, inv_std) = welford_f64(in_row, epsilon);
        for (i, &x) in in_row.iter().enumerate() {
            out_row[i] = (x - mean) * (inv_std * gamma[i]) + beta[i];
        }
    }
}

#[inline]
fn layer_norm_rows_f64_no_beta(
    input: &[f64],
    output: &mut [f64],
    gamma: &[f64],
    d_model: usize,
    epsilon: f64,
) {
    for (in_row, out_row) in input.chunks(d_model).zip(output.chunks_mut(d_model)) {
        let (mean, inv_std) = welford_f64(in_row, epsilon);
        for (i, &x) in in_row.iter().enumerate() {
            out_row[i] = (x - mean) * (inv_std * gamma[i]);
        }
    }
}

#[inline]
fn welford_f64(row: &[f64], epsilon: f64) -> (f64, f64) {
    let mut mean = 0.0f64;
    let mut m2 = 0.0f64;
    for (k, &x) in row.iter().enumerate() {
        let n_k = (k + 1) as f64;
        let delta = x - mean;
        mean += delta / n_k;
        m2 += delta * (x - mean);
    }
    let var = m2 / row.len() as f64;
    (mean, 1.0f64 / (var + epsilon).sqrt())
}

fn layer_norm_f32(
    input: FlexTensor,
    gamma: FlexTensor,
    beta: Option<FlexTensor>,
    epsilon: f32,
) -> FlexTensor {
    let shape = input.layout().shape().clone();
    let d_model = *shape.last().expect("layer_norm: empty shape");
    if d_model == 0 {
        return input;
    }

    let input_data: &[f32] = input.storage();
    let gamma_data: &[f32] = gamma.storage();
    let beta_data: Option<&[f32]> = beta.as_ref().map(|b| b.storage());

    let n = input_data.len();
    // See softmax_last_f32 for the rationale on zero-init instead of
    // `spare_capacity_mut` + `&mut [f32]` cast: the latter creates a
    // reference to uninitialized f32 values, which is UB under Rust's
    // aliasing model even with no intervening read.
    let mut output: Vec<f32> = vec![0.0; n];
    let out_slice = output.as_mut_slice();

    // `#[macerator::with_simd]` can't auto-lifetime through
    // `Option<&[T]>`, so we dispatch two separate monomorphized
    // versions, one with beta and one without. Both call into the
    // same shared row kernel.
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        const ROWS_PER_TASK: usize = 64;
        let chunk_elems = ROWS_PER_TASK * d_model;
        match beta_data {
            Some(beta_slice) => {
                out_slice
                    .par_chunks_mut(chunk_elems)
                    .zip(input_data.par_chunks(chunk_elems))
                    .for_each(|(o, i)| {
                        layer_norm_rows_f32_with_beta(
                            i, o, gamma_data, beta_slice, d_model, epsilon,
                        );
                    });
            }
            None => {
                out_slice
                    .par_chunks_mut(chunk_elems)
                    .zip(input_data.par_chunks(chunk_elems))
                    .for_each(|(o, i)| {
                        layer_norm_rows_f32_no_beta(i, o, gamma_data, d_model, epsilon);
                    });
            }
        }
    }
    #[cfg(not(feature = "rayon"))]
    {
        match beta_data {
            Some(beta_slice) => layer_norm_rows_f32_with_beta(
                input_data, out_slice, gamma_data, beta_slice, d_model, epsilon,
            ),
            None => {
                layer_norm_rows_f32_no_beta(input_data, out_slice, gamma_data, d_model, epsilon)
            }
        }
    }

    FlexTensor::new(
        Bytes::from_elems(output),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// Row sweep for f32 layer_norm with bias. Delegates to the SIMD kernel
/// when the `simd` feature is enabled; otherwise uses a scalar row loop.
#[inline]
fn layer_norm_rows_f32_with_beta(
    input: &[f32],
    output: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    d_model: usize,
    epsilon: f32,
) {
    // Release-mode invariant checks; see softmax_rows_f32 for rationale.
    assert_eq!(input.len(), output.len());
    assert_eq!(input.len() % d_model, 0);
    assert_eq!(gamma.len(), d_model);
    assert_eq!(beta.len(), d_model);
    #[cfg(feature = "simd")]
    layer_norm_rows_f32_with_beta_simd(input, output, gamma, beta, d_model, epsilon);
    #[cfg(not(feature = "simd"))]
    {
        for (in_row, out_row) in input.chunks(d_model).zip(output.chunks_mut(d_model)) {
            layer_norm_row_f32_scalar(in_row, out_row, gamma, Some(beta), epsilon);
        }
    }
}

/// Row sweep for f32 layer_norm without bias.
#[inline]
fn layer_norm_rows_f32_no_beta(
    input: &[f32],
    output: &mut [f32],
    gamma: &[f32],
    d_model: usize,
    epsilon: f32,
) {
    // Release-mode invariant checks; see softmax_rows_f32 for rationale.
    assert_eq!(input.len(), output.len());
    assert_eq!(input.len() % d_model, 0);
    assert_eq!(gamma.len(), d_model);
    #[cfg(feature = "simd")]
    layer_norm_rows_f32_no_beta_simd(input, output, gamma, d_model, epsilon);
    #[cfg(not(feature = "simd"))]
    {
        for (in_row, out_row) in input.chunks(d_model).zip(output.chunks_mut(d_model)) {
            layer_norm_row_f32_scalar(in_row, out_row, gamma, None, epsilon);
        }
    }
}

/// Scalar fallback row kernel for layer_norm when the `simd` feature is
/// disabled. Welford mean/variance, then normalize+affine.
#[cfg(not(feature = "simd"))]
#[inline]
fn layer_norm_row_f32_scalar(
    input: &[f32],
    output: &mut [f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    epsilon: f32,
) {
    // Welford's online algorithm tracks a running mean instead of a raw
    // sum, so it avoids the E[x^2] - E[x]^2 cancellation and the mean stays
    // finite for inputs whose raw sum would overflow f32.
    let len = input.len();
    let mut mean = 0.0f32;
    let mut m2 = 0.0f32;
    for (k, &x) in input.iter().enumerate() {
        let n_k = (k + 1) as f32;
        let delta = x - mean;
        mean += delta / n_k;
        let delta2 = x - mean;
        m2 += delta * delta2;
    }
    let var = m2 / len as f32;
    let inv_std = 1.0f32 / (var + epsilon).sqrt();
    for (i, &x) in input.iter().enumerate() {
        let scale = inv_std * gamma[i];
        let normed = (x - mean) * scale;
        output[i] = match beta {
            Some(b) => normed + b[i],
            None => normed,
        };
    }
}

/// SIMD-dispatched row sweep for f32 layer_norm with bias (beta). One
/// macerator dispatch per chunk of rows, amortized over the whole chunk.
#[cfg(feature = "simd")]
#[macerator::with_simd]
fn layer_norm_rows_f32_with_beta_simd<S: macerator::Simd>(
    input: &[f32],
    output: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    d_model: usize,
    epsilon: f32,
) {
    debug_assert_eq!(input.len(), output.len());
    debug_assert_eq!(input.len() % d_model, 0);
    debug_assert_eq!(gamma.len(), d_model);
    debug_assert_eq!(beta.len(), d_model);
    for (in_row, out_row) in input.chunks(d_model).zip(output.chunks_mut(d_model)) {
        layer_norm_row_f32_simd::<S>(in_row, out_row, gamma, Some(beta), epsilon);
    }
}

/// SIMD-dispatched row sweep for f32 layer_norm without bias.
#[cfg(feature = "simd")]
#[macerator::with_simd]
fn layer_norm_rows_f32_no_beta_simd<S: macerator::Simd>(
    input: &[f32],
    output: &mut [f32],
    gamma: &[f32],
    d_model: usize,
    epsilon: f32,
) {
    debug_assert_eq!(input.len(), output.len());
    debug_assert_eq!(input.len() % d_model, 0);
    debug_assert_eq!(gamma.len(), d_model);
    for (in_row, out_row) in input.chunks(d_model).zip(output.chunks_mut(d_model)) {
        layer_norm_row_f32_simd::<S>(in_row, out_row, gamma, None, epsilon);
    }
}

/// Single-row layer_norm kernel. Three vectorized passes: mean, centered
/// variance, normalize+affine. The row stays cache-hot across all three.
#[cfg(feature = "simd")]
#[inline(always)]
fn layer_norm_row_f32_simd<S: macerator::Simd>(
    input: &[f32],
    output: &mut [f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    epsilon: f32,
) {
    use macerator::{Scalar, vload_unaligned, vstore_unaligned};
    let lanes = <f32 as Scalar>::lanes::<S>();
    let len = input.len();
    let simd_len = len / lanes * lanes;
    let n = len as f32;

    // Pass 1: mean.
    let mut acc = 0.0f32.splat::<S>();
    let mut i = 0;
    while i < simd_len {
        unsafe {
            acc += vload_unaligned::<S, _>(input.as_ptr().add(i));
        }
        i += lanes;
    }
    let mut sum = acc.reduce_add();
    for &x in &input[simd_len..] {
        sum += x;
    }
    let mean = sum / n;
    let mean_vec = mean.splat::<S>();

    // Pass 2: biased variance, centered to avoid the E[x^2] - E[x]^2
    // cancellation (#5607). Matches burn::nn::LayerNorm (var_mean_bias).
    let mut acc = 0.0f32.splat::<S>();
    let mut i = 0;
    while i < simd_len {
        unsafe {
            let d = vload_unaligned::<S, _>(input.as_ptr().add(i)) - mean_vec;
            // Vector::mul_add(self, a, b) = self*a + b, so d*d + acc.
            acc = d.mul_add(d, acc);
        }
        i += lanes;
    }
    let mut sumsq = acc.reduce_add();
    for &x in &input[simd_len..] {
        let d = x - mean;
        sumsq += d * d;
    }
    let var = sumsq / n;
    let inv_std = 1.0f32 / (var + epsilon).sqrt();

    // Pass 3: normalize and affine transform.
    //   out[i] = (x[i] - mean) * inv_std * gamma[i] + beta[i]
    // mean_vec and inv_std_vec are splatted once per row. gamma and beta
    // are read once per element; both fit in L1 and are shared across all
    // rows within a rayon chunk.
    let inv_std_vec = inv_std.splat::<S>();
    let mut i = 0;
    while i < simd_len {
        unsafe {
            let x = vload_unaligned::<S, _>(input.as_ptr().add(i));
            let g = vload_unaligned::<S, _>(gamma.as_ptr().add(i));
            // scale = inv_std * g
            let scale = inv_std_vec * g;
            // centered = x - mean
            let centered = x - mean_vec;
            // out = centered * scale  (+ beta if present)
            let normed = centered * scale;
            let out = if let Some(b) = beta {
                let b_vec = vload_unaligned::<S, _>(b.as_ptr().add(i));
                normed + b_vec
            } else {
                normed
            };
            vstore_unaligned::<S, _>(output.as_mut_ptr().add(i), out);
        }
        i += lanes;
    }
    // Scalar tail
    while i < len {
        let centered = input[i] - mean;
        let normed = centered * inv_std * gamma[i];
        output[i] = match beta {
            Some(b) => normed + b[i],
            None => normed,
        };
        i += 1;
    }
}

// Tests kept here exercise flex-specific behavior: SIMD boundaries, rayon
// chunk boundaries, non-contiguous input handling, the flex-internal
// layer_norm op (no public API yet), and dtype-specific fused softmax
// paths (f16/bf16/f64). Plain activation/softmax smoke tests have been
// migrated to burn-backend-tests so they cover every backend. When adding
// new tests, keep them here only if they probe flex internals; otherwise
// add them to crates/burn-backend-tests/tests/tensor/float/activation/.
#[cfg(test)]
mod tests {
    use alloc::vec;
    use burn_backend::{DType, TensorData, TensorMetadata, Tolerance};
    use burn_std::{bf16, f16};
    use num_traits::Float;

    use crate::FlexTensor;

    // ============================================================================
    // Reference implementations (per-row, last-axis).
    //
    // These mirror the contract the fused kernel commits to: stable softmax via
    // (x - max), layer_norm via (x - mean) * inv(sqrt(var + eps)) with optional
    // affine. Written in plain Rust over f32/f64 slices so the tests avoid any
    // tensor-library dependency.
    // ============================================================================

    fn softmax_row<T: Float>(row_in: &[T], row_out: &mut [T]) {
        let max = row_in
            .iter()
            .copied()
            .fold(T::neg_infinity(), |a, b| if a > b { a } else { b });
        let mut sum = T::zero();
        for (i, &x) in row_in.iter().enumerate() {
            let e = (x - max).exp();
            row_out[i] = e;
            sum = sum + e;
        }
        for v in row_out.iter_mut() {
            *v = *v / sum;
        }
    }

    fn softmax_last_ref<T: Float>(data: &[T], row_len: usize) -> Vec<T> {
        let mut out = vec![T::zero(); data.len()];
        for (i, o) in data.chunks(row_len).zip(out.chunks_mut(row_len)) {
            softmax_row(i, o);
        }
        out
    }

    fn layer_norm_row<T: Float>(
        row_in: &[T],
        gamma: &[T],
        beta: Option<&[T]>,
        eps: T,
        row_out: &mut [T],
    ) {
        let n = T::from(row_in.len()).unwrap();
        let mean = row_in.iter().copied().fold(T::zero(), |a, b| a + b) / n;
        let var = row_in
            .iter()
            .map(|&x| (x - mean) * (x - mean))
            .fold(T::zero(), |a, b| a + b)
            / n;
        let inv_std = T::one() / (var + eps).sqrt();
        for (i, &x) in row_in.iter().enumerate() {
            let normed = (x - mean) * inv_std;
            let scaled = normed * gamma[i];
            row_out[i] = match beta {
                Some(b) => scaled + b[i],
                None => scaled,
            };
        }
    }

    fn layer_norm_last_ref<T: Float>(
        data: &[T],
        gamma: &[T],
        beta: Option<&[T]>,
        eps: T,
        row_len: usize,
    ) -> Vec<T> {
        let mut out = vec![T::zero(); data.len()];
        for (i, o) in data.chunks(row_len).zip(out.chunks_mut(row_len)) {
            layer_norm_row(i, gamma, beta, eps, o);
        }
        out
    }

    // ============================================================================
    // Helpers: FlexTensor constructors for typed inputs.
    // ============================================================================

    fn flex_f32(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
    }

    fn flex_f64(data: Vec<f64>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
    }

    fn flex_half<T: burn_backend::Element>(data: Vec<T>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
    }

    // ============================================================================
    // layer_norm tests
    // ============================================================================

    #[test]
    fn test_layer_norm_2d_with_beta() {
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 4]);
        let gamma = flex_f32(vec![1.0; 4], &[4]);
        let beta = flex_f32(vec![0.0; 4], &[4]);
        let out = crate::ops::activation::layer_norm(t, gamma, Some(beta), 1e-5);

        let expected: Vec<f32> = vec![
            -1.3416408, -0.4472136, 0.4472136, 1.3416408, -1.3416408, -0.4472136, 0.4472136,
            1.3416408,
        ];
        out.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![2, 4]),
            Tolerance::absolute(1e-4),
        );
    }

    #[test]
    fn test_layer_norm_with_affine() {
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0], &[1, 4]);
        let gamma = flex_f32(vec![2.0, 0.5, 1.0, 3.0], &[4]);
        let beta = flex_f32(vec![1.0, -1.0, 0.0, 2.0], &[4]);
        let out = crate::ops::activation::layer_norm(t, gamma, Some(beta), 1e-5);

        // normalized = [-1.3416, -0.4472, 0.4472, 1.3416]
        // affine: [-1.6833, -1.2236, 0.4472, 6.0249]
        out.into_data().assert_approx_eq::<f32>(
            &TensorData::new(vec![-1.6833, -1.2236, 0.4472, 6.0249], vec![1, 4]),
            Tolerance::absolute(1e-3),
        );
    }

    #[test]
    fn test_layer_norm_no_beta() {
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0], &[1, 4]);
        let gamma = flex_f32(vec![1.0; 4], &[4]);
        let out = crate::ops::activation::layer_norm(t, gamma, None, 1e-5);

        out.into_data().assert_approx_eq::<f32>(
            &TensorData::new(
                vec![-1.3416408, -0.4472136, 0.4472136, 1.3416408],
                vec![1, 4],
            ),
            Tolerance::absolute(1e-4),
        );
    }

    // ============================================================================
    // softmax SIMD / rayon boundary tests
    // ============================================================================

    #[test]
    fn test_softmax_simd_body_row() {
        // Row length 32 ensures the SIMD body runs on every supported target:
        // NEON (lanes=4), AVX2 (lanes=8), AVX-512 (lanes=16), SIMD128 (lanes=4).
        let data: Vec<f32> = (0..32).map(|i| i as f32 * 0.1).collect();
        let expected = softmax_last_ref(&data, 32);
        let fused = crate::ops::activation::softmax(flex_f32(data, &[1, 32]), 1);
        fused.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![1, 32]),
            Tolerance::absolute(1e-5),
        );
    }

    #[test]
    fn test_softmax_multi_chunk_rayon() {
        // 100 rows > ROWS_PER_TASK (64) triggers the rayon par_chunks path.
        let data: Vec<f32> = (0..100 * 16).map(|i| ((i % 17) as f32) * 0.05).collect();
        let expected = softmax_last_ref(&data, 16);
        let fused = crate::ops::activation::softmax(flex_f32(data, &[100, 16]), 1);
        fused.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![100, 16]),
            Tolerance::absolute(1e-5),
        );
    }

    #[test]
    fn test_softmax_f64() {
        // Exercises softmax_last_dtype! + softmax_row_native f64 path.
        let data: Vec<f64> = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let expected = softmax_last_ref(&data, 4);
        let fused = crate::ops::activation::softmax(flex_f64(data, &[2, 4]), 1);
        fused.into_data().assert_approx_eq::<f64>(
            &TensorData::new(expected, vec![2, 4]),
            Tolerance::absolute(1e-10),
        );
    }

    #[test]
    fn test_softmax_f16() {
        // Exercises softmax_last_dtype! + softmax_row_half f16 path.
        let source: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
        let data: Vec<f16> = source.iter().map(|&x| f16::from_f32(x)).collect();
        let expected = softmax_last_ref(&data, 4);
        let fused = crate::ops::activation::softmax(flex_half(data, &[2, 4]), 1);
        fused.into_data().assert_approx_eq::<f16>(
            &TensorData::new(expected, vec![2, 4]),
            Tolerance::absolute(1e-2),
        );
    }

    #[test]
    fn test_softmax_bf16() {
        // Exercises softmax_last_dtype! + softmax_row_half bf16 path.
        let source: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
        let data: Vec<bf16> = source.iter().map(|&x| bf16::from_f32(x)).collect();
        let expected = softmax_last_ref(&data, 4);
        let fused = crate::ops::activation::softmax(flex_half(data, &[2, 4]), 1);
        fused.into_data().assert_approx_eq::<bf16>(
            &TensorData::new(expected, vec![2, 4]),
            Tolerance::absolute(5e-2),
        );
    }

    #[test]
    fn test_softmax_multi_chunk_f64() {
        // 150 rows > 64 triggers the multi-chunk rayon path for f64
        let n_rows = 150;
        let d_cols = 8;
        let data: Vec<f64> = (0..n_rows * d_cols)
            .map(|i| ((i % 11) as f64) * 0.1 - 0.5)
            .collect();
        let expected = softmax_last_ref(&data, d_cols);
        let fused = crate::ops::activation::softmax(flex_f64(data, &[n_rows, d_cols]), 1);
        fused.into_data().assert_approx_eq::<f64>(
            &TensorData::new(expected, vec![n_rows, d_cols]),
            Tolerance::absolute(1e-10),
        );
    }

    #[test]
    fn test_softmax_multi_chunk_f16() {
        // 150 rows > 64 triggers the multi-chunk rayon path for f16
        let n_rows = 150;
        let d_cols = 8;
        let source: Vec<f32> = (0..n_rows * d_cols)
            .map(|i| ((i % 11) as f32) * 0.1 - 0.5)
            .collect();
        let data: Vec<f16> = source.iter().map(|&x| f16::from_f32(x)).collect();
        let expected = softmax_last_ref(&data, d_cols);
        let fused = crate::ops::activation::softmax(flex_half(data, &[n_rows, d_cols]), 1);
        fused.into_data().assert_approx_eq::<f16>(
            &TensorData::new(expected, vec![n_rows, d_cols]),
            Tolerance::absolute(1e-2),
        );
    }

    #[test]
    fn test_softmax_multi_chunk_bf16() {
        // 150 rows > 64 triggers the multi-chunk rayon path for bf16
        let n_rows = 150;
        let d_cols = 8;
        let source: Vec<f32> = (0..n_rows * d_cols)
            .map(|i| ((i % 11) as f32) * 0.1 - 0.5)
            .collect();
        let data: Vec<bf16> = source.iter().map(|&x| bf16::from_f32(x)).collect();
        let expected = softmax_last_ref(&data, d_cols);
        let fused = crate::ops::activation::softmax(flex_half(data, &[n_rows, d_cols]), 1);
        fused.into_data().assert_approx_eq::<bf16>(
            &TensorData::new(expected, vec![n_rows, d_cols]),
            Tolerance::absolute(5e-2),
        );
    }

    #[test]
    fn test_layer_norm_large_mean_small_spread() {
        // Row mean far larger than row spread. A one-pass E[x^2] - E[x]^2
        // variance cancels catastrophically here and is off by ~1.0 (issue
        // #5607). Odd length also covers the SIMD tail. Larger means are
        // omitted: f32 rounding of the mean itself then exceeds the tolerance.
        let data: Vec<f32> = (0..17).map(|i| 100.0 + i as f32 * 1e-3).collect();
        let data_f64: Vec<f64> = data.iter().map(|&x| x as f64).collect();
        let expected: Vec<f32> = layer_norm_last_ref(&data_f64, &[1.0; 17], None, 1e-5, 17)
            .into_iter()
            .map(|x| x as f32)
            .collect();
        let out = crate::ops::activation::layer_norm(
            flex_f32(data, &[1, 17]),
            flex_f32(vec![1.0; 17], &[17]),
            None,
            1e-5,
        );
        out.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![1, 17]),
            Tolerance::absolute(1e-2),
        );
    }

    #[test]
    fn test_layer_norm_multi_chunk_rayon() {
        // 128 rows > ROWS_PER_TASK (64) triggers the rayon path.
        let data: Vec<f32> = (0..128 * 16).map(|i| ((i % 19) as f32) * 0.03).collect();
        let gamma_data: Vec<f32> = vec![1.0; 16];
        let beta_data: Vec<f32> = vec![0.0; 16];
        let expected = layer_norm_last_ref(&data, &gamma_data, Some(&beta_data), 1e-5f32, 16);
        let fused = crate::ops::activation::layer_norm(
            flex_f32(data, &[128, 16]),
            flex_f32(gamma_data, &[16]),
            Some(flex_f32(beta_data, &[16])),
            1e-5,
        );
        fused.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![128, 16]),
            Tolerance::absolute(1e-4),
        );
    }

    #[test]
    fn test_softmax_empty_last_dim_returns_input() {
        // shape [2, 0]: empty last dim should round-trip unchanged instead
        // of producing NaN via 0/0.
        let t = flex_f32(Vec::<f32>::new(), &[2, 0]);
        let result = crate::ops::activation::softmax(t, 1);
        assert_eq!(result.shape().as_slice(), &[2, 0]);
    }

    #[test]
    fn test_layer_norm_empty_last_dim_returns_input() {
        let t = flex_f32(Vec::<f32>::new(), &[3, 0]);
        let gamma = flex_f32(Vec::<f32>::new(), &[0]);
        let beta = flex_f32(Vec::<f32>::new(), &[0]);
        let result = crate::ops::activation::layer_norm(t, gamma, Some(beta), 1e-5);
        assert_eq!(result.shape().as_slice(), &[3, 0]);
    }

    #[test]
    #[should_panic(expected = "gamma must be a 1-D tensor")]
    fn test_layer_norm_gamma_length_mismatch_panics() {
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0], &[1, 4]);
        let gamma = flex_f32(vec![1.0, 1.0, 1.0], &[3]);
        let _ = crate::ops::activation::layer_norm(t, gamma, None, 1e-5);
    }

    #[test]
    #[should_panic(expected = "beta must be a 1-D tensor")]
    fn test_layer_norm_beta_length_mismatch_panics() {
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0], &[1, 4]);
        let gamma = flex_f32(vec![1.0, 1.0, 1.0, 1.0], &[4]);
        let beta = flex_f32(vec![0.0, 0.0, 0.0], &[3]);
        let _ = crate::ops::activation::layer_norm(t, gamma, Some(beta), 1e-5);
    }

    #[test]
    #[should_panic(expected = "gamma must be a 1-D tensor")]
    fn test_layer_norm_gamma_rank_mismatch_panics() {
        // gamma [2, 4] has matching last-dim but rank 2, so the old last-dim
        // check alone would have accepted it and then indexed wrong storage.
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0], &[1, 4]);
        let gamma = flex_f32(vec![1.0; 8], &[2, 4]);
        let _ = crate::ops::activation::layer_norm(t, gamma, None, 1e-5);
    }

    // Row length 17 leaves exactly one scalar-tail element after every common
    // SIMD width (NEON/SSE f32x4: body=16, tail=1; AVX2 f32x8: body=16, tail=1;
    // AVX-512 f32x16: body=16, tail=1). Row lengths that divide evenly by the
    // SIMD width skip the tail branch entirely, so a bug in the scalar tail
    // kernel would sail past CI without a test like this.
    #[test]
    fn test_softmax_simd_body_plus_scalar_tail() {
        let data: Vec<f32> = (0..34).map(|i| (i as f32 * 0.137) - 2.3).collect();
        let expected = softmax_last_ref(&data, 17);
        let fused = crate::ops::activation::softmax(flex_f32(data, &[2, 17]), 1);
        fused.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![2, 17]),
            Tolerance::absolute(1e-5),
        );
    }

    #[test]
    fn test_layer_norm_simd_body_plus_scalar_tail() {
        let data: Vec<f32> = (0..34).map(|i| (i as f32 * 0.137) - 2.3).collect();
        let gamma_data: Vec<f32> = (0..17).map(|i| 1.0 + i as f32 * 0.05).collect();
        let beta_data: Vec<f32> = (0..17).map(|i| i as f32 * 0.01).collect();
        let expected = layer_norm_last_ref(&data, &gamma_data, Some(&beta_data), 1e-5f32, 17);
        let fused = crate::ops::activation::layer_norm(
            flex_f32(data, &[2, 17]),
            flex_f32(gamma_data, &[17]),
            Some(flex_f32(beta_data, &[17])),
            1e-5,
        );
        fused.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![2, 17]),
            Tolerance::absolute(1e-5),
        );
    }

    #[test]
    fn test_layer_norm_f64_with_beta_multi_chunk() {
        // 80 rows > ROWS_PER_TASK (64) exercises the rayon multi-chunk f64 path.
        let d_model = 16;
        let n_rows = 80;
        let data: Vec<f64> = (0..n_rows * d_model)
            .map(|i| ((i % 13) as f64) * 0.07 - 0.3)
            .collect();
        let gamma_data: Vec<f64> = vec![0.9; d_model];
        let beta_data: Vec<f64> = vec![0.05; d_model];
        let eps = 1e-5f64;
        let expected = layer_norm_last_ref(&data, &gamma_data, Some(&beta_data), eps, d_model);
        let fused = crate::ops::activation::layer_norm(
            flex_f64(data, &[n_rows, d_model]),
            flex_f64(gamma_data, &[d_model]),
            Some(flex_f64(beta_data, &[d_model])),
            eps,
        );
        fused.into_data().assert_approx_eq::<f64>(
            &TensorData::new(expected, vec![n_rows, d_model]),
            Tolerance::absolute(1e-10),
        );
    }

    #[test]
    fn test_layer_norm_f64_no_beta() {
        let data: Vec<f64> = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 1.5, -0.5];
        let gamma_data: Vec<f64> = vec![1.0; 4];
        let eps = 1e-5f64;
        let expected = layer_norm_last_ref(&data, &gamma_data, None, eps, 4);
        let fused = crate::ops::activation::layer_norm(
            flex_f64(data, &[2, 4]),
            flex_f64(gamma_data, &[4]),
            None,
            eps,
        );
        fused.into_data().assert_approx_eq::<f64>(
            &TensorData::new(expected, vec![2, 4]),
            Tolerance::absolute(1e-10),
        );
    }

    // Shared body for f16/bf16 layer_norm tests. The fused half-precision
    // kernel casts to f32 internally, so the reference is computed in f32
    // and compared back against the half output with an f32 tolerance.
    fn check_layer_norm_half_precision<E>(from_f32: fn(f32) -> E, dtype: DType)
    where
        E: burn_backend::Element + Float,
    {
        let rows_f32: [f32; 12] = [
            1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0, 0.5, -0.5, 1.5, -1.5,
        ];
        let gamma_f32: [f32; 4] = [1.0, 0.5, 1.5, 1.0];
        let beta_f32: [f32; 4] = [0.1, -0.1, 0.0, 0.2];
        let eps = 1e-5f32;

        let expected_f32 = layer_norm_last_ref(&rows_f32, &gamma_f32, Some(&beta_f32), eps, 4);

        let data: Vec<E> = rows_f32.iter().map(|&x| from_f32(x)).collect();
        let gamma_data: Vec<E> = gamma_f32.iter().map(|&x| from_f32(x)).collect();
        let beta_data: Vec<E> = beta_f32.iter().map(|&x| from_f32(x)).collect();
        assert_eq!(E::dtype(), dtype);

        let fused = crate::ops::activation::layer_norm(
            flex_half(data, &[3, 4]),
            flex_half(gamma_data, &[4]),
            Some(flex_half(beta_data, &[4])),
            eps as f64,
        );
        fused.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected_f32, vec![3, 4]),
            Tolerance::absolute(3e-2),
        );
    }

    #[test]
    fn test_layer_norm_f16_via_f32_cast() {
        check_layer_norm_half_precision::<f16>(f16::from_f32, DType::F16);
    }

    #[test]
    fn test_layer_norm_bf16_via_f32_cast() {
        check_layer_norm_half_precision::<bf16>(bf16::from_f32, DType::BF16);
    }

    #[test]
    #[should_panic(expected = "softmax dim")]
    fn test_softmax_dim_out_of_range_panics() {
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let _ = crate::ops::activation::softmax(t, 2);
    }

    #[test]
    #[should_panic(expected = "gamma dtype")]
    fn test_layer_norm_gamma_dtype_mismatch_panics() {
        // Input f32, gamma f64: layer_norm rejects the mismatch up front
        // rather than panicking later inside the storage-typed access.
        let t = flex_f32(vec![1.0, 2.0, 3.0, 4.0], &[1, 4]);
        let gamma = flex_f64(vec![1.0; 4], &[4]);
        let _ = crate::ops::activation::layer_norm(t, gamma, None, 1e-5);
    }

    /// Causal softmax of `[batch, q, k]` scores, row by row in f64: row `i` sees `i + 1 + k − q`
    /// keys; the rest are 0.
    fn causal_softmax_ref(data: &[f32], q: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; data.len()];
        for (r, (i, o)) in data.chunks(k).zip(out.chunks_mut(k)).enumerate() {
            let seen = r % q + 1 + k - q;
            let row: Vec<f64> = i[..seen].iter().map(|&x| x as f64).collect();
            let mut probs = vec![0.0f64; seen];
            softmax_row(&row, &mut probs);
            for (o, p) in o.iter_mut().zip(probs) {
                *o = p as f32;
            }
        }
        out
    }

    #[test]
    fn test_causal_softmax_masks_each_rows_future_across_chunks() {
        // 3 matrices of 50 rows: 150 rows > SOFTMAX_ROWS_PER_TASK, so chunks start mid-matrix;
        // rows of 37 keys (q < k) cover the SIMD body and a scalar tail.
        let (b, q, k) = (3, 50, 37 + 13);
        for (q, k) in [(q, k), (q - 13, k)] {
            let data: Vec<f32> = (0..b * q * k)
                .map(|i| ((i * 7919 % 113) as f32) * 0.07 - 3.0)
                .collect();
            let expected = causal_softmax_ref(&data, q, k);
            let got = crate::ops::activation::causal_softmax_f32(flex_f32(data, &[b, q, k]));
            let got = got.into_data();
            let got: &[f32] = got.as_slice().unwrap();
            for (r, (g, e)) in got.chunks(k).zip(expected.chunks(k)).enumerate() {
                let seen = r % q + 1 + k - q;
                assert!(
                    g[seen..].iter().all(|&v| v == 0.0),
                    "row {r}: masked keys not 0"
                );
                for (j, (g, e)) in g.iter().zip(e).enumerate() {
                    assert!((g - e).abs() <= 1e-6, "row {r}, key {j}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn test_softmax_backward_matches_the_jacobian_product() {
        // dx_j = Σ_i g_i ∂y_i/∂x_j = y_j (g_j − Σ_i g_i y_i), summed in f64 here.
        let (rows, len) = (130, 45);
        let x: Vec<f32> = (0..rows * len)
            .map(|i| ((i * 31 % 97) as f32) * 0.05)
            .collect();
        let g: Vec<f32> = (0..rows * len)
            .map(|i| ((i * 17 % 89) as f32) * 0.03 - 1.0)
            .collect();
        let y = softmax_last_ref(&x, len);
        let mut expected = vec![0.0f32; y.len()];
        for ((y, g), e) in y
            .chunks(len)
            .zip(g.chunks(len))
            .zip(expected.chunks_mut(len))
        {
            for j in 0..len {
                let mut dx = 0.0f64;
                for i in 0..len {
                    let dyi_dxj = if i == j {
                        y[i] as f64 * (1.0 - y[j] as f64)
                    } else {
                        -(y[i] as f64) * y[j] as f64
                    };
                    dx += g[i] as f64 * dyi_dxj;
                }
                e[j] = dx as f32;
            }
        }
        let y_t = flex_f32(y, &[rows, len]);
        // A gradient shared with another owner is copied, never written through.
        let g_t = flex_f32(g.clone(), &[rows, len]);
        let shared = g_t.clone();
        let dx = crate::ops::activation::softmax_backward_f32(y_t.clone(), g_t);
        dx.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected.clone(), vec![rows, len]),
            Tolerance::absolute(1e-6),
        );
        assert_eq!(shared.into_data().as_slice::<f32>().unwrap(), &g[..]);
        // A gradient it owns alone is written in place, with the same result.
        let dx = crate::ops::activation::softmax_backward_f32(y_t, flex_f32(g, &[rows, len]));
        dx.into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, vec![rows, len]),
            Tolerance::absolute(1e-6),
        );
    }

    #[test]
    fn test_layer_norm_train_and_backward_match_the_jacobian_in_f64() {
        // 70 rows > LAYER_NORM_ROWS_PER_TASK (32): the weight and bias sums add three tasks'
        // partial sums; rows of 37 cover the SIMD body and a tail.
        let (rows, d, eps) = (70, 37, 1e-5);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919 % 101) as f32) * 0.03 - 1.5)
            .collect();
        let w: Vec<f32> = (0..d).map(|j| 0.5 + j as f32 * 0.05).collect();
        let b: Vec<f32> = (0..d).map(|j| j as f32 * 0.01 - 0.2).collect();
        let g: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 31 % 89) as f32) * 0.02 - 0.9)
            .collect();
        let (y, xhat, rstd) = crate::ops::activation::layer_norm_train_f32(
            flex_f32(x.clone(), &[rows, d]),
            flex_f32(w.clone(), &[d]),
            flex_f32(b.clone(), &[d]),
            eps,
        );
        assert_eq!(rstd.layout().shape().to_vec(), [rows, 1]);
        let backward = |param_grads| {
            crate::ops::activation::layer_norm_backward_f32(
                xhat.clone(),
                rstd.clone(),
                flex_f32(w.clone(), &[d]),
                flex_f32(g.clone(), &[rows, d]),
                param_grads,
            )
        };
        let (dx, params) = backward(true);
        let (dx_frozen, none) = backward(false);
        assert!(none.is_none(), "parameter gradients nobody asked for");
        let (dw, db) = params.expect("the parameters' gradients");
        let f = |t: FlexTensor| t.into_data().try_into_vec::<f32>().unwrap();
        let (y, xhat, rstd, dx, dw, db) = (f(y), f(xhat), f(rstd), f(dx), f(dw), f(db));
        assert_eq!(dx, f(dx_frozen), "the input gradient depends on the parameters'");
        let mut want_dw = vec![0.0f64; d];
        let mut want_db = vec![0.0f64; d];
        for r in 0..rows {
            let row: Vec<f64> = x[r * d..][..d].iter().map(|&v| v as f64).collect();
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let rs = 1.0 / (var + eps).sqrt();
            assert!((rstd[r] as f64 - rs).abs() <= 1e-5 * rs, "row {r}: rstd");
            let xh: Vec<f64> = row.iter().map(|v| (v - mean) * rs).collect();
            let gr = &g[r * d..][..d];
            for j in 0..d {
                let at = r * d + j;
                assert!((xhat[at] as f64 - xh[j]).abs() <= 1e-5, "x̂[{r},{j}]");
                let want_y = xh[j] * w[j] as f64 + b[j] as f64;
                assert!((y[at] as f64 - want_y).abs() <= 1e-5, "y[{r},{j}]");
                // ∂x̂_i/∂x_j = rstd (δ_ij − 1/d − x̂_i x̂_j / d)
                let mut want_dx = 0.0f64;
                for i in 0..d {
                    let delta = if i == j { 1.0 } else { 0.0 };
                    let jac = rs * (delta - 1.0 / d as f64 - xh[i] * xh[j] / d as f64);
                    want_dx += gr[i] as f64 * w[i] as f64 * jac;
                }
                assert!(
                    (dx[at] as f64 - want_dx).abs() <= 1e-4,
                    "dx[{r},{j}]: {} vs {want_dx}",
                    dx[at]
                );
                want_dw[j] += gr[j] as f64 * xh[j];
                want_db[j] += gr[j] as f64;
            }
        }
        for j in 0..d {
            assert!((dw[j] as f64 - want_dw[j]).abs() <= 1e-4, "dweight[{j}]");
            assert!((db[j] as f64 - want_db[j]).abs() <= 1e-4, "dbias[{j}]");
        }
    }

    #[test]
    fn test_rms_norm_train_and_backward_match_the_jacobian_in_f64() {
        // 70 rows > LAYER_NORM_ROWS_PER_TASK (32): the weight sum adds three tasks' partial
        // sums; rows of 37 cover the SIMD body and a tail.
        let (rows, d, eps) = (70, 37, 1e-6);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919 % 101) as f32) * 0.03 - 1.5)
            .collect();
        let w: Vec<f32> = (0..d).map(|j| 0.5 + j as f32 * 0.05).collect();
        let g: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 31 % 89) as f32) * 0.02 - 0.9)
            .collect();
        let (y, rstd) = crate::ops::activation::rms_norm_train_f32(
            flex_f32(x.clone(), &[rows, d]),
            flex_f32(w.clone(), &[d]),
            eps,
        );
        assert_eq!(rstd.layout().shape().to_vec(), [rows, 1]);
        let backward = |weight_grad| {
            crate::ops::activation::rms_norm_backward_f32(
                flex_f32(x.clone(), &[rows, d]),
                rstd.clone(),
                flex_f32(w.clone(), &[d]),
                flex_f32(g.clone(), &[rows, d]),
                weight_grad,
            )
        };
        let (dx, dw) = backward(true);
        let (dx_frozen, none) = backward(false);
        assert!(none.is_none(), "a weight gradient nobody asked for");
        let f = |t: FlexTensor| t.into_data().try_into_vec::<f32>().unwrap();
        let dw = f(dw.expect("the weight gradient"));
        let (y, rstd, dx, dx_frozen) = (f(y), f(rstd.clone()), f(dx), f(dx_frozen));
        assert_eq!(dx, dx_frozen, "the input gradient depends on the weight's");
        let mut want_dw = vec![0.0f64; d];
        for r in 0..rows {
            let row: Vec<f64> = x[r * d..][..d].iter().map(|&v| v as f64).collect();
            let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let rs = 1.0 / (ms + eps).sqrt();
            assert!((rstd[r] as f64 - rs).abs() <= 1e-5 * rs, "row {r}: rstd");
            let gr = &g[r * d..][..d];
            for j in 0..d {
                let at = r * d + j;
                let want_y = row[j] * rs * w[j] as f64;
                assert!((y[at] as f64 - want_y).abs() <= 1e-5, "y[{r},{j}]");
                // ∂(x_i rstd)/∂x_j = rstd (δ_ij − x_i x_j rstd² / d)
                let mut want_dx = 0.0f64;
                for i in 0..d {
                    let delta = if i == j { 1.0 } else { 0.0 };
                    let jac = rs * (delta - row[i] * row[j] * rs * rs / d as f64);
                    want_dx += gr[i] as f64 * w[i] as f64 * jac;
                }
                assert!(
                    (dx[at] as f64 - want_dx).abs() <= 1e-4,
                    "dx[{r},{j}]: {} vs {want_dx}",
                    dx[at]
                );
                want_dw[j] += gr[j] as f64 * row[j] * rs;
            }
        }
        for j in 0..d {
            assert!((dw[j] as f64 - want_dw[j]).abs() <= 1e-4, "dweight[{j}]");
        }
    }
}
