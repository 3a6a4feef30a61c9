//! Hugging Face's AdamW (`transformers.AdamW`, `correct_bias=True`), the update PEFT's
//! `LoraFAOptimizer` applies: bias-corrected step size, `eps` added after the square root, and
//! decoupled weight decay applied *after* the Adam step as `p += p·(−lr·wd)`.

use burn::optim::{LearningRate, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor, TensorData};

/// Moments of one parameter.
#[derive(Clone)]
pub struct HfAdamState<const D: usize> {
    /// Steps taken.
    pub step: usize,
    /// First moment (`exp_avg`).
    pub exp_avg: Tensor<D>,
    /// Second moment (`exp_avg_sq`).
    pub exp_avg_sq: Tensor<D>,
}

impl<const D: usize> RecordState for HfAdamState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "exp_avg", self.exp_avg.to_data());
        out.push_tensor(prefix, "exp_avg_sq", self.exp_avg_sq.to_data());
        out.push_tensor(prefix, "step", TensorData::new(vec![self.step as i64], [1]));
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let exp_avg = src.take_tensor(prefix, "exp_avg")?;
        let exp_avg_sq = src.take_tensor(prefix, "exp_avg_sq")?;
        let step = src
            .take_tensor(prefix, "step")?
            .convert::<i64>()
            .try_into_vec::<i64>()
            .ok()?;
        Some(Self {
            step: usize::try_from(*step.first()?).ok()?,
            exp_avg: Tensor::from_data(exp_avg, device),
            exp_avg_sq: Tensor::from_data(exp_avg_sq, device),
        })
    }
}

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HfAdamW {
    /// β₁.
    pub beta_1: f64,
    /// β₂.
    pub beta_2: f64,
    /// Added to `sqrt(v)`.
    pub epsilon: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl HfAdamW {
    /// One update of `p` with gradient `g`.
    pub fn update<const D: usize>(
        &self,
        lr: LearningRate,
        p: Tensor<D>,
        g: Tensor<D>,
        state: Option<HfAdamState<D>>,
    ) -> (Tensor<D>, HfAdamState<D>) {
        let (step, m, v) = match state {
            Some(s) => (s.step, s.exp_avg, s.exp_avg_sq),
            None => (0, g.zeros_like(), g.zeros_like()),
        };
        let step = step + 1;
        let m = m.mul_scalar(self.beta_1) + g.clone().mul_scalar(1.0 - self.beta_1);
        let v = v.mul_scalar(self.beta_2) + (g.clone() * g).mul_scalar(1.0 - self.beta_2);
        let denom = v.clone().sqrt().add_scalar(self.epsilon);
        let bc1 = 1.0 - self.beta_1.powi(step as i32);
        let bc2 = 1.0 - self.beta_2.powi(step as i32);
        let step_size = lr * bc2.sqrt() / bc1;
        let mut p = p - (m.clone() / denom).mul_scalar(step_size);
        if self.weight_decay > 0.0 {
            p = p.clone() + p.mul_scalar(-lr * self.weight_decay);
        }
        let state = HfAdamState {
            step,
            exp_avg: m,
            exp_avg_sq: v,
        };
        (p, state)
    }
}

impl Optimizer for HfAdamW {
    type State<const D: usize> = HfAdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (p, s) = self.update(lr, tensor, grad, state);
        (p, Some(s))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        HfAdamState {
            step: state.step,
            exp_avg: state.exp_avg.to_device(device),
            exp_avg_sq: state.exp_avg_sq.to_device(device),
        }
    }
}

/// Leaves a parameter unchanged (LoRA-FA's A, should it still have a gradient).
#[derive(Debug, Clone, Copy)]
pub struct Frozen;

impl Optimizer for Frozen {
    type State<const D: usize> = ();

    fn step<const D: usize>(
        &self,
        _lr: LearningRate,
        tensor: Tensor<D>,
        _grad: Tensor<D>,
        _state: Option<()>,
    ) -> (Tensor<D>, Option<()>) {
        (tensor, None)
    }

    fn to_device<const D: usize>(state: (), _device: &Device) {
        state
    }
}
