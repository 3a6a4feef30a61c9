//! A Hugging Face checkpoint folder: `config.json` and `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, as `save_pretrained` writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use peft_core::PeftError;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Single-file weights.
pub const WEIGHTS_NAME: &str = "model.safetensors";
/// Index of sharded weights.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// A checkpoint folder whose `config.json` was read and whose weight files were found.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The folder.
    pub dir: PathBuf,
    /// `config.json`, parsed.
    pub config: Value,
    /// The weight files: one, or every shard named by the index (sorted, each once).
    pub weight_files: Vec<PathBuf>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|source| PeftError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The weight files of a checkpoint folder (single file or shards), or the file itself.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(PeftError::Io {
            action: "cannot open",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into());
    }
    let single = path.join(WEIGHTS_NAME);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = path.join(INDEX_NAME);
    if !index.is_file() {
        return Err(ModelError::NoWeights(path.to_path_buf()));
    }
    let value = read_json(&index)?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::Config {
            path: index.clone(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files = BTreeSet::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::Config {
            path: index.clone(),
            message: format!("`weight_map.{key}` is not a file name"),
        })?;
        files.insert(path.join(file));
    }
    Ok(files.into_iter().collect())
}

/// How many values a model's config may claim beyond what its weights hold before loading
/// refuses it unallocated (2^24 values: 64 MiB of f32).
pub const CLAIM_SLACK: u128 = 1 << 24;

/// `layers` blocks of `layer` values, the token embedding (`embeddings` values, counted again
/// for an untied head) and `rest`: a model's size in checked arithmetic (`None` on overflow).
pub(crate) fn model_size(
    layer: u128,
    layers: u128,
    embeddings: u128,
    tied: bool,
    rest: u128,
) -> Option<u128> {
    let head = if tied { 0 } else { embeddings };
    layer
        .checked_mul(layers)?
        .checked_add(embeddings)?
        .checked_add(head)?
        .checked_add(rest)
}

impl Checkpoint {
    /// Opens a checkpoint folder.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_json(&dir.join("config.json"))?;
        let weight_files = weight_files(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weight_files,
        })
    }

    /// `model_type` from `config.json`.
    pub fn model_type(&self) -> Result<&str> {
        self.config
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Config {
                path: self.dir.join("config.json"),
                message: "no `model_type` string".into(),
            })
    }

    /// Parses `config.json` into a typed config.
    pub fn parse_config<C: serde::de::DeserializeOwned>(&self) -> Result<C> {
        serde_json::from_value(self.config.clone()).map_err(|e| ModelError::Config {
            path: self.dir.join("config.json"),
            message: e.to_string(),
        })
    }

    /// Loads `state_dict` (this checkpoint's tensors, after any model-specific renaming) into
    /// `model` with transformers' names; with a tied head, a redundant `lm_head.weight` is dropped.
    /// Missing and unexpected tensors are an error that lists them.
    pub fn load_into<M: burn::module::Module>(
        &self,
        model: M,
        mut state_dict: BTreeMap<String, TensorData>,
        tied_head: bool,
    ) -> Result<M> {
        if tied_head {
            state_dict.remove("lm_head.weight");
        }
        Ok(peft_core::io::load_pytorch_state_dict(
            model,
            &state_dict,
            &peft_core::KeyMap::identity(),
        )?)
    }

    /// Refuses a `config.json` whose model holds far more values (`claimed`, a lower bound
    /// computed with checked arithmetic: `None` when it overflows) than the checkpoint's
    /// weights, before any parameter is allocated: what a config claims never allocates more
    /// than the weights' size plus [`CLAIM_SLACK`] values. A smaller mismatch (the weights of
    /// another model) is left to the load, whose error names every missing tensor.
    pub fn check_claimed_size(
        &self,
        claimed: Option<u128>,
        state_dict: &BTreeMap<String, TensorData>,
    ) -> Result<()> {
        let held: u128 = state_dict
            .values()
            .map(|t| t.shape().iter().map(|&d| d as u128).product::<u128>())
            .sum();
        match claimed {
            Some(n) if n <= held.saturating_add(CLAIM_SLACK) => Ok(()),
            claimed => Err(ModelError::Config {
                path: self.dir.join("config.json"),
                message: format!(
                    "the config describes a model of at least {} values, but the weights hold {held}",
                    claimed.map_or("2^128".to_string(), |n| n.to_string())
                ),
            }),
        }
    }

    /// Every tensor of every weight file, as f32 (floats of any width) or i64 data.
    pub fn state_dict(&self) -> Result<BTreeMap<String, TensorData>> {
        let mut out = BTreeMap::new();
        for file in &self.weight_files {
            out.extend(peft_core::io::read_safetensors(file)?);
        }
        Ok(out)
    }
}
