//! Attaching adapters to any burn module through burn's `Reparameterizer`, without changing the
//! model's code.

use std::collections::HashMap;

use burn::module::{Module, Param, Reparameterization, Reparameterizer};
use burn::tensor::{Device, Tensor};

use crate::error::{PeftError, Result};
use crate::inventory::{Inventory, LayerKind};
use crate::keymap::KeyMap;
use crate::nn::FactoredAdapter;
use crate::targets::{TargetMatcher, TargetSpec, expand_all_linear};

/// A layer chosen to carry an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Burn module path.
    pub path: String,
    /// PEFT (PyTorch) module name, after the [`KeyMap`].
    pub name: String,
    /// The layer kind.
    pub kind: LayerKind,
    /// Base weight shape in burn layout (`[d_in, d_out]` or `[num, dim]`).
    pub weight_shape: [usize; 2],
    /// Whether the layer runs adapters factored ([`crate::nn`]) or in weight space.
    pub factored: bool,
}

/// Which layers get adapters and which modules are trained in full.
#[derive(Debug, Clone, Default)]
pub struct InjectionPlan {
    /// The layers to adapt, in model order.
    pub targets: Vec<Target>,
    /// Burn paths of the `modules_to_save` modules (trained and saved in full).
    pub modules_to_save: Vec<String>,
}

/// Options for resolving targets against a model.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// Burn path → PyTorch name.
    pub key_map: KeyMap,
    /// The output head `all-linear` leaves out (PyTorch name); default: a module named `lm_head`.
    pub output_head: Option<String>,
}

impl InjectionPlan {
    /// Resolves `spec` against `model` with PEFT's matching rules.
    ///
    /// `supported` lists the layer kinds the method can adapt; a matching module of another
    /// kind is an error, as in PEFT. Errors: no match (listing the adaptable modules), a model
    /// that already carries adapters, invalid patterns.
    pub fn resolve<M: Module>(
        model: &M,
        spec: &TargetSpec,
        options: &ResolveOptions,
        supported: &[LayerKind],
    ) -> Result<Self> {
        let inventory = Inventory::of(model);
        if let Some(l) = inventory.layers.iter().find(|l| l.adapted) {
            return Err(PeftError::AlreadyAdapted(l.path.clone()));
        }
        let named: Vec<(String, &crate::inventory::LayerEntry)> = inventory
            .layers
            .iter()
            .map(|l| (options.key_map.to_peft(&l.path), l))
            .collect();
        let mut spec = spec.clone();
        if spec
            .target_modules
            .as_ref()
            .is_some_and(|t| t.is_all_linear())
        {
            let linear: Vec<&str> = named
                .iter()
                .filter(|(_, l)| l.kind == LayerKind::Linear)
                .map(|(n, _)| n.as_str())
                .collect();
            spec.target_modules = Some(crate::TargetModules::List(expand_all_linear(
                linear,
                options.output_head.as_deref(),
            )));
        }
        let matcher = TargetMatcher::new(&spec)?;
        // Every module path (containers too), so that a matched non-layer module is reported.
        let mut modules: Vec<String> = Vec::new();
        for p in &inventory.params {
            if p.in_adapter {
                continue;
            }
            let parts: Vec<&str> = p.path.split('.').collect();
            for i in 1..parts.len() {
                let m = parts[..i].join(".");
                if !modules.contains(&m) {
                    modules.push(m);
                }
            }
        }
        for m in &modules {
            let name = options.key_map.to_peft(m);
            let layer = named.iter().find(|(_, l)| &l.path == m);
            let ok = layer.is_some_and(|(_, l)| supported.contains(&l.kind));
            if !ok && matcher.is_targeted(&name) {
                return Err(PeftError::Unsupported {
                    field: "target_modules".into(),
                    value: format!("{name:?}"),
                    reason: format!(
                        "the module is {}; supported layers: {supported:?}",
                        layer
                            .map(|(_, l)| format!("a {:?}", l.kind))
                            .unwrap_or("not a Linear or Embedding".into())
                    ),
                });
            }
        }
        let candidates: Vec<&str> = named
            .iter()
            .filter(|(_, l)| supported.contains(&l.kind))
            .map(|(n, _)| n.as_str())
            .collect();
        let selected = matcher.select(candidates.iter().copied())?;
        let targets = named
            .iter()
            .filter(|(n, _)| selected.contains(n))
            .map(|(n, l)| Target {
                path: l.path.clone(),
                name: n.clone(),
                kind: l.kind,
                weight_shape: l.weight_shape,
                factored: l.factored,
            })
            .collect();
        let mut modules_to_save = Vec::new();
        for m in spec.modules_to_save.iter().flatten() {
            let found: Vec<&String> = modules
                .iter()
                .filter(|p| {
                    let n = options.key_map.to_peft(p);
                    n == *m || n.ends_with(&format!(".{m}"))
                })
                .collect();
            if found.is_empty() {
                return Err(PeftError::UnknownModule(m.clone()));
            }
            modules_to_save.extend(found.into_iter().cloned());
        }
        Ok(Self {
            targets,
            modules_to_save,
        })
    }
}

/// Creates one method's adapter for a target.
pub trait AdapterFactory {
    /// The reparameterization attached to each target's weight.
    type Adapter: Reparameterization + FactoredAdapter;
    /// Creates the adapter for `target` on `device`. `weight` reads the target's base weight
    /// (`[d_in, d_out]` or `[num, dim]`, detached) for methods whose initial state depends on it
    /// (DoRA's magnitude); a lazily initialised weight is only materialised when it is called.
    /// Inputs were validated beforehand.
    fn create(
        &mut self,
        target: &Target,
        weight: &dyn Fn() -> Tensor<2>,
        device: &Device,
    ) -> Self::Adapter;
}

struct Injector<'a, F> {
    factory: F,
    targets: HashMap<String, &'a Target>,
    trainable: &'a [String],
}

impl<F: AdapterFactory> Reparameterizer for Injector<'_, F> {
    type Reparam = F::Adapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Self::Reparam>) {
        let trainable = under_any(self.trainable, path);
        let param = crate::require_grad::set_require_grad(param, trainable);
        match self.targets.get(path) {
            Some(target) if D == 2 => {
                let [d0, d1] = target.weight_shape;
                let weight = || param.val().detach().reshape([d0, d1]);
                let adapter = self.factory.create(target, &weight, &param.lazy_device());
                (param, Some(adapter))
            }
            _ => (param, None),
        }
    }
}

/// Attaches the factory's adapters to the plan's targets. Every other parameter is frozen except
/// those of `modules_to_save`.
pub fn inject<M: Module, F: AdapterFactory>(model: M, plan: &InjectionPlan, factory: F) -> M {
    crate::nn::register_factored::<F::Adapter>();
    let targets = plan
        .targets
        .iter()
        .map(|t| (format!("{}.weight", t.path), t))
        .collect();
    model.apply_reparameterization(Injector {
        factory,
        targets,
        trainable: &plan.modules_to_save,
    })
}

/// Whether `path` lies inside one of the module paths `modules` (`a.b` holds `a.b.weight`).
pub fn under_any(modules: &[String], path: &str) -> bool {
    modules.iter().any(|m| {
        path.len() > m.len() && path.starts_with(m.as_str()) && path.as_bytes()[m.len()] == b'.'
    })
}
