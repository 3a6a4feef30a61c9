//! Injecting LoRA adapters into any burn model.

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use peft_core::{
    AdapterFactory, AdapterSwitch, InjectionPlan, KeyMap, LayerKind, ResolveOptions, Target,
};

use crate::config::{LoraConfig, LoraInit};
use crate::error::{LoraError, Result};
use crate::layer::LoraAdapter;
use crate::model::{LoraModel, LoraTarget};

/// How to inject: module-name mapping, what to save, and the weight-space dropout escape hatch.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// Burn path → PyTorch module name (targets and file keys use the latter).
    pub key_map: KeyMap,
    /// The output head `all-linear` leaves out (PyTorch name); default: `lm_head`.
    pub output_head: Option<String>,
    /// Accept `lora_dropout > 0` on burn's own layers, where it cannot be applied.
    pub allow_training_without_dropout: bool,
    /// Save the base weight of targeted `embed_tokens` / `lm_head` layers next to the adapter
    /// (`<module>.base_layer.weight`), as PEFT's `save_embedding_layers="auto"` does for
    /// transformers models. Default `true`; PEFT does not do it for models without
    /// `get_input_embeddings` (plain `nn.Module`s).
    pub save_embedding_layers: bool,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            key_map: KeyMap::default(),
            output_head: None,
            allow_training_without_dropout: false,
            save_embedding_layers: true,
        }
    }
}

impl InjectOptions {
    /// Sets the key map.
    pub fn with_key_map(mut self, key_map: KeyMap) -> Self {
        self.key_map = key_map;
        self
    }

    /// Names the output head (PyTorch name) that `all-linear` leaves out.
    pub fn with_output_head(mut self, head: impl Into<String>) -> Self {
        self.output_head = Some(head.into());
        self
    }

    /// Sets [`save_embedding_layers`](Self::save_embedding_layers).
    pub fn with_save_embedding_layers(mut self, save: bool) -> Self {
        self.save_embedding_layers = save;
        self
    }

    /// Accepts training burn's own layers without dropout.
    pub fn allow_training_without_dropout(mut self, allow: bool) -> Self {
        self.allow_training_without_dropout = allow;
        self
    }
}

/// One target's adapter values on the host, burn layout.
#[derive(Debug, Clone)]
pub(crate) struct Factors {
    /// `A` `[d_in, r]`.
    pub a: TensorData,
    /// `B` `[r, d_out]`.
    pub b: TensorData,
    /// DoRA's magnitude `[d_out]`.
    pub magnitude: Option<TensorData>,
}

/// Values to start from instead of a fresh initialisation, by burn path.
pub(crate) type InitialFactors = HashMap<String, Factors>;

struct LoraFactory<'a> {
    init: LoraInit,
    dropout: f64,
    dora: bool,
    per_target: HashMap<&'a str, &'a LoraTarget>,
    initial: InitialFactors,
    switch: AdapterSwitch,
}

impl AdapterFactory for LoraFactory<'_> {
    type Adapter = LoraAdapter;

    fn create(
        &mut self,
        target: &Target,
        weight: &dyn Fn() -> Tensor<2>,
        device: &Device,
    ) -> LoraAdapter {
        let t = self.per_target[target.path.as_str()];
        let [d_in, d_out] = target.weight_shape;
        let r = t.r;
        let (a, b, magnitude) = match self.initial.remove(&target.path) {
            Some(f) => (
                Tensor::from_data(f.a, device),
                Tensor::from_data(f.b, device),
                f.magnitude.map(|m| Tensor::<1>::from_data(m, device)),
            ),
            None => {
                let (a, b) = init_factors(self.init, target.kind, d_in, d_out, r, device);
                (a, b, None)
            }
        };
        // DoRA starts from m = ‖W + s·A·B‖ (PEFT's `DoraLinearLayer.update_layer`).
        let magnitude = self.dora.then(|| {
            magnitude.unwrap_or_else(|| {
                crate::dora::composed_column_norm(
                    &weight().to_device(device),
                    a.clone(),
                    b.clone(),
                    t.scaling,
                )
            })
        });
        let dropout = if target.kind == LayerKind::Embedding {
            0.0
        } else {
            self.dropout
        };
        let adapter = LoraAdapter::new(
            Param::from_tensor(a),
            Param::from_tensor(b),
            t.scaling,
            dropout,
            self.switch.clone(),
        );
        match magnitude {
            Some(m) => adapter.with_magnitude(Param::from_tensor(m)),
            None => adapter,
        }
    }
}

/// PEFT's `reset_lora_parameters`, in burn layout (`A` `[d_in, r]`, `B` `[r, d_out]`).
fn init_factors(
    init: LoraInit,
    kind: LayerKind,
    d_in: usize,
    d_out: usize,
    r: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let uniform = |shape: [usize; 2], fan_in: usize| {
        let bound = 1.0 / (fan_in as f64).sqrt();
        Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
    };
    let normal =
        |shape: [usize; 2], std: f64| Tensor::random(shape, Distribution::Normal(0.0, std), device);
    match (kind, init) {
        (LayerKind::Linear, LoraInit::Default) => {
            (uniform([d_in, r], d_in), Tensor::zeros([r, d_out], device))
        }
        (LayerKind::Linear, LoraInit::Gaussian) => (
            normal([d_in, r], 1.0 / r as f64),
            Tensor::zeros([r, d_out], device),
        ),
        (LayerKind::Linear, LoraInit::Random) => (uniform([d_in, r], d_in), uniform([r, d_out], r)),
        (LayerKind::Embedding, LoraInit::Random) => {
            (normal([d_in, r], 1.0), normal([r, d_out], 1.0))
        }
        (LayerKind::Embedding, _) => (Tensor::zeros([d_in, r], device), normal([r, d_out], 1.0)),
    }
}

impl<M: Module> LoraModel<M> {
    /// Attaches fresh LoRA adapters to the modules `config` targets, freezing everything else
    /// (except `modules_to_save`).
    ///
    /// Errors: invalid config, targets that match nothing (the error lists the adaptable
    /// modules), a model that already has adapters, and `lora_dropout > 0` on burn's own layers
    /// unless [`InjectOptions::allow_training_without_dropout`].
    pub fn inject(model: M, config: &LoraConfig, options: &InjectOptions) -> Result<Self> {
        Self::inject_with(model, config, options, InitialFactors::new())
    }

    /// Resolves which layers `config` targets on `model`, with their ranks and scalings,
    /// without changing the model.
    pub fn plan(
        model: &M,
        config: &LoraConfig,
        options: &InjectOptions,
    ) -> Result<(InjectionPlan, Vec<LoraTarget>)> {
        config.validate()?;
        let resolve = ResolveOptions {
            key_map: options.key_map.clone(),
            output_head: options.output_head.clone(),
        };
        let plan = InjectionPlan::resolve(
            model,
            &config.targets,
            &resolve,
            &[LayerKind::Linear, LayerKind::Embedding],
        )?;
        if config.lora_dropout > 0.0
            && !options.allow_training_without_dropout
            && let Some(t) = plan
                .targets
                .iter()
                .find(|t| !t.factored && t.kind == LayerKind::Linear)
        {
            return Err(LoraError::DropoutInWeightSpace {
                dropout: config.lora_dropout,
                module: t.path.clone(),
                kind: format!("{:?}", t.kind),
            });
        }
        let targets = plan
            .targets
            .iter()
            .map(|t| {
                let (r, alpha) = config.rank_and_alpha(&t.name)?;
                Ok(LoraTarget {
                    target: t.clone(),
                    r,
                    alpha,
                    scaling: config.scaling(r, alpha),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((plan, targets))
    }

    pub(crate) fn inject_with(
        model: M,
        config: &LoraConfig,
        options: &InjectOptions,
        initial: InitialFactors,
    ) -> Result<Self> {
        let (plan, targets) = Self::plan(&model, config, options)?;
        Ok(Self::inject_planned(
            model, config, options, plan, targets, initial,
        ))
    }

    /// Injects adapters for an already resolved plan.
    pub(crate) fn inject_planned(
        model: M,
        config: &LoraConfig,
        options: &InjectOptions,
        plan: InjectionPlan,
        targets: Vec<LoraTarget>,
        initial: InitialFactors,
    ) -> Self {
        let switch = AdapterSwitch::default();
        let factory = LoraFactory {
            init: config.init_lora_weights,
            dropout: config.lora_dropout,
            dora: config.use_dora,
            per_target: targets
                .iter()
                .map(|t| (t.target.path.as_str(), t))
                .collect(),
            initial,
            switch: switch.clone(),
        };
        let model = peft_core::inject(model, &plan, factory);
        LoraModel::from_parts(
            model,
            config.clone(),
            targets,
            plan.modules_to_save,
            switch,
            options.clone(),
        )
    }
}
