//! `peft forward`: logits of an OPT or Llama checkpoint, optionally with an adapter of any
//! registered method, unmerged or merged.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Int, Tensor};
use peft_models::{AnyCausalLm, CausalLm, with_model};

use crate::error::{CliError, Result};
use crate::registry;
use crate::stream::LazyFile;

/// Reads `input_ids` (`I64` or `I32`, `[batch, seq]`) from a safetensors file.
pub fn read_input_ids(path: &Path) -> Result<burn::tensor::TensorData> {
    let lazy = LazyFile::open(path)?;
    let entry = lazy
        .entries
        .get("input_ids")
        .ok_or_else(|| CliError::Safetensors {
            path: path.to_path_buf(),
            message: "no tensor `input_ids`".into(),
        })?;
    if !matches!(entry.dtype.as_str(), "I64" | "I32") {
        return Err(CliError::Safetensors {
            path: path.to_path_buf(),
            message: format!("`input_ids` has dtype {}, expected I64", entry.dtype),
        });
    }
    let mut all = peft_core::io::read_safetensors(path)?;
    all.remove("input_ids")
        .ok_or_else(|| CliError::Safetensors {
            path: path.to_path_buf(),
            message: "no tensor `input_ids`".into(),
        })
}

fn run<M: CausalLm + 'static>(
    model: M,
    adapter: Option<&Path>,
    merge: bool,
    ids: Tensor<2, Int>,
) -> Result<Tensor<3>> {
    Ok(registry::apply_adapter(model, adapter, merge)?.forward(ids))
}

/// Computes logits `[batch, seq, vocab]` (f32) and writes them as `logits` to `out`.
pub fn forward(
    model_dir: &Path,
    adapter: Option<&Path>,
    merge: bool,
    input: &Path,
    out: &Path,
) -> Result<()> {
    if merge && adapter.is_none() {
        return Err(CliError::Usage("--merge needs --adapter".into()));
    }
    let device = Device::default();
    let model = AnyCausalLm::load(model_dir, &device)?;
    let ids = read_input_ids(input)?;
    with_model!(&model, m => m.check_ids(&ids))?;
    let ids = Tensor::<2, Int>::from_data(ids.convert::<i64>(), &device);
    let logits = with_model!(model, m => run(m, adapter, merge, ids))?;
    let tensors = BTreeMap::from([("logits".to_string(), logits.into_data().convert::<f32>())]);
    peft_core::io::write_safetensors(out, &tensors)?;
    Ok(())
}
