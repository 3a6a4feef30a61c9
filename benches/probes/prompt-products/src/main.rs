//! The products of a 256-token prompt (OPT-1.3b's q, fc1, fc2 and head; OPT-125m's q, fc1 and
//! head; OPT-350m's q, fc1 and fc2), `x·W` with `x` row-major `[tokens, d_in]` and `W` as burn
//! stores a Linear weight (`[d_in, d_out]`), or `x·Eᵀ` for the head, as burn-flex hands them to
//! `gemm`; and a Linear layer's input gradient `dY·Wᵀ` (the weight transposed, as a backward
//! reads it), at 256 tokens (OPT-1.3b's q, fc1, fc2; OPT-350m's q, fc1) and at a training step's
//! 4 × 256 (OPT-125m's and OPT-350m's q, fc1, fc2). Between calls, 512 MiB are written, or with
//! `COPIES=n` the next of n copies of the weight is used (as a forward reads the other layers'
//! weights between two uses of one). The configurations in CFGS (`;`-separated, `default` or
//! `VAR=value` for probe.patch's switches, `DSTCOL=1`, see `run`, or `FROZEN=1`: the weights in
//! buffers frozen with gemm-common's `frozen::freeze`, each used once before the rounds, so that
//! the timed calls read their kept packs) run interleaved, one call each per round; every result
//! must equal the first bit for bit (`DSTCOL=1`'s, which may block the depth differently, to
//! within 1e-5 relative).
use std::time::Instant;

struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    /// The right-hand side stored `[n, k]` row-major (the head's embedding).
    rhs_t: bool,
}

fn run(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    // DSTCOL=1 (an `x·Eᵀ`/`dY·Wᵀ` shape): the product written column-major into a scratch
    // buffer, so that gemm takes the token operand as its packed left-hand side and reads the
    // weight unpacked; then transposed into `c` (row-major), both timed.
    if s.rhs_t && std::env::var("DSTCOL").is_ok_and(|v| v == "1") {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|t| {
            let mut t = t.borrow_mut();
            t.resize(s.m * s.n, 0.0);
            // SAFETY: as below; dst is m·n values, column-major (column stride m).
            unsafe {
                gemm::gemm(
                    s.m, s.n, s.k,
                    t.as_mut_ptr(), s.m as isize, 1,
                    false,
                    a.as_ptr(), 1, s.k as isize,
                    b.as_ptr(), s.k as isize, 1,
                    0.0f32, 1.0f32, false, false, false,
                    gemm::Parallelism::Rayon(0),
                );
            }
            transpose(&t, c, s.m, s.n);
        });
        return;
    }
    let (rhs_cs, rhs_rs) = if s.rhs_t {
        (s.k as isize, 1)
    } else {
        (1, s.n as isize)
    };
    // SAFETY: the slices hold m·k, k·n and m·n values in the layouts the strides describe.
    unsafe {
        gemm::gemm(
            s.m,
            s.n,
            s.k,
            c.as_mut_ptr(),
            1,
            s.n as isize,
            false,
            a.as_ptr(),
            1,
            s.k as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// `src` column-major `[m, n]` (column stride m) into `dst` row-major, in 64 × 64 tiles split
/// over rayon's threads by row blocks.
fn transpose(src: &[f32], dst: &mut [f32], m: usize, n: usize) {
    use rayon::prelude::*;
    const T: usize = 64;
    dst.par_chunks_mut(T * n).enumerate().for_each(|(bi, rows)| {
        let r0 = bi * T;
        let rn = rows.len() / n;
        for c0 in (0..n).step_by(T) {
            for c in c0..(c0 + T).min(n) {
                let col = &src[c * m + r0..c * m + r0 + rn];
                for (r, v) in col.iter().enumerate() {
                    rows[r * n + c] = *v;
                }
            }
        }
    });
}

fn set_config(cfg: &str) {
    // SAFETY: the probe is single-threaded between calls; gemm's threads read these only
    // inside a call.
    unsafe {
        for var in ["GEMM_ROW_SPLIT", "GEMM_PF", "GEMM_VCOPY", "GEMM_ROWPACK", "GEMM_NEXTPF", "DSTCOL", "FROZEN"] {
            std::env::remove_var(var);
        }
        if let Some((var, value)) = cfg.split_once('=') {
            std::env::set_var(var, value);
        }
    }
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let warm = std::env::var("WARM").is_ok();
    let cfgs: Vec<String> = std::env::var("CFGS")
        .unwrap_or("default;GEMM_ROW_SPLIT=1;GEMM_PF=16;GEMM_VCOPY=1".into())
        .split(';')
        .map(String::from)
        .collect();
    let t = 256;
    #[rustfmt::skip]
    let shapes = [
        Shape { name: "1.3b q x·W 256x2048x2048", m: t, k: 2048, n: 2048, rhs_t: false },
        Shape { name: "1.3b fc1 x·W 256x2048x8192", m: t, k: 2048, n: 8192, rhs_t: false },
        Shape { name: "1.3b fc2 x·W 256x8192x2048", m: t, k: 8192, n: 2048, rhs_t: false },
        Shape { name: "1.3b head x·Et 256x2048x50272", m: t, k: 2048, n: 50272, rhs_t: true },
        Shape { name: "125m fc1 x·W 256x768x3072", m: t, k: 768, n: 3072, rhs_t: false },
        Shape { name: "125m q x·W 256x768x768", m: t, k: 768, n: 768, rhs_t: false },
        Shape { name: "350m q x·W 256x1024x1024", m: t, k: 1024, n: 1024, rhs_t: false },
        Shape { name: "350m fc1 x·W 256x1024x4096", m: t, k: 1024, n: 4096, rhs_t: false },
        Shape { name: "350m fc2 x·W 256x4096x1024", m: t, k: 4096, n: 1024, rhs_t: false },
        Shape { name: "1.3b q dX dY·Wt 256x2048x2048", m: t, k: 2048, n: 2048, rhs_t: true },
        Shape { name: "350m fc1 dX dY·Wt 256x4096x1024", m: t, k: 4096, n: 1024, rhs_t: true },
        Shape { name: "350m q dX dY·Wt 256x1024x1024", m: t, k: 1024, n: 1024, rhs_t: true },
        Shape { name: "125m head x·Et 256x768x50272", m: t, k: 768, n: 50272, rhs_t: true },
        Shape { name: "1.3b fc1 dX dY·Wt 256x8192x2048", m: t, k: 8192, n: 2048, rhs_t: true },
        Shape { name: "1.3b fc2 dX dY·Wt 256x2048x8192", m: t, k: 2048, n: 8192, rhs_t: true },
        Shape { name: "125m q dX dY·Wt 1024x768x768", m: 4 * t, k: 768, n: 768, rhs_t: true },
        Shape { name: "125m fc1 dX dY·Wt 1024x3072x768", m: 4 * t, k: 3072, n: 768, rhs_t: true },
        Shape { name: "125m fc2 dX dY·Wt 1024x768x3072", m: 4 * t, k: 768, n: 3072, rhs_t: true },
        Shape { name: "350m q dX dY·Wt 1024x1024x1024", m: 4 * t, k: 1024, n: 1024, rhs_t: true },
        Shape { name: "350m fc1 dX dY·Wt 1024x4096x1024", m: 4 * t, k: 4096, n: 1024, rhs_t: true },
        Shape { name: "350m fc2 dX dY·Wt 1024x1024x4096", m: 4 * t, k: 1024, n: 4096, rhs_t: true },
    ];
    let mut flush = vec![0u8; 512 << 20];
    for s in shapes.iter().filter(|s| s.name.contains(&filter)) {
        let a: Vec<f32> = (0..s.m * s.k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        // COPIES=n: n copies of the weight, used in turn (as a forward reads its other layers'
        // weights between two uses of one), instead of writing the flush buffer.
        let copies: usize = std::env::var("COPIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bs: Vec<Vec<f32>> = (0..copies.max(1))
            .map(|_| {
                (0..s.k * s.n)
                    .map(|i| ((i * 104729) % 997) as f32 * 1e-3)
                    .collect()
            })
            .collect();
        // FROZEN=1: the same weights in buffers frozen with gemm-common's `frozen::freeze`,
        // each used once before the rounds, so that the timed calls read the kept packs.
        let frozen_cfg = cfgs.iter().any(|c| c == "FROZEN=1");
        let bs_frozen: Vec<Vec<f32>> = if frozen_cfg { bs.clone() } else { Vec::new() };
        // SAFETY: the buffers live, unchanged, until the end of this shape's loop, after the
        // tokens are dropped.
        let tokens: Vec<gemm_common::frozen::Frozen> = bs_frozen
            .iter()
            .map(|b| unsafe { gemm_common::frozen::freeze(b.as_ptr() as *const u8, b.len() * 4) })
            .collect();
        let mut c = vec![0f32; s.m * s.n];
        for b in &bs_frozen {
            run(s, &a, b, &mut c);
        }
        let mut next = 0usize;
        let mut times = vec![Vec::new(); cfgs.len()];
        let mut first: Option<Vec<f32>> = None;
        for round in 0..=rounds {
            for (ci, cfg) in cfgs.iter().enumerate() {
                set_config(cfg);
                if !warm && copies == 0 {
                    flush.iter_mut().for_each(|x| *x = x.wrapping_add(1));
                }
                let b = if cfg == "FROZEN=1" {
                    &bs_frozen[next % bs.len()]
                } else {
                    &bs[next % bs.len()]
                };
                next += 1;
                let t0 = Instant::now();
                run(s, &a, b, &mut c);
                let dt = t0.elapsed().as_secs_f64();
                if round > 0 {
                    times[ci].push(dt);
                }
                match &first {
                    None => first = Some(c.clone()),
                    Some(f) => {
                        // DSTCOL may block the depth differently: equal within rounding.
                        let worst = f
                            .iter()
                            .zip(&c)
                            .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
                            .fold(0.0f32, f32::max);
                        assert!(
                            f == &c || (cfg.starts_with("DSTCOL") && worst < 1e-5),
                            "{cfg}: the result differs from the first ({worst:e})"
                        );
                    }
                }
            }
        }
        let kept = gemm_common::frozen::packed_bytes();
        drop(tokens);
        let packs: Vec<usize> = gemm_common::gemm::PACKS
            .iter()
            .map(|p| p.swap(0, std::sync::atomic::Ordering::Relaxed))
            .collect();
        let calls = (rounds + 1) * cfgs.len() + bs_frozen.len();
        if frozen_cfg {
            println!("{:32} kept packs: {} MiB", s.name, kept >> 20);
        }
        let flop = 2.0 * (s.m * s.k * s.n) as f64;
        for (ci, cfg) in cfgs.iter().enumerate() {
            let v = &mut times[ci];
            v.sort_by(f64::total_cmp);
            let median = v[v.len() / 2];
            println!(
                "{:32} {cfg:16} {:8.2} ms ({:.2}–{:.2}) {:6.1} GFLOP/s",
                s.name,
                median * 1e3,
                v[0] * 1e3,
                v[v.len() - 1] * 1e3,
                flop / median / 1e9
            );
        }
        println!(
            "{:32} weight panels packed per call, by thread: {:?}",
            s.name,
            packs.iter().map(|p| p / calls).collect::<Vec<_>>()
        );
    }
}
