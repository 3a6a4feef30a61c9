//! `BoneAdapter`: the Bone/MiSS block attached to one Linear weight, in both execution paths.

use burn::module::{Module, Param, Reparameterization};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Int, Tensor};
use peft_core::AdapterSwitch;
use peft_core::nn::FactoredAdapter;

use crate::config::BoneMode;

/// Whether bat mode with block rank `r` runs an input of `tokens` rows factored
/// (`x·W + x·ΔW`, ΔW never composed, [`BoneAdapter::bat_delta_factored`]) rather than through
/// the composed weight `W + ΔW` ([`FactoredAdapter::runs_factored`]): while `tokens < r`.
///
/// Per `d_in·d_out` multiply-adds, composing ΔW costs `r` and the composed product `tokens`; the
/// factored path costs `3·tokens`. By that count composing wins from `r/2` tokens, but its
/// `r × r` tile products run far below the rate of one large product: on one 1024 × 1024 layer
/// with r = 64 (op-bench's "bat layer" rows, no gradients, four runs) the factored path took
/// 0.59–0.69× the composed time at 64 tokens and 0.81–0.96× at 96, and 1.05–1.24× at 128.
pub fn bat_runs_factored(tokens: usize, r: usize) -> bool {
    tokens < r
}

/// A Bone/MiSS block attached to a Linear weight `W` `[d_in, d_out]` (burn layout).
///
/// The block is stored rank 3: default `[1, r, out]`, mini `[1, r, mini_r]`, bat `[out/r, r, r]`
/// (PEFT's files hold `[r, out]`, `[r, mini_r]`, `[out/r, r, r]`).
///
/// - default/mini: `ΔW[i, o] = B[i mod r, o]` (mini: `B[i mod r, o mod mini_r]`); the factored
///   forward adds `(Σ r-wide chunks of the zero-padded x)·B` without composing ΔW.
/// - bat: per r×r tile (PyTorch layout) `W' = W·(I + B[a]) + B[a]`; it depends on W. For many
///   tokens the layer multiplies by the composed `W + ΔW`, as PEFT does; for few
///   ([`bat_runs_factored`]) it adds `x·ΔW` to `x·W` without composing ΔW
///   ([`BoneAdapter::bat_delta_factored`]).
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
                // PEFT's tile (a, c) is `W[a, c]·B[a] + B[a]` in its `[out, in]` layout; in
                // burn's `[in, out]` layout that tile, transposed, is `B[a]ᵀ·W[c, a] + B[a]ᵀ`.
                // Worked here, so that no W-sized tensor is ever transposed (a strided copy):
                // `W` `[in/r, r, out/r, r]` viewed as tiles `[in/r, out/r, r, r]`.
                let tiles = w.reshape([d_in / r, r, d_out / r, r]).swap_dims(1, 2);
                let bt = self.block.val().swap_dims(1, 2).unsqueeze::<4>(); // [1, out/r, r, r]
                let delta = bt.clone().matmul(tiles) + bt;
                delta.swap_dims(1, 2).reshape([d_in, d_out])
            }
            _ => self
                .full_block(d_out)
                .repeat_dim(0, d_in.div_ceil(r))
                .narrow(0, 0, d_in),
        }
    }

    /// bat's `x·ΔW` `[tokens, d_out]` for `x` `[tokens, d_in]` and base weight `w`
    /// `[d_in, d_out]`, without composing ΔW.
    ///
    /// In PyTorch layout, tile `(a, c)` of ΔW (output block `a`, input block `c`) is
    /// `W[a, c]·B[a] + B[a]`. So with `x_c` the input's block `c`,
    /// `(x·ΔW)[a·r + i] = Σ_c Σ_k W[a·r + i, c·r + k]·(B[a]·x_c)[k] + (B[a]·Σ_c x_c)[i]`:
    /// every `B[a]·x_c` in one product `[tokens·d_in/r, r]·[r, d_out]`, then per output block
    /// `a` one product of those with the block's columns of `W` (`[tokens, d_in]·[d_in, r]`),
    /// then `(Σ_c x_c)·B`. Each costs about as much as `x·W`, against `r` times that to compose ΔW.
    pub fn bat_delta_factored(&self, x: Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
        let [tokens, d_in] = x.dims();
        let d_out = w.dims()[1];
        let r = self.r;
        let (in_blocks, out_blocks) = (d_in / r, d_out / r);
        // `B[a][k, j]` at `[j, a·r + k]`.
        let block_rows = self.block.val().permute([2, 0, 1]).reshape([r, d_out]);
        // `(B[a]·x_c)[k]` at `[t·in_blocks + c, a·r + k]`, then `[a, t, c·r + k]`.
        let bx = x
            .clone()
            .reshape([tokens * in_blocks, r])
            .matmul(block_rows.clone())
            .reshape([tokens, in_blocks, out_blocks, r])
            .permute([2, 0, 1, 3])
            .reshape([out_blocks, tokens, d_in]);
        // Output block `a`'s columns of `W` (burn layout): `[a, c·r + k, i]`, a view.
        let w_blocks = w.clone().reshape([d_in, out_blocks, r]).swap_dims(0, 1);
        let through_w = bx.matmul(w_blocks).swap_dims(0, 1).reshape([tokens, d_out]);
        let x_sum = x
            .reshape([tokens, in_blocks, r])
            .sum_dim(1)
            .reshape([tokens, r]);
        through_w + x_sum.matmul(block_rows)
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
        self.mode != BoneMode::Bat || bat_runs_factored(tokens, self.r)
    }

    fn linear_delta(&self, x: Tensor<2>, base_weight: &Tensor<2>) -> Option<Tensor<2>> {
        if !self.switch.is_enabled() {
            return None;
        }
        let [tokens, d_in] = x.dims();
        let d_out = base_weight.dims()[1];
        if self.mode == BoneMode::Bat {
            return Some(self.bat_delta_factored(x, base_weight));
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
