//! What a model holds: its adaptable layers (recognised by module type) and its parameters.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// The kind of layer an adapter can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A `Linear` (burn's or [`crate::nn::Linear`]): weight `[d_in, d_out]`.
    Linear,
    /// An `Embedding` (burn's or [`crate::nn::Embedding`]): weight `[num, dim]`.
    Embedding,
}

/// An adaptable layer of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Burn module path, e.g. `layers.0.attn.q_proj`.
    pub path: String,
    /// Its kind.
    pub kind: LayerKind,
    /// Weight shape in burn layout: `[d_in, d_out]` (Linear) or `[num, dim]` (Embedding).
    pub weight_shape: [usize; 2],
    /// Whether the weight already carries a reparameterization.
    pub adapted: bool,
    /// Whether the layer is one of [`crate::nn`]'s adapter-aware layers (factored execution);
    /// `false` for burn's own layers (weight-space execution, `Param::val`).
    pub factored: bool,
}

impl LayerEntry {
    /// The path of the layer's weight parameter.
    pub fn weight_path(&self) -> String {
        format!("{}.weight", self.path)
    }
}

/// A float parameter of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// Full path, e.g. `layers.0.attn.q_proj.bias`; parameters of a reparameterization have
    /// paths like `<weight path>.<name>.<field>`.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Whether this parameter belongs to a reparameterization (an adapter).
    pub in_adapter: bool,
}

/// The adaptable layers and all float parameters of a model, in traversal order.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Linear and Embedding layers.
    pub layers: Vec<LayerEntry>,
    /// Every float parameter.
    pub params: Vec<ParamEntry>,
}

impl Inventory {
    /// Scans `model` without initialising lazy parameters.
    pub fn of<M: Module>(model: &M) -> Self {
        let mut scan = Scan::default();
        model.visit(&mut scan);
        scan.inventory
    }

    /// The layer at burn module path `path`.
    pub fn layer(&self, path: &str) -> Option<&LayerEntry> {
        self.layers.iter().find(|l| l.path == path)
    }

    /// Paths of the Linear layers.
    pub fn linear_paths(&self) -> impl Iterator<Item = &str> + Clone {
        self.layers
            .iter()
            .filter(|l| l.kind == LayerKind::Linear)
            .map(|l| l.path.as_str())
    }
}

#[derive(Default)]
struct Scan {
    names: Vec<String>,
    containers: Vec<String>,
    inventory: Inventory,
}

impl ModuleVisitor for Scan {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == "Reparameterization"
            && let Some(layer) = self
                .inventory
                .layers
                .iter_mut()
                .rev()
                .find(|l| l.weight_path() == self.names.join("."))
        {
            layer.adapted = true;
        }
        self.names.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.names.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.names.join(".");
        let shape = param.lazy_shape().as_slice().to_vec();
        let in_adapter = self.containers.iter().any(|c| c == "Reparameterization");
        if !in_adapter && D == 2 && self.names.last().is_some_and(|n| n == "weight") {
            let kind = match self.containers.last().map(String::as_str) {
                Some("Struct:Linear") => Some((LayerKind::Linear, false)),
                Some("Struct:FactoredLinear") => Some((LayerKind::Linear, true)),
                Some("Struct:Embedding") => Some((LayerKind::Embedding, false)),
                Some("Struct:FactoredEmbedding") => Some((LayerKind::Embedding, true)),
                _ => None,
            };
            if let Some((kind, factored)) = kind {
                self.inventory.layers.push(LayerEntry {
                    path: self.names[..self.names.len() - 1].join("."),
                    kind,
                    weight_shape: [shape[0], shape[1]],
                    adapted: false,
                    factored,
                });
            }
        }
        self.inventory.params.push(ParamEntry {
            path,
            shape,
            in_adapter,
        });
    }
}
