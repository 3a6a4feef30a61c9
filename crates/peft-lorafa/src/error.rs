//! The error type of `peft-lorafa`.

use peft_lora::LoraError;

/// Everything that can go wrong setting up LoRA-FA.
#[derive(Debug, thiserror::Error)]
pub enum LoraFaError {
    /// An error from `peft-lora` (config, injection, files).
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// The model carries no LoRA adapter, so there is nothing to pair.
    #[error(
        "the model carries no LoRA adapter: inject or load LoRA adapters before building a LoRA-FA optimizer"
    )]
    NotLora,
    /// A targeted layer has lost one of its factors (e.g. the model was replaced).
    #[error("layer `{module}` has no LoRA {factor} factor: A and B are paired per layer")]
    MissingFactor {
        /// The layer.
        module: String,
        /// `A` or `B`.
        factor: &'static str,
    },
    /// An adapter's A is still trainable.
    #[error(
        "lora A of `{0}` is trainable: LoRA-FA freezes every A (call `peft_lorafa::freeze_a` first)"
    )]
    TrainableA(String),
    /// An adapter's B is frozen, so LoRA-FA has nothing to train there.
    #[error("lora B of `{0}` is frozen: LoRA-FA trains every B")]
    FrozenB(String),
    /// An optimizer setting is out of range.
    #[error("invalid LoRA-FA optimizer setting: {0}")]
    InvalidConfig(String),
}

/// Result alias for `peft-lorafa`.
pub type Result<T, E = LoraFaError> = std::result::Result<T, E>;
