//! What every decoder here offers: logits for token ids, decoding with a key/value cache, input
//! checks and greedy generation.

use burn::module::{Module, ParamId};
use burn::tensor::{Int, Tensor, TensorData};
use peft_core::nn::Embedding;

use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;

/// A causal language model: token ids in, next-token logits out.
pub trait CausalLm: Module + Sized {
    /// Logits for every position.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]`
    /// - output: `[batch, seq, vocab]`
    ///
    /// Ids must be below [`vocab_size`](Self::vocab_size) and `seq` within
    /// [`max_positions`](Self::max_positions); [`check_ids`](Self::check_ids) says so.
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3>;

    /// The first stage of [`forward`](Self::forward): token (and position) embeddings.
    ///
    /// `forward(ids)` equals `head(block(n−1, … block(0, embed(ids))))` with
    /// `n = `[`num_blocks`](Self::num_blocks); training that recomputes activations runs the
    /// stages one by one.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]`; output: `[batch, seq, hidden]`
    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3>;

    /// Decoder blocks.
    fn num_blocks(&self) -> usize;

    /// Decoder block `i`; `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    fn block(&self, i: usize, x: Tensor<3>) -> Tensor<3>;

    /// The last stage: final norm (and projection) and the LM head;
    /// `[batch, seq, hidden]` → `[batch, seq, vocab]`.
    fn head(&self, x: Tensor<3>) -> Tensor<3>;

    /// The weight of the head's last product when the head ends in a plain one for an input of
    /// `tokens` positions: then `head(x)` equals
    /// [`head_features`](Self::head_features)`(x) · weightᵀ`. A training step then runs that
    /// product and its gradients itself, outside autodiff, so the `[tokens, vocab]` logits never
    /// enter the graph.
    ///
    /// `None` (the default) where the head ends otherwise, e.g. in an adapter that runs factored:
    /// training then pushes the loss gradient through [`head`](Self::head).
    fn output_weight(&self, tokens: usize) -> Option<OutputWeight> {
        let _ = tokens;
        None
    }

    /// The head up to its last product (final norm, projection);
    /// `[batch, seq, hidden]` → `[batch, seq, features]`. Used only where
    /// [`output_weight`](Self::output_weight) is `Some`; the default (for models that keep its
    /// `None`) returns `x` unchanged.
    fn head_features(&self, x: Tensor<3>) -> Tensor<3> {
        x
    }

    /// The logits of the last of `ids`' positions, which follow the positions `cache` holds
    /// (none in a new cache); `ids`' keys and values are appended to `cache`. This is decoding
    /// with a cache, as transformers' `generate` does it: the prompt once, then one token a
    /// step that attends to the cached keys and values instead of running the whole sequence
    /// again, and the head on the last position alone (`logits_to_keep=1`). With a new cache
    /// the logits are [`forward`](Self::forward)'s last position.
    ///
    /// Fails when `ids` is empty, holds another number of sequences than the cache, or the
    /// cached and new positions together exceed [`max_positions`](Self::max_positions).
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]`; output: `[batch, vocab]`
    fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<2>>;

    /// Vocabulary size.
    fn vocab_size(&self) -> usize;

    /// Longest sequence the model takes, when it has a limit.
    fn max_positions(&self) -> Option<usize>;

    /// End-of-sequence token ids (from `config.json`).
    fn eos_token_ids(&self) -> Vec<i64>;

    /// Checks a `[batch, seq]` id tensor's shape and values before [`forward`](Self::forward).
    fn check_ids(&self, ids: &TensorData) -> Result<()> {
        let shape = ids.shape();
        if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
            return Err(ModelError::Input(format!(
                "token ids must be a non-empty [batch, seq] tensor, got shape {:?}",
                shape.as_slice()
            )));
        }
        if let Some(max) = self.max_positions()
            && shape[1] > max
        {
            return Err(ModelError::Input(format!(
                "sequence length {} exceeds the model's {max} positions",
                shape[1]
            )));
        }
        let values = ids
            .clone()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| ModelError::Input(format!("token ids are not integers: {e:?}")))?;
        let vocab = self.vocab_size() as i64;
        if let Some(bad) = values.iter().find(|&&v| v < 0 || v >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary (0..{vocab})"
            )));
        }
        Ok(())
    }

    /// Greedy decoding (transformers' `generate(do_sample=False)`, with a [`KvCache`]): appends the
    /// most likely token `max_new_tokens` times. A row that produced an end-of-sequence token is
    /// padded with `pad_token_id` from then on; decoding stops early when every row has.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]`; output: `[batch, seq + generated]`
    fn generate(
        &self,
        ids: Tensor<2, Int>,
        max_new_tokens: usize,
        pad_token_id: i64,
    ) -> Result<Tensor<2, Int>> {
        let device = ids.device();
        let data = ids.into_data();
        self.check_ids(&data)?;
        let [batch, seq] = [data.shape()[0], data.shape()[1]];
        let mut rows: Vec<Vec<i64>> = data
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| ModelError::Input(format!("{e:?}")))?
            .chunks(seq)
            .map(<[i64]>::to_vec)
            .collect();
        let eos = self.eos_token_ids();
        let mut done = vec![false; batch];
        // The prompt first, then each step's new tokens, against the cached keys and values.
        let mut cache =
            KvCache::with_capacity(seq.saturating_add(max_new_tokens.saturating_sub(1)));
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        let mut input = Tensor::<2, Int>::from_data(TensorData::new(flat, [batch, seq]), &device);
        for _ in 0..max_new_tokens {
            let len = rows[0].len();
            if self.max_positions().is_some_and(|m| len >= m) || done.iter().all(|d| *d) {
                break;
            }
            let last = self
                .forward_cached(input, &mut cache)?
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .map_err(|e| ModelError::Input(format!("{e:?}")))?;
            let mut step = Vec::with_capacity(batch);
            for (i, row) in rows.iter_mut().enumerate() {
                let next = if done[i] { pad_token_id } else { last[i] };
                done[i] |= eos.contains(&next);
                row.push(next);
                step.push(next);
            }
            input = Tensor::from_data(TensorData::new(step, [batch, 1]), &device);
        }
        let len = rows[0].len();
        let flat: Vec<i64> = rows.into_iter().flatten().collect();
        Ok(Tensor::from_data(
            TensorData::new(flat, [batch, len]),
            &device,
        ))
    }
}

/// The last product of a language-model head: `logits = features · valueᵀ`
/// ([`CausalLm::output_weight`]).
#[derive(Debug, Clone)]
pub struct OutputWeight {
    /// The weight, `[vocab, features]`, with its autodiff graph when it trains.
    pub value: Tensor<2>,
    /// The parameter whose stored value `value` is, as it is stored (a tied embedding's weight):
    /// a training step hands that parameter its gradient directly. `None` (a value composed from
    /// parameters, or stored transposed) sends the gradient through autodiff.
    pub param: Option<ParamId>,
}

impl OutputWeight {
    /// The stored weight of `embedding`, `[vocab, features]`: what [`tied_logits`] multiplies by.
    pub fn tied(embedding: &Embedding) -> Self {
        Self {
            value: embedding.weight.base(),
            param: Some(embedding.weight.id),
        }
    }

    /// A weight `[features, vocab]` (a Linear's), read through autodiff.
    pub fn transposed(weight: Tensor<2>) -> Self {
        Self {
            value: weight.transpose(),
            param: None,
        }
    }
}

/// Logits from a head tied to the token embedding: `x · Eᵀ`.
///
/// Uses the embedding's base weight, as PEFT does: an unmerged adapter on the embedding does not
/// reach the tied head, a merged one does (merging writes into the shared weight).
pub fn tied_logits(x: Tensor<3>, embedding: &Embedding) -> Tensor<3> {
    let [batch, seq, e] = x.dims();
    let w = embedding.weight.base();
    let vocab = w.dims()[0];
    x.reshape([batch * seq, e])
        .matmul(w.transpose())
        .reshape([batch, seq, vocab])
}
