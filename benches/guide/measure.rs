//! One row of the method comparison: build an OPT model with random weights, attach a method,
//! and measure parameters, adapter file size, training step time, peak training memory and
//! inference latency (unmerged and merged).

use std::time::Instant;

use burn::module::{Lora, Module, ParamGroup};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Int, Tensor};
use peft_bone::{BoneConfig, BoneMode, BoneModel};
use peft_core::{KeyMap, TargetModules};
use peft_lora::{InjectOptions, LoraConfig, LoraModel};
use peft_lorafa::LoraFaOptimizerConfig;
use peft_models::{CausalLm, OptConfig, OptForCausalLm};
use serde_json::{Value, json};

use crate::ALLOC;

/// A method row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every weight frozen; the step still back-propagates to the first block's input (the cost
    /// any adapter on the first layer pays anyway).
    FrozenBase,
    /// Every parameter trains.
    Full,
    /// LoRA r16 α16 on q,v (PEFT's OPT default targets).
    LoraQv,
    /// LoRA r16 α16 on every Linear but the head.
    LoraAll,
    /// LoRA-FA r16 α16 on q,v.
    LoraFaQv,
    /// DoRA r16 α16 on q,v (LoRA plus a magnitude per output).
    DoraQv,
    /// MiSS/Bone default r64 on q,v.
    BoneDefault,
    /// MiSS/Bone bat r64 on q,v.
    BoneBat,
    /// burn's built-in `apply_lora` (weight space) r16 α16 on q,v.
    BurnLora,
}

impl Method {
    /// Every row, in table order.
    pub const ALL: [Method; 9] = [
        Method::FrozenBase,
        Method::Full,
        Method::LoraQv,
        Method::LoraAll,
        Method::LoraFaQv,
        Method::DoraQv,
        Method::BoneDefault,
        Method::BoneBat,
        Method::BurnLora,
    ];

    /// Row label.
    pub fn label(self) -> &'static str {
        match self {
            Method::FrozenBase => "frozen base (grads to inputs)",
            Method::Full => "full fine-tuning",
            Method::LoraQv => "LoRA r16 q,v",
            Method::LoraAll => "LoRA r16 all-linear",
            Method::LoraFaQv => "LoRA-FA r16 q,v",
            Method::DoraQv => "DoRA r16 q,v",
            Method::BoneDefault => "MiSS/Bone default r64 q,v",
            Method::BoneBat => "MiSS/Bone bat r64 q,v",
            Method::BurnLora => "burn apply_lora r16 q,v",
        }
    }

    /// Short name for `--methods`.
    pub fn key(self) -> &'static str {
        match self {
            Method::FrozenBase => "frozen",
            Method::Full => "full",
            Method::LoraQv => "lora-qv",
            Method::LoraAll => "lora-all",
            Method::LoraFaQv => "lorafa-qv",
            Method::DoraQv => "dora-qv",
            Method::BoneDefault => "bone",
            Method::BoneBat => "bone-bat",
            Method::BurnLora => "burn-lora",
        }
    }
}

/// Run settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sequences per training batch.
    pub batch: usize,
    /// Tokens per training sequence (and prompt length).
    pub seq: usize,
    /// Timed training steps (after one warm-up step).
    pub steps: usize,
    /// Timed inference repetitions.
    pub reps: usize,
}

impl Settings {
    /// The default settings for a model (`125m`, `350m`, `1.3b`), or the quick ones.
    ///
    /// OPT-1.3b trains one sequence per step so that the default run stays well under an hour on
    /// two cores.
    pub fn for_model(name: &str, quick: bool) -> Self {
        match (quick, name) {
            (true, _) => Self {
                batch: 1,
                seq: 64,
                steps: 1,
                reps: 2,
            },
            (false, "1.3b") => Self {
                batch: 1,
                seq: 256,
                steps: 2,
                reps: 3,
            },
            (false, _) => Self {
                batch: 4,
                seq: 256,
                steps: 3,
                reps: 5,
            },
        }
    }
}

/// Parameters of the model `config` builds.
pub fn total_params(config: &OptConfig) -> usize {
    config
        .init(&Device::default())
        .expect("valid OPT config")
        .num_params()
}

/// A model under one method: the trainable model and how to step, save and merge it.
enum Adapted {
    Full(OptForCausalLm),
    Lora(LoraModel<OptForCausalLm>),
    Bone(BoneModel<OptForCausalLm>),
}

impl Adapted {
    fn model(&self) -> &OptForCausalLm {
        match self {
            Adapted::Full(m) => m,
            Adapted::Lora(l) => &l.model,
            Adapted::Bone(b) => &b.model,
        }
    }
    fn set_model(&mut self, m: OptForCausalLm) {
        match self {
            Adapted::Full(x) => *x = m,
            Adapted::Lora(l) => l.model = m,
            Adapted::Bone(b) => b.model = m,
        }
    }
}

fn qv() -> TargetModules {
    TargetModules::names(["q_proj", "v_proj"])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn build(config: &OptConfig, method: Method, device: &Device) -> (Adapted, usize, usize) {
    let model = config.init(device).expect("valid OPT config");
    let total = model.num_params();
    let lora = |targets: TargetModules| LoraConfig::new(targets).with_r(16).with_alpha(16.0);
    let inject =
        |m, c: &LoraConfig| LoraModel::inject(m, c, &InjectOptions::default()).expect("inject");
    let bone = |mode| {
        BoneConfig::new(qv())
            .with_r(64)
            .with_mode(mode)
            .with_random_init(true)
    };
    match method {
        Method::FrozenBase => (Adapted::Full(model.no_grad()), 0, total),
        Method::Full => (Adapted::Full(model), total, total),
        Method::LoraQv => {
            let l = inject(model, &lora(qv()));
            let n = l.param_counts().trainable;
            (Adapted::Lora(l), n, total)
        }
        Method::DoraQv => {
            let l = inject(model, &lora(qv()).with_dora(true));
            let n = l.param_counts().trainable;
            (Adapted::Lora(l), n, total)
        }
        Method::LoraAll => {
            let l = inject(model, &lora(TargetModules::all_linear()));
            let n = l.param_counts().trainable;
            (Adapted::Lora(l), n, total)
        }
        Method::LoraFaQv => {
            let l = peft_lorafa::freeze_a(inject(model, &lora(qv())));
            // PEFT counts B only for LoRA-FA (A is frozen).
            let n = l
                .targets()
                .iter()
                .map(|t| t.r * t.target.weight_shape[1])
                .sum();
            (Adapted::Lora(l), n, total)
        }
        Method::BoneDefault | Method::BoneBat => {
            let mode = if method == Method::BoneBat {
                BoneMode::Bat
            } else {
                BoneMode::Default
            };
            let b = BoneModel::inject(model, &bone(mode), &KeyMap::identity()).expect("inject");
            let n = b.param_counts().trainable;
            (Adapted::Bone(b), n, total)
        }
        Method::BurnLora => {
            let paths: Vec<String> = (0..config.num_hidden_layers)
                .flat_map(|i| {
                    ["q_proj", "v_proj"]
                        .map(|p| format!("model.decoder.layers.{i}.self_attn.{p}.weight"))
                })
                .collect();
            let n = (config.num_hidden_layers * 2) * 16 * 2 * config.hidden_size;
            let m = model
                .apply_lora(Lora::new(16, 16.0).set_param_group(ParamGroup::from_paths(paths)));
            (Adapted::Full(m), n, total)
        }
    }
}

fn optimizer(method: Method, adapted: &Adapted) -> ModuleOptimizer {
    match (method, adapted) {
        (Method::LoraFaQv, Adapted::Lora(l)) => LoraFaOptimizerConfig::new()
            .init(l)
            .expect("LoRA-FA optimizer"),
        _ => AdamWConfig::new().init(),
    }
}

fn ids(batch: usize, seq: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<2>::random(
        [batch, seq],
        Distribution::Uniform(0.0, vocab as f64),
        device,
    )
    .int()
}

/// Measures one row; returns a JSON object.
pub fn measure(config: &OptConfig, method: Method, s: &Settings) -> Value {
    let device = Device::default().autodiff();
    let (mut adapted, trainable, total) = build(config, method, &device);
    let vocab = config.vocab_size;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = optimizer(method, &adapted);
    let mut step_times = Vec::new();
    let mut peak = 0usize;
    // The heap just before the step with the highest growth, and that step's absolute peak.
    let (mut heap_before, mut peak_heap) = (0usize, 0usize);
    for step in 0..=s.steps {
        let input = ids(s.batch, s.seq, vocab, &device);
        let targets = input.clone().reshape([s.batch * s.seq]);
        let before = ALLOC.current_usage();
        ALLOC.reset_peak_usage();
        let t0 = Instant::now();
        let model = adapted.model();
        let logits = if method == Method::FrozenBase {
            // Nothing trains: back-propagate to the first block's input instead.
            model.forward_embeds(model.embed(input).detach().require_grad())
        } else {
            model.forward(input)
        }
        .reshape([s.batch * s.seq, vocab]);
        let loss = loss_fn.forward(logits, targets);
        let grads = GradientsParams::from_grads(loss.backward(), adapted.model());
        let stepped = optim.step(1e-4, adapted.model().clone(), grads);
        adapted.set_model(stepped);
        device.sync().expect("device sync");
        let dt = t0.elapsed().as_secs_f64();
        let growth = ALLOC.peak_usage().saturating_sub(before);
        if growth >= peak {
            (peak, heap_before, peak_heap) = (growth, before, ALLOC.peak_usage());
        }
        if step > 0 {
            step_times.push(dt);
        }
    }
    drop(optim);
    // Adapter file size (full fine-tuning and burn's path: the whole model in f32).
    let dir = std::env::temp_dir().join(format!("peft-guide-{}", std::process::id()));
    let file_bytes = match &adapted {
        Adapted::Lora(l) => {
            l.save(&dir).expect("save");
            std::fs::metadata(dir.join("adapter_model.safetensors"))
                .map(|m| m.len())
                .unwrap_or(0)
        }
        Adapted::Bone(b) => {
            b.save(&dir).expect("save");
            std::fs::metadata(dir.join("adapter_model.safetensors"))
                .map(|m| m.len())
                .unwrap_or(0)
        }
        Adapted::Full(_) => (trainable * 4) as u64,
    };
    std::fs::remove_dir_all(&dir).ok();
    // Inference without autodiff: unmerged, then merged.
    let plain = Device::default();
    let time = |f: &dyn Fn()| {
        f();
        median(
            (0..s.reps)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    plain.sync().expect("device sync");
                    t0.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let prompt = ids(1, s.seq, vocab, &plain);
    let token = ids(1, 1, vocab, &plain);
    let unmerged = adapted.model().clone().valid();
    let (u_prompt, u_token) = (
        time(&|| drop(unmerged.forward(prompt.clone()))),
        time(&|| drop(unmerged.forward(token.clone()))),
    );
    let merged = match adapted {
        Adapted::Lora(l) => l.merge_and_unload(),
        Adapted::Bone(b) => b.merge_and_unload(),
        Adapted::Full(m) => m.materialize(),
    }
    .valid();
    let (m_prompt, m_token) = (
        time(&|| drop(merged.forward(prompt.clone()))),
        time(&|| drop(merged.forward(token.clone()))),
    );
    let step = median(step_times);
    json!({
        "key": method.key(),
        "method": method.label(),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable as f64 / total as f64,
        "file_bytes": file_bytes,
        "step_s": step,
        "tokens_per_s": (s.batch * s.seq) as f64 / step,
        "peak_step_bytes": peak,
        "heap_before_step_bytes": heap_before,
        "peak_heap_bytes": peak_heap,
        "prompt_unmerged_s": u_prompt,
        "prompt_merged_s": m_prompt,
        "token_unmerged_s": u_token,
        "token_merged_s": m_token,
    })
}
