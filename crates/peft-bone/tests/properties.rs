//! Properties of MiSS/Bone over random shapes, ranks and modes (`proptest`): merge then unmerge
//! restores `W`; save then load is the identity; in bat mode, a tile whose `I + B` is singular
//! makes `unmerge` an error that names it, never NaN weights. Bat's composed and factored paths
//! give the merged layer's output and the same gradients.
#![allow(clippy::unwrap_used)]

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use peft_bone::{BoneConfig, BoneError, BoneFormat, BoneMode, BoneModel};
use peft_core::nn::{InitFactored, Linear, LinearConfig};
use peft_core::{KeyMap, TargetModules};
use proptest::prelude::*;

#[derive(Module, Debug)]
struct One {
    layer: Linear,
}

#[derive(Debug, Clone)]
struct Case {
    r: usize,
    d_in: usize,
    d_out: usize,
    mode: BoneMode,
    seed: u64,
}

/// Shapes that every mode accepts: `r` and `mini_r` divide both sides in bat and mini mode.
fn cases() -> impl Strategy<Value = Case> {
    (1usize..5, 1usize..6, 1usize..6, 0usize..3, any::<u64>()).prop_map(|(r, a, b, mode, seed)| {
        Case {
            r,
            d_in: r * a,
            d_out: r * b,
            mode: match mode {
                0 => BoneMode::Default,
                1 => BoneMode::Bat,
                _ => BoneMode::Mini { mini_r: r },
            },
            seed,
        }
    })
}

fn values(d: TensorData) -> Vec<f32> {
    d.convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn weight(model: &One) -> Vec<f32> {
    values(
        peft_core::io::read_params(model, |p| p == "layer.weight")
            .remove("layer.weight")
            .unwrap(),
    )
}

fn base(c: &Case, device: &Device) -> One {
    device.seed(c.seed);
    One {
        layer: LinearConfig::new(c.d_in, c.d_out).init_factored(device),
    }
}

fn adapted(c: &Case, device: &Device) -> BoneModel<One> {
    adapted_as(c, BoneFormat::Miss, device)
}

fn adapted_as(c: &Case, format: BoneFormat, device: &Device) -> BoneModel<One> {
    let config = BoneConfig::new(TargetModules::names(["layer"]))
        .with_r(c.r)
        .with_mode(c.mode)
        .with_format(format)
        .with_random_init(true);
    BoneModel::inject(base(c, device), &config, &KeyMap::identity()).unwrap()
}

/// Max |a − b| relative to max(1, max |b|).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// `max_t ‖(I + B_t)⁻¹‖_∞` over the `r × r` tiles of a bat block (f64 Gauss-Jordan with
/// partial pivoting); infinite when a tile is singular.
fn max_inverse_norm(blocks: &[f32], r: usize) -> f64 {
    blocks
        .chunks(r * r)
        .map(|tile| {
            let eye = |k: usize| if k / r == k % r { 1.0 } else { 0.0 };
            let mut m: Vec<f64> = (0..r * r).map(|k| f64::from(tile[k]) + eye(k)).collect();
            let mut inv: Vec<f64> = (0..r * r).map(eye).collect();
            for col in 0..r {
                let p = (col..r)
                    .max_by(|&i, &j| m[i * r + col].abs().total_cmp(&m[j * r + col].abs()))
                    .unwrap();
                if m[p * r + col] == 0.0 {
                    return f64::INFINITY;
                }
                for k in 0..r {
                    m.swap(col * r + k, p * r + k);
                    inv.swap(col * r + k, p * r + k);
                }
                let pivot = m[col * r + col];
                for k in 0..r {
                    m[col * r + k] /= pivot;
                    inv[col * r + k] /= pivot;
                }
                for row in (0..r).filter(|&row| row != col) {
                    let f = m[row * r + col];
                    for k in 0..r {
                        m[row * r + k] -= f * m[col * r + k];
                        inv[row * r + k] -= f * inv[col * r + k];
                    }
                }
            }
            inv.chunks(r)
                .map(|row| row.iter().map(|v| v.abs()).sum::<f64>())
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
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
        let device = Device::default();
        let bone = adapted(&c, &device);
        let before = weight(&bone.model);
        let blocks: Vec<f32> = bone
            .adapter_tensors(BoneFormat::Miss)
            .unwrap()
            .into_values()
            .flat_map(values)
            .collect();
        let merged = bone.merge();
        let merged_weight = weight(&merged.clone().into_model());
        match merged.unmerge() {
            Ok(back) => {
                // Bat restores W = (W' − B)·(I + B)⁻¹ from the f32 merged weight W', whose
                // rounding ‖(I + B)⁻¹‖ amplifies: a nearly singular tile cannot give W back to
                // 1e-4. The bound scales with that norm (1e-5 ≫ f32's 6e-8 per rounding).
                let amplification = match c.mode {
                    BoneMode::Bat => {
                        let w_max = merged_weight.iter().fold(1f64, |m, v| m.max(v.abs() as f64));
                        max_inverse_norm(&blocks, c.r) * w_max
                    }
                    _ => 0.0,
                };
                let tolerance = 1e-4f64.max(1e-5 * amplification);
                let restored = weight(&back.model);
                let d = rel_diff(&restored, &before);
                prop_assert!(
                    f64::from(d) <= tolerance,
                    "{c:?}: relative error {d} (bound {tolerance})"
                );
                // Merging the restored weight gives W' again (the backward error), at any
                // conditioning.
                let again = weight(&back.merge().into_model());
                let d = rel_diff(&again, &merged_weight);
                prop_assert!(d <= 1e-5, "{c:?}: merged again differs by {d}");
            }
            // A random bat block can be (nearly) singular; then unmerge must say so.
            Err(BoneError::Singular { .. }) => prop_assert!(matches!(c.mode, BoneMode::Bat)),
            Err(e) => prop_assert!(false, "{c:?}: {e}"),
        }
    }

    #[test]
    fn save_then_load_is_the_identity(c in cases(), bone_format in any::<bool>()) {
        let device = Device::default();
        let format = if bone_format { BoneFormat::Bone } else { BoneFormat::Miss };
        // Mini mode exists only in MiSS files.
        let format = if matches!(c.mode, BoneMode::Mini { .. }) { BoneFormat::Miss } else { format };
        let bone = adapted_as(&c, format, &device);
        let dir = tempfile::tempdir().unwrap();
        bone.save(dir.path()).unwrap();
        let again = BoneModel::load(base(&c, &device), dir.path(), &KeyMap::identity()).unwrap();
        let (a, b) = (bone.adapter_tensors(format).unwrap(), again.adapter_tensors(format).unwrap());
        prop_assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in a {
            prop_assert!(values(v) == values(b[&k].clone()), "{k} differs");
        }
    }

    #[test]
    fn singular_bat_tiles_are_errors_never_nan(
        r in 1usize..5,
        tiles in 1usize..4,
        d_in_tiles in 1usize..4,
        singular in any::<prop::sample::Index>(),
        rank_one in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let device = Device::default();
        let c = Case { r, d_in: r * d_in_tiles, d_out: r * tiles, mode: BoneMode::Bat, seed };
        let bone = adapted(&c, &device);
        let dir = tempfile::tempdir().unwrap();
        bone.save(dir.path()).unwrap();
        // Tile `t` of the block: I + B_t = 0, or the rank-one u·vᵀ (singular for r ≥ 2).
        let t = singular.index(tiles);
        let path = dir.path().join(peft_core::io::WEIGHTS_NAME);
        let mut tensors = peft_core::io::read_safetensors(&path).unwrap();
        let (key, block) = tensors.iter_mut().next().unwrap();
        let mut b = values(block.clone());
        for i in 0..r {
            for j in 0..r {
                let one_minus_i = if rank_one { (i + 1) as f32 * (j + 2) as f32 / 8.0 } else { 0.0 };
                b[t * r * r + i * r + j] = one_minus_i - if i == j { 1.0 } else { 0.0 };
            }
        }
        let key = key.clone();
        tensors.insert(key, TensorData::new(b, [tiles, r, r]));
        peft_core::io::write_safetensors(&path, &tensors).unwrap();
        let loaded = BoneModel::load(base(&c, &device), dir.path(), &KeyMap::identity()).unwrap();
        let merged = loaded.merge();
        prop_assert!(weight(&merged.clone().into_model()).iter().all(|v| v.is_finite()));
        match merged.unmerge() {
            Err(BoneError::Singular { module, tile }) => {
                prop_assert_eq!(module, "layer");
                prop_assert_eq!(tile, t);
            }
            Err(e) => prop_assert!(false, "{e}"),
            Ok(back) => {
                // Only a rank-one tile of width 1 (I + B = u·v ≠ 0) is invertible.
                prop_assert!(rank_one && r == 1, "tile {t} of {tiles} (r {r}) was not refused");
                prop_assert!(weight(&back.model).iter().all(|v| v.is_finite()));
            }
        }
    }
}

/// Bat mode runs composed (`x·(W + ΔW)`) for many tokens and factored (`x·W + x·ΔW`, ΔW never
/// composed) for few (`bat_runs_factored`): both give the merged layer's output, which differs
/// from the base's. The factored path runs on chunks of three tokens (and the last of one), so
/// that its per-token reshapes are exercised, with two input blocks and three output blocks.
#[test]
fn bat_forward_composed_and_factored_equal_the_merged_layer() {
    use burn::tensor::{Distribution, Tensor};
    let device = Device::default();
    let c = Case {
        r: 8,
        d_in: 16,
        d_out: 24,
        mode: BoneMode::Bat,
        seed: 7,
    };
    let bone = adapted(&c, &device);
    let (tokens, chunk) = (64, 3);
    assert!(!peft_bone::bat_runs_factored(tokens, c.r));
    assert!(peft_bone::bat_runs_factored(chunk, c.r));
    let x = Tensor::<2>::random([tokens, c.d_in], Distribution::Default, &device);
    let composed = values(bone.model.layer.forward(x.clone()).into_data());
    let factored: Vec<f32> = (0..tokens)
        .step_by(chunk)
        .flat_map(|t| {
            values(
                bone.model
                    .layer
                    .forward(x.clone().narrow(0, t, chunk.min(tokens - t)))
                    .into_data(),
            )
        })
        .collect();
    let plain = values(base(&c, &device).layer.forward(x.clone()).into_data());
    let merged = values(bone.merge().into_model().layer.forward(x).into_data());
    assert!(rel_diff(&composed, &merged) <= 1e-5, "composed");
    assert!(rel_diff(&factored, &merged) <= 1e-5, "factored");
    assert!(
        rel_diff(&plain, &merged) > 1e-3,
        "the adapter changes the output"
    );
}

/// Bat's block gets the same gradient through the composed weight (`x·(W + ΔW)`, the training
/// step's path from r tokens on) as through the factored path (`x·W + x·ΔW` without ΔW), two
/// formulations that share no op after the block; the input's gradient too. Two input blocks,
/// three output blocks, so that a tile put in the wrong place changes both.
#[test]
fn bat_block_gradient_composed_equals_factored() {
    use burn::module::{Param, Reparameterization};
    use burn::tensor::{Distribution, Tensor};
    let device = Device::default().autodiff();
    let (r, d_in, d_out, tokens) = (8, 16, 24, 5);
    let w = Tensor::<2>::random([d_in, d_out], Distribution::Default, &device);
    let block = Tensor::<3>::random([d_out / r, r, r], Distribution::Default, &device);
    let adapter = peft_bone::BoneAdapter::new(
        Param::from_tensor(block.require_grad()),
        r,
        BoneMode::Bat,
        0.0,
        peft_core::AdapterSwitch::default(),
    );
    let xs = Tensor::<2>::random([tokens, d_in], Distribution::Default, &device);
    let up = Tensor::<2>::random([tokens, d_out], Distribution::Default, &device);
    let grads_of = |composed: bool| {
        let x = xs.clone().require_grad();
        let y = if composed {
            x.clone().matmul(adapter.apply(w.clone()))
        } else {
            x.clone().matmul(w.clone()) + adapter.bat_delta_factored(x.clone(), &w)
        };
        let grads = (y * up.clone()).sum().backward();
        let block = adapter.block.val().grad(&grads).unwrap().into_data();
        (values(block), values(x.grad(&grads).unwrap().into_data()))
    };
    let (block_c, x_c) = grads_of(true);
    let (block_f, x_f) = grads_of(false);
    assert!(rel_diff(&block_c, &block_f) <= 1e-5, "block gradient");
    assert!(rel_diff(&x_c, &x_f) <= 1e-5, "input gradient");
    assert!(
        block_c.iter().any(|g| g.abs() > 1e-3),
        "a gradient reaches the block"
    );
}
