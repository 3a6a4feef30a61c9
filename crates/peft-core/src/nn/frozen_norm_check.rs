//! A check the norm nodes' tests share: frozen parameters get no gradient and leave the input's
//! as it is.

use burn::tensor::{Distribution, Tensor, Tolerance};

/// On the suite's devices: `norm(x, params)` over `[2, 5, 24]` inputs with parameters of 24
/// values drawn from `params`, once with the parameters trained and once frozen. A frozen
/// parameter gets no gradient, a trained one does, and the input's gradient is the same
/// either way (the node skips the parameters' sums when they are frozen).
pub(super) fn frozen_params_leave_the_input_gradient(
    params: &[Distribution],
    norm: impl Fn(Tensor<3>, &[Tensor<1>]) -> Tensor<3>,
) {
    for device in crate::device::suite_devices() {
        let device = device.autodiff();
        let x = Tensor::<3>::random([2, 5, 24], Distribution::Normal(0.0, 1.5), &device);
        let params: Vec<Tensor<1>> = params
            .iter()
            .map(|d| Tensor::<1>::random([24], *d, &device))
            .collect();
        let up = Tensor::<3>::random([2, 5, 24], Distribution::Default, &device);
        let input_grad = |trained: bool| {
            let x = x.clone().detach().require_grad();
            let params: Vec<Tensor<1>> = params
                .iter()
                .map(|p| {
                    let p = p.clone().detach();
                    if trained { p.require_grad() } else { p }
                })
                .collect();
            let grads = (norm(x.clone(), &params) * up.clone()).sum().backward();
            for p in &params {
                assert_eq!(p.grad(&grads).is_some(), trained, "{device:?}");
            }
            x.grad(&grads).expect("input gradient").into_data()
        };
        input_grad(false).assert_approx_eq::<f32>(&input_grad(true), Tolerance::absolute(1e-6));
    }
}
