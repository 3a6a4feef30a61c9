//! AdamW's update of one parameter as one backend operation.
//!
//! burn's `AdamW` optimizer updates a parameter with about fifteen tensor ops (the two moments,
//! their bias corrections, a square root, a quotient, the decay and the update), each a pass
//! over the parameter with its own output buffer: for full fine-tuning, several passes over
//! every weight of the model per step. [`adamw_step`] is one operation: on flex a single pass
//! (burn-flex change 11) that reads the parameter, the gradient and both moments once and writes
//! the parameter and moments in place, with burn's arithmetic rounded as burn rounds it, so the
//! result is bit for bit burn's `AdamW`; other backends run burn's ops in burn's order.

// burn 0.22 deprecates ndarray in favour of flex; this build still offers it as a backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

/// The constants of one AdamW step (burn's `AdamWConfig` without AMSGrad or cautious decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// β₁ (PyTorch: 0.9).
    pub beta_1: f32,
    /// β₂ (PyTorch: 0.999).
    pub beta_2: f32,
    /// ε added to `√v̂` (PyTorch: 1e-8).
    pub epsilon: f32,
    /// Decoupled weight decay λ: the parameter is scaled by `1 − lr·λ` (PyTorch: 0.01).
    pub weight_decay: f32,
    /// The learning rate of this step.
    pub lr: f64,
    /// This step's number for the bias corrections, from 1 (the step that creates the moments).
    pub time: usize,
}

impl AdamWStep {
    /// `(1 − β₁ᵗ, 1 − β₂ᵗ)`, raised in f32 as burn does.
    fn bias_corrections(&self) -> (f32, f32) {
        let t = i32::try_from(self.time).unwrap_or(i32::MAX);
        (1.0 - self.beta_1.powi(t), 1.0 - self.beta_2.powi(t))
    }

    /// `lr·λ` in f64, as burn computes it.
    fn decay_rate(&self) -> f64 {
        self.lr * f64::from(self.weight_decay)
    }
}

/// The operation a backend runs for [`adamw_step`]. The default is burn's `AdamW` op by op;
/// flex overrides it with one pass.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait AdamWOps: Backend {
    /// A step with moments: the updated parameter, first moment and second moment.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_adamw_step::<Self>(param, grad, Some((moment_1, moment_2)), step)
    }

    /// The first step, which builds both moments from the gradient.
    fn adamw_first_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_adamw_step::<Self>(param, grad, None, step)
    }
}

/// burn's `AdamW` (`burn_optim::AdamW::step`) from burn's ops, in its order.
fn composed_adamw_step<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moments: Option<(FloatTensor<B>, FloatTensor<B>)>,
    step: AdamWStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (f1, f2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
    let scaled_grad = B::float_mul_scalar(grad.clone(), f1.into());
    let scaled_square = B::float_mul_scalar(B::float_powi_scalar(grad, 2.into()), f2.into());
    let (m, v) = match moments {
        Some((m, v)) => (
            B::float_add(B::float_mul_scalar(m, step.beta_1.into()), scaled_grad),
            B::float_add(B::float_mul_scalar(v, step.beta_2.into()), scaled_square),
        ),
        None => (scaled_grad, scaled_square),
    };
    let (c1, c2) = step.bias_corrections();
    let m_hat = B::float_div_scalar(m.clone(), c1.into());
    let v_hat = B::float_div_scalar(v.clone(), c2.into());
    let denominator = B::float_add_scalar(B::float_sqrt(v_hat), step.epsilon.into());
    let delta = B::float_div(m_hat, denominator);
    let decay_rate = step.decay_rate();
    let decayed = if decay_rate == 0.0 {
        param
    } else {
        B::float_mul_scalar(param, (1.0 - decay_rate).into())
    };
    let param = B::float_sub(decayed, B::float_mul_scalar(delta, step.lr.into()));
    (param, m, v)
}

#[cfg(feature = "flex")]
impl AdamWOps for burn::backend::Flex {
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex_adamw_step(param, grad, Some((moment_1, moment_2)), step)
    }

    fn adamw_first_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex_adamw_step(param, grad, None, step)
    }
}

/// burn-flex's single pass for f32 tensors; burn's ops for other dtypes.
#[cfg(feature = "flex")]
fn flex_adamw_step(
    param: FloatTensor<burn::backend::Flex>,
    grad: FloatTensor<burn::backend::Flex>,
    moments: Option<(
        FloatTensor<burn::backend::Flex>,
        FloatTensor<burn::backend::Flex>,
    )>,
    step: AdamWStep,
) -> (
    FloatTensor<burn::backend::Flex>,
    FloatTensor<burn::backend::Flex>,
    FloatTensor<burn::backend::Flex>,
) {
    let f32_dtype = burn::tensor::DType::F32;
    let moments_f32 = moments
        .as_ref()
        .is_none_or(|(m, v)| m.dtype() == f32_dtype && v.dtype() == f32_dtype);
    if param.dtype() != f32_dtype || grad.dtype() != f32_dtype || !moments_f32 {
        return composed_adamw_step::<burn::backend::Flex>(param, grad, moments, step);
    }
    let (bias_correction_1, bias_correction_2) = step.bias_corrections();
    let decay_rate = step.decay_rate();
    let constants = burn_flex::ops::optim::AdamWStepF32 {
        beta_1: step.beta_1,
        beta_2: step.beta_2,
        bias_correction_1,
        bias_correction_2,
        epsilon: step.epsilon,
        // burn's scalar ops round an f64 scalar to the f32 element.
        lr: step.lr as f32,
        decay: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
    };
    burn_flex::ops::optim::adamw_step_f32(param, grad, moments, constants)
}

#[cfg(feature = "ndarray")]
impl AdamWOps for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl AdamWOps for burn::backend::Cube {}

/// An optimizer's tensors are untracked (burn hands optimizers the inner backend's tensors); a
/// tracked call runs burn's ops.
impl<B: Backend, C: CheckpointStrategy> AdamWOps for Autodiff<B, C> {}

/// One AdamW step on a parameter: returns the updated parameter and moments (each the shape of
/// `param`). `moments` is `None` on the first step. With `g` the gradient, `t` = `step.time`:
///
/// ```text
/// m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
/// p ← p·(1 − lr·λ) − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
/// ```
///
/// exactly as burn's `AdamW` optimizer computes it (same ops, same f32 roundings).
///
/// # Panics
/// If the shapes differ.
///
/// # Shapes
/// - `param`, `grad`, the moments and every output: the same shape
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use peft_core::optim::{AdamWStep, adamw_step};
/// let device = Device::flex();
/// let p = Tensor::<1>::from_floats([1.0, -2.0], &device);
/// let g = Tensor::<1>::from_floats([0.5, -0.5], &device);
/// let step = AdamWStep {
///     beta_1: 0.9,
///     beta_2: 0.999,
///     epsilon: 1e-8,
///     weight_decay: 0.0,
///     lr: 0.1,
///     time: 1,
/// };
/// let (p, m, v) = adamw_step(p, g, None, step);
/// // The first step moves each weight by lr against its gradient's sign.
/// p.into_data().assert_approx_eq::<f32>(
///     &burn::tensor::TensorData::from([0.9f32, -1.9]),
///     burn::tensor::Tolerance::absolute(1e-6),
/// );
/// // The moments: (1 − β₁)·g and (1 − β₂)·g².
/// m.into_data().assert_approx_eq::<f32>(
///     &burn::tensor::TensorData::from([0.05f32, -0.05]),
///     burn::tensor::Tolerance::absolute(1e-6),
/// );
/// v.into_data().assert_approx_eq::<f32>(
///     &burn::tensor::TensorData::from([0.00025f32, 0.00025]),
///     burn::tensor::Tolerance::absolute(1e-8),
/// );
/// ```
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    assert_eq!(param.dims(), grad.dims(), "adamw_step: gradient shape");
    let (p, m, v) = match moments {
        Some((m, v)) => {
            assert_eq!(param.dims(), m.dims(), "adamw_step: first moment shape");
            assert_eq!(param.dims(), v.dims(), "adamw_step: second moment shape");
            <Dispatch as AdamWOps>::adamw_step(
                param.into_dispatch(),
                grad.into_dispatch(),
                m.into_dispatch(),
                v.into_dispatch(),
                step,
            )
        }
        None => <Dispatch as AdamWOps>::adamw_first_step(
            param.into_dispatch(),
            grad.into_dispatch(),
            step,
        ),
    };
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData, Tolerance};

    /// burn's `AdamW` as its `step` writes it, with the tensor API.
    fn burn_adamw(
        p: Tensor<2>,
        g: Tensor<2>,
        moments: Option<(Tensor<2>, Tensor<2>)>,
        s: AdamWStep,
    ) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        let (f1, f2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
        let (m, v) = match moments {
            Some((m, v)) => (
                m.mul_scalar(s.beta_1).add(g.clone().mul_scalar(f1)),
                v.mul_scalar(s.beta_2).add(g.square().mul_scalar(f2)),
            ),
            None => (g.clone().mul_scalar(f1), g.square().mul_scalar(f2)),
        };
        let t = s.time as i32;
        let m_hat = m.clone().div_scalar(1f32 - s.beta_1.powi(t));
        let v_hat = v.clone().div_scalar(1f32 - s.beta_2.powi(t));
        let delta = m_hat.div(v_hat.sqrt().add_scalar(s.epsilon));
        let rate = s.lr * f64::from(s.weight_decay);
        let decayed = if rate == 0.0 {
            p
        } else {
            p.mul_scalar(1.0 - rate)
        };
        (decayed - delta.mul_scalar(s.lr), m, v)
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// On CPU backends the single pass is burn's arithmetic bit for bit; GPU compilers may
    /// contract a multiply and an add.
    fn exact(device: &Device) -> bool {
        !format!("{device:?}").to_lowercase().contains("wgpu")
            && !format!("{device:?}").to_lowercase().contains("cuda")
    }

    #[test]
    fn steps_equal_burns_adamw_op_by_op() {
        for device in crate::device::suite_devices() {
            for weight_decay in [0.0, 0.01] {
                let shape = [37, 129];
                let rand =
                    |s: f64| Tensor::<2>::random(shape, Distribution::Normal(0.0, s), &device);
                let mut ours = rand(1.0);
                let mut reference = ours.clone();
                let mut moments_ours = None;
                let mut moments_ref = None;
                for time in 1..=3 {
                    let g = rand(10f64.powi(time - 3));
                    let s = AdamWStep {
                        beta_1: 0.9,
                        beta_2: 0.999,
                        epsilon: 1e-8,
                        weight_decay,
                        lr: 1e-3,
                        time: time as usize,
                    };
                    let (p, m, v) = adamw_step(ours, g.clone(), moments_ours, s);
                    let (pr, mr, vr) = burn_adamw(reference, g, moments_ref, s);
                    for (a, b, what) in [(&p, &pr, "param"), (&m, &mr, "m"), (&v, &vr, "v")] {
                        let (a, b) = (values(a.clone()), values(b.clone()));
                        if exact(&device) {
                            assert!(a == b, "{device:?} wd {weight_decay} step {time}: {what}");
                        } else {
                            TensorData::from(a.as_slice()).assert_approx_eq::<f32>(
                                &TensorData::from(b.as_slice()),
                                Tolerance::relative(1e-5),
                            );
                        }
                    }
                    (ours, reference) = (p, pr);
                    (moments_ours, moments_ref) = (Some((m, v)), Some((mr, vr)));
                }
            }
        }
    }

    #[test]
    fn a_parameter_another_tensor_shares_is_left_unchanged() {
        let device = Device::default();
        let p = Tensor::<2>::random([64, 600], Distribution::Default, &device);
        let g = Tensor::<2>::random([64, 600], Distribution::Default, &device);
        let before = values(p.clone());
        let s = AdamWStep {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
            lr: 1e-2,
            time: 1,
        };
        let (updated, _, _) = adamw_step(p.clone(), g, None, s);
        assert_eq!(values(p), before);
        assert_ne!(values(updated), before);
    }
}
