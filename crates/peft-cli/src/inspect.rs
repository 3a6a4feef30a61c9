//! `peft inspect`: what an adapter folder holds, from its config and its file header alone.

use std::path::Path;

use peft_core::io::{WEIGHTS_NAME, read_config_json};
use serde_json::{Value, json};

use crate::error::{CliError, Result};
use crate::registry;
use crate::stream::LazyFile;

/// The facts `peft inspect` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// `peft_type` (`LORA`, `BONE`, `MISS`, …).
    pub method: String,
    /// The variant within the method: `DoRA` for LoRA with `use_dora`, the Bone/MiSS mode
    /// (`default`, `bat`, `mini`); `None` for plain LoRA.
    pub mode: Option<String>,
    /// Every rank the adapted modules use (from the tensor shapes).
    pub ranks: Vec<usize>,
    /// `lora_alpha` and every `alpha_pattern` value (LoRA and DoRA only).
    pub alphas: Vec<f64>,
    /// `target_modules` as configured.
    pub targets: Value,
    /// `modules_to_save` as configured.
    pub modules_to_save: Value,
    /// Number of adapted modules.
    pub modules: usize,
    /// Number of values in the adapter file (PEFT's trainable parameter count).
    pub parameters: usize,
    /// Size of `adapter_model.safetensors` in bytes.
    pub file_bytes: u64,
}

/// Reads an adapter folder's config and file header; the method (looked up in the registry)
/// supplies the variant, ranks, alphas and module count.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let config = read_config_json(dir)?;
    let method = registry::method(&config)?;
    let path = dir.join(WEIGHTS_NAME);
    let file = LazyFile::open(&path)?;
    let file_bytes = std::fs::metadata(&path)
        .map_err(|e| CliError::io("cannot read", &path, e))?
        .len();
    let description = method.describe(&config, &file.entries)?;
    Ok(Inspection {
        method: peft_core::method::peft_type(&config)?.to_string(),
        mode: description.variant,
        ranks: description.ranks,
        alphas: description.alphas,
        targets: config.get("target_modules").cloned().unwrap_or(Value::Null),
        modules_to_save: config
            .get("modules_to_save")
            .cloned()
            .unwrap_or(Value::Null),
        modules: description.modules,
        parameters: file.entries.values().map(|e| e.numel()).sum(),
        file_bytes,
    })
}

fn thousands(n: u64) -> String {
    peft_core::params::group(n as usize)
}

fn list(v: &[impl ToString]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn targets(v: &Value) -> String {
    match v {
        Value::Array(a) => {
            let mut names: Vec<String> = a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect();
            names.sort();
            names.join(", ")
        }
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

impl Inspection {
    /// Human-readable lines.
    pub fn text(&self) -> String {
        let alphas = if self.alphas.is_empty() {
            "-".to_string()
        } else {
            list(&self.alphas)
        };
        format!(
            "method:          {}{}\nrank(s):         {}\nalpha(s):        {}\ntargets:         {}\nmodules_to_save: {}\nadapted modules: {}\nparameters:      {}\nfile size:       {} bytes ({:.2} MiB)",
            self.method,
            self.mode
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            list(&self.ranks),
            alphas,
            targets(&self.targets),
            targets(&self.modules_to_save),
            self.modules,
            thousands(self.parameters as u64),
            thousands(self.file_bytes),
            self.file_bytes as f64 / (1024.0 * 1024.0)
        )
    }

    /// One JSON object.
    pub fn json(&self) -> Value {
        json!({
            "method": self.method,
            "mode": self.mode,
            "ranks": self.ranks,
            "alphas": self.alphas,
            "target_modules": self.targets,
            "modules_to_save": self.modules_to_save,
            "modules": self.modules,
            "parameters": self.parameters,
            "file_bytes": self.file_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(589824), "589,824");
        assert_eq!(thousands(12), "12");
        assert_eq!(thousands(1000), "1,000");
    }
}
