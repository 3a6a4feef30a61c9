//! `cargo xtask bench train`: what `peft train`'s engine costs over a hand-written loop.
//!
//! ```text
//! train-bench [--model 125m] [--batch 4] [--seq 128] [--steps 3] [--rounds 5] [--out target/train-bench.json]
//! ```
//!
//! On OPT-125m's architecture (`--model`: 125m, 350m or 1.3b; random weights) with LoRA q,v
//! (r 8), four rows run interleaved in rounds (engine, loop, engine with activation
//! checkpointing, engine with kept packs; then again), each a run of `--steps` AdamW steps on the
//! same synthetic batches after one warm-up round:
//! - **engine**: `peft_train::train` as `peft train` calls it (labels, accumulation normaliser,
//!   global gradient clipping, metrics bookkeeping, and the adapter saved at the end);
//! - **loop**: the minimal hand-written loop: forward, burn's cross-entropy on shifted logits,
//!   backward, `ModuleOptimizer::step` (no clipping, nothing saved);
//! - **engine + checkpointing**: the engine with `--checkpointing` (`recompute`): only each
//!   decoder block's input is kept, and the block is rerun in the backward pass;
//! - **engine + kept packs**: the engine with `--keep-packs` (`keep_packs`): the frozen weights
//!   are packed for the products once per run (`peft_core::packed`), not in every product.
//!
//! It reports, per row, the median time per step with its min–max over the rounds, tokens/s,
//! and the peak heap growth of a run (a counting allocator), and the ratios to the loop; and the
//! kept packs' run time over the engine's, round by round.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use peak_alloc::PeakAlloc;
use peft_core::TargetModules;
use peft_lora::{InjectOptions, LoraConfig, LoraModel};
use peft_models::{CausalLm, OptForCausalLm};
use peft_train::data::{Dataset, Example};
use peft_train::schedule::ScheduleKind;
use peft_train::{TrainData, TrainSettings};
use serde_json::json;

/// Every heap allocation is counted.
#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn lora(model: OptForCausalLm) -> LoraModel<OptForCausalLm> {
    let config = LoraConfig::new(TargetModules::names(["q_proj", "v_proj"]))
        .with_r(8)
        .with_alpha(16.0);
    match LoraModel::inject(model, &config, &InjectOptions::default()) {
        Ok(m) => m,
        Err(e) => panic!("inject: {e}"),
    }
}

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let s = peft_benches::Spread::of(v);
    (s.median, s.min, s.max)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As `peft` does.
    peft_train::memory::retain_freed_memory();
    let (batch, seq) = (arg(&args, "--batch", 4), arg(&args, "--seq", 128));
    let (steps, rounds) = (arg(&args, "--steps", 3), arg(&args, "--rounds", 5));
    let out = args
        .windows(2)
        .find(|w| w[0] == "--out")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| "target/train-bench.json".into());
    let model = args
        .windows(2)
        .find(|w| w[0] == "--model")
        .map_or("125m", |w| w[1].as_str());
    let Some(config) = peft_benches::opt_config(model) else {
        eprintln!(
            "train-bench: unknown --model `{model}` ({})",
            peft_benches::OPT_MODELS
        );
        std::process::exit(2);
    };
    let vocab = config.vocab_size;
    // Synthetic examples: every token a label, ids spread over the vocabulary.
    let examples: Vec<Example> = (0..batch * steps)
        .map(|i| Example {
            ids: (0..seq)
                .map(|t| ((i * 7919 + t * 104_729) % vocab) as u32)
                .collect(),
            mask: vec![true; seq],
        })
        .collect();
    let dataset = Dataset {
        path: "synthetic.jsonl".into(),
        examples,
        truncated: 0,
    };
    let dir = std::env::temp_dir().join(format!("peft-train-bench-{}", std::process::id()));
    let settings = TrainSettings {
        steps,
        batch,
        grad_accum: 1,
        lr: 1e-4,
        weight_decay: 0.0,
        schedule: ScheduleKind::Constant,
        warmup: 0,
        max_grad_norm: 1.0,
        shuffle: None,
        eval_every: None,
        save_every: None,
        out: dir.clone(),
        metrics: None,
        progress: false,
        devices: Vec::new(),
        recompute: false,
        keep_packs: false,
    };
    let ckpt_settings = TrainSettings {
        recompute: true,
        ..settings.clone()
    };
    let packs_settings = TrainSettings {
        keep_packs: true,
        ..settings.clone()
    };
    let device = Device::default().autodiff();
    let base = match config.init(&device) {
        Ok(m) => m,
        Err(e) => panic!("model: {e}"),
    };
    let mut engine = lora(base.clone());
    let mut ckpt = lora(base.clone());
    let mut packs = lora(base.clone());
    let mut looped = lora(base);
    let data = TrainData {
        train: &dataset,
        valid: None,
        pad: 1,
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let batches: Vec<Tensor<2, Int>> = dataset
        .examples
        .chunks(batch)
        .map(|c| {
            let flat: Vec<i64> = c
                .iter()
                .flat_map(|e| e.ids.iter().map(|&i| i64::from(i)))
                .collect();
            Tensor::from_data(TensorData::new(flat, [batch, seq]), &device)
        })
        .collect();

    let names = [
        "engine",
        "loop",
        "engine + checkpointing",
        "engine + kept packs",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    let mut peaks: [Vec<usize>; 4] = Default::default();
    for round in 0..=rounds {
        for (row, name) in names.iter().enumerate() {
            let before = ALLOC.current_usage();
            ALLOC.reset_peak_usage();
            let t0 = Instant::now();
            match row {
                0 | 2 | 3 => {
                    let (m, s) = match row {
                        0 => (&mut engine, &settings),
                        2 => (&mut ckpt, &ckpt_settings),
                        _ => (&mut packs, &packs_settings),
                    };
                    if let Err(e) = peft_train::train(m, s.adamw(), data, s, "bench", None) {
                        panic!("{name}: {e}");
                    }
                }
                _ => {
                    let mut loop_optim = settings.adamw();
                    for ids in &batches {
                        let logits = looped.model.forward(ids.clone());
                        let logits = logits
                            .narrow(1, 0, seq - 1)
                            .reshape([batch * (seq - 1), vocab]);
                        let targets = ids
                            .clone()
                            .narrow(1, 1, seq - 1)
                            .reshape([batch * (seq - 1)]);
                        let loss = loss_fn.forward(logits, targets);
                        let grads = GradientsParams::from_grads(loss.backward(), &looped.model);
                        looped.model = loop_optim.step(1e-4, looped.model.clone(), grads);
                    }
                }
            }
            let per_step = t0.elapsed().as_secs_f64() / steps as f64;
            let peak = ALLOC.peak_usage().saturating_sub(before);
            eprintln!(
                "round {round} {name}: {:.3} s/step, peak +{} MiB",
                per_step,
                peak >> 20
            );
            if round > 0 {
                times[row].push(per_step);
                peaks[row].push(peak);
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let tokens = (batch * seq) as f64;
    let loop_peak = *peaks[1].iter().max().unwrap_or(&1) as f64;
    let mut rows = Vec::new();
    println!(
        "OPT-{model} (random weights), LoRA q,v r=8, batch {batch} x {seq} tokens, {steps} steps per run, {rounds} rounds\n"
    );
    println!(
        "| row | s/step median (min–max) | tokens/s | / loop (min–max) | peak heap growth | / loop |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (row, name) in names.iter().enumerate() {
        let (med, min, max) = median_min_max(&times[row]);
        let ratios: Vec<f64> = times[row]
            .iter()
            .zip(&times[1])
            .map(|(a, b)| a / b)
            .collect();
        let (rmed, rmin, rmax) = median_min_max(&ratios);
        let peak = *peaks[row].iter().max().unwrap_or(&0);
        println!(
            "| {name} | {med:.3} ({min:.3}–{max:.3}) | {:.0} | {rmed:.3} ({rmin:.3}–{rmax:.3}) | {} MiB | {:.2} |",
            tokens / med,
            peak >> 20,
            peak as f64 / loop_peak
        );
        rows.push(
            json!({"row": name, "s_per_step": times[row], "median": med, "min": min, "max": max,
            "ratio_to_loop_per_round": ratios, "peak_heap_growth_bytes": peaks[row]}),
        );
    }
    let kept: Vec<f64> = times[3].iter().zip(&times[0]).map(|(a, b)| a / b).collect();
    let (kmed, kmin, kmax) = median_min_max(&kept);
    println!("\nengine + kept packs / engine, round by round: {kmed:.3} ({kmin:.3}–{kmax:.3})");
    let report = json!({"model": format!("opt-{model} (random)"), "method": "lora q,v r=8", "batch": batch,
        "seq": seq, "steps_per_run": steps, "rounds": rounds, "backend": format!("{device:?}"), "rows": rows,
        "kept_packs_over_engine_per_round": kept});
    if let Err(e) = std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    ) {
        eprintln!("train-bench: {out}: {e}");
    }
}
