//! One adapted Linear layer (d = 1024, 2048 tokens, r = 16), forward and forward+backward:
//! the frozen base layer, peft-rs's factored LoRA and LoRA-FA (A frozen), Bone/MiSS (r = 64,
//! default and bat), and burn's built-in `apply_lora` (weight space); and merging each adapter
//! into the base weight. Merged adapters cost exactly the base layer.
//!
//! Run: `cargo xtask bench criterion layer` (the default backend; `BURN_DEVICE` picks another).

use burn::module::{Lora, Module};
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use peft_bone::{BoneConfig, BoneMode, BoneModel};
use peft_core::nn::InitFactored;
use peft_core::{KeyMap, TargetModules};
use peft_lora::{InjectOptions, LoraConfig, LoraModel};

const D: usize = 1024;
const TOKENS: usize = 2048;
const R: usize = 16;

#[derive(Module, Debug)]
struct Factored {
    layer: peft_core::nn::Linear,
}

#[derive(Module, Debug)]
struct Dense {
    layer: burn::nn::Linear,
}

fn bench_layer(c: &mut Criterion) {
    let device = Device::default().autodiff();
    let x = Tensor::<2>::random([TOKENS, D], Distribution::Default, &device);

    let base = Dense {
        layer: LinearConfig::new(D, D).init(&device),
    }
    .freeze();
    let config = LoraConfig::new(TargetModules::names(["layer"]))
        .with_r(R)
        .with_alpha(R as f64);
    let lora = |device: &Device| {
        LoraModel::inject(
            Factored {
                layer: LinearConfig::new(D, D).init_factored(device),
            },
            &config,
            &InjectOptions::default(),
        )
        .expect("inject")
    };
    let factored = lora(&device).model;
    // LoRA-FA: the same adapter with A frozen.
    let lorafa = peft_lorafa::freeze_a(lora(&device)).model;
    // Bone/MiSS at r = 64 (PEFT's default), default and bat modes.
    let bone = |mode, device: &Device| {
        let config = BoneConfig::new(TargetModules::names(["layer"]))
            .with_r(64)
            .with_mode(mode)
            .with_random_init(true);
        BoneModel::inject(
            Factored {
                layer: LinearConfig::new(D, D).init_factored(device),
            },
            &config,
            &KeyMap::identity(),
        )
        .expect("inject")
    };
    let (bone_default, bone_bat) = (
        bone(BoneMode::Default, &device).model,
        bone(BoneMode::Bat, &device).model,
    );
    let burn_lora = Dense {
        layer: LinearConfig::new(D, D).init(&device),
    }
    .apply_lora(Lora::new(R, R as f64));

    let mut group = c.benchmark_group(format!("linear_d{D}_t{TOKENS}_r{R}"));
    group.sample_size(20);
    // Times `$body` and waits for the device, so asynchronous backends are measured too.
    macro_rules! bench {
        ($name:expr, $device:expr, $body:expr) => {
            group.bench_function($name, |b| {
                b.iter(|| {
                    let _ = $body;
                    $device.sync().expect("device sync")
                })
            })
        };
    }
    bench!("forward/base", device, base.layer.forward(x.clone()));
    bench!(
        "forward/peft_factored",
        device,
        factored.layer.forward(x.clone())
    );
    bench!(
        "forward/burn_apply_lora",
        device,
        burn_lora.layer.forward(x.clone())
    );
    // Inference: `valid()` modules (no autodiff) on plain tensors; the factored layer still adds
    // `s·(x·A)·B`, burn's path composes `W + s·A·B`.
    let plain = Device::default();
    let xi = Tensor::<2>::random([TOKENS, D], Distribution::Default, &plain);
    let (base_i, factored_i, burn_i) = (base.valid(), factored.valid(), burn_lora.valid());
    let (bone_default_i, bone_bat_i) = (bone_default.valid(), bone_bat.valid());
    bench!(
        "inference/peft_bone_default_r64",
        plain,
        bone_default_i.layer.forward(xi.clone())
    );
    bench!(
        "inference/peft_bone_bat_r64",
        plain,
        bone_bat_i.layer.forward(xi.clone())
    );
    bench!("inference/base", plain, base_i.layer.forward(xi.clone()));
    bench!(
        "inference/peft_factored",
        plain,
        factored_i.layer.forward(xi.clone())
    );
    bench!(
        "inference/burn_apply_lora",
        plain,
        burn_i.layer.forward(xi.clone())
    );
    // Train step: forward and backward to the input (every base weight frozen).
    let xg = x.clone().require_grad();
    bench!(
        "train_step/base",
        device,
        base.layer.forward(xg.clone()).sum().backward()
    );
    bench!(
        "train_step/peft_factored",
        device,
        factored.layer.forward(xg.clone()).sum().backward()
    );
    bench!(
        "train_step/peft_lorafa",
        device,
        lorafa.layer.forward(xg.clone()).sum().backward()
    );
    bench!(
        "train_step/peft_bone_default_r64",
        device,
        bone_default.layer.forward(xg.clone()).sum().backward()
    );
    bench!(
        "train_step/peft_bone_bat_r64",
        device,
        bone_bat.layer.forward(xg.clone()).sum().backward()
    );
    bench!(
        "train_step/burn_apply_lora",
        device,
        burn_lora.layer.forward(xg.clone()).sum().backward()
    );
    // Merge on plain tensors: LoRA composes `W + s·A·B`; Bone default adds the tiled block; bat
    // composes `W + W·B` per tile. (Each iteration also clones the adapted model: cheap handles.)
    let lora_plain = lora(&plain);
    bench!(
        "merge/peft_lora",
        plain,
        lora_plain.clone().merge_and_unload()
    );
    let (bone_default_p, bone_bat_p) =
        (bone(BoneMode::Default, &plain), bone(BoneMode::Bat, &plain));
    bench!(
        "merge/peft_bone_default_r64",
        plain,
        bone_default_p.clone().merge_and_unload()
    );
    bench!(
        "merge/peft_bone_bat_r64",
        plain,
        bone_bat_p.clone().merge_and_unload()
    );
    group.finish();
}

criterion_group!(benches, bench_layer);
criterion_main!(benches);
