//! How an adapter attached to a weight takes part in a layer's forward pass without composing
//! the dense weight.
//!
//! Method crates implement [`FactoredAdapter`] for their [`Reparameterization`] and call
//! [`register_factored`] once (their injection does it). The layers in [`crate::nn`] then look up
//! the adapter on their weight and add its contribution to the frozen base output.

use std::any::TypeId;
use std::sync::RwLock;

use burn::module::{Param, Reparameterization};
use burn::tensor::{Int, Tensor};

/// An adapter that can add its contribution to a layer's output directly.
pub trait FactoredAdapter: Send + Sync + 'static {
    /// The adapter's contribution to a Linear layer's output.
    ///
    /// - `x`: the layer input, flattened to `[tokens, d_in]`.
    /// - `base_weight`: the frozen base weight `[d_in, d_out]` (for methods whose update depends
    ///   on it).
    /// - returns `[tokens, d_out]`, or `None` when the adapter is inactive (disabled).
    fn linear_delta(&self, x: Tensor<2>, base_weight: &Tensor<2>) -> Option<Tensor<2>>;

    /// Whether a Linear layer runs this adapter factored for an input of `tokens` rows (the
    /// default: always); when it does not, the layer multiplies once by the composed weight
    /// `W + ΔW` (the parameter's reparameterised value). An adapter whose update is a dense `ΔW`
    /// computed from the base weight anyway (MiSS/Bone's bat mode) returns `false` for many
    /// tokens, as PEFT composes it, instead of `x·W + x·ΔW`, which costs one more product
    /// forward and two more backward; for a few tokens (a decoding step) composing costs more
    /// than the second product. LoRA returns `false` without gradients once composing costs
    /// less than its branch (`LoraAdapter::composes_for`). An Embedding layer runs every
    /// registered adapter factored (its factored path looks rows up), whatever this returns.
    fn runs_factored(&self, _tokens: usize) -> bool {
        true
    }

    /// A Linear layer's output without its bias: `x·W` plus the adapter.
    ///
    /// - `x`: `[tokens, d_in]`; `base_weight`: `[d_in, d_out]`;
    /// - `base`: `x·W` `[tokens, d_out]`, already computed by the layer;
    /// - returns `[tokens, d_out]`.
    ///
    /// The default adds [`linear_delta`](Self::linear_delta). Methods that rescale the base
    /// output (DoRA) override it to reuse `base` instead of multiplying by `W` again.
    fn linear_output(&self, x: Tensor<2>, base_weight: &Tensor<2>, base: Tensor<2>) -> Tensor<2> {
        match self.linear_delta(x, base_weight) {
            Some(delta) => base + delta,
            None => base,
        }
    }

    /// The adapter's contribution to an Embedding lookup.
    ///
    /// - `ids`: `[batch, seq]` token ids; returns `[batch, seq, d_model]`, or `None` when inactive.
    fn embedding_delta(&self, ids: Tensor<2, Int>) -> Option<Tensor<3>>;

    /// An Embedding lookup with the adapter: `base` is `W[ids]` `[batch, seq, d_model]`.
    ///
    /// The default adds [`embedding_delta`](Self::embedding_delta); DoRA overrides it to rescale
    /// `base` as well.
    fn embedding_output(
        &self,
        ids: Tensor<2, Int>,
        _base_weight: &Tensor<2>,
        base: Tensor<3>,
    ) -> Tensor<3> {
        match self.embedding_delta(ids) {
            Some(delta) => base + delta,
            None => base,
        }
    }
}

type Probe = for<'a> fn(&'a Param<Tensor<2>>) -> Option<&'a dyn FactoredAdapter>;

static REGISTRY: RwLock<Vec<(TypeId, Probe)>> = RwLock::new(Vec::new());

fn probe<R: Reparameterization + FactoredAdapter>(
    p: &Param<Tensor<2>>,
) -> Option<&dyn FactoredAdapter> {
    p.reparameterization::<R>()
        .map(|r| r as &dyn FactoredAdapter)
}

/// Makes the layers of [`crate::nn`] run adapters of type `R` factored. Idempotent.
pub fn register_factored<R: Reparameterization + FactoredAdapter>() {
    let id = TypeId::of::<R>();
    let mut reg = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if !reg.iter().any(|(t, _)| *t == id) {
        reg.push((id, probe::<R>));
    }
}

/// The factored adapter attached to a Linear layer's `weight`, if its type was registered and it
/// [runs factored](FactoredAdapter::runs_factored) for an input of `tokens` rows.
pub fn factored_adapter(weight: &Param<Tensor<2>>, tokens: usize) -> Option<&dyn FactoredAdapter> {
    registered_adapter(weight).filter(|adapter| adapter.runs_factored(tokens))
}

/// The adapter attached to `weight`, if its type was registered (an Embedding layer runs it
/// factored for any input).
pub(crate) fn registered_adapter(weight: &Param<Tensor<2>>) -> Option<&dyn FactoredAdapter> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    reg.iter().find_map(|(_, p)| p(weight))
}
