//! `LoraAdapter`: the LoRA state attached to one weight, in both execution paths.

use burn::module::{Module, Param, Reparameterization};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Int, Tensor, module::embedding};
use peft_core::AdapterSwitch;
use peft_core::nn::FactoredAdapter;

/// LoRA factors attached to a `Linear` or `Embedding` weight `W` `[d_in, d_out]`.
///
/// Effective weight `W + s·A·B`. In burn layout `A` is `[d_in, r]` and `B` `[r, d_out]`; PEFT's
/// files hold their transposes (`lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`;
/// `lora_embedding_A` `[r, num]`, `lora_embedding_B` `[dim, r]`).
///
/// - Weight space (burn's layers, `Param::val`): `W + s·A·B` is composed; dropout cannot apply.
/// - Factored ([`peft_core::nn`]): Linear adds `s·(dropout(x)·A)·B`; Embedding adds `s·A[ids]·B`.
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
            switch,
        }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.lazy_shape().dims::<2>()[1]
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
        base.clone() + delta.reshape(base.shape())
    }
}

impl FactoredAdapter for LoraAdapter {
    fn linear_delta(&self, x: Tensor<2>, _base: &Tensor<2>) -> Option<Tensor<2>> {
        if !self.switch.is_enabled() {
            return None;
        }
        let x = self.dropout.forward(x);
        Some(
            x.matmul(self.a.val())
                .mul_scalar(self.scaling)
                .matmul(self.b.val()),
        )
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
