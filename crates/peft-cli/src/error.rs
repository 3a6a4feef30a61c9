//! The error type of the `peft` tool: every failure becomes one line on stderr.

use std::path::PathBuf;

use peft_core::PeftError;
use peft_models::ModelError;

/// Everything a command can fail on.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Wrong arguments.
    #[error("{0}")]
    Usage(String),
    /// A file, config or adapter problem reported by `peft-core` or a method crate (through the
    /// registry).
    #[error(transparent)]
    Core(#[from] PeftError),
    /// A training problem: data, tokenizer, settings, checkpoints.
    #[error(transparent)]
    Train(#[from] peft_train::TrainError),
    /// A checkpoint or model problem.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A safetensors file that cannot be read lazily.
    #[error("malformed safetensors file `{path}`: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The adapter does not fit the base checkpoint.
    #[error("adapter does not fit the base model: {0}")]
    Mismatch(String),
    /// The adapter's method has no implementation here.
    #[error("unsupported adapter: {0}")]
    Unsupported(String),
}

impl CliError {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Core(PeftError::Io {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Result alias for the tool.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
