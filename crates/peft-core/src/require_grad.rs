//! Setting one parameter's gradient flag without touching its clones.
//!
//! burn's layers create *lazy* parameters: the value is made on first use. Clones of a module
//! share that pending initialization, and burn-core 0.22's `Param::set_require_grad` on a
//! parameter not yet initialized writes the flag into the shared state, so freezing one clone
//! froze every other (a model cloned before injection lost its gradients). [`set_require_grad`]
//! initializes the parameter first, so that the flag is its own.

use burn::module::Param;
use burn::tensor::Tensor;

/// Sets `param`'s gradient flag, leaving every clone of it as it was.
///
/// A lazy parameter is initialized first: the value is made once and shared with the clones
/// (no copy), the flag is this parameter's own. Its load and save mappers are kept.
///
/// ```
/// use burn::module::{Param, ParamId};
/// use burn::tensor::{Device, Shape, Tensor};
///
/// let device = Device::default().autodiff();
/// let shared: Param<Tensor<2>> = Param::uninitialized(
///     ParamId::new(),
///     |device, require_grad| Tensor::zeros([2, 3], device).set_require_grad(require_grad),
///     device,
///     true,
///     Shape::new([2, 3]),
/// );
/// let frozen = peft_core::require_grad::set_require_grad(shared.clone(), false);
/// assert!(!frozen.val().is_require_grad());
/// assert!(shared.val().is_require_grad());
/// ```
pub fn set_require_grad<const D: usize>(
    param: Param<Tensor<D>>,
    require_grad: bool,
) -> Param<Tensor<D>> {
    // Once the shared state holds a value, burn's setter maps this parameter into a state of
    // its own instead of writing the pending initialization's flag.
    let _ = param.base();
    param.set_require_grad(require_grad)
}

#[cfg(test)]
mod tests {
    use burn::module::ParamId;
    use burn::tensor::{Device, Shape, TensorData};

    use super::*;

    fn lazy(device: &Device) -> Param<Tensor<2>> {
        Param::uninitialized(
            ParamId::new(),
            |device, require_grad| {
                Tensor::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), device)
                    .set_require_grad(require_grad)
            },
            device.clone(),
            true,
            Shape::new([2, 2]),
        )
    }

    #[test]
    fn freezing_a_lazy_clone_leaves_the_others_trainable() {
        let device = Device::default().autodiff();
        let shared = lazy(&device);
        let other = shared.clone();
        let frozen = set_require_grad(shared, false);
        assert!(!frozen.val().is_require_grad());
        assert!(other.val().is_require_grad());
        assert_eq!(frozen.id, other.id);
        assert_eq!(frozen.val().into_data(), other.val().into_data());
    }

    #[test]
    fn burns_own_setter_is_what_this_guards_against() {
        // If burn stops sharing the flag between lazy clones, this fails and the helper can go.
        let device = Device::default().autodiff();
        let shared = lazy(&device);
        let other = shared.clone();
        let _frozen = shared.set_require_grad(false);
        assert!(!other.val().is_require_grad());
    }

    #[test]
    fn an_initialized_parameter_is_set_in_place() {
        let device = Device::default().autodiff();
        let p = lazy(&device);
        let _ = p.val();
        let frozen = set_require_grad(p.clone(), false);
        assert!(!frozen.val().is_require_grad());
        assert!(p.val().is_require_grad());
    }
}
