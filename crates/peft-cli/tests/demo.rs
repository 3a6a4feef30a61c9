//! The README's first command, shortened: `peft train --test` on the bundled pretrained model and
//! task (`fixtures/demo`, from `xtask/fixtures/demo.py`) must take the test split from no right
//! answers to most of them; `peft eval` on the saved adapter must agree; `peft eval` rejects rows
//! it cannot check.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

mod common;
use common::{assert_one_line_error, peft_cmd};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The `peft train` arguments of the README's block marked `demo-train`.
fn readme_command() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("<!-- demo-train")
        .nth(1)
        .and_then(|rest| rest.split("```sh").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let words: Vec<String> = block
        .replace("\\\n", " ")
        .split_whitespace()
        .map(String::from)
        .collect();
    let start = words.iter().position(|w| w == "--").unwrap() + 1;
    words[start..].to_vec()
}

/// Runs `peft` from the repository root (the README's paths are relative to it): (success,
/// stdout, stderr).
fn peft_at_root(args: &[String]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_peft"))
        .current_dir(root())
        .env("BURN_DEVICE", "flex")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `exact match 18/24 (75.0%)` → (18, 24).
fn score(line: &str) -> (usize, usize) {
    let frac = line
        .split("exact match ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let (a, b) = frac.split_once('/').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn the_readme_command_teaches_the_bundled_task() {
    let mut args = readme_command();
    assert_eq!(args[0], "train", "{args:?}");
    let out = tempfile::tempdir().unwrap();
    let i = args.iter().position(|a| a == "--steps").unwrap();
    args[i + 1] = "60".into();
    let o = args.iter().position(|a| a == "--out").unwrap();
    args[o + 1] = out.path().to_str().unwrap().into();
    args.push("--quiet".into());
    let (ok, stdout, stderr) = peft_at_root(&args);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let before = score(lines.iter().find(|l| l.contains("before")).unwrap());
    let after = score(lines.iter().find(|l| l.contains("after")).unwrap());
    assert_eq!(before, (0, 24), "{stdout}");
    assert!(
        after.0 >= 20,
        "only {after:?} right after 60 steps: {stdout}"
    );

    // `peft eval` on the saved folder gives the same answers.
    let (ok, stdout, stderr) = peft_at_root(
        &[
            "eval",
            "--model",
            "fixtures/demo/model",
            "--adapter",
            out.path().to_str().unwrap(),
            "--data",
            "fixtures/demo/task/test.jsonl",
        ]
        .map(String::from),
    );
    assert!(ok, "{stderr}");
    assert_eq!(score(&stdout), after, "{stdout}");
}

#[test]
fn eval_rejects_rows_it_cannot_check() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/demo/model");
    let model = model.to_str().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        (
            "{\"text\": \"a fox\"}\n",
            &["q.jsonl:1:", "`prompt` and `completion`"],
        ),
        (
            "{\"prompt\": \"Q\", \"completion\": \" \"}\n",
            &["q.jsonl:1:", "empty"],
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
            &["q.jsonl:1:", "assistant"],
        ),
    ];
    for (text, needles) in cases {
        let path = dir.path().join("q.jsonl");
        std::fs::write(&path, text).unwrap();
        let args = ["eval", "--model", model, "--data", path.to_str().unwrap()];
        let (ok, stderr) = peft_cmd(&args);
        assert_one_line_error(&args, ok, &stderr, needles);
    }
}
