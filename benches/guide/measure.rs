//! The rows of the method comparison: one OPT model with random weights shared by every row,
//! each row a method attached to it, measured in rounds (a training step of every row, then the
//! next round) so that a change in the machine's load touches every row alike.

use std::time::Instant;

use burn::module::{Lora, Module, ParamGroup};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Int, Tensor};
use peft_bone::{BoneConfig, BoneMode, BoneModel};
use peft_core::packed::PackedWeights;
use peft_core::{KeyMap, TargetModules};
use peft_lora::{InjectOptions, LoraConfig, LoraModel};
use peft_lorafa::LoraFaOptimizerConfig;
use peft_models::{CausalLm, OptConfig, OptForCausalLm};
use peft_train::FusedAdamW;
use peft_train::step::{HEAD_CHUNK_ELEMENTS, head_loss_backward};
use serde_json::{Value, json};

use peft_benches::Spread;

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

/// How long each side's call waits after the other's by default (`--settle-ms`): PyTorch's
/// OpenMP threads (libgomp, its default wait policy) spin for about 10 ms after a parallel call
/// before they sleep, and a call of ours started in that time ran beside them (an fc1 product of
/// 256 tokens: 7.9 ms against 3.3 ms with the worker's threads sleeping at once, on the 2-core
/// Zen 5 VM). Rayon's idle threads (ours) yield a few dozen times before they sleep; the wait
/// is kept on both sides.
pub const SETTLE_MS: u64 = 50;

/// Run settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sequences per training batch.
    pub batch: usize,
    /// Tokens per training sequence (and prompt length).
    pub seq: usize,
    /// Timed training steps per row (after one warm-up step), one per round.
    pub steps: usize,
    /// Timed inference repetitions per row (after one warm-up), one per round.
    pub reps: usize,
    /// At most this many rows besides the frozen base and LoRA q,v in the same rounds (`None`:
    /// every row at once); each group has its own rows and PyTorch worker, one group at a time.
    pub rows_per_group: Option<usize>,
    /// With `--vs-pytorch`: milliseconds between one side's call and the other's
    /// ([`SETTLE_MS`] unless `--settle-ms` says otherwise).
    pub settle_ms: u64,
    /// Inference keeps the packs of the model's weights between calls
    /// (`peft_core::packed::PackedWeights`, as a program that runs many prompts would); false
    /// with `--pack-per-call`, where every product packs its weight again.
    pub kept_packs: bool,
}

impl Settings {
    /// The default settings for a model (`125m`, `350m`, `1.3b`), or the quick ones.
    ///
    /// Nine timed rounds: enough for the interval of a median (which the targets are judged by)
    /// to leave out the fastest and the slowest round at 96 % confidence (`Spread::lo`). OPT-1.3b
    /// keeps five (its rounds are long; the interval is then the min–max, 94 %), trains one
    /// sequence per step and runs its rows two at a time beside the frozen base and LoRA q,v
    /// (every row's model with PyTorch's worker beside it would not fit 23 GiB).
    pub fn for_model(name: &str, quick: bool) -> Self {
        match (quick, name) {
            (true, _) => Self {
                batch: 1,
                seq: 64,
                steps: 3,
                reps: 3,
                rows_per_group: None,
                settle_ms: SETTLE_MS,
                kept_packs: true,
            },
            (false, "1.3b") => Self {
                batch: 1,
                seq: 256,
                steps: 5,
                reps: 5,
                rows_per_group: Some(2),
                settle_ms: SETTLE_MS,
                kept_packs: true,
            },
            (false, _) => Self {
                batch: 4,
                seq: 256,
                steps: 9,
                reps: 9,
                rows_per_group: None,
                settle_ms: SETTLE_MS,
                kept_packs: true,
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
#[derive(Clone)]
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
    /// The adapters folded into the weights: the base architecture, no autodiff.
    fn merged(self) -> OptForCausalLm {
        match self {
            Adapted::Lora(l) => l.merge_and_unload(),
            Adapted::Bone(b) => b.merge_and_unload(),
            Adapted::Full(m) => m.materialize(),
        }
        .valid()
    }
}

fn qv() -> TargetModules {
    TargetModules::names(["q_proj", "v_proj"])
}

/// `method` attached to `base` (whose weights it shares until training changes them).
fn build(base: &OptForCausalLm, config: &OptConfig, method: Method) -> (Adapted, usize, usize) {
    let model = base.clone();
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

/// The optimizer each row trains with: LoRA-FA's own; burn's `AdamW` for burn's `apply_lora`
/// (what a burn user gets); for every other row `peft train`'s (`FusedAdamW`), with
/// `torch.optim.AdamW`'s defaults as the PyTorch side uses them (weight decay 0.01, ε 1e-8).
fn optimizer(method: Method, adapted: &Adapted) -> ModuleOptimizer {
    match (method, adapted) {
        (Method::LoraFaQv, Adapted::Lora(l)) => LoraFaOptimizerConfig::new()
            .init(l)
            .expect("LoRA-FA optimizer"),
        (Method::BurnLora, _) => AdamWConfig::new().init(),
        _ => FusedAdamW::new(0.01).init(),
    }
}

/// Random token ids `[batch, seq]` below `vocab`.
pub fn ids(batch: usize, seq: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<2>::random(
        [batch, seq],
        Distribution::Uniform(0.0, vocab as f64),
        device,
    )
    .int()
}

/// Timed samples of a row, one per round, in seconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Training steps.
    pub step_s: Vec<f64>,
    /// A prompt of `seq` tokens, adapters unmerged.
    pub prompt_unmerged_s: Vec<f64>,
    /// The same prompt, adapters merged.
    pub prompt_merged_s: Vec<f64>,
    /// One token, adapters unmerged.
    pub token_unmerged_s: Vec<f64>,
    /// One token, adapters merged.
    pub token_merged_s: Vec<f64>,
}

impl Samples {
    /// Every series by its JSON key.
    pub fn series(&self) -> [(&'static str, &Vec<f64>); 5] {
        [
            ("step_s", &self.step_s),
            ("prompt_unmerged_s", &self.prompt_unmerged_s),
            ("prompt_merged_s", &self.prompt_merged_s),
            ("token_unmerged_s", &self.token_unmerged_s),
            ("token_merged_s", &self.token_merged_s),
        ]
    }
}

/// One method on the shared model, with what was measured of it so far.
pub struct Row {
    /// The method.
    pub method: Method,
    adapted: Adapted,
    optim: Option<ModuleOptimizer>,
    trainable: usize,
    total: usize,
    /// Timed samples.
    pub samples: Samples,
    /// Largest heap growth of a step, the heap before that step, and that step's peak heap.
    peak: (usize, usize, usize),
    file_bytes: u64,
    /// The model without autodiff, adapters unmerged (after training).
    unmerged: Option<OptForCausalLm>,
    /// Its weights, marked so that products keep their packs (`peft_core::packed`); the merged
    /// model shares every weight but the merged ones.
    packed: Option<PackedWeights>,
}

impl Row {
    /// The row's model (adapters unmerged); the tests check its gradient flags.
    #[cfg(test)]
    pub fn model(&self) -> &OptForCausalLm {
        self.adapted.model()
    }

    /// `method` on `base` (an autodiff model).
    pub fn new(base: &OptForCausalLm, config: &OptConfig, method: Method) -> Self {
        let (adapted, trainable, total) = build(base, config, method);
        let optim = Some(optimizer(method, &adapted));
        Self {
            method,
            adapted,
            optim,
            trainable,
            total,
            samples: Samples::default(),
            peak: (0, 0, 0),
            file_bytes: 0,
            unmerged: None,
            packed: None,
        }
    }

    /// One AdamW step (lr 1e-4) on the cross-entropy of the logits against `input` itself (the
    /// mean over every position), computed as `peft train` does: the blocks through autodiff, the
    /// head and the loss a slice of positions at a time with the loss's gradient computed
    /// directly ([`peft_train::head_loss_backward`]); its time is kept when `timed`.
    pub fn train_step(&mut self, input: &Tensor<2, Int>, timed: bool) {
        let Some(optim) = self.optim.as_mut() else {
            return;
        };
        let [batch, seq] = input.dims();
        let device = input.device();
        let before = ALLOC.current_usage();
        ALLOC.reset_peak_usage();
        let t0 = Instant::now();
        let model = self.adapted.model();
        let mut x = model.embed(input.clone());
        if self.method == Method::FrozenBase {
            // Nothing trains: back-propagate to the first block's input instead.
            x = x.detach().require_grad();
        }
        for i in 0..model.num_blocks() {
            x = model.block(i, x);
        }
        let (_, grads) = head_loss_backward(
            model,
            x,
            input.clone(),
            (batch * seq) as f32,
            HEAD_CHUNK_ELEMENTS,
        );
        let stepped = optim.step(1e-4, self.adapted.model().clone(), grads);
        self.adapted.set_model(stepped);
        device.sync().expect("device sync");
        let dt = t0.elapsed().as_secs_f64();
        let growth = ALLOC.peak_usage().saturating_sub(before);
        if growth >= self.peak.0 {
            self.peak = (growth, before, ALLOC.peak_usage());
        }
        if timed {
            self.samples.step_s.push(dt);
        }
    }

    /// Ends training: drops the optimizer state, measures the adapter file and keeps the model
    /// without autodiff for inference, its weights' packs kept when `kept_packs`.
    pub fn finish_training(&mut self, kept_packs: bool) {
        self.optim = None;
        // Adapter file size (full fine-tuning and burn's path: the whole model in f32).
        let dir = std::env::temp_dir().join(format!(
            "peft-guide-{}-{}",
            std::process::id(),
            self.method.key()
        ));
        let saved = |r: Result<(), String>| {
            r.expect("save");
            std::fs::metadata(dir.join("adapter_model.safetensors")).map_or(0, |m| m.len())
        };
        self.file_bytes = match &self.adapted {
            Adapted::Lora(l) => saved(l.save(&dir).map_err(|e| e.to_string())),
            Adapted::Bone(b) => saved(b.save(&dir).map_err(|e| e.to_string())),
            Adapted::Full(_) => (self.trainable * 4) as u64,
        };
        std::fs::remove_dir_all(&dir).ok();
        let unmerged = self.adapted.model().clone().valid();
        self.packed = kept_packs.then(|| PackedWeights::new(&unmerged));
        self.unmerged = Some(unmerged);
    }

    /// One round of inference: a prompt and one token, unmerged, then merged (the merge itself
    /// is not timed and is dropped after the round, so that only one merged copy exists at a
    /// time); the times are kept when `timed`.
    pub fn infer(&mut self, prompt: &Tensor<2, Int>, token: &Tensor<2, Int>, timed: bool) {
        let time = |model: &OptForCausalLm, ids: &Tensor<2, Int>| {
            let t0 = Instant::now();
            drop(model.forward(ids.clone()));
            prompt.device().sync().expect("device sync");
            t0.elapsed().as_secs_f64()
        };
        let Some(unmerged) = &self.unmerged else {
            return;
        };
        let (up, ut) = (time(unmerged, prompt), time(unmerged, token));
        let merged = self.adapted.clone().merged();
        let (mp, mt) = (time(&merged, prompt), time(&merged, token));
        if timed {
            let s = &mut self.samples;
            s.prompt_unmerged_s.push(up);
            s.token_unmerged_s.push(ut);
            s.prompt_merged_s.push(mp);
            s.token_merged_s.push(mt);
        }
    }

    /// The row as JSON: medians under the figures' keys, spreads and samples beside them.
    pub fn json(&self, s: &Settings) -> Value {
        let mut row = json!({
            "key": self.method.key(),
            "method": self.method.label(),
            "trainable_params": self.trainable,
            "total_params": self.total,
            "trainable_percent": 100.0 * self.trainable as f64 / self.total as f64,
            "file_bytes": self.file_bytes,
            "peak_step_bytes": self.peak.0,
            "heap_before_step_bytes": self.peak.1,
            "peak_heap_bytes": self.peak.2,
        });
        put_samples(&mut row, &self.samples);
        row["tokens_per_s"] =
            json!((s.batch * s.seq) as f64 / row["step_s"].as_f64().unwrap_or(f64::NAN));
        row
    }
}

/// Writes each series of `samples` into `row`: the median under its key, `{key}_min`,
/// `{key}_max`, and every sample under `samples.{key}`.
pub fn put_samples(row: &mut Value, samples: &Samples) {
    for (key, series) in samples.series() {
        let spread = Spread::of(series);
        row[key] = json!(spread.median);
        row[format!("{key}_min")] = json!(spread.min);
        row[format!("{key}_max")] = json!(spread.max);
        row["samples"][key] = json!(series);
    }
}

/// Makes every lazy float parameter of `model` (burn's layers create them lazily: the value is
/// made on first use).
pub fn initialize_params<M: Module>(model: &M) {
    struct InitializeParams;

    impl burn::module::ModuleVisitor for InitializeParams {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }

    model.visit(&mut InitializeParams);
}

/// Resident set size of this process now (`/proc/self/statm`), in bytes.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The peak resident set size since the last [`reset_peak_rss`] (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Resets the kernel's peak resident set size of this process to its current size
/// (`/proc/self/clear_refs`, Linux 4.0+).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The one row a memory process holds, its weights made before anything is measured, as
/// PyTorch's side makes them: a lazy weight is made on first use, so the frozen and full rows
/// (which no injection visits) would otherwise count the whole model in their first step's growth.
pub fn memory_row(config: &OptConfig, method: Method, device: &Device) -> Row {
    let base = config.init(device).expect("valid OPT config");
    initialize_params(&base);
    Row::new(&base, config, method)
}

/// The memory a training step takes, measured as PyTorch's side measures it (`pytorch.py
/// --memory`): in a process that holds only this row, the growth of the peak resident set over
/// the resident set before the first step, over one warm-up and one more step.
pub fn peak_rss_growth(config: &OptConfig, method: Method, s: &Settings) -> u64 {
    let device = Device::default().autodiff();
    let mut row = memory_row(config, method, &device);
    let input = ids(s.batch, s.seq, config.vocab_size, &device);
    // Model building's freed temporaries go back to the kernel first (`peft` keeps freed
    // memory), so that the growth counts what the steps need, not what they reuse.
    peft_train::memory::release_freed_memory();
    reset_peak_rss();
    let before = rss_bytes();
    row.train_step(&input, false);
    row.train_step(&input, false);
    peak_rss_bytes().saturating_sub(before)
}
