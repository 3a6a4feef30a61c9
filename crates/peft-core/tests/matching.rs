//! Target matching against the table PEFT 0.21.2's `check_target_module_exists` and
//! `get_pattern_key` produced (fixtures/lora/matching.json, all_linear.json).

#![allow(clippy::unwrap_used)]

use peft_core::targets::{expand_all_linear, pattern_key};
use peft_core::{LayerIndices, OneOrMany, TargetMatcher, TargetModules, TargetSpec};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/lora/");
    serde_json::from_str(&std::fs::read_to_string(format!("{p}{name}")).unwrap()).unwrap()
}

fn spec(c: &Value) -> TargetSpec {
    let get = |k: &str| c.get(k).filter(|v| !v.is_null()).cloned();
    TargetSpec {
        target_modules: get("target_modules")
            .map(|v| serde_json::from_value::<TargetModules>(v).unwrap()),
        exclude_modules: get("exclude_modules").map(|v| serde_json::from_value(v).unwrap()),
        layers_to_transform: get("layers_to_transform")
            .map(|v| serde_json::from_value::<LayerIndices>(v).unwrap()),
        layers_pattern: get("layers_pattern")
            .map(|v| serde_json::from_value::<OneOrMany>(v).unwrap()),
        modules_to_save: get("modules_to_save").map(|v| serde_json::from_value(v).unwrap()),
    }
}

#[test]
fn target_matching_equals_peft() {
    let table = fixture("matching.json");
    let rows = table["targets"].as_array().unwrap();
    assert!(rows.len() > 300);
    let mut failures = Vec::new();
    for row in rows {
        let m = TargetMatcher::new(&spec(&row["config"])).unwrap();
        let key = row["key"].as_str().unwrap();
        if m.is_targeted(key) != row["matched"].as_bool().unwrap() {
            failures.push(format!(
                "{} on {key}: PEFT says {}",
                row["config"], row["matched"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn pattern_keys_equal_peft() {
    let table = fixture("matching.json");
    for row in table["patterns"].as_array().unwrap() {
        let patterns: Vec<String> = serde_json::from_value(row["patterns"].clone()).unwrap();
        let key = row["key"].as_str().unwrap();
        let got = pattern_key(patterns.iter().map(String::as_str), key).unwrap();
        assert_eq!(got, row["hit"].as_str(), "patterns {patterns:?} on {key}");
    }
}

#[test]
fn all_linear_equals_peft_on_a_transformers_llama() {
    let f = fixture("all_linear.json");
    let linear: Vec<&str> = f["linear_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut ours = expand_all_linear(linear, None);
    ours.sort();
    let theirs: Vec<String> = serde_json::from_value(f["targeted"].clone()).unwrap();
    assert_eq!(ours, theirs);
}
