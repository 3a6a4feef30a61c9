//! Parameter counts, as PEFT's `get_nb_trainable_parameters` reports them.

use std::fmt;

/// Trainable and total parameter counts of an adapted model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    /// Parameters the optimizer updates.
    pub trainable: usize,
    /// Every parameter, adapters included.
    pub total: usize,
}

impl ParamCounts {
    /// Trainable share in percent.
    pub fn trainable_percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        }
    }
}

impl fmt::Display for ParamCounts {
    /// PEFT's `print_trainable_parameters` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            group(self.trainable),
            group(self.total),
            self.trainable_percent()
        )
    }
}

/// `589824` → `"589,824"`: thousands separated by commas, as PEFT prints counts.
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_peft() {
        let c = ParamCounts {
            trainable: 589_824,
            total: 125_829_120,
        };
        assert_eq!(
            c.to_string(),
            "trainable params: 589,824 || all params: 125,829,120 || trainable%: 0.4688"
        );
    }
}
