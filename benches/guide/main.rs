//! `cargo xtask bench`: the method comparison guide, measured.
//!
//! ```text
//! guide [--models 125m,350m,1.3b] [--quick] [--methods frozen,lora-qv,..] [--batch B] [--seq S]
//!       [--steps N] [--reps N] [--rows-per-group N|all] [--vs-pytorch] [--python PY]
//!       [--settle-ms N] [--pack-per-call] [--out docs]
//! guide --from-json docs/method_comparison/results.json [--out docs]   # re-render only
//! guide --memory --models M --methods K [--batch B] [--seq S]   # one row's step memory
//! ```
//!
//! For each model (OPT architectures with random weights drawn as transformers draws them: same
//! shapes and FLOPs as the real checkpoints, and the same value range as PyTorch's rows) and
//! each method, it measures trainable parameters, adapter file size, the
//! training-step time (AdamW; LoRA-FA with its own optimizer), the peak heap of a training step
//! (a counting allocator: host backends), the step's peak resident-set growth (each row alone in
//! a process of its own), and inference latency unmerged and merged.
//!
//! Every row of a model shares one set of random weights and runs in rounds: a training step of
//! each row, then the next round (one warm-up round, then `--steps` timed ones); inference the
//! same way. Each figure is a median with its min–max over the rounds, and a ratio of two rows is
//! taken round by round, so that the machine's drifting load touches both sides of it alike. A
//! target is met or missed when the interval of its median ratio lies on one side of its bound:
//! the sign test's interval, at least 90 % confidence whatever the ratios' distribution (the
//! min–max for up to seven rounds, the 2nd to 8th of nine). With
//! `--vs-pytorch` the same rows run in HF PEFT in a persistent worker (`pytorch.py --worker`),
//! each PyTorch step right after ours in the same round, each side's call starting
//! `--settle-ms` (default 50) after the other's ended: PyTorch's OpenMP threads keep spinning
//! for about 10 ms after a call, and a call of ours started in that time shared the two cores
//! with them. A model too large for every row at once (OPT-1.3b by default, or any with
//! `--rows-per-group N`) runs its rows in groups: the frozen base and LoRA q,v, which the other
//! rows are compared with, and at most N others, one group (and one PyTorch worker) after
//! another; a row's ratios to those two are taken within its group.
//! Inference keeps the packs of each row's weights between calls (`peft_core::packed`), as a
//! program that runs many prompts would; `--pack-per-call` measures without.
//! The model's largest layer product (its forward, and its input gradient at a step's tokens)
//! also runs alone in the training rounds on both sides ([`products`]), and the run records the
//! machine ([`machine`]) and PyTorch's BLAS.
//! It prints tables, writes `results.json`, SVG charts and the measured sections of
//! `docs/method_comparison*.md`.

mod machine;
mod measure;
mod products;
mod pytorch;
mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use measure::{Method, Row, Samples, Settings};
use peak_alloc::PeakAlloc;
use peft_models::{OptConfig, OptForCausalLm};
use products::Product;
use serde_json::{Value, json};

/// Every heap allocation is counted: the peak-memory figures are read from it.
#[global_allocator]
pub static ALLOC: PeakAlloc = PeakAlloc;

fn fail(msg: String) -> ! {
    eprintln!("guide: {msg}");
    std::process::exit(2);
}

/// Total memory of this machine in bytes (`/proc/meminfo`), when known.
fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Why `method` is not run on a model of `params` parameters, if it is not.
fn skip_reason(method: Method, params: usize) -> Option<String> {
    // f32 weights, gradients and AdamW's two moments, before any activation.
    let need = 16 * params as u64;
    let total = mem_total()?;
    (method == Method::Full && need > total * 7 / 10).then(|| {
        format!(
            "weights, gradients and AdamW state alone take {:.1} GiB of this machine's {:.1} GiB",
            need as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        )
    })
}

/// `Device<Flex(Cpu)>` → `flex`.
fn backend_label(debug: &str) -> String {
    let inner = debug.strip_prefix("Device<").unwrap_or(debug);
    let end = inner.find(['(', '>']).unwrap_or(inner.len());
    inner[..end].to_lowercase()
}

/// What `--help` prints: the usage lines of the module documentation.
const USAGE: &str = "\
guide: the method comparison guide (`cargo xtask bench`), measured

guide [--models 125m,350m,1.3b] [--quick] [--methods frozen,lora-qv,..] [--batch B] [--seq S]
      [--steps N] [--reps N] [--rows-per-group N|all] [--vs-pytorch] [--python PY]
      [--settle-ms N] [--pack-per-call] [--out docs]
guide --from-json docs/method_comparison/results.json [--out docs]   # re-render only
guide --memory --models M --methods K [--batch B] [--seq S]   # one row's step memory

See the README's benchmark section for what each figure is and how it is measured.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As `peft` does: the rows are measured with the allocator setting users get.
    peft_train::memory::retain_freed_memory();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let get = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    let out = PathBuf::from(get("--out").unwrap_or_else(|| "docs".into()));
    if let Some(path) = get("--from-json") {
        // Re-render the docs from a previous run's figures, measuring nothing.
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| fail(format!("cannot read {path}: {e}")));
        let meta: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| fail(format!("{path} is not a results file: {e}")));
        publish(&meta, &out);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let vs_pytorch = args.iter().any(|a| a == "--vs-pytorch");
    let num = |flag: &str| {
        get(flag).map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|_| fail(format!("{flag} takes a number, not `{v}`")))
        })
    };
    let methods: Vec<Method> = match get("--methods") {
        None => Method::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|k| {
                Method::ALL
                    .into_iter()
                    .find(|m| m.key() == k)
                    .unwrap_or_else(|| {
                        let keys: Vec<_> = Method::ALL.iter().map(|m| m.key()).collect();
                        fail(format!("unknown method `{k}` ({})", keys.join(", ")))
                    })
            })
            .collect(),
    };
    if args.iter().any(|a| a == "--memory") {
        // One row alone in this process, as `pytorch.py --memory` measures it.
        let model = get("--models").unwrap_or_default();
        let config = opt_config(&model);
        let mut settings = Settings::for_model(&model, quick);
        settings.batch = num("--batch").unwrap_or(settings.batch);
        settings.seq = num("--seq").unwrap_or(settings.seq);
        let [method] = methods[..] else {
            fail("--memory takes one --methods".into())
        };
        let growth = measure::peak_rss_growth(&config, method, &settings);
        println!("{}", json!({ "peak_rss_growth_bytes": growth }));
        return;
    }
    let python = get("--python").unwrap_or_else(|| "python3".into());
    let torch = if vs_pytorch {
        match pytorch::probe(&python) {
            Ok(versions) => {
                eprintln!("guide: comparing with {versions}");
                Some(python.clone())
            }
            Err(why) => {
                eprintln!("guide: --vs-pytorch skipped: {why}");
                None
            }
        }
    } else {
        None
    };
    // `--quick` is a smoke run: OPT-125m only unless `--models` says otherwise.
    let models =
        get("--models").unwrap_or_else(|| if quick { "125m" } else { "125m,350m,1.3b" }.into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let vs_pytorch = torch.is_some();
    let machine = machine::describe();
    eprintln!("guide: machine: {}", machine::summary(&machine));
    let meta = |models: &serde_json::Map<String, Value>| {
        json!({
            "command": std::env::args().skip(1).collect::<Vec<_>>(),
            "quick": quick,
            "vs_pytorch": vs_pytorch,
            "backend": backend_label(&format!("{:?}", Device::default())),
            "threads": threads,
            "machine": machine,
            "models": models,
        })
    };
    // `Some(None)`: `all`, every row at once; `None`: each model's default.
    let rows_per_group = get("--rows-per-group").map(|v| match v.as_str() {
        "all" => None,
        n => Some(n.parse::<usize>().map_or_else(
            |_| {
                fail(format!(
                    "--rows-per-group takes a number or `all`, not `{n}`"
                ))
            },
            |n| n.max(1),
        )),
    });
    let mut all = serde_json::Map::new();
    for name in models.split(',') {
        let config = opt_config(name);
        let mut settings = Settings::for_model(name, quick);
        settings.batch = num("--batch").unwrap_or(settings.batch);
        settings.seq = num("--seq").unwrap_or(settings.seq);
        settings.steps = num("--steps").unwrap_or(settings.steps).max(1);
        settings.reps = num("--reps").unwrap_or(settings.reps).max(1);
        settings.settle_ms = num("--settle-ms").map_or(settings.settle_ms, |n| n as u64);
        settings.kept_packs = !args.iter().any(|a| a == "--pack-per-call");
        if let Some(v) = &rows_per_group {
            settings.rows_per_group = *v;
        }
        let (rows, products) = run_model(
            name,
            &config,
            &methods,
            &settings,
            torch.as_deref(),
            threads,
        );
        all.insert(
            name.to_string(),
            json!({
                "settings": {"batch": settings.batch, "seq": settings.seq, "timed_steps": settings.steps, "reps": settings.reps, "rows_per_group": settings.rows_per_group, "settle_ms": torch.as_ref().map(|_| settings.settle_ms), "kept_packs": settings.kept_packs},
                "rows": rows,
                "products": products,
            }),
        );
        // Written after every model, so that a run killed later (a larger model running out of
        // memory) keeps what it measured: `--from-json` renders it.
        let results = write_results(&meta(&all), &out);
        eprintln!(
            "guide: {name} measured, results so far in {}",
            results.display()
        );
    }
    let meta = meta(&all);
    publish(&meta, &out);
    eprintln!("guide: wrote {}", out.join("method_comparison").display());
}

/// Writes `meta` to `OUT/method_comparison/results.json`; returns the file's path.
fn write_results(meta: &Value, out: &Path) -> PathBuf {
    let _ = std::fs::create_dir_all(out.join("method_comparison"));
    let results = out.join("method_comparison").join("results.json");
    if let Err(e) = std::fs::write(
        &results,
        serde_json::to_string_pretty(meta).unwrap_or_default(),
    ) {
        fail(format!("cannot write {}: {e}", results.display()));
    }
    results
}

fn opt_config(name: &str) -> OptConfig {
    peft_benches::opt_config(name).unwrap_or_else(|| {
        fail(format!(
            "unknown model `{name}` ({})",
            peft_benches::OPT_MODELS
        ))
    })
}

/// PyTorch's side of one group of rows: the worker and each row's samples, or why there is none.
struct Torch {
    worker: Option<pytorch::Worker>,
    /// The wait before and after each of the worker's calls.
    settle: std::time::Duration,
    setup: Value,
    samples: HashMap<&'static str, Samples>,
    failed: Option<String>,
}

impl Torch {
    fn start(
        python: &str,
        config: &OptConfig,
        methods: &[Method],
        s: &Settings,
        threads: usize,
    ) -> Self {
        let settle = std::time::Duration::from_millis(s.settle_ms);
        match pytorch::Worker::start(python, config, methods, s, threads) {
            Ok((worker, setup)) => Self {
                worker: Some(worker),
                settle,
                setup,
                samples: HashMap::new(),
                failed: None,
            },
            Err(e) => Self {
                worker: None,
                settle,
                setup: Value::Null,
                samples: HashMap::new(),
                failed: Some(e),
            },
        }
    }

    /// Whether `key` has a PyTorch row that still runs.
    fn has(&self, key: &str) -> bool {
        self.worker.is_some() && self.setup["rows"][key].get("skipped").is_none()
    }

    /// Runs `f` on the worker, `settle` after our last call and before our next one; a failure
    /// ends PyTorch's side of this model, with its reason.
    fn call<T>(&mut self, f: impl FnOnce(&mut pytorch::Worker) -> Result<T, String>) -> Option<T> {
        let worker = self.worker.as_mut()?;
        std::thread::sleep(self.settle);
        let result = f(worker);
        std::thread::sleep(self.settle);
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("guide: PyTorch side stopped: {e}");
                self.worker = None;
                self.failed = Some(e);
                None
            }
        }
    }
}

/// The model every row of one model's run shares, every weight made.
fn base_model(config: &OptConfig, device: &Device) -> OptForCausalLm {
    let base = config.init(device).expect("valid OPT config");
    // The parameters are lazy, and clones share the pending initialization with its gradient
    // flag (burn's `Param::set_require_grad`): without initializing them here, the frozen row's
    // `no_grad()` froze the full fine-tuning row's weights too.
    measure::initialize_params(&base);
    base
}

/// One row per method, all sharing `base`'s weights.
fn build_rows(base: &OptForCausalLm, config: &OptConfig, methods: &[Method]) -> Vec<Row> {
    methods.iter().map(|&m| Row::new(base, config, m)).collect()
}

/// The rows every other row is compared with, in every group of a run in groups.
const ANCHORS: [Method; 2] = [Method::FrozenBase, Method::LoraQv];

/// The rows measured in the same rounds: all of `runs` at once, or with `per_group`, the
/// frozen base and LoRA q,v (the rows the others are compared with) and at most `per_group`
/// others in each group, so that a model too large for every row at once still runs.
fn row_groups(runs: &[Method], per_group: Option<usize>) -> Vec<Vec<Method>> {
    let (anchors, others): (Vec<Method>, Vec<Method>) =
        runs.iter().copied().partition(|m| ANCHORS.contains(m));
    match per_group {
        Some(n) if others.len() > n => others
            .chunks(n.max(1))
            .map(|chunk| {
                let mut group: Vec<Method> = anchors.iter().chain(chunk).copied().collect();
                group.sort_by_key(|m| Method::ALL.iter().position(|x| x == m));
                group
            })
            .collect(),
        _ => vec![runs.to_vec()],
    }
}

/// Measures every row of one model in rounds (ours, then PyTorch's, row by row), a group of
/// rows at a time (see [`row_groups`]), then each row's step memory in a process of its own;
/// returns the rows' JSON objects, and those of the model's products alone (see
/// [`products`]), timed in the first group's training rounds. A row measured in a later group
/// than the first carries the anchors of its own group under `same_rounds`, so that its ratios
/// to them are taken round by round.
fn run_model(
    name: &str,
    config: &OptConfig,
    methods: &[Method],
    s: &Settings,
    python: Option<&str>,
    threads: usize,
) -> (Vec<Value>, Vec<Value>) {
    let params = measure::total_params(config);
    let (runs, skipped): (Vec<Method>, Vec<Method>) = methods
        .iter()
        .copied()
        .partition(|&m| skip_reason(m, params).is_none());
    let device = Device::default().autodiff();
    let base = base_model(config, &device);
    let groups = row_groups(&runs, s.rows_per_group);
    let mut products = Product::for_model(config, s.batch, s.seq, &Device::default());
    let per_row = (s.steps + 1 + s.reps + 1) as u64;
    let measured: usize = groups.iter().map(Vec::len).sum();
    let bar = ProgressBar::new(per_row * measured as u64 + runs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("OPT-{prefix} {bar:25} {pos}/{len} {msg}").expect("template"),
    );
    bar.set_prefix(name.to_string());
    let mut out: Vec<Value> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let label = if groups.len() > 1 {
            format!("group {} of {}, ", g + 1, groups.len())
        } else {
            String::new()
        };
        let timed: &mut [Product] = if g == 0 { &mut products } else { &mut [] };
        let rows = run_group(
            &base, config, group, timed, s, python, threads, &bar, &label,
        );
        add_group(&mut out, rows, g, groups.len());
    }
    drop(base);
    let products: Vec<Value> = products.iter().map(Product::json).collect();
    // What the groups freed goes back to the kernel, so that the memory processes below have it.
    peft_train::memory::release_freed_memory();
    // Memory: each row alone in a fresh process, both sides measured the same way.
    for row in &mut out {
        let key = row["key"].as_str().unwrap_or("").to_string();
        bar.set_message(format!("{key}: memory"));
        let method = methods.iter().copied().find(|m| m.key() == key);
        if let Some(method) = method {
            match own_memory(name, method, s) {
                Ok(b) => row["peak_rss_growth_bytes"] = json!(b),
                Err(e) => eprintln!("guide: {key}: {e}"),
            }
            let p = &mut row["pytorch"];
            if let Some(py) = python
                && p.is_object()
                && p.get("skipped").is_none()
            {
                match pytorch::memory(py, config, method, s, threads) {
                    Ok(b) => p["peak_rss_growth_bytes"] = json!(b),
                    Err(e) => eprintln!("guide: {key} (PyTorch): {e}"),
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for m in skipped {
        let why = skip_reason(m, params).unwrap_or_default();
        out.push(json!({"key": m.key(), "method": m.label(), "skipped": why}));
    }
    // Table order.
    out.sort_by_key(|r| Method::ALL.iter().position(|m| r["key"] == m.key()));
    (out, products)
}

/// Adds the rows of group `g` (from 0) of `groups` to `out`. The frozen base and LoRA q,v come
/// from the first group; a later group's other rows carry that group's frozen base and LoRA q,v
/// (without PyTorch's figures) under `same_rounds`, and every row of a run in groups its group
/// (from 1) under `group`.
fn add_group(out: &mut Vec<Value>, rows: Vec<Value>, g: usize, groups: usize) {
    let is_anchor = |r: &Value| ANCHORS.iter().any(|m| r["key"] == m.key());
    // The first group's rows go in as measured; a later group's anchors only stand beside it.
    let (anchors, rows): (Vec<Value>, Vec<Value>) = if g == 0 {
        (Vec::new(), rows)
    } else {
        rows.into_iter().partition(|r| is_anchor(r))
    };
    let same_rounds: serde_json::Map<String, Value> = anchors
        .into_iter()
        .map(|mut a| {
            if let Some(a) = a.as_object_mut() {
                a.remove("pytorch");
            }
            (a["key"].as_str().unwrap_or("?").to_string(), a)
        })
        .collect();
    for mut r in rows {
        if groups > 1 {
            r["group"] = json!(g + 1);
        }
        if g > 0 {
            r["same_rounds"] = Value::Object(same_rounds.clone());
        }
        out.push(r);
    }
}

/// Measures one group of rows in rounds, with PyTorch's (a worker of its own) beside them, and
/// `products` after the rows' steps in each training round (all of ours back to back, then all
/// of PyTorch's: a product of ours started after a PyTorch product sometimes ran at half speed,
/// see the loop); returns the rows' JSON objects, PyTorch's timings under `pytorch`. Every row of
/// the group and the worker are dropped before it returns.
#[allow(clippy::too_many_arguments)]
fn run_group(
    base: &OptForCausalLm,
    config: &OptConfig,
    methods: &[Method],
    products: &mut [Product],
    s: &Settings,
    python: Option<&str>,
    threads: usize,
    bar: &ProgressBar,
    label: &str,
) -> Vec<Value> {
    let device = Device::default().autodiff();
    let plain = Device::default();
    let mut rows = build_rows(base, config, methods);
    let mut torch = python.map(|py| Torch::start(py, config, methods, s, threads));
    for round in 0..=s.steps {
        bar.set_message(format!("{label}training round {round} of {}", s.steps));
        let input = measure::ids(s.batch, s.seq, config.vocab_size, &device);
        for row in &mut rows {
            row.train_step(&input, round > 0);
            let key = row.method.key();
            if let Some(t) = torch.as_mut().filter(|t| t.has(key))
                && let Some(dt) = t.call(|w| w.step(key))
                && round > 0
            {
                t.samples.entry(key).or_default().step_s.push(dt);
            }
            bar.inc(1);
        }
        // Each side's products back to back, as a model calls them. Alternated product by
        // product, ours right after a PyTorch product took up to twice its time in some rounds
        // (both of rayon's woken threads on one CPU, it seems: not with them pinned one to a
        // CPU, not when ours followed ours; docs/benchmarks.md, "The input gradient's products
        // against MKL's AVX-512 kernels").
        for p in products.iter_mut() {
            p.time(round > 0);
        }
        for p in products.iter_mut() {
            if let Some(t) = torch.as_mut()
                && let Some(dt) = t.call(|w| w.product(p.m, p.k, p.n, p.input_gradient))
                && round > 0
            {
                p.pytorch_s.push(dt);
            }
        }
    }
    for row in &mut rows {
        row.finish_training(s.kept_packs);
    }
    for round in 0..=s.reps {
        bar.set_message(format!("{label}inference round {round} of {}", s.reps));
        let prompt = measure::ids(1, s.seq, config.vocab_size, &plain);
        let token = measure::ids(1, 1, config.vocab_size, &plain);
        // A merged adapter is the base architecture: PyTorch's merged figures are the base's.
        let merged = torch.as_mut().and_then(|t| t.call(|w| w.infer("base")));
        for row in &mut rows {
            row.infer(&prompt, &token, round > 0);
            let key = row.method.key();
            if let Some(t) = torch.as_mut().filter(|t| t.has(key))
                && let (Some((up, ut)), Some((mp, mt))) = (t.call(|w| w.infer(key)), merged)
                && round > 0
            {
                let x = t.samples.entry(key).or_default();
                x.prompt_unmerged_s.push(up);
                x.token_unmerged_s.push(ut);
                x.prompt_merged_s.push(mp);
                x.token_merged_s.push(mt);
            }
            bar.inc(1);
        }
    }
    rows.iter()
        .map(|r| {
            let mut v = r.json(s);
            if let Some(t) = &torch {
                v["pytorch"] = pytorch_times(t, r.method.key(), s);
            }
            v
        })
        .collect()
}

/// PyTorch's timings of row `key`: medians, spreads and samples, or why there are none.
fn pytorch_times(t: &Torch, key: &str, s: &Settings) -> Value {
    let info = &t.setup["rows"][key];
    if let Some(why) = t.failed.as_ref() {
        return json!({"skipped": why});
    }
    if info.get("skipped").is_some() || info.is_null() {
        return info.clone();
    }
    let mut p = info.clone();
    p["versions"] = t.setup["versions"].clone();
    let samples = t.samples.get(key).cloned().unwrap_or_default();
    measure::put_samples(&mut p, &samples);
    p["tokens_per_s"] = json!((s.batch * s.seq) as f64 / p["step_s"].as_f64().unwrap_or(f64::NAN));
    p
}

/// This binary's `--memory` run of one row: the step's peak resident-set growth.
fn own_memory(model: &str, method: Method, s: &Settings) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let out = std::process::Command::new(exe)
        .args(["--memory", "--models", model, "--methods", method.key()])
        .args(["--batch", &s.batch.to_string(), "--seq", &s.seq.to_string()])
        .output()
        .map_err(|e| format!("cannot rerun this binary: {e}"))?;
    pytorch::parse_memory(&out, "guide --memory")
}

/// Prints the tables and writes the charts, the guide's measured section and the method pages
/// from a run's figures (`results.json`'s content).
fn publish(meta: &Value, out: &Path) {
    let quick = meta["quick"].as_bool().unwrap_or(false);
    let threads = meta["threads"].as_u64().unwrap_or(1);
    let backend = backend_label(meta["backend"].as_str().unwrap_or("?"));
    let empty = serde_json::Map::new();
    let models = meta["models"].as_object().unwrap_or(&empty);
    let torch = models.values().any(|m| {
        m["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r.get("pytorch").is_some()))
    });
    let _ = std::fs::create_dir_all(out.join("method_comparison"));
    let mut md = String::new();
    for (name, model) in models {
        let rows = model["rows"].as_array().cloned().unwrap_or_default();
        let st = &model["settings"];
        let mut heading = format!(
            "OPT-{name} (random weights), batch {} × seq {}, {} timed steps, {} inference repetitions",
            st["batch"], st["seq"], st["timed_steps"], st["reps"]
        );
        if let Some(n) = st["settle_ms"].as_u64() {
            heading.push_str(&format!(
                "; each side's call started {n} ms after the other side's ended"
            ));
        }
        match st["kept_packs"].as_bool() {
            Some(true) => heading.push_str(
                "; inference with the weights' packs kept between calls (`peft_core::packed`)",
            ),
            Some(false) => heading.push_str(
                "; inference packing every weight again in every product (`--pack-per-call`)",
            ),
            None => {}
        }
        if let Some(n) = st["rows_per_group"].as_u64() {
            heading.push_str(&format!(
                "; rows in groups (the frozen base and LoRA q,v with at most {n} other rows in the same rounds, one group after another, each with a PyTorch worker of its own): a row's ratios to those two are taken within its group, and their own figures are the first group's"
            ));
        }
        let table = report::table(&rows);
        let targets = report::targets(&rows);
        println!("\n{heading}\n{table}\n{targets}");
        let mut section = format!("### OPT-{name}\n\n{heading}.\n\n{table}\n");
        if torch {
            let vs = report::pytorch_table(&rows);
            println!("{vs}");
            section.push_str(&format!(
                "Against HF PEFT on PyTorch, same machine, {threads} threads (ours / PyTorch; below 1 is faster):\n\n{vs}\n"
            ));
        }
        if let Some(products) = model["products"].as_array().filter(|p| !p.is_empty()) {
            let t = report::products_table(products);
            println!("{t}");
            // Runs from before the input gradient was timed render as they did.
            let heading = if products.iter().any(|p| p["input_gradient"] == true) {
                "The model's largest layer product alone, its forward and its input gradient (the weight transposed, as the backward multiplies by it), in the same training rounds (one call of each a round after the rows' steps, each side's products back to back, the same operands every round, so the weight may be in the caches; GFLOP/s from the median)"
            } else {
                "The model's largest layer product alone, in the same training rounds (one call a round after the rows' steps, the same operands every round, so the weight may be in the caches; GFLOP/s from the median)"
            };
            section.push_str(&format!("{heading}:\n\n{t}\n"));
        }
        section.push_str(&format!(
            "Targets on this model (each ratio taken round by round; met or missed only when the interval of its median, at least 90 % confidence from the order statistics of the rounds' ratios, is on one side of the bound; with seven rounds or fewer that interval is the min–max):\n\n{targets}\n"
        ));
        for (key, scale, unit, title, file) in [
            ("step_s", 1e3, "ms", "train step (lower is better)", "step"),
            (
                "peak_heap_bytes",
                1.0 / (1024.0 * 1024.0),
                "MiB",
                "peak heap during a training step",
                "memory",
            ),
        ] {
            let svg = report::bar_chart(&format!("OPT-{name}: {title}"), &rows, key, scale, unit);
            let path = out
                .join("method_comparison")
                .join(format!("opt-{name}-{file}.svg"));
            if let Err(e) = std::fs::write(&path, svg) {
                fail(format!("cannot write {}: {e}", path.display()));
            }
            section.push_str(&format!(
                "![OPT-{name} {file}](method_comparison/opt-{name}-{file}.svg)\n"
            ));
        }
        md.push_str(&section);
        md.push('\n');
    }
    let mut header = format!(
        "Measured by `cargo xtask bench{}{}` on backend {backend} with {threads} threads: OPT architectures with random weights (drawn as transformers draws them) shared by every row; the rows (and PyTorch's, in a persistent worker) run interleaved in rounds after one warm-up round; times are medians with their min–max over the rounds, and a ratio is taken round by round. The machine is shared and noisy: a difference inside the spread is not a result, and a target is judged by the interval of its median ratio (see the targets tables).\n\n",
        if quick { " --quick" } else { "" },
        if torch { " --vs-pytorch" } else { "" },
    );
    let machine = machine::summary(&meta["machine"]);
    if !machine.is_empty() {
        header.push_str(&format!("Machine: {machine}."));
        if let Some(v) = report::pytorch_versions(models) {
            header.push_str(&format!(" PyTorch: {v}."));
        }
        header.push_str("\n\n");
    }
    let guide = out.join("method_comparison.md");
    report::splice_file(&guide, "guide", &format!("{header}{md}"));
    for (page, method_keys) in [
        ("lora", &["frozen", "lora-qv", "lora-all", "burn-lora"][..]),
        ("lora_fa", &["frozen", "lora-qv", "lorafa-qv"][..]),
        ("dora", &["frozen", "lora-qv", "dora-qv"][..]),
        ("bone", &["frozen", "lora-qv", "bone", "bone-bat"][..]),
    ] {
        let path = out.join("method_comparison").join(format!("{page}.md"));
        report::splice_file(
            &path,
            "guide",
            &report::method_section(&header, &meta["models"], method_keys, torch),
        );
    }
    eprintln!("guide: wrote {} and the method pages", guide.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;

    /// Counts the float parameters, and those that require a gradient.
    #[derive(Default)]
    struct Tracked {
        all: usize,
        tracked: usize,
    }

    impl ModuleVisitor for Tracked {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.all += 1;
            self.tracked += usize::from(param.val().is_require_grad());
        }
    }

    fn tracked(row: &Row) -> Tracked {
        let mut count = Tracked::default();
        row.model().visit(&mut count);
        count
    }

    fn tiny_config() -> OptConfig {
        OptConfig {
            vocab_size: 64,
            hidden_size: 16,
            ffn_dim: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            max_position_embeddings: 32,
            word_embed_proj_dim: Some(16),
            ..OptConfig::opt_125m()
        }
    }

    /// Counts the float parameters whose value is not made yet.
    #[derive(Default)]
    struct Lazy(usize);

    impl ModuleVisitor for Lazy {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 += usize::from(!param.is_initialized());
        }
    }

    #[test]
    fn a_memory_row_has_every_weight_made_before_its_first_step() {
        let config = tiny_config();
        let device = Device::default().autodiff();
        let mut lazy = Lazy::default();
        config.init(&device).unwrap().visit(&mut lazy);
        assert!(lazy.0 > 0, "burn's layers no longer make lazy weights");
        for method in [Method::FrozenBase, Method::Full, Method::LoraQv] {
            let mut lazy = Lazy::default();
            measure::memory_row(&config, method, &device)
                .model()
                .visit(&mut lazy);
            assert_eq!(lazy.0, 0, "{method:?}: weights left to the first step");
        }
        device.sync().unwrap();
    }

    #[test]
    fn the_full_row_trains_every_weight_although_the_frozen_row_is_built_first() {
        let config = tiny_config();
        let device = Device::default().autodiff();
        let base = base_model(&config, &device);
        let rows = build_rows(&base, &config, &[Method::FrozenBase, Method::Full]);
        let (frozen, full) = (tracked(&rows[0]), tracked(&rows[1]));
        assert!(full.all > 0);
        assert_eq!(
            full.tracked, full.all,
            "full fine-tuning has frozen weights"
        );
        assert_eq!(frozen.tracked, 0, "the frozen base has trainable weights");
        // Let the device finish before the process exits: on lavapipe (wgpu here) a shader still
        // being compiled by its LLVM thread while `exit` runs LLVM's destructors crashes the
        // process after every test has passed (seen about once in 15 runs).
        device.sync().unwrap();
    }

    #[test]
    fn groups_hold_the_frozen_base_and_lora_and_at_most_n_others() {
        use Method::*;
        let runs = [
            FrozenBase,
            LoraQv,
            LoraAll,
            LoraFaQv,
            DoraQv,
            BoneDefault,
            BurnLora,
        ];
        assert_eq!(row_groups(&runs, None), vec![runs.to_vec()]);
        assert_eq!(row_groups(&runs, Some(5)), vec![runs.to_vec()]);
        assert_eq!(
            row_groups(&runs, Some(2)),
            vec![
                vec![FrozenBase, LoraQv, LoraAll, LoraFaQv],
                vec![FrozenBase, LoraQv, DoraQv, BoneDefault],
                vec![FrozenBase, LoraQv, BurnLora],
            ]
        );
        // Without LoRA q,v the frozen base is the one row every group shares.
        assert_eq!(
            row_groups(&[BoneBat, FrozenBase, Full], Some(1)),
            vec![vec![FrozenBase, BoneBat], vec![FrozenBase, Full]]
        );
    }

    #[test]
    fn a_later_group_keeps_its_own_frozen_base_and_lora_beside_its_rows() {
        let row = |key: &str, t: f64| json!({"key": key, "step_s": t, "pytorch": {"step_s": t}});
        let mut out = Vec::new();
        add_group(
            &mut out,
            vec![
                row("frozen", 1.0),
                row("lora-qv", 1.1),
                row("lora-all", 1.3),
            ],
            0,
            2,
        );
        add_group(
            &mut out,
            vec![row("frozen", 2.0), row("lora-qv", 2.2), row("bone", 2.4)],
            1,
            2,
        );
        let keys: Vec<_> = out.iter().map(|r| r["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["frozen", "lora-qv", "lora-all", "bone"]);
        assert_eq!(
            out[0]["step_s"], 1.0,
            "the first group's frozen base is the table's"
        );
        assert_eq!(out[2]["group"], 1);
        assert!(out[2].get("same_rounds").is_none());
        let bone = &out[3];
        assert_eq!(bone["group"], 2);
        assert_eq!(bone["same_rounds"]["frozen"]["step_s"], 2.0);
        assert_eq!(bone["same_rounds"]["lora-qv"]["step_s"], 2.2);
        assert!(bone["same_rounds"]["frozen"].get("pytorch").is_none());
        assert_eq!(bone["pytorch"]["step_s"], 2.4);
    }
}
