//! DoRA (`use_dora: true`) against real PEFT 0.21.2: forward, gradients of A, B, the magnitude
//! and the input, merge and unmerge, on the factored and weight-space paths and on Embedding.
//! Fixtures come from `cargo xtask fixtures` (xtask/fixtures/dora.py).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use common::*;
use peft_core::io::{read_safetensors, replace_params, write_safetensors};
use peft_lora::{InjectOptions, LoraAdapter, LoraModel};

const TOL: f32 = 1e-5;

fn dora_dir() -> PathBuf {
    fixtures().join("../dora")
}

fn case_meta(case: &str) -> serde_json::Value {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dora_dir().join("meta.json")).unwrap())
            .unwrap();
    meta["layers"][case].clone()
}

fn fixture(case: &str) -> BTreeMap<String, TensorData> {
    read_safetensors(&dora_dir().join(format!("layers/{case}.safetensors"))).unwrap()
}

/// The fixture as the PEFT adapter folder `save_pretrained` would write for it.
fn adapter_folder(case: &str, f: &BTreeMap<String, TensorData>) -> tempfile::TempDir {
    let m = case_meta(case);
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "peft_type": "LORA", "r": m["r"], "lora_alpha": m["lora_alpha"],
        "use_rslora": m["use_rslora"], "use_dora": true, "target_modules": ["layer"],
    });
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    let p = "base_model.model.layer";
    let mut t = BTreeMap::from([(format!("{p}.lora_magnitude_vector"), f["magnitude"].clone())]);
    if m["kind"] == "embedding" {
        t.insert(
            format!("{p}.lora_embedding_A"),
            f["lora_embedding_A"].clone(),
        );
        t.insert(
            format!("{p}.lora_embedding_B"),
            f["lora_embedding_B"].clone(),
        );
    } else {
        t.insert(format!("{p}.lora_A.weight"), f["lora_A"].clone());
        t.insert(format!("{p}.lora_B.weight"), f["lora_B"].clone());
    }
    write_safetensors(&dir.path().join("adapter_model.safetensors"), &t).unwrap();
    dir
}

fn adapter(w: &Param<Tensor<2>>) -> &LoraAdapter {
    w.reparameterization::<LoraAdapter>().expect("adapter")
}

/// Loads the case's folder onto a model holding its base weights.
fn load<M: Module>(model: M, f: &BTreeMap<String, TensorData>, case: &str) -> LoraModel<M> {
    let embedding = case_meta(case)["kind"] == "embedding";
    let mut base = BTreeMap::from([(
        "layer.weight".to_string(),
        if embedding {
            f["weight"].clone()
        } else {
            transpose(&f["weight"])
        },
    )]);
    if let Some(b) = f.get("bias") {
        base.insert("layer.bias".into(), b.clone());
    }
    let model = replace_params(model, base).unwrap();
    let dir = adapter_folder(case, f);
    let lora = LoraModel::load(model, dir.path(), &InjectOptions::default()).unwrap();
    let scaling = case_meta(case)["scaling"].as_f64().unwrap();
    assert!((lora.targets()[0].scaling - scaling).abs() < 1e-12);
    // Written back: PEFT's keys and values.
    let saved = tempfile::tempdir().unwrap();
    lora.save(saved.path()).unwrap();
    let ours = read_safetensors(&saved.path().join("adapter_model.safetensors")).unwrap();
    let theirs = read_safetensors(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (k, v) in &theirs {
        assert_close(k, ours[k].clone(), v, 0.0);
    }
    lora
}

macro_rules! check_linear {
    ($model:ty, $init:expr, $case:expr) => {{
        let device = device();
        let f = fixture($case);
        let (in_f, out_f) = (f["x"].shape()[2], f["y"].shape()[2]);
        let base: $model = $init(in_f, out_f, f.contains_key("bias"), &device);
        let lora = load(base, &f, $case);
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
        let grad = |t: Tensor<2>| t.grad(&grads).unwrap().into_data();
        assert_close(
            "grad A",
            grad(ad.a.val()),
            &transpose(&f["grad_lora_A"]),
            TOL,
        );
        assert_close(
            "grad B",
            grad(ad.b.val()),
            &transpose(&f["grad_lora_B"]),
            TOL,
        );
        let m = ad.magnitude.as_ref().unwrap().val();
        assert_close(
            "grad m",
            m.grad(&grads).unwrap().into_data(),
            &f["grad_magnitude"],
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
            "W frozen"
        );

        let original = lora.model.layer.weight.base().into_data();
        let merged = lora.merge();
        assert_close(
            "merged weight",
            merged.model.layer.weight.val().into_data(),
            &transpose(&f["merged_weight"]),
            TOL,
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
fn factored_dora_linear_matches_peft() {
    let _rng = rng_lock();
    for case in ["linear_bias", "linear_rslora"] {
        check_linear!(OneFactored, factored, case);
    }
}

#[test]
fn weight_space_dora_linear_matches_peft() {
    let _rng = rng_lock();
    for case in ["linear_bias", "linear_rslora"] {
        check_linear!(OneBurn, burn_linear, case);
    }
}

#[test]
fn dora_embedding_matches_peft() {
    let _rng = rng_lock();
    let device = device();
    let f = fixture("embedding");
    let [num, dim] = [f["weight"].shape()[0], f["weight"].shape()[1]];
    let base = embedding(num, dim, &device);
    let lora = load(base, &f, "embedding");
    let y = lora.model.layer.forward(ids(&f["ids"], &device));
    assert_close("embedding forward", y.clone().into_data(), &f["y"], TOL);
    let grads = (y * t3(&f["dy"], &device)).sum().backward();
    let ad = adapter(&lora.model.layer.weight);
    let grad = |t: Tensor<2>| t.grad(&grads).unwrap().into_data();
    assert_close(
        "grad A",
        grad(ad.a.val()),
        &transpose(&f["grad_lora_embedding_A"]),
        TOL,
    );
    assert_close(
        "grad B",
        grad(ad.b.val()),
        &transpose(&f["grad_lora_embedding_B"]),
        TOL,
    );
    let m = ad.magnitude.as_ref().unwrap().val();
    assert_close(
        "grad m",
        m.grad(&grads).unwrap().into_data(),
        &f["grad_magnitude"],
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

#[test]
fn fresh_dora_starts_at_the_base_output_with_m_equal_to_the_weight_norm() {
    let _rng = rng_lock();
    let device = device();
    let model = factored(16, 12, true, &device);
    let x = Tensor::<2>::random([4, 16], burn::tensor::Distribution::Default, &device);
    let before = model.layer.forward(x.clone()).into_data();
    let w = model.layer.weight.val();
    let config = peft_lora::LoraConfig::new(peft_core::TargetModules::names(["layer"]))
        .with_r(4)
        .with_dora(true);
    let lora = LoraModel::inject(model, &config, &InjectOptions::default()).unwrap();
    assert_close(
        "output at init",
        lora.model.layer.forward(x).into_data(),
        &before,
        TOL,
    );
    let m = adapter(&lora.model.layer.weight)
        .magnitude
        .as_ref()
        .unwrap()
        .val();
    let norm = w.powi_scalar(2).sum_dim(0).sqrt().reshape([12]);
    assert_close("m = ‖W‖", m.into_data(), &norm.into_data(), TOL);
    assert_eq!(lora.param_counts().trainable, 4 * (16 + 12) + 12);
}

#[test]
fn a_dora_folder_without_magnitudes_is_an_error_naming_the_key() {
    let _rng = rng_lock();
    let f = fixture("linear_bias");
    let dir = adapter_folder("linear_bias", &f);
    let path = dir.path().join("adapter_model.safetensors");
    let mut t = read_safetensors(&path).unwrap();
    t.remove("base_model.model.layer.lora_magnitude_vector");
    write_safetensors(&path, &t).unwrap();
    let model = factored(16, 12, true, &device());
    let e = LoraModel::load(model, dir.path(), &InjectOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("lora_magnitude_vector") && e.contains("missing"),
        "{e}"
    );
}

/// With dropout active, PEFT recomputes `x̃·W` on the dropped-out input:
/// `y = x·W + b + (scale − 1) ⊙ x̃·W + scale ⊙ s·x̃·A·B`, `scale = m / ‖W + s·A·B‖`.
#[test]
fn dropout_in_training_rescales_the_dropped_out_base_product_as_peft_does() {
    let _rng = rng_lock();
    let device = device();
    let model = factored(16, 12, true, &device);
    let config = peft_lora::LoraConfig::new(peft_core::TargetModules::names(["layer"]))
        .with_r(4)
        .with_dropout(0.5)
        .with_init(peft_lora::LoraInit::Random)
        .with_dora(true);
    let lora = LoraModel::inject(model, &config, &InjectOptions::default()).unwrap();
    let ad = adapter(&lora.model.layer.weight);
    // Move m away from the norm so that every term matters.
    let m = ad.magnitude.as_ref().unwrap().val().mul_scalar(1.3);
    let lora = {
        let mut l = lora;
        l.model = replace_params(
            l.model,
            BTreeMap::from([("layer.weight.lora.magnitude".to_string(), m.into_data())]),
        )
        .unwrap();
        l
    };
    let x = Tensor::<2>::random([6, 16], burn::tensor::Distribution::Default, &device);
    // A first forward initialises the lazily created base weight (it draws random numbers), so
    // that after seeding the dropout mask is the only draw.
    let _ = lora.model.layer.forward(x.clone());
    device.seed(7);
    let y = lora.model.layer.forward(x.clone());

    device.seed(7);
    let dropped = burn::nn::DropoutConfig::new(0.5).init().forward(x.clone());
    let ad = adapter(&lora.model.layer.weight);
    let w = lora.model.layer.weight.base();
    let b = lora.model.layer.bias.as_ref().unwrap().val();
    let s = ad.scaling;
    let dense = w.clone() + ad.a.val().matmul(ad.b.val()).mul_scalar(s);
    let norm = dense.powi_scalar(2).sum_dim(0).sqrt();
    let scale = ad.magnitude.as_ref().unwrap().val().unsqueeze::<2>() / norm;
    let expected = x.matmul(w.clone())
        + b.unsqueeze::<2>()
        + dropped.clone().matmul(w) * (scale.clone() - 1.0)
        + dropped.matmul(ad.a.val()).mul_scalar(s).matmul(ad.b.val()) * scale;
    assert_close("dropout path", y.into_data(), &expected.into_data(), TOL);
}
