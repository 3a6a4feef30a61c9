//! f32 matrix-vector products for one-row matrix products (a decoding step's token).
//!
//! `gemm` runs `m = 1` as a loop over the rows of the right-hand side that reads and writes the
//! whole output once per row. [`row_times_rows_f32`] takes 8 rows per pass over the output
//! (4 registers of output at a time, 8 weight streams), and [`row_times_cols_f32`] computes 4
//! dot products at once for a right-hand side stored by columns (the tied head's `Eᵀ`). On
//! the 2-core AVX-512 machine of `docs/benchmarks.md`, one token through OPT-125m's 72 layer
//! products (2 threads, split by rows) took 15.5 ms against `gemm`'s 20.8 ms, and the 154 MB
//! head 5.2 ms against 7.4 ms, in a standalone probe of the two kernels.
//!
//! Both accumulate each output in order of the depth index with fused multiply-adds, as
//! `gemm`'s matrix-vector loop does for rows (bit-identical to it there); the dot products
//! sum 4 partial vectors at the end.

use macerator::{Scalar, Simd, VMulAdd, vload_unaligned, vstore_unaligned};

/// Rows of the right-hand side per pass over the output.
const ROWS: usize = 8;

/// `y = x · W` for a row-major `W` of `x.len()` rows of `y.len()` elements, row `i` starting at
/// `w[i * w_rs]`.
///
/// # Panics
/// If `w` is shorter than its last row's end.
pub fn row_times_rows_f32(x: &[f32], w: &[f32], w_rs: usize, y: &mut [f32]) {
    let (k, n) = (x.len(), y.len());
    if k > 0 {
        assert!(
            w.len() >= (k - 1) * w_rs + n,
            "row_times_rows_f32: `w` too short"
        );
    }
    rows_simd(x, w, w_rs, y);
}

#[macerator::with_simd]
fn rows_simd<S: Simd>(x: &[f32], w: &[f32], w_rs: usize, y: &mut [f32]) {
    let (k, n) = (x.len(), y.len());
    let lanes = f32::lanes::<S>();
    let block = 4 * lanes;
    y.fill(0.0);
    let mut i = 0;
    while i + ROWS <= k {
        let xs: [_; ROWS] = core::array::from_fn(|r| x[i + r].splat::<S>());
        let rows: [&[f32]; ROWS] = core::array::from_fn(|r| &w[(i + r) * w_rs..][..n]);
        let mut j = 0;
        while j + block <= n {
            let out = &mut y[j..j + block];
            // SAFETY: `out` and every `rows[r][j..j + block]` hold `4 · lanes` elements.
            unsafe {
                let o = out.as_mut_ptr();
                let mut a0 = vload_unaligned::<S, f32>(o);
                let mut a1 = vload_unaligned::<S, f32>(o.add(lanes));
                let mut a2 = vload_unaligned::<S, f32>(o.add(2 * lanes));
                let mut a3 = vload_unaligned::<S, f32>(o.add(3 * lanes));
                for r in 0..ROWS {
                    let p = rows[r][j..j + block].as_ptr();
                    a0 = f32::vmul_add(xs[r], vload_unaligned(p), a0);
                    a1 = f32::vmul_add(xs[r], vload_unaligned(p.add(lanes)), a1);
                    a2 = f32::vmul_add(xs[r], vload_unaligned(p.add(2 * lanes)), a2);
                    a3 = f32::vmul_add(xs[r], vload_unaligned(p.add(3 * lanes)), a3);
                }
                vstore_unaligned(o, a0);
                vstore_unaligned(o.add(lanes), a1);
                vstore_unaligned(o.add(2 * lanes), a2);
                vstore_unaligned(o.add(3 * lanes), a3);
            }
            j += block;
        }
        for (jj, out) in y.iter_mut().enumerate().skip(j) {
            for (r, row) in rows.iter().enumerate() {
                *out = x[i + r].mul_add(row[jj], *out);
            }
        }
        i += ROWS;
    }
    for (xi, start) in x.iter().zip((0..k).map(|i| i * w_rs)).skip(i) {
        for (out, &wv) in y.iter_mut().zip(&w[start..start + n]) {
            *out = xi.mul_add(wv, *out);
        }
    }
}

/// `y[j] = x · W[.., j]` for a `W` stored by columns: column `j` is `w[j * w_cs..][..x.len()]`.
///
/// # Panics
/// If `w` is shorter than its last column's end.
pub fn row_times_cols_f32(x: &[f32], w: &[f32], w_cs: usize, y: &mut [f32]) {
    let (k, n) = (x.len(), y.len());
    if n > 0 {
        assert!(
            w.len() >= (n - 1) * w_cs + k,
            "row_times_cols_f32: `w` too short"
        );
    }
    cols_simd(x, w, w_cs, y);
}

#[macerator::with_simd]
fn cols_simd<S: Simd>(x: &[f32], w: &[f32], w_cs: usize, y: &mut [f32]) {
    const COLS: usize = 4;
    let (k, n) = (x.len(), y.len());
    let lanes = f32::lanes::<S>();
    let whole = k / lanes * lanes;
    let column = |j: usize| &w[j * w_cs..][..k];
    let mut j = 0;
    while j + COLS <= n {
        let cols: [&[f32]; COLS] = core::array::from_fn(|c| column(j + c));
        let mut acc = [0f32.splat::<S>(); COLS];
        let mut i = 0;
        while i < whole {
            // SAFETY: `i + lanes <= k`, the length of `x` and of every column.
            unsafe {
                let xv = vload_unaligned::<S, f32>(x.as_ptr().add(i));
                for (a, col) in acc.iter_mut().zip(&cols) {
                    *a = f32::vmul_add(xv, vload_unaligned(col.as_ptr().add(i)), *a);
                }
            }
            i += lanes;
        }
        for (c, col) in cols.iter().enumerate() {
            let tail: f32 = x[whole..]
                .iter()
                .zip(&col[whole..])
                .map(|(a, b)| a * b)
                .sum();
            y[j + c] = acc[c].reduce_add() + tail;
        }
        j += COLS;
    }
    for (jj, out) in y.iter_mut().enumerate().skip(j) {
        *out = x.iter().zip(column(jj)).map(|(a, b)| a * b).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 31 + seed * 7) % 17) as f32 * 0.05 - 0.4)
            .collect()
    }

    fn check(got: &[f32], want: &[f64], what: &str) {
        for (j, (&g, &e)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{what} col {j}: {g} vs {e}"
            );
        }
    }

    #[test]
    fn rows_match_a_f64_reference_at_every_tail() {
        // Depths around the 8-row pass, widths around the 4-register block (64 with AVX-512,
        // 32 with AVX2), a row stride wider than the row.
        for (k, n, w_rs) in [
            (0, 5, 5),
            (1, 1, 1),
            (7, 63, 63),
            (8, 64, 64),
            (17, 129, 131),
            (771, 701, 701),
        ] {
            let (x, w) = (data(k, 1), data(k * w_rs + n, 2));
            let want: Vec<f64> = (0..n)
                .map(|j| (0..k).map(|i| x[i] as f64 * w[i * w_rs + j] as f64).sum())
                .collect();
            let mut y = vec![f32::NAN; n];
            row_times_rows_f32(&x, &w, w_rs, &mut y);
            check(&y, &want, &alloc::format!("rows {k}×{n}"));
        }
    }

    #[test]
    fn cols_match_a_f64_reference_at_every_tail() {
        for (k, n, w_cs) in [
            (0, 3, 0),
            (1, 1, 1),
            (15, 3, 15),
            (16, 4, 16),
            (33, 9, 40),
            (771, 701, 771),
        ] {
            let (x, w) = (data(k, 3), data(n * w_cs + k, 4));
            let want: Vec<f64> = (0..n)
                .map(|j| (0..k).map(|i| x[i] as f64 * w[j * w_cs + i] as f64).sum())
                .collect();
            let mut y = vec![f32::NAN; n];
            row_times_cols_f32(&x, &w, w_cs, &mut y);
            check(&y, &want, &alloc::format!("cols {k}×{n}"));
        }
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn rows_reject_a_short_weight() {
        row_times_rows_f32(&[1.0; 4], &[0.0; 10], 3, &mut [0.0; 3]);
    }
}
