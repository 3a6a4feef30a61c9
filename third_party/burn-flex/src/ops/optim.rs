//! A fused AdamW step for f32 parameters.
//!
//! burn's `AdamW` optimizer runs its update as about fifteen tensor ops per parameter (the two
//! moments, their bias corrections, the square root, the quotient, the decay and the update),
//! each a pass over the parameter's size with its own output buffer. [`adamw_step_f32`] does the
//! same arithmetic, in the same order and at the same f32 rounding, in one pass that reads the
//! parameter, its gradient and both moments once and writes the parameter and the moments in
//! place when their buffers are not shared.

use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::Bytes;

use crate::ops::activation::owned_contiguous_f32;
use crate::{FlexTensor, Layout};

/// Elements per parallel task of [`adamw_step_f32`].
const ADAMW_ELEMS_PER_TASK: usize = 1 << 14;

/// The constants of one AdamW step, as burn's `AdamW` rounds them to f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStepF32 {
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// `1 − β₁ᵗ` (β₁ raised in f32) for this step's `t`.
    pub bias_correction_1: f32,
    /// `1 − β₂ᵗ` (β₂ raised in f32) for this step's `t`.
    pub bias_correction_2: f32,
    /// ε, added to `√v̂`.
    pub epsilon: f32,
    /// The learning rate.
    pub lr: f32,
    /// `1 − lr·λ`, the decoupled weight decay's factor; `None` when `lr·λ` is 0 (the parameter
    /// is then not multiplied at all).
    pub decay: Option<f32>,
}

/// One AdamW step on an f32 parameter: with `g` the gradient and `m`, `v` the moments
/// (`None` on the first step, when both start from the gradient alone),
///
/// ```text
/// m ← m·β₁ + g·(1 − β₁)            (first step: g·(1 − β₁))
/// v ← v·β₂ + g²·(1 − β₂)           (first step: g²·(1 − β₂))
/// p ← p·(1 − lr·λ) − lr · (m / c₁) / (√(v / c₂) + ε)
/// ```
///
/// each operation rounded to f32 in this order, as burn's `AdamW` computes it op by op. Returns
/// the parameter and the two moments (same shape as `param`); a tensor whose buffer is unique
/// and contiguous is updated in place.
///
/// # Panics
/// If a tensor is not f32 or the shapes differ.
pub fn adamw_step_f32(
    param: FlexTensor,
    grad: FlexTensor,
    moments: Option<(FlexTensor, FlexTensor)>,
    step: AdamWStepF32,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let shape = param.layout().shape().clone();
    for (name, t) in [("parameter", &param), ("gradient", &grad)] {
        assert_eq!(t.dtype(), DType::F32, "adamw_step_f32: {name} not f32");
        assert_eq!(t.layout().shape(), &shape, "adamw_step_f32: {name} shape");
    }
    let grad = grad.to_contiguous();
    let g: &[f32] = grad.as_slice().expect("contiguous after to_contiguous");
    let mut p = owned_contiguous_f32(param);
    let (mut m, mut v, first) = match moments {
        Some((m, v)) => {
            for (name, t) in [("first moment", &m), ("second moment", &v)] {
                assert_eq!(t.dtype(), DType::F32, "adamw_step_f32: {name} not f32");
                assert_eq!(t.layout().shape(), &shape, "adamw_step_f32: {name} shape");
            }
            (owned_contiguous_f32(m), owned_contiguous_f32(v), false)
        }
        None => (first_moment_f32(&shape), first_moment_f32(&shape), true),
    };
    {
        let (ps, ms, vs): (&mut [f32], &mut [f32], &mut [f32]) =
            (p.storage_mut(), m.storage_mut(), v.storage_mut());
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let n = ADAMW_ELEMS_PER_TASK;
            ps.par_chunks_mut(n)
                .zip(ms.par_chunks_mut(n))
                .zip(vs.par_chunks_mut(n))
                .zip(g.par_chunks(n))
                .for_each(|(((p, m), v), g)| adamw_chunk_f32(p, g, m, v, first, &step));
        }
        #[cfg(not(feature = "rayon"))]
        adamw_chunk_f32(ps, g, ms, vs, first, &step);
    }
    (p, m, v)
}

/// [`adamw_step_f32`] on one chunk. Two loops, so that neither tests `first` per element.
#[inline]
fn adamw_chunk_f32(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    first: bool,
    s: &AdamWStepF32,
) {
    let (f1, f2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
    let update = |p: f32, m: f32, v: f32| {
        let delta = (m / s.bias_correction_1) / ((v / s.bias_correction_2).sqrt() + s.epsilon);
        let decayed = match s.decay {
            Some(keep) => p * keep,
            None => p,
        };
        decayed - delta * s.lr
    };
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    if first {
        for i in 0..n {
            let gi = g[i];
            m[i] = gi * f1;
            v[i] = (gi * gi) * f2;
            p[i] = update(p[i], m[i], v[i]);
        }
    } else {
        for i in 0..n {
            let gi = g[i];
            m[i] = m[i] * s.beta_1 + gi * f1;
            v[i] = v[i] * s.beta_2 + (gi * gi) * f2;
            p[i] = update(p[i], m[i], v[i]);
        }
    }
}

/// A first step's moment buffer, not zeroed: the first step's loop writes every element before
/// any is read (`m ← g·(1 − β₁)`, `v ← g²·(1 − β₂)`).
fn first_moment_f32(shape: &burn_std::Shape) -> FlexTensor {
    let n = shape.num_elements();
    // SAFETY: `adamw_chunk_f32` with `first` set writes `m[i]` and `v[i]` for every `i` before
    // reading them, and the chunks cover the whole buffer.
    let moment: Vec<f32> = unsafe { crate::par::uninit_vec(n) };
    FlexTensor::new(
        Bytes::from_elems(moment),
        Layout::contiguous(shape.clone()),
        DType::F32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32], shape: &[usize]) -> FlexTensor {
        FlexTensor::new(
            Bytes::from_elems(values.to_vec()),
            Layout::contiguous(burn_std::Shape::from(shape.to_vec())),
            DType::F32,
        )
    }

    fn values(t: &FlexTensor) -> Vec<f32> {
        t.to_contiguous().as_slice::<f32>().expect("f32").to_vec()
    }

    /// burn's `AdamW`, op by op as its tensor ops round: each line one op.
    fn reference(
        p: &[f32],
        g: &[f32],
        mv: Option<(&[f32], &[f32])>,
        s: &AdamWStepF32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (f1, f2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..p.len() {
            let g1 = g[i] * f1;
            let g2 = g[i] * g[i];
            let g2 = g2 * f2;
            let (m, v) = match mv {
                Some((m, v)) => (m[i] * s.beta_1 + g1, v[i] * s.beta_2 + g2),
                None => (g1, g2),
            };
            let mc = m / s.bias_correction_1;
            let vc = v / s.bias_correction_2;
            let denom = vc.sqrt() + s.epsilon;
            let delta = mc / denom;
            let decayed = s.decay.map_or(p[i], |k| p[i] * k);
            out.0.push(decayed - delta * s.lr);
            out.1.push(m);
            out.2.push(v);
        }
        out
    }

    fn step(t: i32, decay: Option<f32>) -> AdamWStepF32 {
        AdamWStepF32 {
            beta_1: 0.9,
            beta_2: 0.999,
            bias_correction_1: 1.0 - 0.9f32.powi(t),
            bias_correction_2: 1.0 - 0.999f32.powi(t),
            epsilon: 1e-8,
            lr: 1e-3,
            decay,
        }
    }

    /// Deterministic values of both signs and several magnitudes.
    fn data(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 8) as f32;
                (x / (1 << 24) as f32 - 0.5) * 10f32.powi((i % 5) as i32 - 3)
            })
            .collect()
    }

    #[test]
    fn first_and_later_steps_equal_the_op_by_op_update_bit_for_bit() {
        // Sizes below one task, across task boundaries, and not a multiple of anything.
        for n in [1, 7, ADAMW_ELEMS_PER_TASK + 3, 3 * ADAMW_ELEMS_PER_TASK - 1] {
            let (p, g, m, v) = (data(n, 1), data(n, 2), data(n, 3), data(n, 4));
            let v: Vec<f32> = v.iter().map(|x| x.abs()).collect();
            for decay in [None, Some(1.0 - 1e-3 * 0.01)] {
                let s = step(1, decay);
                let (p1, m1, v1) = adamw_step_f32(tensor(&p, &[n]), tensor(&g, &[n]), None, s);
                let want = reference(&p, &g, None, &s);
                assert_eq!((values(&p1), values(&m1), values(&v1)), want, "n {n} first");

                let s = step(7, decay);
                let moments = Some((tensor(&m, &[n]), tensor(&v, &[n])));
                let (p7, m7, v7) = adamw_step_f32(tensor(&p, &[n]), tensor(&g, &[n]), moments, s);
                let want = reference(&p, &g, Some((&m, &v)), &s);
                assert_eq!(
                    (values(&p7), values(&m7), values(&v7)),
                    want,
                    "n {n} step 7"
                );
            }
        }
    }

    #[test]
    fn shared_buffers_are_copied_never_written() {
        // Parameter and moments whose buffers another tensor still holds.
        let n = 2 * ADAMW_ELEMS_PER_TASK + 5;
        let (p, g, m, v) = (data(n, 5), data(n, 6), data(n, 7), data(n, 8));
        let v: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        let p2: Vec<f32> = p.iter().chain(&p).copied().collect();
        let g2: Vec<f32> = g.iter().chain(&g).copied().collect();
        let m2: Vec<f32> = m.iter().chain(&m).copied().collect();
        let v2: Vec<f32> = v.iter().chain(&v).copied().collect();
        let (pt, mt, vt) = (
            tensor(&p2, &[2, n]),
            tensor(&m2, &[2, n]),
            tensor(&v2, &[2, n]),
        );
        let kept = (pt.clone(), mt.clone(), vt.clone());
        let s = step(3, Some(0.999));
        let out = adamw_step_f32(pt, tensor(&g2, &[2, n]), Some((mt, vt)), s);
        let want = reference(&p2, &g2, Some((&m2, &v2)), &s);
        assert_eq!((values(&out.0), values(&out.1), values(&out.2)), want);
        assert_eq!(values(&kept.0), p2);
        assert_eq!(values(&kept.1), m2);
        assert_eq!(values(&kept.2), v2);
    }

    #[test]
    fn a_transposed_parameter_is_updated_in_its_logical_order() {
        let p = data(6, 9);
        let g = data(6, 10);
        let transposed = tensor(&p, &[2, 3]).transpose(0, 1);
        let logical = values(&transposed);
        let s = step(1, None);
        let (p1, _, _) = adamw_step_f32(transposed, tensor(&g, &[3, 2]), None, s);
        assert_eq!(p1.layout().shape(), &burn_std::Shape::from(vec![3, 2]));
        assert_eq!(values(&p1), reference(&logical, &g, None, &s).0);
    }
}
