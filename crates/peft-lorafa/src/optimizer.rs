//! `LoraFaOptimizerConfig`: PEFT's `create_lorafa_optimizer` as a burn [`ModuleOptimizer`].

use burn::module::{Module, Param, ParamGroup, ParamId};
use burn::optim::ModuleOptimizer;
use peft_core::paths::{PathVisitor, dotted, visit_with_paths};
use std::collections::HashMap;

use burn::tensor::Tensor;
use peft_lora::LoraModel;

use crate::adamw::{Frozen, HfAdamW};
use crate::error::{LoraFaError, Result};
use crate::projection::{ProjectedAdamW, ProjectionPrecision, gram_pinv};

/// Settings of the LoRA-FA optimizer, with PEFT's defaults (`betas=(0.9, 0.999)`, `eps=1e-6`,
/// `weight_decay=0.0`). The learning rate is passed to each `step`, as for burn's optimizers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraFaOptimizerConfig {
    /// β₁ (0.9).
    pub beta_1: f64,
    /// β₂ (0.999).
    pub beta_2: f64,
    /// ε added to `sqrt(v)` (1e-6).
    pub epsilon: f64,
    /// Decoupled weight decay, applied after the Adam step (0.0).
    pub weight_decay: f64,
    /// Precision of the gradient projection (f32).
    pub projection: ProjectionPrecision,
}

impl Default for LoraFaOptimizerConfig {
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-6,
            weight_decay: 0.0,
            projection: ProjectionPrecision::F32,
        }
    }
}

/// A parameter as the optimizer sees it.
struct Found {
    id: ParamId,
    trainable: bool,
    values: Vec<f32>,
    shape: Vec<usize>,
}

/// Every LoRA factor of the model, by path (`<module>.weight.lora.{a,b}`).
#[derive(Default)]
struct FindFactors {
    found: HashMap<String, Found>,
}

impl PathVisitor for FindFactors {
    fn visit_float<const D: usize>(&mut self, path: &[String], param: &Param<Tensor<D>>) {
        let path = dotted(path);
        if !(path.ends_with(".lora.a") || path.ends_with(".lora.b")) {
            return;
        }
        let t = param.val();
        let values = if path.ends_with(".a") {
            t.clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.found.insert(
            path,
            Found {
                id: param.id,
                trainable: t.is_require_grad(),
                shape: t.dims().to_vec(),
                values,
            },
        );
    }
}

impl LoraFaOptimizerConfig {
    /// PEFT's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the decoupled weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Sets β₁ and β₂.
    pub fn with_betas(mut self, beta_1: f64, beta_2: f64) -> Self {
        self.beta_1 = beta_1;
        self.beta_2 = beta_2;
        self
    }

    /// Sets ε.
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// Sets the projection precision.
    pub fn with_projection(mut self, projection: ProjectionPrecision) -> Self {
        self.projection = projection;
        self
    }

    fn adam(&self) -> Result<HfAdamW> {
        let ok = (0.0..1.0).contains(&self.beta_1)
            && (0.0..1.0).contains(&self.beta_2)
            && self.epsilon >= 0.0
            && self.weight_decay >= 0.0;
        if !ok {
            return Err(LoraFaError::InvalidConfig(format!(
                "betas must be in [0, 1), eps and weight_decay >= 0; got {self:?}"
            )));
        }
        Ok(HfAdamW {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
        })
    }

    /// Builds the optimizer for a LoRA model whose A factors are frozen
    /// ([`freeze_a`](crate::freeze_a)): every B gets the projected update with its own layer's
    /// scaling, every A is left unchanged, every other trainable parameter (e.g.
    /// `modules_to_save`) gets plain HF AdamW.
    ///
    /// A and B are paired explicitly, per adapted layer (never by parameter order). The result is
    /// burn's [`ModuleOptimizer`]: `step(lr, model, grads)`, `to_record` / `load_record` to save
    /// and resume, and it fits burn's `Learner`.
    pub fn init<M: Module>(&self, lora: &LoraModel<M>) -> Result<ModuleOptimizer> {
        let adam = self.adam()?;
        if lora.targets().is_empty() {
            return Err(LoraFaError::NotLora);
        }
        let mut finder = FindFactors::default();
        visit_with_paths(&lora.model, &mut finder);
        let mut optim = ModuleOptimizer::from(adam);
        let mut a_ids = Vec::new();
        for t in lora.targets() {
            let module = t.target.path.clone();
            let missing = |factor: &'static str| LoraFaError::MissingFactor {
                module: module.clone(),
                factor,
            };
            let a = finder.found.get(&t.a_path()).ok_or_else(|| missing("A"))?;
            let b = finder.found.get(&t.b_path()).ok_or_else(|| missing("B"))?;
            if a.trainable {
                return Err(LoraFaError::TrainableA(module));
            }
            if !b.trainable {
                return Err(LoraFaError::FrozenB(module));
            }
            let (d_in, r) = match a.shape.as_slice() {
                [d_in, r] => (*d_in, *r),
                _ => return Err(missing("A")),
            };
            let projected = ProjectedAdamW {
                pinv: gram_pinv(&a.values, d_in, r),
                inv_scaling_sq: 1.0 / (t.scaling * t.scaling),
                precision: self.projection,
                adam,
            };
            optim = optim.with_group(ParamGroup::from_ids(vec![b.id]), projected, None);
            a_ids.push(a.id);
        }
        Ok(optim.with_group(ParamGroup::from_ids(a_ids), Frozen, None))
    }
}
