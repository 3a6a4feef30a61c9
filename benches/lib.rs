//! Criterion benchmarks for peft-rs; run with `cargo xtask bench criterion`; the method-comparison
//! guide is `guide/` (`cargo xtask bench`). Helpers the benchmark binaries share live here.

/// Median, minimum and maximum of timed samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The middle sample (the upper one of the two middles for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples`; NaN everywhere when there are none.
    pub fn of(samples: &[f64]) -> Self {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        if s.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        s.sort_by(f64::total_cmp);
        Self {
            median: s[s.len() / 2],
            min: s[0],
            max: s[s.len() - 1],
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
    }
}
