//! One-row product kernels (a decoding step's `[1, k] · [k, n]`) against `gemm`'s, on OPT-125m's
//! 72 layer weights (340 MB, streamed; `GEMV_MODEL=1.3b`: OPT-1.3b's 144, 4.8 GB) and its 154 MB
//! head; see Cargo.toml for how to run. `readsum` only reads the weights (the rate any kernel
//! could at best stream them at).
//! Variants: `panel8 fma` and `v*` take R weight rows per pass over the output (`v*` with explicit
//! vectors, `*pf` with software prefetch), `colblock` keeps column blocks in registers over the
//! whole depth, `head dot4` computes 4 dot products at once.

use macerator::Simd;
use std::time::Instant;

/// `y = x · W` through `gemm` (as burn-flex does for one piece), `W[i, j]` at `w[i·rs + j·cs]`.
fn gemm_one_row(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    (k, n): (usize, usize),
    (rs, cs): (usize, usize),
) {
    assert!(x.len() >= k && y.len() >= n && w.len() >= (k - 1) * rs + (n - 1) * cs + 1);
    // SAFETY: the extents are checked above.
    unsafe {
        gemm::gemm(
            1,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            cs as isize,
            rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

// y[n] = x[k] · W[k, n] (row-major).
fn via_gemm(x: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    gemm_one_row(x, w, y, (k, n), (n, 1))
}

#[macerator::with_simd]
fn panel<S: Simd>(x: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    const R: usize = 8;
    y.fill(0.0);
    let mut i = 0;
    while i + R <= k {
        let xs: [f32; R] = core::array::from_fn(|r| x[i + r]);
        let rows: [&[f32]; R] = core::array::from_fn(|r| &w[(i + r) * n..(i + r + 1) * n]);
        for j in 0..n {
            let mut s = y[j];
            for r in 0..R {
                s = xs[r].mul_add(rows[r][j], s);
            }
            y[j] = s;
        }
        i += R;
    }
    last_rows(x, w, y, i, n);
}

/// Adds rows `from..` of the row-major `w` (`n` wide), times `x`, to `y`.
fn last_rows(x: &[f32], w: &[f32], y: &mut [f32], from: usize, n: usize) {
    for (i, xi) in x.iter().enumerate().skip(from) {
        for (out, wv) in y.iter_mut().zip(&w[i * n..(i + 1) * n]) {
            *out = xi.mul_add(*wv, *out);
        }
    }
}

/// `a[t] += x · p[t·lanes..][..lanes]` for the 4 registers of a block.
///
/// # Safety
/// `p` addresses `4 · lanes` floats.
#[inline(always)]
unsafe fn fma_block<S: Simd>(
    a: &mut [macerator::Vector<S, f32>; 4],
    x: macerator::Vector<S, f32>,
    p: *const f32,
    lanes: usize,
) {
    use macerator::{VMulAdd, vload_unaligned};
    for (t, acc) in a.iter_mut().enumerate() {
        *acc = unsafe { f32::vmul_add(x, vload_unaligned(p.add(t * lanes)), *acc) };
    }
}

/// Stores the 4 registers of a block at `p`.
///
/// # Safety
/// `p` addresses `4 · lanes` writable floats.
#[inline(always)]
unsafe fn store_block<S: Simd>(p: *mut f32, a: [macerator::Vector<S, f32>; 4], lanes: usize) {
    for (t, acc) in a.into_iter().enumerate() {
        unsafe { macerator::vstore_unaligned(p.add(t * lanes), acc) };
    }
}

#[inline(always)]
fn vkern<S: Simd, const R: usize, const DIST: usize>(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    k: usize,
    n: usize,
) {
    use macerator::{Scalar, vload_unaligned};
    let lanes = f32::lanes::<S>();
    y.fill(0.0);
    let mut i = 0;
    let block = 4 * lanes;
    while i + R <= k {
        let xs: [_; R] = core::array::from_fn(|r| x[i + r].splat::<S>());
        let rows: [*const f32; R] =
            core::array::from_fn(|r| w[(i + r) * n..(i + r + 1) * n].as_ptr());
        let mut jb = 0;
        unsafe {
            while jb + block <= n {
                if DIST > 0 {
                    for r in 0..R {
                        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                            rows[r].wrapping_add(jb + DIST) as *const i8,
                        );
                    }
                }
                let yp = y.as_mut_ptr().add(jb);
                let mut a: [_; 4] =
                    core::array::from_fn(|t| vload_unaligned::<S, f32>(yp.add(t * lanes)));
                for r in 0..R {
                    fma_block::<S>(&mut a, xs[r], rows[r].add(jb), lanes);
                }
                store_block::<S>(yp, a, lanes);
                jb += block;
            }
        }
        for j in jb..n {
            for r in 0..R {
                y[j] = x[i + r].mul_add(w[(i + r) * n + j], y[j]);
            }
        }
        i += R;
    }
    last_rows(x, w, y, i, n);
}
// column blocks, accumulate over all k in registers
#[macerator::with_simd]
fn colblock<S: Simd>(x: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    use macerator::Scalar;
    let lanes = f32::lanes::<S>();
    let block = 4 * lanes;
    let mut jb = 0;
    unsafe {
        while jb + block <= n {
            let mut a = [0f32.splat::<S>(); 4];
            for i in 0..k {
                fma_block::<S>(&mut a, x[i].splat::<S>(), w.as_ptr().add(i * n + jb), lanes);
            }
            store_block::<S>(y.as_mut_ptr().add(jb), a, lanes);
            jb += block;
        }
    }
    for j in jb..n {
        let mut s = 0.0;
        for i in 0..k {
            s = x[i].mul_add(w[i * n + j], s);
        }
        y[j] = s;
    }
}
/// `$name`: [`vkern`] with `$rows` rows per pass and software prefetch `$dist` floats ahead.
macro_rules! rows_variant {
    ($name:ident, $rows:expr, $dist:expr) => {
        #[macerator::with_simd]
        fn $name<S: Simd>(x: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
            vkern::<S, $rows, $dist>(x, w, y, k, n)
        }
    };
}
rows_variant!(v4, 4, 0);
rows_variant!(v8, 8, 0);
rows_variant!(v16, 16, 0);
rows_variant!(v8pf, 8, 512);
rows_variant!(v4pf, 4, 1024);
rows_variant!(v8pf2k, 8, 2048);
rows_variant!(v16pf, 16, 512);
rows_variant!(v32, 32, 0);

/// Reads `w` (the rows `x` would take) and sums it: the rate a kernel could at best stream at.
#[macerator::with_simd]
fn readsum<S: Simd>(x: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    use macerator::{Scalar, vload_unaligned};
    let _ = x;
    let lanes = f32::lanes::<S>();
    let len = k * n / (4 * lanes) * (4 * lanes);
    let mut a = [0f32.splat::<S>(); 4];
    let mut i = 0;
    unsafe {
        while i < len {
            for (t, acc) in a.iter_mut().enumerate() {
                *acc = *acc + vload_unaligned::<S, f32>(w.as_ptr().add(i + t * lanes));
            }
            i += 4 * lanes;
        }
    }
    y[0] = (a[0] + a[1] + a[2] + a[3]).reduce_add();
}

// y[n] = x[k] · E[n, k]ᵀ (E rows contiguous).
fn head_gemm(x: &[f32], e: &[f32], y: &mut [f32], k: usize, n: usize) {
    gemm_one_row(x, e, y, (k, n), (1, k))
}

#[macerator::with_simd]
fn head_dot<S: Simd>(x: &[f32], e: &[f32], y: &mut [f32], k: usize, n: usize) {
    use macerator::{Scalar, VMulAdd, vload_unaligned};
    let lanes = f32::lanes::<S>();
    let kv = k / lanes * lanes;
    let mut j = 0;
    while j + 4 <= n {
        let r: [*const f32; 4] = core::array::from_fn(|t| e[(j + t) * k..].as_ptr());
        let mut a = [0f32.splat::<S>(); 4];
        let mut i = 0;
        unsafe {
            while i < kv {
                let xv = vload_unaligned::<S, f32>(x.as_ptr().add(i));
                for t in 0..4 {
                    a[t] = f32::vmul_add(xv, vload_unaligned(r[t].add(i)), a[t]);
                }
                i += lanes;
            }
        }
        for t in 0..4 {
            let mut s = a[t].reduce_add();
            for ii in kv..k {
                s += x[ii] * e[(j + t) * k + ii];
            }
            y[j + t] = s;
        }
        j += 4;
    }
    while j < n {
        y[j] = (0..k).map(|i| x[i] * e[j * k + i]).sum();
        j += 1;
    }
}
fn head_bench() {
    let (k, n) = (768usize, 50272usize);
    let e: Vec<f32> = (0..k * n)
        .map(|i| ((i % 1000) as f32 - 500.0) * 1e-4)
        .collect();
    let x: Vec<f32> = (0..k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let mut r = vec![0.0; n];
    head_gemm(&x, &e, &mut r, k, n);
    let mut y = vec![0.0; n];
    head_dot(&x, &e, &mut y, k, n);
    println!(
        "head err {:e}",
        y.iter()
            .zip(&r)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    );
    for _ in 0..3 {
        for (name, f) in [("head gemm", head_gemm as F), ("head dot4", head_dot)] {
            for threads in [1, 2] {
                let mut ts = vec![];
                for _ in 0..9 {
                    let t = Instant::now();
                    let mut y = vec![0.0f32; n];
                    if threads == 1 {
                        f(&x, &e, &mut y, k, n)
                    } else {
                        let h = (n / 2) / 16 * 16;
                        let (y0, y1) = y.split_at_mut(h);
                        rayon::join(
                            || f(&x, &e[..h * k], y0, k, h),
                            || f(&x, &e[h * k..], y1, k, n - h),
                        );
                    }
                    std::hint::black_box(&y);
                    ts.push(t.elapsed().as_secs_f64() * 1e3);
                }
                ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
                println!(
                    "{name} threads {threads}: {:.2} ms ({:.2}-{:.2})",
                    ts[4], ts[0], ts[8]
                );
            }
        }
    }
}

type F = fn(&[f32], &[f32], &mut [f32], usize, usize);

fn split2(f: F, x: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    // split rows in 2 pieces, partial summed
    let h = k / 2;
    let mut p = vec![0.0f32; n];
    rayon::join(
        || f(&x[..h], &w[..h * n], y, h, n),
        || f(&x[h..], &w[h * n..], &mut p, k - h, n),
    );
    for j in 0..n {
        y[j] += p[j];
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("head") {
        return head_bench();
    }
    // `GEMV_MODEL=1.3b`: OPT-1.3b's 144 layer weights (4.8 GB) instead of OPT-125m's.
    let big = std::env::var("GEMV_MODEL").is_ok_and(|v| v == "1.3b");
    let (d, ffn, layers) = if big { (2048, 8192, 24) } else { (768, 3072, 12) };
    let shapes: Vec<(usize, usize)> = (0..layers)
        .flat_map(|_| [(d, d), (d, d), (d, d), (d, d), (d, ffn), (ffn, d)])
        .collect();
    let ws: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(s, &(k, n))| {
            (0..k * n)
                .map(|i| (((i * 7 + s * 13) % 1000) as f32 - 500.0) * 1e-4)
                .collect()
        })
        .collect();
    let x0: Vec<f32> = (0..ffn).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let fs: [(&str, F); 12] = [
        ("readsum", readsum),
        ("v8pf2k", v8pf2k),
        ("v16pf", v16pf),
        ("v32", v32),
        ("gemm", via_gemm),
        ("panel8 fma", panel),
        ("v4", v4),
        ("v8", v8),
        ("v16", v16),
        ("v8pf", v8pf),
        ("v4pf", v4pf),
        ("colblock", colblock),
    ];
    // check
    for &(name, f) in &fs {
        let (k, n) = (ffn, d);
        let mut y = vec![0.0f32; n];
        f(&x0[..k], &ws[5], &mut y, k, n);
        let mut r = vec![0.0f32; n];
        via_gemm(&x0[..k], &ws[5], &mut r, k, n);
        let e = y
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name}: max err vs gemm {e:e}");
    }
    let bytes: f64 = shapes.iter().map(|&(k, n)| (k * n * 4) as f64).sum();
    for threads in [1, 2] {
        for round in 0..3 {
            for &(name, f) in &fs {
                let mut times = vec![];
                for _ in 0..9 {
                    let t = Instant::now();
                    let mut y = vec![0.0f32; ffn];
                    for (w, &(k, n)) in ws.iter().zip(&shapes) {
                        let mut out = vec![0.0f32; n];
                        if threads == 1 {
                            f(&x0[..k], w, &mut out, k, n)
                        } else {
                            split2(f, &x0[..k], w, &mut out, k, n)
                        }
                        y[0] += out[0];
                    }
                    std::hint::black_box(&y);
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                times.sort_by(|a, b| a.partial_cmp(b).unwrap());
                println!(
                    "threads {threads} round {round} {name:12}: median {:.2} ms (min {:.2} max {:.2}) {:.1} GB/s",
                    times[4], times[0], times[8], bytes / times[4] / 1e6
                );
            }
        }
    }
}
