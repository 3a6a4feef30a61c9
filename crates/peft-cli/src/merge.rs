//! `peft merge`: folds an adapter into a transformers checkpoint at the state-dict level, for
//! any architecture, one tensor at a time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use peft_bone::io::file_shape;
use peft_bone::{BoneConfig, BoneMode};
use peft_core::PEFT_PREFIX;
use peft_core::io::{WEIGHTS_NAME, read_config_json, read_safetensors};
use peft_lora::LoraConfig;
use serde_json::Value;

use crate::error::{CliError, Result};
use crate::stream::{LazyFile, StreamWriter, decode_f32, encode_f32, is_float, pt_metadata};

/// The dtype of floats in the merged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    /// Each tensor keeps its dtype.
    Keep,
    /// Every float tensor becomes this dtype (`F32`, `F16` or `BF16`).
    To(&'static str),
}

impl OutDtype {
    /// Parses `keep|f32|f16|bf16`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "keep" => Self::Keep,
            "f32" => Self::To("F32"),
            "f16" => Self::To("F16"),
            "bf16" => Self::To("BF16"),
            other => {
                return Err(CliError::Usage(format!(
                    "--dtype must be keep, f32, f16 or bf16, not `{other}`"
                )));
            }
        })
    }

    fn of(self, dtype: &str) -> String {
        match self {
            Self::To(d) if is_float(dtype) => d.to_string(),
            _ => dtype.to_string(),
        }
    }
}

/// How one checkpoint tensor changes.
#[derive(Debug)]
enum Change {
    /// Add `scaling · B·A` (`[out, in]`), transposed for `Conv1D` (`fan_in_fan_out`).
    Lora {
        a: TensorData,
        b: TensorData,
        scaling: f64,
        transpose: bool,
    },
    /// Bone/MiSS: default/mini `W[o, i] += B[i mod r, o (mod mini_r)]`; bat per r×r tile
    /// `W ← W·(I + B[a]) + B[a]` (PyTorch layout).
    Bone {
        block: Vec<f32>,
        mode: BoneMode,
        r: usize,
    },
    /// Replace with the adapter's tensor (`modules_to_save`, saved embeddings), then apply the
    /// LoRA change if any.
    Replace(TensorData, Option<Box<Change>>),
}

/// What a LoRA adapter folder does to a state dict, keyed by module name (no prefix).
struct LoraFile {
    config: LoraConfig,
    fan_in_fan_out: bool,
    /// Module → (A, B, is_embedding).
    factors: BTreeMap<String, (Option<TensorData>, Option<TensorData>, bool)>,
    /// Full tensors, by parameter name (no prefix).
    replacements: BTreeMap<String, TensorData>,
}

fn read_lora(dir: &Path, config_json: Value) -> Result<LoraFile> {
    let mut config_json = config_json;
    let fan_in_fan_out = match config_json.as_object_mut() {
        Some(map) => map
            .remove("fan_in_fan_out")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        None => false,
    };
    let config = LoraConfig::from_json(&config_json)?;
    let tensors = read_safetensors(&dir.join(WEIGHTS_NAME))?;
    let mut factors: BTreeMap<String, (Option<TensorData>, Option<TensorData>, bool)> =
        BTreeMap::new();
    let mut replacements = BTreeMap::new();
    for (key, data) in tensors {
        let key = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key).to_string();
        let slot = [
            (".lora_A.weight", 0, false),
            (".lora_B.weight", 1, false),
            (".lora_embedding_A", 0, true),
            (".lora_embedding_B", 1, true),
        ]
        .into_iter()
        .find_map(|(suffix, which, emb)| {
            key.strip_suffix(suffix)
                .map(|m| (m.to_string(), which, emb))
        });
        match slot {
            Some((module, which, emb)) => {
                let e = factors.entry(module).or_insert((None, None, emb));
                if which == 0 {
                    e.0 = Some(data);
                } else {
                    e.1 = Some(data);
                }
            }
            None => {
                let key = match key.strip_suffix(".base_layer.weight") {
                    Some(m) => format!("{m}.weight"),
                    None => key,
                };
                replacements.insert(key, data);
            }
        }
    }
    Ok(LoraFile {
        config,
        fan_in_fan_out,
        factors,
        replacements,
    })
}

/// Plans the changes of a Bone/MiSS folder: one block per targeted Linear weight.
fn plan_bone(
    dir: &Path,
    config_json: &Value,
    keys: &BTreeMap<String, (usize, crate::stream::Entry)>,
) -> Result<HashMap<String, Change>> {
    let config = BoneConfig::from_json(config_json)?;
    let suffix = format!(".{}", config.format.block_key());
    let mut changes = HashMap::new();
    for (key, data) in read_safetensors(&dir.join(WEIGHTS_NAME))? {
        let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
        let Some(module) = name.strip_suffix(&suffix) else {
            return Err(CliError::Mismatch(format!(
                "unexpected tensor `{key}` in a {} adapter",
                config.format.peft_type()
            )));
        };
        let weight = resolve(&format!("{module}.weight"), keys)?.to_string();
        let shape = keys[&weight].1.shape.clone();
        let [out, inp] = match shape.as_slice() {
            [o, i] => [*o, *i],
            _ => {
                return Err(CliError::Mismatch(format!(
                    "module `{module}`: checkpoint `{weight}` has shape {shape:?}, not a Linear weight"
                )));
            }
        };
        peft_bone::inject::check_layer(&config, module, inp, out)?;
        let expected = file_shape(config.mode, config.r, out);
        if data.shape().as_slice() != expected.as_slice() {
            return Err(CliError::Mismatch(format!(
                "module `{module}`: block {:?}, a [{out}, {inp}] weight needs {expected:?}",
                data.shape().as_slice()
            )));
        }
        let block = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| CliError::Mismatch(format!("{key}: {e:?}")))?;
        changes.insert(
            weight,
            Change::Bone {
                block,
                mode: config.mode,
                r: config.r,
            },
        );
    }
    Ok(changes)
}

/// Applies a Bone/MiSS block to a PyTorch-layout weight `[out, in]`.
fn apply_bone(
    mut w: Vec<f32>,
    out: usize,
    inp: usize,
    block: &[f32],
    mode: BoneMode,
    r: usize,
) -> Vec<f32> {
    match mode {
        BoneMode::Bat => {
            for a in 0..out / r {
                let b = &block[a * r * r..(a + 1) * r * r];
                for c in 0..inp / r {
                    // T' = T + T·B + B for the tile at rows a·r.., columns c·r...
                    let tile: Vec<f32> = (0..r * r)
                        .map(|k| w[(a * r + k / r) * inp + c * r + k % r])
                        .collect();
                    for i in 0..r {
                        for j in 0..r {
                            let tb: f32 = (0..r).map(|k| tile[i * r + k] * b[k * r + j]).sum();
                            w[(a * r + i) * inp + c * r + j] += tb + b[i * r + j];
                        }
                    }
                }
            }
        }
        BoneMode::Default | BoneMode::Mini { .. } => {
            let m = match mode {
                BoneMode::Mini { mini_r } => mini_r,
                _ => out,
            };
            for o in 0..out {
                for i in 0..inp {
                    w[o * inp + i] += block[(i % r) * m + o % m];
                }
            }
        }
    }
    w
}

/// Finds the checkpoint key of `name` (`<module>.<param>` as the adapter names it): the exact
/// key, or the one key that differs only by a leading prefix on either side (a checkpoint saved
/// from the bare model lacks e.g. `transformer.`; one saved from a wrapper has more).
fn resolve<'a>(
    name: &str,
    keys: &'a BTreeMap<String, (usize, crate::stream::Entry)>,
) -> Result<&'a str> {
    if let Some((k, _)) = keys.get_key_value(name) {
        return Ok(k);
    }
    let hits: Vec<&str> = keys
        .keys()
        .filter(|k| name.ends_with(&format!(".{k}")) || k.ends_with(&format!(".{name}")))
        .map(String::as_str)
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(CliError::Mismatch(format!(
            "the adapter changes `{name}`, which the checkpoint does not have"
        ))),
        many => Err(CliError::Mismatch(format!(
            "the adapter's `{name}` matches several checkpoint tensors: {many:?}"
        ))),
    }
}

fn dims2(d: &TensorData) -> [usize; 2] {
    match d.shape().as_slice() {
        [a, b] => [*a, *b],
        _ => [0, 0],
    }
}

/// Plans every change and checks it against the checkpoint's shapes before anything is written.
fn plan(
    lora: LoraFile,
    keys: &BTreeMap<String, (usize, crate::stream::Entry)>,
) -> Result<HashMap<String, Change>> {
    let mut changes: HashMap<String, Change> = HashMap::new();
    for (module, (a, b, emb)) in lora.factors {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(CliError::Mismatch(format!(
                "module `{module}` has only one of its two LoRA factors"
            )));
        };
        let key = resolve(&format!("{module}.weight"), keys)?.to_string();
        let shape = keys[&key].1.shape.clone();
        let ([r_a, cols], [rows, r_b]) = (dims2(&a), dims2(&b));
        let (r, alpha) = lora.config.rank_and_alpha(&module)?;
        if r_a != r || r_b != r {
            return Err(CliError::Mismatch(format!(
                "module `{module}`: factors of rank {r_a}/{r_b} ({:?}, {:?}), config says r = {r}",
                a.shape().as_slice(),
                b.shape().as_slice()
            )));
        }
        // Linear: [out, in] = [rows, cols]; Conv1D and Embedding store the transpose.
        let transpose = emb || lora.fan_in_fan_out;
        let expected = if transpose {
            vec![cols, rows]
        } else {
            vec![rows, cols]
        };
        if shape != expected {
            return Err(CliError::Mismatch(format!(
                "module `{module}`: checkpoint `{key}` has shape {shape:?}, the adapter's factors {:?} and {:?} need {expected:?}",
                a.shape().as_slice(),
                b.shape().as_slice()
            )));
        }
        let change = Change::Lora {
            a,
            b,
            scaling: lora.config.scaling(r, alpha),
            transpose,
        };
        changes.insert(key, change);
    }
    for (name, data) in lora.replacements {
        let key = resolve(&name, keys)?.to_string();
        let shape = &keys[&key].1.shape;
        if data.shape().as_slice() != shape.as_slice() {
            return Err(CliError::Mismatch(format!(
                "`{name}`: the adapter's tensor has shape {:?}, checkpoint `{key}` has {shape:?}",
                data.shape().as_slice()
            )));
        }
        let then = changes.remove(&key).map(Box::new);
        changes.insert(key, Change::Replace(data, then));
    }
    Ok(changes)
}

fn apply(change: Change, w: Vec<f32>, shape: &[usize], device: &Device) -> Result<Vec<f32>> {
    match change {
        Change::Bone { block, mode, r } => Ok(apply_bone(w, shape[0], shape[1], &block, mode, r)),
        Change::Replace(data, then) => {
            let w = data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| CliError::Mismatch(format!("{e:?}")))?;
            match then {
                Some(c) => apply(*c, w, shape, device),
                None => Ok(w),
            }
        }
        Change::Lora {
            a,
            b,
            scaling,
            transpose,
        } => {
            let a = Tensor::<2>::from_data(a, device);
            let b = Tensor::<2>::from_data(b, device);
            let mut delta = b.matmul(a).mul_scalar(scaling);
            if transpose {
                delta = delta.transpose();
            }
            let w = Tensor::<2>::from_data(TensorData::new(w, [shape[0], shape[1]]), device);
            (w + delta)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| CliError::Mismatch(format!("{e:?}")))
        }
    }
}

/// Merges the adapter in `adapter` into the checkpoint at `base` (a `.safetensors` file or a
/// folder with one or sharded weights) and writes one safetensors file at `out`, atomically.
/// Returns the number of tensors changed.
pub fn merge(base: &Path, adapter: &Path, out: &Path, dtype: OutDtype) -> Result<usize> {
    let config = read_config_json(adapter)?;
    let peft_type = config
        .get("peft_type")
        .and_then(Value::as_str)
        .unwrap_or("LORA")
        .to_string();
    let files = peft_models::checkpoint::weight_files(base)?;
    let mut lazy: Vec<LazyFile> = files
        .iter()
        .map(|f| LazyFile::open(f))
        .collect::<Result<_>>()?;
    let mut keys = BTreeMap::new();
    for (i, f) in lazy.iter().enumerate() {
        for (name, entry) in &f.entries {
            if keys.insert(name.clone(), (i, entry.clone())).is_some() {
                return Err(CliError::Mismatch(format!(
                    "tensor `{name}` appears in more than one checkpoint file"
                )));
            }
        }
    }
    let mut changes = match peft_type.as_str() {
        "LORA" => plan(read_lora(adapter, config)?, &keys)?,
        "BONE" | "MISS" => plan_bone(adapter, &config, &keys)?,
        other => {
            return Err(CliError::Unsupported(format!(
                "peft_type {other:?} cannot be merged (supported: LORA, BONE, MISS)"
            )));
        }
    };
    let changed = changes.len();
    let declared: Vec<(String, String, Vec<usize>)> = keys
        .iter()
        .map(|(name, (_, e))| (name.clone(), dtype.of(&e.dtype), e.shape.clone()))
        .collect();
    let metadata = lazy[0].metadata.clone().unwrap_or_else(pt_metadata);
    let mut writer = StreamWriter::create(out, &declared, Some(&metadata))?;
    let device = Device::default();
    for (name, out_dtype, _) in &declared {
        let (file, entry) = &keys[name];
        let raw = lazy[*file].read_raw(name)?;
        let bytes = match changes.remove(name) {
            Some(change) => {
                let w = decode_f32(&raw, &entry.dtype).ok_or_else(|| {
                    CliError::Mismatch(format!("`{name}` has non-float dtype {}", entry.dtype))
                })?;
                let merged = apply(change, w, &entry.shape, &device)?;
                encode_f32(&merged, out_dtype).ok_or_else(|| {
                    CliError::Unsupported(format!("cannot write dtype {out_dtype}"))
                })?
            }
            None if *out_dtype == entry.dtype => raw,
            None => decode_f32(&raw, &entry.dtype)
                .and_then(|v| encode_f32(&v, out_dtype))
                .ok_or_else(|| {
                    CliError::Unsupported(format!(
                        "cannot convert `{name}` from {} to {out_dtype}",
                        entry.dtype
                    ))
                })?,
        };
        writer.write(name, &bytes)?;
    }
    writer.finish()?;
    Ok(changed)
}
