//! Properties of LoRA and DoRA over random shapes, ranks, scalings and bias (`proptest`): merge
//! then unmerge restores `W`; save then load is the identity; the factored path, the
//! weight-space path (burn's own `Linear`) and the merged weights compute the same function;
//! `peft merge`'s state-dict plan equals merging the model.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use peft_core::TargetModules;
use peft_core::method::{Method, TensorInfo};
use peft_lora::{InjectOptions, LoraConfig, LoraInit, LoraModel};
use proptest::prelude::*;

mod common;
use common::{OneBurn, OneFactored, burn_linear, factored};

/// One random case: a `d_in → d_out` Linear and the adapter's settings.
#[derive(Debug, Clone)]
struct Case {
    d_in: usize,
    d_out: usize,
    bias: bool,
    r: usize,
    alpha: f64,
    rslora: bool,
    dora: bool,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        1usize..24,
        1usize..24,
        any::<bool>(),
        1usize..9,
        1.0f64..32.0,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(d_in, d_out, bias, r, alpha, rslora, dora, seed)| Case {
            d_in,
            d_out,
            bias,
            r,
            alpha,
            rslora,
            dora,
            seed,
        })
}

fn config(c: &Case) -> LoraConfig {
    LoraConfig::new(TargetModules::names(["layer"]))
        .with_r(c.r)
        .with_alpha(c.alpha)
        .with_rslora(c.rslora)
        .with_dora(c.dora)
        .with_init(LoraInit::Random)
}

fn values(d: TensorData) -> Vec<f32> {
    d.convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Max |a − b| relative to max(1, max |b|).
fn rel_diff(a: TensorData, b: TensorData) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn weight<M: burn::module::Module>(model: &M) -> TensorData {
    peft_core::io::read_params(model, |p| p == "layer.weight")
        .remove("layer.weight")
        .unwrap()
}

/// A factored layer with a random adapter (seeded: burn's generator is global).
fn adapted(c: &Case, device: &Device) -> LoraModel<OneFactored> {
    device.seed(c.seed);
    let model = factored(c.d_in, c.d_out, c.bias, device);
    LoraModel::inject(model, &config(c), &InjectOptions::default()).unwrap()
}

/// PEFT's scaling: `alpha / r`, or `alpha / √r` with rsLoRA.
fn scaling(c: &Case) -> f32 {
    let r = c.r as f64;
    (if c.rslora {
        c.alpha / r.sqrt()
    } else {
        c.alpha / r
    }) as f32
}

/// max |A·B| for `A` `[d_in, r]` and `B` `[r, d_out]` (row-major), in f64.
fn max_abs_update(a: &[f32], b: &[f32], d_in: usize, r: usize, d_out: usize) -> f32 {
    let mut max = 0f64;
    for i in 0..d_in {
        for j in 0..d_out {
            let v: f64 = (0..r)
                .map(|k| a[i * r + k] as f64 * b[k * d_out + j] as f64)
                .sum();
            max = max.max(v.abs());
        }
    }
    max as f32
}

/// max over columns of `((‖W_c‖ + ‖s·A·B_c‖) / ‖W_c + s·A·B_c‖)²`: how much the factored norm
/// `‖W‖² + 2s·⟨AᵀW, B⟩ + s²·⟨B, AᵀA·B⟩` magnifies f32's rounding (burn layout, row-major).
fn conditioning(w: &[f32], a: &[f32], b: &[f32], c: &Case) -> f32 {
    let s = scaling(c) as f64;
    let mut worst = 1f64;
    for j in 0..c.d_out {
        let (mut ww, mut dd, mut vv) = (0f64, 0f64, 0f64);
        for i in 0..c.d_in {
            let d: f64 = s
                * (0..c.r)
                    .map(|k| a[i * c.r + k] as f64 * b[k * c.d_out + j] as f64)
                    .sum::<f64>();
            let w = w[i * c.d_out + j] as f64;
            ww += w * w;
            dd += d * d;
            vv += (w + d) * (w + d);
        }
        worst = worst.max((ww.sqrt() + dd.sqrt()).powi(2) / vv.max(f64::MIN_POSITIVE));
    }
    worst as f32
}

fn input(c: &Case, device: &Device) -> Tensor<2> {
    Tensor::random([3, c.d_in], Distribution::Normal(0.0, 1.0), device)
}

/// Random cases per property: fewer on GPU backends, where every new shape compiles kernels
/// (on lavapipe, seconds each); the properties test this crate's arithmetic, which the CPU
/// run covers in full.
fn backend_cases(cpu: u32) -> u32 {
    match std::env::var("BURN_DEVICE").as_deref() {
        Ok(d) if d.starts_with("wgpu") || d.starts_with("cuda") => 4,
        _ => cpu,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: backend_cases(48), ..ProptestConfig::default() })]

    #[test]
    fn merge_then_unmerge_restores_the_weight(c in cases()) {
        let _rng = common::rng_lock();
        let device = Device::default();
        let lora = adapted(&c, &device);
        let before = weight(&lora.model);
        let merged = lora.merge();
        // W' / factor − s·A·B rounds at the magnitude of W + s·A·B, which a large update (small
        // `d_in`, large scaling) puts well above the base's: the error is measured against
        // max(1, max |W| + max |s·A·B|).
        let (a, b) = merged.factors()["layer"].clone();
        let update = max_abs_update(&values(a), &values(b), c.d_in, c.r, c.d_out) * scaling(&c);
        let base_max = values(before.clone()).iter().fold(0f32, |m, v| m.max(v.abs()));
        let after = weight(&merged.unmerge().unwrap().model);
        let tol = if c.dora { 2e-5 } else { 1e-5 };
        let d = rel_diff(after, before) * base_max.max(1.0) / (base_max + update).max(1.0);
        prop_assert!(d <= tol, "{c:?}: error {d} relative to max |W| + max |s·A·B|");
    }

    #[test]
    fn factored_weight_space_and_merged_paths_agree(c in cases()) {
        let _rng = common::rng_lock();
        let device = Device::default();
        let lora = adapted(&c, &device);
        let x = input(&c, &device);
        // The factored DoRA norm loses precision on a column of W + s·A·B that nearly cancels.
        let dora_conditioning = {
            let p = peft_core::io::read_params(&lora.model, |p| p.starts_with("layer.weight"));
            let v = |k: &str| values(p[k].clone());
            conditioning(&v("layer.weight"), &v("layer.weight.lora.a"), &v("layer.weight.lora.b"), &c)
        };
        let factored_out = lora.model.layer.forward(x.clone()).into_data();
        // The same base and adapter on burn's own Linear: the weight-space path.
        let dir = tempfile::tempdir().unwrap();
        lora.save(dir.path()).unwrap();
        let mut base = peft_core::io::read_params(&lora.model, |p| p == "layer.weight" || p == "layer.bias");
        if !c.bias {
            base.remove("layer.bias");
        }
        let burn_model: OneBurn =
            peft_core::io::replace_params(burn_linear(c.d_in, c.d_out, c.bias, &device), base).unwrap();
        let on_burn = LoraModel::load(burn_model, dir.path(), &InjectOptions::default()).unwrap();
        let weight_space_out = on_burn.model.layer.forward(x.clone()).into_data();
        let merged_out = lora.merge_and_unload().layer.forward(x).into_data();
        let d1 = rel_diff(weight_space_out, factored_out.clone());
        let d2 = rel_diff(merged_out, factored_out);
        let tol = 1e-5 * if c.dora { dora_conditioning.max(1.0) } else { 1.0 };
        prop_assert!(d1 <= tol && d2 <= tol, "{c:?}: weight-space {d1}, merged {d2}, tolerance {tol}");
    }

    #[test]
    fn save_then_load_is_the_identity(c in cases()) {
        let _rng = common::rng_lock();
        let device = Device::default();
        let lora = adapted(&c, &device);
        let dir = tempfile::tempdir().unwrap();
        lora.save(dir.path()).unwrap();
        device.seed(c.seed);
        let base = factored(c.d_in, c.d_out, c.bias, &device);
        let again = LoraModel::load(base, dir.path(), &InjectOptions::default()).unwrap();
        prop_assert_eq!(again.config().to_json(), lora.config().to_json());
        let (a, b) = (lora.adapter_tensors().unwrap(), again.adapter_tensors().unwrap());
        prop_assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in a {
            prop_assert!(values(v) == values(b[&k].clone()), "{k} differs");
        }
    }

    #[test]
    fn the_state_dict_merge_equals_merging_the_model(c in cases()) {
        let _rng = common::rng_lock();
        let device = Device::default();
        let lora = adapted(&c, &device);
        let file_tensors = lora.adapter_tensors().unwrap();
        let config = lora.config().to_json();
        let base = peft_core::io::transpose(&weight(&lora.model)).unwrap();
        let header = BTreeMap::from([(
            "layer.weight".to_string(),
            TensorInfo { dtype: "F32".into(), shape: vec![c.d_out, c.d_in] },
        )]);
        let plan = peft_lora::Lora.plan_merge(&config, file_tensors, &header).unwrap();
        prop_assert_eq!(plan.len(), 1);
        let merged_file = plan["layer.weight"].apply(values(base), &[c.d_out, c.d_in]).unwrap();
        let merged_model = weight(&lora.merge_and_unload());
        let expected = peft_core::io::transpose(&merged_model).unwrap();
        let d = rel_diff(TensorData::new(merged_file, [c.d_out, c.d_in]), expected);
        prop_assert!(d <= 1e-5, "{c:?}: relative error {d}");
    }
}
