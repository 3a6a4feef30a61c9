//! Reading and writing the fields every PEFT `adapter_config.json` shares, keeping unknown
//! fields so that they survive a round trip.

use serde_json::{Map, Value};

use crate::error::{PeftError, Result};
use crate::targets::{LayerIndices, OneOrMany, TargetModules, TargetSpec};

/// A parsed `adapter_config.json` object, field by field.
pub type ConfigMap = Map<String, Value>;

fn field<T: serde::de::DeserializeOwned>(map: &ConfigMap, name: &str) -> Result<Option<T>> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| PeftError::InvalidConfig(format!("field `{name}` = {v}: {e}"))),
    }
}

/// Reads an optional field, `null` counting as absent.
pub fn get<T: serde::de::DeserializeOwned>(map: &ConfigMap, name: &str) -> Result<Option<T>> {
    field(map, name)
}

/// Reads the target-matching fields.
pub fn read_target_spec(map: &ConfigMap) -> Result<TargetSpec> {
    let mut spec = TargetSpec {
        target_modules: field::<TargetModules>(map, "target_modules")?,
        exclude_modules: field::<TargetModules>(map, "exclude_modules")?,
        layers_to_transform: field::<LayerIndices>(map, "layers_to_transform")?,
        layers_pattern: field::<OneOrMany>(map, "layers_pattern")?,
        modules_to_save: field::<Vec<String>>(map, "modules_to_save")?,
    };
    if let Some(OneOrMany::Many(v)) = &spec.layers_pattern
        && v.is_empty()
    {
        spec.layers_pattern = None;
    }
    Ok(spec)
}

/// Writes the target-matching fields (absent ones as `null`).
pub fn write_target_spec(map: &mut ConfigMap, spec: &TargetSpec) {
    let put = |map: &mut ConfigMap, k: &str, v: Value| {
        map.insert(k.to_string(), v);
    };
    put(
        map,
        "target_modules",
        serde_json::to_value(&spec.target_modules).unwrap_or(Value::Null),
    );
    put(
        map,
        "exclude_modules",
        serde_json::to_value(&spec.exclude_modules).unwrap_or(Value::Null),
    );
    put(
        map,
        "layers_to_transform",
        serde_json::to_value(&spec.layers_to_transform).unwrap_or(Value::Null),
    );
    put(
        map,
        "layers_pattern",
        serde_json::to_value(&spec.layers_pattern).unwrap_or(Value::Null),
    );
    put(
        map,
        "modules_to_save",
        serde_json::to_value(&spec.modules_to_save).unwrap_or(Value::Null),
    );
}

/// Rejects a field whose value is not one of the accepted defaults (`accept` returns true for
/// values that do not change the math), naming it.
pub fn reject_unless(
    map: &ConfigMap,
    name: &str,
    accept: impl Fn(&Value) -> bool,
    reason: &str,
) -> Result<()> {
    match map.get(name) {
        Some(v) if !accept(v) => Err(PeftError::Unsupported {
            field: name.to_string(),
            value: v.to_string(),
            reason: reason.to_string(),
        }),
        _ => Ok(()),
    }
}

/// True for `null`, `false`, `{}`, `[]` and absent-like values.
pub fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Writes a number as an integer when it is one (as Python writes `8` for `lora_alpha=8`).
pub fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}
