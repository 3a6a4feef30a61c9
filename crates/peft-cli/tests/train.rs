//! `peft train` against transformers + PEFT (`xtask/fixtures/train.py`): step-for-step losses
//! and final adapters for LoRA q,v, LoRA all-linear with rsLoRA + weight decay + cosine warm-up,
//! MiSS, LoRA-FA, a chat data set, and gradient accumulation; resume equality; tokenization; and
//! every bad input as one line on stderr with nothing written.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::TensorData;
use peft_cli::cli::{Cli, Command as Cmd};
use peft_train::TrainReport;
use peft_train::data::{DataOptions, read_jsonl};
use peft_train::tokenizer::TextTokenizer;
use serde_json::Value;

mod common;
use common::{assert_one_line_error, fixtures, peft_cmd, s, tokenizer_without_template};

/// The `peft train` arguments of a fixture case (as `case.json` records them).
fn case_args(name: &str, out: &Path) -> Vec<String> {
    let dir = fixtures().join("cases").join(name);
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let st = &case["settings"];
    let method = if case["lorafa"].as_bool().unwrap() {
        "lora-fa"
    } else {
        "lora"
    };
    let mut args: Vec<String> = vec![
        "peft".into(),
        "train".into(),
        "--model".into(),
        s(&fixtures().join("model")),
        "--data".into(),
        s(&fixtures().join("data").join(case["data"].as_str().unwrap())),
        "--out".into(),
        s(out),
        "--init-adapter".into(),
        s(&dir.join("init")),
        "--method".into(),
        method.into(),
        "--no-shuffle".into(),
        "--quiet".into(),
    ];
    for key in [
        "steps",
        "batch",
        "grad_accum",
        "lr",
        "weight_decay",
        "schedule",
        "warmup",
        "max_grad_norm",
    ] {
        args.push(format!("--{}", key.replace('_', "-")));
        args.push(match &st[key] {
            Value::String(v) => v.clone(),
            v => v.to_string(),
        });
    }
    args
}

/// Sets the value of `flag` in `args`.
fn set_arg(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.into();
}

fn train(args: &[String]) -> TrainReport {
    let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
    let Cmd::Train(cmd) = cli.command else {
        panic!("not train")
    };
    peft_cli::train::train(&cmd.into_args()).unwrap()
}

fn tensors(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    peft_core::io::read_safetensors(&dir.join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v): (String, TensorData)| (k, v.convert::<f32>().try_to_vec::<f32>().unwrap()))
        .collect()
}

#[track_caller]
fn assert_adapters_close(a: &Path, b: &Path, tol: f32) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, va) in &ta {
        let diff = va
            .iter()
            .zip(&tb[k])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff <= tol, "{k}: max |diff| {diff} > {tol}");
    }
}

#[track_caller]
fn assert_losses_close(ours: &[f32], theirs: &[f32], rel: f32) {
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= rel * b.abs(),
            "step {}: ours {a}, PEFT {b}",
            i + 1
        );
    }
}

fn peft_losses(name: &str) -> Vec<f32> {
    let case: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("cases").join(name).join("case.json")).unwrap(),
    )
    .unwrap();
    case["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn training_equals_peft_step_for_step() {
    for name in [
        "lora_qv",
        "lora_all_rslora",
        "miss",
        "lorafa",
        "chat",
        "accum_2x2",
    ] {
        let out = tempfile::tempdir().unwrap();
        let report = train(&case_args(name, out.path()));
        assert_losses_close(&report.losses, &peft_losses(name), 2e-3);
        assert_adapters_close(
            out.path(),
            &fixtures().join("cases").join(name).join("final"),
            2e-3,
        );
        // The folder says what PEFT's AutoPeftModelForCausalLM needs.
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["task_type"], "CAUSAL_LM", "{name}");
        assert!(config["base_model_name_or_path"].is_string(), "{name}");
    }
}

#[test]
fn accumulation_2x2_equals_4x1() {
    let out = tempfile::tempdir().unwrap();
    let mut args = case_args("accum_2x2", out.path());
    set_arg(&mut args, "--batch", "4");
    set_arg(&mut args, "--grad-accum", "1");
    let report = train(&args);
    assert_losses_close(&report.losses, &peft_losses("accum_2x2"), 2e-3);
    assert_adapters_close(out.path(), &fixtures().join("cases/accum_2x2/final"), 2e-3);
}

/// `--checkpointing` (blocks rerun in the backward pass) computes the same gradients: PEFT's
/// all-linear run (every block adapted, clipping active) to within float noise.
#[test]
fn recomputing_blocks_gives_the_same_run() {
    let out = tempfile::tempdir().unwrap();
    let mut args = case_args("lora_all_rslora", out.path());
    args.push("--checkpointing".into());
    let report = train(&args);
    assert_losses_close(&report.losses, &peft_losses("lora_all_rslora"), 1e-5);
    assert_adapters_close(
        out.path(),
        &fixtures().join("cases/lora_all_rslora/final"),
        1e-5,
    );
}

/// `--keep-packs` (the frozen weights' packs kept for the run) changes nothing: the same losses
/// and the same adapter, bit for bit. On flex the packs are really kept (the report counts
/// their bytes), so that an ignored flag fails this test.
#[test]
fn keeping_packs_gives_the_same_run_bit_for_bit() {
    let run = |keep: bool| {
        let out = tempfile::tempdir().unwrap();
        let mut args = case_args("lora_qv", out.path());
        if keep {
            args.push("--keep-packs".into());
        }
        let report = train(&args);
        (report.losses, tensors(out.path()), report.kept_pack_bytes)
    };
    let (plain, kept) = (run(false), run(true));
    assert_eq!((&plain.0, &plain.1), (&kept.0, &kept.1));
    assert_eq!(plain.2, 0);
    let backend = std::env::var("BURN_DEVICE").unwrap_or_else(|_| "flex".into());
    if backend == "flex" {
        assert!(kept.2 > 0, "no pack kept with --keep-packs");
    }
}

/// The seed fixes a fresh adapter's initialisation: same seed, same adapter; another seed,
/// another one. (Each run is its own process: burn's generator is global to one.)
#[test]
fn a_seed_repeats_a_fresh_run() {
    let run = |seed: &str| {
        let out = tempfile::tempdir().unwrap();
        let mut args = case_args("lora_qv", out.path());
        let i = args.iter().position(|a| a == "--init-adapter").unwrap();
        args.drain(i..i + 2);
        set_arg(&mut args, "--steps", "2");
        args.extend(["--seed".into(), seed.into()]);
        let refs: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let (ok, stderr) = peft_cmd(&refs);
        assert!(ok, "{stderr}");
        tensors(out.path())
    };
    let a = run("1");
    assert_eq!(a, run("1"));
    assert_ne!(a, run("2"));
}

/// Data parallelism: two devices with one micro-batch each equal one device accumulating two
/// (PEFT's 2×2 run), as PyTorch's DDP does.
#[test]
fn two_devices_equal_accumulating_two_micro_batches() {
    let backend = std::env::var("BURN_DEVICE").unwrap_or_else(|_| "flex".into());
    let out = tempfile::tempdir().unwrap();
    let mut args = case_args("accum_2x2", out.path());
    set_arg(&mut args, "--grad-accum", "1");
    args.extend(["--devices".into(), format!("{backend},{backend}")]);
    let report = train(&args);
    // Tighter than the parity bound: three devices (other data) already differ by 2e-3.
    assert_losses_close(&report.losses, &peft_losses("accum_2x2"), 1e-4);
    assert_adapters_close(out.path(), &fixtures().join("cases/accum_2x2/final"), 1e-4);
}

#[test]
fn five_plus_five_steps_equal_ten() {
    let straight = tempfile::tempdir().unwrap();
    let mut args = case_args("lora_all_rslora", straight.path());
    set_arg(&mut args, "--steps", "10");
    // Shuffled order, so that resuming must also find its place in the data.
    args.retain(|a| a != "--no-shuffle");
    let full = train(&args);

    let split = tempfile::tempdir().unwrap();
    let mut first = args.clone();
    let o = first.iter().position(|a| a == "--out").unwrap();
    first[o + 1] = s(split.path());
    first.extend(["--save-every".into(), "5".into()]);
    let a = train(&first);
    let ckpt = split.path().join("checkpoint-5");
    assert!(ckpt.join("trainer_state.json").is_file() && ckpt.join("optimizer.bpk").is_file());
    let resumed = tempfile::tempdir().unwrap();
    let mut second = first.clone();
    second[o + 1] = s(resumed.path());
    let init = second.iter().position(|a| a == "--init-adapter").unwrap();
    second.drain(init..init + 2);
    second.extend(["--resume".into(), s(&ckpt)]);
    let b = train(&second);
    assert_eq!(b.losses.len(), 5);
    let joined: Vec<f32> = a.losses[..5].iter().chain(&b.losses).copied().collect();
    assert_losses_close(&joined, &full.losses, 1e-5);
    assert_adapters_close(resumed.path(), straight.path(), 1e-6);
}

#[test]
fn tokenization_follows_the_contract() {
    let tok = TextTokenizer::from_dir(&fixtures().join("model")).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokens.json")).unwrap())
            .unwrap();
    for (name, rows) in expected.as_object().unwrap() {
        let data = read_jsonl(
            &fixtures().join("data").join(format!("{name}.jsonl")),
            &tok,
            DataOptions {
                max_len: 1024,
                truncate: true,
            },
        )
        .unwrap();
        for (i, row) in rows.as_array().unwrap().iter().enumerate() {
            let ids: Vec<u32> = row["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mask: Vec<bool> = row["mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_bool().unwrap())
                .collect();
            assert_eq!(data.examples[i].ids, ids, "{name} row {i}");
            assert_eq!(data.examples[i].mask, mask, "{name} row {i}");
        }
    }
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = s(&fixtures().join("model"));
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let no_template = tokenizer_without_template(dir.path());
    let chat = s(&fixtures().join("data/chat.jsonl"));
    let text = s(&fixtures().join("data/text.jsonl"));
    let other_model = fixtures().join("../models/llama/checkpoint");
    // A checkpoint of the fixture model, to resume on another.
    let ckpt_out = tempfile::tempdir().unwrap();
    let first = peft_cmd(&[
        "train",
        "--model",
        &model,
        "--data",
        &text,
        "--out",
        &s(ckpt_out.path()),
        "--steps",
        "2",
        "--save-every",
        "1",
        "--quiet",
    ]);
    assert!(first.0, "{}", first.1);
    let ckpt = s(&ckpt_out.path().join("checkpoint-1"));

    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            vec![
                "--data".into(),
                write("bad.jsonl", "{\"text\": \"a\"}\n{oops\n"),
            ],
            &["bad.jsonl:2:", "JSON"],
        ),
        (
            vec![
                "--data".into(),
                write("missing.jsonl", "{\"input\": \"a\"}\n"),
            ],
            &["missing.jsonl:1:", "`text`", "input"],
        ),
        (
            vec![
                "--data".into(),
                write("empty.jsonl", "{\"prompt\": \"a\", \"completion\": \"\"}\n"),
            ],
            &["empty.jsonl:1:", "completion", "empty"],
        ),
        (
            vec![
                "--data".into(),
                write(
                    "noassist.jsonl",
                    "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
                ),
            ],
            &["noassist.jsonl:1:", "assistant"],
        ),
        (
            vec![
                "--data".into(),
                chat.clone(),
                "--tokenizer".into(),
                s(&no_template),
            ],
            &["chat.jsonl:1:", "chat template"],
        ),
        (
            vec![
                "--data".into(),
                text.clone(),
                "--tokenizer".into(),
                s(dir.path()),
            ],
            &["tokenizer.json"],
        ),
        (
            vec![
                "--data".into(),
                text.clone(),
                "--max-len".into(),
                "5".into(),
                "--no-truncate".into(),
            ],
            &["text.jsonl:1:", "--max-len 5"],
        ),
        (
            vec!["--data".into(), write("void.jsonl", "\n")],
            &["void.jsonl", "no examples"],
        ),
        (
            vec![
                "--data".into(),
                text.clone(),
                "--devices".into(),
                "flex,tpu:0".into(),
            ],
            &["device `tpu:0`", "unknown backend"],
        ),
        (
            vec![
                "--data".into(),
                text.clone(),
                "--dropout".into(),
                "0.1".into(),
                "--checkpointing".into(),
            ],
            &["--checkpointing", "lora_dropout"],
        ),
    ];
    for (extra, needles) in cases {
        let out = dir.path().join("out");
        let mut args: Vec<String> = vec![
            "train".into(),
            "--model".into(),
            model.clone(),
            "--out".into(),
            s(&out),
            "--quiet".into(),
        ];
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stderr) = peft_cmd(&refs);
        assert_one_line_error(&refs, ok, &stderr, needles);
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // A checkpoint resumed on another model.
    let out = dir.path().join("out");
    let (ok, stderr) = peft_cmd(&[
        "train",
        "--model",
        &s(&other_model),
        "--data",
        &text,
        "--out",
        &s(&out),
        "--steps",
        "2",
        "--resume",
        &ckpt,
        "--tokenizer",
        &model,
        "--quiet",
    ]);
    assert!(!ok && stderr.lines().count() == 1, "{stderr}");
    assert!(
        stderr.contains("another model") || stderr.contains("vocabulary"),
        "{stderr}"
    );
    assert!(!out.exists());
    // Or with other settings.
    let (ok, stderr) = peft_cmd(&[
        "train",
        "--model",
        &model,
        "--data",
        &text,
        "--out",
        &s(&out),
        "--steps",
        "2",
        "--batch",
        "2",
        "--resume",
        &ckpt,
        "--quiet",
    ]);
    assert!(!ok && stderr.contains("--batch"), "{stderr}");
}

#[test]
fn metrics_and_evaluation() {
    let out = tempfile::tempdir().unwrap();
    let metrics = out.path().join("m.jsonl");
    let data = fixtures().join("data");
    let report = train(
        &[
            "peft",
            "train",
            "--model",
            &s(&fixtures().join("model")),
            "--data",
            &s(&data.join("completion.jsonl")),
            "--eval",
            &s(&data.join("valid.jsonl")),
            "--eval-every",
            "2",
            "--steps",
            "4",
            "--lr",
            "1e-2",
            "--out",
            &s(&out.path().join("a")),
            "--metrics",
            &s(&metrics),
            "--quiet",
        ]
        .map(String::from),
    );
    let rows: Vec<Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train_rows: Vec<&Value> = rows.iter().filter(|r| r["split"] == "train").collect();
    let valid_rows: Vec<&Value> = rows.iter().filter(|r| r["split"] == "valid").collect();
    assert_eq!(train_rows.len(), 4);
    assert_eq!(train_rows[0]["step"], 1);
    assert!(
        train_rows
            .iter()
            .all(|r| r["tokens_per_s"].as_f64().unwrap() > 0.0 && r["lr"].is_number())
    );
    assert_eq!(
        valid_rows
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 4]
    );
    let v = valid_rows[1]["loss"].as_f64().unwrap();
    assert!((valid_rows[1]["perplexity"].as_f64().unwrap() - v.exp()).abs() < 1e-6 * v.exp());
    assert_eq!(report.valid.len(), 2);
}
