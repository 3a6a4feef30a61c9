//! Training checkpoints: a PEFT adapter folder plus what resuming needs.
//!
//! `<out>/checkpoint-<step>/` holds `adapter_config.json` + `adapter_model.safetensors` (the
//! adapter only; the frozen base is never written), `optimizer.bpk` (burn's optimizer record),
//! and `trainer_state.json`: the step, the settings that fix the data order and the schedule,
//! the model's fingerprint, and each trainable parameter's id by path (the optimizer record is
//! keyed by parameter id).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param, ParamId};
use burn::tensor::Tensor;
use peft_core::paths::{PathMapper, PathVisitor, dotted, map_with_paths, visit_with_paths};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// File name of the trainer state.
pub const STATE_NAME: &str = "trainer_state.json";
/// File name of the optimizer record.
pub const OPTIMIZER_NAME: &str = "optimizer.bpk";

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Identifies the base model (its `config.json`), so that a checkpoint is not resumed on
    /// another model.
    pub model_fingerprint: String,
    /// The settings a resumed run must keep: batch, accumulation, shuffle seed, schedule, data.
    pub run: BTreeMap<String, serde_json::Value>,
    /// Trainable parameter ids by module path.
    pub param_ids: BTreeMap<String, u64>,
}

impl TrainerState {
    /// Reads `dir/trainer_state.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Resume {
            path: dir.into(),
            message: format!("not a training checkpoint ({STATE_NAME}: {e})"),
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::Resume {
            path: path.clone(),
            message: format!("malformed: {e}"),
        })
    }

    /// Checks that this checkpoint belongs to the same model and run settings.
    pub fn check(
        &self,
        dir: &Path,
        fingerprint: &str,
        run: &BTreeMap<String, serde_json::Value>,
    ) -> Result<()> {
        let err = |message: String| TrainError::Resume {
            path: dir.into(),
            message,
        };
        if self.model_fingerprint != fingerprint {
            return Err(err(
                "this checkpoint was trained on another model (its config.json differs)".into(),
            ));
        }
        for (key, value) in run {
            if self.run.get(key) != Some(value) {
                return Err(err(format!(
                    "--{key} was {} in this run, now {value}; a resumed run must keep it",
                    self.run
                        .get(key)
                        .map(ToString::to_string)
                        .unwrap_or("unset".into())
                )));
            }
        }
        if self.step > self.total_steps {
            return Err(err(format!(
                "step {} is past the run's {} steps",
                self.step, self.total_steps
            )));
        }
        Ok(())
    }
}

#[derive(Default)]
struct TrainableIds(BTreeMap<String, u64>);

impl PathVisitor for TrainableIds {
    fn visit_float<const D: usize>(&mut self, path: &[String], param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            self.0.insert(dotted(path), param.id.val());
        }
    }
}

/// Ids of `model`'s trainable parameters by path.
pub fn param_ids<M: Module>(model: &M) -> BTreeMap<String, u64> {
    let mut v = TrainableIds::default();
    visit_with_paths(model, &mut v);
    v.0
}

struct SetIds<'a>(&'a BTreeMap<String, u64>);

impl PathMapper for SetIds<'_> {
    fn map_float<const D: usize>(
        &mut self,
        path: &[String],
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        match self.0.get(&dotted(path)) {
            Some(id) => {
                let mut param = param;
                param.id = ParamId::from(*id);
                param
            }
            None => param,
        }
    }
}

/// Gives `model`'s parameters the ids recorded in a checkpoint (matched by path), so that the
/// checkpoint's optimizer record applies to them.
pub fn restore_param_ids<M: Module>(model: M, ids: &BTreeMap<String, u64>) -> M {
    map_with_paths(model, &mut SetIds(ids))
}

/// The folder of the checkpoint after `step`.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Writes a checkpoint through a temporary folder and a rename, so that `dir` holds either the
/// previous checkpoint or the complete new one at every moment. `fill` writes the folder's
/// files. A `dir` that exists is swapped with the new folder in one step (`renameat2`'s
/// `RENAME_EXCHANGE` on Linux; elsewhere the old folder is moved aside first, and a crash
/// between the two renames leaves it at `.<name>.old`).
pub fn write_checkpoint(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    peft_core::fault::point("checkpoint.create")
        .and_then(|_| std::fs::create_dir_all(&tmp))
        .map_err(|e| TrainError::io(&tmp, e))?;
    let filled = fill(&tmp).and_then(|_| {
        peft_core::fault::point("checkpoint.swap").map_err(|e| TrainError::io(dir, e))
    });
    if let Err(e) = filled {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        swap(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
        // `tmp` now holds the previous checkpoint.
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    }
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Exchanges the folders `new` and `old` atomically.
#[cfg(target_os = "linux")]
fn swap(new: &Path, old: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, new, CWD, old, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
}

/// Moves `old` aside, `new` into its place (not atomic: see [`write_checkpoint`]).
#[cfg(not(target_os = "linux"))]
fn swap(new: &Path, old: &Path) -> std::io::Result<()> {
    let name = old
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = old.with_file_name(format!(".{name}.old"));
    std::fs::rename(old, &aside)?;
    std::fs::rename(new, old)?;
    std::fs::rename(&aside, new)
}
