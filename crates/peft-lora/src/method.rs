//! LoRA (and DoRA, `use_dora: true`) in the method registry ([`peft_core::method`]): what
//! `peft inspect`, `peft merge`, `peft forward` and every other tool ask of a `LORA` folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use peft_core::method::{
    Adapted, AttachMethod, AttachOptions, Description, MergePlan, Method, TensorInfo, WeightChange,
    finite_f32, resolve_key,
};
use peft_core::{PEFT_PREFIX, PeftError};
use serde_json::Value;

use crate::config::LoraConfig;
use crate::error::LoraError;
use crate::inject::InjectOptions;
use crate::model::LoraModel;

/// The registry entry for `peft_type: "LORA"` (plain LoRA, rsLoRA, DoRA, and adapters trained
/// with LoRA-FA, which PEFT saves as plain LoRA).
#[derive(Debug, Clone, Copy, Default)]
pub struct Lora;

type Result<T, E = PeftError> = std::result::Result<T, E>;

impl From<LoraError> for PeftError {
    fn from(e: LoraError) -> Self {
        match e {
            LoraError::Core(inner) => inner,
            other => PeftError::Method(Box::new(other)),
        }
    }
}

/// `fan_in_fan_out` (GPT-2 `Conv1D`) is only meaningful for state-dict merges, where the
/// checkpoint stores `[in, out]`; models here reject it.
fn split_fan_in_fan_out(config: &Value) -> (Value, bool) {
    let mut config = config.clone();
    let fan = match config.as_object_mut() {
        Some(map) => map
            .remove("fan_in_fan_out")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        None => false,
    };
    (config, fan)
}

/// What a file key holds.
enum Slot {
    A,
    B,
    Magnitude,
}

/// The module and slot of an adapter-file key (prefix removed), or `None` for a full tensor.
fn slot(key: &str) -> Option<(&str, Slot, bool)> {
    [
        (".lora_A.weight", Slot::A, false),
        (".lora_B.weight", Slot::B, false),
        (".lora_embedding_A", Slot::A, true),
        (".lora_embedding_B", Slot::B, true),
        (".lora_magnitude_vector", Slot::Magnitude, false),
    ]
    .into_iter()
    .find_map(|(suffix, which, emb)| key.strip_suffix(suffix).map(|m| (m, which, emb)))
}

/// One module's tensors in a LoRA file, PyTorch layout.
#[derive(Default)]
struct FileModule {
    a: Option<TensorData>,
    b: Option<TensorData>,
    magnitude: Option<TensorData>,
    embedding: bool,
}

fn dims2(d: &TensorData) -> [usize; 2] {
    match d.shape().as_slice() {
        [a, b] => [*a, *b],
        _ => [0, 0],
    }
}

/// The state-dict change of one LoRA/DoRA module, in the factors' orientation `[rows, cols]`
/// (`B·A`), transposed to and from the checkpoint's for Embedding and `Conv1D`.
struct LoraChange {
    module: String,
    a: TensorData,
    b: TensorData,
    scaling: f64,
    transpose: bool,
    /// DoRA's magnitude `[rows]`.
    magnitude: Option<TensorData>,
}

impl LoraChange {
    fn oriented(&self, w: Vec<f32>, shape: &[usize], device: &Device) -> Tensor<2> {
        let w = Tensor::<2>::from_data(TensorData::new(w, [shape[0], shape[1]]), device);
        if self.transpose { w.transpose() } else { w }
    }

    fn delta(&self, device: &Device) -> Tensor<2> {
        Tensor::<2>::from_data(self.b.clone(), device)
            .matmul(Tensor::<2>::from_data(self.a.clone(), device))
            .mul_scalar(self.scaling)
    }

    fn back(&self, w: Tensor<2>) -> Result<Vec<f32>> {
        let w = if self.transpose { w.transpose() } else { w };
        w.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| PeftError::Mismatch(format!("{}: {e:?}", self.module)))
    }
}

impl WeightChange for LoraChange {
    fn apply(&self, weight: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        let device = Device::default();
        let v = self.oriented(weight, shape, &device) + self.delta(&device);
        let merged = match &self.magnitude {
            // DoRA: m · V / ‖V‖ per row of the [out, in] orientation.
            Some(m) => {
                let rows = v.dims()[0];
                let norm = v.clone().powi_scalar(2).sum_dim(1).sqrt();
                let m = Tensor::<1>::from_data(m.clone(), &device).reshape([rows, 1]);
                v * (m / norm)
            }
            None => v,
        };
        self.back(merged)
    }

    fn undo(&self, merged: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        if self.magnitude.is_some() {
            return Err(PeftError::Unsupported {
                field: "use_dora".into(),
                value: "true".into(),
                reason: format!(
                    "`{}`: a DoRA merge cannot be undone from the merged weight alone (‖W + s·B·A‖ is lost)",
                    self.module
                ),
            });
        }
        let device = Device::default();
        self.back(self.oriented(merged, shape, &device) - self.delta(&device))
    }
}

/// `modules_to_save` copies and saved embedding layers: the adapter's tensor replaces the
/// checkpoint's, then the module's LoRA change (if any) applies.
struct Replace {
    values: Vec<f32>,
    then: Option<LoraChange>,
}

impl WeightChange for Replace {
    fn apply(&self, _weight: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        match &self.then {
            Some(c) => c.apply(self.values.clone(), shape),
            None => Ok(self.values.clone()),
        }
    }

    fn undo(&self, _merged: Vec<f32>, _shape: &[usize]) -> Result<Vec<f32>> {
        Err(PeftError::Mismatch(
            "a tensor the adapter replaces in full cannot be restored from the merged checkpoint"
                .into(),
        ))
    }
}

impl Method for Lora {
    fn name(&self) -> &'static str {
        "LoRA"
    }

    fn peft_types(&self) -> &'static [&'static str] {
        &["LORA"]
    }

    fn describe(
        &self,
        config: &Value,
        tensors: &BTreeMap<String, TensorInfo>,
    ) -> Result<Description> {
        // Read the fields directly rather than through `LoraConfig`: inspecting a folder must work
        // even when it uses an option this crate cannot run (PiSSA init, `lora_bias`, …).
        let number = |v: &Value| v.as_f64();
        let lora_alpha = config.get("lora_alpha").and_then(number).unwrap_or(8.0);
        let patterns = config.get("alpha_pattern").and_then(Value::as_object);
        let use_dora = config
            .get("use_dora")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut ranks = BTreeSet::new();
        let mut modules = 0;
        for (name, info) in tensors {
            if let Some((_, Slot::A, _)) = slot(name) {
                modules += 1;
                ranks.insert(info.shape.first().copied().unwrap_or(0));
            }
        }
        let mut alphas: Vec<f64> = std::iter::once(lora_alpha)
            .chain(
                patterns
                    .into_iter()
                    .flat_map(|p| p.values().filter_map(number)),
            )
            .collect();
        alphas.sort_by(f64::total_cmp);
        alphas.dedup();
        Ok(Description {
            variant: use_dora.then(|| "DoRA".to_string()),
            ranks: ranks.into_iter().collect(),
            alphas,
            modules,
        })
    }

    fn plan_merge(
        &self,
        config: &Value,
        tensors: BTreeMap<String, TensorData>,
        checkpoint: &BTreeMap<String, TensorInfo>,
    ) -> Result<MergePlan> {
        let (config, fan_in_fan_out) = split_fan_in_fan_out(config);
        let config = LoraConfig::from_json(&config)?;
        let mut modules: BTreeMap<String, FileModule> = BTreeMap::new();
        let mut replacements = BTreeMap::new();
        for (key, data) in tensors {
            let values = finite_f32(&key, data.clone())?;
            let data = TensorData::new(values, data.shape().clone());
            let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
            match slot(name) {
                Some((module, which, emb)) => {
                    let m = modules.entry(module.to_string()).or_default();
                    m.embedding |= emb;
                    match which {
                        Slot::A => m.a = Some(data),
                        Slot::B => m.b = Some(data),
                        Slot::Magnitude => m.magnitude = Some(data),
                    }
                }
                None => {
                    let name = match name.strip_suffix(".base_layer.weight") {
                        Some(m) => format!("{m}.weight"),
                        None => name.to_string(),
                    };
                    replacements.insert(name, data);
                }
            }
        }
        let mut plan: BTreeMap<String, LoraChange> = BTreeMap::new();
        for (module, m) in modules {
            let (Some(a), Some(b)) = (m.a, m.b) else {
                return Err(PeftError::Mismatch(format!(
                    "module `{module}` has only one of its two LoRA factors"
                )));
            };
            let key = resolve_key(&format!("{module}.weight"), checkpoint)?.to_string();
            let shape = checkpoint[&key].shape.clone();
            let ([r_a, cols], [rows, r_b]) = (dims2(&a), dims2(&b));
            let (r, alpha) = config.rank_and_alpha(&module)?;
            if r_a != r || r_b != r {
                return Err(PeftError::Mismatch(format!(
                    "module `{module}`: factors of rank {r_a}/{r_b} ({:?}, {:?}), config says r = {r}",
                    a.shape().as_slice(),
                    b.shape().as_slice()
                )));
            }
            // Linear: [out, in] = [rows, cols]; Conv1D and Embedding store the transpose.
            let transpose = m.embedding || fan_in_fan_out;
            let expected = if transpose {
                vec![cols, rows]
            } else {
                vec![rows, cols]
            };
            if shape != expected {
                return Err(PeftError::Mismatch(format!(
                    "module `{module}`: checkpoint `{key}` has shape {shape:?}, the adapter's factors {:?} and {:?} need {expected:?}",
                    a.shape().as_slice(),
                    b.shape().as_slice()
                )));
            }
            let magnitude = match (config.use_dora, m.magnitude) {
                (true, Some(mag)) if mag.shape().as_slice() == [rows] => Some(mag),
                (true, Some(mag)) => {
                    return Err(PeftError::Mismatch(format!(
                        "module `{module}`: lora_magnitude_vector has shape {:?}, expected [{rows}]",
                        mag.shape().as_slice()
                    )));
                }
                (true, None) => {
                    return Err(PeftError::Mismatch(format!(
                        "module `{module}`: use_dora is set but the file has no lora_magnitude_vector"
                    )));
                }
                (false, Some(_)) => {
                    return Err(PeftError::Mismatch(format!(
                        "module `{module}` has a lora_magnitude_vector but use_dora is not set"
                    )));
                }
                (false, None) => None,
            };
            let change = LoraChange {
                module,
                a,
                b,
                scaling: config.scaling(r, alpha),
                transpose,
                magnitude,
            };
            plan.insert(key, change);
        }
        let mut out: MergePlan = BTreeMap::new();
        for (name, data) in replacements {
            let key = resolve_key(&name, checkpoint)?.to_string();
            let shape = &checkpoint[&key].shape;
            if data.shape().as_slice() != shape.as_slice() {
                return Err(PeftError::Mismatch(format!(
                    "`{name}`: the adapter's tensor has shape {:?}, checkpoint `{key}` has {shape:?}",
                    data.shape().as_slice()
                )));
            }
            let values = data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| PeftError::Mismatch(format!("`{name}`: {e:?}")))?;
            let then = plan.remove(&key);
            out.insert(key, Box::new(Replace { values, then }));
        }
        for (key, change) in plan {
            out.insert(key, Box::new(change));
        }
        Ok(out)
    }
}

fn inject_options(options: &AttachOptions) -> InjectOptions {
    let mut o = InjectOptions::default().with_key_map(options.key_map.clone());
    o.output_head = options.output_head.clone();
    o
}

peft_core::impl_adapted!(LoraModel);

impl<M: Module + 'static> AttachMethod<M> for Lora {
    fn inject(
        &self,
        model: M,
        config: &Value,
        options: &AttachOptions,
    ) -> Result<Box<dyn Adapted<M>>> {
        let config = LoraConfig::from_json(config)?;
        let lora = LoraModel::inject(model, &config, &inject_options(options))?;
        Ok(Box::new(lora))
    }

    fn load(&self, model: M, dir: &Path, options: &AttachOptions) -> Result<Box<dyn Adapted<M>>> {
        Ok(Box::new(LoraModel::load(
            model,
            dir,
            &inject_options(options),
        )?))
    }
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

    fn adapter(dora: bool) -> (Value, BTreeMap<String, TensorData>) {
        let config = serde_json::json!({
            "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"], "use_dora": dora
        });
        let mut t = BTreeMap::from([
            (
                "base_model.model.q.lora_A.weight".to_string(),
                TensorData::new(vec![0.1f32, -0.2, 0.3, 0.4, 0.5, -0.6], [2, 3]),
            ),
            (
                "base_model.model.q.lora_B.weight".to_string(),
                TensorData::new(vec![0.2f32, 0.1, -0.3, 0.7], [2, 2]),
            ),
        ]);
        if dora {
            t.insert(
                "base_model.model.q.lora_magnitude_vector".to_string(),
                TensorData::new(vec![1.5f32, 0.5], [2]),
            );
        }
        (config, t)
    }

    #[test]
    fn lora_merge_then_undo_restores_the_weight() {
        let (config, tensors) = adapter(false);
        let ckpt = BTreeMap::from([("q.weight".to_string(), info(&[2, 3]))]);
        let plan = Lora.plan_merge(&config, tensors, &ckpt).unwrap();
        let w = vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 0.25];
        let merged = plan["q.weight"].apply(w.clone(), &[2, 3]).unwrap();
        assert_ne!(merged, w);
        let back = plan["q.weight"].undo(merged, &[2, 3]).unwrap();
        for (x, y) in back.iter().zip(&w) {
            assert!((x - y).abs() < 1e-6, "{back:?} vs {w:?}");
        }
    }

    #[test]
    fn dora_merge_gives_rows_of_norm_m() {
        let (config, tensors) = adapter(true);
        let ckpt = BTreeMap::from([("q.weight".to_string(), info(&[2, 3]))]);
        let plan = Lora.plan_merge(&config, tensors, &ckpt).unwrap();
        let merged = plan["q.weight"]
            .apply(vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25], &[2, 3])
            .unwrap();
        for (row, m) in merged.chunks(3).zip([1.5f32, 0.5]) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - m).abs() < 1e-5, "{norm} vs {m}");
        }
        assert!(plan["q.weight"].undo(merged, &[2, 3]).is_err());
    }

    #[test]
    fn describe_reads_folders_it_cannot_run() {
        let config = serde_json::json!({
            "peft_type": "LORA", "r": 2, "lora_alpha": 4, "alpha_pattern": {"q": 6},
            "init_lora_weights": "pissa", "use_dora": true, "target_modules": ["q"]
        });
        let tensors = BTreeMap::from([
            (
                "base_model.model.q.lora_A.weight".to_string(),
                info(&[2, 3]),
            ),
            (
                "base_model.model.q.lora_B.weight".to_string(),
                info(&[2, 2]),
            ),
        ]);
        let d = Lora.describe(&config, &tensors).unwrap();
        assert_eq!(d.variant.as_deref(), Some("DoRA"));
        assert_eq!((d.ranks, d.alphas, d.modules), (vec![2], vec![4.0, 6.0], 1));
    }

    #[test]
    fn merge_refuses_non_finite_and_missing_magnitudes() {
        let (config, mut tensors) = adapter(false);
        tensors.insert(
            "base_model.model.q.lora_B.weight".to_string(),
            TensorData::new(vec![0.2f32, f32::INFINITY, -0.3, 0.7], [2, 2]),
        );
        let ckpt = BTreeMap::from([("q.weight".to_string(), info(&[2, 3]))]);
        let e = Lora.plan_merge(&config, tensors, &ckpt).err().unwrap();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let (config, mut tensors) = adapter(true);
        tensors.remove("base_model.model.q.lora_magnitude_vector");
        let e = Lora.plan_merge(&config, tensors, &ckpt).err().unwrap();
        assert!(e.to_string().contains("lora_magnitude_vector"), "{e}");
    }
}
