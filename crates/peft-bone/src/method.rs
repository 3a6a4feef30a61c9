//! Bone and MiSS in the method registry ([`peft_core::method`]): what `peft inspect`,
//! `peft merge`, `peft forward` and every other tool ask of a `BONE` or `MISS` folder.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::TensorData;
use peft_core::method::{
    Adapted, AttachMethod, AttachOptions, Conversion, Description, MergePlan, Method, TensorInfo,
    WeightChange, finite_f32, resolve_key,
};
use peft_core::{PEFT_PREFIX, PeftError};
use serde_json::Value;

use crate::config::{BoneConfig, BoneFormat, BoneMode};
use crate::error::BoneError;
use crate::inject::check_layer;
use crate::io::file_shape;
use crate::model::{BoneModel, bat_unmerge};

/// The registry entry for `peft_type: "BONE"` (PEFT ≤ 0.18) and `"MISS"` (PEFT ≥ 0.17).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bone;

type Result<T, E = PeftError> = std::result::Result<T, E>;

impl From<BoneError> for PeftError {
    fn from(e: BoneError) -> Self {
        match e {
            BoneError::Core(inner) => inner,
            other => PeftError::Method(Box::new(other)),
        }
    }
}

pub(crate) fn mode_name(mode: BoneMode) -> &'static str {
    match mode {
        BoneMode::Default => "default",
        BoneMode::Bat => "bat",
        BoneMode::Mini { .. } => "mini",
    }
}

/// One block's change to a PyTorch-layout weight `[out, in]`.
struct BlockChange {
    module: String,
    block: Vec<f32>,
    mode: BoneMode,
    r: usize,
}

impl BlockChange {
    /// default/mini: `W[o, i] ± B[i mod r, o (mod mini_r)]`.
    fn add_block(&self, mut w: Vec<f32>, out: usize, inp: usize, sign: f32) -> Vec<f32> {
        let m = match self.mode {
            BoneMode::Mini { mini_r } => mini_r,
            _ => out,
        };
        for o in 0..out {
            for i in 0..inp {
                w[o * inp + i] += sign * self.block[(i % self.r) * m + o % m];
            }
        }
        w
    }
}

impl WeightChange for BlockChange {
    fn apply(&self, mut w: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        let (out, inp, r) = (shape[0], shape[1], self.r);
        if self.mode != BoneMode::Bat {
            return Ok(self.add_block(w, out, inp, 1.0));
        }
        // Per r×r tile at rows a·r.., columns c·r..: T' = T + T·B[a] + B[a].
        for a in 0..out / r {
            let b = &self.block[a * r * r..(a + 1) * r * r];
            for c in 0..inp / r {
                let tile: Vec<f32> = (0..r * r)
                    .map(|k| w[(a * r + k / r) * inp + c * r + k % r])
                    .collect();
                for i in 0..r {
                    for j in 0..r {
                        let tb: f32 = (0..r).map(|k| tile[i * r + k] * b[k * r + j]).sum();
                        w[(a * r + i) * inp + c * r + j] += tb + b[i * r + j];
                    }
                }
            }
        }
        Ok(w)
    }

    fn undo(&self, merged: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        let (out, inp) = (shape[0], shape[1]);
        if self.mode != BoneMode::Bat {
            return Ok(self.add_block(merged, out, inp, -1.0));
        }
        // `bat_unmerge` works in burn layout [in, out].
        let mut burn = vec![0f32; merged.len()];
        for o in 0..out {
            for i in 0..inp {
                burn[i * out + o] = merged[o * inp + i];
            }
        }
        let restored = bat_unmerge(&burn, inp, out, &self.block, self.r).map_err(|tile| {
            PeftError::from(BoneError::Singular {
                module: self.module.clone(),
                tile,
            })
        })?;
        let mut w = vec![0f32; merged.len()];
        for o in 0..out {
            for i in 0..inp {
                w[o * inp + i] = restored[i * out + o];
            }
        }
        Ok(w)
    }
}

impl Method for Bone {
    fn name(&self) -> &'static str {
        "MiSS/Bone"
    }

    fn peft_types(&self) -> &'static [&'static str] {
        &["MISS", "BONE"]
    }

    fn describe(
        &self,
        config: &Value,
        tensors: &BTreeMap<String, TensorInfo>,
    ) -> Result<Description> {
        let config = BoneConfig::from_json(config)?;
        let suffix = format!(".{}", config.format.block_key());
        Ok(Description {
            variant: Some(mode_name(config.mode).to_string()),
            ranks: vec![config.r],
            alphas: Vec::new(),
            modules: tensors.keys().filter(|k| k.ends_with(&suffix)).count(),
        })
    }

    fn plan_merge(
        &self,
        config: &Value,
        tensors: BTreeMap<String, TensorData>,
        checkpoint: &BTreeMap<String, TensorInfo>,
    ) -> Result<MergePlan> {
        let config = BoneConfig::from_json(config)?;
        let suffix = format!(".{}", config.format.block_key());
        let mut plan: MergePlan = BTreeMap::new();
        for (key, data) in tensors {
            let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
            let Some(module) = name.strip_suffix(&suffix) else {
                return Err(PeftError::Mismatch(format!(
                    "unexpected tensor `{key}` in a {} adapter",
                    config.format.peft_type()
                )));
            };
            let weight = resolve_key(&format!("{module}.weight"), checkpoint)?.to_string();
            let shape = checkpoint[&weight].shape.clone();
            let [out, inp] = match shape.as_slice() {
                [o, i] => [*o, *i],
                _ => {
                    return Err(PeftError::Mismatch(format!(
                        "module `{module}`: checkpoint `{weight}` has shape {shape:?}, not a Linear weight"
                    )));
                }
            };
            check_layer(&config, module, inp, out)?;
            let expected = file_shape(config.mode, config.r, out);
            if data.shape().as_slice() != expected.as_slice() {
                return Err(PeftError::Mismatch(format!(
                    "module `{module}`: block {:?}, a [{out}, {inp}] weight needs {expected:?}",
                    data.shape().as_slice()
                )));
            }
            let block = finite_f32(&key, data)?;
            let change = BlockChange {
                module: module.to_string(),
                block,
                mode: config.mode,
                r: config.r,
            };
            plan.insert(weight, Box::new(change));
        }
        Ok(plan)
    }

    /// Bone (`"BONE"`, PEFT ≤ 0.18) ↔ MiSS (`"MISS"`), as PEFT's
    /// `scripts/convert-bone-to-miss.py` does: the math of Bone's default and bat modes is
    /// MiSS's, so only the type and the tensor names change. MiSS-only settings (`mini`,
    /// `miss_dropout > 0`) cannot become Bone.
    fn convert(&self, config: &Value, to: Option<&str>) -> Result<Conversion> {
        let mut config = BoneConfig::from_json(config)?;
        let from = config.format;
        let to = match to {
            None => match from {
                BoneFormat::Bone => BoneFormat::Miss,
                BoneFormat::Miss => BoneFormat::Bone,
            },
            Some("MISS") => BoneFormat::Miss,
            Some("BONE") => BoneFormat::Bone,
            Some(other) => {
                return Err(PeftError::Unsupported {
                    field: "peft_type".into(),
                    value: format!("{other:?}"),
                    reason: "Bone/MiSS folders convert into MISS or BONE".into(),
                });
            }
        };
        config.format = to;
        config.validate()?;
        let (old, new) = (
            format!(".{}", from.block_key()),
            format!(".{}", to.block_key()),
        );
        let rename = move |name: &str| match name.strip_suffix(&old) {
            Some(stem) => Ok(format!("{stem}{new}")),
            None => Err(PeftError::Mismatch(format!(
                "unexpected tensor `{name}` in a {} adapter",
                from.peft_type()
            ))),
        };
        Ok(Conversion {
            peft_type: to.peft_type().to_string(),
            config: config.to_json(),
            rename: Box::new(rename),
        })
    }
}

peft_core::impl_adapted!(BoneModel);

impl<M: Module + 'static> AttachMethod<M> for Bone {
    fn inject(
        &self,
        model: M,
        config: &Value,
        options: &AttachOptions,
    ) -> Result<Box<dyn Adapted<M>>> {
        let config = BoneConfig::from_json(config)?;
        Ok(Box::new(BoneModel::inject(
            model,
            &config,
            &options.key_map,
        )?))
    }

    fn load(&self, model: M, dir: &Path, options: &AttachOptions) -> Result<Box<dyn Adapted<M>>> {
        Ok(Box::new(BoneModel::load(model, dir, &options.key_map)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_merges_and_undoes() {
        let w: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let shape = [4usize, 8];
        for (mode, block) in [
            (
                BoneMode::Default,
                (0..8).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
            ),
            (BoneMode::Mini { mini_r: 2 }, vec![0.1, -0.2, 0.3, 0.05]),
            (BoneMode::Bat, (0..8).map(|i| i as f32 * 0.05).collect()),
        ] {
            let c = BlockChange {
                module: "m".into(),
                block,
                mode,
                r: 2,
            };
            let merged = c.apply(w.clone(), &shape).unwrap();
            assert_ne!(merged, w, "{mode:?}");
            let back = c.undo(merged, &shape).unwrap();
            for (x, y) in back.iter().zip(&w) {
                assert!((x - y).abs() < 1e-5, "{mode:?}: {x} vs {y}");
            }
        }
    }
}
