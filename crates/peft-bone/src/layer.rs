//! `BoneAdapter`: the Bone/MiSS block attached to one Linear weight, in both execution paths.

use burn::module::{Module, Param, Reparameterization};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Int, Tensor};
use peft_core::AdapterSwitch;
use peft_core::nn::FactoredAdapter;

use crate::config::BoneMode;

/// Inputs of at least this many tokens run bat mode through the composed weight `W + ΔW`
/// ([`FactoredAdapter::runs_factored`]); fewer (decoding steps, short prompts) run factored.
pub const BAT_COMPOSED_MIN_TOKENS: usize = 64;

/// A Bone/MiSS block attached to a Linear weight `W` `[d_in, d_out]` (burn layout).
///
/// The block is stored rank 3: default `[1, r, out]`, mini `[1, r, mini_r]`, bat `[out/r, r, r]`
/// (PEFT's files hold `[r, out]`, `[r, mini_r]`, `[out/r, r, r]`).
///
/// - default/mini: `ΔW[i, o] = B[i mod r, o]` (mini: `B[i mod r, o mod mini_r]`); the factored
///   forward adds `(Σ r-wide chunks of the zero-padded x)·B` without composing ΔW.
/// - bat: per r×r tile (PyTorch layout) `W' = W·(I + B[a]) + B[a]`; it depends on W. From
///   [`BAT_COMPOSED_MIN_TOKENS`] tokens on the layer multiplies by the composed `W + ΔW`, as PEFT
///   does; below, it adds `x·ΔW` to `x·W`.
#[derive(Module, Debug)]
pub struct BoneAdapter {
    /// The block.
    pub block: Param<Tensor<3>>,
    /// The block rank.
    pub r: usize,
    /// The mode.
    #[module(skip)]
    pub mode: BoneMode,
    /// Dropout on the padded input (MiSS default/mini, factored path).
    pub dropout: Dropout,
    /// Shared on/off switch of the injection.
    #[module(skip)]
    pub switch: AdapterSwitch,
}

impl BoneAdapter {
    /// Builds an adapter around a block.
    pub fn new(
        block: Param<Tensor<3>>,
        r: usize,
        mode: BoneMode,
        dropout: f64,
        switch: AdapterSwitch,
    ) -> Self {
        Self {
            block,
            r,
            mode,
            dropout: DropoutConfig::new(dropout).init(),
            switch,
        }
    }

    /// The block as `[r, d_out]` (default, mini repeated across the output).
    fn full_block(&self, d_out: usize) -> Tensor<2> {
        let b = self.block.val();
        let [_, r, m] = b.dims();
        let b = b.reshape([r, m]);
        match self.mode {
            BoneMode::Mini { mini_r } => b.repeat_dim(1, d_out / mini_r.max(1)),
            _ => b,
        }
    }

    /// `ΔW` `[d_in, d_out]` for base weight `w` (PEFT's `get_delta_weight`, burn layout).
    pub fn delta_weight(&self, w: Tensor<2>) -> Tensor<2> {
        let [d_in, d_out] = w.dims();
        let r = self.r;
        match self.mode {
            BoneMode::Bat => {
                let wv = w
                    .transpose()
                    .reshape([d_out / r, r, d_in / r, r])
                    .permute([2, 0, 1, 3]); // [in/r, out/r, r, r]
                let bk = self.block.val().unsqueeze::<4>(); // [1, out/r, r, r]
                let delta = wv.matmul(bk.clone()) + bk;
                delta
                    .permute([1, 2, 0, 3])
                    .reshape([d_out, d_in])
                    .transpose()
            }
            _ => self
                .full_block(d_out)
                .repeat_dim(0, d_in.div_ceil(r))
                .narrow(0, 0, d_in),
        }
    }
}

impl Reparameterization for BoneAdapter {
    const NAME: &'static str = "bone";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        if !self.switch.is_enabled() || D != 2 {
            return base;
        }
        let dims = base.dims();
        let w: Tensor<2> = base.clone().reshape([dims[0], dims[1]]);
        let delta = self.delta_weight(w).cast(base.dtype());
        base.clone() + delta.reshape(base.shape())
    }
}

impl FactoredAdapter for BoneAdapter {
    fn runs_factored(&self, tokens: usize) -> bool {
        // bat composes a dense ΔW from W either way. For many tokens one product by `W + ΔW`
        // (1 forward, 2 backward) beats `x·W + x·ΔW` (2 forward, 3 backward); for a few, the
        // `d_in × d_out` sum costs more than the second product (two guide runs on OPT-125m:
        // composed, the 256-token prompt took 0.92× and the single token 1.21× the factored time).
        self.mode != BoneMode::Bat || tokens < BAT_COMPOSED_MIN_TOKENS
    }

    fn linear_delta(&self, x: Tensor<2>, base_weight: &Tensor<2>) -> Option<Tensor<2>> {
        if !self.switch.is_enabled() {
            return None;
        }
        let [tokens, d_in] = x.dims();
        let d_out = base_weight.dims()[1];
        if self.mode == BoneMode::Bat {
            return Some(x.matmul(self.delta_weight(base_weight.clone())));
        }
        let r = self.r;
        let pad = (r - d_in % r) % r;
        let x = if pad > 0 {
            let zeros = Tensor::<2>::zeros([tokens, pad], &x.device());
            Tensor::cat(vec![x, zeros], 1)
        } else {
            x
        };
        let x = self.dropout.forward(x);
        let sums = x
            .reshape([tokens, (d_in + pad) / r, r])
            .sum_dim(1)
            .reshape([tokens, r]);
        Some(sums.matmul(self.full_block(d_out)))
    }

    fn embedding_delta(&self, _ids: Tensor<2, Int>) -> Option<Tensor<3>> {
        None
    }
}
