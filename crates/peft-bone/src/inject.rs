//! Injecting Bone/MiSS adapters into any burn model.

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use peft_core::{
    AdapterFactory, AdapterSwitch, InjectionPlan, KeyMap, LayerKind, ResolveOptions, Target,
};

use crate::config::{BoneConfig, BoneMode};
use crate::error::{BoneError, Result};
use crate::layer::BoneAdapter;
use crate::model::BoneModel;

/// Block values (burn storage, rank 3) to start from instead of a fresh initialisation.
pub(crate) type InitialBlocks = HashMap<String, TensorData>;

/// The block's stored shape for a layer with weight `[d_in, d_out]`.
pub fn block_shape(mode: BoneMode, r: usize, d_out: usize) -> [usize; 3] {
    match mode {
        BoneMode::Default => [1, r, d_out],
        BoneMode::Mini { mini_r } => [1, r, mini_r],
        BoneMode::Bat => [d_out / r, r, r],
    }
}

/// PEFT 0.21.2's rules for a layer with weight `[d_in, d_out]`.
pub fn check_layer(config: &BoneConfig, name: &str, d_in: usize, d_out: usize) -> Result<()> {
    let r = config.r;
    let fail = |reason: String| {
        Err(BoneError::Shape {
            module: name.to_string(),
            shape: [d_out, d_in],
            reason,
        })
    };
    if r > d_in {
        return fail(format!("r = {r} exceeds in_features = {d_in}"));
    }
    match config.mode {
        BoneMode::Bat if !d_in.is_multiple_of(r) || !d_out.is_multiple_of(r) => fail(format!(
            "bat needs in_features and out_features divisible by r = {r}"
        )),
        BoneMode::Mini { mini_r } if !d_out.is_multiple_of(mini_r) => fail(format!(
            "mini needs out_features divisible by mini_r = {mini_r}"
        )),
        _ => Ok(()),
    }
}

struct BoneFactory {
    config: BoneConfig,
    initial: InitialBlocks,
    switch: AdapterSwitch,
}

impl AdapterFactory for BoneFactory {
    type Adapter = BoneAdapter;

    fn create(
        &mut self,
        target: &Target,
        _weight: &dyn Fn() -> Tensor<2>,
        device: &Device,
    ) -> BoneAdapter {
        let [_, d_out] = target.weight_shape;
        let c = &self.config;
        let shape = block_shape(c.mode, c.r, d_out);
        let block = match self.initial.remove(&target.path) {
            Some(data) => Tensor::from_data(data, device),
            None if c.random_init => {
                // kaiming_uniform_(a=√5) of PEFT's tensor: bound 1/sqrt(fan_in).
                let fan_in = match c.mode {
                    BoneMode::Bat => c.r * c.r,
                    _ => shape[2],
                };
                let bound = 1.0 / (fan_in as f64).sqrt();
                Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
            }
            None => Tensor::zeros(shape, device),
        };
        let dropout = if c.mode == BoneMode::Bat {
            0.0
        } else {
            c.dropout
        };
        BoneAdapter::new(
            Param::from_tensor(block),
            c.r,
            c.mode,
            dropout,
            self.switch.clone(),
        )
    }
}

impl<M: Module> BoneModel<M> {
    /// Attaches fresh Bone/MiSS adapters (zero blocks) to the Linear layers `config` targets and
    /// freezes everything else. Every target is checked against the mode's shape rules first;
    /// module names go through `key_map` (burn path → PyTorch name).
    pub fn inject(model: M, config: &BoneConfig, key_map: &KeyMap) -> Result<Self> {
        Self::inject_with(model, config, key_map, InitialBlocks::new())
    }

    /// Resolves and checks the targets without changing the model.
    pub fn plan(model: &M, config: &BoneConfig, key_map: &KeyMap) -> Result<InjectionPlan> {
        config.validate()?;
        let resolve = ResolveOptions {
            key_map: key_map.clone(),
            output_head: None,
        };
        let plan = InjectionPlan::resolve(model, &config.targets, &resolve, &[LayerKind::Linear])?;
        for t in &plan.targets {
            let [d_in, d_out] = t.weight_shape;
            check_layer(config, &t.name, d_in, d_out)?;
        }
        Ok(plan)
    }

    pub(crate) fn inject_with(
        model: M,
        config: &BoneConfig,
        key_map: &KeyMap,
        initial: InitialBlocks,
    ) -> Result<Self> {
        let plan = Self::plan(&model, config, key_map)?;
        let switch = AdapterSwitch::default();
        let factory = BoneFactory {
            config: config.clone(),
            initial,
            switch: switch.clone(),
        };
        let model = peft_core::inject(model, &plan, factory);
        Ok(BoneModel::from_parts(
            model,
            config.clone(),
            plan.targets,
            switch,
            key_map.clone(),
        ))
    }
}
