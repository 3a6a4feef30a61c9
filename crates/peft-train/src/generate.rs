//! Text generation: greedy decoding as transformers' `generate(do_sample=False)`, or seeded
//! sampling with transformers' temperature and top-p warpers, one token at a time.
//!
//! The prompt runs once; each later step runs only the new token, against the keys and values
//! the model keeps in a [`KvCache`] (as transformers' `generate` does), and the head only on the
//! last position.

use burn::tensor::{Int, Tensor, TensorData};
use peft_models::{CausalLm, KvCache};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, TrainError};
use crate::tokenizer::TextTokenizer;

/// Sampling instead of greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Logits are divided by this (> 0).
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to this (0 < p ≤ 1).
    pub top_p: f64,
    /// Seed of the ChaCha8 generator: the same seed gives the same text on every platform.
    pub seed: u64,
}

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to add (≥ 1).
    pub max_new_tokens: usize,
    /// `None`: greedy (the most likely token, the first on ties, as `torch.argmax`).
    pub sampling: Option<Sampling>,
    /// Token ids that end the generation (kept in the output, as transformers does).
    pub stop: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was generated.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The sequence reached the model's positions.
    Positions,
}

/// The generated tokens (prompt excluded) and why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// New token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: Finish,
}

impl GenerateOptions {
    /// Checks ranges.
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Settings(m.into()));
        if self.max_new_tokens == 0 {
            return bad("--max-new-tokens must be at least 1");
        }
        if let Some(s) = self.sampling {
            if !(s.temperature.is_finite() && s.temperature > 0.0) {
                return bad("--temperature must be a finite number > 0 (omit it for greedy)");
            }
            if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                return bad("--top-p must be in (0, 1]");
            }
        }
        Ok(())
    }
}

/// The ids that end a generation: the model's end-of-sequence tokens (`config.json`) and the
/// tokenizer's `eos_token`.
pub fn stop_tokens<M: CausalLm>(model: &M, tok: &TextTokenizer) -> Vec<u32> {
    let mut stop: Vec<u32> = model
        .eos_token_ids()
        .into_iter()
        .filter_map(|id| u32::try_from(id).ok())
        .collect();
    stop.extend(tok.eos.as_ref().map(|t| t.1));
    stop
}

/// Generates after `prompt`; `on_token` sees each new token as it comes.
///
/// Fails when the prompt is empty, has ids outside the vocabulary, or is longer than the model's
/// positions.
pub fn generate<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    options.check()?;
    if prompt.is_empty() {
        return Err(TrainError::Settings("the prompt has no tokens".into()));
    }
    let positions = model.max_positions().unwrap_or(usize::MAX);
    if prompt.len() > positions {
        return Err(TrainError::Settings(format!(
            "the prompt has {} tokens, more than the model's {positions} positions",
            prompt.len()
        )));
    }
    let vocab = model.vocab_size();
    if let Some(id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(TrainError::Settings(format!(
            "prompt token id {id} is outside the model's vocabulary of {vocab} (is the \
             tokenizer this model's?)"
        )));
    }
    let device = model.devices().first().cloned().unwrap_or_default();
    let mut rng = options.sampling.map(|s| ChaCha8Rng::seed_from_u64(s.seed));
    let mut len = prompt.len();
    let mut input = prompt.iter().map(|&t| i64::from(t)).collect::<Vec<_>>();
    // The prompt and every token fed back: room for all, so that no step reallocates.
    let mut cache = KvCache::with_capacity(prompt.len().saturating_add(options.max_new_tokens));
    let mut tokens = Vec::new();
    loop {
        if tokens.len() == options.max_new_tokens {
            return Ok(Generation {
                tokens,
                finish: Finish::Length,
            });
        }
        if len >= positions {
            return Ok(Generation {
                tokens,
                finish: Finish::Positions,
            });
        }
        let n = input.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(input, [1, n]), &device);
        let logits = model.forward_cached(ids, &mut cache)?.reshape([vocab]);
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| TrainError::Settings(format!("logits: {e:?}")))?;
        let next = match (options.sampling, rng.as_mut()) {
            (Some(s), Some(rng)) => sample(&logits, s, rng),
            _ => argmax(&logits),
        };
        tokens.push(next);
        input = vec![i64::from(next)];
        len += 1;
        on_token(next)?;
        if options.stop.contains(&next) {
            return Ok(Generation {
                tokens,
                finish: Finish::Stop,
            });
        }
    }
}

/// Index of the largest value, the first on ties (NaN never wins).
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// transformers' sampling: logits / temperature, then `TopPLogitsWarper` (sort ascending, drop
/// the tokens whose cumulative probability is ≤ 1 − top_p, always keep the most likely), then a
/// draw from the softmax.
fn sample(logits: &[f32], s: Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let scaled: Vec<f64> = logits
        .iter()
        .map(|&l| f64::from(l) / s.temperature)
        .collect();
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_by(|&a, &b| scaled[a].total_cmp(&scaled[b]));
    let probs = softmax(&order.iter().map(|&i| scaled[i]).collect::<Vec<_>>());
    let mut cumulative = 0.0;
    let mut first_kept = order.len() - 1;
    for (k, p) in probs.iter().enumerate() {
        cumulative += p;
        if cumulative > 1.0 - s.top_p {
            first_kept = k.min(order.len() - 1);
            break;
        }
    }
    let kept = &order[first_kept..];
    let probs = softmax(&kept.iter().map(|&i| scaled[i]).collect::<Vec<_>>());
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (&i, p) in kept.iter().zip(&probs) {
        acc += p;
        if u < acc {
            return i as u32;
        }
    }
    kept[kept.len() - 1] as u32
}

fn softmax(values: &[f64]) -> Vec<f64> {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Turns a stream of token ids into text pieces: decodes everything generated so far and hands
/// out what is new, holding back while the text ends in an incomplete UTF-8 sequence (a byte
/// token of a multi-byte character decodes to U+FFFD until the rest arrives).
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    shown: usize,
}

impl TextStream {
    /// Adds `id`; returns the text that is now complete and not yet returned.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.shown {
            return Ok(String::new());
        }
        let piece = text.get(self.shown..).unwrap_or_default().to_string();
        self.shown = text.len();
        Ok(piece)
    }

    /// At the end: whatever is left, incomplete characters shown as U+FFFD.
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String> {
        let text = tok.decode(&self.ids, true)?;
        let piece = text.get(self.shown..).unwrap_or_default().to_string();
        self.shown = text.len();
        Ok(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ~ [0.665, 0.245, 0.090]: top_p 0.5 keeps only the first token.
        let logits = [2.0f32, 1.0, 0.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            seed: 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..50 {
            assert_eq!(sample(&logits, s, &mut rng), 0);
        }
        // top_p 1: every token can come up.
        let all = Sampling { top_p: 1.0, ..s };
        let mut seen = [false; 3];
        for _ in 0..500 {
            seen[sample(&logits, all, &mut rng) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn a_seed_repeats() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling {
            temperature: 0.8,
            top_p: 0.9,
            seed: 7,
        };
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| sample(&logits, s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
