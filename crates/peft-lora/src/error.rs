//! The error type of `peft-lora`.

use peft_core::PeftError;

/// Everything that can go wrong configuring, injecting, loading or saving LoRA adapters.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// An error from `peft-core` (matching, files, config fields).
    #[error(transparent)]
    Core(#[from] PeftError),
    /// A LoRA config value is invalid.
    #[error("invalid LoRA config: {0}")]
    InvalidConfig(String),
    /// The adapter folder is not a LoRA adapter.
    #[error("adapter has peft_type {0:?}, expected \"LORA\"")]
    WrongPeftType(String),
    /// Dropout would be silently skipped by burn's weight-space path.
    #[error(
        "lora_dropout = {dropout} cannot be applied to `{module}`: it is a burn `{kind}`, which composes W + s·A·B and never sees the input. Build the model with peft_core::nn layers, or call `allow_training_without_dropout(true)` to train without dropout"
    )]
    DropoutInWeightSpace {
        /// The configured dropout.
        dropout: f64,
        /// The first module concerned.
        module: String,
        /// Its layer type.
        kind: String,
    },
}

impl From<serde_json::Error> for LoraError {
    fn from(e: serde_json::Error) -> Self {
        Self::Core(PeftError::Json(e))
    }
}

/// Result alias for `peft-lora`.
pub type Result<T, E = LoraError> = std::result::Result<T, E>;
