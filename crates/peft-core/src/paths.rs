//! Walking a module's float parameters with their dotted paths (`model.layers.0.q_proj.weight`).
//!
//! burn's [`ModuleVisitor`] / [`ModuleMapper`] announce modules with `enter_module` /
//! `exit_module`; [`visit_with_paths`] and [`map_with_paths`] keep that stack so that a visitor
//! only says what it does with one parameter at one path.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Reads float parameters, told each one's path (its module names, outermost first).
pub trait PathVisitor {
    /// Called once per float parameter.
    fn visit_float<const D: usize>(&mut self, path: &[String], param: &Param<Tensor<D>>);
}

/// Rewrites float parameters, told each one's path (its module names, outermost first).
pub trait PathMapper {
    /// Called once per float parameter; returns its replacement.
    fn map_float<const D: usize>(
        &mut self,
        path: &[String],
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>>;
}

/// A path as a dotted string: `["layers", "0", "q_proj"]` → `"layers.0.q_proj"`.
pub fn dotted(path: &[String]) -> String {
    path.join(".")
}

struct Stack<'a, V> {
    names: Vec<String>,
    inner: &'a mut V,
}

impl<V: PathVisitor> ModuleVisitor for Stack<'_, V> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.names.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.names.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.inner.visit_float(&self.names, param);
    }
}

impl<V: PathMapper> ModuleMapper for Stack<'_, V> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.names.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.names.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.inner.map_float(&self.names, param)
    }
}

/// Visits every float parameter of `module` with its path.
pub fn visit_with_paths<M: Module, V: PathVisitor>(module: &M, visitor: &mut V) {
    module.visit(&mut Stack {
        names: Vec::new(),
        inner: visitor,
    });
}

/// Maps every float parameter of `module` with its path.
pub fn map_with_paths<M: Module, V: PathMapper>(module: M, mapper: &mut V) -> M {
    module.map(&mut Stack {
        names: Vec::new(),
        inner: mapper,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    #[derive(Module, Debug)]
    struct Two {
        first: Linear,
        second: Linear,
    }

    struct Names(Vec<String>);
    impl PathVisitor for Names {
        fn visit_float<const D: usize>(&mut self, path: &[String], _: &Param<Tensor<D>>) {
            self.0.push(dotted(path));
        }
    }

    #[test]
    fn paths_name_the_modules() {
        let device = Device::default();
        let m = Two {
            first: LinearConfig::new(2, 3).init(&device),
            second: LinearConfig::new(3, 1).with_bias(false).init(&device),
        };
        let mut names = Names(Vec::new());
        visit_with_paths(&m, &mut names);
        assert_eq!(
            names.0,
            ["first.weight", "first.bias", "second.weight"].map(String::from)
        );
    }
}
