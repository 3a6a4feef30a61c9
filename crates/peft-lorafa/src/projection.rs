//! LoRA-FA's projected gradient for B: `ĝ_B = (1/s²)·∇B·pinv(A·Aᵀ + 1e-8·I)` (PEFT layout), the
//! least-squares fit of the full-weight gradient with A frozen.

use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};

use crate::adamw::{HfAdamState, HfAdamW};

/// The regulariser PEFT adds to `A·Aᵀ` before the pseudo-inverse.
pub const DELTA: f64 = 1e-8;

/// Precision of the projection matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProjectionPrecision {
    /// f32 (PEFT when accelerate reports no bf16 support).
    #[default]
    F32,
    /// PEFT's default where accelerate reports bf16 support (CPUs included): inputs rounded to
    /// bf16, product rounded to bf16, scaled in bf16, then back to f32. Computed on the host.
    Bf16,
}

/// Symmetric eigen-decomposition by cyclic Jacobi rotations (f64): `(eigenvalues, eigenvectors
/// as columns, row-major)`.
fn jacobi(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// `pinv(Aᵀ·A + δ·I)` for burn's `A` `[d_in, r]` (PEFT's `A·Aᵀ` for its `[r, in]` layout), with
/// `torch.linalg.pinv`'s cut-off (singular values below `r·ε_f32·σ_max` are dropped).
/// Row-major `[r, r]`, symmetric.
pub fn gram_pinv(a: &[f32], d_in: usize, r: usize) -> Vec<f64> {
    let mut g = vec![0.0f64; r * r];
    for i in 0..r {
        for j in 0..r {
            // f32 products, as PEFT's `A @ A.T` (f32) computes them.
            let dot: f32 = (0..d_in).map(|k| a[k * r + i] * a[k * r + j]).sum();
            g[i * r + j] = dot as f64;
        }
        g[i * r + i] = (g[i * r + i] as f32 + DELTA as f32) as f64;
    }
    let (values, vectors) = jacobi(g, r);
    let max = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    let cutoff = max * r as f64 * f32::EPSILON as f64;
    let mut inv = vec![0.0; r * r];
    for (k, l) in values.iter().enumerate() {
        if l.abs() <= cutoff {
            continue;
        }
        for i in 0..r {
            for j in 0..r {
                inv[i * r + j] += vectors[i * r + k] * vectors[j * r + k] / l;
            }
        }
    }
    inv
}

/// The optimizer of one B `[r, d_out]`: projects its gradient, then HF AdamW.
#[derive(Debug, Clone)]
pub struct ProjectedAdamW {
    /// `pinv(AᵀA + δI)`, row-major `[r, r]`.
    pub pinv: Vec<f64>,
    /// `1 / s²` for the layer's own scaling `s`.
    pub inv_scaling_sq: f64,
    /// Projection precision.
    pub precision: ProjectionPrecision,
    /// The update applied to the projected gradient.
    pub adam: HfAdamW,
}

fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

impl ProjectedAdamW {
    /// `ĝ = (1/s²)·pinv·g` for a gradient `[r, d_out]` (burn layout).
    pub fn project(&self, g: Tensor<2>) -> Tensor<2> {
        let [r, d_out] = g.dims();
        let device = g.device();
        match self.precision {
            ProjectionPrecision::F32 => {
                let pinv: Vec<f32> = self.pinv.iter().map(|v| *v as f32).collect();
                let pinv = Tensor::<2>::from_data(TensorData::new(pinv, [r, r]), &device);
                pinv.matmul(g).mul_scalar(self.inv_scaling_sq as f32)
            }
            ProjectionPrecision::Bf16 => {
                let gv: Vec<f32> = g
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default()
                    .into_iter()
                    .map(bf16)
                    .collect();
                let pinv: Vec<f32> = self.pinv.iter().map(|v| bf16(*v as f32)).collect();
                let scale = self.inv_scaling_sq as f32;
                let mut out = vec![0f32; r * d_out];
                for i in 0..r {
                    for j in 0..d_out {
                        let acc: f32 = (0..r).map(|k| pinv[i * r + k] * gv[k * d_out + j]).sum();
                        out[i * d_out + j] = bf16(bf16(acc) * scale);
                    }
                }
                Tensor::from_data(TensorData::new(out, [r, d_out]), &device)
            }
        }
    }
}

impl Optimizer for ProjectedAdamW {
    type State<const D: usize> = HfAdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let shape = grad.shape();
        let dims = grad.dims();
        let rows = dims.first().copied().unwrap_or(1);
        let cols = dims.iter().skip(1).product::<usize>();
        let projected: Tensor<D> = self.project(grad.reshape([rows, cols])).reshape(shape);
        let (p, s) = self.adam.update(lr, tensor, projected, state);
        (p, Some(s))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        HfAdamW::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinv_inverts_a_well_conditioned_gram_matrix() {
        // A [3, 2]: columns (1, 2, 0) and (0, 1, 3).
        let a = [1f32, 0., 2., 1., 0., 3.];
        let inv = gram_pinv(&a, 3, 2);
        // A·Aᵀ is formed in f32, as in PEFT: δ = 1e-8 vanishes next to 5 and 10.
        let g = [5.0, 2.0, 2.0, 10.0];
        for i in 0..2 {
            for j in 0..2 {
                let v: f64 = (0..2).map(|k| g[i * 2 + k] * inv[k * 2 + j]).sum();
                assert!((v - f64::from(u8::from(i == j))).abs() < 1e-12, "{inv:?}");
            }
        }
    }

    #[test]
    fn pinv_drops_null_directions() {
        // Rank-1 A: both columns equal; the pseudo-inverse stays finite.
        let a = [1f32, 1., 2., 2.];
        let inv = gram_pinv(&a, 2, 2);
        assert!(
            inv.iter().all(|v| v.is_finite() && v.abs() < 1.0),
            "{inv:?}"
        );
    }
}
