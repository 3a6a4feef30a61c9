//! transformers' causal-LM loss.

use burn::tensor::activation::log_softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use crate::batch::IGNORE;

/// Sum of the next-token negative log-likelihoods over the labelled positions, divided by
/// `normalizer` (transformers' `ForCausalLMLoss` with `num_items_in_batch`: with gradient
/// accumulation, the labels of the whole optimizer step).
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`
/// - `targets`: `[batch, seq]`, the label of the next position or [`IGNORE`]
/// - output: `[1]`
pub fn causal_lm_loss(logits: Tensor<3>, targets: Tensor<2, Int>, normalizer: f32) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    let rows = batch * seq;
    let targets = targets.reshape([rows, 1]);
    let keep = targets.clone().not_equal_elem(IGNORE);
    let index = targets.mask_fill(keep.clone().bool_not(), 0);
    let logp = log_softmax(logits.reshape([rows, vocab]), 1).gather(1, index);
    let weight = keep.float().div_scalar(normalizer.max(1.0));
    (logp * weight).sum().neg()
}

/// [`causal_lm_loss`] and its gradient with respect to the logits, computed directly instead of
/// through autodiff: per labelled row, `softmax(logits) − onehot(target)`, times the row's
/// weight `1 / normalizer` (0 for [`IGNORE`]d rows). The loss is `log-sum-exp − logit of the
/// target`, with the row maximum subtracted before `exp`.
///
/// A few passes over the logits and no autodiff graph: the training step runs the head through
/// this a slice of positions at a time, so that the logits never exist whole and their
/// log-softmax keeps no intermediates for a backward pass.
///
/// # Shapes
/// - `logits`: `[rows, vocab]`
/// - `targets`: `[rows]`, the label of each row or [`IGNORE`]
/// - output: the loss `[1]` and its gradient `[rows, vocab]`
pub fn causal_lm_loss_and_grad(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    normalizer: f32,
) -> (Tensor<1>, Tensor<2>) {
    let rows = targets.dims()[0];
    let targets = targets.reshape([rows, 1]);
    let keep = targets.clone().not_equal_elem(IGNORE);
    let index = targets.mask_fill(keep.clone().bool_not(), 0);
    let weight = keep.float().div_scalar(normalizer.max(1.0));
    let max = logits.clone().max_dim(1);
    let picked = logits.clone().gather(1, index.clone());
    let exp = (logits - max.clone()).exp();
    let sum = exp.clone().sum_dim(1);
    let loss = ((max + sum.clone().log() - picked) * weight.clone()).sum();
    let grad =
        (exp * (weight.clone() / sum)).scatter(1, index, weight.neg(), IndexingUpdateOp::Add);
    (loss, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn ignores_masked_positions_and_divides_by_the_normalizer() {
        let device = Device::default();
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 0.5, 0.5, 0.5], [1, 2, 3]),
            &device,
        );
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, IGNORE], [1, 2]), &device);
        let loss = causal_lm_loss(logits, targets, 2.0).into_scalar::<f32>();
        let lse = (1f32 + 1f32.exp() + 2f32.exp()).ln();
        assert!((loss - (lse - 2.0) / 2.0).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn direct_gradient_equals_autodiffs() {
        let device = Device::default().autodiff();
        let values: Vec<f32> = (0..4 * 7)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let logits =
            Tensor::<3>::from_data(TensorData::new(values, [1, 4, 7]), &device).require_grad();
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, IGNORE, 0, 6], [1, 4]), &device);
        let loss = causal_lm_loss(logits.clone(), targets.clone(), 3.0);
        let expected_grad = logits.grad(&loss.backward()).unwrap();
        let (direct, grad) = causal_lm_loss_and_grad(
            logits.clone().inner().reshape([4, 7]),
            targets.inner().reshape([4]),
            3.0,
        );
        let (a, b) = (loss.into_scalar::<f32>(), direct.into_scalar::<f32>());
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss {a} vs {b}");
        let diff = (grad.reshape([1, 4, 7]) - expected_grad)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff <= 1e-6, "gradients differ by {diff}");
    }
}
