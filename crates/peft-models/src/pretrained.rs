//! Loading whichever supported architecture a checkpoint folder holds.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor};

use crate::causal_lm::CausalLm;
use crate::checkpoint::Checkpoint;
use crate::error::{ModelError, Result};
use crate::llama::LlamaForCausalLm;
use crate::opt::OptForCausalLm;

/// A model of any supported architecture, picked by the checkpoint's `model_type`.
///
/// Not itself a [`Module`](burn::module::Module): match on it (or use
/// [`with_model!`](crate::with_model)) to reach the concrete model, e.g. to inject adapters.
///
/// ```no_run
/// use burn::tensor::Device;
/// use peft_models::{AnyCausalLm, CausalLm};
/// let model = AnyCausalLm::load("path/to/checkpoint", &Device::default())?;
/// let logits = peft_models::with_model!(&model, m => m.vocab_size());
/// # let _ = logits;
/// # Ok::<(), peft_models::ModelError>(())
/// ```
// One model per value, moved rarely: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyCausalLm {
    /// `model_type: "opt"`.
    Opt(OptForCausalLm),
    /// `model_type: "llama"`.
    Llama(LlamaForCausalLm),
}

/// Runs an expression on the concrete model inside an [`AnyCausalLm`]: `with_model!(value, m =>
/// expr)` evaluates `expr` with `m` bound to the `OptForCausalLm` or `LlamaForCausalLm`.
#[macro_export]
macro_rules! with_model {
    ($any:expr, $m:ident => $body:expr) => {
        match $any {
            $crate::AnyCausalLm::Opt($m) => $body,
            $crate::AnyCausalLm::Llama($m) => $body,
        }
    };
}

impl AnyCausalLm {
    /// Loads `config.json` and the weights of a transformers checkpoint folder.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let checkpoint = Checkpoint::open(dir)?;
        match checkpoint.model_type()? {
            "opt" => Ok(Self::Opt(OptForCausalLm::from_checkpoint(
                &checkpoint,
                device,
            )?)),
            "llama" => Ok(Self::Llama(LlamaForCausalLm::from_checkpoint(
                &checkpoint,
                device,
            )?)),
            other => Err(ModelError::UnsupportedModelType(other.to_string())),
        }
    }

    /// Logits `[batch, seq, vocab]` for ids `[batch, seq]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        with_model!(self, m => m.forward(ids))
    }
}
