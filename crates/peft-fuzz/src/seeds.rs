//! Seed inputs for every target, made from the committed fixtures (real PEFT and transformers
//! files), so that the fuzzer starts from inputs that get deep into each reader.
//!
//! `cargo xtask fuzz --seeds` writes them to `fuzz/seeds/<target>/`; the corpus test checks the
//! committed copies are what this module makes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::join;

/// One seed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The target it feeds.
    pub target: &'static str,
    /// File name (from the fixture it comes from).
    pub name: String,
    /// The input bytes.
    pub bytes: Vec<u8>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn files_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_named(&path, name, out)?;
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
    Ok(())
}

/// A fixture path as a seed name: `train/cases/miss/final` → `train-cases-miss-final`.
fn seed_name(path: &Path) -> String {
    path.strip_prefix(fixtures())
        .unwrap_or(path)
        .to_string_lossy()
        .replace(['/', '\\'], "-")
}

/// The adapter folders trained on the tiny Llama of `fixtures/train/model` (LoRA, rsLoRA
/// all-linear, MiSS, LoRA-FA, DoRA).
fn tiny_adapters() -> Result<Vec<PathBuf>, String> {
    let mut configs = Vec::new();
    files_named(
        &fixtures().join("train"),
        "adapter_config.json",
        &mut configs,
    )?;
    Ok(configs
        .iter()
        .filter_map(|c| c.parent().map(Path::to_path_buf))
        .filter(|d| !d.ends_with("init"))
        .collect())
}

/// The tensors of the tiny Llama that `adapter`'s config targets (a small checkpoint that
/// `peft merge` accepts).
fn merge_base(adapter: &Path) -> Result<Vec<u8>, String> {
    let model = fixtures().join("train/model/model.safetensors");
    let all = peft_core::io::read_safetensors(&model).map_err(|e| e.to_string())?;
    let config = read(&adapter.join("adapter_config.json"))?;
    let config: serde_json::Value = serde_json::from_slice(&config).map_err(|e| e.to_string())?;
    let wanted: Vec<String> = match config.get("target_modules") {
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        _ => vec!["proj".into()],
    };
    let subset: BTreeMap<_, _> = all
        .into_iter()
        .filter(|(k, _)| wanted.iter().any(|w| k.contains(w.as_str())))
        .collect();
    peft_core::io::serialize_safetensors(&subset).map_err(|e| e.to_string())
}

/// Every seed of every target.
pub fn seeds() -> Result<Vec<Seed>, String> {
    let mut out = Vec::new();
    let mut configs = Vec::new();
    files_named(&fixtures(), "adapter_config.json", &mut configs)?;
    let mut seen = std::collections::BTreeSet::new();
    for c in &configs {
        let bytes = read(c)?;
        if seen.insert(bytes.clone()) {
            out.push(Seed {
                target: "adapter_config",
                name: seed_name(c.parent().unwrap_or(c)),
                bytes,
            });
        }
    }
    for dir in tiny_adapters()? {
        let config = read(&dir.join("adapter_config.json"))?;
        let weights = read(&dir.join("adapter_model.safetensors"))?;
        out.push(Seed {
            target: "adapter_folder",
            name: seed_name(&dir),
            bytes: join(&[&config, &weights]),
        });
        out.push(Seed {
            target: "merge",
            name: seed_name(&dir),
            bytes: join(&[&config, &weights, &merge_base(&dir)?]),
        });
    }
    for model in ["llama_tied", "opt_pre"] {
        let dir = fixtures().join("models").join(model).join("checkpoint");
        out.push(Seed {
            target: "checkpoint",
            name: model.into(),
            bytes: join(&[
                &read(&dir.join("config.json"))?,
                &read(&dir.join("model.safetensors"))?,
            ]),
        });
    }
    let matching = read(&fixtures().join("lora/matching.json"))?;
    let matching: serde_json::Value =
        serde_json::from_slice(&matching).map_err(|e| e.to_string())?;
    let mut by_config: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for case in matching["targets"].as_array().into_iter().flatten() {
        let config = serde_json::to_string(&case["config"]).map_err(|e| e.to_string())?;
        let key = case["key"].as_str().unwrap_or_default().to_string();
        by_config.entry(config).or_default().push(key);
    }
    for (i, (config, keys)) in by_config.iter().enumerate() {
        out.push(Seed {
            target: "targets",
            name: format!("matching-{i:02}"),
            bytes: join(&[config.as_bytes(), keys.join("\n").as_bytes()]),
        });
    }
    let tokenizer_config = read(&fixtures().join("train/model/tokenizer_config.json"))?;
    for data in ["text", "completion", "chat", "valid"] {
        let path = fixtures().join(format!("train/data/{data}.jsonl"));
        let text = String::from_utf8(read(&path)?).map_err(|e| e.to_string())?;
        let head: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
        out.push(Seed {
            target: "data",
            name: data.into(),
            bytes: join(&[&tokenizer_config, head.as_bytes()]),
        });
    }
    Ok(out)
}
