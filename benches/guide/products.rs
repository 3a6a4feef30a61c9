//! The model's largest layer product alone, on both sides: what each side's GEMM library makes of
//! this machine, apart from everything else a step does.
//!
//! A step is mostly products (`gemm` through burn-flex on our side, MKL or another BLAS through
//! `F.linear` on PyTorch's), so a ratio of steps mixes how fast the two libraries multiply on this
//! CPU with how much other work each framework adds. On one VM PyTorch's MKL ran half `gemm`'s
//! rate because it did not use the CPU's AVX-512 (docs/benchmarks.md, "A third kind of CPU"): the
//! products measured here, in the same rounds as the steps, say which kind of run a guide is.
//!
//! The two sides store a Linear weight transposed to each other (burn `[in, out]`, PyTorch
//! `[out, in]`), so a layer's forward `x·W` and its input gradient `dY·Wᵀ` reach the two GEMMs
//! in opposite layouts: ours packs the weight transposed for the input gradient, PyTorch's for
//! the forward. Both are timed at a step's tokens, so that a step's ratio can be read as the two
//! layouts' ratios plus everything else.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use peft_benches::Spread;
use peft_models::OptConfig;
use serde_json::{Value, json};

/// One product of a Linear layer `[k] → [n]` at `m` tokens, its operands, and its times on both
/// sides: the forward `[m, k]·[k, n]`, or the input gradient `[m, n]·[n, k]`.
pub struct Product {
    /// What it is in the model (`fc1, a step's 1024 tokens`).
    pub what: String,
    /// Rows of the input (tokens).
    pub m: usize,
    /// The layer's input width.
    pub k: usize,
    /// The layer's output width.
    pub n: usize,
    /// The input gradient `dY·Wᵀ` (`dY` `[m, n]`), not the forward `x·W`.
    pub input_gradient: bool,
    /// The forward's `x` `[m, k]`, or the input gradient's `dY` `[m, n]`.
    x: Tensor<2>,
    /// As burn stores a Linear weight: `[k, n]`.
    w: Tensor<2>,
    /// Our timed calls, one per round.
    pub ours_s: Vec<f64>,
    /// PyTorch's timed calls (`F.linear` with its `[n, k]` weight; for the input gradient
    /// `matmul` of `dY` and that weight, as autograd computes it), one per round.
    pub pytorch_s: Vec<f64>,
}

impl Product {
    /// The `fc1` products of `config`: the forward and the input gradient at a training step's
    /// tokens (`batch · seq`) and, when that differs, the forward at a prompt's (`seq`), with
    /// uniform operands in [-1, 1) (no subnormals) on `device`.
    pub fn for_model(config: &OptConfig, batch: usize, seq: usize, device: &Device) -> Vec<Self> {
        let (k, n) = (config.hidden_size, config.ffn_dim);
        let step = batch * seq;
        let mut shapes = vec![
            (format!("fc1, a step's {step} tokens"), step, false),
            (
                format!("fc1's input gradient `dY·Wᵀ`, a step's {step} tokens"),
                step,
                true,
            ),
        ];
        if batch > 1 {
            shapes.push((format!("fc1, a prompt's {seq} tokens"), seq, false));
        }
        let uniform = Distribution::Uniform(-1.0, 1.0);
        shapes
            .into_iter()
            .map(|(what, m, input_gradient)| Self {
                what,
                m,
                k,
                n,
                input_gradient,
                x: Tensor::random([m, if input_gradient { n } else { k }], uniform, device),
                w: Tensor::random([k, n], uniform, device),
                ours_s: Vec::new(),
                pytorch_s: Vec::new(),
            })
            .collect()
    }

    /// One call of our product (the output dropped); its time is kept when `timed`. The input
    /// gradient multiplies by the weight's transposed view, as burn's autodiff does.
    pub fn time(&mut self, timed: bool) {
        let device = self.x.device();
        let t0 = Instant::now();
        if self.input_gradient {
            drop(self.x.clone().matmul(self.w.clone().transpose()));
        } else {
            drop(self.x.clone().matmul(self.w.clone()));
        }
        device.sync().expect("device sync");
        if timed {
            self.ours_s.push(t0.elapsed().as_secs_f64());
        }
    }

    /// The product as JSON: shape, our median (`s`) with its extremes and samples, and
    /// PyTorch's the same way under `pytorch` when it was measured.
    pub fn json(&self) -> Value {
        let side = |samples: &[f64]| {
            let s = Spread::of(samples);
            json!({"s": s.median, "s_min": s.min, "s_max": s.max, "samples": {"s": samples}})
        };
        let mut v = side(&self.ours_s);
        v["what"] = json!(self.what);
        v["m"] = json!(self.m);
        v["k"] = json!(self.k);
        v["n"] = json!(self.n);
        if self.input_gradient {
            v["input_gradient"] = json!(true);
        }
        if !self.pytorch_s.is_empty() {
            v["pytorch"] = side(&self.pytorch_s);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_and_a_prompt_product_are_timed_and_written() {
        let config = OptConfig {
            hidden_size: 8,
            ffn_dim: 16,
            ..OptConfig::opt_125m()
        };
        let device = Device::default();
        let mut products = Product::for_model(&config, 2, 4, &device);
        assert_eq!(products.len(), 3);
        assert_eq!((products[0].m, products[0].k, products[0].n), (8, 8, 16));
        assert_eq!(products[2].m, 4);
        // The input gradient `[8, 16]·[16, 8]` runs and is written as one.
        assert!(products[1].input_gradient && !products[0].input_gradient);
        products[1].time(true);
        assert_eq!(products[1].json()["input_gradient"], true);
        assert!(products[0].json().get("input_gradient").is_none());
        products[0].time(false);
        products[0].time(true);
        products[0].pytorch_s = vec![0.5];
        let v = products[0].json();
        assert_eq!(v["samples"]["s"].as_array().map(Vec::len), Some(1));
        assert!(v["s"].as_f64().is_some_and(|s| s > 0.0));
        assert_eq!(v["pytorch"]["s"], 0.5);
        assert_eq!(v["what"], "fc1, a step's 8 tokens");
        assert!(products[2].json().get("pytorch").is_none());
        // One sequence per step: the step's forward is the prompt's.
        assert_eq!(Product::for_model(&config, 1, 4, &device).len(), 2);
    }
}
