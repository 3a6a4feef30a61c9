//! The training driver: optimizer steps over burn-train's [`TrainStep`], with transformers'
//! semantics for accumulation, clipping and schedules; evaluation, checkpoints and metrics.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, ModuleOptimizer};
use burn::tensor::Device;
use burn_optim::lr_scheduler::LrScheduler;
use burn_train::{InferenceStep, TrainOutput, TrainStep};
use indicatif::{ProgressBar, ProgressStyle};
use peft_core::method::Adapted;
use peft_models::CausalLm;
use serde_json::{Value, json};

use crate::adamw::FusedAdamW;
use crate::batch::{Order, TokenBatch, label_count};
use crate::checkpoint::{
    OPTIMIZER_NAME, STATE_NAME, TrainerState, checkpoint_dir, param_ids, restore_param_ids,
    write_checkpoint,
};
use crate::clip::clip_grad_norm;
use crate::data::Dataset;
use crate::data::Example;
use crate::error::{Result, TrainError};
use crate::eval::ExactMatch;
use crate::schedule::{Schedule, ScheduleKind};
use crate::step::{CausalLmStep, StepOutput};

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Optimizer steps of the whole run.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
    /// The schedule's shape.
    pub schedule: ScheduleKind,
    /// Warm-up steps.
    pub warmup: usize,
    /// Gradient-norm clip (`<= 0`: off).
    pub max_grad_norm: f64,
    /// Seed of the per-epoch shuffle (`None`: file order).
    pub shuffle: Option<u64>,
    /// Evaluate every this many steps (and at the end), when there is validation data.
    pub eval_every: Option<usize>,
    /// Write a checkpoint every this many steps.
    pub save_every: Option<usize>,
    /// The adapter folder to write at the end; checkpoints go under it.
    pub out: PathBuf,
    /// JSON-lines metrics file.
    pub metrics: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// Recompute activations block by block in the backward pass instead of keeping them
    /// ([`CausalLmStep::step_recomputing`]); needs dropout off.
    pub recompute: bool,
    /// Devices that run micro-batches side by side (data parallelism); the model and the
    /// optimizer live on the first. An optimizer step takes `grad_accum × devices.len()`
    /// micro-batches, as with PyTorch's DDP. Empty: the model's device alone.
    pub devices: Vec<Device>,
    /// Keep the matrix-product packs of the frozen weights for the whole run
    /// ([`peft_core::packed::PackedWeights`], flex only): each product reads the kept pack
    /// instead of packing the weight again, for up to two more copies of the frozen weights in
    /// memory (the forward's and the backward's layouts). Results are bit-identical.
    pub keep_packs: bool,
}

impl TrainSettings {
    /// Steps that cover `epochs` passes over `examples` examples.
    pub fn steps_for_epochs(&self, epochs: usize, examples: usize) -> usize {
        (epochs * examples).div_ceil((self.batch * self.micro_batches()).max(1))
    }

    /// Micro-batches per optimizer step: `grad_accum` on each device.
    pub fn micro_batches(&self) -> usize {
        self.grad_accum * self.devices.len().max(1)
    }

    /// Checks ranges.
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Settings(m.into()));
        if self.steps == 0 {
            return bad("the run has no steps (--steps or --epochs must be at least 1)");
        }
        if self.batch == 0 || self.grad_accum == 0 {
            return bad("--batch and --grad-accum must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("--lr must be a finite number >= 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay must be a finite number >= 0");
        }
        if self.eval_every == Some(0) || self.save_every == Some(0) {
            return bad("--eval-every and --save-every must be at least 1");
        }
        Ok(())
    }

    /// The settings a resumed run must share with the checkpoint (named as the flags).
    pub fn run_identity(&self, data: &Path) -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        m.insert("steps".into(), json!(self.steps));
        m.insert("batch".into(), json!(self.batch));
        m.insert("grad-accum".into(), json!(self.grad_accum));
        m.insert("devices".into(), json!(self.devices.len().max(1)));
        m.insert("lr".into(), json!(self.lr));
        m.insert("weight-decay".into(), json!(self.weight_decay));
        m.insert(
            "schedule".into(),
            json!(format!("{:?}", self.schedule).to_lowercase()),
        );
        m.insert("warmup".into(), json!(self.warmup));
        m.insert("seed".into(), json!(self.shuffle));
        m.insert(
            "data".into(),
            json!(data.file_name().map(|n| n.to_string_lossy().into_owned())),
        );
        m
    }

    /// AdamW as PyTorch's `torch.optim.AdamW` computes it (betas 0.9/0.999, eps 1e-8,
    /// decoupled weight decay `p ← p·(1 − lr·wd)` before the Adam step), each parameter's
    /// update one operation ([`FusedAdamW`]).
    pub fn adamw(&self) -> ModuleOptimizer {
        FusedAdamW::new(self.weight_decay as f32).init()
    }
}

/// A checkpoint to continue from, checked against the run.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// Its state.
    pub state: TrainerState,
}

impl Resume {
    /// Reads `dir` and checks that it belongs to this model and these settings.
    pub fn open(dir: &Path, fingerprint: &str, run: &BTreeMap<String, Value>) -> Result<Self> {
        let state = TrainerState::read(dir)?;
        state.check(dir, fingerprint, run)?;
        Ok(Self {
            dir: dir.into(),
            state,
        })
    }

    /// Gives the loaded adapter's parameters the checkpoint's ids. Call it before the optimizer
    /// is built (optimizers may group parameters by id).
    pub fn restore_ids<M: Module>(&self, model: M) -> M {
        restore_param_ids(model, &self.state.param_ids)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct TrainReport {
    /// Loss of each step of this run (from the start step).
    pub losses: Vec<f32>,
    /// Learning rate of each step.
    pub lrs: Vec<f64>,
    /// Gradient norm of each step, before clipping.
    pub grad_norms: Vec<f64>,
    /// Validation loss by step.
    pub valid: Vec<(usize, f32)>,
    /// Training tokens per second over the run.
    pub tokens_per_s: f64,
    /// Exact-match accuracy on a test set before and after training, when the caller
    /// evaluated one ([`crate::eval`]).
    pub test: Option<(ExactMatch, ExactMatch)>,
    /// Bytes of the frozen weights' packs kept at the end of the run
    /// ([`TrainSettings::keep_packs`]); 0 when they were not kept or the backend packs nothing.
    pub kept_pack_bytes: usize,
}

/// Data for a run.
#[derive(Debug, Clone, Copy)]
pub struct TrainData<'a> {
    /// Training examples.
    pub train: &'a Dataset,
    /// Validation examples.
    pub valid: Option<&'a Dataset>,
    /// Padding id.
    pub pad: u32,
}

/// Mean next-token loss of `data` (summed over every label, divided by their number).
pub fn evaluate<M: CausalLm + 'static>(
    model: &M,
    data: &Dataset,
    batch: usize,
    pad: u32,
) -> Result<f32> {
    let device = model.devices().first().cloned().unwrap_or_default();
    let step = CausalLmStep {
        model: model.valid(),
    };
    let (mut sum, mut labels) = (0f64, 0usize);
    for chunk in data.examples.chunks(batch.max(1)) {
        let refs: Vec<_> = chunk.iter().collect();
        let out = InferenceStep::step(&step, TokenBatch::new(&refs, pad, 1.0, &device));
        sum += f64::from(out.loss);
        labels += out.labels;
    }
    Ok((sum / labels.max(1) as f64) as f32)
}

struct Metrics {
    file: Option<(PathBuf, std::fs::File)>,
}

impl Metrics {
    fn open(path: Option<&Path>, append: bool) -> Result<Self> {
        let file = match path {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(p)
                    .map_err(|e| TrainError::io(p, e))?;
                Some((p.to_path_buf(), f))
            }
            None => None,
        };
        Ok(Self { file })
    }

    fn write(&mut self, row: Value) -> Result<()> {
        if let Some((path, f)) = &mut self.file {
            writeln!(f, "{row}").map_err(|e| TrainError::io(path.as_path(), e))?;
        }
        Ok(())
    }
}

/// burn-train's step, or the recomputing one.
fn one_step<M: CausalLm + 'static>(
    lm: &CausalLmStep<M>,
    batch: TokenBatch,
    recompute: bool,
) -> TrainOutput<StepOutput> {
    if recompute {
        lm.step_recomputing(batch)
    } else {
        TrainStep::step(lm, batch)
    }
}

/// Runs one micro-batch per device, side by side, each on a copy of the model forked to its
/// device (burn-train's multi-device step, gradients gathered by the caller).
fn parallel_steps<M: CausalLm + 'static>(
    lm: &CausalLmStep<M>,
    batches: &[Vec<&Example>],
    devices: &[Device],
    pad: u32,
    normalizer: f32,
    recompute: bool,
) -> Result<Vec<TrainOutput<StepOutput>>> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = batches
            .iter()
            .zip(devices)
            .map(|(examples, dev)| {
                let model = lm.model.clone();
                scope.spawn(move || {
                    let step = CausalLmStep {
                        model: model.fork(dev),
                    };
                    let batch = TokenBatch::new(examples, pad, normalizer, dev);
                    one_step(&step, batch, recompute)
                })
            })
            .collect();
        workers
            .into_iter()
            .zip(devices)
            .map(|(w, dev)| {
                w.join().map_err(|_| {
                    TrainError::Settings(format!("the training step on device {dev:?} panicked"))
                })
            })
            .collect()
    })
}

/// Trains `adapted`'s trainable parameters with `optimizer`, then saves the adapter to
/// `settings.out`. `resume`: continue from a checkpoint whose adapter `adapted` already holds
/// (with [`Resume::restore_ids`] applied).
pub fn train<M: CausalLm + 'static>(
    adapted: &mut dyn Adapted<M>,
    optimizer: ModuleOptimizer,
    data: TrainData<'_>,
    settings: &TrainSettings,
    model_fingerprint: &str,
    resume: Option<&Resume>,
) -> Result<TrainReport> {
    settings.check()?;
    let examples = &data.train.examples;
    let device: Device = adapted
        .model()
        .devices()
        .first()
        .cloned()
        .unwrap_or_default();
    let mut optimizer = optimizer;
    let start = match resume {
        Some(r) => {
            let path = r.dir.join(OPTIMIZER_NAME);
            optimizer = optimizer.load(&path).map_err(|e| TrainError::Resume {
                path: path.clone(),
                message: format!("cannot read the optimizer state: {e}"),
            })?;
            r.state.step
        }
        None => 0,
    };
    let mut schedule = Schedule {
        lr: settings.lr,
        kind: settings.schedule,
        warmup: settings.warmup,
        total: settings.steps,
        step: start,
    };
    let mut order = Order::new(examples.len(), settings.shuffle);
    let devices = match settings.devices.as_slice() {
        [] => vec![device.clone()],
        list => list.to_vec(),
    };
    let micro_batches = settings.micro_batches();
    let mut metrics = Metrics::open(settings.metrics.as_deref(), resume.is_some())?;
    let bar = if settings.progress {
        ProgressBar::new(settings.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar.set_position(start as u64);
    let mut lm = CausalLmStep {
        model: adapted.model().clone(),
    };
    // The frozen weights never change during the run; their packs are freed when it ends.
    let packed = settings
        .keep_packs
        .then(|| peft_core::packed::PackedWeights::new(&lm.model));
    let mut report = TrainReport::default();
    let mut last_checkpoint = resume.map(|r| r.dir.clone());
    let (mut run_tokens, run_start) = (0usize, Instant::now());
    for step in start..settings.steps {
        let t0 = Instant::now();
        let micro: Vec<Vec<usize>> = (0..micro_batches)
            .map(|j| order.micro_batch(step * micro_batches + j, settings.batch))
            .collect();
        let normalizer: usize = micro
            .iter()
            .flatten()
            .map(|&i| label_count(&examples[i]))
            .sum();
        let (mut loss, mut tokens) = (0f32, 0usize);
        let mut accumulator = GradientsAccumulator::new();
        let mut single = None;
        // Micro-batch j runs on device j mod D; a round is one micro-batch per device.
        for round in micro.chunks(devices.len()) {
            let batches: Vec<Vec<&Example>> = round
                .iter()
                .map(|indices| indices.iter().map(|&i| &examples[i]).collect())
                .collect();
            let outputs = if devices.len() == 1 {
                let batch = TokenBatch::new(&batches[0], data.pad, normalizer as f32, &device);
                vec![one_step(&lm, batch, settings.recompute)]
            } else {
                let norm = normalizer as f32;
                parallel_steps(&lm, &batches, &devices, data.pad, norm, settings.recompute)?
            };
            for out in outputs {
                loss += out.item.loss;
                tokens += out.item.tokens;
                let grads = if devices.len() == 1 {
                    out.grads
                } else {
                    out.grads.to_device(&device, &lm.model)
                };
                if micro_batches == 1 {
                    single = Some(grads);
                } else {
                    accumulator.accumulate(&lm.model, grads);
                }
            }
        }
        if !loss.is_finite() {
            bar.abandon();
            return Err(TrainError::NonFinite {
                step: step + 1,
                loss,
                last_good: last_checkpoint,
            });
        }
        let mut grads = single.unwrap_or_else(|| accumulator.grads());
        let norm = clip_grad_norm(&lm.model, &mut grads, settings.max_grad_norm);
        let lr = schedule.step();
        lm.model = optimizer.step(lr, lm.model, grads);
        let secs = t0.elapsed().as_secs_f64();
        run_tokens += tokens;
        let done = step + 1;
        report.losses.push(loss);
        report.lrs.push(lr);
        report.grad_norms.push(norm);
        let tps = tokens as f64 / secs.max(1e-9);
        metrics.write(
            json!({"split": "train", "step": done, "loss": loss, "lr": lr,
            "grad_norm": norm, "tokens": tokens, "tokens_per_s": tps}),
        )?;
        bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tps:.0} tok/s"));
        bar.inc(1);
        let last = done == settings.steps;
        if let Some(valid) = data.valid
            && (settings.eval_every.is_some_and(|n| done % n == 0) || last)
        {
            let v = evaluate(&lm.model, valid, settings.batch, data.pad)?;
            report.valid.push((done, v));
            metrics.write(json!({"split": "valid", "step": done, "loss": v,
                "perplexity": f64::from(v).exp()}))?;
            bar.suspend(|| {
                eprintln!(
                    "step {done}: valid loss {v:.4}, perplexity {:.2}",
                    f64::from(v).exp()
                )
            });
        }
        if settings.save_every.is_some_and(|n| done % n == 0) && !last {
            *adapted.model_mut() = lm.model.clone();
            let dir = checkpoint_dir(&settings.out, done);
            let state = TrainerState {
                step: done,
                total_steps: settings.steps,
                model_fingerprint: model_fingerprint.into(),
                run: settings.run_identity(&data.train.path),
                param_ids: param_ids(&lm.model),
            };
            write_checkpoint(&dir, |tmp| {
                adapted.save(tmp)?;
                optimizer.save(tmp.join(OPTIMIZER_NAME)).map_err(|e| {
                    TrainError::Settings(format!("cannot write the optimizer state: {e}"))
                })?;
                let text = serde_json::to_string_pretty(&state)
                    .map_err(|e| TrainError::Settings(e.to_string()))?;
                std::fs::write(tmp.join(STATE_NAME), text)
                    .map_err(|e| TrainError::io(tmp.join(STATE_NAME), e))
            })?;
            last_checkpoint = Some(dir);
        }
    }
    bar.finish_and_clear();
    report.tokens_per_s = run_tokens as f64 / run_start.elapsed().as_secs_f64().max(1e-9);
    report.kept_pack_bytes = packed.as_ref().map_or(0, |p| p.kept_bytes());
    drop(packed);
    *adapted.model_mut() = lm.model;
    adapted.save(&settings.out)?;
    Ok(report)
}
