//! `peft generate` against transformers' greedy `generate` (`xtask/fixtures/generation.py`):
//! the same tokens for the base model and for LoRA, rsLoRA all-linear, MiSS, LoRA-FA-trained and
//! DoRA adapters (and Bone, converted from MiSS), unmerged and merged, for a plain prompt and a
//! chat conversation; seeded sampling repeats; bad input is one line on stderr.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use peft_cli::cli::{Cli, Command as Cmd};
use peft_train::generate::Generation;
use peft_train::tokenizer::TextTokenizer;
use serde_json::Value;

mod common;
use common::{assert_one_line_error, fixtures, peft_cmd, s, tokenizer_without_template};

fn generate(args: &[String]) -> (Generation, String) {
    let mut all = vec!["peft".to_string(), "generate".to_string()];
    all.extend_from_slice(args);
    let cli = <Cli as clap::Parser>::try_parse_from(&all).unwrap();
    let Cmd::Generate(cmd) = cli.command else {
        panic!("not generate")
    };
    let mut out = Vec::new();
    let generation = peft_cli::generate::generate(&cmd, &mut out).unwrap();
    (generation, String::from_utf8_lossy(&out).into_owned())
}

/// The adapter folder of a fixture run name (`lora/merged` → the LoRA folder).
fn adapter_dir(run: &str) -> Option<PathBuf> {
    let rel = match run.split('/').next().unwrap() {
        "base" => return None,
        "lora" => "cases/lora_qv/final",
        "lora_rslora_all" => "cases/lora_all_rslora/final",
        "miss" => "cases/miss/final",
        "lorafa" => "cases/lorafa/final",
        "dora" => "generation/dora",
        other => panic!("unknown run {other}"),
    };
    Some(fixtures().join(rel))
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("generation/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `--prompt` or `--messages` for a fixture prompt (messages written to `dir`).
fn prompt_args(p: &Value, dir: &Path) -> Vec<String> {
    match p.get("prompt") {
        Some(text) => vec!["--prompt".into(), text.as_str().unwrap().into()],
        None => {
            let path = dir.join("messages.json");
            std::fs::write(&path, p["messages"].to_string()).unwrap();
            vec!["--messages".into(), s(&path)]
        }
    }
}

#[test]
fn greedy_equals_transformers_for_every_method() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("model");
    let tok = TextTokenizer::from_dir(&model).unwrap();
    let mut compared = std::collections::BTreeMap::<String, usize>::new();
    for p in cases["prompts"].as_array().unwrap() {
        let prompt = prompt_args(p, dir.path());
        let messages = p.get("messages").map(|_| dir.path().join("messages.json"));
        let prompt_ids = peft_cli::generate::prompt_ids(
            &tok,
            p.get("prompt").and_then(Value::as_str),
            messages.as_deref(),
        )
        .unwrap();
        assert_eq!(prompt_ids, ids(&p["ids"]), "prompt ids of {p}");
        for (run, expected) in p["runs"].as_object().unwrap() {
            let want = ids(&expected["ids"]);
            if want.is_empty() {
                continue; // The reference's first choice was within float noise.
            }
            let mut args = vec!["--model".into(), s(&model)];
            args.extend(prompt.iter().cloned());
            args.extend(["--max-new-tokens".into(), want.len().to_string()]);
            if let Some(a) = adapter_dir(run) {
                args.extend(["--adapter".into(), s(&a)]);
            }
            if run.ends_with("/merged") {
                args.push("--merge".into());
            }
            let (got, text) = generate(&args);
            assert_eq!(got.tokens, want, "{run} on {p}");
            assert_eq!(
                text.trim_end_matches('\n'),
                tok.decode(&want, true).unwrap()
            );
            *compared.entry(run.clone()).or_default() += want.len();
        }
    }
    // Every method and mode is compared over a real stretch of tokens.
    assert_eq!(compared.len(), 11, "{compared:?}");
    for (run, n) in &compared {
        assert!(*n >= 20, "{run}: only {n} tokens compared");
    }
}

#[test]
fn bone_generates_as_the_miss_adapter_it_converts() {
    let cases = cases();
    let p = &cases["prompts"][1];
    let dir = tempfile::tempdir().unwrap();
    let bone = dir.path().join("bone");
    peft_cli::convert::convert(&fixtures().join("cases/miss/final"), &bone, Some("bone")).unwrap();
    let want = ids(&p["runs"]["miss/unmerged"]["ids"]);
    for merge in [false, true] {
        let mut args = vec![
            "--model".into(),
            s(&fixtures().join("model")),
            "--adapter".into(),
            s(&bone),
            "--max-new-tokens".into(),
            want.len().to_string(),
        ];
        args.extend(prompt_args(p, dir.path()));
        if merge {
            args.push("--merge".into());
        }
        assert_eq!(generate(&args).0.tokens, want, "merge {merge}");
    }
}

#[test]
fn sampling_with_a_seed_repeats() {
    let model = s(&fixtures().join("model"));
    let run = |seed: &str| {
        generate(
            &[
                "--model",
                &model,
                "--prompt",
                "The cat",
                "--max-new-tokens",
                "16",
                "--temperature",
                "1.5",
                "--top-p",
                "0.95",
                "--seed",
                seed,
            ]
            .map(String::from),
        )
        .0
        .tokens
    };
    let a = run("1");
    assert_eq!(a.len(), 16);
    assert_eq!(a, run("1"));
    assert_ne!(a, run("2"));
}

#[test]
fn bad_input_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = s(&fixtures().join("model"));
    let no_template = tokenizer_without_template(dir.path());
    let messages = dir.path().join("m.json");
    std::fs::write(&messages, r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    let long: String = (0..400)
        .map(|i| char::from(b'!' + (i * 7 % 90) as u8))
        .collect();
    let other_adapter = s(&fixtures().join("../models/llama/adapters/dora_all_embed/adapter"));
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["--prompt", &long],
            &["more than the model's 128 positions"],
        ),
        (
            vec!["--prompt", "hi", "--max-new-tokens", "0"],
            &["--max-new-tokens"],
        ),
        (
            vec![
                "--prompt",
                "hi",
                "--tokenizer",
                dir.path().to_str().unwrap(),
            ],
            &["tokenizer.json"],
        ),
        (
            vec![
                "--messages",
                messages.to_str().unwrap(),
                "--tokenizer",
                no_template.to_str().unwrap(),
            ],
            &["m.json", "no chat template"],
        ),
        (
            vec!["--prompt", "hi", "--adapter", &other_adapter],
            &["does not fit", "mis-shaped"],
        ),
        (
            vec!["--prompt", "hi", "--temperature", "0"],
            &["--temperature"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["generate", "--model", &model];
        args.extend(extra);
        let (ok, stderr) = peft_cmd(&args);
        assert_one_line_error(&args, ok, &stderr, needles);
    }
}
