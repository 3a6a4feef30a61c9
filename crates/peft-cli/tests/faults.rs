//! Interrupted writes. Each writer of the `peft` tool (`peft merge`'s streamed output, an
//! adapter folder's files, a training checkpoint) is failed at each of its stages through the
//! fault points of `peft_core::fault` (`PEFT_FAULT=<point>[:<mode>]`, compiled in with the
//! `fault-injection` feature), and a `peft merge` process is killed mid-write. Every time, the
//! destination holds the old file or the complete new one, never a partial one; an error is
//! one line naming the destination; inputs are untouched.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{fixtures, s};

/// Runs `peft` on flex with `PEFT_FAULT` set to `fault` (if any).
fn peft_with_fault(args: &[&str], fault: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.env("BURN_DEVICE", "flex").env_remove("PEFT_FAULT");
    if let Some(f) = fault {
        cmd.env("PEFT_FAULT", f);
    }
    cmd.args(args).output().unwrap()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a failure with one `peft: error:` line holding every needle.
#[track_caller]
fn assert_failed_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded despite the fault");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("peft: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
}

/// Asserts the process died from a signal (the `abort` mode), not an orderly exit.
#[track_caller]
fn assert_killed(out: &Output) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.signal().is_some(),
        "not killed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir` (recursively) with its size and a hash of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (usize, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    (bytes.len(), hash(&bytes)),
                );
            }
        }
    }
    out
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Temporary files left in `dir` (names with `.tmp`).
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

fn merge_args<'a>(adapter: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "merge",
        "--base",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/train/model/model.safetensors"
        ),
        "--adapter",
        adapter,
        "--out",
        out,
    ]
}

const MERGE_POINTS: [&str; 4] = ["merge.create", "merge.tensor", "merge.sync", "merge.rename"];

#[test]
fn merge_output_is_old_or_new_whatever_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("merged.safetensors");
    let out = s(&out_path);
    let old_adapter = s(&fixtures().join("cases/miss/final"));
    let new_adapter = s(&fixtures().join("cases/lora_qv/final"));
    let inputs = snapshot(&fixtures().join("cases/lora_qv/final"));
    // The expected new file, written where nothing can interfere.
    let reference = tmp.path().join("reference.safetensors");
    assert_ok(&peft_with_fault(
        &merge_args(&new_adapter, &s(&reference)),
        None,
    ));
    let new = std::fs::read(&reference).unwrap();
    assert_ok(&peft_with_fault(&merge_args(&old_adapter, &out), None));
    let old = std::fs::read(&out_path).unwrap();
    assert_ne!(old, new);

    for point in MERGE_POINTS {
        for (mode, needle) in [
            ("error", "fault injected"),
            ("enospc", "No space left on device"),
            ("erofs", "Read-only file system"),
        ] {
            let fault = format!("{point}:{mode}");
            let run = peft_with_fault(&merge_args(&new_adapter, &out), Some(&fault));
            assert_failed_with(&run, &[&out, needle]);
            assert!(std::fs::read(&out_path).unwrap() == old, "{fault}");
            assert!(
                temporaries(tmp.path()).is_empty(),
                "{fault}: {:?}",
                temporaries(tmp.path())
            );
        }
    }
    for point in MERGE_POINTS {
        let fault = format!("{point}:abort");
        let run = peft_with_fault(&merge_args(&new_adapter, &out), Some(&fault));
        assert_killed(&run);
        assert!(std::fs::read(&out_path).unwrap() == old, "{fault}");
    }
    // The next run replaces the file and clears what the killed runs left.
    assert_ok(&peft_with_fault(&merge_args(&new_adapter, &out), None));
    assert!(std::fs::read(&out_path).unwrap() == new);
    assert!(
        temporaries(tmp.path()).is_empty(),
        "{:?}",
        temporaries(tmp.path())
    );
    assert_eq!(snapshot(&fixtures().join("cases/lora_qv/final")), inputs);
}

#[test]
fn a_killed_merge_leaves_the_old_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("merged.safetensors");
    let out = s(&out_path);
    std::fs::write(&out_path, b"the previous merge").unwrap();
    let adapter = s(&fixtures().join("cases/lora_qv/final"));
    // Stops after the first tensor: the temporary file is then half written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .env("BURN_DEVICE", "flex")
        .env("PEFT_FAULT", "merge.tensor:stall")
        .args(merge_args(&adapter, &out))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("stalled at merge.tensor"), "{line}");
    let partial = temporaries(tmp.path());
    assert_eq!(partial.len(), 1, "{partial:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read(&out_path).unwrap(), b"the previous merge");
    let size = std::fs::metadata(tmp.path().join(&partial[0]))
        .unwrap()
        .len();
    let full = std::fs::metadata(fixtures().join("model/model.safetensors"))
        .unwrap()
        .len();
    assert!(size > 0 && size < full, "{size} of {full} bytes");
}

/// `peft train` arguments: LoRA q,v on the tiny Llama for `steps` steps into `out`.
fn train_args(out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--model",
        &s(&fixtures().join("model")),
        "--data",
        &s(&fixtures().join("data/text.jsonl")),
        "--out",
        &s(out),
        "--targets",
        "q_proj,v_proj",
        "--r",
        "4",
        "--batch",
        "2",
        "--lr",
        "0.01",
        "--quiet",
        "--steps",
        &steps.to_string(),
    ]
    .map(str::to_string)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn train_with_fault(args: &[String], fault: Option<&str>) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    peft_with_fault(&args, fault)
}

#[test]
fn adapter_files_are_old_or_new_whatever_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    assert_ok(&train_with_fault(
        &train_args(&out, 2, &["--seed", "1"]),
        None,
    ));
    let old = snapshot(&out);
    let args = train_args(&out, 2, &["--seed", "2"]);
    let points = [
        "write_atomic.create",
        "write_atomic.write",
        "write_atomic.sync",
        "write_atomic.rename",
    ];
    for point in points {
        for mode in ["error", "enospc"] {
            let fault = format!("{point}:{mode}");
            let run = train_with_fault(&args, Some(&fault));
            assert_failed_with(&run, &[&s(&out)]);
            assert_eq!(snapshot(&out), old, "{fault}");
        }
    }
    for point in points {
        let fault = format!("{point}:abort");
        assert_killed(&train_with_fault(&args, Some(&fault)));
        // Killed, the folder holds the old files (and a temporary file the next save removes).
        let now: BTreeMap<_, _> = snapshot(&out)
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains(".tmp"))
            .collect();
        assert_eq!(now, old, "{fault}");
    }
    assert_ok(&train_with_fault(&args, None));
    let new = snapshot(&out);
    assert_ne!(new, old);
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
}

#[test]
fn checkpoints_are_old_or_new_whatever_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let checkpoint = out.join("checkpoint-2");
    assert_ok(&train_with_fault(
        &train_args(&out, 4, &["--save-every", "2", "--seed", "1"]),
        None,
    ));
    let old = snapshot(&checkpoint);
    let args = train_args(&out, 4, &["--save-every", "2", "--seed", "2"]);
    for fault in [
        "checkpoint.create:error",
        "checkpoint.swap:enospc",
        "write_atomic.write:error",
    ] {
        let run = train_with_fault(&args, Some(fault));
        assert_failed_with(&run, &[]);
        assert_eq!(snapshot(&checkpoint), old, "{fault}");
        assert!(
            temporaries(&out).is_empty(),
            "{fault}: {:?}",
            temporaries(&out)
        );
    }
    // Killed with the new checkpoint complete but not yet swapped in.
    assert_killed(&train_with_fault(&args, Some("checkpoint.swap:abort")));
    assert_eq!(snapshot(&checkpoint), old);
    // The old checkpoint still resumes, and a full run swaps the new one in.
    let resumed = tmp.path().join("resumed");
    assert_ok(&train_with_fault(
        &train_args(&resumed, 4, &["--seed", "1", "--resume", &s(&checkpoint)]),
        None,
    ));
    assert_ok(&train_with_fault(&args, None));
    let new = snapshot(&checkpoint);
    assert_ne!(new, old);
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // A learning rate of 1e38 on the LM head's adapter: the logits overflow at step 2.
    let mut args = train_args(&out, 40, &["--save-every", "1"]);
    for (flag, value) in [("--lr", "1e38"), ("--targets", "lm_head")] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.into();
    }
    let run = train_with_fault(&args, None);
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    let line = err.lines().last().unwrap_or_default();
    assert!(!run.status.success());
    assert!(
        line.starts_with("peft: error: step ") && line.contains("the loss is NaN; stopped"),
        "{err}"
    );
    let named = line
        .split("last checkpoint: ")
        .nth(1)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no checkpoint named: {err}"));
    // The named checkpoint is complete, finite and reads as an adapter.
    let tensors =
        peft_core::io::read_safetensors(&Path::new(named).join("adapter_model.safetensors"))
            .unwrap();
    assert!(!tensors.is_empty());
    for (name, t) in tensors {
        assert!(
            t.try_to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()),
            "{name} is not finite"
        );
    }
    assert_ok(&peft_with_fault(&["inspect", named], None));
    // Nothing later than it was written, and no adapter at the top: the run did not finish.
    assert!(!out.join("adapter_model.safetensors").exists());
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
}

#[test]
fn an_output_that_cannot_be_a_file_is_one_error_and_inputs_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = s(&fixtures().join("cases/lora_qv/final"));
    let inputs = snapshot(&fixtures().join("cases/lora_qv/final"));
    // `--out` is a folder.
    let run = peft_with_fault(&merge_args(&adapter, &s(tmp.path())), None);
    assert_failed_with(&run, &["is a folder"]);
    // `--out` is inside a regular file.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let run = peft_with_fault(&merge_args(&adapter, &s(&file.join("m.safetensors"))), None);
    assert_failed_with(&run, &["file"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // `peft train --out` is a regular file.
    let run = train_with_fault(&train_args(&file, 1, &[]), None);
    assert_failed_with(&run, &[&s(&file)]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(snapshot(&fixtures().join("cases/lora_qv/final")), inputs);
}
