//! The keys and values a decoder has already computed, so that a decoding step runs only its
//! new tokens ([`CausalLm::forward_cached`](crate::CausalLm::forward_cached)).

use burn::tensor::Tensor;

use crate::error::{ModelError, Result};

/// Per decoder block, the keys and values of every position seen so far, as transformers'
/// `DynamicCache` keeps them, in buffers with room to spare: a step writes its new positions in
/// place, without copying the cached ones, and attention reads the filled positions through a
/// view. A full buffer is reallocated at twice the size (at most the model's positions), so the
/// copies are amortised; [`with_capacity`](Self::with_capacity) reserves a generation's
/// positions up front and avoids them.
///
/// A cache belongs to one model and one batch of sequences; start a new one (or
/// [`clear`](Self::clear) it) for another prompt. A clone shares the buffers until either side
/// appends, which then copies (tensors are never changed under a holder).
///
/// # Shapes
/// - keys and values of block `i`: `[batch, kv_heads, len, head_dim]` (buffers `[batch,
///   kv_heads, capacity, head_dim]`)
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
/// let mut cache = KvCache::with_capacity(4); // the prompt and one step
/// let prompt = Tensor::<2, Int>::from_data([[5, 6, 7]], &device);
/// let logits = model.forward_cached(prompt, &mut cache)?; // the prompt's last position
/// let next = logits.argmax(1); // [1, 1]
/// let logits = model.forward_cached(next, &mut cache)?; // the fourth position alone
/// assert_eq!((logits.dims(), cache.len()), ([1, 100], 4));
/// cache.truncate(3); // back to the prompt, as transformers' `crop(3)`
/// assert_eq!(cache.len(), 3);
/// # Ok::<(), peft_models::ModelError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    blocks: Vec<Option<Block>>,
    /// Positions to allocate for at the first append (at least the positions appended).
    reserve: usize,
    /// The model's positions, once known: buffers never grow past them.
    limit: Option<usize>,
}

/// One block's buffers and how many of their positions are filled.
#[derive(Debug, Clone)]
struct Block {
    keys: Tensor<4>,
    values: Tensor<4>,
    len: usize,
}

impl Block {
    fn capacity(&self) -> usize {
        self.keys.dims()[2]
    }

    /// The filled positions, as views of the buffers.
    fn filled(&self) -> (Tensor<4>, Tensor<4>) {
        (
            self.keys.clone().narrow(2, 0, self.len),
            self.values.clone().narrow(2, 0, self.len),
        )
    }
}

/// `buffer`'s first `len` positions in a buffer of `capacity` positions, zeros after them.
fn regrow(buffer: Tensor<4>, len: usize, capacity: usize) -> Tensor<4> {
    let [batch, heads, _, dim] = buffer.dims();
    let spare = Tensor::zeros(
        [batch, heads, capacity - len, dim],
        (&buffer.device(), buffer.dtype()),
    );
    Tensor::cat(vec![buffer.narrow(2, 0, len), spare], 2)
}

impl KvCache {
    /// An empty cache, whose buffers start at the first append's size.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache whose buffers start with room for `positions` positions (a prompt and
    /// the tokens to generate; at most the model's positions), so that no step reallocates them.
    pub fn with_capacity(positions: usize) -> Self {
        Self {
            reserve: positions,
            ..Self::default()
        }
    }

    /// Positions held (those of the first block).
    pub fn len(&self) -> usize {
        self.first().map_or(0, |b| b.len)
    }

    /// Whether no position is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position and frees the buffers.
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    /// Keeps the first `len` positions and forgets the rest, keeping the buffers (transformers'
    /// `DynamicCache.crop(len)`): to decode again from a shared prefix, such as a prompt. A
    /// `len` at or past [`len`](Self::len) changes nothing.
    pub fn truncate(&mut self, len: usize) {
        for block in self.blocks.iter_mut().flatten() {
            block.len = block.len.min(len);
        }
    }

    fn first(&self) -> Option<&Block> {
        self.blocks.first().and_then(Option::as_ref)
    }

    /// Checks that `seq` new positions of `batch` sequences can follow the cached ones in a
    /// model of `max_positions`; returns the number cached (the new positions' first index).
    /// Remembers `max_positions` to size the buffers, and forgets the buffers of a cache
    /// truncated to nothing when another batch size comes.
    pub(crate) fn check_next(
        &mut self,
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
        if past == 0 && self.first().is_some_and(|b| b.keys.dims()[0] != batch) {
            // Truncated to nothing: another batch starts afresh.
            self.blocks.clear();
        }
        if let Some(cached) = self.first().map(|b| b.keys.dims()[0])
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
        self.limit = max_positions;
        Ok(past)
    }

    /// Appends block `block`'s new keys and values and returns all of the block's, cached
    /// positions first (views of its buffers).
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
        let [batch, heads, new, dim] = k.dims();
        let vdim = v.dims()[3];
        let mut b = match self.blocks[block].take() {
            Some(b) => b,
            None => {
                let reserve = self.limit.map_or(self.reserve, |m| self.reserve.min(m));
                let capacity = reserve.max(new);
                let device = k.device();
                let zeros = |d| Tensor::zeros([batch, heads, capacity, d], (&device, k.dtype()));
                Block {
                    keys: zeros(dim),
                    values: zeros(vdim),
                    len: 0,
                }
            }
        };
        let len = b.len;
        let needed = len + new;
        if needed > b.capacity() {
            let doubled = 2 * b.capacity();
            let capacity = needed.max(self.limit.map_or(doubled, |m| doubled.min(m)));
            b.keys = regrow(b.keys, len, capacity);
            b.values = regrow(b.values, len, capacity);
        }
        // In place when the cache holds the only reference to the buffers (the views of the
        // previous step are gone); a copy otherwise.
        b.keys = b
            .keys
            .slice_assign([0..batch, 0..heads, len..needed, 0..dim], k);
        b.values = b
            .values
            .slice_assign([0..batch, 0..heads, len..needed, 0..vdim], v);
        b.len = needed;
        let out = b.filled();
        self.blocks[block] = Some(b);
        out
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

    fn positions(k: Tensor<4>) -> Vec<f32> {
        let [_, _, len, _] = k.dims();
        k.slice([0..1, 0..1, 0..len, 0..1])
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn grows_doubling_within_the_model_and_keeps_reserved_room() {
        let device = Device::default();
        let mut cache = KvCache::new();
        cache.check_next(1, 3, Some(10)).unwrap();
        cache.append(0, kv(&device, 1, 3, 1.0), kv(&device, 1, 3, 1.0));
        let capacity = |c: &KvCache| c.first().unwrap().capacity();
        assert_eq!(capacity(&cache), 3);
        cache.check_next(1, 1, Some(10)).unwrap();
        cache.append(0, kv(&device, 1, 1, 2.0), kv(&device, 1, 1, 2.0));
        assert_eq!(capacity(&cache), 6);
        // Doubling would pass the model's 10 positions: capped there.
        cache.check_next(1, 3, Some(10)).unwrap();
        let (k, _) = cache.append(0, kv(&device, 1, 3, 3.0), kv(&device, 1, 3, 3.0));
        assert_eq!((capacity(&cache), cache.len()), (10, 7));
        assert_eq!(positions(k), [1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]);

        let mut roomy = KvCache::with_capacity(8);
        roomy.append(0, kv(&device, 1, 2, 1.0), kv(&device, 1, 2, 1.0));
        let (k, v) = roomy.append(0, kv(&device, 1, 1, 2.0), kv(&device, 1, 1, 5.0));
        assert_eq!(capacity(&roomy), 8);
        // Views of the filled positions only, never the spare zeros.
        assert_eq!((k.dims(), v.dims()), ([1, 2, 3, 3], [1, 2, 3, 3]));
        assert_eq!(positions(v), [1.0, 1.0, 5.0]);

        // Room asked past the model's positions: the model's positions.
        let mut capped = KvCache::with_capacity(100);
        capped.check_next(1, 2, Some(10)).unwrap();
        capped.append(0, kv(&device, 1, 2, 1.0), kv(&device, 1, 2, 1.0));
        assert_eq!(capacity(&capped), 10);
    }

    #[test]
    fn truncates_and_overwrites_and_clones_stay_apart() {
        let device = Device::default();
        let mut cache = KvCache::with_capacity(6);
        cache.append(0, kv(&device, 1, 4, 1.0), kv(&device, 1, 4, 1.0));
        let snapshot = cache.clone();
        cache.truncate(2);
        cache.truncate(5); // past the length: no change
        assert_eq!(cache.len(), 2);
        let (k, _) = cache.append(0, kv(&device, 1, 1, 9.0), kv(&device, 1, 1, 9.0));
        assert_eq!(positions(k), [1.0, 1.0, 9.0]);
        // The clone taken before still holds its own four positions.
        let mut snapshot = snapshot;
        let (k, _) = snapshot.append(0, kv(&device, 1, 1, 4.0), kv(&device, 1, 1, 4.0));
        assert_eq!(positions(k), [1.0, 1.0, 1.0, 1.0, 4.0]);
        // Truncated to nothing, another batch starts afresh.
        cache.truncate(0);
        assert!(cache.is_empty());
        assert_eq!(cache.check_next(3, 1, None).unwrap(), 0);
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
