//! The training and evaluation step as burn-train's [`TrainStep`] / [`InferenceStep`].

use burn::module::Module;
use burn_std::ExecutionError;
use burn_train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use peft_models::CausalLm;

use crate::batch::TokenBatch;
use crate::loss::causal_lm_loss;

/// A causal LM as burn-train runs it: one micro-batch in, the loss and its gradients out.
#[derive(Module, Debug)]
pub struct CausalLmStep<M: Module> {
    /// The (adapted) model.
    pub model: M,
}

/// What a step reports.
#[derive(Debug, Clone, Copy)]
pub struct StepOutput {
    /// The micro-batch's loss (already divided by the step's normalizer).
    pub loss: f32,
    /// Labelled positions.
    pub labels: usize,
    /// Real tokens.
    pub tokens: usize,
}

impl ItemLazy for StepOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        Ok(self)
    }
}

impl<M: CausalLm + 'static> TrainStep for CausalLmStep<M> {
    type Input = TokenBatch;
    type Output = StepOutput;

    fn step(&self, batch: TokenBatch) -> TrainOutput<StepOutput> {
        let logits = self.model.forward(batch.ids);
        let loss = causal_lm_loss(logits, batch.targets, batch.normalizer);
        let value = loss.clone().into_scalar::<f32>();
        let output = StepOutput {
            loss: value,
            labels: batch.labels,
            tokens: batch.tokens,
        };
        TrainOutput::new(&self.model, loss.backward(), output)
    }
}

impl<M: CausalLm + 'static> InferenceStep for CausalLmStep<M> {
    type Input = TokenBatch;
    type Output = StepOutput;

    fn step(&self, batch: TokenBatch) -> StepOutput {
        let logits = self.model.forward(batch.ids.clone());
        let loss = causal_lm_loss(logits, batch.targets, batch.normalizer);
        StepOutput {
            loss: loss.into_scalar::<f32>(),
            labels: batch.labels,
            tokens: batch.tokens,
        }
    }
}
