//! `BoneConfig`: PEFT's `BoneConfig` (0.18) and `MissConfig` (0.21.2) fields, read from and
//! written to `adapter_config.json`.

use std::path::Path;

use peft_core::config::{self as cfg, ConfigMap};
use peft_core::{TargetModules, TargetSpec};
use serde_json::Value;

use crate::error::{BoneError, Result};

/// The structure of the block (PEFT's `init_weights` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoneMode {
    /// Block `[r, out]`: `y += (Σ r-wide chunks of the zero-padded x)·block` (Bone and MiSS
    /// default, "balance").
    #[default]
    Default,
    /// Block `[out/r, r, r]`: per r×r tile `W' = W·(I + B) + B` (needs `in % r == 0` and
    /// `out % r == 0`).
    Bat,
    /// MiSS only: block `[r, mini_r]` repeated across the output (needs `out % mini_r == 0`).
    Mini {
        /// Width of the shared block.
        mini_r: usize,
    },
}

/// The file format written by `save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoneFormat {
    /// `peft_type: "MISS"`, tensors `…miss_block` (PEFT ≥ 0.17; the default).
    #[default]
    Miss,
    /// `peft_type: "BONE"`, tensors `…bone_block` (PEFT ≤ 0.18).
    Bone,
}

impl BoneFormat {
    /// `peft_type` as written.
    pub fn peft_type(self) -> &'static str {
        match self {
            Self::Miss => "MISS",
            Self::Bone => "BONE",
        }
    }

    /// The tensor-name suffix (`miss_block` / `bone_block`).
    pub fn block_key(self) -> &'static str {
        match self {
            Self::Miss => "miss_block",
            Self::Bone => "bone_block",
        }
    }
}

/// Configuration of Bone/MiSS adapters with PEFT's defaults (`r = 64`, default mode).
#[derive(Debug, Clone, PartialEq)]
pub struct BoneConfig {
    /// Block rank `r` (64).
    pub r: usize,
    /// Mode (`init_weights`: `true`, `"bat"`, `"mini"`).
    pub mode: BoneMode,
    /// `init_weights: false`: a random (kaiming-uniform) block instead of zeros, for tests.
    pub random_init: bool,
    /// Dropout on the padded input (`miss_dropout`, default mode only; MiSS only).
    pub dropout: f64,
    /// Targets, exclusions, layers.
    pub targets: TargetSpec,
    /// Format written by `save`.
    pub format: BoneFormat,
    /// `base_model_name_or_path`.
    pub base_model_name_or_path: Option<String>,
    /// `task_type`.
    pub task_type: Option<String>,
    /// Every other field as read, written back unchanged.
    pub extra: ConfigMap,
}

impl Default for BoneConfig {
    fn default() -> Self {
        Self {
            r: 64,
            mode: BoneMode::Default,
            random_init: false,
            dropout: 0.0,
            targets: TargetSpec::default(),
            format: BoneFormat::Miss,
            base_model_name_or_path: None,
            task_type: None,
            extra: ConfigMap::new(),
        }
    }
}

impl BoneConfig {
    /// A config with PEFT's defaults targeting `targets`.
    pub fn new(targets: TargetModules) -> Self {
        let mut c = Self::default();
        c.targets.target_modules = Some(targets);
        c
    }

    /// Sets `r`.
    pub fn with_r(mut self, r: usize) -> Self {
        self.r = r;
        self
    }

    /// Sets the mode.
    pub fn with_mode(mut self, mode: BoneMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the format written by `save`.
    pub fn with_format(mut self, format: BoneFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets `miss_dropout`.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// Starts from a random block instead of zeros (`init_weights: false`).
    pub fn with_random_init(mut self, on: bool) -> Self {
        self.random_init = on;
        self
    }

    /// Checks values: `r > 0`, `mini_r > 0`, dropout in `[0, 1)`, Bone files cannot hold MiSS-only
    /// settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(BoneError::InvalidConfig(m));
        if self.r == 0 {
            return bad("`r` must be a positive integer".into());
        }
        if let BoneMode::Mini { mini_r: 0 } = self.mode {
            return bad("`mini_r` must be a positive integer".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "`miss_dropout` must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.format == BoneFormat::Bone {
            if let BoneMode::Mini { .. } = self.mode {
                return bad("the \"mini\" mode exists only in MiSS; save as MiSS".into());
            }
            if self.dropout > 0.0 {
                return bad("Bone has no dropout; save as MiSS".into());
            }
        }
        Ok(())
    }

    /// Parses a Bone (`"BONE"`) or MiSS (`"MISS"`) `adapter_config.json` object.
    pub fn from_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| {
            BoneError::InvalidConfig("adapter_config.json is not a JSON object".into())
        })?;
        let peft_type: Option<String> = cfg::get(map, "peft_type")?;
        let format = match peft_type.as_deref() {
            Some("MISS") => BoneFormat::Miss,
            Some("BONE") => BoneFormat::Bone,
            other => return Err(BoneError::WrongPeftType(other.unwrap_or("").to_string())),
        };
        cfg::reject_unless(
            map,
            "bias",
            |v| v.is_null() || v == "none",
            "only bias=\"none\" is implemented",
        )?;
        cfg::reject_unless(
            map,
            "modules_to_save",
            cfg::is_unset,
            "modules_to_save is not implemented for Bone/MiSS",
        )?;
        let mini_r: Option<usize> = cfg::get(map, "mini_r")?;
        let (mode, random_init) = match map.get("init_weights") {
            None | Some(Value::Bool(true)) => (BoneMode::Default, false),
            Some(Value::Bool(false)) => (BoneMode::Default, true),
            Some(Value::String(s)) if s == "bat" => (BoneMode::Bat, false),
            Some(Value::String(s)) if s == "mini" && format == BoneFormat::Miss => (
                BoneMode::Mini {
                    mini_r: mini_r.unwrap_or(1),
                },
                false,
            ),
            Some(v) => {
                return Err(peft_core::PeftError::Unsupported {
                    field: "init_weights".into(),
                    value: v.to_string(),
                    reason: "expected true, false, \"bat\" or (MiSS) \"mini\"".into(),
                }
                .into());
            }
        };
        let config = Self {
            r: cfg::get(map, "r")?.unwrap_or(64),
            mode,
            random_init,
            dropout: cfg::get(map, "miss_dropout")?.unwrap_or(0.0),
            targets: cfg::read_target_spec(map)?,
            format,
            base_model_name_or_path: cfg::get(map, "base_model_name_or_path")?,
            task_type: cfg::get(map, "task_type")?,
            extra: map.clone(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_json(&peft_core::io::read_config_json(dir)?)
    }

    /// The config as PEFT writes it, in [`format`](Self::format).
    pub fn to_json(&self) -> Value {
        let mut map = ConfigMap::new();
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        for (k, v) in [
            ("bias", Value::from("none")),
            ("modules_to_save", Value::Null),
            ("revision", Value::Null),
            ("auto_mapping", Value::Null),
        ] {
            map.entry(k).or_insert(v);
        }
        map.insert("peft_type".into(), self.format.peft_type().into());
        map.insert("r".into(), self.r.into());
        let init: Value = match (self.mode, self.random_init) {
            (BoneMode::Bat, _) => "bat".into(),
            (BoneMode::Mini { .. }, _) => "mini".into(),
            (BoneMode::Default, random) => (!random).into(),
        };
        map.insert("init_weights".into(), init);
        match self.format {
            BoneFormat::Miss => {
                let mini_r = match self.mode {
                    BoneMode::Mini { mini_r } => mini_r,
                    _ => 1,
                };
                map.insert("mini_r".into(), mini_r.into());
                map.insert("miss_dropout".into(), Value::from(self.dropout));
            }
            BoneFormat::Bone => {
                map.remove("mini_r");
                map.remove("miss_dropout");
            }
        }
        cfg::write_target_spec(&mut map, &self.targets);
        map.insert(
            "base_model_name_or_path".into(),
            self.base_model_name_or_path.clone().into(),
        );
        map.insert("task_type".into(), self.task_type.clone().into());
        map.insert("inference_mode".into(), true.into());
        map.entry("peft_version").or_insert_with(|| "0.21.2".into());
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats_and_modes() {
        let j = serde_json::json!({"peft_type": "BONE", "r": 4, "init_weights": "bat", "target_modules": ["q"]});
        let c = BoneConfig::from_json(&j).unwrap();
        assert_eq!(
            (c.format, c.mode, c.r),
            (BoneFormat::Bone, BoneMode::Bat, 4)
        );
        let j = serde_json::json!({"peft_type": "MISS", "r": 4, "init_weights": "mini", "mini_r": 8, "target_modules": ["q"]});
        let c = BoneConfig::from_json(&j).unwrap();
        assert_eq!(c.mode, BoneMode::Mini { mini_r: 8 });
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        for j in [
            serde_json::json!({"peft_type": "BONE", "init_weights": "mini"}),
            serde_json::json!({"peft_type": "MISS", "bias": "all"}),
            serde_json::json!({"peft_type": "MISS", "modules_to_save": ["lm_head"]}),
            serde_json::json!({"peft_type": "LORA"}),
            serde_json::json!({"peft_type": "MISS", "r": 0}),
            serde_json::json!({"peft_type": "MISS", "miss_dropout": 1.0}),
        ] {
            assert!(BoneConfig::from_json(&j).is_err(), "{j}");
        }
    }
}
