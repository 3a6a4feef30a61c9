//! The `peft` binary end to end: merge against PEFT's `merge_and_unload()` state dicts, forward
//! against PEFT's logits, inspect, and every error case as one line on stderr.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::TensorData;

fn models() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/models"
    ))
}

fn read(path: &Path) -> BTreeMap<String, TensorData> {
    peft_core::io::read_safetensors(path).unwrap()
}

fn peft(args: &[&str]) -> Output {
    // The tool's behaviour is under test here, not the backend's (the model math runs on every
    // backend in peft-models' tests): each run is a fresh process, and starting wgpu on a
    // software Vulkan driver costs tens of seconds per process.
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .env("BURN_DEVICE", "flex")
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = peft(args);
    assert!(
        out.status.success(),
        "peft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a failing command; returns its single stderr line.
#[track_caller]
fn fails(args: &[&str]) -> String {
    let out = peft(args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "peft {args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("peft: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn values(d: &TensorData) -> Vec<f32> {
    d.clone().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// max |a − b| ≤ rel · max(1, max |b|).
#[track_caller]
fn assert_close_rel(what: &str, a: &TensorData, b: &TensorData, rel: f32) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        d <= rel * scale,
        "{what}: max abs error {d} > {rel} x {scale}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Merges `model/adapters/case` and compares every checkpoint tensor with PEFT's merged state
/// dict (whose keys carry `prefix`).
fn check_merge(model: &str, case: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let root = models().join(model);
    ok(&[
        "merge",
        "--base",
        s(&root.join("checkpoint")),
        "--adapter",
        s(&root.join("adapters").join(case).join("adapter")),
        "--out",
        s(&out),
    ]);
    let ours = read(&out);
    let theirs = read(&root.join("adapters").join(case).join("merged.safetensors"));
    let base = peft_models::Checkpoint::open(root.join("checkpoint"))
        .unwrap()
        .state_dict()
        .unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>(),
        "{model}/{case}: same tensors as the checkpoint"
    );
    let mut changed = 0;
    for (k, v) in &ours {
        let reference = &theirs[&format!("{prefix}{k}")];
        assert_close_rel(&format!("{model}/{case} {k}"), v, reference, 1e-5);
        changed += usize::from(values(v) != values(&base[k]));
    }
    assert!(changed > 0, "{model}/{case}: nothing merged");
}

#[test]
fn merge_equals_peft_merge_and_unload() {
    for (model, case) in [
        ("opt_pre", "qv"),
        ("opt_pre", "all_linear_rslora"),
        ("opt_post", "patterns"),
        ("opt_post", "embed"),
        ("llama", "qv"),
        ("llama", "all_embed_saved"),
    ] {
        check_merge(model, case, "");
    }
    // GPT-2 Conv1D (fan_in_fan_out), checkpoint saved without the `transformer.` prefix.
    check_merge("gpt2", "conv1d", "transformer.");
}

#[test]
fn merge_keeps_or_converts_half_precision() {
    let dir = tempfile::tempdir().unwrap();
    let root = models().join("llama_tied");
    let adapter = root.join("adapters/qv/adapter");
    let theirs = read(&root.join("adapters/qv/merged.safetensors"));
    for (dtype, header, rel) in [
        ("keep", "BF16", 1.0 / 128.0),
        ("f32", "F32", 1e-5),
        ("f16", "F16", 1.0 / 1024.0),
    ] {
        let out = dir.path().join(format!("{dtype}.safetensors"));
        ok(&[
            "merge",
            "--base",
            s(&root.join("checkpoint")),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
            "--dtype",
            dtype,
        ]);
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(format!("{:?}", view.dtype()), header, "{name}");
        }
        for (k, v) in read(&out) {
            assert_close_rel(&format!("{dtype} {k}"), &v, &theirs[&k], rel);
        }
    }
}

#[test]
fn forward_gives_peft_logits() {
    let dir = tempfile::tempdir().unwrap();
    let ids = models().join("inputs.safetensors");
    for (model, case) in [("opt_post", "embed"), ("llama", "all_embed_saved")] {
        let root = models().join(model);
        let out = dir.path().join("logits.safetensors");
        ok(&[
            "forward",
            "--model",
            s(&root.join("checkpoint")),
            "--input-ids",
            s(&ids),
            "--out",
            s(&out),
        ]);
        let base = &read(&root.join("expected.safetensors"))["logits"];
        assert_close_rel(&format!("{model} base"), &read(&out)["logits"], base, 1e-4);
        let expected = read(
            &root
                .join("adapters")
                .join(case)
                .join("expected.safetensors"),
        );
        let adapter = root.join("adapters").join(case).join("adapter");
        let checkpoint = root.join("checkpoint");
        for (merge, key) in [(false, "logits"), (true, "merged_logits")] {
            let mut args = vec![
                "forward",
                "--model",
                s(&checkpoint),
                "--adapter",
                s(&adapter),
                "--input-ids",
                s(&ids),
                "--out",
                s(&out),
            ];
            if merge {
                args.push("--merge");
            }
            ok(&args);
            assert_close_rel(
                &format!("{model}/{case} {key}"),
                &read(&out)["logits"],
                &expected[key],
                1e-4,
            );
        }
    }
}

#[test]
fn inspect_reports_the_adapter() {
    let adapter = models().join("opt_post/adapters/patterns/adapter");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", s(&adapter), "--json"])).unwrap();
    assert_eq!(json["method"], "LORA");
    assert_eq!(json["ranks"], serde_json::json!([2, 4, 6]));
    assert_eq!(json["alphas"], serde_json::json!([2.0, 8.0]));
    let tensors = read(&adapter.join("adapter_model.safetensors"));
    let params: usize = tensors.values().map(|t| t.num_elements()).sum();
    assert_eq!(json["parameters"], params);
    assert_eq!(json["modules"], tensors.len() / 2);
    assert_eq!(
        json["file_bytes"],
        std::fs::metadata(adapter.join("adapter_model.safetensors"))
            .unwrap()
            .len()
    );
    let text = ok(&["inspect", s(&adapter)]);
    assert!(text.contains("method:          LORA"), "{text}");
    assert!(text.contains("fc1, k_proj, project_in, q_proj"), "{text}");
}

#[test]
fn errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let ids = models().join("inputs.safetensors");
    let opt = models().join("opt_pre/checkpoint");
    let llama_adapter = models().join("llama/adapters/qv/adapter");

    assert!(fails(&[]).contains("no command"));
    assert!(fails(&["frobnicate"]).contains("unknown command"));
    assert!(fails(&["merge", "--base", s(&opt)]).contains("missing --"));
    assert!(fails(&["inspect", "/nonexistent/adapter"]).contains("/nonexistent/adapter"));
    assert!(
        fails(&[
            "merge",
            "--base",
            "/nonexistent",
            "--adapter",
            s(&llama_adapter),
            "--out",
            s(&out)
        ])
        .contains("/nonexistent")
    );
    assert!(
        fails(&[
            "merge",
            "--base",
            s(&opt),
            "--adapter",
            s(&llama_adapter),
            "--out",
            s(&out),
            "--dtype",
            "f8"
        ])
        .contains("--dtype")
    );

    // Malformed files.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(
        llama_adapter.join("adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(
        bad.join("adapter_model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    assert!(fails(&["inspect", s(&bad)]).contains("malformed safetensors"));
    assert!(
        fails(&[
            "merge",
            "--base",
            s(&opt),
            "--adapter",
            s(&bad),
            "--out",
            s(&out)
        ])
        .contains("malformed safetensors")
    );
    std::fs::write(bad.join("adapter_config.json"), b"{ nope").unwrap();
    assert!(fails(&["inspect", s(&bad)]).contains("malformed"));

    // An adapter for another model: the module and the shapes are named.
    let llama_sd = models().join("llama/checkpoint");
    let opt_adapter = models().join("opt_pre/adapters/qv/adapter");
    let e = fails(&[
        "merge",
        "--base",
        s(&llama_sd),
        "--adapter",
        s(&opt_adapter),
        "--out",
        s(&out),
    ]);
    assert!(
        e.contains("model.decoder.layers.0.self_attn.q_proj")
            || e.contains("model.decoder.layers.0.self_attn.v_proj"),
        "{e}"
    );
    let gpt2_adapter = models().join("gpt2/adapters/conv1d/adapter");
    let tiny_llama = models().join("llama_tied/checkpoint");
    let e = fails(&[
        "merge",
        "--base",
        s(&tiny_llama),
        "--adapter",
        s(&gpt2_adapter),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("c_attn"), "{e}");
    let e = fails(&[
        "merge",
        "--base",
        s(&tiny_llama),
        "--adapter",
        s(&llama_adapter),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("v_proj") && e.contains("shape"), "{e}");
    let e = fails(&[
        "forward",
        "--model",
        s(&tiny_llama),
        "--adapter",
        s(&llama_adapter),
        "--input-ids",
        s(&ids),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("v_proj") && e.contains("expects"), "{e}");
    assert!(
        !out.exists(),
        "a failed command must not leave an output file"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary files left"
    );

    // Unsupported model_type.
    let gpt2 = models().join("gpt2/checkpoint");
    let e = fails(&[
        "forward",
        "--model",
        s(&gpt2),
        "--input-ids",
        s(&ids),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("model_type `gpt2`"), "{e}");

    // Bad input ids.
    let float_ids = models().join("opt_pre/expected.safetensors");
    assert!(
        fails(&[
            "forward",
            "--model",
            s(&opt),
            "--input-ids",
            s(&float_ids),
            "--out",
            s(&out)
        ])
        .contains("input_ids")
    );
}

/// A checkpoint folder holding `weights` with `model`'s config.
fn checkpoint_with(dir: &Path, model: &str, weights: &Path) -> PathBuf {
    let ckpt = dir.join(format!("{model}-merged"));
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::copy(
        models().join(model).join("checkpoint/config.json"),
        ckpt.join("config.json"),
    )
    .unwrap();
    std::fs::copy(weights, ckpt.join("model.safetensors")).unwrap();
    ckpt
}

fn bone_fixtures() -> PathBuf {
    models().join("../bone/models")
}

#[test]
fn merge_handles_bone_and_miss() {
    let dir = tempfile::tempdir().unwrap();
    let ids = models().join("inputs.safetensors");
    for (case, model) in [
        ("opt_miss_bat", "opt_pre"),
        ("opt_bone_default", "opt_pre"),
        ("llama_miss_mini", "llama"),
        ("opt_miss_default", "opt_pre"),
    ] {
        let merged = dir.path().join(format!("{case}.safetensors"));
        ok(&[
            "merge",
            "--base",
            s(&models().join(model).join("checkpoint")),
            "--adapter",
            s(&bone_fixtures().join(case).join("adapter")),
            "--out",
            s(&merged),
        ]);
        // The merged checkpoint gives PEFT's merged logits.
        let ckpt = checkpoint_with(dir.path(), model, &merged);
        let out = dir.path().join("logits.safetensors");
        ok(&[
            "forward",
            "--model",
            s(&ckpt),
            "--input-ids",
            s(&ids),
            "--out",
            s(&out),
        ]);
        let expected = read(&bone_fixtures().join(case).join("expected.safetensors"));
        assert_close_rel(
            &format!("{case} merged"),
            &read(&out)["logits"],
            &expected["merged_logits"],
            1e-4,
        );
    }
}

#[test]
fn convert_turns_bone_into_miss_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let bone = bone_fixtures().join("opt_bone_bat/adapter");
    let miss = dir.path().join("miss");
    ok(&["convert", s(&bone), s(&miss)]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(miss.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "MISS");
    assert_eq!(config["init_weights"], "bat");
    let before = read(&bone.join("adapter_model.safetensors"));
    let after = read(&miss.join("adapter_model.safetensors"));
    assert_eq!(before.len(), after.len());
    for (k, v) in &before {
        let renamed = k.replace(".bone_block", ".miss_block");
        assert_eq!(values(v), values(&after[&renamed]), "{k}");
    }
    // The converted folder gives the Bone folder's logits.
    let ids = models().join("inputs.safetensors");
    let out = dir.path().join("logits.safetensors");
    let ckpt = models().join("opt_pre/checkpoint");
    let merged = dir.path().join("merged.safetensors");
    ok(&[
        "merge",
        "--base",
        s(&ckpt),
        "--adapter",
        s(&miss),
        "--out",
        s(&merged),
    ]);
    let c = checkpoint_with(dir.path(), "opt_pre", &merged);
    ok(&[
        "forward",
        "--model",
        s(&c),
        "--input-ids",
        s(&ids),
        "--out",
        s(&out),
    ]);
    let expected = read(&bone_fixtures().join("opt_bone_bat/expected.safetensors"));
    assert_close_rel(
        "converted bat",
        &read(&out)["logits"],
        &expected["merged_logits"],
        1e-4,
    );
    // And back.
    let back = dir.path().join("bone");
    ok(&["convert", s(&miss), s(&back), "--to", "bone"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(back.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "BONE");
    assert!(config.get("mini_r").is_none());
    // MiSS-only modes cannot become Bone.
    let e = fails(&[
        "convert",
        s(&bone_fixtures().join("llama_miss_mini/adapter")),
        s(&dir.path().join("x")),
        "--to",
        "bone",
    ]);
    assert!(e.contains("mini"), "{e}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", s(&miss), "--json"])).unwrap();
    assert_eq!(
        (
            json["method"].as_str(),
            json["mode"].as_str(),
            json["ranks"][0].as_u64()
        ),
        (Some("MISS"), Some("bat"), Some(4))
    );
}

#[test]
fn bone_merge_errors_name_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    // A bat adapter for 16-wide layers on the Llama (32-wide q_proj): the blocks do not fit.
    let e = fails(&[
        "merge",
        "--base",
        s(&models().join("llama/checkpoint")),
        "--adapter",
        s(&bone_fixtures().join("opt_miss_bat/adapter")),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("model.decoder.layers.0.self_attn"), "{e}");
    let e = fails(&[
        "merge",
        "--base",
        s(&models().join("opt_pre/checkpoint")),
        "--adapter",
        s(&bone_fixtures().join("llama_miss_mini/adapter")),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("model.layers.0.self_attn"), "{e}");
    assert!(!out.exists());
}
