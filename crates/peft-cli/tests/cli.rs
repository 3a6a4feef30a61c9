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
    let root = models().join(model);
    check_merge_at(
        &root.join("checkpoint"),
        &root.join("adapters").join(case),
        prefix,
        &format!("{model}/{case}"),
    );
}

/// Merges `case_dir/adapter` into `checkpoint` with `peft merge` and compares every tensor with
/// `case_dir/merged.safetensors` (PEFT's `merge_and_unload()` state dict).
fn check_merge_at(checkpoint: &Path, case_dir: &Path, prefix: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    ok(&[
        "merge",
        "--base",
        s(checkpoint),
        "--adapter",
        s(&case_dir.join("adapter")),
        "--out",
        s(&out),
    ]);
    let ours = read(&out);
    let theirs = read(&case_dir.join("merged.safetensors"));
    let base = peft_models::Checkpoint::open(checkpoint)
        .unwrap()
        .state_dict()
        .unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>(),
        "{what}: same tensors as the checkpoint"
    );
    let mut changed = 0;
    for (k, v) in &ours {
        let reference = &theirs[&format!("{prefix}{k}")];
        assert_close_rel(&format!("{what} {k}"), v, reference, 1e-5);
        changed += usize::from(values(v) != values(&base[k]));
    }
    assert!(changed > 0, "{what}: nothing merged");
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
        ("opt_pre", "dora_qv"),
        ("llama", "dora_all_embed"),
    ] {
        check_merge(model, case, "");
    }
    // GPT-2 Conv1D (fan_in_fan_out), checkpoint saved without the `transformer.` prefix.
    check_merge("gpt2", "conv1d", "transformer.");
    // Adapters trained with PEFT's LoRA-FA optimizer (plain LoRA folders).
    for (model, case) in [("opt_post", "trained"), ("llama", "trained_llama")] {
        check_merge_at(
            &models().join(model).join("checkpoint"),
            &models().join("../lorafa").join(case),
            "",
            &format!("lorafa/{case}"),
        );
    }
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
    for (model, case) in [
        ("opt_post", "embed"),
        ("llama", "all_embed_saved"),
        ("opt_pre", "dora_qv"),
        ("llama", "dora_all_embed"),
    ] {
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
        check_forward(
            &root.join("checkpoint"),
            &root.join("adapters").join(case),
            &format!("{model}/{case}"),
        );
    }
}

/// Runs `peft forward` with `case_dir/adapter` on `checkpoint`, unmerged and merged, and compares
/// the logits with `case_dir/expected.safetensors` (PEFT's `logits` and `merged_logits`).
fn check_forward(checkpoint: &Path, case_dir: &Path, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ids = models().join("inputs.safetensors");
    let out = dir.path().join("logits.safetensors");
    let adapter = case_dir.join("adapter");
    let expected = read(&case_dir.join("expected.safetensors"));
    for (merge, key) in [(false, "logits"), (true, "merged_logits")] {
        let mut args = vec![
            "forward",
            "--model",
            s(checkpoint),
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
            &format!("{what} {key}"),
            &read(&out)["logits"],
            &expected[key],
            1e-4,
        );
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

    let bare = peft(&[]);
    assert!(!bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stderr).contains("Usage: peft <COMMAND>"));
    assert!(fails(&["frobnicate"]).contains("unrecognized subcommand 'frobnicate'"));
    let e = fails(&["merge", "--base", s(&opt)]);
    assert!(e.contains("--adapter") && e.contains("--out"), "{e}");
    let e = fails(&[
        "forward",
        "--model",
        s(&opt),
        "--merge",
        "--input-ids",
        "i",
        "--out",
        "o",
    ]);
    assert!(e.contains("--adapter"), "{e}");
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
    let e = fails(&[
        "inspect",
        s(&models().join("opt_pre/adapters/qv/adapter")),
        "--jsn",
    ]);
    assert!(e.contains("--jsn"), "{e}");

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

#[test]
fn help_documents_every_command() {
    let top = ok(&["--help"]);
    for command in ["inspect", "merge", "forward", "convert"] {
        assert!(top.contains(command), "{top}");
        let help = ok(&[command, "--help"]);
        assert!(help.contains("Usage: peft"), "{command}: {help}");
    }
    let merge = ok(&["merge", "--help"]);
    for option in [
        "--base",
        "--adapter",
        "--out",
        "--dtype",
        "--force",
        "bf16",
        "NaN",
    ] {
        assert!(merge.contains(option), "{option}: {merge}");
    }
    assert!(ok(&["--version"]).starts_with("peft "));
}

/// `peft forward` runs every method's folder, unmerged and merged, with PEFT's logits.
#[test]
fn forward_runs_every_method() {
    let bone = [
        ("opt_miss_bat", "opt_pre"),
        ("opt_bone_default", "opt_pre"),
        ("llama_miss_mini", "llama"),
        ("opt_miss_default", "opt_pre"),
    ]
    .map(|(case, model)| (bone_fixtures().join(case), model));
    let lorafa = [
        (models().join("../lorafa/trained"), "opt_post"),
        (models().join("../lorafa/trained_llama"), "llama"),
    ];
    for (case_dir, model) in bone.into_iter().chain(lorafa) {
        let checkpoint = models().join(model).join("checkpoint");
        check_forward(&checkpoint, &case_dir, &case_dir.display().to_string());
    }
}

/// A copy of `adapter` whose tensor `key` is replaced by `value`.
fn adapter_with(dir: &Path, adapter: &Path, key: &str, value: TensorData) -> PathBuf {
    let copy = dir.join("edited");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        adapter.join("adapter_config.json"),
        copy.join("adapter_config.json"),
    )
    .unwrap();
    let mut t = read(&adapter.join("adapter_model.safetensors"));
    assert!(t.contains_key(key), "{key}");
    t.insert(key.to_string(), value);
    peft_core::io::write_safetensors(&copy.join("adapter_model.safetensors"), &t).unwrap();
    copy
}

#[test]
fn merge_refuses_unsafe_adapters_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let base = models().join("opt_pre/checkpoint");
    let adapter = models().join("opt_pre/adapters/qv/adapter");
    let key = "base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_B.weight";
    let b = read(&adapter.join("adapter_model.safetensors"))[key].clone();
    let shape = b.shape().clone();
    let mut nan = values(&b);
    nan[3] = f32::NAN;
    let out = dir.path().join("o.safetensors");

    // NaN (PEFT's safe_merge) and integer tensors.
    let bad = adapter_with(
        dir.path(),
        &adapter,
        key,
        TensorData::new(nan, shape.clone()),
    );
    let e = fails(&[
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&bad),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("non-finite") && e.contains("q_proj"), "{e}");
    // The same tensor stored as I64 (write_safetensors writes F32 only).
    let mut tensors = read(&adapter.join("adapter_model.safetensors"));
    let ints: Vec<u8> = vec![1i64; shape.iter().product()]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    tensors.remove(key);
    let floats: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, v)| {
            let bytes = values(v).iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), v.shape().to_vec(), bytes)
        })
        .collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = floats
        .iter()
        .map(|(k, sh, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b);
            (k.clone(), v.unwrap())
        })
        .collect();
    let int_view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape.to_vec(), &ints);
    views.push((key.to_string(), int_view.unwrap()));
    let bad = dir.path().join("edited");
    std::fs::write(
        bad.join("adapter_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let e = fails(&[
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&bad),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("dtype") && e.contains("q_proj"), "{e}");
    assert!(!out.exists());

    // --out as a folder, as the adapter's own file, as the base.
    let e = fails(&[
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(dir.path()),
    ]);
    assert!(e.contains("is a folder"), "{e}");
    let own = adapter.join("adapter_model.safetensors");
    let e = fails(&[
        "merge",
        "--base",
        s(&base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&own),
    ]);
    assert!(e.contains("adapter's own file"), "{e}");
    let copy = dir.path().join("base.safetensors");
    std::fs::copy(base.join("model.safetensors"), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let e = fails(&[
        "merge",
        "--base",
        s(&copy),
        "--adapter",
        s(&adapter),
        "--out",
        s(&copy),
    ]);
    assert!(e.contains("--force"), "{e}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        before,
        "the base is untouched"
    );
    // With --force the single-file base is replaced by the merged weights.
    ok(&[
        "merge",
        "--base",
        s(&copy),
        "--adapter",
        s(&adapter),
        "--out",
        s(&copy),
        "--force",
    ]);
    let theirs = read(&models().join("opt_pre/adapters/qv/merged.safetensors"));
    for (k, v) in read(&copy) {
        assert_close_rel(&k, &v, &theirs[&k], 1e-5);
    }
    // A shard of a sharded base: refused even with --force.
    let sharded = models().join("opt_post/checkpoint");
    let shard = std::fs::read_dir(&sharded)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .unwrap();
    let shard_copy_dir = dir.path().join("sharded");
    std::fs::create_dir_all(&shard_copy_dir).unwrap();
    for e in std::fs::read_dir(&sharded).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, shard_copy_dir.join(p.file_name().unwrap())).unwrap();
    }
    let target = shard_copy_dir.join(shard.file_name().unwrap());
    let e = fails(&[
        "merge",
        "--base",
        s(&shard_copy_dir),
        "--adapter",
        s(&models().join("opt_post/adapters/patterns/adapter")),
        "--out",
        s(&target),
        "--force",
    ]);
    assert!(e.contains("shard"), "{e}");
}

#[test]
fn inspect_names_dora_and_every_method() {
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "inspect",
        s(&models().join("llama/adapters/dora_all_embed/adapter")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["method"], "LORA");
    assert_eq!(json["mode"], "DoRA");
    assert_eq!(json["modules"], 2 * 7 + 1);
    let text = ok(&[
        "inspect",
        s(&models().join("opt_pre/adapters/dora_qv/adapter")),
    ]);
    assert!(text.contains("method:          LORA (DoRA)"), "{text}");
    let e = fails(&[
        "convert",
        s(&models().join("opt_pre/adapters/qv/adapter")),
        s(&models().join("nope")),
    ]);
    assert!(e.contains("LORA") && e.contains("one file format"), "{e}");
    let e = fails(&[
        "convert",
        s(&bone_fixtures().join("opt_bone_bat/adapter")),
        s(&models().join("nope")),
        "--to",
        "lora",
    ]);
    assert!(e.contains("\"LORA\"") && e.contains("MISS or BONE"), "{e}");
}
