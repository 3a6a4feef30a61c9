//! gemm's blocking on the shapes of an OPT-125m step (and OPT-350m's, a 256-token prompt's, and
//! OPT-1.3b's at one sequence of 256 tokens): gemm's own kernel params against
//! overrides (GEMM_NC_CAP / GEMM_MC / GEMM_KC read by the patched gemm-common), interleaved;
//! with l2-ways.patch, GEMM_L2_ALL=1 sizes the packed left-hand block as gemm 0.19.0 did;
//! with tiled-pack.patch also applied, GEMM_TILED_PACK=1 packs a row-major left-hand side 16
//! depths at a time, GEMM_TILED_PACK=2 (f32, AVX-512) in 16 × 16 blocks transposed in
//! registers and GEMM_TILED_PACK=3 (f32, AVX) in 8 × 8 blocks; with par-prepack.patch too, GEMM_PAR_PREPACK=1 splits the prepacked left-hand side
//! between the threads; XPOSE=1 transposes a g·Wt weight into a contiguous copy (timed) and runs
//! x·W. Each configuration's result is checked bit for bit against the first's.
use std::time::Instant;

#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    rhs_t: bool, // rhs stored [n, k] row-major (a transposed weight)
    lhs_t: bool, // lhs stored [k, m] row-major
}

fn run(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (lhs_cs, lhs_rs) = if s.lhs_t {
        (s.m as isize, 1)
    } else {
        (1, s.k as isize)
    };
    let (rhs_cs, rhs_rs) = if s.rhs_t {
        (s.k as isize, 1)
    } else {
        (1, s.n as isize)
    };
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
            lhs_cs,
            lhs_rs,
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

/// src [rows, cols] row-major -> dst [cols, rows] row-major, in 32 x 32 tiles, two threads.
fn transpose_blocked(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    const T: usize = 32;
    let half = cols.div_ceil(2 * T) * T;
    let (d0, d1) = dst.split_at_mut(half.min(cols) * rows);
    let work = |dst: &mut [f32], c_lo: usize, c_hi: usize| {
        for c0 in (c_lo..c_hi).step_by(T) {
            for r0 in (0..rows).step_by(T) {
                for c in c0..(c0 + T).min(c_hi) {
                    for r in r0..(r0 + T).min(rows) {
                        dst[(c - c_lo) * rows + r] = src[r * cols + c];
                    }
                }
            }
        }
    };
    std::thread::scope(|sc| {
        sc.spawn(|| work(d0, 0, half.min(cols)));
        work(d1, half.min(cols), cols);
    });
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let shapes = [
        Shape {
            name: "q x·W 1024x768x768",
            m: 1024,
            k: 768,
            n: 768,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "q g·Wt 1024x768x768",
            m: 1024,
            k: 768,
            n: 768,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "fc1 x·W 1024x768x3072",
            m: 1024,
            k: 768,
            n: 3072,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "fc2 x·W 1024x3072x768",
            m: 1024,
            k: 3072,
            n: 768,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "fc1 g·Wt 1024x3072x768",
            m: 1024,
            k: 3072,
            n: 768,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "fc2 g·Wt 1024x768x3072",
            m: 1024,
            k: 768,
            n: 3072,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "fc1 xt·g 768x1024x3072",
            m: 768,
            k: 1024,
            n: 3072,
            rhs_t: false,
            lhs_t: true,
        },
        Shape {
            name: "head x·Et 512x768x50272",
            m: 512,
            k: 768,
            n: 50272,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "head g·E 512x50272x768",
            m: 512,
            k: 50272,
            n: 768,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "head1024 x·Et 1024x768x50272",
            m: 1024,
            k: 768,
            n: 50272,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "head1024 g·E 1024x50272x768",
            m: 1024,
            k: 50272,
            n: 768,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "350m q x·W 1024x1024x1024",
            m: 1024,
            k: 1024,
            n: 1024,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "350m q g·Wt 1024x1024x1024",
            m: 1024,
            k: 1024,
            n: 1024,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "350m fc2 x·W 1024x4096x1024",
            m: 1024,
            k: 4096,
            n: 1024,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "350m fc1 g·Wt 1024x4096x1024",
            m: 1024,
            k: 4096,
            n: 1024,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "350m fc2 g·Wt 1024x1024x4096",
            m: 1024,
            k: 1024,
            n: 4096,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "prompt head 256x768x50272",
            m: 256,
            k: 768,
            n: 50272,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "prompt fc1 256x768x3072",
            m: 256,
            k: 768,
            n: 3072,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "1.3b q x·W 256x2048x2048",
            m: 256,
            k: 2048,
            n: 2048,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "1.3b q g·Wt 256x2048x2048",
            m: 256,
            k: 2048,
            n: 2048,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "1.3b fc1 x·W 256x2048x8192",
            m: 256,
            k: 2048,
            n: 8192,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "1.3b fc2 x·W 256x8192x2048",
            m: 256,
            k: 8192,
            n: 2048,
            rhs_t: false,
            lhs_t: false,
        },
        Shape {
            name: "1.3b fc1 g·Wt 256x8192x2048",
            m: 256,
            k: 8192,
            n: 2048,
            rhs_t: true,
            lhs_t: false,
        },
        Shape {
            name: "1.3b fc2 g·Wt 256x2048x8192",
            m: 256,
            k: 2048,
            n: 8192,
            rhs_t: true,
            lhs_t: false,
        },
    ];
    let cfg_text = std::env::var("CFGS")
        .unwrap_or_else(|_| "default;GEMM_NC_CAP=1024;GEMM_NC_CAP=512;GEMM_NC_CAP=256".into());
    let cfgs: Vec<(String, Vec<(&str, String)>)> = cfg_text
        .split(';')
        .map(|c| {
            let kv = c
                .split(',')
                .filter_map(|p| p.split_once('=').map(|(k, v)| (k, v.to_string())))
                .collect();
            (c.to_string(), kv)
        })
        .collect();
    for s in shapes.iter().filter(|s| s.name.contains(&filter)) {
        let a: Vec<f32> = (0..s.m * s.k)
            .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..s.k * s.n)
            .map(|i| ((i % 89) as f32 - 44.0) * 0.01)
            .collect();
        let mut c = vec![0.0f32; s.m * s.n];
        let flop = 2.0 * (s.m * s.k * s.n) as f64;
        let mut samples = vec![Vec::new(); cfgs.len()];
        let mut first = Vec::new();
        for round in 0..rounds + 2 {
            for (i, (_, kv)) in cfgs.iter().enumerate() {
                for v in ["GEMM_NC_CAP", "GEMM_MC", "GEMM_KC", "GEMM_TILED_PACK", "GEMM_PAR_PREPACK", "GEMM_L2_ALL"] {
                    unsafe { std::env::remove_var(v) };
                }
                for (k, v) in kv {
                    unsafe { std::env::set_var(k, v) };
                }
                let xpose = kv.iter().any(|(k, _)| *k == "XPOSE") && s.rhs_t;
                let t = Instant::now();
                if xpose {
                    // b holds [n, k] row-major; write its [k, n] row-major copy, then nn.
                    let mut bt = vec![0.0f32; s.k * s.n];
                    transpose_blocked(&b, &mut bt, s.n, s.k);
                    let s2 = Shape { rhs_t: false, ..*s };
                    run(&s2, &a, &bt, &mut c);
                } else {
                    run(s, &a, &b, &mut c);
                }
                let dt = t.elapsed().as_secs_f64();
                if round >= 2 {
                    samples[i].push(dt);
                }
                if round == 0 {
                    if i == 0 {
                        first = c.clone();
                    } else if first != c {
                        println!("  {}: result differs from the first configuration", cfgs[i].0);
                    }
                }
            }
        }
        println!("{}", s.name);
        let base = {
            let mut v = samples[0].clone();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (i, (name, _)) in cfgs.iter().enumerate() {
            let mut v = samples[i].clone();
            v.sort_by(f64::total_cmp);
            let med = v[v.len() / 2];
            println!(
                "  {:28} {:8.2} ms ({:.2}–{:.2})  {:6.1} GFLOP/s  {:.3}× default",
                name,
                med * 1e3,
                v[0] * 1e3,
                v[v.len() - 1] * 1e3,
                flop / med / 1e9,
                med / base
            );
        }
    }
}
