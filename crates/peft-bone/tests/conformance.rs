//! Bone (PEFT 0.18.0) and MiSS (PEFT 0.21.2) against PEFT: single layers in every mode (forward
//! on both execution paths, merged and unmerged weights), PEFT folders on the tiny OPT and Llama
//! checkpoints (logits unmerged and merged, files written back), and the error cases.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use peft_bone::{BoneConfig, BoneError, BoneFormat, BoneMode, BoneModel};
use peft_core::nn::InitFactored;
use peft_core::{KeyMap, TargetModules};
use peft_models::{AnyCausalLm, CausalLm};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn read(rel: &str) -> BTreeMap<String, TensorData> {
    peft_core::io::read_safetensors(&fixtures().join(rel)).unwrap()
}

fn device() -> Device {
    Device::default().autodiff()
}

fn max_abs_diff(a: &TensorData, b: &TensorData) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape");
    let a = a.clone().convert::<f32>().try_into_vec::<f32>().unwrap();
    let b = b.clone().convert::<f32>().try_into_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[track_caller]
fn close(what: &str, a: &TensorData, b: &TensorData, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs error {d} > {tol}");
}

fn transpose(d: &TensorData) -> TensorData {
    peft_core::io::transpose(d).unwrap()
}

#[derive(Module, Debug)]
struct Factored {
    layer: peft_core::nn::Linear,
}

#[derive(Module, Debug)]
struct Dense {
    layer: burn::nn::Linear,
}

fn layer_meta() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("bone/layers/meta.json")).unwrap(),
    )
    .unwrap()
}

fn layer_config(case: &serde_json::Value) -> BoneConfig {
    let mode = match case["mode"].as_str().unwrap() {
        "bat" => BoneMode::Bat,
        "mini" => BoneMode::Mini {
            mini_r: case["mini_r"].as_u64().unwrap() as usize,
        },
        _ => BoneMode::Default,
    };
    let format = if case["peft_type"] == "BONE" {
        BoneFormat::Bone
    } else {
        BoneFormat::Miss
    };
    BoneConfig::new(TargetModules::names(["layer"]))
        .with_r(case["r"].as_u64().unwrap() as usize)
        .with_mode(mode)
        .with_format(format)
}

/// Base weights and the fixture's block in a one-layer model; `factored` picks the layer type.
fn layer_model<M: Module>(model: M, name: &str, t: &BTreeMap<String, TensorData>) -> BoneModel<M> {
    let meta = layer_meta();
    let case = &meta[name];
    let config = layer_config(case);
    let sd = BTreeMap::from([
        ("layer.weight".to_string(), t["weight"].clone()),
        ("layer.bias".to_string(), t["bias"].clone()),
    ]);
    let model = peft_core::io::load_pytorch_state_dict(model, &sd, &KeyMap::identity()).unwrap();
    let bone = BoneModel::inject(model, &config, &KeyMap::identity()).unwrap();
    let shape = peft_bone::inject::block_shape(config.mode, config.r, t["weight"].shape()[0]);
    let block = t["block"]
        .clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let mut bone = bone;
    bone.model = peft_core::io::replace_params(
        bone.model,
        BTreeMap::from([(
            "layer.weight.bone.block".to_string(),
            TensorData::new(block, shape),
        )]),
    )
    .unwrap();
    bone
}

const LAYERS: &[&str] = &[
    "miss_default",
    "miss_padded",
    "miss_bat",
    "miss_mini",
    "bone_default",
    "bone_bat",
];

#[test]
fn single_layers_match_peft_in_every_mode() {
    let device = device();
    for name in LAYERS {
        let t = read(&format!("bone/layers/{name}.safetensors"));
        let [out, inp] = [t["weight"].shape()[0], t["weight"].shape()[1]];
        let x = Tensor::<3>::from_data(t["x"].clone(), &device);

        let factored = layer_model(
            Factored {
                layer: LinearConfig::new(inp, out).init_factored(&device),
            },
            name,
            &t,
        );
        close(
            &format!("{name} factored layer, all tokens at once (bat: composed ΔW)"),
            &factored.model.layer.forward(x.clone()).into_data(),
            &t["y"],
            1e-5,
        );
        // bat runs factored, without composing ΔW, only for few tokens (`bat_runs_factored`);
        // the fixture's ten tokens run composed above, and one at a time take that path here.
        let [batch, seq, _] = x.dims();
        let config = layer_config(&layer_meta()[name]);
        if config.mode == BoneMode::Bat {
            assert!(peft_bone::bat_runs_factored(1, config.r));
            let rows: Vec<Tensor<3>> = (0..batch * seq)
                .map(|i| {
                    let token = x
                        .clone()
                        .slice([i / seq..i / seq + 1, i % seq..i % seq + 1]);
                    factored.model.layer.forward(token)
                })
                .collect();
            close(
                &format!("{name} factored layer, one token at a time (bat: ΔW never composed)"),
                &Tensor::cat(rows, 1).reshape([batch, seq, out]).into_data(),
                &t["y"],
                1e-5,
            );
        }
        let dense = layer_model(
            Dense {
                layer: LinearConfig::new(inp, out).init(&device),
            },
            name,
            &t,
        );
        close(
            &format!("{name} weight-space forward"),
            &dense.model.layer.forward(x.clone()).into_data(),
            &t["y"],
            1e-5,
        );

        // Files: the block comes back under PEFT's name and layout.
        let format = layer_config(&layer_meta()[name]).format;
        let tensors = factored.adapter_tensors(format).unwrap();
        let (_, block) = tensors.iter().next().unwrap();
        close(&format!("{name} saved block"), block, &t["block"], 0.0);

        let merged = factored.merge();
        let w = merged.model.layer.weight.val().into_data();
        close(
            &format!("{name} merged weight"),
            &w,
            &transpose(&t["merged_weight"]),
            1e-5,
        );
        close(
            &format!("{name} merged forward"),
            &merged.model.layer.forward(x.clone()).into_data(),
            &t["y"],
            1e-5,
        );
        let unmerged = merged.unmerge().unwrap();
        let base = unmerged.model.layer.weight.base().into_data();
        close(
            &format!("{name} unmerged weight"),
            &base,
            &transpose(&t["weight"]),
            1e-5,
        );
        close(
            &format!("{name} unmerged forward"),
            &unmerged.model.layer.forward(x).into_data(),
            &t["y"],
            1e-5,
        );
    }
}

fn check_model<M: CausalLm>(model: M, case: &str) {
    let root = fixtures().join("bone/models").join(case);
    let expected = read(&format!("bone/models/{case}/expected.safetensors"));
    let ids = Tensor::<2, Int>::from_data(
        read("models/inputs.safetensors")["input_ids"].clone(),
        &device(),
    );
    let bone = BoneModel::load(model, root.join("adapter"), &KeyMap::identity()).unwrap();
    close(
        &format!("{case} logits"),
        &bone.model.forward(ids.clone()).into_data(),
        &expected["logits"],
        1e-4,
    );
    // Decoded one token at a time through the key/value cache, as `generate` runs: bat then
    // takes its path without composing ΔW (`bat_runs_factored`), and each step's logits are
    // PEFT's at that position.
    if bone.config().mode == BoneMode::Bat {
        assert!(peft_bone::bat_runs_factored(1, bone.config().r));
        let [batch, seq] = ids.dims();
        let mut cache = peft_models::KvCache::new();
        let steps: Vec<Tensor<3>> = (0..seq)
            .map(|i| {
                let logits = bone
                    .model
                    .forward_cached(ids.clone().slice([0..batch, i..i + 1]), &mut cache)
                    .unwrap();
                logits.unsqueeze_dim(1)
            })
            .collect();
        close(
            &format!("{case} logits decoded one token at a time"),
            &Tensor::cat(steps, 1).into_data(),
            &expected["logits"],
            1e-4,
        );
    }
    // Written back in the folder's own format: the same tensors under the same names.
    let out = tempfile::tempdir().unwrap();
    bone.save(out.path()).unwrap();
    let ours =
        peft_core::io::read_safetensors(&out.path().join("adapter_model.safetensors")).unwrap();
    let theirs = read(&format!(
        "bone/models/{case}/adapter/adapter_model.safetensors"
    ));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{case} keys"
    );
    for (k, v) in &theirs {
        close(&format!("{case} {k}"), &ours[k], v, 0.0);
    }
    let reread = BoneConfig::from_dir(out.path()).unwrap();
    assert_eq!(
        (reread.mode, reread.format, reread.r),
        (bone.config().mode, bone.config().format, bone.config().r)
    );
    let merged = bone.merge_and_unload();
    close(
        &format!("{case} merged logits"),
        &merged.forward(ids).into_data(),
        &expected["merged_logits"],
        1e-4,
    );
}

#[test]
fn peft_folders_give_peft_logits_unmerged_and_merged() {
    for (case, model) in [
        ("opt_miss_default", "opt_pre"),
        ("opt_miss_bat", "opt_pre"),
        ("llama_miss_mini", "llama"),
        ("opt_bone_default", "opt_pre"),
        ("opt_bone_bat", "opt_pre"),
    ] {
        match AnyCausalLm::load(
            fixtures().join("models").join(model).join("checkpoint"),
            &device(),
        )
        .unwrap()
        {
            AnyCausalLm::Opt(m) => check_model(m, case),
            AnyCausalLm::Llama(m) => check_model(m, case),
        }
    }
}

#[test]
fn shape_rules_and_singular_tiles_are_errors() {
    let device = device();
    let model = || Factored {
        layer: LinearConfig::new(10, 12).init_factored(&device),
    };
    let targets = || TargetModules::names(["layer"]);
    let check = |config: BoneConfig, needle: &str| {
        let err = BoneModel::inject(model(), &config, &KeyMap::identity()).unwrap_err();
        assert!(matches!(err, BoneError::Shape { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("layer") && msg.contains("[12, 10]") && msg.contains(needle),
            "{msg}"
        );
    };
    check(BoneConfig::new(targets()).with_r(16), "exceeds in_features");
    check(
        BoneConfig::new(targets())
            .with_r(4)
            .with_mode(BoneMode::Bat),
        "divisible by r",
    );
    check(
        BoneConfig::new(targets())
            .with_r(2)
            .with_mode(BoneMode::Mini { mini_r: 5 }),
        "mini_r",
    );

    // Bat with block = −I in a tile: I + B is singular, unmerge must refuse.
    let config = BoneConfig::new(targets())
        .with_r(2)
        .with_mode(BoneMode::Bat);
    let model = Factored {
        layer: LinearConfig::new(4, 4).init_factored(&device),
    };
    let mut bone = BoneModel::inject(model, &config, &KeyMap::identity()).unwrap();
    let block = TensorData::new(vec![-1f32, 0., 0., -1., 0.5, 0., 0., 0.5], [2, 2, 2]);
    bone.model = peft_core::io::replace_params(
        bone.model,
        BTreeMap::from([("layer.weight.bone.block".to_string(), block)]),
    )
    .unwrap();
    let err = bone.merge().unmerge().unwrap_err();
    assert!(matches!(err, BoneError::Singular { tile: 0, .. }), "{err}");

    // Bone files cannot hold MiSS-only settings.
    let config = BoneConfig::new(targets())
        .with_r(2)
        .with_mode(BoneMode::Mini { mini_r: 4 })
        .with_format(BoneFormat::Bone);
    assert!(matches!(
        config.validate(),
        Err(BoneError::InvalidConfig(_))
    ));
}
