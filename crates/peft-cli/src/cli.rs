//! The command line, declared with `clap`: `peft <command> --help` prints these docs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Train, inspect, merge, run and convert PEFT adapter folders (LoRA, DoRA, LoRA-FA-trained, MiSS,
/// Bone) with burn.
///
/// The method of an adapter is read from its `adapter_config.json` (`peft_type`, `use_dora`).
/// BURN_DEVICE picks the backend for `forward` (flex, ndarray, wgpu, cuda; default: the first
/// compiled in). Every failure is one line on stderr and a non-zero exit status.
#[derive(Debug, Parser)]
#[command(name = "peft", version, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an adapter's method, ranks, alphas, targets, parameter count and file size, from its
    /// config and file header alone.
    Inspect {
        /// The adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
        adapter: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fold an adapter into a transformers checkpoint and write one merged safetensors file.
    ///
    /// Works on the state dict, for any architecture (GPT-2 `Conv1D` included), tensor by tensor:
    /// memory stays near the largest tensor. Refuses adapters with NaN or infinite values or
    /// non-float tensors (PEFT's `safe_merge`), and an --out that is one of the inputs. The output
    /// is written to a temporary file and renamed into place, so a failure leaves nothing behind.
    Merge {
        /// The base checkpoint: a `.safetensors` file, or a folder with `model.safetensors` or
        /// shards (`model.safetensors.index.json`).
        #[arg(long)]
        base: PathBuf,
        /// The adapter folder.
        #[arg(long)]
        adapter: PathBuf,
        /// The merged `.safetensors` file to write.
        #[arg(long)]
        out: PathBuf,
        /// The dtype of float tensors in the output.
        #[arg(long, value_enum, default_value_t = OutDtypeArg::Keep)]
        dtype: OutDtypeArg,
        /// Allow --out to replace the base checkpoint when it is a single file. This is safe: the
        /// base stays mapped and the merged file replaces it only by the final rename. Without
        /// --force it is refused as a likely mistake; a shard of a sharded base is never allowed.
        #[arg(long)]
        force: bool,
    },
    /// Compute the logits of an OPT or Llama checkpoint, optionally with an adapter, unmerged or
    /// merged, and write them as `logits` `[batch, seq, vocab]` (f32).
    Forward {
        /// The model and adapter.
        #[command(flatten)]
        run: ModelArgs,
        /// A safetensors file with an I64 or I32 tensor `input_ids` `[batch, seq]`.
        #[arg(long)]
        input_ids: PathBuf,
        /// The safetensors file to write the logits to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Fine-tune adapters on a JSONL data set and write a PEFT adapter folder.
    ///
    /// Data: one JSON object per line in TRL's formats: {"text"} (loss on every token),
    /// {"prompt","completion"} (loss on the completion and eos) or {"messages": [{"role",
    /// "content"}, ...]} (rendered with the tokenizer's chat template; loss on assistant turns).
    /// --data takes a .jsonl file or a folder with train.jsonl and valid.jsonl. The loss, AdamW,
    /// schedules and clipping follow transformers' Trainer. The adapter folder loads in PEFT's
    /// `PeftModel.from_pretrained` and `AutoPeftModelForCausalLM`.
    Train(Box<TrainCmd>),
    /// Generate text from a prompt with a model and, optionally, an adapter of any method.
    ///
    /// The prompt is encoded as transformers' tokenizer does (with its special tokens); with
    /// --messages it is the conversation rendered by the tokenizer's chat template with the
    /// assistant's header appended. Greedy by default (equal to transformers' greedy
    /// `generate`); --temperature samples, with --top-p and a --seed that makes it repeatable.
    /// Text streams to stdout as it comes; generation stops at the model's end-of-sequence
    /// token, after --max-new-tokens, or at the model's last position.
    Generate(Box<GenerateCmd>),
    /// Answer a data set's questions greedily and report the exact-match accuracy.
    ///
    /// Rows are prompt/completion pairs, or `messages` conversations whose last turn is the
    /// assistant's expected answer. Each answer is generated for at most the expected answer's
    /// length (+ the end-of-sequence token) and is right when its text, trimmed, equals the
    /// expected text, trimmed.
    Eval {
        /// The model and adapter.
        #[command(flatten)]
        run: ModelArgs,
        /// The folder with `tokenizer.json` [default: --model].
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// The questions (JSONL).
        #[arg(long)]
        data: PathBuf,
        /// Print every question with the model's answer.
        #[arg(long)]
        show: bool,
    },
    /// Convert an adapter folder into another file format of its method: a Bone folder
    /// (`peft_type` BONE, PEFT ≤ 0.18) into MiSS (PEFT ≥ 0.17) or back, as PEFT's
    /// `convert-bone-to-miss.py` does; tensor bytes are copied unchanged. Methods with one format
    /// (LoRA, DoRA) say so.
    Convert {
        /// The adapter folder.
        input: PathBuf,
        /// The folder to write.
        output: PathBuf,
        /// The `peft_type` to write, e.g. `miss` or `bone` (default: the method's other format).
        #[arg(long)]
        to: Option<String>,
    },
}

/// `peft train`'s options.
#[derive(Debug, Args)]
pub struct TrainCmd {
    /// The transformers checkpoint folder (OPT or Llama: `config.json` + weights).
    #[arg(long)]
    pub model: PathBuf,
    /// A .jsonl file, or a folder with train.jsonl (and valid.jsonl for evaluation).
    #[arg(long)]
    pub data: PathBuf,
    /// The adapter folder to write; checkpoints go to OUT/checkpoint-STEP.
    #[arg(long)]
    pub out: PathBuf,
    /// Folder with tokenizer.json and tokenizer_config.json (default: --model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Validation data (default: valid.jsonl in a --data folder).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Questions (prompt/completion or messages rows) answered greedily before and after
    /// training; prints the exact-match accuracy of both.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// The method: lora, dora, lora-fa (LoRA with frozen A and PEFT's LoRA-FA optimizer), miss
    /// or bone.
    #[arg(long, default_value = "lora")]
    pub method: String,
    /// An adapter_config.json with the adapter's settings (replaces --r, --alpha, --dropout,
    /// --targets, --rslora).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rank.
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    /// LoRA alpha (scaling alpha/r, or alpha/sqrt(r) with --rslora).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Target modules, comma-separated names, or all-linear.
    #[arg(long, default_value = "q_proj,v_proj")]
    pub targets: String,
    /// rsLoRA scaling (alpha/sqrt(r)).
    #[arg(long)]
    pub rslora: bool,
    /// Start from this adapter folder (e.g. one PEFT saved) instead of a fresh init.
    #[arg(long, conflicts_with = "resume")]
    pub init_adapter: Option<PathBuf>,
    /// Optimizer steps [default: one epoch].
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Passes over the training data (when --steps is not given).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Micro-batches per optimizer step (the loss is normalised over all of them).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Learning-rate schedule (transformers' get_scheduler; constant with --warmup is
    /// constant_with_warmup).
    #[arg(long, default_value = "constant", value_parser = crate::train::parse_schedule)]
    pub schedule: peft_train::schedule::ScheduleKind,
    /// Warm-up steps, linear from 0.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Clip the gradient norm over the trainable parameters (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed of the adapter's random initialisation, of dropout and of the per-epoch shuffle: the
    /// same seed and settings give the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Take batches in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Longest example in tokens (capped at the model's positions); longer ones are cut.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// Make an example over --max-len an error instead of cutting it.
    #[arg(long)]
    pub no_truncate: bool,
    /// Evaluate every N steps (and at the end) when there is validation data.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Write a checkpoint (adapter + optimizer + position) every N steps.
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Continue from a checkpoint folder written by --save-every, with the same settings.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write one JSON line per step and per evaluation to this file.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Keep only each decoder block's input and recompute the block in the backward pass, as
    /// transformers' gradient checkpointing does, and run the LM head and the loss over slices of
    /// positions: far less activation memory (0.12× on OPT-125m, docs/training.md) for one more
    /// forward pass of the blocks. Needs the adapter's dropout at 0.
    #[arg(long)]
    pub checkpointing: bool,
    /// Pack each frozen weight for the matrix products once and keep the packs for the whole
    /// run, instead of packing it again in every product (flex only; other backends ignore
    /// it). Costs up to two more copies of the frozen weights in memory; the results are
    /// bit-identical. Measured on OPT-125m at 4 × 256 tokens: no gain that the runs could tell
    /// (docs/benchmarks.md, "Frozen weights packed once"); the saving grows as steps get fewer
    /// tokens. The run ends by saying how much memory the packs took.
    #[arg(long)]
    pub keep_packs: bool,
    /// Devices, comma-separated: flex, ndarray, wgpu, wgpu:N (discrete GPU N), cuda:N. Several
    /// devices train data-parallel: each runs --grad-accum micro-batches of every step, the
    /// gradients are summed on the first, which holds the optimizer (an optimizer step sees
    /// batch × grad-accum × devices examples) [default: BURN_DEVICE, else the first backend
    /// compiled in].
    #[arg(long)]
    pub devices: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainCmd {
    /// The library's arguments.
    pub fn into_args(self) -> crate::train::TrainArgs {
        crate::train::TrainArgs {
            model: self.model,
            data: self.data,
            eval: self.eval,
            test: self.test,
            seed: self.seed,
            tokenizer: self.tokenizer,
            adapter: crate::train::AdapterSpec {
                method: self.method,
                config: self.config,
                r: self.r,
                alpha: self.alpha,
                dropout: self.dropout,
                targets: self.targets,
                rslora: self.rslora,
                init_adapter: self.init_adapter,
            },
            steps: self.steps,
            epochs: self.epochs,
            max_len: self.max_len,
            no_truncate: self.no_truncate,
            resume: self.resume,
            devices: self.devices,
            settings: peft_train::TrainSettings {
                steps: 0,
                batch: self.batch,
                grad_accum: self.grad_accum,
                lr: self.lr,
                weight_decay: self.weight_decay,
                schedule: self.schedule,
                warmup: self.warmup,
                max_grad_norm: self.max_grad_norm,
                shuffle: (!self.no_shuffle).then_some(self.seed),
                eval_every: self.eval_every,
                save_every: self.save_every,
                out: self.out,
                metrics: self.metrics,
                progress: !self.quiet,
                devices: Vec::new(),
                recompute: self.checkpointing,
                keep_packs: self.keep_packs,
            },
        }
    }
}

/// The model and the adapter a command runs (`forward`, `generate`, `eval`).
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// The transformers checkpoint folder (`config.json` + weights; for text, its tokenizer).
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter folder of any method (LoRA, DoRA, MiSS, Bone, LoRA-FA-trained).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Merge the adapter into the weights first.
    #[arg(long, requires = "adapter")]
    pub merge: bool,
}

/// `peft generate`'s flags.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "messages"])))]
pub struct GenerateCmd {
    /// The model and adapter.
    #[command(flatten)]
    pub run: ModelArgs,
    /// The folder with `tokenizer.json` [default: --model].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The prompt text.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A JSON file with a conversation: a list of {"role", "content"} objects, or an object
    /// with such a list under "messages".
    #[arg(long)]
    pub messages: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sample with this temperature instead of decoding greedily.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the likeliest tokens up to this total probability (with
    /// --temperature).
    #[arg(long, default_value_t = 1.0, requires = "temperature")]
    pub top_p: f64,
    /// Seed of the sampler (with --temperature).
    #[arg(long, default_value_t = 0, requires = "temperature")]
    pub seed: u64,
}

/// `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutDtypeArg {
    /// Each tensor keeps its dtype.
    Keep,
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_command() {
        let c = Cli::try_parse_from([
            "peft",
            "merge",
            "--base",
            "b",
            "--adapter",
            "a",
            "--out",
            "o",
            "--dtype",
            "bf16",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::Merge {
                dtype: OutDtypeArg::Bf16,
                force: false,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from([
                "peft",
                "forward",
                "--model",
                "m",
                "--merge",
                "--input-ids",
                "i",
                "--out",
                "o"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["peft", "inspect"]).is_err());
        assert!(
            Cli::try_parse_from([
                "peft",
                "merge",
                "--base",
                "b",
                "--adapter",
                "a",
                "--out",
                "o",
                "--dtype",
                "f8"
            ])
            .is_err()
        );
    }
}
