//! Saving and loading Bone/MiSS adapters in PEFT's folder formats.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::TensorData;
use peft_core::io::{
    CONFIG_NAME, WEIGHTS_NAME, peft_json, read_safetensors, write_atomic, write_safetensors,
};
use peft_core::{KeyMap, PEFT_PREFIX, PeftError};

use crate::config::{BoneConfig, BoneFormat, BoneMode};
use crate::error::Result;
use crate::inject::{InitialBlocks, block_shape};
use crate::model::BoneModel;

/// The block's shape in PEFT's files for a layer with `d_out` outputs.
pub fn file_shape(mode: BoneMode, r: usize, d_out: usize) -> Vec<usize> {
    match mode {
        BoneMode::Default => vec![r, d_out],
        BoneMode::Mini { mini_r } => vec![r, mini_r],
        BoneMode::Bat => vec![d_out / r, r, r],
    }
}

impl<M: Module> BoneModel<M> {
    /// The blocks under PEFT's names, in `format` (`…miss_block` or `…bone_block`).
    pub fn adapter_tensors(&self, format: BoneFormat) -> Result<BTreeMap<String, TensorData>> {
        let mut blocks = self.blocks();
        let mut out = BTreeMap::new();
        for t in self.targets() {
            let block = blocks
                .remove(&t.path)
                .ok_or_else(|| PeftError::UnknownModule(format!("{}.weight.bone.block", t.path)))?;
            let shape = file_shape(self.config().mode, self.config().r, t.weight_shape[1]);
            let values = block
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| PeftError::Mismatch(format!("block of `{}`: {e:?}", t.name)))?;
            out.insert(
                format!("{PEFT_PREFIX}{}.{}", t.name, format.block_key()),
                TensorData::new(values, shape),
            );
        }
        Ok(out)
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` in the config's format
    /// (MiSS unless [`BoneConfig::format`] says Bone), each atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        self.config().validate()?;
        write_safetensors(
            &dir.join(WEIGHTS_NAME),
            &self.adapter_tensors(self.config().format)?,
        )?;
        write_atomic(
            &dir.join(CONFIG_NAME),
            peft_json(&self.config().to_json()).as_bytes(),
        )?;
        Ok(())
    }

    /// Loads a Bone (`"BONE"`, `…bone_block`) or MiSS (`"MISS"`, `…miss_block`) folder onto
    /// `model`. Missing, unexpected and mis-shaped tensors are reported together, by name.
    pub fn load(model: M, dir: impl AsRef<Path>, key_map: &KeyMap) -> Result<Self> {
        let dir = dir.as_ref();
        let config = BoneConfig::from_dir(dir)?;
        let mut tensors = read_safetensors(&dir.join(WEIGHTS_NAME))?;
        let plan = Self::plan(&model, &config, key_map)?;
        let (mut missing, mut misshaped) = (Vec::new(), Vec::new());
        let mut initial = InitialBlocks::new();
        for t in &plan.targets {
            let key = format!("{PEFT_PREFIX}{}.{}", t.name, config.format.block_key());
            let d_out = t.weight_shape[1];
            let expected = file_shape(config.mode, config.r, d_out);
            match tensors.remove(&key) {
                None => missing.push(key),
                Some(d) if d.shape().as_slice() != expected.as_slice() => misshaped.push(format!(
                    "{key}: file {:?}, model expects {expected:?}",
                    d.shape().as_slice()
                )),
                Some(d) => {
                    let values = d
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| PeftError::Mismatch(format!("{key}: {e:?}")))?;
                    let shape = block_shape(config.mode, config.r, d_out);
                    initial.insert(t.path.clone(), TensorData::new(values, shape));
                }
            }
        }
        let unexpected: Vec<String> = tensors.into_keys().collect();
        peft_core::io::check_adapter_tensors(&missing, &unexpected, &misshaped)?;
        Self::inject_with(model, &config, key_map, initial)
    }
}
