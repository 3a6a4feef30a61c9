//! The keys and values a decoder has already computed, so that a decoding step runs only its
//! new tokens ([`CausalLm::forward_cached`](crate::CausalLm::forward_cached)).

use burn::tensor::Tensor;

use crate::error::{ModelError, Result};

/// Per decoder block, the keys and values of every position seen so far, as transformers'
/// `DynamicCache` keeps them: each step appends its new positions along the sequence axis.
///
/// A cache belongs to one model and one batch of sequences; start a new one (or
/// [`clear`](Self::clear) it) for another prompt.
///
/// # Shapes
/// - keys and values of block `i`: `[batch, kv_heads, len, head_dim]`
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use peft_models::{CausalLm, KvCache, OptConfig};
///
/// let device = Device::default();
/// let mut config = OptConfig::opt_125m();
/// (config.vocab_size, config.hidden_size, config.ffn_dim) = (100, 32, 64);
/// (config.num_hidden_layers, config.num_attention_heads, config.word_embed_proj_dim) = (2, 4, Some(32));
/// let model = config.init(&device)?;
/// let mut cache = KvCache::new();
/// let prompt = Tensor::<2, Int>::from_data([[5, 6, 7]], &device);
/// let logits = model.forward_cached(prompt, &mut cache)?; // the prompt's last position
/// let next = logits.argmax(1); // [1, 1]
/// let logits = model.forward_cached(next, &mut cache)?; // the fourth position alone
/// assert_eq!((logits.dims(), cache.len()), ([1, 100], 4));
/// # Ok::<(), peft_models::ModelError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    blocks: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held (those of the first block).
    pub fn len(&self) -> usize {
        self.first().map_or(0, |k| k.dims()[2])
    }

    /// Whether no position is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    fn first(&self) -> Option<&Tensor<4>> {
        self.blocks.first().and_then(|b| b.as_ref()).map(|(k, _)| k)
    }

    /// Checks that `seq` new positions of `batch` sequences can follow the cached ones in a
    /// model of `max_positions`; returns the number cached (the new positions' first index).
    pub(crate) fn check_next(
        &self,
        batch: usize,
        seq: usize,
        max_positions: Option<usize>,
    ) -> Result<usize> {
        if batch == 0 || seq == 0 {
            return Err(ModelError::Input(format!(
                "token ids must be a non-empty [batch, seq] tensor, got [{batch}, {seq}]"
            )));
        }
        let past = self.len();
        if let Some(cached) = self.first().map(|k| k.dims()[0])
            && cached != batch
        {
            return Err(ModelError::Input(format!(
                "the cache holds {cached} sequences, the ids {batch}: a cache serves one batch"
            )));
        }
        if let Some(max) = max_positions
            && past + seq > max
        {
            return Err(ModelError::Input(format!(
                "{past} cached and {seq} new positions exceed the model's {max} positions"
            )));
        }
        Ok(past)
    }

    /// Appends block `block`'s new keys and values and returns all of the block's, cached
    /// positions first.
    ///
    /// # Shapes
    /// - `k`, `v`: `[batch, kv_heads, new, head_dim]`
    /// - output: `[batch, kv_heads, cached + new, head_dim]` each
    pub(crate) fn append(
        &mut self,
        block: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        if self.blocks.len() <= block {
            self.blocks.resize(block + 1, None);
        }
        let (k, v) = match self.blocks[block].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.blocks[block] = Some((k.clone(), v.clone()));
        (k, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn kv(device: &Device, batch: usize, len: usize, fill: f32) -> Tensor<4> {
        Tensor::full([batch, 2, len, 3], fill, device)
    }

    #[test]
    fn appends_along_the_sequence_per_block() {
        let device = Device::default();
        let mut cache = KvCache::new();
        assert!(cache.is_empty());
        let (k, v) = cache.append(0, kv(&device, 1, 2, 1.0), kv(&device, 1, 2, 2.0));
        assert_eq!((k.dims(), v.dims()), ([1, 2, 2, 3], [1, 2, 2, 3]));
        cache.append(1, kv(&device, 1, 2, 5.0), kv(&device, 1, 2, 6.0));
        assert_eq!(cache.len(), 2);
        let (k, _) = cache.append(0, kv(&device, 1, 1, 3.0), kv(&device, 1, 1, 4.0));
        assert_eq!(cache.len(), 3);
        // Cached positions first, then the new one.
        let along: Vec<f32> = k
            .slice([0..1, 0..1, 0..3, 0..1])
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(along, [1.0, 1.0, 3.0]);
        // The second block still holds its own two positions.
        let (k1, _) = cache.append(1, kv(&device, 1, 1, 7.0), kv(&device, 1, 1, 8.0));
        k1.slice([0..1, 0..1, 0..3, 0..1])
            .into_data()
            .assert_eq(&TensorData::from([[[[5.0f32], [5.0], [7.0]]]]), false);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn rejects_another_batch_and_too_many_positions() {
        let device = Device::default();
        let mut cache = KvCache::new();
        assert_eq!(cache.check_next(2, 3, Some(4)).unwrap(), 0);
        assert!(cache.check_next(2, 5, Some(4)).is_err());
        assert!(cache.check_next(0, 1, None).is_err());
        cache.append(0, kv(&device, 2, 3, 0.0), kv(&device, 2, 3, 0.0));
        assert_eq!(cache.check_next(2, 1, Some(4)).unwrap(), 3);
        let err = cache.check_next(2, 2, Some(4)).unwrap_err().to_string();
        assert!(err.contains("3 cached and 2 new positions exceed"), "{err}");
        let err = cache.check_next(1, 1, None).unwrap_err().to_string();
        assert!(err.contains("holds 2 sequences"), "{err}");
    }
}
