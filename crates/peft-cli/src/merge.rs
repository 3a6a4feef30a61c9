//! `peft merge`: folds an adapter of any registered method into a transformers checkpoint at the
//! state-dict level, for any architecture, one tensor at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use peft_core::io::{WEIGHTS_NAME, read_config_json, read_safetensors};
use peft_core::method::TensorInfo;

use crate::cli::OutDtypeArg;
use crate::error::{CliError, Result};
use crate::registry;
use crate::stream::{LazyFile, StreamWriter, decode_f32, encode_f32, is_float, pt_metadata};

/// The dtype of floats in the merged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    /// Each tensor keeps its dtype.
    Keep,
    /// Every float tensor becomes this dtype (`F32`, `F16` or `BF16`).
    To(&'static str),
}

impl From<OutDtypeArg> for OutDtype {
    fn from(a: OutDtypeArg) -> Self {
        match a {
            OutDtypeArg::Keep => Self::Keep,
            OutDtypeArg::F32 => Self::To("F32"),
            OutDtypeArg::F16 => Self::To("F16"),
            OutDtypeArg::Bf16 => Self::To("BF16"),
        }
    }
}

impl OutDtype {
    fn of(self, dtype: &str) -> String {
        match self {
            Self::To(d) if is_float(dtype) => d.to_string(),
            _ => dtype.to_string(),
        }
    }
}

/// How `merge` writes its output.
#[derive(Debug, Clone, Copy)]
pub struct MergeOptions {
    /// The dtype of floats in the output.
    pub dtype: OutDtype,
    /// Allow replacing a single-file base checkpoint in place.
    pub force: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            dtype: OutDtype::Keep,
            force: false,
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Refuses an `out` that is a folder, the adapter's file, or a base file (unless `force` and the
/// base is that one file: it is mapped, and the new file is renamed over it only at the end).
fn check_out(out: &Path, base_files: &[PathBuf], adapter: &Path, force: bool) -> Result<()> {
    if out.is_dir() {
        return Err(CliError::Usage(format!(
            "--out `{}` is a folder; name the merged .safetensors file to write",
            out.display()
        )));
    }
    if same_file(out, &adapter.join(WEIGHTS_NAME)) {
        return Err(CliError::Usage(format!(
            "--out `{}` is the adapter's own file",
            out.display()
        )));
    }
    if let Some(f) = base_files.iter().find(|f| same_file(out, f)) {
        if base_files.len() > 1 {
            return Err(CliError::Usage(format!(
                "--out `{}` is one shard of the sharded base checkpoint; replacing it would leave the other shards and the index inconsistent",
                f.display()
            )));
        }
        if !force {
            return Err(CliError::Usage(format!(
                "--out `{}` is the base checkpoint itself; pass --force to replace it with the merged weights",
                f.display()
            )));
        }
    }
    Ok(())
}

/// Merges the adapter in `adapter` into the checkpoint at `base` (a `.safetensors` file or a
/// folder with one or sharded weights) and writes one safetensors file at `out`, atomically.
/// Returns the number of tensors changed.
pub fn merge(base: &Path, adapter: &Path, out: &Path, options: &MergeOptions) -> Result<usize> {
    let config = read_config_json(adapter)?;
    let method = registry::method(&config)?;
    let files = peft_models::checkpoint::weight_files(base)?;
    check_out(out, &files, adapter, options.force)?;
    let lazy: Vec<LazyFile> = files
        .iter()
        .map(|f| LazyFile::open(f))
        .collect::<Result<_>>()?;
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut header: BTreeMap<String, TensorInfo> = BTreeMap::new();
    for (i, f) in lazy.iter().enumerate() {
        for (name, entry) in &f.entries {
            if owner.insert(name.clone(), i).is_some() {
                return Err(CliError::Mismatch(format!(
                    "tensor `{name}` appears in more than one checkpoint file"
                )));
            }
            header.insert(name.clone(), entry.clone());
        }
    }
    let tensors = read_safetensors(&adapter.join(WEIGHTS_NAME))?;
    let mut changes = method.plan_merge(&config, tensors, &header)?;
    let changed = changes.len();
    let declared: Vec<(String, String, Vec<usize>)> = header
        .iter()
        .map(|(name, e)| (name.clone(), options.dtype.of(&e.dtype), e.shape.clone()))
        .collect();
    let metadata = lazy[0].metadata.clone().unwrap_or_else(pt_metadata);
    let mut writer = StreamWriter::create(out, &declared, Some(&metadata))?;
    for (name, out_dtype, _) in &declared {
        let file = &lazy[owner[name]];
        let entry = &header[name];
        let raw = file.raw(name)?;
        let bytes = match changes.remove(name) {
            Some(change) => {
                let w = decode_f32(raw, &entry.dtype).ok_or_else(|| {
                    CliError::Mismatch(format!("`{name}` has non-float dtype {}", entry.dtype))
                })?;
                let merged = change.apply(w, &entry.shape)?;
                encode_f32(&merged, out_dtype).ok_or_else(|| {
                    CliError::Unsupported(format!("cannot write dtype {out_dtype}"))
                })?
            }
            None if *out_dtype == entry.dtype => raw.to_vec(),
            None => decode_f32(raw, &entry.dtype)
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
