//! The method registry's contract: what every PEFT method provides, so that a tool picks the
//! method of an adapter folder from its `peft_type` through one table and holds no method math
//! (PEFT's `PEFT_TYPE_TO_CONFIG_MAPPING` / `PEFT_TYPE_TO_TUNER_MAPPING`, in Rust).
//!
//! A method crate implements two traits on one unit struct:
//! - [`Method`]: everything that works on files alone: which `peft_type`s it reads, what
//!   `peft inspect` shows, and the state-dict merge `peft merge` streams through;
//! - [`AttachMethod<M>`] for every burn model `M`: inject fresh adapters or load a folder onto a
//!   model, giving an [`Adapted<M>`] that runs factored, merges, unloads and saves.
//!
//! A binary lists the unit structs once and looks them up with [`find`].
//!
//! Layouts: every tensor a [`Method`] sees is in PyTorch's layout, as files hold it
//! (`[out, in]` for Linear weights, `[num, dim]` for Embedding weights).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::TensorData;
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::keymap::KeyMap;

/// A tensor as a safetensors header declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Dtype as the header spells it (`F32`, `BF16`, `I64`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The method-specific facts `peft inspect` reports about an adapter folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Description {
    /// The variant within the method (`DoRA`; Bone/MiSS `default`, `bat`, `mini`), if any.
    pub variant: Option<String>,
    /// Every rank the adapted modules use.
    pub ranks: Vec<usize>,
    /// Every scale numerator (`lora_alpha` and its patterns); empty where the method has none.
    pub alphas: Vec<f64>,
    /// Number of adapted modules.
    pub modules: usize,
}

/// How one checkpoint weight changes when an adapter is merged into it.
///
/// Values are f32 in the checkpoint's layout (`shape` as the checkpoint declares it).
pub trait WeightChange: Send + Sync {
    /// The merged weight.
    fn apply(&self, weight: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>>;

    /// The weight before [`apply`](Self::apply), from the merged one, where the method can tell
    /// it from the merged weight and the adapter alone.
    fn undo(&self, merged: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>>;
}

/// The changes of one adapter, by checkpoint key.
pub type MergePlan = BTreeMap<String, Box<dyn WeightChange>>;

/// Renames one tensor key of a folder being converted; an error for a key the format lacks.
pub type KeyRename = Box<dyn Fn(&str) -> Result<String>>;

/// A folder converted into another file format of the same method: the new
/// `adapter_config.json` and the new name of each tensor (the tensor bytes do not change).
pub struct Conversion {
    /// The `peft_type` written.
    pub peft_type: String,
    /// The new config object.
    pub config: Value,
    /// Old tensor key → new tensor key.
    pub rename: KeyRename,
}

/// What a method provides on files alone.
pub trait Method: Send + Sync {
    /// The method's name for people (`LoRA`, `MiSS/Bone`).
    fn name(&self) -> &'static str;

    /// The `peft_type` values whose folders this method reads.
    fn peft_types(&self) -> &'static [&'static str];

    /// The method-specific facts about a folder with config `config` and file header `tensors`.
    fn describe(
        &self,
        config: &Value,
        tensors: &BTreeMap<String, TensorInfo>,
    ) -> Result<Description>;

    /// Plans the state-dict merge of an adapter (config `config`, tensors `tensors` as the file
    /// holds them) into a checkpoint whose header is `checkpoint`. Every change is checked
    /// against the checkpoint's shapes here, before anything is written; module names are
    /// resolved with [`resolve_key`].
    fn plan_merge(
        &self,
        config: &Value,
        tensors: BTreeMap<String, TensorData>,
        checkpoint: &BTreeMap<String, TensorInfo>,
    ) -> Result<MergePlan>;

    /// Converts a folder with config `config` into the file format `to` (a `peft_type`; `None`:
    /// the method's other format), for methods that have several (Bone → MiSS). The default
    /// says the method has one format.
    fn convert(&self, config: &Value, to: Option<&str>) -> Result<Conversion> {
        let from = peft_type(config)?;
        Err(PeftError::Unsupported {
            field: "peft_type".into(),
            value: format!("{from:?}"),
            reason: format!(
                "{} has one file format{}; nothing to convert",
                self.name(),
                to.map(|t| format!(", not {t}")).unwrap_or_default()
            ),
        })
    }
}

/// How adapters are attached to a model: burn path ↔ PyTorch name, and the head `all-linear`
/// leaves out.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Burn path → PyTorch module name (targets and file keys use the latter).
    pub key_map: KeyMap,
    /// The output head `all-linear` leaves out (PyTorch name); default: `lm_head`.
    pub output_head: Option<String>,
}

/// A model carrying one method's adapters, as the registry hands it out.
pub trait Adapted<M> {
    /// The adapted model: call its `forward` as usual; the adapters run factored.
    fn model(&self) -> &M;

    /// Mutable access, e.g. to let an optimizer step update the adapters.
    fn model_mut(&mut self) -> &mut M;

    /// PEFT's `merge_and_unload()`: the adapters folded into the weights, the plain model.
    fn merge_and_unload(self: Box<Self>) -> Result<M>;

    /// PEFT's `unload()`: the adapters removed, the base weights untouched.
    fn unload(self: Box<Self>) -> M;

    /// Writes the PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    fn save(&self, dir: &Path) -> Result<()>;

    /// One line: method, targets, ranks and parameter counts.
    fn summary(&self) -> String;
}

/// Implements [`Adapted<M>`] for a method's model wrapper `$ty<M>` that has a public `model`
/// field and inherent `merge_and_unload(self) -> M`, `unload(self) -> M`,
/// `save(&self, &Path) -> Result<(), E>` (with `PeftError: From<E>`) and `summary(&self) -> String`.
#[macro_export]
macro_rules! impl_adapted {
    ($ty:ident) => {
        impl<M: ::burn::module::Module + 'static> $crate::method::Adapted<M> for $ty<M> {
            fn model(&self) -> &M {
                &self.model
            }

            fn model_mut(&mut self) -> &mut M {
                &mut self.model
            }

            fn merge_and_unload(self: Box<Self>) -> $crate::Result<M> {
                Ok($ty::merge_and_unload(*self))
            }

            fn unload(self: Box<Self>) -> M {
                $ty::unload(*self)
            }

            fn save(&self, dir: &::std::path::Path) -> $crate::Result<()> {
                Ok($ty::save(self, dir)?)
            }

            fn summary(&self) -> String {
                $ty::summary(self)
            }
        }
    };
}

/// What a method provides on a model of type `M`.
pub trait AttachMethod<M>: Method {
    /// Attaches fresh adapters made from `config` (an `adapter_config.json` object).
    fn inject(
        &self,
        model: M,
        config: &Value,
        options: &AttachOptions,
    ) -> Result<Box<dyn Adapted<M>>>;

    /// Loads the adapter folder `dir` onto `model`, checking every tensor.
    fn load(&self, model: M, dir: &Path, options: &AttachOptions) -> Result<Box<dyn Adapted<M>>>;
}

/// The `peft_type` of an adapter config (`LORA` when the field is missing, as in old PEFT files).
pub fn peft_type(config: &Value) -> Result<&str> {
    match config.get("peft_type") {
        None | Some(Value::Null) => Ok("LORA"),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(PeftError::InvalidConfig(format!(
            "`peft_type` must be a string, got {other}"
        ))),
    }
}

/// The entry of `methods` that reads `config`'s `peft_type`; an error lists the types known.
///
/// `as_method` gives each entry's [`Method`] (for `&dyn AttachMethod<M>` entries, `|m| *m`).
pub fn find<'a, T: ?Sized>(
    methods: &[&'a T],
    as_method: impl Fn(&&'a T) -> &'a dyn Method,
    config: &Value,
) -> Result<&'a T> {
    let wanted = peft_type(config)?;
    methods
        .iter()
        .find(|m| as_method(m).peft_types().contains(&wanted))
        .copied()
        .ok_or_else(|| {
            let known: Vec<&str> = methods
                .iter()
                .flat_map(|m| as_method(m).peft_types().iter().copied())
                .collect();
            PeftError::Unsupported {
                field: "peft_type".into(),
                value: format!("{wanted:?}"),
                reason: format!("no method for it here; supported: {}", known.join(", ")),
            }
        })
}

/// Finds the checkpoint key of `name` (`<module>.<param>` as an adapter names it): the exact
/// key, or the one key that differs only by a leading prefix on either side (a checkpoint saved
/// from the bare model lacks e.g. `transformer.`; one saved from a wrapper has more).
pub fn resolve_key<'a>(
    name: &str,
    checkpoint: &'a BTreeMap<String, TensorInfo>,
) -> Result<&'a str> {
    if let Some((k, _)) = checkpoint.get_key_value(name) {
        return Ok(k);
    }
    let hits: Vec<&str> = checkpoint
        .keys()
        .filter(|k| name.ends_with(&format!(".{k}")) || k.ends_with(&format!(".{name}")))
        .map(String::as_str)
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(PeftError::Mismatch(format!(
            "the adapter changes `{name}`, which the checkpoint does not have"
        ))),
        many => Err(PeftError::Mismatch(format!(
            "the adapter's `{name}` matches several checkpoint tensors: {many:?}"
        ))),
    }
}

/// The values of a float tensor as f32, refusing non-float dtypes and NaN or infinite values
/// (PEFT's `safe_merge`): `name` names the tensor in errors.
pub fn finite_f32(name: &str, data: TensorData) -> Result<Vec<f32>> {
    if !data.dtype().is_float() {
        return Err(PeftError::Mismatch(format!(
            "adapter tensor `{name}` has dtype {:?}; adapter weights must be floats",
            data.dtype()
        )));
    }
    let values = data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PeftError::Mismatch(format!("adapter tensor `{name}`: {e:?}")))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(PeftError::Mismatch(format!(
            "adapter tensor `{name}` holds a non-finite value ({} at flat index {i}); merging it would corrupt the checkpoint",
            values[i]
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(shape: &[usize]) -> TensorInfo {
        TensorInfo {
            dtype: "F32".into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn resolve_key_tolerates_one_prefix_either_way() {
        let ckpt = BTreeMap::from([
            ("h.0.attn.c_attn.weight".to_string(), info(&[2, 2])),
            ("model.layers.0.q.weight".to_string(), info(&[2, 2])),
        ]);
        assert_eq!(
            resolve_key("transformer.h.0.attn.c_attn.weight", &ckpt).unwrap(),
            "h.0.attn.c_attn.weight"
        );
        assert_eq!(
            resolve_key("layers.0.q.weight", &ckpt).unwrap(),
            "model.layers.0.q.weight"
        );
        assert!(resolve_key("nope.weight", &ckpt).is_err());
    }

    #[test]
    fn finite_f32_refuses_nan_and_integers() {
        let ok = TensorData::new(vec![1.0f32, 2.0], [2]);
        assert_eq!(finite_f32("t", ok).unwrap(), vec![1.0, 2.0]);
        let nan = TensorData::new(vec![1.0f32, f32::NAN], [2]);
        assert!(
            finite_f32("t", nan)
                .unwrap_err()
                .to_string()
                .contains("non-finite")
        );
        let int = TensorData::new(vec![1i64, 2], [2]);
        assert!(
            finite_f32("t", int)
                .unwrap_err()
                .to_string()
                .contains("dtype")
        );
    }

    #[test]
    fn peft_type_defaults_to_lora() {
        assert_eq!(peft_type(&serde_json::json!({})).unwrap(), "LORA");
        assert_eq!(
            peft_type(&serde_json::json!({"peft_type": "MISS"})).unwrap(),
            "MISS"
        );
        assert!(peft_type(&serde_json::json!({"peft_type": 3})).is_err());
    }
}
