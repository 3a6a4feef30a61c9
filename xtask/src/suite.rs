//! The test suite's binaries, run several at a time.
//!
//! `cargo test` runs one test binary after another. On wgpu that leaves a core idle: every test
//! in a binary shares one device, whose thread does the work (on lavapipe: translating each
//! kernel's shader and running it), so a binary uses about one core whatever its test threads.
//! Here the build's test binaries run `jobs` at a time, each in its package's folder as
//! `cargo test` runs it, its output printed whole when it ends. They start longest first, by
//! the times of an earlier run (`xtask/suite-times.tsv`), so that no long binary starts last
//! and runs alone on a core while the other idles; the doc tests run as one more job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One test binary of the build.
pub struct TestBinary {
    /// What it tests, as `cargo test` names it: the package folder and the target's source
    /// (`crates/peft-lora/tests/training.rs`).
    pub label: String,
    /// The executable.
    pub exe: PathBuf,
    /// Its arguments (none for a test binary; `test --doc …` for cargo running the doc tests).
    pub args: Vec<String>,
    /// The package's folder, where `cargo test` runs it.
    pub dir: PathBuf,
}

/// Builds the test binaries (`cargo test --no-run` with `args`) and lists them in cargo's
/// order. Compiler messages go to standard error as `cargo test` prints them.
pub fn build(mut cargo: Command, root: &Path, args: &[&str]) -> Result<Vec<TestBinary>, String> {
    cargo
        .arg("test")
        .args(args)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(root)
        .stderr(Stdio::inherit());
    eprintln!("xtask: running {cargo:?}");
    let out = cargo
        .output()
        .map_err(|e| format!("cannot start {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cargo:?} failed with {}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut binaries = Vec::new();
    for line in stdout.lines() {
        let message: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("cargo printed a line that is not JSON ({e}): {line}"))?;
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = message["executable"].as_str() else {
            continue;
        };
        let (Some(manifest), Some(src)) = (
            message["manifest_path"].as_str(),
            message["target"]["src_path"].as_str(),
        ) else {
            return Err(format!(
                "cargo's artifact message lacks manifest_path or src_path: {line}"
            ));
        };
        let dir = Path::new(manifest).parent().unwrap_or(root).to_path_buf();
        let label = Path::new(src)
            .strip_prefix(root)
            .unwrap_or(Path::new(src))
            .display()
            .to_string();
        binaries.push(TestBinary {
            label,
            exe: PathBuf::from(exe),
            args: Vec::new(),
            dir,
        });
    }
    Ok(binaries)
}

/// Seconds each binary took in an earlier run, by label: the lines `seconds<TAB>label` of
/// `text`, read from `file` (named in errors with the line); blank lines and `#` comments are
/// skipped.
pub fn parse_times(text: &str, file: &str) -> Result<HashMap<String, f64>, String> {
    let mut times = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once('\t').and_then(|(secs, label)| {
            let secs: f64 = secs.trim().parse().ok()?;
            (secs.is_finite() && secs >= 0.0 && !label.trim().is_empty())
                .then(|| (label.trim().to_string(), secs))
        });
        let Some((label, secs)) = parsed else {
            return Err(format!(
                "{file} line {}: expected `seconds<TAB>label`, found {line:?}",
                i + 1
            ));
        };
        times.insert(label, secs);
    }
    Ok(times)
}

/// `times` as `parse_times` reads them, longest first.
pub fn format_times(times: &[(String, f64)]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted
        .iter()
        .map(|(label, secs)| format!("{secs:.1}\t{label}\n"))
        .collect()
}

/// Orders `binaries` longest first by `times`; a binary `times` does not know (a new one) goes
/// first, as if it were the longest. Ties keep cargo's order.
pub fn longest_first(binaries: &mut [TestBinary], times: &HashMap<String, f64>) {
    let secs = |b: &TestBinary| times.get(&b.label).copied().unwrap_or(f64::INFINITY);
    binaries.sort_by(|a, b| secs(b).total_cmp(&secs(a)));
}

/// What [`run`] saw: the labels of the binaries that failed, in the order they ended, and each
/// binary's time in seconds.
pub struct Report {
    /// The binaries that failed or could not start.
    pub failed: Vec<String>,
    /// `(label, seconds)` of every binary, in the order they ended.
    pub times: Vec<(String, f64)>,
}

/// Runs every binary, `jobs` at a time in the order given, with `envs` set; prints each one's
/// output whole, with its time, when it ends.
pub fn run(binaries: &[TestBinary], jobs: usize, envs: &[(&str, &str)]) -> Report {
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let times = Mutex::new(Vec::new());
    let print = Mutex::new(());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(binary) = binaries.get(i) else { break };
                    let start = Instant::now();
                    let result = Command::new(&binary.exe)
                        .args(&binary.args)
                        .current_dir(&binary.dir)
                        .envs(envs.iter().copied())
                        .stdin(Stdio::null())
                        .output();
                    let secs = start.elapsed().as_secs_f64();
                    let _print = print.lock().unwrap_or_else(|e| e.into_inner());
                    let ok = match result {
                        Ok(out) => {
                            println!("\n     Running {} ({})", binary.label, binary.exe.display());
                            print!("{}", String::from_utf8_lossy(&out.stdout));
                            eprint!("{}", String::from_utf8_lossy(&out.stderr));
                            out.status.success()
                        }
                        Err(e) => {
                            eprintln!("xtask: cannot start {}: {e}", binary.exe.display());
                            false
                        }
                    };
                    let verdict = if ok { "ok" } else { "FAILED" };
                    eprintln!("xtask: {} {verdict} in {secs:.1} s", binary.label);
                    times
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((binary.label.clone(), secs));
                    if !ok {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(binary.label.clone());
                    }
                }
            });
        }
    });
    Report {
        failed: failed.into_inner().unwrap_or_else(|e| e.into_inner()),
        times: times.into_inner().unwrap_or_else(|e| e.into_inner()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(exe: &str) -> TestBinary {
        TestBinary {
            label: exe.into(),
            exe: PathBuf::from(exe),
            args: Vec::new(),
            dir: PathBuf::from("/"),
        }
    }

    /// Every binary runs, whatever failed before it, and each failure is named once.
    #[test]
    fn every_binary_runs_and_failures_are_named() {
        let binaries = [
            "/bin/true",
            "/bin/false",
            "/bin/true",
            "/no/such/binary",
            "/bin/false",
        ]
        .map(binary);
        for jobs in [1, 2, 5] {
            let report = run(&binaries, jobs, &[]);
            let mut failed = report.failed;
            failed.sort();
            assert_eq!(report.times.len(), binaries.len(), "jobs {jobs}");
            assert_eq!(
                failed,
                ["/bin/false", "/bin/false", "/no/such/binary"],
                "jobs {jobs}"
            );
        }
    }

    /// A binary sees the environment it is given and runs in its package's folder.
    #[test]
    fn binaries_run_in_their_folder_with_the_environment() {
        let script = std::env::temp_dir().join(format!("xtask-suite-{}.sh", std::process::id()));
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$(pwd -P)\" = /tmp ] && [ \"$SUITE_CHECK\" = yes ]\n",
        )
        .expect("write the script");
        let mut perms = std::fs::metadata(&script)
            .expect("script metadata")
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&script, perms).expect("make the script executable");
        let at = |label: &str, dir: &str| TestBinary {
            label: label.into(),
            exe: script.clone(),
            args: Vec::new(),
            dir: dir.into(),
        };
        let with_env = run(
            &[at("in /tmp", "/tmp"), at("in /", "/")],
            2,
            &[("SUITE_CHECK", "yes")],
        )
        .failed;
        let without_env = run(&[at("no env", "/tmp")], 1, &[]).failed;
        let _ = std::fs::remove_file(&script);
        assert_eq!(with_env, ["in /"]);
        assert_eq!(without_env, ["no env"]);
    }

    /// A job's arguments reach it (the doc tests run as `cargo test --doc …`).
    #[test]
    fn a_job_gets_its_arguments() {
        let job = |arg: &str| TestBinary {
            label: arg.into(),
            exe: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), format!("exit {arg}")],
            dir: PathBuf::from("/"),
        };
        assert_eq!(run(&[job("0"), job("3")], 2, &[]).failed, ["3"]);
    }

    /// Longest first by the recorded times; a binary without one first of all; ties in the
    /// order given.
    #[test]
    fn binaries_start_longest_first() {
        let times = parse_times(
            "# seconds, label\n10.0\ta\n\n300.5\tb\n10\tc\n0.1\td\n",
            "times.tsv",
        )
        .expect("parse");
        let mut binaries = ["a", "b", "c", "d", "new"].map(binary);
        longest_first(&mut binaries, &times);
        let order: Vec<_> = binaries.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(order, ["new", "b", "a", "c", "d"]);
    }

    /// What `format_times` writes, `parse_times` reads back; a bad line is named by file and
    /// number.
    #[test]
    fn times_round_trip_and_bad_lines_are_named() {
        let times = vec![("x y.rs".to_string(), 2.25), ("z".to_string(), 130.0)];
        let text = format_times(&times);
        assert!(text.starts_with("130.0\tz\n"), "{text}");
        let back = parse_times(&text, "t.tsv").expect("parse");
        assert_eq!(back.len(), 2);
        assert_eq!(back["z"], 130.0);
        assert!((back["x y.rs"] - 2.2).abs() < 0.06);
        for bad in ["12 no tab", "-1\tneg", "abc\tlabel", "5\t "] {
            let err = parse_times(&format!("1\tok\n{bad}\n"), "t.tsv").expect_err(bad);
            assert!(err.starts_with("t.tsv line 2:"), "{err}");
        }
    }
}
