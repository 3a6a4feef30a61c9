//! Freezing every LoRA A: LoRA-FA's only change to the model.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use peft_lora::{InjectOptions, LoraConfig, LoraModel};

use crate::error::Result;

struct FreezeA {
    names: Vec<String>,
}

impl ModuleMapper for FreezeA {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.names.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.names.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let n = self.names.len();
        if n >= 2 && self.names[n - 2] == "lora" && self.names[n - 1] == "a" {
            param.set_require_grad(false)
        } else {
            param
        }
    }
}

/// Freezes the A factor of every LoRA adapter: A keeps its value and gets no gradient, so
/// autodiff keeps only `x·A` (`[tokens, r]`) for the adapter branch, not `x`.
pub fn freeze_a<M: Module>(mut lora: LoraModel<M>) -> LoraModel<M> {
    lora.model = lora.model.map(&mut FreezeA { names: Vec::new() });
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
