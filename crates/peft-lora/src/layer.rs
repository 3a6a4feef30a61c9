//! `LoraAdapter`: the LoRA state attached to one weight, in both execution paths.

use burn::module::{Module, Param, Reparameterization};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Int, Tensor, module::embedding};
use peft_core::AdapterSwitch;
use peft_core::nn::FactoredAdapter;

use crate::dora::{column_norm, dense_column_norm};

/// LoRA factors attached to a `Linear` or `Embedding` weight `W` `[d_in, d_out]`.
///
/// Effective weight `W + s·A·B`. In burn layout `A` is `[d_in, r]` and `B` `[r, d_out]`; PEFT's
/// files hold their transposes (`lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`;
/// `lora_embedding_A` `[r, num]`, `lora_embedding_B` `[dim, r]`).
///
/// - Weight space (burn's layers, `Param::val`): `W + s·A·B` is composed; dropout cannot apply.
/// - Factored ([`peft_core::nn`]): Linear adds `s·(dropout(x)·A)·B`; Embedding adds `s·A[ids]·B`.
///
/// With a `magnitude` (DoRA, [`crate::dora`]) the effective weight is
/// `m · (W + s·A·B) / ‖W + s·A·B‖` per output column, the norm detached.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// Down projection `[d_in, r]`.
    pub a: Param<Tensor<2>>,
    /// Up projection `[r, d_out]`.
    pub b: Param<Tensor<2>>,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scaling: f64,
    /// Dropout on the input of A (factored Linear only).
    pub dropout: Dropout,
    /// DoRA's magnitude `[d_out]` (`lora_magnitude_vector`); `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Shared on/off switch of the injection.
    #[module(skip)]
    pub switch: AdapterSwitch,
}

impl LoraAdapter {
    /// Builds an adapter from its factors (burn layout).
    pub fn new(
        a: Param<Tensor<2>>,
        b: Param<Tensor<2>>,
        scaling: f64,
        dropout: f64,
        switch: AdapterSwitch,
    ) -> Self {
        Self {
            a,
            b,
            scaling,
            dropout: DropoutConfig::new(dropout).init(),
            magnitude: None,
            switch,
        }
    }

    /// Makes this a DoRA adapter with magnitude `m` `[d_out]`.
    pub fn with_magnitude(mut self, magnitude: Param<Tensor<1>>) -> Self {
        self.magnitude = Some(magnitude);
        self
    }

    /// DoRA's per-column scale `m / ‖W + s·A·B‖` `[d_out]` for base weight `weight`, the norm
    /// detached; `None` for plain LoRA.
    pub fn magnitude_scale(&self, weight: &Tensor<2>) -> Option<Tensor<1>> {
        let m = self.magnitude.as_ref()?.val();
        let norm = column_norm(weight, self.a.val(), self.b.val(), self.scaling);
        Some(m / norm)
    }

    /// `s·(x·A)·B` `[tokens, d_out]` for `x` `[tokens, d_in]`.
    fn lora_product(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.a.val())
            .mul_scalar(self.scaling)
            .matmul(self.b.val())
    }

    fn dropout_active(&self, x: &Tensor<2>) -> bool {
        self.dropout.prob > 0.0 && self.dropout.training.is_enabled() && x.device().is_autodiff()
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.lazy_shape().dims::<2>()[1]
    }

    /// Whether, without gradients, a Linear input of `tokens` rows costs less through the
    /// composed weight `W + s·A·B` than through the factored branch `s·(x·A)·B`. Composing
    /// takes `d_in·r·d_out` multiply-adds and the branch `tokens·r·(d_in + d_out)`, but the
    /// composed weight is also written, read back and packed on every call, so the branch wins
    /// until about 1.5 times the tokens where the multiply-adds break even:
    /// `tokens > 1.5·d_in·d_out / (d_in + d_out)`, 576 tokens on OPT-125m's 768² q, 768 on
    /// OPT-350m's 1024², 1536 on OPT-1.3b's 2048². Measured with `op-bench "LoRA layer"`
    /// (docs/benchmarks.md, "An unmerged LoRA layer composed where that is cheaper").
    pub fn composes_for(&self, tokens: usize) -> bool {
        let [d_in, _] = self.a.lazy_shape().dims::<2>();
        let [_, d_out] = self.b.lazy_shape().dims::<2>();
        let branch = tokens.saturating_mul(d_in + d_out).saturating_mul(2);
        branch > d_in.saturating_mul(d_out).saturating_mul(3)
    }

    /// `ΔW = s·A·B`, `[d_in, d_out]` (PEFT's `get_delta_weight`, transposed).
    pub fn delta_weight(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scaling)
    }
}

impl Reparameterization for LoraAdapter {
    const NAME: &'static str = "lora";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        if !self.switch.is_enabled() {
            return base;
        }
        let delta = self.delta_weight().cast(base.dtype());
        let composed = base.clone() + delta.reshape(base.shape());
        let Some(m) = &self.magnitude else {
            return composed;
        };
        // DoRA: m · V / ‖V‖ per column, the norm detached.
        let shape = composed.shape();
        let dims = composed.dims();
        let v: Tensor<2> = composed.reshape([dims[0], dims[1]]);
        let scale = m.val().cast(v.dtype()) / dense_column_norm(&v.clone().detach());
        (v * scale.unsqueeze::<2>()).reshape(shape)
    }
}

impl FactoredAdapter for LoraAdapter {
    /// Factored, as PEFT runs an unmerged LoRA layer, unless nothing needs gradients and
    /// composing is cheaper: on a device without autodiff (a `valid()` model: evaluation,
    /// generation) a plain LoRA Linear multiplies by `W + s·A·B` once
    /// [`composes_for`](Self::composes_for) `tokens` rows. DoRA stays factored.
    fn runs_factored(&self, tokens: usize) -> bool {
        self.magnitude.is_some() || self.a.lazy_device().is_autodiff() || !self.composes_for(tokens)
    }

    fn linear_delta(&self, x: Tensor<2>, base_weight: &Tensor<2>) -> Option<Tensor<2>> {
        if !self.switch.is_enabled() {
            return None;
        }
        if self.magnitude.is_some() {
            let base = x.clone().matmul(base_weight.clone());
            return Some(self.linear_output(x, base_weight, base.clone()) - base);
        }
        Some(self.lora_product(self.dropout.forward(x)))
    }

    /// DoRA (PEFT's `DoraLinearVariant.forward`): without active dropout
    /// `scale ⊙ (x·W + s·x·A·B)`; with it, `x·W + (scale − 1) ⊙ (x̃·W) + scale ⊙ s·x̃·A·B` for the
    /// dropped-out `x̃`, as PEFT recomputes the base product then.
    fn linear_output(&self, x: Tensor<2>, base_weight: &Tensor<2>, base: Tensor<2>) -> Tensor<2> {
        if !self.switch.is_enabled() {
            return base;
        }
        let Some(scale) = self.magnitude_scale(base_weight) else {
            return match self.linear_delta(x, base_weight) {
                Some(delta) => base + delta,
                None => base,
            };
        };
        let scale = scale.unsqueeze::<2>();
        if self.dropout_active(&x) {
            let x = self.dropout.forward(x);
            let dropped_base = x.clone().matmul(base_weight.clone());
            base + dropped_base * (scale.clone() - 1.0) + self.lora_product(x) * scale
        } else {
            (base + self.lora_product(x)) * scale
        }
    }

    fn embedding_output(
        &self,
        ids: Tensor<2, Int>,
        base_weight: &Tensor<2>,
        base: Tensor<3>,
    ) -> Tensor<3> {
        let scale = self
            .switch
            .is_enabled()
            .then(|| self.magnitude_scale(base_weight))
            .flatten();
        let delta = self.embedding_delta(ids);
        match (scale, delta) {
            (Some(scale), Some(delta)) => (base + delta) * scale.unsqueeze::<3>(),
            (_, Some(delta)) => base + delta,
            (_, None) => base,
        }
    }

    fn embedding_delta(&self, ids: Tensor<2, Int>) -> Option<Tensor<3>> {
        if !self.switch.is_enabled() {
            return None;
        }
        let after_a = embedding(self.a.val(), ids); // [batch, seq, r]
        let [batch, seq, r] = after_a.dims();
        let b = self.b.val();
        let d = b.dims()[1];
        Some(
            after_a
                .reshape([batch * seq, r])
                .mul_scalar(self.scaling)
                .matmul(b)
                .reshape([batch, seq, d]),
        )
    }
}
