//! End-to-end training: only the adapters learn, the loss falls, the saved adapter reloads with
//! identical outputs, and merge / unload / disable behave.

#![allow(clippy::unwrap_used)]

mod common;

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::*;
use peft_core::TargetModules;
use peft_lora::{InjectOptions, LoraAdapter, LoraConfig, LoraInit, LoraModel};

fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let ids: Vec<i64> = (0..16).map(|i| (i * 5 + 3) % 32).collect();
    let x = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [16]), device).reshape([2, 8]);
    let y: Vec<i64> = ids.iter().map(|i| (i + 1) % 32).collect();
    (x, Tensor::from_data(TensorData::new(y, [16]), device))
}

fn loss(model: &TinyModel, x: Tensor<2, Int>, y: Tensor<1, Int>) -> Tensor<1> {
    let logits = model.forward(x).reshape([16, 32]);
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, y)
}

fn adapter(p: &Param<Tensor<2>>) -> &LoraAdapter {
    p.reparameterization::<LoraAdapter>().unwrap()
}

#[test]
fn only_adapters_train_and_the_loss_falls() {
    let device = device();
    let base = TinyModel::pretrained(&device);
    let config = LoraConfig::new(TargetModules::names([
        "q_proj",
        "v_proj",
        "o_proj",
        "embed_tokens",
    ]))
    .with_r(4)
    .with_alpha(8.0)
    .with_dropout(0.05);
    let mut lora = LoraModel::inject(base.clone(), &config, &InjectOptions::default()).unwrap();
    let counts = lora.param_counts();
    // q: 4·(16+16), v: 4·(16+8), o: 4·(8+16), per layer; embedding 4·(32+16).
    assert_eq!(counts.trainable, 3 * (128 + 96 + 96) + 192);
    assert_eq!(counts.total, base.num_params() + counts.trainable);
    assert!(
        lora.summary().contains("trainable params: 1,152"),
        "{}",
        lora.summary()
    );

    let (x, y) = batch(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let first = loss(&lora.model, x.clone(), y.clone()).into_scalar::<f32>();
    let mut last = first;
    for _ in 0..30 {
        let l = loss(&lora.model, x.clone(), y.clone());
        last = l.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(l.backward(), &lora.model);
        lora.model = optim.step(1e-2, lora.model, grads);
    }
    assert!(last < first * 0.8, "loss did not fall: {first} -> {last}");

    // The base weights did not move; the adapters did.
    let before = peft_core::io::read_params(&base, |_| true);
    let after = peft_core::io::read_params(&lora.model, |p| !p.contains(".lora."));
    for (k, v) in &before {
        assert_eq!(max_abs_diff(after[k].clone(), v), 0.0, "{k} changed");
    }
    assert!(
        adapter(&lora.model.layers[0].q_proj.weight)
            .b
            .val()
            .abs()
            .max()
            .into_scalar::<f32>()
            > 0.0
    );

    // Save, reload onto a fresh base: identical outputs (in inference mode: no dropout).
    let dir = tempfile::tempdir().unwrap();
    lora.save(dir.path()).unwrap();
    let trained = lora.model.valid();
    let reloaded = LoraModel::load(base.valid(), dir.path(), &InjectOptions::default()).unwrap();
    let xv = batch(&Device::default()).0;
    let a = trained.forward(xv.clone()).into_data();
    let b = reloaded.model.forward(xv.clone()).into_data();
    assert_eq!(max_abs_diff(a.clone(), &b), 0.0);

    // Merged logits equal unmerged ones; unload gives the base back exactly.
    let merged = reloaded
        .clone()
        .merge_and_unload()
        .forward(xv.clone())
        .into_data();
    // Relative to the outputs' scale: merging reassociates f32 sums (x·(W + s·A·B) against
    // x·W + s·(x·A)·B), and on GPU backends the data is random, so an absolute 1e-5 was flaky.
    let scale = a.iter::<f32>().fold(1f32, |m, v| m.max(v.abs()));
    assert_close("merged vs unmerged", merged, &a, 1e-5 * scale);
    let unloaded = reloaded.unload();
    let base_out = base.valid().forward(xv.clone()).into_data();
    assert_eq!(
        max_abs_diff(unloaded.forward(xv).into_data(), &base_out),
        0.0
    );
}

#[test]
fn modules_to_save_train_and_round_trip() {
    let device = device();
    let base = TinyModel::pretrained(&device);
    let mut config = LoraConfig::new(TargetModules::names(["q_proj"])).with_r(2);
    config.targets.modules_to_save = Some(vec!["lm_head".into()]);
    let mut lora = LoraModel::inject(base.clone(), &config, &InjectOptions::default()).unwrap();
    assert_eq!(lora.param_counts().trainable, 3 * 2 * 32 + 16 * 32);
    let (x, y) = batch(&device);
    let mut optim = AdamWConfig::new().init();
    for _ in 0..3 {
        let grads = GradientsParams::from_grads(
            loss(&lora.model, x.clone(), y.clone()).backward(),
            &lora.model,
        );
        lora.model = optim.step(1e-2, lora.model, grads);
    }
    let head = |m: &TinyModel| m.lm_head.weight.val().into_data();
    assert!(
        max_abs_diff(head(&lora.model), &head(&base)) > 0.0,
        "lm_head should train"
    );
    let dir = tempfile::tempdir().unwrap();
    lora.save(dir.path()).unwrap();
    let keys =
        peft_core::io::read_safetensors(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        keys["base_model.model.lm_head.weight"].shape().as_slice(),
        [32, 16]
    );
    let reloaded = LoraModel::load(base, dir.path(), &InjectOptions::default()).unwrap();
    assert_eq!(max_abs_diff(head(&reloaded.model), &head(&lora.model)), 0.0);
}

#[test]
fn initialisation_follows_peft() {
    let device = Device::default();
    for init in [LoraInit::Default, LoraInit::Gaussian] {
        let config = LoraConfig::new(TargetModules::names(["q_proj", "embed_tokens"]))
            .with_r(8)
            .with_init(init);
        let lora =
            LoraModel::inject(TinyModel::new(&device), &config, &InjectOptions::default()).unwrap();
        let q = adapter(&lora.model.layers[0].q_proj.weight);
        assert_eq!(q.a.val().dims(), [16, 8]);
        assert_eq!(
            q.b.val().abs().max().into_scalar::<f32>(),
            0.0,
            "B starts at zero"
        );
        let a_max = q.a.val().abs().max().into_scalar::<f32>();
        match init {
            LoraInit::Default => assert!(
                a_max <= 0.25 && a_max > 0.1,
                "kaiming bound 1/sqrt(16): {a_max}"
            ),
            _ => assert!(a_max > 0.0 && a_max < 0.125 * 6.0, "N(0, 1/8): {a_max}"),
        }
        let e = adapter(&lora.model.embed_tokens.weight);
        assert_eq!(
            e.a.val().abs().max().into_scalar::<f32>(),
            0.0,
            "embedding A starts at zero"
        );
        assert!(
            e.b.val().abs().max().into_scalar::<f32>() > 0.5,
            "embedding B ~ N(0, 1)"
        );
    }
}

#[test]
fn dropout_applies_to_the_adapter_input_in_training_only() {
    let device = device();
    let config = LoraConfig::new(TargetModules::names(["q_proj"]))
        .with_r(4)
        .with_init(LoraInit::Random)
        .with_dropout(0.5);
    let lora = LoraModel::inject(
        TinyModel::pretrained(&device),
        &config,
        &InjectOptions::default(),
    )
    .unwrap();
    let (x, _) = batch(&device);
    let a = lora.model.forward(x.clone()).into_data();
    let b = lora.model.forward(x.clone()).into_data();
    assert!(
        max_abs_diff(a, &b) > 0.0,
        "training forwards draw different dropout masks"
    );
    let eval = lora.model.valid();
    let (xv, _) = batch(&Device::default());
    let c = eval.forward(xv.clone()).into_data();
    assert_eq!(
        max_abs_diff(eval.forward(xv).into_data(), &c),
        0.0,
        "no dropout in inference"
    );
    // Without dropout the same adapter gives the inference output.
    let no_drop = LoraModel::inject(
        TinyModel::pretrained(&device),
        &config.clone().with_dropout(0.0),
        &InjectOptions::default(),
    )
    .unwrap();
    let factors = peft_core::io::read_params(&lora.model, |p| p.contains(".lora."));
    let model = peft_core::io::replace_params(no_drop.model, factors)
        .unwrap()
        .valid();
    assert_close(
        "valid() == no dropout",
        model.forward(batch(&Device::default()).0).into_data(),
        &c,
        1e-6,
    );
}

#[test]
fn all_linear_targets_every_linear_but_the_head() {
    let device = Device::default();
    let config = LoraConfig::new(TargetModules::all_linear());
    let lora =
        LoraModel::inject(TinyModel::new(&device), &config, &InjectOptions::default()).unwrap();
    let names: Vec<&str> = lora
        .targets()
        .iter()
        .map(|t| t.target.name.as_str())
        .collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(!names.contains(&"lm_head") && !names.contains(&"embed_tokens"));
    let options = InjectOptions::default().with_output_head("layers.2.o_proj");
    let lora = LoraModel::inject(TinyModel::new(&device), &config, &options).unwrap();
    let names: Vec<&str> = lora
        .targets()
        .iter()
        .map(|t| t.target.name.as_str())
        .collect();
    assert!(
        names.contains(&"lm_head") && !names.contains(&"layers.2.o_proj"),
        "{names:?}"
    );
}

#[test]
fn injecting_into_a_clone_leaves_a_lazily_initialized_original_trainable() {
    let device = device();
    let _rng = rng_lock();
    let base = TinyModel::new(&device);
    assert!(
        !base.layers[0].q_proj.weight.is_initialized(),
        "the test needs burn's lazy parameters"
    );
    let config = LoraConfig::new(TargetModules::names(["q_proj"])).with_r(2);
    let lora = LoraModel::inject(base.clone(), &config, &InjectOptions::default()).unwrap();

    // The original trains in full, the layers the clone adapted included.
    let (x, y) = batch(&device);
    let grads = loss(&base, x.clone(), y.clone()).backward();
    for (name, w) in [
        ("q_proj", &base.layers[0].q_proj.weight),
        ("k_proj", &base.layers[0].k_proj.weight),
        ("embed_tokens", &base.embed_tokens.weight),
    ] {
        assert!(w.val().grad(&grads).is_some(), "{name} got no gradient");
    }
    // The injected clone trains its adapters only.
    let grads = loss(&lora.model, x, y).backward();
    let q = &lora.model.layers[0].q_proj.weight;
    assert!(
        q.base().grad(&grads).is_none(),
        "the clone's base weight trains"
    );
    assert!(adapter(q).b.val().grad(&grads).is_some());
}
