//! Weights whose matrix-product packs are kept between calls.
//!
//! Before a matrix product, `gemm` (the kernels behind flex's `matmul`) copies a Linear layer's
//! weight into panels in the order its micro-kernel reads them, and it does so again in every
//! call: 9–14 % of a product's time on a prompt of 256 tokens. A weight that does not change (a
//! model used for inference, the frozen base of an adapter) needs that copy once.
//! [`PackedWeights::new`] marks a module's frozen weights so; from then on the first product that
//! reads one of them in a given layout (`x·W` in a forward, `dY·Wᵀ` in a backward) packs it
//! whole and keeps the pack, and later products read the kept pack (gemm-common change 4,
//! `third_party/gemm-common/PATCHES.md`). Results are bit-identical with or without kept packs.
//!
//! The cost is memory: each layout a weight is multiplied in keeps a copy of the weight's size
//! (one for inference, two for a training step's forward and backward), freed when the
//! [`PackedWeights`] is dropped. While it lives, the marked weights are shared with it, so that
//! an operation that would write one in place writes a copy instead.
//!
//! Only flex keeps packs; on other backends [`PackedWeights::new`] marks nothing.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// A module's frozen weights, marked so that the products reading them keep their packs. Drop
/// it to free the packs.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use burn::module::Module;
/// use peft_core::nn::{InitFactored, LinearConfig};
/// use peft_core::packed::PackedWeights;
/// let device = Device::flex();
/// // A model for inference: no parameter requires a gradient.
/// let layer = LinearConfig::new(64, 32).init_factored(&device).no_grad();
/// let x = Tensor::<2>::random([8, 64], Distribution::Default, &device);
/// let before = layer.forward(x.clone());
/// let packed = PackedWeights::new(&layer);
/// assert_eq!(packed.len(), 1); // the weight; the bias is never a product's operand
/// let after = layer.forward(x);
/// assert_eq!(before.into_data(), after.into_data()); // bit for bit
/// ```
#[derive(Debug, Default)]
pub struct PackedWeights {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    // The region is unregistered (its packs freed) before the tensor's storage is released.
    #[cfg(feature = "flex")]
    region: gemm_common::frozen::Frozen,
    #[cfg(feature = "flex")]
    _tensor: burn_flex::FlexTensor,
}

impl PackedWeights {
    /// Marks every frozen (not `require_grad`) float parameter of rank 2 of `module` that lives
    /// on flex in f32: Linear weights and embeddings. A trainable parameter changes every step
    /// and is left alone.
    pub fn new<M: Module>(module: &M) -> Self {
        let mut visitor = Marker::default();
        module.visit(&mut visitor);
        visitor.packed
    }

    /// How many weights are marked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no weight is marked (nothing on flex, or nothing frozen).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes the packs of these weights keep now.
    pub fn kept_bytes(&self) -> usize {
        #[cfg(feature = "flex")]
        return self.entries.iter().map(|e| e.region.packed_bytes()).sum();
        #[cfg(not(feature = "flex"))]
        0
    }
}

#[derive(Default)]
struct Marker {
    packed: PackedWeights,
}

impl ModuleVisitor for Marker {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D != 2 || param.is_require_grad() {
            return;
        }
        #[cfg(feature = "flex")]
        if let Some(entry) = flex_entry(param.val()) {
            self.packed.entries.push(entry);
        }
    }
}

/// The flex f32 storage behind `tensor` (inside autodiff too), marked.
#[cfg(feature = "flex")]
#[allow(unsafe_code)]
fn flex_entry<const D: usize>(tensor: Tensor<D>) -> Option<Entry> {
    use burn::backend::{Autodiff, Flex};
    let flex = match tensor.clone().try_into_primitive::<Flex>() {
        Ok(t) => t,
        Err(_) => tensor
            .try_into_primitive::<Autodiff<Flex>>()
            .ok()?
            .into_primitive(),
    };
    if flex.dtype() != burn::tensor::DType::F32 {
        return None;
    }
    let bytes = flex.bytes();
    // SAFETY: `_tensor` keeps the storage alive; flex writes a shared storage only through a
    // copy (copy-on-write), and the entry shares it until the region is unregistered.
    let region = unsafe { gemm_common::frozen::freeze(bytes.as_ptr(), bytes.len()) };
    Some(Entry {
        region,
        _tensor: flex,
    })
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::nn::{InitFactored, LinearConfig};
    use burn::tensor::{Device, Distribution};

    /// A forward and a backward through marked weights equal the products without kept packs
    /// bit for bit, and the packs are kept (two layouts after a backward) and made once.
    #[test]
    fn kept_packs_give_bit_identical_products_and_are_packed_once() {
        let device = Device::flex();
        // 1100 × 96: panels and depth blocks (over 512 deep) with tails; 300 rows.
        let layer = LinearConfig::new(1100, 96)
            .with_bias(false)
            .init_factored(&device)
            .no_grad();
        let x = Tensor::<2>::random([300, 1100], Distribution::Default, &device);
        let dy = Tensor::<2>::random([300, 96], Distribution::Default, &device);
        let w = layer.weight.val();
        let products = || {
            (
                layer.forward(x.clone()).into_data(),
                dy.clone().matmul(w.clone().transpose()).into_data(),
            )
        };
        let plain = products();
        let packed = PackedWeights::new(&layer);
        assert_eq!(packed.len(), 1);
        assert_eq!(packed.kept_bytes(), 0);
        let first = products(); // packs and keeps both layouts
        let kept = packed.kept_bytes();
        assert!(kept >= 2 * 1100 * 96 * 4, "kept {kept} bytes");
        let second = products(); // reads the kept packs
        assert_eq!(plain, first);
        assert_eq!(plain, second);
        let second_kept = packed.kept_bytes();
        drop(packed);
        assert_eq!(kept, second_kept, "the second products packed again");
        assert_eq!(plain, products());
    }

    /// On an autodiff device the frozen weight is marked and the trainable one is not, and the
    /// input's gradient through kept packs equals the one without, bit for bit.
    #[test]
    fn a_training_step_marks_frozen_weights_only() {
        let device = Device::flex().autodiff();
        let frozen = LinearConfig::new(130, 70)
            .with_bias(false)
            .init_factored(&device)
            .no_grad();
        let trainable = LinearConfig::new(70, 20).init_factored(&device);
        let x = Tensor::<2>::random([90, 130], Distribution::Default, &device);
        let input_gradient = || {
            let x = x.clone().require_grad();
            let grads = trainable
                .forward(frozen.forward(x.clone()))
                .sum()
                .backward();
            x.grad(&grads).map(|g| g.into_data())
        };
        let plain = input_gradient();
        assert!(PackedWeights::new(&trainable).is_empty());
        let packed = PackedWeights::new(&frozen);
        assert_eq!(packed.len(), 1);
        assert_eq!(plain, input_gradient());
        assert_eq!(plain, input_gradient());
    }
}
