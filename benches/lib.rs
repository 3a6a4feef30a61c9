//! Criterion benchmarks for peft-rs; run with `cargo xtask bench criterion`; the method-comparison
//! guide is `guide/` (`cargo xtask bench`). Helpers the benchmark binaries share live here.

use peft_models::OptConfig;
use serde_json::{Value, json};

/// The OPT sizes the benchmark binaries take by name (`--model`, `--models`), as a user writes them.
pub const OPT_MODELS: &str = "125m, 350m, 1.3b";

/// The OPT architecture named `name` (one of [`OPT_MODELS`]), or `None` for any other name.
pub fn opt_config(name: &str) -> Option<OptConfig> {
    match name {
        "125m" => Some(OptConfig::opt_125m()),
        "350m" => Some(OptConfig::opt_350m()),
        "1.3b" => Some(OptConfig::opt_1_3b()),
        _ => None,
    }
}

/// transformers' `OPTConfig` keyword arguments for `c` (dropout off: the Rust models have none):
/// what the guide's PyTorch worker and `pytorch_ops.py` (through `op-bench --opt-configs`) build
/// transformers' OPT from, so that both sides run the same architecture.
pub fn transformers_opt_config(c: &OptConfig) -> Value {
    json!({
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "ffn_dim": c.ffn_dim,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "word_embed_proj_dim": c.word_embed_proj_dim.unwrap_or(c.hidden_size),
        "do_layer_norm_before": c.do_layer_norm_before,
        "enable_bias": c.enable_bias,
        "tie_word_embeddings": c.tie_word_embeddings,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    })
}

/// The confidence the interval of a median ([`Spread::lo`]–[`Spread::hi`]) has at least, where
/// the samples allow it (five or more).
pub const MEDIAN_CONFIDENCE: f64 = 0.90;

/// Median, minimum and maximum of timed samples, and an interval that holds the true median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The middle sample (the upper one of the two middles for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// The lower end of the interval of the median: the `j`-th smallest sample, `j` the largest
    /// for which the `j`-th smallest and `j`-th largest enclose the true median with probability
    /// at least [`MEDIAN_CONFIDENCE`] whatever the samples' distribution (the sign test's interval;
    /// independent samples assumed). The minimum for seven samples or fewer.
    pub lo: f64,
    /// The upper end of that interval: the `j`-th largest sample.
    pub hi: f64,
}

/// How many samples `j` to leave out on each side of `n` sorted samples so that the `j + 1`-th
/// smallest and largest enclose the true median with probability at least `confidence`; 0 (the
/// minimum and maximum) when even they give less.
///
/// The true median lies below the `(j + 1)`-th smallest of `n` independent samples only when at
/// most `j` of them fall below it, which happens with probability `P(Bin(n, ½) ≤ j)`; the same on
/// the other side, so the interval holds it with probability `1 − 2·P(Bin(n, ½) ≤ j)`.
pub fn median_interval_trim(n: usize, confidence: f64) -> usize {
    let total = 2f64.powi(n as i32);
    let mut choose = 1.0; // C(n, i)
    let mut below = 1.0 / total; // P(Bin(n, ½) ≤ j) for the current j
    let mut j = 0;
    // Leaving out j + 1 needs the interval to keep at least the median itself.
    while 2 * (j + 1) < n {
        choose = choose * (n - j) as f64 / (j + 1) as f64;
        let next = below + choose / total;
        if 1.0 - 2.0 * next < confidence {
            break;
        }
        below = next;
        j += 1;
    }
    j
}

impl Spread {
    /// The spread of `samples`; NaN everywhere when there are none.
    pub fn of(samples: &[f64]) -> Self {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        if s.is_empty() {
            return Self::single(f64::NAN);
        }
        s.sort_by(f64::total_cmp);
        let j = median_interval_trim(s.len(), MEDIAN_CONFIDENCE);
        Self {
            median: s[s.len() / 2],
            min: s[0],
            max: s[s.len() - 1],
            lo: s[j],
            hi: s[s.len() - 1 - j],
        }
    }

    /// One figure: median, extremes and interval all equal to it.
    pub fn single(v: f64) -> Self {
        Self {
            median: v,
            min: v,
            max: v,
            lo: v,
            hi: v,
        }
    }

    /// The spread of the ratios `a[i] / b[i]` of samples taken in the same round.
    pub fn of_ratios(a: &[f64], b: &[f64]) -> Self {
        let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        Self::of(&ratios)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_samples_and_paired_ratios() {
        let s = Spread::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let r = Spread::of_ratios(&[2.0, 4.0, 9.0], &[1.0, 2.0, 3.0]);
        assert_eq!((r.median, r.min, r.max), (2.0, 2.0, 3.0));
        assert!(Spread::of(&[]).median.is_nan());
        // Three samples: the interval of the median is their whole range.
        assert_eq!((s.lo, s.hi), (1.0, 3.0));
    }

    /// The sign test's coverage `1 − 2·P(Bin(n, ½) ≤ j)`, summed term by term from integers.
    fn coverage(n: u64, j: u64) -> f64 {
        let choose =
            |n: u64, k: u64| (0..k).fold(1u128, |c, i| c * (n - i) as u128 / (i + 1) as u128);
        let below: u128 = (0..=j).map(|i| choose(n, i)).sum();
        1.0 - 2.0 * below as f64 / 2f64.powi(n as i32)
    }

    #[test]
    fn the_median_interval_leaves_out_as_many_samples_as_its_confidence_allows() {
        // Binomial tables: n = 5 → the extremes (93.75 %); n = 7 → the extremes (98.4 %; the
        // 2nd would give 87.5 %); n = 9 → the 2nd (96.1 %; the 3rd 82.0 %); n = 11 → the 3rd
        // (93.5 %); n = 15 → the 4th (96.5 %; the 5th 88.2 %).
        assert_eq!(median_interval_trim(5, 0.90), 0);
        assert_eq!(median_interval_trim(7, 0.90), 0);
        assert_eq!(median_interval_trim(9, 0.90), 1);
        assert_eq!(median_interval_trim(11, 0.90), 2);
        assert_eq!(median_interval_trim(15, 0.90), 3);
        assert_eq!(median_interval_trim(3, 0.90), 0);
        assert_eq!(median_interval_trim(1, 0.90), 0);
        for n in 1..40u64 {
            let j = median_interval_trim(n as usize, 0.90) as u64;
            if j > 0 {
                assert!(
                    coverage(n, j) >= 0.90,
                    "n = {n}: leaving out {j} is too many"
                );
            }
            if 2 * (j + 1) < n {
                assert!(coverage(n, j + 1) < 0.90, "n = {n}: {j} could be one more");
            }
        }
        let s = Spread::of(&[5.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0]);
        assert_eq!(
            (s.median, s.min, s.max, s.lo, s.hi),
            (5.0, 1.0, 9.0, 2.0, 8.0)
        );
    }
}
