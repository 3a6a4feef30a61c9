//! The error type of `peft-models`.

use std::path::PathBuf;

use peft_core::PeftError;

/// Everything a checkpoint folder or a caller can get wrong when loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading a file or a tensor failed (`peft-core`'s I/O errors).
    #[error(transparent)]
    Core(#[from] PeftError),
    /// `config.json` is missing a field, has a wrong type, or is not JSON.
    #[error("malformed model config `{path}`: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint's `model_type` has no implementation here.
    #[error("unsupported model_type `{0}` (supported: opt, llama)")]
    UnsupportedModelType(String),
    /// A config option changes the architecture in a way that is not implemented.
    #[error("unsupported {model_type} option `{field}` = {value}: {reason}")]
    UnsupportedOption {
        /// The model family.
        model_type: &'static str,
        /// The config field.
        field: &'static str,
        /// Its value, as JSON.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The folder holds no `model.safetensors` nor `model.safetensors.index.json`.
    #[error("no model.safetensors or model.safetensors.index.json in `{0}`")]
    NoWeights(PathBuf),
    /// Token ids are out of range or a sequence is too long for the model.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result alias for `peft-models`.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
