//! The test suite's binaries, run several at a time.
//!
//! `cargo test` runs one test binary after another. On wgpu that leaves a core idle: every test
//! in a binary shares one device, whose thread does the work (on lavapipe: translating each
//! kernel's shader and running it), so a binary uses about one core whatever its test threads.
//! Here the build's test binaries run `jobs` at a time, each in its package's folder as
//! `cargo test` runs it, its output printed whole when it ends.

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
            dir,
        });
    }
    Ok(binaries)
}

/// Runs every binary, `jobs` at a time, with `envs` set; prints each one's output whole, with
/// its time, when it ends. Returns the labels of those that failed, in the order they ran.
pub fn run(binaries: &[TestBinary], jobs: usize, envs: &[(&str, &str)]) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let print = Mutex::new(());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(binary) = binaries.get(i) else { break };
                    let start = Instant::now();
                    let result = Command::new(&binary.exe)
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
    failed.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(exe: &str) -> TestBinary {
        TestBinary {
            label: exe.into(),
            exe: PathBuf::from(exe),
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
            let mut failed = run(&binaries, jobs, &[]);
            failed.sort();
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
            dir: dir.into(),
        };
        let with_env = run(
            &[at("in /tmp", "/tmp"), at("in /", "/")],
            2,
            &[("SUITE_CHECK", "yes")],
        );
        let without_env = run(&[at("no env", "/tmp")], 1, &[]);
        let _ = std::fs::remove_file(&script);
        assert_eq!(with_env, ["in /"]);
        assert_eq!(without_env, ["no env"]);
    }
}
