//! [`FusedAdamW`]: burn's AdamW with each parameter's update as one operation.
//!
//! burn's `AdamW` updates a parameter with about fifteen tensor ops, each a pass over the
//! parameter with its own buffer; for full fine-tuning that is several passes over every weight
//! of the model per step. [`FusedAdamW`] calls [`peft_core::optim::adamw_step`] instead: one pass
//! on flex, burn's ops elsewhere. The arithmetic is burn's, rounded as burn rounds it (on flex
//! the result is burn's bit for bit), and the state is burn's `AdamWState`, so an optimizer
//! record written by either loads into the other.

use burn::optim::{AdamWState, AdaptiveMomentumState, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};
use burn_optim::LearningRate;
use peft_core::optim::{AdamWStep, adamw_step};

/// AdamW with decoupled weight decay, `p ← p·(1 − lr·λ) − lr · m̂ / (√v̂ + ε)`, as
/// `torch.optim.AdamW` defines it and burn's `AdamW` computes it (without AMSGrad).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedAdamW {
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// ε added to `√v̂`.
    pub epsilon: f32,
    /// Decoupled weight decay λ.
    pub weight_decay: f32,
}

impl FusedAdamW {
    /// `torch.optim.AdamW`'s settings (betas 0.9 and 0.999, ε 1e-8) with weight decay
    /// `weight_decay` (PyTorch's default is 0.01; transformers' `Trainer` uses 0.0).
    pub fn new(weight_decay: f32) -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay,
        }
    }

    /// The optimizer for a whole module (every parameter with a gradient).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (moments, time) = match state {
            Some(AdamWState { momentum }) => (
                Some((momentum.moment_1, momentum.moment_2)),
                momentum.time + 1,
            ),
            None => (None, 1),
        };
        let step = AdamWStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            lr,
            time,
        };
        let (tensor, moment_1, moment_2) = adamw_step(tensor, grad, moments, step);
        let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
        (tensor, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{TensorData, Tolerance};

    #[derive(Module, Debug)]
    struct Net {
        a: Linear,
        b: Linear,
    }

    /// Values of both signs from a formula: tests that run in parallel share the device's
    /// random generator, so nothing here draws from it.
    fn values(n: usize, salt: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.7 + salt).sin() * 0.3)
            .collect()
    }

    fn linear(d_in: usize, d_out: usize, salt: f32, device: &Device) -> Linear {
        let weight = TensorData::new(values(d_in * d_out, salt), [d_in, d_out]);
        let bias = TensorData::new(values(d_out, salt + 1.0), [d_out]);
        Linear {
            weight: Param::from_tensor(Tensor::from_data(weight, device)),
            bias: Some(Param::from_tensor(Tensor::from_data(bias, device))),
        }
    }

    fn net(device: &Device) -> Net {
        Net {
            a: linear(24, 40, 0.0, device),
            b: linear(40, 5, 3.0, device),
        }
    }

    fn burns(weight_decay: f32) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(weight_decay)
            .init()
    }

    /// `steps` steps of `optim` from `net` on a fixed loss; returns the weights.
    fn train(mut net: Net, optim: &mut ModuleOptimizer, steps: usize, device: &Device) -> Net {
        for step in 0..steps {
            let x = TensorData::new(values(8 * 24, 10.0 + step as f32), [8, 24]);
            let x = Tensor::<2>::from_data(x, device).mul_scalar(3.0);
            let loss = net.b.forward(net.a.forward(x).tanh()).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(1e-2, net, grads);
        }
        net
    }

    fn weights(net: &Net) -> Vec<Vec<f32>> {
        [&net.a, &net.b]
            .iter()
            .flat_map(|l| [l.weight.val(), l.bias.as_ref().unwrap().val().unsqueeze()])
            .map(|t: Tensor<2>| t.into_data().convert::<f32>().try_into_vec().unwrap())
            .collect()
    }

    /// On CPU backends the fused update is burn's bit for bit; GPU compilers may contract a
    /// multiply and an add.
    fn assert_same(ours: &Net, burn: &Net, device: &Device, what: &str) {
        let name = format!("{device:?}").to_lowercase();
        for (a, b) in weights(ours).into_iter().zip(weights(burn)) {
            if name.contains("wgpu") || name.contains("cuda") {
                TensorData::from(a.as_slice()).assert_approx_eq::<f32>(
                    &TensorData::from(b.as_slice()),
                    Tolerance::relative(1e-4),
                );
            } else {
                assert!(a == b, "{device:?}: {what}");
            }
        }
    }

    #[test]
    fn steps_equal_burns_adamw() {
        let device = Device::default().autodiff();
        for weight_decay in [0.0, 0.01] {
            let ours = train(
                net(&device),
                &mut FusedAdamW::new(weight_decay).init(),
                4,
                &device,
            );
            let theirs = train(net(&device), &mut burns(weight_decay), 4, &device);
            assert_same(
                &ours,
                &theirs,
                &device,
                &format!("weight decay {weight_decay}"),
            );
            let start = weights(&net(&device));
            assert_ne!(weights(&ours), start, "the steps changed the weights");
        }
    }

    #[test]
    fn either_optimizers_record_continues_in_the_other() {
        let device = Device::default().autodiff();
        let mut burn_optim = burns(0.01);
        let half = train(net(&device), &mut burn_optim, 2, &device);
        let record = burn_optim.to_record();
        // burn's record into ours, and on.
        let mut ours = FusedAdamW::new(0.01).init().load_record(record);
        let ours = train(half.clone(), &mut ours, 2, &device);
        let theirs = train(half.clone(), &mut burn_optim, 2, &device);
        assert_same(&ours, &theirs, &device, "burn's record, continued by ours");
        // Ours into burn's.
        let mut fused = FusedAdamW::new(0.01).init();
        let half = train(net(&device), &mut fused, 2, &device);
        let mut theirs_optim = burns(0.01).load_record(fused.to_record());
        let theirs = train(half.clone(), &mut theirs_optim, 2, &device);
        let ours = train(half, &mut fused, 2, &device);
        assert_same(&ours, &theirs, &device, "our record, continued by burn's");
    }
}
