//! `peft train`: fine-tune adapters of any registered method (and LoRA-FA) on a JSONL data set.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use peft_core::method::{Adapted, AttachOptions};
use peft_models::{AnyCausalLm, CausalLm, with_model};
use peft_train::data::{DataOptions, data_files, read_jsonl};
use peft_train::eval::{exact_match, read_questions};
use peft_train::schedule::ScheduleKind;
use peft_train::tokenizer::TextTokenizer;
use peft_train::{Resume, TrainData, TrainReport, TrainSettings};
use serde_json::{Value, json};

use crate::error::{CliError, Result};
use crate::registry;

/// The adapter to train: a method and its settings.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    /// `lora`, `dora`, `lora-fa`, `miss` or `bone`.
    pub method: String,
    /// An `adapter_config.json` to use instead of the flags below.
    pub config: Option<PathBuf>,
    /// Rank.
    pub r: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// Dropout on the adapter's input.
    pub dropout: f64,
    /// Target modules: names, or `all-linear`.
    pub targets: String,
    /// rsLoRA scaling.
    pub rslora: bool,
    /// Start from this adapter folder instead of a fresh init.
    pub init_adapter: Option<PathBuf>,
}

/// Everything `peft train` takes.
#[derive(Debug, Clone)]
pub struct TrainArgs {
    /// Checkpoint folder.
    pub model: PathBuf,
    /// JSONL file or folder with train.jsonl / valid.jsonl.
    pub data: PathBuf,
    /// Validation file (overrides valid.jsonl).
    pub eval: Option<PathBuf>,
    /// Test questions answered before and after training.
    pub test: Option<PathBuf>,
    /// Seed of the adapter's initialisation and of dropout (the shuffle's is in `settings`).
    pub seed: u64,
    /// Tokenizer folder (default: the model folder).
    pub tokenizer: Option<PathBuf>,
    /// The adapter.
    pub adapter: AdapterSpec,
    /// Optimizer steps (`None`: from `epochs`).
    pub steps: Option<usize>,
    /// Passes over the data when `steps` is not given.
    pub epochs: usize,
    /// Longest example in tokens.
    pub max_len: usize,
    /// Longer examples are an error instead of being cut.
    pub no_truncate: bool,
    /// Continue from this checkpoint.
    pub resume: Option<PathBuf>,
    /// `--devices`: comma-separated device names (`None`: the default device).
    pub devices: Option<String>,
    /// The driver's settings (steps filled in here).
    pub settings: TrainSettings,
}

/// The adapter config the flags describe (PEFT's `adapter_config.json` keys).
pub fn adapter_config(spec: &AdapterSpec) -> Result<Value> {
    if let Some(path) = &spec.config {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::io("read", path, e))?;
        return serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())));
    }
    let targets: Value = if spec.targets == "all-linear" {
        json!("all-linear")
    } else {
        json!(spec.targets.split(',').map(str::trim).collect::<Vec<_>>())
    };
    Ok(match spec.method.as_str() {
        "lora" | "dora" | "lora-fa" => json!({
            "peft_type": "LORA", "r": spec.r, "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout, "target_modules": targets,
            "use_rslora": spec.rslora, "use_dora": spec.method == "dora",
        }),
        "miss" | "bone" => json!({
            "peft_type": spec.method.to_uppercase(), "r": spec.r,
            "target_modules": targets, "miss_dropout": spec.dropout,
        }),
        other => {
            return Err(CliError::Usage(format!(
                "unknown --method {other:?} (lora, dora, lora-fa, miss, bone)"
            )));
        }
    })
}

/// 64-bit FNV-1a of the model's `config.json`: which model a checkpoint belongs to.
pub fn fingerprint(model_dir: &Path) -> Result<String> {
    let path = model_dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| CliError::io("read", &path, e))?;
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(format!("{hash:016x}"))
}

/// `--checkpointing` reruns each block in the backward pass; dropout would draw other masks
/// there, so an adapter config with a dropout above 0 is refused by name.
fn check_recompute(config: &Value, settings: &TrainSettings) -> Result<()> {
    if !settings.recompute {
        return Ok(());
    }
    let dropout = config
        .as_object()
        .into_iter()
        .flatten()
        .find(|(k, v)| k.ends_with("_dropout") && v.as_f64().is_some_and(|p| p > 0.0));
    match dropout {
        Some((key, value)) => Err(CliError::Usage(format!(
            "--checkpointing needs dropout off, and the adapter has `{key}` = {value} (the \
             recomputed blocks would draw other dropout masks)"
        ))),
        None => Ok(()),
    }
}

/// Runs `peft train`; returns the report and the adapter folder written.
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    let devices = match &args.devices {
        Some(list) => peft_core::device::parse_devices(list)?,
        None => vec![Device::default()],
    };
    let devices: Vec<Device> = devices.into_iter().map(|d| d.autodiff()).collect();
    let device = devices[0].clone();
    let tok_dir = args.tokenizer.clone().unwrap_or_else(|| args.model.clone());
    let tok = TextTokenizer::from_dir(&tok_dir)?;
    let model = AnyCausalLm::load(&args.model, &device)?;
    let positions = with_model!(&model, m => m.max_positions());
    let vocab = with_model!(&model, m => m.vocab_size());
    let max_len = positions.map_or(args.max_len, |p| p.min(args.max_len));
    let options = DataOptions {
        max_len,
        truncate: !args.no_truncate,
    };
    let (train_path, valid_path) = data_files(&args.data)?;
    let valid_path = args.eval.clone().or(valid_path);
    let train_data = read_jsonl(&train_path, &tok, options)?;
    let valid_data = valid_path
        .as_deref()
        .map(|p| read_jsonl(p, &tok, options))
        .transpose()?;
    for d in std::iter::once(&train_data).chain(valid_data.as_ref()) {
        if d.truncated > 0 {
            eprintln!(
                "peft: {}: cut {} of {} examples to --max-len {max_len} tokens",
                d.path.display(),
                d.truncated,
                d.examples.len()
            );
        }
        if let Some(id) = d
            .examples
            .iter()
            .flat_map(|e| e.ids.iter())
            .find(|&&i| i as usize >= vocab)
        {
            return Err(CliError::Usage(format!(
                "{}: token id {id} is outside the model's vocabulary of {vocab}: the tokenizer \
                 does not belong to this model",
                d.path.display()
            )));
        }
    }
    let mut settings = args.settings.clone();
    settings.devices = devices;
    settings.steps = args
        .steps
        .unwrap_or_else(|| settings.steps_for_epochs(args.epochs, train_data.examples.len()));
    settings.check()?;
    let fp = fingerprint(&args.model)?;
    let resume = args
        .resume
        .as_deref()
        .map(|dir| Resume::open(dir, &fp, &settings.run_identity(&train_path)))
        .transpose()?;
    let mut config = adapter_config(&args.adapter)?;
    if let Some(map) = config.as_object_mut() {
        map.insert("task_type".into(), json!("CAUSAL_LM"));
        map.insert(
            "base_model_name_or_path".into(),
            json!(args.model.to_string_lossy()),
        );
    }
    let data = TrainData {
        train: &train_data,
        valid: valid_data.as_ref(),
        pad: tok.pad_id(),
    };
    // Test questions are read (and checked) before anything trains.
    let questions = args
        .test
        .as_deref()
        .map(|p| read_questions(p, &tok))
        .transpose()?;
    let before = match &questions {
        Some(qs) => Some(with_model!(&model, m => exact_match(m, &tok, qs))?),
        None => None,
    };
    let mut report =
        with_model!(model, m => run(m, args, &config, resume.as_ref(), data, &settings, &fp))?;
    if let (Some(qs), Some(before)) = (&questions, before) {
        // The adapter as saved, on a fresh copy of the model: what a user will load.
        let model = AnyCausalLm::load(&args.model, &device)?;
        let out = Some(settings.out.as_path());
        let after = with_model!(model, m => {
            let adapted = registry::apply_adapter(m, out, false)?;
            exact_match(&adapted, &tok, qs)
        })?;
        report.test = Some((before, after));
    }
    Ok(report)
}

fn run<M: CausalLm + 'static>(
    model: M,
    args: &TrainArgs,
    config: &Value,
    resume: Option<&Resume>,
    data: TrainData<'_>,
    settings: &TrainSettings,
    fp: &str,
) -> Result<TrainReport> {
    let from = resume
        .map(|r| r.dir.as_path())
        .or(args.adapter.init_adapter.as_deref());
    let prepare = |m: M| match resume {
        Some(r) => r.restore_ids(m),
        None => m,
    };
    // The adapter's config: the folder's when starting from one, else the flags'.
    let config = match from {
        Some(dir) => peft_core::io::read_config_json(dir)?,
        None => config.clone(),
    };
    check_recompute(&config, settings)?;
    // A fresh adapter's random factors (and dropout masks) come from the device's generator.
    for device in model.devices() {
        device.seed(args.seed);
    }
    let (mut adapted, optimizer): (Box<dyn Adapted<M>>, _) = if args.adapter.method == "lora-fa" {
        registry::lorafa(model, &config, from, prepare, settings.weight_decay)?
    } else {
        let options = AttachOptions::default();
        let method = registry::attach_method::<M>(&config)?;
        let mut adapted = match from {
            Some(dir) => method.load(model, dir, &options)?,
            None => method.inject(model, &config, &options)?,
        };
        let m = prepare(adapted.model().clone());
        *adapted.model_mut() = m;
        (adapted, settings.adamw())
    };
    if settings.progress {
        eprintln!("peft: {}", adapted.summary());
    }
    Ok(peft_train::train(
        adapted.as_mut(),
        optimizer,
        data,
        settings,
        fp,
        resume,
    )?)
}

/// Parses `--schedule`.
pub fn parse_schedule(s: &str) -> std::result::Result<ScheduleKind, String> {
    s.parse()
}
