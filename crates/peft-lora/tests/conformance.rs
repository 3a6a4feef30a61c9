//! Conformance with real PEFT 0.21.2: forward, gradients, merge, adapter files. Fixtures come from
//! `cargo xtask fixtures` (xtask/fixtures/generate.py).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use common::*;
use peft_core::TargetModules;
use peft_core::io::{read_safetensors, replace_params};
use peft_lora::{InjectOptions, LoraAdapter, LoraConfig, LoraInit, LoraModel};

const TOL: f32 = 1e-5;

fn layer_config(case: &str) -> LoraConfig {
    let m = &meta()["layers"][case];
    LoraConfig::new(TargetModules::names(["layer"]))
        .with_r(m["r"].as_u64().unwrap() as usize)
        .with_alpha(m["lora_alpha"].as_f64().unwrap())
        .with_rslora(m["use_rslora"].as_bool().unwrap())
        .with_init(LoraInit::Random)
}

/// Base weights (PyTorch layout in the file) and the PEFT factors, set on the model.
fn load_layer<M: Module>(
    model: M,
    f: &BTreeMap<String, TensorData>,
    case: &str,
    embedding: bool,
) -> LoraModel<M> {
    let lora = LoraModel::inject(model, &layer_config(case), &InjectOptions::default()).unwrap();
    let scaling = meta()["layers"][case]["scaling"].as_f64().unwrap();
    assert!(
        (lora.targets()[0].scaling - scaling).abs() < 1e-12,
        "scaling differs from PEFT's"
    );
    let (ka, kb) = if embedding {
        ("lora_embedding_A", "lora_embedding_B")
    } else {
        ("lora_A", "lora_B")
    };
    let mut values = BTreeMap::from([
        (
            "layer.weight".to_string(),
            if embedding {
                f["weight"].clone()
            } else {
                transpose(&f["weight"])
            },
        ),
        ("layer.weight.lora.a".to_string(), transpose(&f[ka])),
        ("layer.weight.lora.b".to_string(), transpose(&f[kb])),
    ]);
    if let Some(b) = f.get("bias") {
        values.insert("layer.bias".into(), b.clone());
    }
    let LoraModel { model, .. } = &lora;
    let model = replace_params(model.clone(), values).unwrap();
    let mut lora = lora;
    lora.model = model;
    lora
}

fn adapter(w: &burn::module::Param<Tensor<2>>) -> &LoraAdapter {
    w.reparameterization::<LoraAdapter>()
        .expect("adapter attached")
}

macro_rules! check_linear_case {
    ($model:ty, $init:expr, $case:expr) => {{
        let device = device();
        let f = read(&format!("layers/{}.safetensors", $case));
        let in_f = f["x"].shape()[2];
        let out_f = f["y"].shape()[2];
        let base: $model = $init(in_f, out_f, f.contains_key("bias"), &device);
        let lora = load_layer(base, &f, $case, false);
        let x = t3(&f["x"], &device).require_grad();
        let y = lora.model.layer.forward(x.clone());
        assert_close(
            &format!("{} forward", $case),
            y.clone().into_data(),
            &f["y"],
            TOL,
        );
        let grads = (y * t3(&f["dy"], &device)).sum().backward();
        let ad = adapter(&lora.model.layer.weight);
        assert_close(
            "grad A",
            ad.a.val().grad(&grads).unwrap().into_data(),
            &transpose(&f["grad_lora_A"]),
            TOL,
        );
        assert_close(
            "grad B",
            ad.b.val().grad(&grads).unwrap().into_data(),
            &transpose(&f["grad_lora_B"]),
            TOL,
        );
        assert_close(
            "grad x",
            x.grad(&grads).unwrap().into_data(),
            &f["grad_x"],
            TOL,
        );
        assert!(
            lora.model.layer.weight.base().grad(&grads).is_none(),
            "base weight must stay frozen"
        );
        let original = lora.model.layer.weight.base().into_data();
        let merged = lora.merge();
        assert_close(
            "merged weight",
            merged.model.layer.weight.val().into_data(),
            &transpose(&f["merged_weight"]),
            TOL,
        );
        assert!(
            merged
                .model
                .layer
                .weight
                .reparameterization::<LoraAdapter>()
                .is_none()
        );
        let unmerged = merged.unmerge().unwrap();
        assert_close(
            "unmerged weight",
            unmerged.model.layer.weight.base().into_data(),
            &original,
            TOL,
        );
        let y = unmerged.model.layer.forward(t3(&f["x"], &device));
        assert_close("forward after unmerge", y.into_data(), &f["y"], TOL);
    }};
}

#[test]
fn factored_linear_matches_peft() {
    for case in ["linear_bias", "linear_nobias", "linear_rslora"] {
        check_linear_case!(OneFactored, factored, case);
    }
}

/// Without gradients (a `valid()` model) a LoRA Linear multiplies by the composed `W + s·A·B`
/// once that costs less than the factored branch (`LoraAdapter::composes_for`), and still gives
/// PEFT's output; with autodiff it runs factored for any input, as PEFT does.
#[test]
fn an_unmerged_linear_without_gradients_composes_for_many_tokens_and_matches_peft() {
    use peft_core::nn::FactoredAdapter;
    let device = device();
    let f = read("layers/linear_bias.safetensors");
    let base = factored(16, 12, true, &device);
    let lora = load_layer(base, &f, "linear_bias", false);
    // The fixture's 2 x 5 tokens, and twice as many (16 inputs, 12 outputs: from 11 on).
    let (few, many) = (10, 20);
    let trained = adapter(&lora.model.layer.weight);
    assert!(!trained.composes_for(few) && trained.composes_for(many));
    assert!(trained.runs_factored(many), "with autodiff: factored");
    let inference = lora.model.clone().valid();
    let ad = adapter(&inference.layer.weight);
    assert!(ad.runs_factored(few), "few tokens: factored");
    assert!(
        !ad.runs_factored(many),
        "many tokens without gradients: composed"
    );
    let x = t3(&f["x"], &device).inner();
    let y = t3(&f["y"], &device).inner();
    for (what, x, y) in [
        ("few tokens, factored", x.clone(), y.clone()),
        (
            "many tokens, composed",
            Tensor::cat(vec![x.clone(), x], 0),
            Tensor::cat(vec![y.clone(), y], 0),
        ),
    ] {
        assert_close(
            what,
            inference.layer.forward(x).into_data(),
            &y.into_data(),
            TOL,
        );
    }
}

#[test]
fn weight_space_linear_matches_peft() {
    for case in ["linear_bias", "linear_nobias", "linear_rslora"] {
        check_linear_case!(OneBurn, burn_linear, case);
    }
}

#[test]
fn embedding_matches_peft() {
    let device = device();
    let f = read("layers/embedding.safetensors");
    let [num, dim] = [f["weight"].shape()[0], f["weight"].shape()[1]];
    let base = embedding(num, dim, &device);
    let lora = load_layer(base, &f, "embedding", true);
    let y = lora.model.layer.forward(ids(&f["ids"], &device));
    assert_close("embedding forward", y.clone().into_data(), &f["y"], TOL);
    let grads = (y * t3(&f["dy"], &device)).sum().backward();
    let ad = adapter(&lora.model.layer.weight);
    assert_close(
        "grad A",
        ad.a.val().grad(&grads).unwrap().into_data(),
        &transpose(&f["grad_lora_embedding_A"]),
        TOL,
    );
    assert_close(
        "grad B",
        ad.b.val().grad(&grads).unwrap().into_data(),
        &transpose(&f["grad_lora_embedding_B"]),
        TOL,
    );
    let merged = lora.merge_and_unload();
    assert_close(
        "merged",
        merged.layer.weight.val().into_data(),
        &f["merged_weight"],
        TOL,
    );
}

fn tiny_case(
    case: &str,
) -> (
    TinyModel,
    LoraModel<TinyModel>,
    BTreeMap<String, TensorData>,
) {
    let device = device();
    let base = TinyModel::pretrained(&device);
    let dir = fixtures().join("tiny").join(case).join("adapter");
    // The fixture model is a plain `nn.Module`: PEFT saves no embedding base layers for it.
    let options = InjectOptions::default().with_save_embedding_layers(false);
    let lora = LoraModel::load(base.clone(), &dir, &options).unwrap();
    (
        base,
        lora,
        read(&format!("tiny/{case}/expected.safetensors")),
    )
}

#[test]
fn base_model_matches_pytorch() {
    let device = device();
    let inputs = read("tiny/inputs.safetensors");
    let logits = TinyModel::pretrained(&device).forward(ids(&inputs["input_ids"], &device));
    assert_close(
        "base logits",
        logits.into_data(),
        &inputs["base_logits"],
        1e-4,
    );
}

#[test]
fn peft_adapters_load_and_match_logits() {
    let device = device();
    let inputs = read("tiny/inputs.safetensors");
    let input_ids = ids(&inputs["input_ids"], &device);
    for case in ["qv", "patterns", "regex_exclude", "layers"] {
        let (_, lora, expected) = tiny_case(case);
        // The resolved targets, ranks, alphas and scalings are PEFT's.
        let targets = meta()["tiny"][case]["targets"].as_object().unwrap().clone();
        let mut ours: Vec<&str> = lora
            .targets()
            .iter()
            .map(|t| t.target.name.as_str())
            .collect();
        let mut theirs: Vec<&str> = targets.keys().map(String::as_str).collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{case}: targets");
        for t in lora.targets() {
            let m = &targets[&t.target.name];
            assert_eq!(
                t.r as u64,
                m["r"].as_u64().unwrap(),
                "{case} {}: r",
                t.target.name
            );
            assert!(
                (t.scaling - m["scaling"].as_f64().unwrap()).abs() < 1e-12,
                "{case} {}: scaling",
                t.target.name
            );
        }
        let logits = lora.model.forward(input_ids.clone());
        assert_close_rel(
            &format!("{case} logits"),
            logits.into_data(),
            &expected["logits"],
            1e-5,
        );
        lora.disable_adapters();
        let off = lora.model.forward(input_ids.clone());
        assert_close(
            &format!("{case} disabled"),
            off.into_data(),
            &inputs["base_logits"],
            1e-4,
        );
        lora.enable_adapters();
        let merged = lora.merge_and_unload();
        let logits = merged.forward(input_ids.clone());
        assert_close_rel(
            &format!("{case} merged logits"),
            logits.into_data(),
            &expected["merged_logits"],
            1e-5,
        );
        let weights = peft_core::io::read_params(&merged, |p| p.ends_with(".weight"));
        for (key, want) in expected.iter().filter(|(k, _)| k.ends_with(".weight")) {
            let got = &weights[key];
            let want = if key.contains("embed_tokens") {
                want.clone()
            } else {
                transpose(want)
            };
            assert_close_rel(&format!("{case} merged {key}"), got.clone(), &want, TOL);
        }
    }
}

#[test]
fn resaving_a_peft_adapter_keeps_keys_shapes_values_and_config() {
    for case in ["qv", "patterns", "regex_exclude", "layers"] {
        let (_, lora, _) = tiny_case(case);
        let src = fixtures().join("tiny").join(case).join("adapter");
        let out = tempfile::tempdir().unwrap();
        lora.save(out.path()).unwrap();
        let a = read_safetensors(&src.join("adapter_model.safetensors")).unwrap();
        let b = read_safetensors(&out.path().join("adapter_model.safetensors")).unwrap();
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{case}: keys"
        );
        for (k, v) in &a {
            assert_eq!(v.shape(), b[k].shape(), "{case} {k}: shape");
            assert_eq!(max_abs_diff(v.clone(), &b[k]), 0.0, "{case} {k}: values");
        }
        let bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            header
                .metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        let cfg_a: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let text_b = std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap();
        assert!(!text_b.ends_with('\n'), "PEFT writes no trailing newline");
        let cfg_b: serde_json::Value = serde_json::from_str(&text_b).unwrap();
        assert_eq!(cfg_a, cfg_b, "{case}: adapter_config.json");
    }
}
