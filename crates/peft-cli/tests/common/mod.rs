//! Helpers shared by the `peft train` and `peft generate` tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `fixtures/train`: the tiny Llama, its tokenizer, data sets and PEFT's reference runs.
pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/train"))
}

/// A path as a `String` argument.
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Runs the `peft` binary on flex: (success, stderr).
pub fn peft_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_peft"))
        .env("BURN_DEVICE", "flex")
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stderr).unwrap())
}

/// A tokenizer folder under `dir` with the fixture's `tokenizer.json` and a
/// `tokenizer_config.json` without a chat template.
pub fn tokenizer_without_template(dir: &Path) -> PathBuf {
    let folder = dir.join("no_template");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        fixtures().join("model/tokenizer.json"),
        folder.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        folder.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>", "pad_token": "<pad>"}"#,
    )
    .unwrap();
    folder
}

/// Asserts that `peft` failed with one `peft: error:` line holding every needle.
#[track_caller]
pub fn assert_one_line_error(args: &[&str], ok: bool, stderr: &str, needles: &[&str]) {
    assert!(!ok, "{args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.starts_with("peft: error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} lacks {n:?}");
    }
}
