//! `cargo xtask`: cross-backend tests, the cuda type-check, fixtures and benchmarks.
//!
//! ```text
//! cargo xtask test [--backend flex|ndarray|wgpu|all] [--jobs N]  # default: flex then wgpu, one build,
//!                                                       # N test binaries at a time (default: cores),
//!                                                       # longest first (xtask/suite-times.tsv)
//! cargo xtask check-cuda                                # DOCS_RS=1 cargo check --features cuda
//! cargo xtask fixtures [--python PY] [--verify]         # regenerate fixtures with real PEFT;
//!                                                       # --verify: PEFT loads our adapters
//! cargo xtask fixtures --verify-only [--python PY]      # the round trip alone, no regeneration
//! cargo xtask bench [--quick] [--models 125m,350m,1.3b] [--backend B] [--vs-pytorch] # method comparison guide
//! cargo xtask bench criterion [criterion args]          # per-layer criterion benches
//! cargo xtask bench train [--model 125m|350m|1.3b] [--batch B] [--seq S] [--steps N] [--rounds R]  # peft train's engine vs a hand-written loop
//! cargo xtask fuzz [--target T] [--seconds S]          # libFuzzer on every target (default 60 s each)
//! cargo xtask fuzz --seeds                              # rewrite fuzz/seeds from the fixtures
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod suite;

/// Every backend, compiled into one build; `BURN_DEVICE` picks one at run time.
const BACKENDS: &str = "peft-core/flex,peft-core/wgpu,peft-core/ndarray";

/// The test build: every backend, and the writers' fault points (`peft_core::fault`) for
/// `crates/peft-cli/tests/faults.rs`.
const TEST_FEATURES: &str =
    "peft-core/flex,peft-core/wgpu,peft-core/ndarray,peft-cli/fault-injection";

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

/// The cargo that runs xtask (`CARGO`), or `cargo` from the path.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo() -> Command {
    Command::new(cargo_program())
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

/// The seconds each test binary took on wgpu in an earlier run, which `cargo xtask test`
/// starts longest first; each run writes its own as `target/xtask-suite-times-<backend>.tsv`.
const SUITE_TIMES: &str = "xtask/suite-times.tsv";

/// The times of [`SUITE_TIMES`] from its text, errors naming the file and line.
fn suite_times(text: &str) -> Result<std::collections::HashMap<String, f64>, String> {
    suite::parse_times(text, SUITE_TIMES)
}

/// The label of the doc tests' job in the suite (and in [`SUITE_TIMES`]).
const DOC_TESTS: &str = "doc tests (cargo test --doc)";

/// The property tests' seed in `cargo xtask test` (and so in CI), unless `PROPTEST_RNG_SEED`
/// is set.
const PROPTEST_SEED: &str = "20261201";

fn test(backends: &[&str], jobs: usize) -> Result<(), String> {
    if backends.contains(&"wgpu") {
        ensure_vulkan()?;
    }
    let runtime = std::env::temp_dir().join("peft-rs-xdg");
    let _ = std::fs::create_dir_all(&runtime);
    let runtime = runtime.display().to_string();
    // The property tests draw the same cases on every run of the suite (CI is repeatable; a
    // failure reproduces with the seed printed here); `PROPTEST_RNG_SEED=N cargo xtask test`
    // or a plain `cargo test` explores other cases.
    let proptest_seed =
        std::env::var("PROPTEST_RNG_SEED").unwrap_or_else(|_| PROPTEST_SEED.to_string());
    eprintln!("xtask: property tests with PROPTEST_RNG_SEED={proptest_seed}");
    let suite = [
        "--workspace",
        "--exclude",
        "xtask",
        "--features",
        TEST_FEATURES,
    ];
    let start = std::time::Instant::now();
    let mut binaries = suite::build(cargo(), &root(), &suite)?;
    eprintln!(
        "xtask: built {} test binaries in {:.0} s",
        binaries.len(),
        start.elapsed().as_secs_f64()
    );
    // The doc tests, compiled and run by cargo, are one more job beside the binaries.
    binaries.push(suite::TestBinary {
        label: DOC_TESTS.into(),
        exe: PathBuf::from(cargo_program()),
        args: ["test"]
            .into_iter()
            .chain(suite)
            .chain(["--doc"])
            .map(String::from)
            .collect(),
        dir: root(),
    });
    match std::fs::read_to_string(root().join(SUITE_TIMES)) {
        Ok(text) => suite::longest_first(&mut binaries, &suite_times(&text)?),
        Err(e) => eprintln!("xtask: no {SUITE_TIMES} ({e}): binaries run in cargo's order"),
    }
    let mut failed = Vec::new();
    for backend in backends {
        eprintln!("xtask: === test suite on {backend}, {jobs} binaries at a time ===");
        let start = std::time::Instant::now();
        let envs = [
            ("BURN_DEVICE", *backend),
            ("XDG_RUNTIME_DIR", runtime.as_str()),
            ("PROPTEST_RNG_SEED", proptest_seed.as_str()),
        ];
        let report = suite::run(&binaries, jobs, &envs);
        for label in report.failed {
            failed.push(format!("{label} on {backend}"));
        }
        eprintln!(
            "xtask: test suite on {backend} took {:.0} s",
            start.elapsed().as_secs_f64()
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"));
        let measured = target.join(format!("xtask-suite-times-{backend}.tsv"));
        // The header is the one `xtask/suite-times.tsv` keeps, so that a refresh is one `cp`.
        let commit = git_head().unwrap_or_else(|| "commit unknown".into());
        let text = format!(
            "# Seconds each test binary took on {backend} in `cargo xtask test` ({commit}),\n\
             # {jobs} at a time; cargo xtask test starts the longest first. Refresh from a run:\n\
             # cp target/xtask-suite-times-{backend}.tsv {SUITE_TIMES}\n{}",
            suite::format_times(&report.times)
        );
        if let Err(e) = std::fs::write(&measured, text) {
            eprintln!("xtask: cannot write {}: {e}", measured.display());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

/// The short hash of the checked-out commit, when git can tell.
fn git_head() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !hash.trim().is_empty()).then(|| hash.trim().to_string())
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
        BACKENDS,
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
    .arg(BACKENDS)
    .arg("--")
    .args(&rest);
    if let Some(b) = backend {
        cmd.env("BURN_DEVICE", b);
    }
    run(default_flex(&mut cmd))
}

/// The fuzz targets (`fuzz/fuzz_targets`, bodies in `crates/peft-fuzz`).
const FUZZ_TARGETS: &[&str] = &[
    "adapter_config",
    "adapter_folder",
    "merge",
    "checkpoint",
    "targets",
    "data",
];

/// What libFuzzer printed at the end of a run (`-print_final_stats=1`).
fn fuzz_stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs each target under libFuzzer (nightly, no sanitizer: the project has no `unsafe` of its
/// own past one memory map, and an uninstrumented build runs several times more inputs) with
/// the limits the project holds itself to: 1 s per input, 2 GiB of memory in all and per
/// allocation. New inputs go to `fuzz/corpus/<target>` (not committed), crashes to
/// `fuzz/artifacts/<target>`; each one found becomes a file under `fuzz/regressions/<target>`,
/// which the normal test suite replays.
fn fuzz(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--seeds") {
        return run(cargo().args([
            "run",
            "-p",
            "peft-fuzz",
            "--bin",
            "fuzz-seeds",
            "--",
            "fuzz/seeds",
        ]));
    }
    let value = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    let seconds: u64 = match value("--seconds") {
        Some(s) => s
            .parse()
            .map_err(|_| format!("--seconds `{s}` is not a whole number"))?,
        None => 60,
    };
    let targets: Vec<&str> =
        match value("--target") {
            Some(t) => vec![*FUZZ_TARGETS.iter().find(|k| **k == t).ok_or_else(|| {
                format!("unknown fuzz target `{t}` ({})", FUZZ_TARGETS.join(", "))
            })?],
            None => FUZZ_TARGETS.to_vec(),
        };
    let logs = root().join("target/fuzz-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for target in targets {
        let corpus = root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let log_path = logs.join(format!("{target}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(root().join("fuzz/seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args([
                "-timeout=1",
                "-rss_limit_mb=2048",
                "-malloc_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .env("BURN_DEVICE", "flex")
            .stderr(log);
        eprintln!(
            "xtask: fuzzing {target} for {seconds} s (log: {})",
            log_path.display()
        );
        let ok = run(&mut cmd).is_ok();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let runs = fuzz_stat(&text, "number_of_executed_units");
        let rate = fuzz_stat(&text, "average_exec_per_sec");
        let rss = fuzz_stat(&text, "peak_rss_mb");
        summary.push(format!(
            "{target:16} {:>12} runs {:>8} /s {:>6} MB peak  {}",
            runs.map(|r| r.to_string()).unwrap_or("?".into()),
            rate.map(|r| r.to_string()).unwrap_or("?".into()),
            rss.map(|r| r.to_string()).unwrap_or("?".into()),
            if ok {
                "no crash"
            } else {
                "FAILED: see the log and fuzz/artifacts"
            }
        ));
        if !ok {
            failed.push(target);
        }
    }
    eprintln!("xtask: fuzz summary");
    for line in summary {
        eprintln!("  {line}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzz targets failed: {} (copy each input from fuzz/artifacts to fuzz/regressions/<target> once fixed)",
            failed.join(", ")
        ))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => {
            let backend = args.windows(2).find(|w| w[0] == "--backend").map(|w| w[1].as_str());
            let jobs = match args.windows(2).find(|w| w[0] == "--jobs") {
                None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
                Some(w) => w[1]
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--jobs takes a positive number, not `{}`", w[1])),
            };
            match (backend, jobs) {
                (_, Err(e)) => Err(e),
                (None, Ok(j)) => test(&["flex", "wgpu"], j),
                (Some("all"), Ok(j)) => test(&["flex", "ndarray", "wgpu"], j),
                (Some(b @ ("flex" | "ndarray" | "wgpu")), Ok(j)) => test(&[b], j),
                (Some(other), _) => {
                    Err(format!("unknown backend `{other}` (flex, ndarray, wgpu, all)"))
                }
            }
        }
        Some("check-cuda") => run(cargo()
            .args(["check", "--workspace", "--exclude", "xtask", "--features", "peft-core/cuda"])
            .env("DOCS_RS", "1")),
        Some("fixtures") => fixtures(&args[1..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("criterion") => {
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "peft-benches", "--bench", "layer", "--features"])
                .arg(BACKENDS)
                .arg("--")
                .args(&args[2..]);
            run(default_flex(&mut cmd))
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("train") => {
            let mut cmd = cargo();
            cmd.args(["run", "--release", "-p", "peft-benches", "--bin", "train-bench", "--features"])
                .arg(BACKENDS)
                .arg("--")
                .args(&args[2..]);
            run(default_flex(&mut cmd))
        }
        Some("bench") => guide(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        _ => Err("usage: cargo xtask <test [--backend flex|ndarray|wgpu|all] [--jobs N] | check-cuda | fixtures [--python PY] [--verify | --verify-only] | bench [--quick] [--models M] [--methods K] [--backend B] [--vs-pytorch [--python PY]] | bench criterion [args] | bench train [args] | fuzz [--target T] [--seconds S] | fuzz --seeds>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed times parse (a bad line would stop `cargo xtask test` before any test
    /// runs) and list the doc tests' job under the label the suite gives it.
    #[test]
    fn the_committed_suite_times_parse() {
        let text = std::fs::read_to_string(root().join(SUITE_TIMES)).expect("read the times");
        let times = suite_times(&text).expect("parse the times");
        assert!(
            times.contains_key(DOC_TESTS),
            "{SUITE_TIMES} lacks {DOC_TESTS}"
        );
        assert!(
            times.len() > 20,
            "{SUITE_TIMES} lists {} binaries",
            times.len()
        );
    }
}
