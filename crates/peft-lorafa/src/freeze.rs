//! Freezing every LoRA A: LoRA-FA's only change to the model.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use peft_core::paths::{PathMapper, map_with_paths};
use peft_lora::{InjectOptions, LoraConfig, LoraModel};

use crate::error::Result;

struct FreezeA;

impl PathMapper for FreezeA {
    fn map_float<const D: usize>(
        &mut self,
        path: &[String],
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        if path.ends_with(&["lora".to_string(), "a".to_string()]) {
            peft_core::require_grad::set_require_grad(param, false)
        } else {
            param
        }
    }
}

/// Freezes the A factor of every LoRA adapter: A keeps its value and gets no gradient, so
/// autodiff keeps only `x·A` (`[tokens, r]`) for the adapter branch, not `x`.
pub fn freeze_a<M: Module>(mut lora: LoraModel<M>) -> LoraModel<M> {
    lora.model = map_with_paths(lora.model, &mut FreezeA);
    lora
}

/// Injects LoRA adapters as `LoraModel::inject` does and freezes every A (PEFT: `get_peft_model`
/// followed by `create_lorafa_optimizer`). The file format is PEFT's plain LoRA.
pub fn inject<M: Module>(
    model: M,
    config: &LoraConfig,
    options: &InjectOptions,
) -> Result<LoraModel<M>> {
    Ok(freeze_a(LoraModel::inject(model, config, options)?))
}

/// Loads a PEFT LoRA adapter folder (e.g. to resume LoRA-FA training) and freezes every A.
pub fn load<M: Module>(
    model: M,
    dir: impl AsRef<std::path::Path>,
    options: &InjectOptions,
) -> Result<LoraModel<M>> {
    Ok(freeze_a(LoraModel::load(model, dir, options)?))
}
