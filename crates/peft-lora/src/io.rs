//! Saving and loading LoRA adapters in PEFT's folder format.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::TensorData;
use peft_core::io::{
    CONFIG_NAME, WEIGHTS_NAME, peft_json, read_params, read_safetensors, replace_params, transpose,
    write_atomic, write_safetensors,
};
use peft_core::{Inventory, LayerKind, PEFT_PREFIX, PeftError};

use crate::config::LoraConfig;
use crate::error::Result;
use crate::inject::{Factors, InitialFactors, InjectOptions};
use crate::model::{LoraModel, LoraTarget};

/// The file keys of a target's A and B (PEFT's naming).
pub fn tensor_keys(t: &LoraTarget) -> (String, String) {
    let base = format!("{PEFT_PREFIX}{}", t.target.name);
    match t.target.kind {
        LayerKind::Linear => (
            format!("{base}.lora_A.weight"),
            format!("{base}.lora_B.weight"),
        ),
        LayerKind::Embedding => (
            format!("{base}.lora_embedding_A"),
            format!("{base}.lora_embedding_B"),
        ),
    }
}

/// The file key of a target's DoRA magnitude (`[out]` for Linear, `[embedding_dim]` for
/// Embedding): PEFT saves `lora_magnitude_vector.<adapter>.weight` without `.<adapter>.weight`.
pub fn magnitude_key(t: &LoraTarget) -> String {
    format!("{PEFT_PREFIX}{}.lora_magnitude_vector", t.target.name)
}

/// Module names whose base weight PEFT saves next to the adapter when they are targeted
/// (`save_embedding_layers="auto"`, `EMBEDDING_LAYER_NAMES`).
const EMBEDDING_LAYER_NAMES: &[&str] = &["embed_tokens", "lm_head"];

/// The file key of a targeted embedding layer's base weight, when PEFT saves it.
fn base_layer_key(t: &LoraTarget) -> Option<String> {
    let last = t.target.name.rsplit('.').next().unwrap_or_default();
    EMBEDDING_LAYER_NAMES
        .contains(&last)
        .then(|| format!("{PEFT_PREFIX}{}.base_layer.weight", t.target.name))
}

/// The file key of a `modules_to_save` parameter at burn path `path`.
fn saved_key(path: &str, options: &InjectOptions) -> String {
    let (module, param) = path.rsplit_once('.').unwrap_or(("", path));
    format!("{PEFT_PREFIX}{}.{param}", options.key_map.to_peft(module))
}

fn linear_weight_paths<M: Module>(model: &M) -> Vec<String> {
    Inventory::of(model)
        .layers
        .into_iter()
        .filter(|l| l.kind == LayerKind::Linear)
        .map(|l| l.weight_path())
        .collect()
}

impl<M: Module> LoraModel<M> {
    /// The adapter's tensors as PEFT names and lays them out (`[r, in]`, `[out, r]`, …), plus
    /// the `modules_to_save` parameters.
    pub fn adapter_tensors(&self) -> Result<BTreeMap<String, TensorData>> {
        let mut out = BTreeMap::new();
        let mut factors = self.factors();
        for t in self.targets() {
            let (ka, kb) = tensor_keys(t);
            let f = factors
                .remove(&t.target.path)
                .ok_or_else(|| PeftError::UnknownModule(t.a_path()))?;
            out.insert(ka, transpose(&f.a)?);
            out.insert(kb, transpose(&f.b)?);
            if let Some(m) = f.magnitude {
                out.insert(magnitude_key(t), m);
            }
        }
        let save_base = self.options().save_embedding_layers;
        let base_weights = read_params(&self.model, |p| {
            save_base
                && self
                    .targets()
                    .iter()
                    .any(|t| base_layer_key(t).is_some() && p == t.weight_path())
        });
        for t in self.targets() {
            if let (Some(key), Some(w)) = (base_layer_key(t), base_weights.get(&t.weight_path())) {
                let w = match t.target.kind {
                    LayerKind::Linear => transpose(w)?,
                    LayerKind::Embedding => w.clone(),
                };
                out.insert(key, w);
            }
        }
        let linear = linear_weight_paths(&self.model);
        for (path, data) in read_params(&self.model, |p| self.in_modules_to_save(p)) {
            let key = saved_key(&path, self.options());
            let data = if linear.contains(&path) {
                transpose(&data)?
            } else {
                data
            };
            out.insert(key, data);
        }
        Ok(out)
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir` (created if
    /// needed), each through a temporary file and a rename.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        write_safetensors(&dir.join(WEIGHTS_NAME), &self.adapter_tensors()?)?;
        write_atomic(
            &dir.join(CONFIG_NAME),
            peft_json(&self.config().to_json()).as_bytes(),
        )?;
        Ok(())
    }

    /// Loads a PEFT LoRA adapter folder onto `model`: the targets are resolved from the folder's
    /// config, and every tensor is checked. Missing, unexpected and mis-shaped tensors are
    /// reported together, by name.
    pub fn load(model: M, dir: impl AsRef<Path>, options: &InjectOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config = LoraConfig::from_dir(dir)?;
        let mut tensors = read_safetensors(&dir.join(WEIGHTS_NAME))?;
        let linear = linear_weight_paths(&model);
        let (plan, targets) = Self::plan(&model, &config, options)?;
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        let mut initial = InitialFactors::new();
        let mut base_weights = BTreeMap::new();
        for t in &targets {
            // Embedding layers PEFT saved in full: they replace the base weights.
            if let Some(key) = base_layer_key(t)
                && let Some(w) = tensors.remove(&key)
            {
                let [d_in, d_out] = t.target.weight_shape;
                let file_shape = match t.target.kind {
                    LayerKind::Linear => [d_out, d_in],
                    LayerKind::Embedding => [d_in, d_out],
                };
                if w.shape().as_slice() != file_shape {
                    misshaped.push(format!(
                        "{key}: file {:?}, model expects {file_shape:?}",
                        w.shape().as_slice()
                    ));
                } else if t.target.kind == LayerKind::Linear {
                    base_weights.insert(t.weight_path(), transpose(&w)?);
                } else {
                    base_weights.insert(t.weight_path(), w);
                }
            }
            let (ka, kb) = tensor_keys(t);
            let [d_in, d_out] = t.target.weight_shape;
            let mut take = |key: &str, shape: [usize; 2]| match tensors.remove(key) {
                None => {
                    missing.push(key.to_string());
                    None
                }
                Some(d) if d.shape().as_slice() != shape => {
                    misshaped.push(format!(
                        "{key}: file {:?}, model expects {shape:?}",
                        d.shape().as_slice()
                    ));
                    None
                }
                Some(d) => Some(d),
            };
            let a = take(&ka, [t.r, d_in]);
            let b = take(&kb, [d_out, t.r]);
            let magnitude = match config.use_dora {
                true => match tensors.remove(&magnitude_key(t)) {
                    None => {
                        missing.push(magnitude_key(t));
                        None
                    }
                    Some(m) if m.shape().as_slice() != [d_out] => {
                        misshaped.push(format!(
                            "{}: file {:?}, model expects [{d_out}]",
                            magnitude_key(t),
                            m.shape().as_slice()
                        ));
                        None
                    }
                    Some(m) => Some(m.convert::<f32>()),
                },
                false => None,
            };
            if let (Some(a), Some(b)) = (a, b) {
                let f = Factors {
                    a: transpose(&a)?,
                    b: transpose(&b)?,
                    magnitude,
                };
                initial.insert(t.target.path.clone(), f);
            }
        }
        let mut saved = BTreeMap::new();
        let wanted = read_params(&model, |p| {
            peft_core::inject::under_any(&plan.modules_to_save, p)
        });
        for (path, data) in wanted {
            let key = saved_key(&path, options);
            let expected: Vec<usize> = if linear.contains(&path) {
                data.shape().iter().rev().copied().collect()
            } else {
                data.shape().to_vec()
            };
            match tensors.remove(&key) {
                None => missing.push(key),
                Some(d) if d.shape().as_slice() != expected.as_slice() => misshaped.push(format!(
                    "{key}: file {:?}, model expects {expected:?}",
                    d.shape().as_slice()
                )),
                Some(d) => {
                    saved.insert(
                        path.clone(),
                        if linear.contains(&path) {
                            transpose(&d)?
                        } else {
                            d
                        },
                    );
                }
            }
        }
        let unexpected: Vec<String> = tensors.into_keys().collect();
        peft_core::io::check_adapter_tensors(&missing, &unexpected, &misshaped)?;
        let model = replace_params(model, base_weights)?;
        let mut lora = Self::inject_planned(model, &config, options, plan, targets, initial);
        lora.model = replace_params(lora.model, saved)?;
        Ok(lora)
    }
}
