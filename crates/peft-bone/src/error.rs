//! The error type of `peft-bone`.

use peft_core::PeftError;

/// Everything that can go wrong configuring, injecting, loading, saving or unmerging Bone/MiSS.
#[derive(Debug, thiserror::Error)]
pub enum BoneError {
    /// An error from `peft-core` (matching, files, config fields).
    #[error(transparent)]
    Core(#[from] PeftError),
    /// A config value is invalid.
    #[error("invalid Bone/MiSS config: {0}")]
    InvalidConfig(String),
    /// The adapter folder is neither Bone nor MiSS.
    #[error("adapter has peft_type {0:?}, expected \"BONE\" or \"MISS\"")]
    WrongPeftType(String),
    /// A targeted layer's shape violates the mode's constraint.
    #[error("module `{module}` (weight [out, in] = {shape:?}) cannot take this adapter: {reason}")]
    Shape {
        /// The module (PyTorch name).
        module: String,
        /// `[out, in]`.
        shape: [usize; 2],
        /// The violated rule.
        reason: String,
    },
    /// A bat tile `I + B` cannot be inverted, so the base weight cannot be recovered.
    #[error("cannot unmerge `{module}`: I + block[{tile}] is singular")]
    Singular {
        /// The module.
        module: String,
        /// The output tile.
        tile: usize,
    },
}

impl From<serde_json::Error> for BoneError {
    fn from(e: serde_json::Error) -> Self {
        Self::Core(PeftError::Json(e))
    }
}

/// Result alias for `peft-bone`.
pub type Result<T, E = BoneError> = std::result::Result<T, E>;
