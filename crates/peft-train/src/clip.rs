//! PyTorch's `clip_grad_norm_`: one norm over every trainable parameter's gradient.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
    ids: Vec<(burn::module::ParamId, usize)>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
            self.ids.push((param.id, D));
        }
    }
}

/// Scales the gradients of `model`'s parameters so that their joint L2 norm is at most
/// `max_norm` (coefficient `max_norm / (norm + 1e-6)`, capped at 1, as PyTorch computes it);
/// returns the norm before clipping. `max_norm <= 0` only measures.
pub fn clip_grad_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut visitor = SquaredNorm {
        grads,
        sum: None,
        ids: Vec::new(),
    };
    model.visit(&mut visitor);
    let ids = visitor.ids;
    let Some(sum) = visitor.sum else {
        return 0.0;
    };
    let norm = f64::from(sum.into_scalar::<f32>()).sqrt();
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        for (id, rank) in ids {
            match rank {
                1 => scale::<1>(grads, id, coef),
                2 => scale::<2>(grads, id, coef),
                3 => scale::<3>(grads, id, coef),
                4 => scale::<4>(grads, id, coef),
                _ => {}
            }
        }
    }
    norm
}

fn scale<const D: usize>(grads: &mut GradientsParams, id: burn::module::ParamId, coef: f64) {
    if let Some(g) = grads.remove::<D>(id) {
        grads.register(id, g.mul_scalar(coef));
    }
}
