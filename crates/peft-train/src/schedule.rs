//! Learning-rate schedules computed as transformers' `get_scheduler` computes them.

use burn::optim::LearningRate;
use burn_optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

/// The shape of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `constant` (with warm-up steps: `constant_with_warmup`).
    Constant,
    /// `linear`: warm-up, then linear decay to 0 at the last step.
    Linear,
    /// `cosine`: warm-up, then half a cosine down to 0 at the last step.
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => Err(format!(
                "unknown schedule {other:?} (constant, linear or cosine)"
            )),
        }
    }
}

/// transformers' schedule as a burn [`LrScheduler`]: the `k`-th call of `step` (from 0) returns
/// `lr · λ(k)`, the rate PyTorch's optimizer uses at its `k+1`-th step.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// The shape.
    pub kind: ScheduleKind,
    /// Warm-up steps (linear from 0).
    pub warmup: usize,
    /// Optimizer steps in the whole run.
    pub total: usize,
    /// Steps taken so far.
    pub step: usize,
}

impl Schedule {
    /// `λ(k)` (transformers' `lr_lambda`).
    pub fn factor(&self, k: usize) -> f64 {
        let (k, warmup, total) = (k as f64, self.warmup as f64, self.total as f64);
        if k < warmup {
            return k / warmup.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((total - k) / (total - warmup).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (k - warmup) / (total - warmup).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

impl LrScheduler for Schedule {
    fn step(&mut self) -> LearningRate {
        let lr = self.lr * self.factor(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrs(kind: ScheduleKind, warmup: usize, total: usize) -> Vec<f64> {
        let mut s = Schedule {
            lr: 1.0,
            kind,
            warmup,
            total,
            step: 0,
        };
        (0..total).map(|_| s.step()).collect()
    }

    #[test]
    fn warmup_then_shapes() {
        assert_eq!(lrs(ScheduleKind::Constant, 2, 4), vec![0.0, 0.5, 1.0, 1.0]);
        assert_eq!(lrs(ScheduleKind::Linear, 0, 4), vec![1.0, 0.75, 0.5, 0.25]);
        let c = lrs(ScheduleKind::Cosine, 1, 5);
        assert_eq!(c[0], 0.0);
        assert!((c[1] - 1.0).abs() < 1e-12 && (c[3] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn record_round_trip() {
        let mut s = Schedule {
            lr: 1.0,
            kind: ScheduleKind::Linear,
            warmup: 0,
            total: 4,
            step: 0,
        };
        s.step();
        let mut t = Schedule {
            step: 0,
            ..s.clone()
        };
        t.load_record(s.to_record());
        assert_eq!(t.step(), s.step());
    }
}
