//! `LoraModel`: a model with LoRA adapters attached, and what can be done with it.

use std::collections::{BTreeMap, HashMap};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use peft_core::io::{read_params, update_weights};
use peft_core::{AdapterSwitch, Inventory, ParamCounts, Target};

use crate::config::LoraConfig;
use crate::error::Result;
use crate::inject::{Factors, InitialFactors, InjectOptions};

/// One adapted layer: where it is and its resolved rank, alpha and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTarget {
    /// The layer.
    pub target: Target,
    /// Rank after `rank_pattern`.
    pub r: usize,
    /// Alpha after `alpha_pattern`.
    pub alpha: f64,
    /// `alpha/r` or `alpha/sqrt(r)`.
    pub scaling: f64,
}

impl LoraTarget {
    /// Path of the A factor (`[d_in, r]`) in the model.
    pub fn a_path(&self) -> String {
        format!("{}.weight.lora.a", self.target.path)
    }

    /// Path of the B factor (`[r, d_out]`) in the model.
    pub fn b_path(&self) -> String {
        format!("{}.weight.lora.b", self.target.path)
    }

    /// Path of DoRA's magnitude (`[d_out]`) in the model.
    pub fn magnitude_path(&self) -> String {
        format!("{}.weight.lora.magnitude", self.target.path)
    }

    /// Path of the base weight.
    pub fn weight_path(&self) -> String {
        format!("{}.weight", self.target.path)
    }
}

/// A model whose targeted weights carry [`LoraAdapter`](crate::LoraAdapter)s (PEFT's `PeftModel`).
///
/// `model` is the user's own type, unchanged: call its `forward` as before. Train it with any
/// burn optimizer (`lora.model = optim.step(lr, lora.model, grads)`): only the adapters and
/// `modules_to_save` receive gradients.
#[derive(Debug, Clone)]
pub struct LoraModel<M> {
    /// The adapted model.
    pub model: M,
    config: LoraConfig,
    targets: Vec<LoraTarget>,
    modules_to_save: Vec<String>,
    switch: AdapterSwitch,
    options: InjectOptions,
}

/// A model whose adapters were folded into its weights, keeping the factors so that
/// [`unmerge`](Self::unmerge) can restore the base.
#[derive(Debug, Clone)]
pub struct MergedLoraModel<M> {
    /// The merged model: plain weights, no adapters; runs at the base model's cost.
    pub model: M,
    config: LoraConfig,
    factors: InitialFactors,
    /// DoRA: `‖W + s·A·B‖` per column at merge time, by module path (unmerging needs it).
    norms: HashMap<String, TensorData>,
    targets: Vec<LoraTarget>,
    options: InjectOptions,
}

impl<M: Module> LoraModel<M> {
    pub(crate) fn from_parts(
        model: M,
        config: LoraConfig,
        targets: Vec<LoraTarget>,
        modules_to_save: Vec<String>,
        switch: AdapterSwitch,
        options: InjectOptions,
    ) -> Self {
        Self {
            model,
            config,
            targets,
            modules_to_save,
            switch,
            options,
        }
    }

    /// The config the adapters were made from.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The adapted layers, in model order.
    pub fn targets(&self) -> &[LoraTarget] {
        &self.targets
    }

    /// Burn paths of the modules trained in full.
    pub fn modules_to_save(&self) -> &[String] {
        &self.modules_to_save
    }

    pub(crate) fn options(&self) -> &InjectOptions {
        &self.options
    }

    /// Stops the adapters from contributing (PEFT's `disable_adapter()`), without removing them.
    pub fn disable_adapters(&self) {
        self.switch.set(false);
    }

    /// Turns the adapters back on.
    pub fn enable_adapters(&self) {
        self.switch.set(true);
    }

    /// Whether the adapters contribute.
    pub fn adapters_enabled(&self) -> bool {
        self.switch.is_enabled()
    }

    /// Trainable and total parameters (PEFT's `get_nb_trainable_parameters`).
    pub fn param_counts(&self) -> ParamCounts {
        let dora = usize::from(self.config.use_dora);
        let adapters: usize = self
            .targets
            .iter()
            .map(|t| {
                let [d_in, d_out] = t.target.weight_shape;
                t.r * (d_in + d_out) + dora * d_out
            })
            .sum();
        let saved: usize = Inventory::of(&self.model)
            .params
            .iter()
            .filter(|p| !p.in_adapter && self.in_modules_to_save(&p.path))
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        ParamCounts {
            trainable: adapters + saved,
            total: self.model.num_params(),
        }
    }

    /// One line: method, targets, ranks and parameter counts.
    pub fn summary(&self) -> String {
        let mut ranks: Vec<usize> = self.targets.iter().map(|t| t.r).collect();
        ranks.sort_unstable();
        ranks.dedup();
        format!(
            "{} on {} modules (r {:?}, rsLoRA {}) || {}",
            if self.config.use_dora { "DoRA" } else { "LoRA" },
            self.targets.len(),
            ranks,
            self.config.use_rslora,
            self.param_counts()
        )
    }

    pub(crate) fn in_modules_to_save(&self, path: &str) -> bool {
        peft_core::inject::under_any(&self.modules_to_save, path) && !path.contains(".lora.")
    }

    /// Host copies of every target's factors (and DoRA magnitude), burn layout, by burn
    /// module path.
    pub(crate) fn factors(&self) -> InitialFactors {
        let mut params = read_params(&self.model, |p| {
            p.ends_with(".weight.lora.a")
                || p.ends_with(".weight.lora.b")
                || p.ends_with(".weight.lora.magnitude")
        });
        self.targets
            .iter()
            .filter_map(|t| {
                let a = params.remove(&t.a_path())?;
                let b = params.remove(&t.b_path())?;
                let magnitude = params.remove(&t.magnitude_path());
                Some((t.target.path.clone(), Factors { a, b, magnitude }))
            })
            .collect()
    }

    /// DoRA: `‖W + s·A·B‖` per column of every target, by module path (empty for LoRA).
    fn dora_norms(&self, factors: &InitialFactors) -> HashMap<String, TensorData> {
        if !self.config.use_dora {
            return HashMap::new();
        }
        let weights = read_params(&self.model, |p| {
            self.targets.iter().any(|t| p == t.weight_path())
        });
        let device = Device::default();
        self.targets
            .iter()
            .filter_map(|t| {
                let f = factors.get(&t.target.path)?;
                let w = Tensor::<2>::from_data(weights.get(&t.weight_path())?.clone(), &device);
                let a = Tensor::<2>::from_data(f.a.clone(), &device);
                let b = Tensor::<2>::from_data(f.b.clone(), &device);
                let norm = crate::dora::composed_column_norm(&w, a, b, t.scaling);
                Some((t.target.path.clone(), norm.into_data()))
            })
            .collect()
    }

    /// Folds every adapter into its base weight (`W += s·A·B`; DoRA:
    /// `W = m · (W + s·A·B) / ‖W + s·A·B‖`) and removes the adapters; the factors are kept so
    /// that [`MergedLoraModel::unmerge`] can restore the base.
    pub fn merge(self) -> MergedLoraModel<M> {
        let factors = self.factors();
        let norms = self.dora_norms(&factors);
        self.switch.set(true);
        MergedLoraModel {
            model: self.model.materialize(),
            config: self.config,
            factors,
            norms,
            targets: self.targets,
            options: self.options,
        }
    }

    /// PEFT's `merge_and_unload()`: the merged model alone.
    pub fn merge_and_unload(self) -> M {
        self.merge().model
    }

    /// PEFT's `unload()`: removes the adapters, leaving the base weights untouched.
    pub fn unload(self) -> M {
        self.switch.set(false);
        self.model.materialize()
    }
}

impl<M: Module> MergedLoraModel<M> {
    /// Subtracts every adapter from its weight (`W = W' − s·A·B`; DoRA:
    /// `W = W' · ‖W + s·A·B‖ / m − s·A·B` with the norm kept at merge time, as PEFT caches it) and
    /// attaches the adapters again: the base weights come back within f32 rounding.
    pub fn unmerge(self) -> Result<LoraModel<M>> {
        let mut updates: HashMap<String, Box<dyn FnOnce(Tensor<2>) -> Tensor<2>>> = HashMap::new();
        for t in &self.targets {
            let Some(f) = self.factors.get(&t.target.path).cloned() else {
                continue;
            };
            let norm = self.norms.get(&t.target.path).cloned();
            let s = t.scaling;
            updates.insert(
                t.weight_path(),
                Box::new(move |w: Tensor<2>| {
                    let device = w.device();
                    let delta = Tensor::<2>::from_data(f.a, &device)
                        .matmul(Tensor::<2>::from_data(f.b, &device))
                        .mul_scalar(s);
                    let w = match (f.magnitude, norm) {
                        (Some(m), Some(n)) => {
                            let factor = Tensor::<1>::from_data(m, &device)
                                / Tensor::<1>::from_data(n, &device);
                            w / factor.unsqueeze::<2>()
                        }
                        _ => w,
                    };
                    w - delta
                }),
            );
        }
        let model = update_weights(self.model, updates)?;
        LoraModel::inject_with(model, &self.config, &self.options, self.factors)
    }

    /// The merged model alone.
    pub fn into_model(self) -> M {
        self.model
    }

    /// The factors kept for unmerging, burn layout, by module path.
    pub fn factors(&self) -> BTreeMap<String, (TensorData, TensorData)> {
        self.factors
            .iter()
            .map(|(k, f)| (k.clone(), (f.a.clone(), f.b.clone())))
            .collect()
    }
}
