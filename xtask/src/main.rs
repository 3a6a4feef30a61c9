//! `cargo xtask`: cross-backend tests, the cuda type-check, fixtures and benchmarks.
//!
//! ```text
//! cargo xtask test [--backend flex|ndarray|wgpu|all]   # default: flex then wgpu, one build
//! cargo xtask check-cuda                                # DOCS_RS=1 cargo check --features cuda
//! cargo xtask fixtures [--python PY] [--verify]         # regenerate fixtures with real PEFT;
//!                                                       # --verify: PEFT loads our adapters
//! cargo xtask fixtures --verify-only [--python PY]      # the round trip alone, no regeneration
//! cargo xtask bench [--quick] [--models 125m,350m,1.3b] [--backend B] [--vs-pytorch] # method comparison guide
//! cargo xtask bench criterion [criterion args]          # per-layer criterion benches
//! cargo xtask bench train [--batch B] [--seq S] [--steps N] [--rounds R]  # peft train's engine vs a hand-written loop
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Every backend compiled into the one test build; `BURN_DEVICE` picks one at run time.
const TEST_FEATURES: &str = "peft-core/flex,peft-core/wgpu,peft-core/ndarray";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn has_vulkan() -> bool {
    Path::new("/usr/share/vulkan/icd.d")
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn ensure_vulkan() -> Result<(), String> {
    if has_vulkan() {
        return Ok(());
    }
    eprintln!("xtask: no Vulkan driver found, installing mesa-vulkan-drivers (lavapipe)");
    let _ = run(Command::new("apt-get").arg("update").arg("-qq"));
    run(Command::new("apt-get").args(["install", "-y", "-qq", "mesa-vulkan-drivers"]))
}

fn test(backends: &[&str]) -> Result<(), String> {
    if backends.contains(&"wgpu") {
        ensure_vulkan()?;
    }
    let runtime = std::env::temp_dir().join("peft-rs-xdg");
    let _ = std::fs::create_dir_all(&runtime);
    for backend in backends {
        eprintln!("xtask: === test suite on {backend} ===");
        let start = std::time::Instant::now();
        run(cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "xtask",
                "--features",
                TEST_FEATURES,
            ])
            .env("BURN_DEVICE", backend)
            .env("XDG_RUNTIME_DIR", &runtime))?;
        // The first backend's time includes the build shared by all.
        eprintln!(
            "xtask: test suite on {backend} took {:.0} s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn fixtures(args: &[String]) -> Result<(), String> {
    let python = args
        .windows(2)
        .find(|w| w[0] == "--python")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| "python3".into());
    // `--verify-only`: check the committed fixtures' round trip without regenerating them.
    if !args.iter().any(|a| a == "--verify-only") {
        let script = root().join("xtask/fixtures/generate.py");
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(root().join("fixtures"));
        run(&mut cmd)?;
    }
    if args.iter().any(|a| a == "--verify" || a == "--verify-only") {
        verify(&python)?;
    }
    Ok(())
}

/// Trains adapters with the fine-tuning example, runs `peft forward` with them, and has real
/// PEFT load the same folders and compare logits (`xtask/fixtures/verify.py`).
fn verify(python: &str) -> Result<(), String> {
    let probe = Command::new(python)
        .args(["-c", "import torch, transformers, peft"])
        .status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        eprintln!("xtask: verify skipped: `{python}` cannot import torch, transformers and peft");
        return Ok(());
    }
    // The test build (same features), so that nothing is compiled twice.
    run(cargo().args([
        "build",
        "--workspace",
        "--exclude",
        "xtask",
        "--bins",
        "--examples",
        "--features",
        TEST_FEATURES,
    ]))?;
    let target = root().join("target");
    let models = root().join("fixtures/models");
    let out = target.join("verify");
    let _ = std::fs::remove_dir_all(&out);
    // `<model>` folders hold LoRA adapters, `<model>@dora` DoRA ones.
    for (model, dora) in [
        ("opt_pre", false),
        ("llama", false),
        ("opt_pre", true),
        ("llama", true),
    ] {
        let dir = out.join(if dora {
            format!("{model}@dora")
        } else {
            model.to_string()
        });
        let adapter = dir.join("adapter");
        run(Command::new(target.join("debug/examples/finetune"))
            .arg("--model")
            .arg(models.join(model).join("checkpoint"))
            .arg("--out")
            .arg(&adapter)
            .args([
                "--steps",
                "20",
                "--targets",
                "q_proj,k_proj,v_proj,fc1,up_proj",
                "--dora",
                if dora { "true" } else { "false" },
            ])
            .env("BURN_DEVICE", "flex"))?;
        run(Command::new(target.join("debug/peft"))
            .arg("forward")
            .arg("--model")
            .arg(models.join(model).join("checkpoint"))
            .arg("--adapter")
            .arg(&adapter)
            .arg("--input-ids")
            .arg(models.join("inputs.safetensors"))
            .arg("--out")
            .arg(dir.join("logits.safetensors"))
            .env("BURN_DEVICE", "flex"))?;
    }
    // `peft train` on the training fixture's model and data, one folder per method.
    let train = root().join("fixtures/train");
    for method in ["lora", "dora", "miss"] {
        let dir = out.join(format!("peft_train@{method}"));
        run(Command::new(target.join("debug/peft"))
            .arg("train")
            .arg("--model")
            .arg(train.join("model"))
            .arg("--data")
            .arg(train.join("data/completion.jsonl"))
            .arg("--eval")
            .arg(train.join("data/valid.jsonl"))
            .arg("--out")
            .arg(dir.join("trained"))
            .args([
                "--method", method, "--steps", "20", "--lr", "1e-2", "--quiet",
            ])
            .env("BURN_DEVICE", "flex"))?;
        run(Command::new(target.join("debug/peft"))
            .arg("forward")
            .arg("--model")
            .arg(train.join("model"))
            .arg("--adapter")
            .arg(dir.join("trained"))
            .arg("--input-ids")
            .arg(models.join("inputs.safetensors"))
            .arg("--out")
            .arg(dir.join("logits.safetensors"))
            .env("BURN_DEVICE", "flex"))?;
    }
    // The README's demo: the adapter `peft train` writes answers the test questions in PEFT
    // exactly as `peft eval` answers them.
    let demo = root().join("fixtures/demo");
    let demo_out = out.join("demo");
    run(Command::new(target.join("debug/peft"))
        .arg("train")
        .arg("--model")
        .arg(demo.join("model"))
        .arg("--data")
        .arg(demo.join("task"))
        .arg("--out")
        .arg(demo_out.join("fine-tuned"))
        .args([
            "--targets",
            "all-linear",
            "--r",
            "8",
            "--alpha",
            "16",
            "--steps",
            "100",
            "--batch",
            "8",
            "--lr",
            "2e-3",
            "--quiet",
        ])
        .env("BURN_DEVICE", "flex"))?;
    let answers = Command::new(target.join("debug/peft"))
        .arg("eval")
        .arg("--model")
        .arg(demo.join("model"))
        .arg("--adapter")
        .arg(demo_out.join("fine-tuned"))
        .arg("--data")
        .arg(demo.join("task/test.jsonl"))
        .arg("--show")
        .env("BURN_DEVICE", "flex")
        .output()
        .map_err(|e| format!("peft eval: {e}"))?;
    if !answers.status.success() {
        return Err(format!(
            "peft eval failed: {}",
            String::from_utf8_lossy(&answers.stderr)
        ));
    }
    std::fs::write(demo_out.join("answers.txt"), &answers.stdout)
        .map_err(|e| format!("{}: {e}", demo_out.display()))?;
    for case in ["opt_bone_default", "opt_bone_bat"] {
        run(Command::new(target.join("debug/peft"))
            .arg("convert")
            .arg(
                root()
                    .join("fixtures/bone/models")
                    .join(case)
                    .join("adapter"),
            )
            .arg(out.join("converted").join(case))
            .args(["--to", "miss"]))?;
    }
    run(Command::new(python)
        .arg(root().join("xtask/fixtures/verify.py"))
        .arg(&out)
        .arg(&models))
}

/// Benchmarks build with the test features (one build for everything), which compile several
/// backends in; their default is flex (burn's pure-Rust CPU backend), as on a machine built with
/// default features, unless `BURN_DEVICE` says otherwise.
fn default_flex(cmd: &mut Command) -> &mut Command {
    let chosen = cmd.get_envs().any(|(k, _)| k == "BURN_DEVICE");
    if !chosen && std::env::var_os("BURN_DEVICE").is_none() {
        cmd.env("BURN_DEVICE", "flex");
    }
    cmd
}

/// Builds and runs the method-comparison guide (`benches/guide`) in release mode.
fn guide(args: &[String]) -> Result<(), String> {
    let mut rest = Vec::new();
    let mut backend = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--backend" {
            backend = it.next().cloned();
        } else {
            rest.push(a.clone());
        }
    }
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "peft-benches",
        "--bin",
        "guide",
        "--features",
    ])
    .arg(TEST_FEATURES)
    .arg("--")
    .args(&rest);
    if let Some(b) = backend {
        cmd.env("BURN_DEVICE", b);
    }
    run(default_flex(&mut cmd))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => {
            let backend = args.windows(2).find(|w| w[0] == "--backend").map(|w| w[1].as_str());
            match backend {
                None => test(&["flex", "wgpu"]),
                Some("all") => test(&["flex", "ndarray", "wgpu"]),
                Some(b @ ("flex" | "ndarray" | "wgpu")) => test(&[b]),
                Some(other) => Err(format!("unknown backend `{other}` (flex, ndarray, wgpu, all)")),
            }
        }
        Some("check-cuda") => run(cargo()
            .args(["check", "--workspace", "--exclude", "xtask", "--features", "peft-core/cuda"])
            .env("DOCS_RS", "1")),
        Some("fixtures") => fixtures(&args[1..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("criterion") => {
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "peft-benches", "--bench", "layer", "--features"])
                .arg(TEST_FEATURES)
                .arg("--")
                .args(&args[2..]);
            run(default_flex(&mut cmd))
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("train") => {
            let mut cmd = cargo();
            cmd.args(["run", "--release", "-p", "peft-benches", "--bin", "train-bench", "--features"])
                .arg(TEST_FEATURES)
                .arg("--")
                .args(&args[2..]);
            run(default_flex(&mut cmd))
        }
        Some("bench") => guide(&args[1..]),
        _ => Err("usage: cargo xtask <test [--backend flex|ndarray|wgpu|all] | check-cuda | fixtures [--python PY] [--verify | --verify-only] | bench [--quick] [--models M] [--methods K] [--backend B] [--vs-pytorch [--python PY]] | bench criterion [args] | bench train [args]>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
