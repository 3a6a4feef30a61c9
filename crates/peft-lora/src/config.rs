//! `LoraConfig`: PEFT's `LoraConfig` fields and defaults, read from and written to
//! `adapter_config.json`.

use std::path::Path;

use peft_core::config::{self as cfg, ConfigMap};
use peft_core::{TargetModules, TargetSpec};
use serde_json::Value;

use crate::error::{LoraError, Result};

/// How the adapter factors are initialised (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraInit {
    /// `true`: A kaiming-uniform (bound `1/sqrt(fan_in)`), B zeros; Embedding: A zeros, B standard normal.
    #[default]
    Default,
    /// `"gaussian"`: A ~ N(0, 1/r), B zeros (Embedding as `Default`).
    Gaussian,
    /// `false`: both factors random, so the adapter is not a no-op (for tests).
    Random,
}

/// Configuration of LoRA adapters, with PEFT 0.21.2's field names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank (`r`, default 8).
    pub r: usize,
    /// Scale numerator (`lora_alpha`, default 8).
    pub lora_alpha: f64,
    /// Dropout on the input of A (`lora_dropout`, default 0). Not applied to Embedding.
    pub lora_dropout: f64,
    /// Scale by `alpha/sqrt(r)` instead of `alpha/r` (`use_rslora`).
    pub use_rslora: bool,
    /// DoRA: a trainable magnitude per output rescales the updated weight (`use_dora`).
    pub use_dora: bool,
    /// Initialisation (`init_lora_weights`).
    pub init_lora_weights: LoraInit,
    /// `target_modules`, `exclude_modules`, `layers_to_transform`, `layers_pattern`, `modules_to_save`.
    pub targets: TargetSpec,
    /// Per-module rank overrides, in order (`rank_pattern`).
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alpha overrides, in order (`alpha_pattern`).
    pub alpha_pattern: Vec<(String, f64)>,
    /// `base_model_name_or_path`.
    pub base_model_name_or_path: Option<String>,
    /// `task_type` (e.g. `CAUSAL_LM`).
    pub task_type: Option<String>,
    /// Every other field as read, written back unchanged.
    pub extra: ConfigMap,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: LoraInit::Default,
            targets: TargetSpec::default(),
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            base_model_name_or_path: None,
            task_type: None,
            extra: ConfigMap::new(),
        }
    }
}

/// Fields that change the math and are not implemented, with the value that is accepted.
const REJECTED: &[(&str, &str)] = &[
    ("lora_bias", "a trainable bias on lora_B is not implemented"),
    (
        "fan_in_fan_out",
        "burn's Linear already stores [d_in, d_out]; GPT-2 Conv1D weights are not supported",
    ),
    ("layer_replication", "layer replication is not implemented"),
    (
        "target_parameters",
        "targeting raw parameters (MoE) is not implemented",
    ),
    (
        "trainable_token_indices",
        "trainable tokens are not implemented",
    ),
    ("megatron_config", "Megatron layers are not supported"),
    ("use_qalora", "QA-LoRA is not implemented"),
    ("alora_invocation_tokens", "aLoRA is not implemented"),
    ("velora_config", "VeLoRA is not implemented"),
    ("monteclora_config", "MonteCLoRA is not implemented"),
    ("use_bdlora", "BD-LoRA is not implemented"),
    ("arrow_config", "Arrow routing is not implemented"),
    ("kasa_config", "KaSA is not implemented"),
    ("ensure_weight_tying", "tied adapters are not implemented"),
];

impl LoraConfig {
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

    /// Sets `lora_alpha`.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.lora_alpha = alpha;
        self
    }

    /// Sets `lora_dropout`.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.lora_dropout = p;
        self
    }

    /// Sets `use_rslora`.
    pub fn with_rslora(mut self, on: bool) -> Self {
        self.use_rslora = on;
        self
    }

    /// Sets `use_dora` (DoRA).
    pub fn with_dora(mut self, on: bool) -> Self {
        self.use_dora = on;
        self
    }

    /// Sets `init_lora_weights`.
    pub fn with_init(mut self, init: LoraInit) -> Self {
        self.init_lora_weights = init;
        self
    }

    /// Adds a `rank_pattern` entry.
    pub fn with_rank_pattern(mut self, pattern: impl Into<String>, r: usize) -> Self {
        self.rank_pattern.push((pattern.into(), r));
        self
    }

    /// Adds an `alpha_pattern` entry.
    pub fn with_alpha_pattern(mut self, pattern: impl Into<String>, alpha: f64) -> Self {
        self.alpha_pattern.push((pattern.into(), alpha));
        self
    }

    /// Checks value ranges (`r > 0`, dropout in `[0, 1)`, finite alpha).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LoraError::InvalidConfig(m));
        if self.r == 0 {
            return bad("`r` must be a positive integer".into());
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| *r == 0) {
            return bad(format!("rank_pattern[{k:?}] must be a positive integer"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "`lora_dropout` must be in [0, 1), got {}",
                self.lora_dropout
            ));
        }
        if !self.lora_alpha.is_finite() || self.alpha_pattern.iter().any(|(_, a)| !a.is_finite()) {
            return bad("`lora_alpha` and alpha_pattern values must be finite".into());
        }
        Ok(())
    }

    /// The rank and alpha of module `name` (PyTorch name) after the patterns.
    pub fn rank_and_alpha(&self, name: &str) -> Result<(usize, f64)> {
        let r = peft_core::targets::pattern_key(
            self.rank_pattern.iter().map(|(k, _)| k.as_str()),
            name,
        )?
        .and_then(|k| {
            self.rank_pattern
                .iter()
                .find(|(p, _)| p == k)
                .map(|(_, r)| *r)
        })
        .unwrap_or(self.r);
        let a = peft_core::targets::pattern_key(
            self.alpha_pattern.iter().map(|(k, _)| k.as_str()),
            name,
        )?
        .and_then(|k| {
            self.alpha_pattern
                .iter()
                .find(|(p, _)| p == k)
                .map(|(_, a)| *a)
        })
        .unwrap_or(self.lora_alpha);
        Ok((r, a))
    }

    /// The scaling of a module with rank `r` and alpha `alpha`: `alpha/r`, or `alpha/sqrt(r)`
    /// with rsLoRA.
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Parses an `adapter_config.json` object. Fields that change the math and are not
    /// implemented are rejected by name.
    pub fn from_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| {
            LoraError::InvalidConfig("adapter_config.json is not a JSON object".into())
        })?;
        let peft_type: Option<String> = cfg::get(map, "peft_type")?;
        if let Some(t) = peft_type.as_deref().filter(|t| *t != "LORA") {
            return Err(LoraError::WrongPeftType(t.to_string()));
        }
        for (name, reason) in REJECTED {
            cfg::reject_unless(map, name, cfg::is_unset, reason)?;
        }
        cfg::reject_unless(
            map,
            "bias",
            |v| v.is_null() || v == "none",
            "only bias=\"none\" is implemented",
        )?;
        let init = match map.get("init_lora_weights") {
            None | Some(Value::Bool(true)) => LoraInit::Default,
            Some(Value::Bool(false)) => LoraInit::Random,
            Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
            Some(v) => {
                return Err(peft_core::PeftError::Unsupported {
                    field: "init_lora_weights".into(),
                    value: v.to_string(),
                    reason: "only true, false and \"gaussian\" are implemented".into(),
                }
                .into());
            }
        };
        if map
            .get("init_lora_weights")
            .and_then(Value::as_str)
            .is_none()
        {
            cfg::reject_unless(
                map,
                "loftq_config",
                cfg::is_unset,
                "LoftQ is not implemented",
            )?;
        }
        let rank_pattern: Option<ConfigMap> = cfg::get(map, "rank_pattern")?;
        let alpha_pattern: Option<ConfigMap> = cfg::get(map, "alpha_pattern")?;
        let num = |k: &str, v: &Value| {
            v.as_f64().ok_or_else(|| {
                LoraError::InvalidConfig(format!("pattern {k:?} has non-numeric value {v}"))
            })
        };
        let config = Self {
            r: cfg::get(map, "r")?.unwrap_or(8),
            lora_alpha: cfg::get(map, "lora_alpha")?.unwrap_or(8.0),
            lora_dropout: cfg::get(map, "lora_dropout")?.unwrap_or(0.0),
            use_rslora: cfg::get(map, "use_rslora")?.unwrap_or(false),
            use_dora: cfg::get(map, "use_dora")?.unwrap_or(false),
            init_lora_weights: init,
            targets: cfg::read_target_spec(map)?,
            rank_pattern: rank_pattern
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| {
                    v.as_u64().map(|r| (k.clone(), r as usize)).ok_or_else(|| {
                        LoraError::InvalidConfig(format!("rank_pattern {k:?} = {v} is not a rank"))
                    })
                })
                .collect::<Result<_>>()?,
            alpha_pattern: alpha_pattern
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| Ok((k.clone(), num(k, v)?)))
                .collect::<Result<_>>()?,
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

    /// The config as PEFT writes it: every field, `inference_mode: true`.
    pub fn to_json(&self) -> Value {
        let mut map = defaults();
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        let set = |map: &mut ConfigMap, k: &str, v: Value| {
            map.insert(k.to_string(), v);
        };
        set(&mut map, "peft_type", "LORA".into());
        set(&mut map, "r", self.r.into());
        set(&mut map, "lora_alpha", cfg::number(self.lora_alpha));
        set(&mut map, "lora_dropout", Value::from(self.lora_dropout));
        set(&mut map, "use_rslora", self.use_rslora.into());
        set(&mut map, "use_dora", self.use_dora.into());
        set(
            &mut map,
            "init_lora_weights",
            match self.init_lora_weights {
                LoraInit::Default => true.into(),
                LoraInit::Random => false.into(),
                LoraInit::Gaussian => "gaussian".into(),
            },
        );
        cfg::write_target_spec(&mut map, &self.targets);
        set(
            &mut map,
            "rank_pattern",
            Value::Object(
                self.rank_pattern
                    .iter()
                    .map(|(k, r)| (k.clone(), (*r).into()))
                    .collect(),
            ),
        );
        set(
            &mut map,
            "alpha_pattern",
            Value::Object(
                self.alpha_pattern
                    .iter()
                    .map(|(k, a)| (k.clone(), cfg::number(*a)))
                    .collect(),
            ),
        );
        set(
            &mut map,
            "base_model_name_or_path",
            self.base_model_name_or_path.clone().into(),
        );
        set(&mut map, "task_type", self.task_type.clone().into());
        set(&mut map, "inference_mode", true.into());
        map.entry("peft_version").or_insert_with(|| "0.21.2".into());
        Value::Object(map)
    }
}

/// PEFT 0.21.2's full default `LoraConfig` dictionary (as `save_pretrained` writes it).
fn defaults() -> ConfigMap {
    let v = serde_json::json!({
        "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null, "auto_mapping": null,
        "base_model_name_or_path": null, "bias": "none", "corda_config": null, "ensure_weight_tying": false,
        "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": true,
        "init_lora_weights": true, "kasa_config": null, "layer_replication": null, "layers_pattern": null,
        "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_bias": false, "lora_dropout": 0.0,
        "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null,
        "monteclora_config": null, "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 8,
        "rank_pattern": {}, "revision": null, "target_modules": null, "target_parameters": null,
        "task_type": null, "trainable_token_indices": null, "use_bdlora": null, "use_dora": false,
        "use_qalora": false, "use_rslora": false, "velora_config": null
    });
    match v {
        Value::Object(m) => m,
        _ => ConfigMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_peft() {
        let c = LoraConfig::default();
        assert_eq!(
            (c.r, c.lora_alpha, c.lora_dropout, c.use_rslora),
            (8, 8.0, 0.0, false)
        );
        assert_eq!(c.init_lora_weights, LoraInit::Default);
    }

    #[test]
    fn rejects_math_changing_fields_by_name() {
        for (field, value) in [
            ("lora_bias", serde_json::json!(true)),
            ("init_lora_weights", serde_json::json!("pissa")),
            ("init_lora_weights", serde_json::json!("olora")),
            ("bias", serde_json::json!("all")),
            ("fan_in_fan_out", serde_json::json!(true)),
        ] {
            let mut j = serde_json::json!({"peft_type": "LORA", "r": 4, "target_modules": ["q"]});
            j[field] = value;
            let err = LoraConfig::from_json(&j).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        for j in [
            serde_json::json!({"r": 0, "target_modules": ["q"]}),
            serde_json::json!({"r": 4, "lora_dropout": 1.5, "target_modules": ["q"]}),
            serde_json::json!({"r": "four"}),
            serde_json::json!([1, 2]),
            serde_json::json!({"peft_type": "MISS"}),
        ] {
            assert!(LoraConfig::from_json(&j).is_err(), "{j}");
        }
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let j = serde_json::json!({"peft_type": "LORA", "r": 4, "target_modules": ["q"], "future_field": {"x": 1}});
        let c = LoraConfig::from_json(&j).unwrap();
        assert_eq!(c.to_json()["future_field"], serde_json::json!({"x": 1}));
        assert_eq!(
            LoraConfig::from_json(&c.to_json()).unwrap(),
            LoraConfig::from_json(&c.to_json()).unwrap()
        );
    }
}
