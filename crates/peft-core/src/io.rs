//! Adapter-file I/O: safetensors read/write (atomic), `adapter_config.json` formatting, and
//! reading or replacing a model's parameters by path.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::paths::{PathMapper, PathVisitor, dotted, map_with_paths, visit_with_paths};

/// File name of the adapter weights.
pub const WEIGHTS_NAME: &str = "adapter_model.safetensors";
/// File name of the adapter config.
pub const CONFIG_NAME: &str = "adapter_config.json";

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PeftError + 'a {
    move |source| PeftError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The temporary file a write to `path` goes through: `.<name>.tmp-<pid>` in the same folder
/// (a rename within one file system is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp-{}", std::process::id()))
}

/// The folder `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// After a write to `path` succeeded: removes temporary files that earlier writes to it left
/// when they were killed (`.<name>.tmp-*`), and syncs the folder so the rename is durable.
/// Best effort: a failure here never fails the write.
pub fn finish_write(path: &Path) {
    let dir = parent_dir(path);
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.tmp-");
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, and a rename:
/// `path` holds the old file or the complete new one at every moment, whatever interrupts the
/// write. On an error the temporary file is removed; one left by a killed process is removed
/// by the next successful write to `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(io_err("cannot create folder", dir))?;
    let tmp = temp_path(path);
    let written = (|| -> std::io::Result<()> {
        crate::fault::point("write_atomic.create")?;
        let mut file = fs::File::create(&tmp)?;
        let half = bytes.len() / 2;
        file.write_all(&bytes[..half])?;
        crate::fault::point("write_atomic.write")?;
        file.write_all(&bytes[half..])?;
        crate::fault::point("write_atomic.sync")?;
        file.sync_all()?;
        crate::fault::point("write_atomic.rename")?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("cannot write", path)(e));
    }
    finish_write(path);
    Ok(())
}

/// Reads every tensor of a safetensors file as f32 (`F32`, `F16`, `BF16`, `F64`) or i64
/// (`I64`, `I32`) data.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, TensorData>> {
    let bytes = fs::read(path).map_err(io_err("cannot read", path))?;
    parse_safetensors(&bytes, path)
}

/// Parses safetensors bytes; `path` only names the source in errors.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, TensorData>> {
    let bad = |message: String| PeftError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => {
                TensorData::new(chunks::<4>(raw).map(f32::from_le_bytes).collect(), shape)
            }
            Dtype::F64 => TensorData::new(
                chunks::<8>(raw)
                    .map(|b| f64::from_le_bytes(b) as f32)
                    .collect(),
                shape,
            ),
            Dtype::F16 => TensorData::new(
                chunks::<2>(raw)
                    .map(|b| half::f16::from_le_bytes(b).to_f32())
                    .collect(),
                shape,
            ),
            Dtype::BF16 => TensorData::new(
                chunks::<2>(raw)
                    .map(|b| half::bf16::from_le_bytes(b).to_f32())
                    .collect(),
                shape,
            ),
            Dtype::I64 => {
                TensorData::new(chunks::<8>(raw).map(i64::from_le_bytes).collect(), shape)
            }
            Dtype::I32 => TensorData::new(
                chunks::<4>(raw)
                    .map(|b| i32::from_le_bytes(b) as i64)
                    .collect(),
                shape,
            ),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )));
            }
        };
        out.insert(name, data);
    }
    Ok(out)
}

fn chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// Serialises f32 tensors to safetensors bytes with metadata `{"format": "pt"}`.
pub fn serialize_safetensors(tensors: &BTreeMap<String, TensorData>) -> Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let values = data
            .clone()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| {
                PeftError::Mismatch(format!("tensor `{name}` cannot be read as f32: {e:?}"))
            })?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), data.shape().to_vec(), bytes));
    }
    let views = buffers
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| PeftError::Mismatch(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| PeftError::Mismatch(format!("cannot serialise adapter: {e}")))
}

/// Writes f32 tensors to a safetensors file atomically, with metadata `{"format": "pt"}`.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, TensorData>) -> Result<()> {
    write_atomic(path, &serialize_safetensors(tensors)?)
}

/// Formats JSON as Python's `json.dumps(value, indent=2, sort_keys=True)` does (PEFT's
/// `adapter_config.json`), without a trailing newline.
pub fn peft_json(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"  ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(&sorted(value), &mut ser)
        .expect("serialising a JSON value cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Reads and parses `adapter_config.json` from an adapter folder.
pub fn read_config_json(dir: &Path) -> Result<Value> {
    let path = dir.join(CONFIG_NAME);
    let text = fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    Ok(serde_json::from_str(&text)?)
}

/// Host copies of the model's float parameters whose path satisfies `wanted`, by path.
/// Parameters of a reparameterization have paths like `<weight path>.<name>.<field>`.
pub fn read_params<M: Module>(
    model: &M,
    wanted: impl Fn(&str) -> bool,
) -> BTreeMap<String, TensorData> {
    struct Collect<F> {
        wanted: F,
        out: BTreeMap<String, TensorData>,
    }
    impl<F: Fn(&str) -> bool> PathVisitor for Collect<F> {
        fn visit_float<const D: usize>(&mut self, path: &[String], param: &Param<Tensor<D>>) {
            let path = dotted(path);
            if (self.wanted)(&path) {
                self.out
                    .insert(path, param.base().into_data().convert::<f32>());
            }
        }
    }
    let mut c = Collect {
        wanted,
        out: BTreeMap::new(),
    };
    visit_with_paths(model, &mut c);
    c.out
}

/// Replaces the values of the parameters named in `values` (shapes must match), keeping their
/// ids, devices and trainability. Names that are not parameters of the model are an error.
pub fn replace_params<M: Module>(model: M, mut values: BTreeMap<String, TensorData>) -> Result<M> {
    struct Replace {
        values: BTreeMap<String, TensorData>,
        error: Option<PeftError>,
    }
    impl PathMapper for Replace {
        fn map_float<const D: usize>(
            &mut self,
            path: &[String],
            param: Param<Tensor<D>>,
        ) -> Param<Tensor<D>> {
            let path = dotted(path);
            let Some(data) = self.values.remove(&path) else {
                return param;
            };
            let expected = param.lazy_shape().as_slice().to_vec();
            if data.shape().as_slice() != expected.as_slice() {
                self.error.get_or_insert(PeftError::Shape {
                    name: path,
                    expected,
                    found: data.shape().to_vec(),
                });
                return param;
            }
            param.map(|old| {
                let grad = old.is_require_grad();
                let dtype = old.dtype();
                let new = Tensor::<D>::from_data(data.convert_dtype(dtype), &old.device());
                if grad { new.require_grad() } else { new }
            })
        }
    }
    let mut r = Replace {
        values: std::mem::take(&mut values),
        error: None,
    };
    let model = map_with_paths(model, &mut r);
    if let Some(e) = r.error {
        return Err(e);
    }
    if let Some(name) = r.values.keys().next() {
        return Err(PeftError::UnknownModule(name.clone()));
    }
    Ok(model)
}

/// A transformation of one rank-2 parameter.
pub type WeightUpdate = Box<dyn FnOnce(Tensor<2>) -> Tensor<2>>;

/// Applies `updates` (by parameter path) to rank-2 parameters on their device, keeping ids and
/// trainability. Paths that are not rank-2 parameters of the model are an error.
pub fn update_weights<M: Module>(model: M, updates: HashMap<String, WeightUpdate>) -> Result<M> {
    struct Update {
        updates: HashMap<String, WeightUpdate>,
    }
    impl PathMapper for Update {
        fn map_float<const D: usize>(
            &mut self,
            path: &[String],
            param: Param<Tensor<D>>,
        ) -> Param<Tensor<D>> {
            if D != 2 {
                return param;
            }
            let Some(f) = self.updates.remove(&dotted(path)) else {
                return param;
            };
            param.map(|old| {
                let grad = old.is_require_grad();
                let shape = old.shape();
                let dims = old.dims();
                let new: Tensor<D> = f(old.detach().reshape([dims[0], dims[1]])).reshape(shape);
                if grad { new.require_grad() } else { new }
            })
        }
    }
    let mut u = Update { updates };
    let model = map_with_paths(model, &mut u);
    match u.updates.keys().next() {
        Some(name) => Err(PeftError::UnknownModule(name.clone())),
        None => Ok(model),
    }
}

/// Fails with one message listing every missing, unexpected and mis-shaped tensor of an adapter
/// file, by name (the empty lists left out); `Ok` when all three are empty.
pub fn check_adapter_tensors(
    missing: &[String],
    unexpected: &[String],
    misshaped: &[String],
) -> Result<()> {
    let parts: Vec<String> = [
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("mis-shaped tensors", misshaped),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(what, v)| format!("{what} {v:?}"))
    .collect();
    if parts.is_empty() {
        Ok(())
    } else {
        Err(PeftError::Mismatch(parts.join("; ")))
    }
}

/// Transposes a rank-2 f32 tensor on the host (the `[out, in]` ↔ `[in, out]` file boundary).
pub fn transpose(data: &TensorData) -> Result<TensorData> {
    let [rows, cols] = match data.shape().as_slice() {
        [r, c] => [*r, *c],
        other => {
            return Err(PeftError::Mismatch(format!(
                "expected a rank-2 tensor, got shape {other:?}"
            )));
        }
    };
    let v = data
        .clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PeftError::Mismatch(format!("cannot read tensor as f32: {e:?}")))?;
    let mut out = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = v[i * cols + j];
        }
    }
    Ok(TensorData::new(out, [cols, rows]))
}

/// Loads a PyTorch state dict (e.g. a transformers `model.safetensors`) into `model`: each burn
/// parameter path is mapped with `key_map` (module part) and looked up; `Linear` weights are
/// transposed from `[out, in]` to burn's `[in, out]`. Every model parameter must be present
/// (adapter parameters excepted); tensors the model has no place for are reported too.
pub fn load_pytorch_state_dict<M: Module>(
    model: M,
    state_dict: &BTreeMap<String, TensorData>,
    key_map: &crate::KeyMap,
) -> Result<M> {
    let inventory = crate::Inventory::of(&model);
    let linear: Vec<String> = inventory
        .layers
        .iter()
        .filter(|l| l.kind == crate::LayerKind::Linear)
        .map(|l| l.weight_path())
        .collect();
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for p in inventory.params.iter().filter(|p| !p.in_adapter) {
        let (module, param) = p.path.rsplit_once('.').unwrap_or(("", p.path.as_str()));
        let key = if module.is_empty() {
            param.to_string()
        } else {
            format!("{}.{param}", key_map.to_peft(module))
        };
        match state_dict.get(&key) {
            None => missing.push(key),
            Some(d) => {
                used.insert(key);
                let d = if linear.contains(&p.path) {
                    transpose(d)?
                } else {
                    d.clone()
                };
                values.insert(p.path.clone(), d);
            }
        }
    }
    let unexpected: Vec<&String> = state_dict.keys().filter(|k| !used.contains(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(PeftError::Mismatch(format!(
            "state dict does not fit the model: missing {missing:?}, unexpected {unexpected:?}"
        )));
    }
    replace_params(model, values)
}
