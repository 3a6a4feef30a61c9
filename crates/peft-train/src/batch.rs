//! Batches: which examples a micro-batch takes, and the padded tensors it becomes.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::Example;

/// Label of a position that does not count in the loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// The order examples are drawn in: the data as one stream, epoch after epoch, in file order or
/// shuffled per epoch with a seeded ChaCha8 permutation (reproducible on every platform).
#[derive(Debug, Clone)]
pub struct Order {
    n: usize,
    shuffle: Option<u64>,
    /// The permutation of the epoch last drawn from.
    cached: Option<(usize, Vec<usize>)>,
}

impl Order {
    /// `n` examples; `shuffle`: the seed, or `None` for file order.
    pub fn new(n: usize, shuffle: Option<u64>) -> Self {
        Self {
            n,
            shuffle,
            cached: None,
        }
    }

    /// Example indices of micro-batch `g` (counted from 0 over the whole run), `batch` each:
    /// stream positions `g·batch … g·batch + batch − 1`.
    pub fn micro_batch(&mut self, g: usize, batch: usize) -> Vec<usize> {
        (g * batch..(g + 1) * batch).map(|p| self.at(p)).collect()
    }

    /// The example at stream position `p`.
    fn at(&mut self, p: usize) -> usize {
        let (epoch, i) = (p / self.n, p % self.n);
        let Some(seed) = self.shuffle else {
            return i;
        };
        match &self.cached {
            Some((e, perm)) if *e == epoch => perm[i],
            _ => {
                let perm = self.permutation(seed, epoch);
                let at = perm[i];
                self.cached = Some((epoch, perm));
                at
            }
        }
    }

    fn permutation(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.n).collect();
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        v.shuffle(&mut rng);
        v
    }
}

/// A padded micro-batch, ready for the model.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// Input ids `[batch, seq]`, right-padded with the pad id.
    pub ids: Tensor<2, Int>,
    /// Next-token targets `[batch, seq]`: the label of position `t + 1`, or [`IGNORE`].
    pub targets: Tensor<2, Int>,
    /// What the summed token losses are divided by: the labels of every micro-batch of the
    /// optimizer step (transformers' `num_items_in_batch`).
    pub normalizer: f32,
    /// Labels of this micro-batch.
    pub labels: usize,
    /// Real (non-pad) tokens of this micro-batch.
    pub tokens: usize,
}

/// Labels an example contributes after the shift (its first token predicts nothing).
pub fn label_count(ex: &Example) -> usize {
    ex.mask.iter().skip(1).filter(|m| **m).count()
}

impl TokenBatch {
    /// Pads `examples` to the longest one.
    pub fn new(examples: &[&Example], pad: u32, normalizer: f32, device: &Device) -> Self {
        let batch = examples.len();
        let seq = examples
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = vec![i64::from(pad); batch * seq];
        let mut targets = vec![IGNORE; batch * seq];
        let mut tokens = 0;
        let mut labels = 0;
        for (r, ex) in examples.iter().enumerate() {
            tokens += ex.ids.len();
            for (t, id) in ex.ids.iter().enumerate() {
                ids[r * seq + t] = i64::from(*id);
                if t > 0 && ex.mask[t] {
                    targets[r * seq + t - 1] = i64::from(*id);
                    labels += 1;
                }
            }
        }
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [batch, seq]), device),
            targets: Tensor::from_data(TensorData::new(targets, [batch, seq]), device),
            normalizer,
            labels,
            tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_order_wraps_around() {
        let mut o = Order::new(5, None);
        assert_eq!(o.micro_batch(0, 2), vec![0, 1]);
        assert_eq!(o.micro_batch(2, 2), vec![4, 0]);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation_per_epoch() {
        let mut o = Order::new(6, Some(3));
        let mut e0: Vec<usize> = (0..3).flat_map(|g| o.micro_batch(g, 2)).collect();
        let e1: Vec<usize> = (3..6).flat_map(|g| o.micro_batch(g, 2)).collect();
        assert_eq!(
            Order::new(6, Some(3)).micro_batch(1, 2),
            o.micro_batch(1, 2)
        );
        assert_ne!(e0, e1);
        e0.sort();
        assert_eq!(e0, (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn pads_and_shifts_labels() {
        let a = Example {
            ids: vec![5, 6, 7],
            mask: vec![false, true, true],
        };
        let b = Example {
            ids: vec![8],
            mask: vec![true],
        };
        let batch = TokenBatch::new(&[&a, &b], 0, 2.0, &Device::default());
        let ids = batch
            .ids
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        let t = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(t, vec![6, 7, IGNORE, IGNORE, IGNORE, IGNORE]);
        assert_eq!((batch.labels, batch.tokens), (2, 4));
    }
}
