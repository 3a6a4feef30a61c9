//! The crate's error type.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while preparing data or training.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a data file is not what the formats allow.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A data file as a whole is unusable (empty, no examples left).
    #[error("{}: {message}", path.display())]
    Dataset {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer files are missing or malformed.
    #[error("{}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// A setting is out of range or two settings conflict.
    #[error("{0}")]
    Settings(String),
    /// A checkpoint cannot be resumed.
    #[error("{}: {message}", path.display())]
    Resume {
        /// The checkpoint folder.
        path: PathBuf,
        /// Why it does not fit.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "step {step}: the loss is {loss}; stopped{}",
        last_good.as_ref().map(|p| format!(" (last checkpoint: {})", p.display())).unwrap_or_default()
    )]
    NonFinite {
        /// The step (from 1).
        step: usize,
        /// The loss value.
        loss: f32,
        /// The last checkpoint written, if any.
        last_good: Option<PathBuf>,
    },
    /// Adapter injection, loading or saving failed.
    #[error(transparent)]
    Peft(#[from] peft_core::PeftError),
    /// The model rejected its input.
    #[error(transparent)]
    Model(#[from] peft_models::ModelError),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
