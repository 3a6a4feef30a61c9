//! Fine-tunes LoRA adapters on an OPT or Llama checkpoint and saves them in PEFT's format.
//!
//! ```text
//! cargo run --release -p peft-models --example finetune -- \
//!     --model fixtures/models/opt_pre/checkpoint --out target/finetuned-adapter \
//!     [--steps 40] [--lr 0.03] [--r 8] [--alpha 16] [--targets q_proj,v_proj] [--batch 8] [--seq 16]
//!     [--dora true]
//! ```
//!
//! The task is synthetic next-token prediction: each sequence counts upwards by one from a
//! random start (modulo the vocabulary), so the loss must fall quickly. The adapter folder loads
//! in PEFT (`PeftModel.from_pretrained`) and in `peft forward --adapter`.

use std::path::PathBuf;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use peft_core::TargetModules;
use peft_lora::{InjectOptions, LoraConfig, LoraModel};
use peft_models::{AnyCausalLm, CausalLm};

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Checkpoint folder.
    pub model: PathBuf,
    /// Adapter folder to write.
    pub out: PathBuf,
    /// Optimiser steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// LoRA rank.
    pub r: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// Target module names.
    pub targets: Vec<String>,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Show a progress bar (otherwise one line per step).
    pub progress: bool,
    /// Train DoRA adapters (`use_dora`) instead of plain LoRA.
    pub dora: bool,
}

impl Settings {
    /// Parses `--flag value` pairs.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut s = Settings {
            model: PathBuf::new(),
            out: PathBuf::new(),
            steps: 40,
            lr: 3e-2,
            r: 8,
            alpha: 16.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
            batch: 8,
            seq: 16,
            progress: true,
            dora: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<f64>()
                    .map_err(|_| format!("{flag}: `{v}` is not a number"))
            };
            match flag.as_str() {
                "--model" => s.model = value.into(),
                "--out" => s.out = value.into(),
                "--steps" => s.steps = num(value)? as usize,
                "--lr" => s.lr = num(value)?,
                "--r" => s.r = num(value)? as usize,
                "--alpha" => s.alpha = num(value)?,
                "--batch" => s.batch = num(value)? as usize,
                "--seq" => s.seq = num(value)? as usize,
                "--targets" => s.targets = value.split(',').map(str::to_string).collect(),
                "--dora" => {
                    s.dora = value
                        .parse()
                        .map_err(|_| format!("--dora: `{value}` is not true or false"))?
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        if s.model.as_os_str().is_empty() || s.out.as_os_str().is_empty() {
            return Err("--model and --out are required".into());
        }
        Ok(s)
    }
}

/// A batch of counting sequences: inputs `[batch, seq]` and next-token targets.
fn batch(
    batch: usize,
    seq: usize,
    vocab: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let start = Tensor::<2>::random([batch, 1], Distribution::Uniform(0.0, vocab as f64), device)
        .floor()
        .int();
    let steps = Tensor::<1, Int>::arange(0..(seq + 1) as i64, device).unsqueeze::<2>();
    let tokens = (start + steps).remainder_scalar(vocab as i64);
    let inputs = tokens.clone().narrow(1, 0, seq);
    let targets = tokens.narrow(1, 1, seq).reshape([batch * seq]);
    (inputs, targets)
}

/// Trains LoRA adapters on `model` (loaded on an autodiff device) and saves them; returns the
/// loss of every step and the trained model.
pub fn train<M: CausalLm>(model: M, s: &Settings) -> Result<(Vec<f32>, LoraModel<M>), String> {
    let device = model.devices().first().cloned().unwrap_or_default();
    let targets = TargetModules::names(s.targets.iter().map(String::as_str));
    let config = LoraConfig::new(targets)
        .with_r(s.r)
        .with_alpha(s.alpha)
        .with_dora(s.dora);
    let mut lora =
        LoraModel::inject(model, &config, &InjectOptions::default()).map_err(|e| e.to_string())?;
    println!("{}", lora.summary());
    let vocab = lora.model.vocab_size();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let bar = if s.progress {
        ProgressBar::new(s.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut losses = Vec::with_capacity(s.steps);
    for step in 0..s.steps {
        let (inputs, targets) = batch(s.batch, s.seq, vocab, &device);
        let logits = lora.model.forward(inputs).reshape([s.batch * s.seq, vocab]);
        let loss = loss_fn.forward(logits, targets);
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &lora.model);
        lora.model = optim.step(s.lr, lora.model, grads);
        losses.push(value);
        bar.suspend(|| println!("step {:>4}  loss {value:.4}", step + 1));
        bar.set_message(format!("loss {value:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    lora.save(&s.out).map_err(|e| e.to_string())?;
    Ok((losses, lora))
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = Settings::parse(&args).and_then(|s| {
        let model = AnyCausalLm::load(&s.model, &Device::default().autodiff())
            .map_err(|e| e.to_string())?;
        let losses = match model {
            AnyCausalLm::Opt(m) => train(m, &s)?.0,
            AnyCausalLm::Llama(m) => train(m, &s)?.0,
        };
        println!(
            "loss {:.4} -> {:.4}; adapter saved to {}",
            losses.first().copied().unwrap_or(f32::NAN),
            losses.last().copied().unwrap_or(f32::NAN),
            s.out.display()
        );
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("finetune: error: {e}");
        std::process::exit(1);
    }
}
