//! gemm's own threading against the output columns split between rayon tasks, each a
//! single-threaded gemm call (so that each task packs only its own columns of the weight), on
//! the products of an OPT-125m step (1024 tokens) and an OPT-1.3b step (256 tokens). Operands
//! are row-major as burn-flex passes them; `rhs_t` is a weight read transposed (`g·Wᵀ`). Each
//! round runs every variant once, in rotating order; it prints medians with min–max, the
//! ratios to gemm's own threading, and whether the split results equal it bit for bit.
use std::time::Instant;
struct S {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    rhs_t: bool,
    /// The left-hand side read transposed (`xᵀ·g`, a weight gradient).
    lhs_t: bool,
}
#[derive(Clone, Copy)]
struct P(*mut f32);
unsafe impl Send for P {}
unsafe impl Sync for P {}
#[derive(Clone, Copy)]
struct C(*const f32);
unsafe impl Send for C {}
unsafe impl Sync for C {}
unsafe fn call(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    par: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, dst_rs, false, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 0.0f32,
            1.0f32, false, false, false, par,
        )
    }
}
fn run(s: &S, a: &[f32], b: &[f32], c: &mut [f32], split: usize) {
    let (rhs_cs, rhs_rs) = if s.rhs_t {
        (s.k as isize, 1)
    } else {
        (1, s.n as isize)
    };
    let (lhs_cs, lhs_rs) = if s.lhs_t {
        (s.m as isize, 1)
    } else {
        (1, s.k as isize)
    };
    if split == 0 {
        unsafe {
            call(
                s.m,
                s.n,
                s.k,
                c.as_mut_ptr(),
                s.n as isize,
                a.as_ptr(),
                lhs_cs,
                lhs_rs,
                b.as_ptr(),
                rhs_cs,
                rhs_rs,
                gemm::Parallelism::Rayon(0),
            )
        }
        return;
    }
    // 102: two tasks, each gemm with `Rayon(1)` (one thread, but all tokens in one panel).
    let parts = split % 100;
    let par = if split > 100 {
        gemm::Parallelism::Rayon(1)
    } else {
        gemm::Parallelism::None
    };
    let cols = (s.n + parts - 1) / parts;
    let (cp, ap, bp) = (P(c.as_mut_ptr()), C(a.as_ptr()), C(b.as_ptr()));
    let (m, n, k) = (s.m, s.n, s.k);
    rayon::scope(|sc| {
        for p in 0..parts {
            sc.spawn(move |_| {
                let (cp, ap, bp) = (cp, ap, bp);
                let c0 = p * cols;
                let w = cols.min(n - c0);
                unsafe {
                    call(
                        m,
                        w,
                        k,
                        cp.0.add(c0),
                        n as isize,
                        ap.0,
                        lhs_cs,
                        lhs_rs,
                        bp.0.offset(c0 as isize * rhs_cs),
                        rhs_cs,
                        rhs_rs,
                        par,
                    )
                }
            });
        }
    });
}
fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let shapes = [
        S {
            name: "1.3b fc1 x·W 256x2048x8192",
            m: 256,
            k: 2048,
            n: 8192,
            rhs_t: false,
            lhs_t: false,
        },
        S {
            name: "1.3b fc1 g·Wt 256x8192x2048",
            m: 256,
            k: 8192,
            n: 2048,
            rhs_t: true,
            lhs_t: false,
        },
        S {
            name: "1.3b fc2 g·Wt 256x2048x8192",
            m: 256,
            k: 2048,
            n: 8192,
            rhs_t: true,
            lhs_t: false,
        },
        S {
            name: "1.3b q x·W 256x2048x2048",
            m: 256,
            k: 2048,
            n: 2048,
            rhs_t: false,
            lhs_t: false,
        },
        S {
            name: "1.3b q g·Wt 256x2048x2048",
            m: 256,
            k: 2048,
            n: 2048,
            rhs_t: true,
            lhs_t: false,
        },
        S {
            name: "125m fc1 x·W 1024x768x3072",
            m: 1024,
            k: 768,
            n: 3072,
            rhs_t: false,
            lhs_t: false,
        },
        S {
            name: "125m fc1 g·Wt 1024x3072x768",
            m: 1024,
            k: 3072,
            n: 768,
            rhs_t: true,
            lhs_t: false,
        },
        S {
            name: "125m q x·W 1024x768x768",
            m: 1024,
            k: 768,
            n: 768,
            rhs_t: false,
            lhs_t: false,
        },
        S {
            name: "125m head x·Et 512x768x50272",
            m: 512,
            k: 768,
            n: 50272,
            rhs_t: true,
            lhs_t: false,
        },
        S {
            name: "125m fc1 xt·g 768x1024x3072",
            m: 768,
            k: 1024,
            n: 3072,
            rhs_t: false,
            lhs_t: true,
        },
        S {
            name: "1.3b fc1 xt·g 2048x256x8192",
            m: 2048,
            k: 256,
            n: 8192,
            rhs_t: false,
            lhs_t: true,
        },
        S {
            name: "125m lora B x·A 1024x16x768",
            m: 1024,
            k: 16,
            n: 768,
            rhs_t: false,
            lhs_t: false,
        },
    ];
    let variants = [0usize, 2, 4, 102];
    let cold = std::env::var("COLD").is_ok();
    let mut junk = vec![1u8; if cold { 1 << 30 } else { 0 }];
    for s in &shapes {
        let a: Vec<f32> = (0..s.m * s.k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..s.k * s.n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.01)
            .collect();
        let mut c = vec![0f32; s.m * s.n];
        let mut refc = vec![0f32; s.m * s.n];
        run(s, &a, &b, &mut refc, 0);
        let mut t = vec![Vec::new(); variants.len()];
        for _ in 0..2 {
            for &v in &variants {
                run(s, &a, &b, &mut c, v);
            }
        }
        for r in 0..rounds {
            for i in 0..variants.len() {
                let v = variants[(i + r) % variants.len()];
                let vi = variants.iter().position(|&x| x == v).unwrap();
                if cold {
                    for x in junk.iter_mut().step_by(64) {
                        *x = x.wrapping_add(1);
                    }
                }
                let t0 = Instant::now();
                run(s, &a, &b, &mut c, v);
                t[vi].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let maxdiff = c
            .iter()
            .zip(&refc)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let meds: Vec<_> = t.iter_mut().map(med).collect();
        print!("{:32}", s.name);
        for (vi, v) in variants.iter().enumerate() {
            let (m, lo, hi) = meds[vi];
            print!(
                " | {}: {:7.2} ms ({:.2}-{:.2})",
                if *v == 0 {
                    "gemm Rayon".to_string()
                } else {
                    if *v > 100 {
                        format!("split {} Rayon(1)", v % 100)
                    } else {
                        format!("split {v}")
                    }
                },
                m,
                lo,
                hi
            );
        }
        print!(
            " | split4/gemm {:.2} | split2r1/gemm {:.2}",
            meds[2].0 / meds[0].0,
            meds[3].0 / meds[0].0
        );
        println!(
            " | split2/gemm {:.2} | maxdiff {:e}",
            meds[1].0 / meds[0].0,
            maxdiff
        );
    }
}
