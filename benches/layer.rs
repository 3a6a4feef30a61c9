//! One adapted Linear layer (d = 1024, 2048 tokens, r = 16), forward and forward+backward:
//! the frozen base layer, peft-rs's factored LoRA, and burn's built-in `apply_lora` (weight space).
//!
//! Run: `cargo xtask bench layer` (the default backend; `BURN_DEVICE` picks another).

use burn::module::{Lora, Module};
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use peft_core::TargetModules;
use peft_core::nn::InitFactored;
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
    let factored = LoraModel::inject(
        Factored {
            layer: LinearConfig::new(D, D).init_factored(&device),
        },
        &config,
        &InjectOptions::default(),
    )
    .expect("inject")
    .model;
    let burn_lora = Dense {
        layer: LinearConfig::new(D, D).init(&device),
    }
    .apply_lora(Lora::new(R, R as f64));

    let sync = |d: &Device| d.sync().expect("device sync");
    let mut group = c.benchmark_group(format!("linear_d{D}_t{TOKENS}_r{R}"));
    group.sample_size(20);
    group.bench_function("forward/base", |b| {
        b.iter(|| {
            let _ = base.layer.forward(x.clone());
            sync(&device)
        })
    });
    group.bench_function("forward/peft_factored", |b| {
        b.iter(|| {
            let _ = factored.layer.forward(x.clone());
            sync(&device)
        })
    });
    group.bench_function("forward/burn_apply_lora", |b| {
        b.iter(|| {
            let _ = burn_lora.layer.forward(x.clone());
            sync(&device)
        })
    });
    // Inference: valid() modules (no autodiff) on plain tensors; the factored layer folds the
    // adapter into one wider GEMM, burn's path composes W + s·A·B.
    let plain = Device::default();
    let xi = Tensor::<2>::random([TOKENS, D], Distribution::Default, &plain);
    let (base_i, factored_i, burn_i) = (base.valid(), factored.valid(), burn_lora.valid());
    group.bench_function("inference/base", |b| {
        b.iter(|| {
            let _ = base_i.layer.forward(xi.clone());
            sync(&plain)
        })
    });
    group.bench_function("inference/peft_factored", |b| {
        b.iter(|| {
            let _ = factored_i.layer.forward(xi.clone());
            sync(&plain)
        })
    });
    group.bench_function("inference/burn_apply_lora", |b| {
        b.iter(|| {
            let _ = burn_i.layer.forward(xi.clone());
            sync(&plain)
        })
    });
    let xg = x.clone().require_grad();
    group.bench_function("train_step/base", |b| {
        b.iter(|| {
            let _ = base.layer.forward(xg.clone()).sum().backward();
            sync(&device)
        })
    });
    group.bench_function("train_step/peft_factored", |b| {
        b.iter(|| {
            let _ = factored.layer.forward(xg.clone()).sum().backward();
            sync(&device)
        })
    });
    group.bench_function("train_step/burn_apply_lora", |b| {
        b.iter(|| {
            let _ = burn_lora.layer.forward(xg.clone()).sum().backward();
            sync(&device)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_layer);
criterion_main!(benches);
