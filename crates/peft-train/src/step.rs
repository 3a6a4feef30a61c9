//! The training and evaluation step as burn-train's [`TrainStep`] / [`InferenceStep`].

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn_std::ExecutionError;
use burn_train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use peft_models::CausalLm;

use crate::batch::TokenBatch;
use crate::loss::{causal_lm_loss, causal_lm_loss_and_grad};

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

    /// The loss and the gradients of one micro-batch: the blocks keep their autodiff graph; the
    /// head and the loss run a slice of positions at a time with the loss's gradient computed
    /// directly ([`head_loss_backward`]).
    fn step(&self, batch: TokenBatch) -> TrainOutput<StepOutput> {
        let model = &self.model;
        let mut x = model.embed(batch.ids);
        for i in 0..model.num_blocks() {
            x = model.block(i, x);
        }
        let (loss, grads) = head_loss_backward(
            model,
            x,
            batch.targets,
            batch.normalizer,
            HEAD_CHUNK_ELEMENTS,
        );
        TrainOutput {
            grads,
            item: StepOutput {
                loss,
                labels: batch.labels,
                tokens: batch.tokens,
            },
        }
    }
}

/// Most logits the training steps materialise at once (128 MiB of f32). The head's weight is
/// packed again for every slice, so few large slices run its products at a better FLOP rate;
/// measured in `docs/training.md`.
pub const HEAD_CHUNK_ELEMENTS: usize = 1 << 25;

/// Most logits [`CausalLmStep::step_recomputing`] materialises at once (16 MiB of f32): that
/// step trades time for memory, and one slice of logits is most of its peak.
pub const RECOMPUTING_HEAD_CHUNK_ELEMENTS: usize = 1 << 22;

/// The causal-LM loss of `model`'s head over `hidden` (the last block's output, with the autodiff
/// graph that produced it) and the gradients of every parameter: the same loss and gradients as
/// `causal_lm_loss(model.head(hidden), ..).backward()`.
///
/// The head runs a slice of positions at a time (at most `head_chunk` logits, at least one
/// position per slice) on a detached copy of `hidden`; each slice's loss gradient is computed
/// directly ([`causal_lm_loss_and_grad`]) and pushed back through the head, as Liger-Kernel's
/// fused linear cross-entropy does. The `[tokens, vocab]` logits never exist whole and their
/// log-softmax records nothing for the backward pass. Where the head ends in a plain product
/// ([`CausalLm::output_weight`]: a tied embedding, an `lm_head` without a factored adapter), that
/// product and its gradients run outside autodiff too: only the features before it (final norm,
/// projection) keep a graph, so no pass over the logits is recorded at all. The gradient reaching
/// `hidden` then flows through the blocks in one backward pass (the gradient of
/// `sum(hidden ⊙ g)`).
///
/// # Shapes
/// - `hidden`: `[batch, seq, hidden]`
/// - `targets`: `[batch, seq]`, the label of the next position or [`IGNORE`](crate::batch::IGNORE)
pub fn head_loss_backward<M: CausalLm>(
    model: &M,
    hidden: Tensor<3>,
    targets: Tensor<2, burn::tensor::Int>,
    normalizer: f32,
    head_chunk: usize,
) -> (f32, GradientsParams) {
    let mut accumulator = GradientsAccumulator::new();
    let (loss, upstream) = head_slices(
        model,
        hidden.clone().detach(),
        targets,
        normalizer,
        head_chunk,
        &mut accumulator,
    );
    if hidden.is_tracked() {
        let grads = (hidden * upstream).sum().backward();
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    (loss, accumulator.grads())
}

/// The head and the loss over `x` (no graph attached) a slice of positions at a time: the loss,
/// and the gradient with respect to `x`; the head's parameter gradients go to `accumulator`.
fn head_slices<M: CausalLm>(
    model: &M,
    x: Tensor<3>,
    targets: Tensor<2, burn::tensor::Int>,
    normalizer: f32,
    head_chunk: usize,
    accumulator: &mut GradientsAccumulator<M>,
) -> (f32, Tensor<3>) {
    let [rows, seq, hidden] = x.dims();
    let vocab = model.vocab_size().max(1);
    // Equal slices: a short last slice would run the head's products at a poor FLOP rate (the
    // head weight is packed again for every slice, whatever its number of rows).
    let most = (head_chunk / (rows * vocab).max(1)).clamp(1, seq.max(1));
    let chunk = seq.max(1).div_ceil(seq.max(1).div_ceil(most));
    let x = x.autodiff();
    // Where the head ends in a plain product, its logits and their gradients are computed here,
    // outside autodiff; only the head's features (final norm, projection) keep a graph.
    let output = model.output_weight(rows * chunk);
    let mut output_grad: Option<Tensor<2>> = None;
    let mut losses = Vec::with_capacity(seq.div_ceil(chunk));
    let mut parts = Vec::with_capacity(seq.div_ceil(chunk));
    for start in (0..seq).step_by(chunk) {
        let len = chunk.min(seq - start);
        let part = x.clone().narrow(1, start, len).require_grad();
        let slice_targets = targets
            .clone()
            .narrow(1, start, len)
            .reshape([rows * len])
            .inner();
        let (loss, grads) = match &output {
            Some(weight) => {
                let (loss, grads, weight_grad) = product_head_slice(
                    model,
                    part.clone(),
                    &weight.value,
                    slice_targets,
                    normalizer,
                );
                if let Some(g) = weight_grad {
                    output_grad = Some(match output_grad.take() {
                        Some(sum) => sum + g,
                        None => g,
                    });
                }
                (loss, grads)
            }
            None => {
                let logits = model.head(part.clone());
                let (loss, grad) = causal_lm_loss_and_grad(
                    logits.clone().inner().reshape([rows * len, vocab]),
                    slice_targets,
                    normalizer,
                );
                let grads = (logits * grad.reshape([rows, len, vocab])).sum().backward();
                (loss, grads)
            }
        };
        losses.push(loss);
        parts.push(
            part.grad(&grads)
                .unwrap_or_else(|| Tensor::zeros([rows, len, hidden], &x.device().inner())),
        );
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    if let (Some(weight), Some(g)) = (output, output_grad) {
        // A trainable output weight (full fine-tuning, a saved head): every slice's gradient,
        // summed, handed to the parameter it is, or pushed through whatever composed it.
        let grads = match weight.param {
            Some(id) => {
                let mut grads = GradientsParams::new();
                grads.register(id, g);
                grads
            }
            None => GradientsParams::from_grads((weight.value * g).sum().backward(), model),
        };
        accumulator.accumulate(model, grads);
    }
    let loss = Tensor::cat(losses, 0).sum().into_scalar::<f32>();
    (loss, Tensor::cat(parts, 1))
}

/// One slice of a head that ends in the plain product `features · weightᵀ`
/// ([`CausalLm::output_weight`]): the logits, the loss and its gradient `G` outside autodiff,
/// the features' gradient `G·weight` pushed back through the features' graph, and, when the
/// weight trains, its gradient `Gᵀ·features` (returned, not pushed: the caller sums the
/// slices' first).
fn product_head_slice<M: CausalLm>(
    model: &M,
    part: Tensor<3>,
    weight: &Tensor<2>,
    targets: Tensor<1, burn::tensor::Int>,
    normalizer: f32,
) -> (Tensor<1>, burn::tensor::Gradients, Option<Tensor<2>>) {
    let features = model.head_features(part);
    let [rows, len, width] = features.dims();
    let plain = features.clone().inner().reshape([rows * len, width]);
    let w = weight.clone().inner();
    let logits = plain.clone().matmul(w.clone().transpose());
    let (loss, grad) = causal_lm_loss_and_grad(logits, targets, normalizer);
    let weight_grad = weight
        .is_tracked()
        .then(|| grad.clone().transpose().matmul(plain));
    let upstream = grad.matmul(w).reshape([rows, len, width]);
    let grads = (features * upstream).sum().backward();
    (loss, grads, weight_grad)
}

impl<M: CausalLm + 'static> CausalLmStep<M> {
    /// The same loss and gradients as [`TrainStep::step`], keeping only each decoder block's
    /// input instead of every activation: a first pass runs the stages without keeping their
    /// graphs; the backward pass then reruns one block at a time from its saved input and pushes
    /// the incoming gradient `g` through it (the gradient of `sum(block(x) ⊙ g)`), as
    /// `torch.utils.checkpoint` does per block. The head and the loss run over slices of
    /// positions, so the logits never exist whole either. Peak activation memory drops from all
    /// blocks and the whole `[tokens, vocab]` logits to one block plus the block inputs, or one
    /// slice of logits, for one more forward pass of the blocks.
    ///
    /// Dropout would draw other masks in the rerun; the caller keeps it off.
    pub fn step_recomputing(&self, batch: TokenBatch) -> TrainOutput<StepOutput> {
        self.step_recomputing_with(batch, RECOMPUTING_HEAD_CHUNK_ELEMENTS)
    }

    /// [`step_recomputing`](Self::step_recomputing) with at most `head_chunk` logits per slice
    /// of positions (at least one position per slice).
    pub fn step_recomputing_with(
        &self,
        batch: TokenBatch,
        head_chunk: usize,
    ) -> TrainOutput<StepOutput> {
        let model = &self.model;
        let n = model.num_blocks();
        // The first pass on the model without autodiff: no graph is recorded at all.
        let plain = model.valid();
        let mut inputs = Vec::with_capacity(n);
        let mut x = plain.embed(batch.ids.clone());
        for i in 0..n {
            inputs.push(x.clone());
            x = plain.block(i, x);
        }
        drop(plain);
        // The head and the loss, a slice of positions at a time: the `[tokens, vocab]` logits
        // (the largest activations of a language model) never exist whole.
        let mut accumulator = GradientsAccumulator::new();
        let (loss, upstream) = head_slices(
            model,
            x,
            batch.targets.clone(),
            batch.normalizer,
            head_chunk,
            &mut accumulator,
        );
        let output = StepOutput {
            loss,
            labels: batch.labels,
            tokens: batch.tokens,
        };
        let mut upstream = Some(upstream);
        for (i, input) in inputs.into_iter().enumerate().rev() {
            let Some(g) = upstream else { break };
            let input = input.autodiff().require_grad();
            let grads = (model.block(i, input.clone()) * g).sum().backward();
            upstream = input.grad(&grads);
            accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        }
        if let Some(g) = upstream {
            // Only when the embedding has trainable parameters (an adapter or a saved module).
            let embedded = model.embed(batch.ids);
            if embedded.is_tracked() {
                let grads = (embedded * g).sum().backward();
                accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
            }
        }
        TrainOutput {
            grads: accumulator.grads(),
            item: output,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Device;
    use peft_models::{LlamaConfig, LlamaForCausalLm};

    use crate::data::Example;

    fn model(tied: bool) -> LlamaForCausalLm {
        let config: LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1,
            "tie_word_embeddings": tied
        }))
        .unwrap();
        config.init(&Device::default().autodiff()).unwrap()
    }

    /// Largest gradient difference over the parameters, and how many had gradients.
    struct Compare<'a>(&'a GradientsParams, &'a GradientsParams, f32, usize);
    impl ModuleVisitor for Compare<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            match (self.0.get::<D>(param.id), self.1.get::<D>(param.id)) {
                (Some(a), Some(b)) => {
                    let diff = (a - b).abs().max().into_scalar::<f32>();
                    self.2 = self.2.max(diff);
                    self.3 += 1;
                }
                (None, None) => {}
                _ => self.2 = f32::INFINITY,
            }
        }
    }

    /// The sliced and the recomputing steps against the whole logits through autodiff.
    fn assert_steps_match_autodiff(step: &CausalLmStep<LlamaForCausalLm>, what: &str) {
        let device = Device::default().autodiff();
        let examples: Vec<Example> = (0..2)
            .map(|k| Example {
                ids: (0..9 - k).map(|i| (i * 7 + k * 3) as u32 % 40).collect(),
                mask: (0..9 - k).map(|i| i % 3 != 0).collect(),
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = TokenBatch::new(&refs, 0, 7.0, &device);
        // The reference: the whole logits, transformers' loss through autodiff.
        let loss = causal_lm_loss(
            step.model.forward(batch.ids.clone()),
            batch.targets.clone(),
            batch.normalizer,
        );
        let expected = loss.clone().into_scalar::<f32>();
        let reference = GradientsParams::from_grads(loss.backward(), &step.model);
        let sliced = TrainStep::step(step, batch.clone());
        // 2 rows × 40 logits × 2 positions per slice: five slices of the head.
        let recomputed = step.step_recomputing_with(batch, 160);
        for (name, out) in [("sliced", sliced), ("recomputing", recomputed)] {
            let got = out.item.loss;
            assert!(
                (got - expected).abs() <= 1e-6 * expected.abs(),
                "{what}, {name}: loss {got} vs {expected}"
            );
            let mut compare = Compare(&reference, &out.grads, 0.0, 0);
            step.model.visit(&mut compare);
            assert!(
                compare.3 > 2,
                "{what}, {name}: only {} gradients",
                compare.3
            );
            assert!(
                compare.2 <= 1e-6,
                "{what}, {name}: gradients differ by {}",
                compare.2
            );
        }
    }

    #[test]
    fn sliced_and_recomputing_steps_give_autodiffs_loss_and_gradients() {
        for tied in [false, true] {
            // Every parameter trains, the head's output weight among them.
            let step = CausalLmStep { model: model(tied) };
            let output = step.model.output_weight(4).unwrap();
            assert!(output.value.is_tracked());
            // A tied embedding's gradient goes to the parameter directly, an lm_head's through
            // autodiff.
            assert_eq!(output.param.is_some(), tied);
            assert_steps_match_autodiff(&step, &format!("full, tied {tied}"));
        }
    }

    #[test]
    fn adapters_on_the_head_or_below_it_get_autodiffs_gradients() {
        use peft_core::TargetModules;
        use peft_lora::{InjectOptions, LoraConfig, LoraModel};
        for (targets, tied) in [
            // A frozen output weight: the head's product runs outside autodiff.
            (vec!["q_proj", "v_proj"], true),
            (vec!["q_proj", "v_proj"], false),
            // An adapter that runs factored on the head: the head runs through autodiff.
            (vec!["q_proj", "lm_head"], false),
        ] {
            let config = LoraConfig::new(TargetModules::names(targets.clone())).with_r(2);
            let lora = LoraModel::inject(model(tied), &config, &InjectOptions::default()).unwrap();
            let step = CausalLmStep { model: lora.model };
            let through_autodiff = targets.contains(&"lm_head");
            assert_eq!(step.model.output_weight(4).is_none(), through_autodiff);
            assert!(
                step.model
                    .output_weight(4)
                    .is_none_or(|w| !w.value.is_tracked())
            );
            assert_steps_match_autodiff(&step, &format!("LoRA on {targets:?}, tied {tied}"));
        }
    }
}
