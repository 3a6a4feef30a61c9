//! `BoneModel`: a model with Bone/MiSS adapters attached, merge and unmerge.

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use peft_core::io::{WeightUpdate, read_params, update_weights};
use peft_core::{AdapterSwitch, KeyMap, ParamCounts, Target};

use crate::config::{BoneConfig, BoneMode};
use crate::error::{BoneError, Result};
use crate::inject::InitialBlocks;
use crate::layer::BoneAdapter;

/// A model whose targeted Linear weights carry [`BoneAdapter`]s.
///
/// `model` is the user's own type: call its `forward` as before; train it with any burn
/// optimizer (only the blocks receive gradients).
#[derive(Debug, Clone)]
pub struct BoneModel<M> {
    /// The adapted model.
    pub model: M,
    config: BoneConfig,
    targets: Vec<Target>,
    switch: AdapterSwitch,
    key_map: KeyMap,
}

/// A model whose blocks were folded into its weights; the blocks are kept for
/// [`unmerge`](Self::unmerge).
#[derive(Debug, Clone)]
pub struct MergedBoneModel<M> {
    /// The merged model: plain weights, the base model's cost.
    pub model: M,
    config: BoneConfig,
    blocks: InitialBlocks,
    targets: Vec<Target>,
    key_map: KeyMap,
}

impl<M: Module> BoneModel<M> {
    pub(crate) fn from_parts(
        model: M,
        config: BoneConfig,
        targets: Vec<Target>,
        switch: AdapterSwitch,
        key_map: KeyMap,
    ) -> Self {
        Self {
            model,
            config,
            targets,
            switch,
            key_map,
        }
    }

    /// The config.
    pub fn config(&self) -> &BoneConfig {
        &self.config
    }

    /// The adapted layers, in model order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The key map between burn paths and PyTorch names.
    pub fn key_map(&self) -> &KeyMap {
        &self.key_map
    }

    /// Stops the adapters from contributing, without removing them.
    pub fn disable_adapters(&self) {
        self.switch.set(false);
    }

    /// Turns the adapters back on.
    pub fn enable_adapters(&self) {
        self.switch.set(true);
    }

    /// Trainable (every block) and total parameters. Default mode: `r·out` per layer.
    pub fn param_counts(&self) -> ParamCounts {
        let trainable = self
            .targets
            .iter()
            .map(|t| {
                let shape =
                    crate::inject::block_shape(self.config.mode, self.config.r, t.weight_shape[1]);
                shape.iter().product::<usize>()
            })
            .sum();
        ParamCounts {
            trainable,
            total: self.model.num_params(),
        }
    }

    /// One line: format, mode, targets, rank and parameter counts.
    pub fn summary(&self) -> String {
        let c = &self.config;
        format!(
            "{} ({}) on {} modules (r {}) || {}",
            c.format.peft_type(),
            crate::method::mode_name(c.mode),
            self.targets.len(),
            c.r,
            self.param_counts()
        )
    }

    /// Host copies of every block (burn storage), by module path.
    pub(crate) fn blocks(&self) -> InitialBlocks {
        let mut params = read_params(&self.model, |p| p.ends_with(".weight.bone.block"));
        self.targets
            .iter()
            .filter_map(|t| {
                let b = params.remove(&format!("{}.weight.bone.block", t.path))?;
                Some((t.path.clone(), b))
            })
            .collect()
    }

    /// Folds every block into its weight (`W + ΔW`) and removes the adapters.
    pub fn merge(self) -> MergedBoneModel<M> {
        let blocks = self.blocks();
        self.switch.set(true);
        MergedBoneModel {
            model: self.model.materialize(),
            config: self.config,
            blocks,
            targets: self.targets,
            key_map: self.key_map,
        }
    }

    /// PEFT's `merge_and_unload()`.
    pub fn merge_and_unload(self) -> M {
        self.merge().model
    }

    /// PEFT's `unload()`: removes the adapters, base weights untouched.
    pub fn unload(self) -> M {
        self.switch.set(false);
        self.model.materialize()
    }
}

/// Solves `X·(I + B) = Y` for every row of `Y` (`r` columns), in f64 with partial pivoting.
/// `None` when `I + B` is singular.
fn right_solve(y: &[f64], b: &[f64], r: usize) -> Option<Vec<f64>> {
    // Invert M = I + B by Gauss-Jordan.
    let mut m: Vec<f64> = (0..r * r)
        .map(|k| b[k] + if k / r == k % r { 1.0 } else { 0.0 })
        .collect();
    let mut inv: Vec<f64> = (0..r * r)
        .map(|k| if k / r == k % r { 1.0 } else { 0.0 })
        .collect();
    let scale = m.iter().fold(0f64, |a, v| a.max(v.abs())).max(1.0);
    for col in 0..r {
        let pivot =
            (col..r).max_by(|&i, &j| m[i * r + col].abs().total_cmp(&m[j * r + col].abs()))?;
        if m[pivot * r + col].abs() <= 1e-7 * scale {
            return None;
        }
        for k in 0..r {
            m.swap(col * r + k, pivot * r + k);
            inv.swap(col * r + k, pivot * r + k);
        }
        let p = m[col * r + col];
        for k in 0..r {
            m[col * r + k] /= p;
            inv[col * r + k] /= p;
        }
        for row in 0..r {
            if row != col {
                let f = m[row * r + col];
                for k in 0..r {
                    m[row * r + k] -= f * m[col * r + k];
                    inv[row * r + k] -= f * inv[col * r + k];
                }
            }
        }
    }
    let rows = y.len() / r;
    let mut x = vec![0.0; y.len()];
    for i in 0..rows {
        for j in 0..r {
            x[i * r + j] = (0..r).map(|k| y[i * r + k] * inv[k * r + j]).sum();
        }
    }
    Some(x)
}

/// Bat unmerge on a burn-layout weight `[d_in, d_out]`: per tile `W = (W' − B)·(I + B)⁻¹`
/// (PyTorch layout).
pub(crate) fn bat_unmerge(
    w: &[f32],
    d_in: usize,
    d_out: usize,
    block: &[f32],
    r: usize,
) -> std::result::Result<Vec<f32>, usize> {
    let mut out = vec![0f32; w.len()];
    for a in 0..d_out / r {
        let b: Vec<f64> = block[a * r * r..(a + 1) * r * r]
            .iter()
            .map(|v| *v as f64)
            .collect();
        // Rows of the tile stack: Wp[o, i] = w[i, o] for o in a-tile, every i.
        let mut y = Vec::with_capacity(r * d_in);
        for oi in 0..r {
            let o = a * r + oi;
            for c in 0..d_in / r {
                for k in 0..r {
                    let i = c * r + k;
                    y.push(w[i * d_out + o] as f64 - b[oi * r + k]);
                }
            }
        }
        let x = right_solve(&y, &b, r).ok_or(a)?;
        let mut idx = 0;
        for oi in 0..r {
            let o = a * r + oi;
            for c in 0..d_in / r {
                for k in 0..r {
                    out[(c * r + k) * d_out + o] = x[idx] as f32;
                    idx += 1;
                }
            }
        }
    }
    Ok(out)
}

impl<M: Module> MergedBoneModel<M> {
    /// Restores the base weights (default/mini: `W = W' − ΔW`; bat: `W = (W' − B)·(I + B)⁻¹` per
    /// tile) and attaches the blocks again. A singular `I + B` tile is an error.
    pub fn unmerge(self) -> Result<BoneModel<M>> {
        let weights = read_params(&self.model, |p| {
            self.targets
                .iter()
                .any(|t| p == format!("{}.weight", t.path))
        });
        let mut updates: HashMap<String, WeightUpdate> = HashMap::new();
        for t in &self.targets {
            let Some(block) = self.blocks.get(&t.path).cloned() else {
                continue;
            };
            let [d_in, d_out] = t.weight_shape;
            let r = self.config.r;
            let key = format!("{}.weight", t.path);
            match self.config.mode {
                BoneMode::Bat => {
                    let w = weights
                        .get(&key)
                        .cloned()
                        .ok_or_else(|| peft_core::PeftError::UnknownModule(key.clone()))?;
                    let wv = w.convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
                    let bv = block
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .unwrap_or_default();
                    let restored = bat_unmerge(&wv, d_in, d_out, &bv, r).map_err(|tile| {
                        BoneError::Singular {
                            module: t.name.clone(),
                            tile,
                        }
                    })?;
                    let data = TensorData::new(restored, [d_in, d_out]);
                    updates.insert(
                        key,
                        Box::new(move |w: Tensor<2>| Tensor::from_data(data, &w.device())),
                    );
                }
                mode => {
                    updates.insert(
                        key,
                        Box::new(move |w: Tensor<2>| {
                            let block = Param::from_tensor(Tensor::from_data(block, &w.device()));
                            let adapter =
                                BoneAdapter::new(block, r, mode, 0.0, AdapterSwitch::default());
                            w.clone() - adapter.delta_weight(w)
                        }),
                    );
                }
            }
        }
        let model = update_weights(self.model, updates)?;
        BoneModel::inject_with(model, &self.config, &self.key_map, self.blocks)
    }

    /// The merged model alone.
    pub fn into_model(self) -> M {
        self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_solve_inverts_and_detects_singular_tiles() {
        // X·(I + B) = Y with B = [[1, 0], [0, 2]]: X = Y·diag(1/2, 1/3).
        let b = [1.0, 0.0, 0.0, 2.0];
        let x = right_solve(&[2.0, 3.0, 4.0, 6.0], &b, 2).unwrap();
        assert_eq!(x, vec![1.0, 1.0, 2.0, 2.0]);
        assert!(right_solve(&[1.0, 1.0], &[-1.0, 0.0, 0.0, 0.0], 2).is_none());
    }
}
