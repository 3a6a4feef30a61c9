//! transformers' causal-LM loss.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

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
}
