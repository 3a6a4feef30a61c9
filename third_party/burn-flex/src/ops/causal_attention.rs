//! Causal attention for a training step (f32): the forward with each query row's log-sum-exp,
//! and the backward from it, per (batch, head), with the masked blocks skipped.
//!
//! burn-autodiff runs attention as its products, a mask and a softmax, and keeps the
//! `[batch, heads, q, k]` probabilities for the backward. These kernels let an autodiff wrapper
//! run it as one node that keeps only the output and one log-sum-exp per query row (as
//! FlashAttention-2 does): the backward recomputes each block's scores. A head's query rows go in
//! blocks of [`ROWS`]; a block's products cover only the keys its last row sees, so about
//! `(1 + 1/blocks) / 2` of the full products are run. One rayon task per (batch, head), each
//! product single-threaded. Inputs are read through their strides (the heads split from a
//! `[batch, seq, heads·dim]` projection need no copy) and outputs are written `[batch, seq,
//! heads, dim]` in memory, returned as `[batch, heads, seq, dim]` views, so that merging the
//! heads back is free.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// Query rows per block.
const ROWS: usize = 64;

/// A `[batch, heads, seq, dim]` f32 tensor read through its strides (in elements; the last is 1).
struct Heads {
    tensor: FlexTensor,
    dims: [usize; 4],
    offset: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
}

impl Heads {
    fn new(tensor: FlexTensor, what: &str) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "causal_attention: {what} not f32");
        let shape = tensor.layout().shape().clone();
        assert_eq!(shape.num_dims(), 4, "causal_attention: {what} is not 4-D");
        let dims = [shape[0], shape[1], shape[2], shape[3]];
        let strides = tensor.layout().strides();
        // A unit inner stride and non-negative strides; anything else is copied contiguous.
        let usable = (dims[3] <= 1 || strides[3] == 1) && strides.iter().all(|&s| s >= 0);
        let tensor = if usable {
            tensor
        } else {
            tensor.to_contiguous()
        };
        let strides = tensor.layout().strides().to_vec();
        Self {
            offset: tensor.layout().start_offset(),
            batch_stride: strides[0] as usize,
            head_stride: strides[1] as usize,
            row_stride: strides[2] as usize,
            dims,
            tensor,
        }
    }

    fn data(&self) -> &[f32] {
        self.tensor.storage()
    }

    /// The offset of head `(b, h)`'s first row.
    fn head(&self, b: usize, h: usize) -> usize {
        self.offset + b * self.batch_stride + h * self.head_stride
    }
}

/// A buffer `[batch, seq, heads, dim]` in memory, viewed `[batch, heads, seq, dim]`.
fn head_major_view(data: Vec<f32>, [batch, heads, seq, dim]: [usize; 4]) -> FlexTensor {
    let strides = vec![
        (seq * heads * dim) as isize,
        dim as isize,
        (heads * dim) as isize,
        1,
    ];
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::new(Shape::from(vec![batch, heads, seq, dim]), strides, 0),
        DType::F32,
    )
}

/// A raw pointer handed to the tasks; each task writes only its own head's rows.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks write disjoint elements (one head each).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so that closures capture the `Send` wrapper, not its field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst[m×n] = (read ? dst : 0) + beta · lhs[m×k] · rhs[k×n]`, strides in elements
/// (`rs` between rows, `cs` between columns), on the calling thread.
///
/// # Safety
/// Every pointer valid for its extent.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize),
    read: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1 as isize,
            read,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            if read { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[inline(always)]
fn exp(x: f32) -> f32 {
    #[cfg(feature = "simd")]
    {
        crate::simd::exp::exp_f32(x)
    }
    #[cfg(not(feature = "simd"))]
    {
        x.exp()
    }
}

/// Forward rows of a block: `row[..seen]` softmaxed in place, `row[seen..]` zeroed; returns each
/// row's log-sum-exp into `lse`. `seen(i)` is the number of keys row `i` sees.
fn softmax_rows(scores: &mut [f32], row_len: usize, first_seen: usize, lse: &mut [f32]) {
    #[cfg(feature = "simd")]
    softmax_rows_simd(scores, row_len, first_seen, lse);
    #[cfg(not(feature = "simd"))]
    softmax_rows_seq(scores, row_len, first_seen, lse);
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn softmax_rows_simd<S: macerator::Simd>(
    scores: &mut [f32],
    row_len: usize,
    first_seen: usize,
    lse: &mut [f32],
) {
    softmax_rows_seq(scores, row_len, first_seen, lse);
}

#[inline(always)]
fn softmax_rows_seq(scores: &mut [f32], row_len: usize, first_seen: usize, lse: &mut [f32]) {
    for (i, (row, lse)) in scores.chunks_exact_mut(row_len).zip(lse).enumerate() {
        let (row, masked) = row.split_at_mut(first_seen + i);
        masked.fill(0.0);
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut acc = [0.0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            for (a, x) in acc.iter_mut().zip(c) {
                *x = exp(*x - max);
                *a += *x;
            }
        }
        let mut sum: f32 = 0.0;
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        sum += acc.iter().sum::<f32>();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
        *lse = max + sum.ln();
    }
}

/// Backward rows of a block: `p[..seen] = e^(s − lse)` (0 after), then
/// `ds = p ⊙ (dp − D)` in `dp` (0 after `seen`).
fn grad_rows(p: &mut [f32], dp: &mut [f32], row_len: usize, seen: usize, lse: &[f32], dot: &[f32]) {
    #[cfg(feature = "simd")]
    grad_rows_simd(p, dp, row_len, seen, lse, dot);
    #[cfg(not(feature = "simd"))]
    grad_rows_seq(p, dp, row_len, seen, lse, dot);
}

#[cfg(feature = "simd")]
#[macerator::with_simd]
fn grad_rows_simd<S: macerator::Simd>(
    p: &mut [f32],
    dp: &mut [f32],
    row_len: usize,
    first_seen: usize,
    lse: &[f32],
    dot: &[f32],
) {
    grad_rows_seq(p, dp, row_len, first_seen, lse, dot);
}

#[inline(always)]
fn grad_rows_seq(
    p: &mut [f32],
    dp: &mut [f32],
    row_len: usize,
    first_seen: usize,
    lse: &[f32],
    dot: &[f32],
) {
    let rows = p.chunks_exact_mut(row_len).zip(dp.chunks_exact_mut(row_len));
    for (i, ((p, dp), (&lse, &dot))) in rows.zip(lse.iter().zip(dot)).enumerate() {
        let seen = first_seen + i;
        p[seen..].fill(0.0);
        dp[seen..].fill(0.0);
        for (p, dp) in p[..seen].iter_mut().zip(&mut dp[..seen]) {
            *p = exp(*p - lse);
            *dp = *p * (*dp - dot);
        }
    }
}

/// The causal softmax attention of f32 `q` `[batch, heads, q_len, dim]` over `k`
/// `[batch, heads, k_len, dim]` and `v` `[batch, heads, k_len, v_dim]`:
/// `softmax(scale · q·kᵀ + mask)·v`, query `i` (the last `q_len` of `k_len` positions) seeing
/// keys `0..=i + k_len − q_len`. Returns the output `[batch, heads, q_len, v_dim]` (a view of a
/// `[batch, q_len, heads, v_dim]` buffer) and each query row's log-sum-exp of its scaled scores
/// `[batch, heads, q_len]`, which [`causal_attention_backward_f32`] takes.
///
/// # Panics
/// If a tensor is not f32 or 4-D, the shapes disagree, or `q_len > k_len`.
pub fn causal_attention_f32(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    scale: f32,
) -> (FlexTensor, FlexTensor) {
    let (q, k, v) = (
        Heads::new(q, "query"),
        Heads::new(k, "key"),
        Heads::new(v, "value"),
    );
    let [batch, heads, q_len, dim] = q.dims;
    let k_len = check_shapes(&q, &k, &v);
    let v_dim = v.dims[3];
    let mut out = vec![0.0f32; batch * heads * q_len * v_dim];
    let mut lse = vec![0.0f32; batch * heads * q_len];
    let offset = k_len - q_len;
    let (out_ptr, out_rs) = (Out(out.as_mut_ptr()), heads * v_dim);

    let run = |scores: &mut Vec<f32>, (bh, lse): (usize, &mut [f32])| {
        let (b, h) = (bh / heads, bh % heads);
        let (qd, kd, vd) = (q.data(), k.data(), v.data());
        let (q0, k0, v0) = (q.head(b, h), k.head(b, h), v.head(b, h));
        let out_head = b * q_len * heads * v_dim + h * v_dim;
        for r0 in (0..q_len).step_by(ROWS) {
            let rows = ROWS.min(q_len - r0);
            let keys = (r0 + rows + offset).min(k_len);
            let block = &mut scores[..rows * keys];
            // SAFETY: every extent lies inside its tensor's buffer (shapes checked above).
            unsafe {
                product(
                    [rows, keys, dim],
                    (block.as_mut_ptr(), keys),
                    false,
                    (qd.as_ptr().add(q0 + r0 * q.row_stride), q.row_stride as isize, 1),
                    (kd.as_ptr().add(k0), 1, k.row_stride as isize),
                    scale,
                );
            }
            softmax_rows(block, keys, r0 + offset + 1, &mut lse[r0..r0 + rows]);
            // SAFETY: as above; this task alone writes head (b, h)'s output rows.
            unsafe {
                product(
                    [rows, v_dim, keys],
                    (out_ptr.at(out_head + r0 * out_rs), out_rs),
                    false,
                    (block.as_ptr(), keys as isize, 1),
                    (vd.as_ptr().add(v0), v.row_stride as isize, 1),
                    1.0,
                );
            }
        }
    };
    let scratch = || vec![0.0f32; ROWS.min(q_len) * k_len];
    if q_len > 0 && dim > 0 {
        let work = q_len * k_len * (dim + v_dim);
        for_each_head(&mut lse, q_len, work, scratch, run);
    }
    (
        head_major_view(out, [batch, heads, q_len, v_dim]),
        FlexTensor::new(
            Bytes::from_elems(lse),
            Layout::contiguous(Shape::from(vec![batch, heads, q_len])),
            DType::F32,
        ),
    )
}

/// The gradients `(dq, dk, dv)` of [`causal_attention_f32`] from its inputs, its output, its
/// log-sum-exp and the output's gradient `grad`. The scores are recomputed block by block;
/// the gradients are views of `[batch, seq, heads, dim]` buffers.
///
/// # Panics
/// As [`causal_attention_f32`], or if `out`, `lse` or `grad` do not have the output's shapes.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward_f32(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: FlexTensor,
    grad: FlexTensor,
    scale: f32,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (q, k, v) = (
        Heads::new(q, "query"),
        Heads::new(k, "key"),
        Heads::new(v, "value"),
    );
    let (out, grad) = (Heads::new(out, "output"), Heads::new(grad, "gradient"));
    let [batch, heads, q_len, dim] = q.dims;
    let k_len = check_shapes(&q, &k, &v);
    let v_dim = v.dims[3];
    for t in [&out, &grad] {
        assert_eq!(
            t.dims,
            [batch, heads, q_len, v_dim],
            "causal_attention_backward: output or gradient shape"
        );
    }
    assert_eq!(lse.dtype(), DType::F32, "causal_attention_backward: lse not f32");
    assert_eq!(
        lse.layout().shape().to_vec(),
        [batch, heads, q_len],
        "causal_attention_backward: lse shape"
    );
    let lse = lse.to_contiguous();
    let lse: &[f32] = lse.as_slice().expect("contiguous");
    let mut dq = vec![0.0f32; batch * heads * q_len * dim];
    let mut dk = vec![0.0f32; batch * heads * k_len * dim];
    let mut dv = vec![0.0f32; batch * heads * k_len * v_dim];
    let (dq_ptr, dk_ptr, dv_ptr) = (Out(dq.as_mut_ptr()), Out(dk.as_mut_ptr()), Out(dv.as_mut_ptr()));
    let offset = k_len - q_len;
    // Each head's row dots D_r = Σ_c grad[r, c] · out[r, c], computed by its task.
    let mut dots = vec![0.0f32; batch * heads * q_len];

    let run = |(p, ds): &mut (Vec<f32>, Vec<f32>), (bh, dot): (usize, &mut [f32])| {
        let (b, h) = (bh / heads, bh % heads);
        let (qd, kd, vd, od, gd) = (q.data(), k.data(), v.data(), out.data(), grad.data());
        let (q0, k0, v0, o0, g0) = (
            q.head(b, h),
            k.head(b, h),
            v.head(b, h),
            out.head(b, h),
            grad.head(b, h),
        );
        for (r, d) in dot.iter_mut().enumerate() {
            let (o, g) = (o0 + r * out.row_stride, g0 + r * grad.row_stride);
            *d = od[o..o + v_dim]
                .iter()
                .zip(&gd[g..g + v_dim])
                .map(|(&o, &g)| o * g)
                .sum();
        }
        let lse = &lse[bh * q_len..(bh + 1) * q_len];
        let (dq_rs, dk_rs, dv_rs) = (heads * dim, heads * dim, heads * v_dim);
        let dq_head = b * q_len * dq_rs + h * dim;
        let dk_head = b * k_len * dk_rs + h * dim;
        let dv_head = b * k_len * dv_rs + h * v_dim;
        // The last block sees every key: it writes dk and dv whole, the blocks before add.
        let mut first = true;
        for r0 in (0..q_len).step_by(ROWS).rev() {
            let rows = ROWS.min(q_len - r0);
            let keys = (r0 + rows + offset).min(k_len);
            let (p, ds) = (&mut p[..rows * keys], &mut ds[..rows * keys]);
            let q_blk = unsafe { qd.as_ptr().add(q0 + r0 * q.row_stride) };
            let g_blk = unsafe { gd.as_ptr().add(g0 + r0 * grad.row_stride) };
            let (q_rs, g_rs) = (q.row_stride as isize, grad.row_stride as isize);
            // SAFETY: every extent lies inside its tensor's buffer (shapes checked above), and
            // this task alone writes head (b, h)'s gradient rows.
            unsafe {
                // Scores (into p), then dp = grad · vᵀ (into ds).
                product(
                    [rows, keys, dim],
                    (p.as_mut_ptr(), keys),
                    false,
                    (q_blk, q_rs, 1),
                    (kd.as_ptr().add(k0), 1, k.row_stride as isize),
                    scale,
                );
                product(
                    [rows, keys, v_dim],
                    (ds.as_mut_ptr(), keys),
                    false,
                    (g_blk, g_rs, 1),
                    (vd.as_ptr().add(v0), 1, v.row_stride as isize),
                    1.0,
                );
            }
            grad_rows(
                p,
                ds,
                keys,
                r0 + offset + 1,
                &lse[r0..r0 + rows],
                &dot[r0..r0 + rows],
            );
            unsafe {
                // dv[..keys] += pᵀ · grad
                product(
                    [keys, v_dim, rows],
                    (dv_ptr.at(dv_head), dv_rs),
                    !first,
                    (p.as_ptr(), 1, keys as isize),
                    (g_blk, g_rs, 1),
                    1.0,
                );
                // dq = scale · ds · k
                product(
                    [rows, dim, keys],
                    (dq_ptr.at(dq_head + r0 * dq_rs), dq_rs),
                    false,
                    (ds.as_ptr(), keys as isize, 1),
                    (kd.as_ptr().add(k0), k.row_stride as isize, 1),
                    scale,
                );
                // dk[..keys] += scale · dsᵀ · q
                product(
                    [keys, dim, rows],
                    (dk_ptr.at(dk_head), dk_rs),
                    !first,
                    (ds.as_ptr(), 1, keys as isize),
                    (q_blk, q_rs, 1),
                    scale,
                );
            }
            first = false;
        }
    };
    let n = ROWS.min(q_len) * k_len;
    let scratch = || (vec![0.0f32; n], vec![0.0f32; n]);
    if q_len > 0 && dim > 0 {
        let work = q_len * k_len * (2 * dim + 2 * v_dim);
        for_each_head(&mut dots, q_len, work, scratch, run);
    }
    (
        head_major_view(dq, [batch, heads, q_len, dim]),
        head_major_view(dk, [batch, heads, k_len, dim]),
        head_major_view(dv, [batch, heads, k_len, v_dim]),
    )
}

/// Checks the shapes of `q`, `k`, `v`; returns `k_len`.
fn check_shapes(q: &Heads, k: &Heads, v: &Heads) -> usize {
    let [batch, heads, q_len, dim] = q.dims;
    let k_len = k.dims[2];
    assert_eq!(
        k.dims,
        [batch, heads, k_len, dim],
        "causal_attention: key shape {:?} against query {:?}",
        k.dims,
        q.dims
    );
    assert_eq!(
        v.dims[..3],
        [batch, heads, k_len],
        "causal_attention: value shape {:?} against key {:?}",
        v.dims,
        k.dims
    );
    assert!(
        q_len <= k_len,
        "causal_attention: {q_len} queries > {k_len} keys"
    );
    k_len
}

/// Fewest multiply-adds (all heads together) for which the heads run on rayon's pool: below
/// it, handing them to the pool costs more than it saves (a decoding step's token against a
/// short cache: one query row per head).
#[cfg(feature = "rayon")]
const PARALLEL_WORK: usize = 1 << 18;

/// Runs `run(scratch, (head, rows))` for every (batch, head), `rows` being that head's
/// `per_head` entries of `per_row`; on rayon's pool with one scratch per task when there is
/// more than one head and the heads' `work_per_head` multiply-adds come to
/// [`PARALLEL_WORK`], else in order on the calling thread.
fn for_each_head<T: Send>(
    per_row: &mut [f32],
    per_head: usize,
    work_per_head: usize,
    scratch: impl Fn() -> T + Sync + Send,
    run: impl Fn(&mut T, (usize, &mut [f32])) + Sync + Send,
) {
    #[cfg(feature = "rayon")]
    {
        let heads = per_row.len() / per_head.max(1);
        if heads > 1 && heads.saturating_mul(work_per_head) >= PARALLEL_WORK {
            use rayon::prelude::*;
            per_row
                .par_chunks_mut(per_head)
                .enumerate()
                .for_each_init(scratch, |s, job| run(s, job));
            return;
        }
    }
    #[cfg(not(feature = "rayon"))]
    let _ = work_per_head;
    let mut s = scratch();
    for job in per_row.chunks_mut(per_head).enumerate() {
        run(&mut s, job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 reference: scores, masked softmax, output; and the gradients by the chain rule.
    #[allow(clippy::type_complexity)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        [bh, ql, kl, d, vd]: [usize; 5],
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let off = kl - ql;
        let (mut out, mut lse) = (vec![0.0; bh * ql * vd], vec![0.0; bh * ql]);
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; bh * ql * d],
            vec![0.0; bh * kl * d],
            vec![0.0; bh * kl * vd],
        );
        for x in 0..bh {
            for i in 0..ql {
                let seen = i + off + 1;
                let s: Vec<f64> = (0..seen)
                    .map(|j| {
                        (0..d)
                            .map(|c| q[(x * ql + i) * d + c] as f64 * k[(x * kl + j) * d + c] as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|s| (s - m).exp()).sum();
                lse[x * ql + i] = m + sum.ln();
                let p: Vec<f64> = s.iter().map(|s| (s - m).exp() / sum).collect();
                for c in 0..vd {
                    out[(x * ql + i) * vd + c] =
                        (0..seen).map(|j| p[j] * v[(x * kl + j) * vd + c] as f64).sum();
                }
                let gi = |c: usize| g[(x * ql + i) * vd + c] as f64;
                let dp: Vec<f64> = (0..seen)
                    .map(|j| (0..vd).map(|c| gi(c) * v[(x * kl + j) * vd + c] as f64).sum())
                    .collect();
                let dot: f64 = (0..seen).map(|j| p[j] * dp[j]).sum();
                for j in 0..seen {
                    let ds = p[j] * (dp[j] - dot);
                    for c in 0..d {
                        dq[(x * ql + i) * d + c] += scale * ds * k[(x * kl + j) * d + c] as f64;
                        dk[(x * kl + j) * d + c] += scale * ds * q[(x * ql + i) * d + c] as f64;
                    }
                    for c in 0..vd {
                        dv[(x * kl + j) * vd + c] += p[j] * gi(c);
                    }
                }
            }
        }
        (out, lse, dq, dk, dv)
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed * 97);
                ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn contiguous(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::new(
            Bytes::from_elems(data),
            Layout::contiguous(Shape::from(shape.to_vec())),
            DType::F32,
        )
    }

    fn read(t: &FlexTensor) -> Vec<f32> {
        t.to_contiguous().as_slice::<f32>().expect("contiguous").to_vec()
    }

    fn assert_close(what: &str, ours: &[f32], want: &[f64]) {
        assert_eq!(ours.len(), want.len(), "{what}: length");
        for (i, (&a, &b)) in ours.iter().zip(want).enumerate() {
            assert!(
                (a as f64 - b).abs() <= 2e-5 * (1.0 + b.abs()),
                "{what}[{i}]: {a} against {b}"
            );
        }
    }

    /// Blocks of 64 rows with a partial last block, queries that are the last of more keys,
    /// a value width unlike the key width, and heads split by a transpose (strided input); on
    /// the pool (the first two) and in order on the calling thread (the last two, below
    /// `PARALLEL_WORK`, the last with several heads).
    #[test]
    fn forward_and_gradients_match_the_f64_reference() {
        for (b, h, ql, kl, d, vd) in [
            (2, 3, 150, 150, 8, 5),
            (1, 2, 70, 133, 16, 16),
            (1, 1, 1, 1, 4, 4),
            (2, 2, 3, 10, 4, 4),
        ] {
            let scale = 0.37;
            let (qv, kv, vv, gv) = (
                values(b * h * ql * d, 1),
                values(b * h * kl * d, 2),
                values(b * h * kl * vd, 3),
                values(b * h * ql * vd, 4),
            );
            let (out, lse, dq, dk, dv) = reference(&qv, &kv, &vv, &gv, [b * h, ql, kl, d, vd], scale);
            // q through a strided view: stored [b, ql, h, d], transposed to [b, h, ql, d].
            let mut q_bshd = vec![0.0; qv.len()];
            for x in 0..b * h {
                for i in 0..ql {
                    let (bb, hh) = (x / h, x % h);
                    let dst = ((bb * ql + i) * h + hh) * d;
                    q_bshd[dst..dst + d].copy_from_slice(&qv[(x * ql + i) * d..][..d]);
                }
            }
            let q = contiguous(q_bshd, [b, ql, h, d]).transpose(1, 2);
            let (k, v) = (contiguous(kv, [b, h, kl, d]), contiguous(vv, [b, h, kl, vd]));
            let (o, l) = causal_attention_f32(q.clone(), k.clone(), v.clone(), scale as f32);
            assert_close("out", &read(&o), &out);
            assert_close("lse", &read(&l), &lse);
            let g = contiguous(gv, [b, h, ql, vd]);
            let (gq, gk, gv) = causal_attention_backward_f32(q, k, v, o, l, g, scale as f32);
            assert_close("dq", &read(&gq), &dq);
            assert_close("dk", &read(&gk), &dk);
            assert_close("dv", &read(&gv), &dv);
        }
    }
}
