//! `cargo xtask bench`: the method comparison guide, measured.
//!
//! ```text
//! guide [--models 125m,350m,1.3b] [--quick] [--batch 4] [--seq 256] [--steps 3] [--out docs]
//! ```
//!
//! For each model (OPT architectures with random weights: same shapes and FLOPs as the real
//! checkpoints) and each method, it measures trainable parameters, adapter file size, the
//! training-step time (AdamW; LoRA-FA with its own optimizer), the peak memory of a training step
//! (a counting allocator: host backends), and inference latency unmerged and merged. It prints a
//! table, writes `results.json`, SVG charts and the measured sections of
//! `docs/method_comparison*.md`.

mod measure;
mod report;

use std::path::PathBuf;

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use measure::{Method, Settings};
use peak_alloc::PeakAlloc;
use peft_models::OptConfig;
use serde_json::json;

/// Every heap allocation is counted: the peak-memory figures are read from it.
#[global_allocator]
pub static ALLOC: PeakAlloc = PeakAlloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    let quick = args.iter().any(|a| a == "--quick");
    let num =
        |flag: &str, default: usize| get(flag).and_then(|v| v.parse().ok()).unwrap_or(default);
    let settings = Settings {
        batch: num("--batch", if quick { 1 } else { 4 }),
        seq: num("--seq", if quick { 64 } else { 256 }),
        steps: num("--steps", if quick { 1 } else { 3 }),
        reps: if quick { 2 } else { 5 },
    };
    let models = get("--models").unwrap_or_else(|| "125m".into());
    let out = PathBuf::from(get("--out").unwrap_or_else(|| "docs".into()));
    let mut all = serde_json::Map::new();
    let mut md = String::new();
    for name in models.split(',') {
        let config = match name {
            "125m" => OptConfig::opt_125m(),
            "350m" => OptConfig::opt_350m(),
            "1.3b" => OptConfig::opt_1_3b(),
            other => {
                eprintln!("guide: unknown model `{other}` (125m, 350m, 1.3b)");
                std::process::exit(2);
            }
        };
        let bar = ProgressBar::new(Method::ALL.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("OPT-{prefix} {bar:25} {pos}/{len} {msg}")
                .expect("template"),
        );
        bar.set_prefix(name.to_string());
        let mut rows = Vec::new();
        for method in Method::ALL {
            bar.set_message(method.label());
            rows.push(measure::measure(&config, method, &settings));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let table = report::table(&rows);
        println!(
            "\nOPT-{name} (random weights), batch {} × seq {}, backend {:?}\n{table}",
            settings.batch,
            settings.seq,
            Device::default()
        );
        let _ = std::fs::create_dir_all(out.join("method_comparison"));
        for (key, scale, unit, title, file) in [
            ("step_s", 1e3, "ms", "train step (lower is better)", "step"),
            (
                "peak_step_bytes",
                1.0 / (1024.0 * 1024.0),
                "MiB",
                "peak training-step memory",
                "memory",
            ),
        ] {
            let svg = report::bar_chart(&format!("OPT-{name}: {title}"), &rows, key, scale, unit);
            let _ = std::fs::write(
                out.join("method_comparison")
                    .join(format!("opt-{name}-{file}.svg")),
                svg,
            );
        }
        md.push_str(&format!(
            "### OPT-{name}\n\n{table}\n![train step](method_comparison/opt-{name}-step.svg)\n![memory](method_comparison/opt-{name}-memory.svg)\n\n"
        ));
        all.insert(name.to_string(), json!(rows));
    }
    let meta = json!({
        "settings": {"batch": settings.batch, "seq": settings.seq, "timed_steps": settings.steps, "reps": settings.reps, "quick": quick},
        "backend": format!("{:?}", Device::default()),
        "models": all,
    });
    let _ = std::fs::write(
        out.join("method_comparison").join("results.json"),
        serde_json::to_string_pretty(&meta).unwrap_or_default(),
    );
    let header = format!(
        "Measured by `cargo xtask bench{}` (OPT architectures with random weights, batch {} × seq {}, {} timed AdamW steps after one warm-up, medians; backend {:?}). Ratios are within one run; the machine is shared and noisy.\n\n",
        if quick { " --quick" } else { "" },
        settings.batch,
        settings.seq,
        settings.steps,
        Device::default()
    );
    let guide = out.join("method_comparison.md");
    let doc = std::fs::read_to_string(&guide).unwrap_or_else(|_| "# Method comparison\n".into());
    let _ = std::fs::write(&guide, report::splice(&doc, &format!("{header}{md}")));
    eprintln!(
        "guide: wrote {} and {}",
        guide.display(),
        out.join("method_comparison/results.json").display()
    );
}
