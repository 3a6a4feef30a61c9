//! Every bad input gets a clear error, never a panic or a silent success.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use burn::module::Module;
use common::*;
use peft_core::{KeyMap, PeftError, TargetModules};
use peft_lora::{InjectOptions, LoraConfig, LoraError, LoraModel};

fn copy_adapter(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny").join(case).join("adapter");
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load(dir: &std::path::Path) -> Result<LoraModel<TinyModel>, LoraError> {
    LoraModel::load(
        TinyModel::pretrained(&device()),
        dir,
        &InjectOptions::default(),
    )
}

#[test]
fn no_matching_module_lists_what_exists() {
    let config = LoraConfig::new(TargetModules::names(["query"]));
    let err = LoraModel::inject(
        TinyModel::new(&device()),
        &config,
        &InjectOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LoraError::Core(PeftError::NoMatchingModule { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("layers.0.q_proj") && msg.contains("query"),
        "{msg}"
    );
}

#[test]
fn str_target_is_a_full_match() {
    let config = LoraConfig::new(TargetModules::regex("q_proj"));
    assert!(
        LoraModel::inject(
            TinyModel::new(&device()),
            &config,
            &InjectOptions::default()
        )
        .is_err()
    );
}

#[test]
fn matching_a_container_is_unsupported() {
    let config = LoraConfig::new(TargetModules::names(["layers.0"]));
    let err = LoraModel::inject(
        TinyModel::new(&device()),
        &config,
        &InjectOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("layers.0"), "{err}");
}

#[test]
fn injecting_twice_is_an_error() {
    let config = LoraConfig::new(TargetModules::names(["q_proj"]));
    let lora = LoraModel::inject(
        TinyModel::new(&device()),
        &config,
        &InjectOptions::default(),
    )
    .unwrap();
    let err = LoraModel::inject(lora.model, &config, &InjectOptions::default()).unwrap_err();
    assert!(
        matches!(err, LoraError::Core(PeftError::AlreadyAdapted(_))),
        "{err}"
    );
}

#[derive(Module, Debug)]
struct BurnMlp {
    up: burn::nn::Linear,
}

#[test]
fn dropout_on_weight_space_layers_needs_consent() {
    let device = device();
    let model = BurnMlp {
        up: burn::nn::LinearConfig::new(4, 4).init(&device),
    };
    let config = LoraConfig::new(TargetModules::names(["up"])).with_dropout(0.1);
    let err = LoraModel::inject(model.clone(), &config, &InjectOptions::default()).unwrap_err();
    assert!(
        matches!(err, LoraError::DropoutInWeightSpace { .. }),
        "{err}"
    );
    assert!(
        LoraModel::inject(
            model,
            &config,
            &InjectOptions::default().allow_training_without_dropout(true)
        )
        .is_ok()
    );
}

#[test]
fn invalid_values_are_rejected() {
    let model = TinyModel::new(&device());
    for config in [
        LoraConfig::new(TargetModules::names(["q_proj"])).with_r(0),
        LoraConfig::new(TargetModules::names(["q_proj"])).with_dropout(1.0),
        LoraConfig::new(TargetModules::regex("(")),
        LoraConfig::default(),
    ] {
        assert!(
            LoraModel::inject(model.clone(), &config, &InjectOptions::default()).is_err(),
            "{config:?}"
        );
    }
}

#[test]
fn missing_folder_and_files() {
    let err = load(std::path::Path::new("/nonexistent/adapter")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/adapter"), "{err}");
    let dir = copy_adapter("qv");
    fs::remove_file(dir.path().join("adapter_model.safetensors")).unwrap();
    assert!(
        load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("adapter_model.safetensors")
    );
}

#[test]
fn malformed_json_and_safetensors() {
    let dir = copy_adapter("qv");
    fs::write(dir.path().join("adapter_config.json"), "{ not json").unwrap();
    assert!(matches!(
        load(dir.path()).unwrap_err(),
        LoraError::Core(PeftError::Json(_))
    ));
    let dir = copy_adapter("qv");
    fs::write(
        dir.path().join("adapter_model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage",
    )
    .unwrap();
    assert!(matches!(
        load(dir.path()).unwrap_err(),
        LoraError::Core(PeftError::Safetensors { .. })
    ));
}

#[test]
fn unsupported_options_in_a_file_are_named() {
    for (field, value) in [
        ("use_qalora", "true"),
        ("init_lora_weights", "\"pissa\""),
        ("lora_bias", "true"),
    ] {
        let dir = copy_adapter("qv");
        let path = dir.path().join("adapter_config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        cfg[field] = serde_json::from_str(value).unwrap();
        fs::write(&path, cfg.to_string()).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}

fn rewrite_tensors(
    dir: &std::path::Path,
    f: impl FnOnce(&mut std::collections::BTreeMap<String, burn::tensor::TensorData>),
) {
    let path = dir.join("adapter_model.safetensors");
    let mut t = peft_core::io::read_safetensors(&path).unwrap();
    f(&mut t);
    peft_core::io::write_safetensors(&path, &t).unwrap();
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_named() {
    let dir = copy_adapter("qv");
    rewrite_tensors(dir.path(), |t| {
        t.remove("base_model.model.layers.0.q_proj.lora_A.weight");
        let b = t
            .remove("base_model.model.layers.1.v_proj.lora_B.weight")
            .unwrap();
        t.insert("base_model.model.layers.9.v_proj.lora_B.weight".into(), b);
        t.insert(
            "base_model.model.layers.2.q_proj.lora_B.weight".into(),
            burn::tensor::TensorData::new(vec![0f32; 12], [3, 4]),
        );
    });
    let err = load(dir.path()).unwrap_err().to_string();
    for name in [
        "layers.0.q_proj.lora_A.weight",
        "layers.9.v_proj.lora_B",
        "layers.2.q_proj.lora_B.weight",
        "layers.1.v_proj.lora_B.weight",
    ] {
        assert!(err.contains(name), "{name} not in: {err}");
    }
}

#[test]
fn a_key_map_renames_modules() {
    #[derive(Module, Debug)]
    struct Renamed {
        blocks: Vec<Block>,
    }
    let device = device();
    let model = Renamed {
        blocks: (0..3).map(|_| Block::new(16, 8, &device)).collect(),
    };
    let map = KeyMap::identity()
        .rule(r"^blocks\.(\d+)\.(.*)$", "layers.$1.$2")
        .unwrap();
    let options = InjectOptions::default().with_key_map(map);
    let config = LoraConfig::new(TargetModules::names(["layers.1.q_proj"]));
    let lora = LoraModel::inject(model, &config, &options).unwrap();
    assert_eq!(lora.targets()[0].target.path, "blocks.1.q_proj");
    let keys: Vec<String> = lora.adapter_tensors().unwrap().into_keys().collect();
    assert_eq!(
        keys,
        [
            "base_model.model.layers.1.q_proj.lora_A.weight",
            "base_model.model.layers.1.q_proj.lora_B.weight"
        ]
    );
}
