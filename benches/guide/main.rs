//! `cargo xtask bench`: the method comparison guide, measured.
//!
//! ```text
//! guide [--models 125m,350m,1.3b] [--quick] [--methods frozen,lora-qv,..] [--batch B] [--seq S]
//!       [--steps N] [--vs-pytorch] [--python PY] [--out docs]
//! guide --from-json docs/method_comparison/results.json [--out docs]   # re-render only
//! ```
//!
//! For each model (OPT architectures with random weights: same shapes and FLOPs as the real
//! checkpoints) and each method, it measures trainable parameters, adapter file size, the
//! training-step time (AdamW; LoRA-FA with its own optimizer), the peak memory of a training step
//! (a counting allocator: host backends), and inference latency unmerged and merged. With
//! `--vs-pytorch` it runs the same rows in HF PEFT (`pytorch.py`) and adds ratios. It prints
//! tables, writes `results.json`, SVG charts and the measured sections of
//! `docs/method_comparison*.md`.

mod measure;
mod pytorch;
mod report;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use measure::{Method, Settings};
use peak_alloc::PeakAlloc;
use peft_models::OptConfig;
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    let models = get("--models").unwrap_or_else(|| "125m,350m,1.3b".into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut all = serde_json::Map::new();
    for name in models.split(',') {
        let config = match name {
            "125m" => OptConfig::opt_125m(),
            "350m" => OptConfig::opt_350m(),
            "1.3b" => OptConfig::opt_1_3b(),
            other => fail(format!("unknown model `{other}` (125m, 350m, 1.3b)")),
        };
        let mut settings = Settings::for_model(name, quick);
        settings.batch = num("--batch").unwrap_or(settings.batch);
        settings.seq = num("--seq").unwrap_or(settings.seq);
        settings.steps = num("--steps").unwrap_or(settings.steps).max(1);
        let per_method = if torch.is_some() { 2 } else { 1 };
        let bar = ProgressBar::new((methods.len() * per_method) as u64);
        bar.set_style(
            ProgressStyle::with_template("OPT-{prefix} {bar:25} {pos}/{len} {msg}")
                .expect("template"),
        );
        bar.set_prefix(name.to_string());
        let params = measure::total_params(&config);
        let mut rows = Vec::new();
        for &method in &methods {
            bar.set_message(method.label());
            let mut row = match skip_reason(method, params) {
                Some(why) => json!({"key": method.key(), "method": method.label(), "skipped": why}),
                None => measure::measure(&config, method, &settings),
            };
            bar.inc(1);
            if let Some(python) = &torch {
                bar.set_message(format!("{} (PyTorch)", method.label()));
                if row.get("skipped").is_none() {
                    row["pytorch"] = pytorch::run(python, &config, method, &settings, threads)
                        .unwrap_or_else(|e| json!({"skipped": e}));
                }
                bar.inc(1);
            }
            rows.push(row);
        }
        bar.finish_and_clear();
        all.insert(
            name.to_string(),
            json!({
                "settings": {"batch": settings.batch, "seq": settings.seq, "timed_steps": settings.steps, "reps": settings.reps},
                "rows": rows,
            }),
        );
    }
    let meta = json!({
        "command": std::env::args().skip(1).collect::<Vec<_>>(),
        "quick": quick,
        "vs_pytorch": torch.is_some(),
        "backend": backend_label(&format!("{:?}", Device::default())),
        "threads": threads,
        "models": all,
    });
    let _ = std::fs::create_dir_all(out.join("method_comparison"));
    let results = out.join("method_comparison").join("results.json");
    if let Err(e) = std::fs::write(
        &results,
        serde_json::to_string_pretty(&meta).unwrap_or_default(),
    ) {
        fail(format!("cannot write {}: {e}", results.display()));
    }
    publish(&meta, &out);
    eprintln!("guide: wrote {}", results.display());
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
        let heading = format!(
            "OPT-{name} (random weights), batch {} × seq {}, {} timed steps, {} inference repetitions",
            st["batch"], st["seq"], st["timed_steps"], st["reps"]
        );
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
        section.push_str(&format!(
            "The targets of issue #6 on this model:\n\n{targets}\n"
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
    let header = format!(
        "Measured by `cargo xtask bench{}{}` on backend {backend} with {threads} threads: OPT architectures with random weights, AdamW steps after one warm-up, medians. Ratios are within one run; the machine is shared and noisy.\n\n",
        if quick { " --quick" } else { "" },
        if torch { " --vs-pytorch" } else { "" },
    );
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
