//! What a checkpoint's `config.json` claims is checked against its weights before anything is
//! allocated: a config that describes a model larger than the file is one error, not an
//! allocation of that size.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use burn::tensor::Device;
use peft_models::AnyCausalLm;

fn fixture(model: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/models/{model}/checkpoint"))
}

/// The fixture's folder with `config.json` fields replaced.
fn with_config(model: &str, dir: &Path, changes: &[(&str, serde_json::Value)]) {
    let src = fixture(model);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (k, v) in changes {
        config[*k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
}

#[test]
fn a_config_larger_than_its_weights_is_refused_before_allocation() {
    let device = Device::default();
    for (model, field) in [
        ("llama_tied", "vocab_size"),
        ("llama_tied", "num_hidden_layers"),
        ("llama_tied", "intermediate_size"),
        ("opt_pre", "vocab_size"),
        ("opt_pre", "max_position_embeddings"),
        ("opt_pre", "ffn_dim"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // 2^40 values would be 4 TiB of f32: loading must fail before trying.
        with_config(model, dir.path(), &[(field, serde_json::json!(1u64 << 40))]);
        let e = AnyCausalLm::load(dir.path(), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("config.json") && e.contains("describes a model of at least"),
            "{model} {field}: {e}"
        );
    }
    // The largest sizes a config can write are refused the same way.
    let dir = tempfile::tempdir().unwrap();
    with_config(
        "llama_tied",
        dir.path(),
        &[
            ("hidden_size", serde_json::json!(u64::MAX)),
            ("head_dim", serde_json::json!(8)),
        ],
    );
    let e = AnyCausalLm::load(dir.path(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("describes a model of at least"), "{e}");
    // The fixtures themselves still load.
    for model in ["llama_tied", "opt_pre", "llama"] {
        AnyCausalLm::load(fixture(model), &device).unwrap();
    }
}
