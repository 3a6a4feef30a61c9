//! The bodies of peft-rs's fuzz targets.
//!
//! Each function takes arbitrary bytes, feeds them to one reader of outside input the way a
//! user's command would, and must return without panicking, hanging or allocating what the
//! input merely claims. `fuzz/` runs them under libFuzzer (`cargo xtask fuzz`); this crate's
//! test `tests/corpus.rs` replays their committed corpora and every input a fuzzer once
//! crashed on, so CI checks them without a fuzzing toolchain.
//!
//! Inputs made of several files hold them one after another, separated by [`SPLIT`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor};
use peft_core::method::AttachOptions;
use peft_models::{AnyCausalLm, CausalLm, LlamaForCausalLm};
use serde_json::Value;

pub mod seeds;

/// Separates the files of a many-file input.
pub const SPLIT: &[u8] = b"\n--8<--\n";

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets, by name: what `cargo xtask fuzz --target` and the corpus folders use.
pub const TARGETS: &[(&str, Target)] = &[
    ("adapter_config", adapter_config),
    ("adapter_folder", adapter_folder),
    ("merge", merge),
    ("checkpoint", checkpoint),
    ("targets", targets),
    ("data", data),
];

/// The first `n` parts of `data` split at [`SPLIT`] (missing parts are empty; the last part
/// keeps any further separators).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(SPLIT.len()).position(|w| w == SPLIT) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SPLIT.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[]);
    out
}

/// Joins files into one input (the inverse of [`parts`], for seed corpora).
pub fn join(files: &[&[u8]]) -> Vec<u8> {
    files.join(SPLIT)
}

/// `fixtures/train/model`: the tiny Llama (2 layers, hidden 32) and its tokenizer.
pub fn tiny_model_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/train/model"
    ))
}

struct Scratch {
    dir: tempfile::TempDir,
    model: Option<LlamaForCausalLm>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's scratch folder and a copy of the tiny Llama.
fn with_scratch<R>(f: impl FnOnce(&Path, LlamaForCausalLm) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let scratch = slot.get_or_insert_with(|| {
            // In memory where the system has it: the targets write their inputs as files.
            let shm = Path::new("/dev/shm");
            let dir = if shm.is_dir() {
                tempfile::tempdir_in(shm)
            } else {
                tempfile::tempdir()
            }
            .expect("a scratch folder for the fuzz target");
            let model = match AnyCausalLm::load(tiny_model_dir(), &Device::default()) {
                Ok(AnyCausalLm::Llama(m)) => Some(m),
                _ => None,
            };
            Scratch { dir, model }
        });
        let model = scratch
            .model
            .clone()
            .expect("fixtures/train/model loads as a Llama");
        f(scratch.dir.path(), model)
    })
}

/// Writes `bytes` to `dir/name` (a file the target then reads as a user's file).
fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("the scratch folder is writable");
    path
}

/// Writes an adapter folder `dir/adapter` from its two files.
fn put_adapter(dir: &Path, config: &[u8], weights: &[u8]) -> PathBuf {
    let adapter = dir.join("adapter");
    let _ = std::fs::create_dir_all(&adapter);
    put(&adapter, peft_core::io::CONFIG_NAME, config);
    put(&adapter, peft_core::io::WEIGHTS_NAME, weights);
    adapter
}

/// A forward pass on four tokens: what loaded must also run.
fn run_model<M: CausalLm>(model: &M) {
    let ids = Tensor::<2, Int>::from_data([[1i64, 5, 9, 2]], &Device::default());
    let _ = model.forward(ids);
}

/// The largest rank (`r`, `rank_pattern`, `mini_r`, …) a fresh adapter is made with here.
///
/// Fresh adapters are as large as the config asks, as with `peft train --r`: a config asking
/// for `r = 10^8` asks for gigabytes, and gets them or fails to allocate. That is a request,
/// not a claim a file makes about itself: loading a folder checks every tensor against the
/// model before it allocates anything from the config (the `adapter_folder` target).
pub const MAX_FRESH_RANK: u64 = 4096;

/// The largest integer anywhere in `value`.
fn largest_integer(value: &Value) -> u64 {
    match value {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::Array(items) => items.iter().map(largest_integer).max().unwrap_or(0),
        Value::Object(map) => map.values().map(largest_integer).max().unwrap_or(0),
        _ => 0,
    }
}

/// `adapter_config.json` of any method: looked up in the registry, described, and injected
/// into the tiny Llama as fresh adapters (ranks up to [`MAX_FRESH_RANK`]), then merged.
pub fn adapter_config(data: &[u8]) {
    let Ok(config) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(method) = peft_cli::registry::method(&config) {
        let _ = method.describe(&config, &BTreeMap::new());
        let _ = method.convert(&config, None);
    }
    if largest_integer(&config) > MAX_FRESH_RANK {
        return;
    }
    with_scratch(|_, model| {
        let Ok(method) = peft_cli::registry::attach_method::<LlamaForCausalLm>(&config) else {
            return;
        };
        if let Ok(adapted) = method.inject(model, &config, &AttachOptions::default()) {
            let _ = adapted.summary();
            run_model(adapted.model());
            if let Ok(merged) = adapted.merge_and_unload() {
                run_model(&merged);
            }
        }
    });
}

/// An adapter folder (`adapter_config.json`, then `adapter_model.safetensors`) loaded onto the
/// tiny Llama, run, merged and run again.
pub fn adapter_folder(data: &[u8]) {
    let files = parts(data, 2);
    with_scratch(|dir, model| {
        let adapter = put_adapter(dir, files[0], files[1]);
        let Ok(config) = peft_core::io::read_config_json(&adapter) else {
            return;
        };
        let Ok(method) = peft_cli::registry::attach_method::<LlamaForCausalLm>(&config) else {
            return;
        };
        if let Ok(adapted) = method.load(model, &adapter, &AttachOptions::default()) {
            run_model(adapted.model());
            if let Ok(merged) = adapted.merge_and_unload() {
                run_model(&merged);
            }
        }
    });
}

/// `peft merge`: an adapter folder (config, weights) merged into a checkpoint file (third
/// part), streamed to an output file.
pub fn merge(data: &[u8]) {
    let files = parts(data, 3);
    with_scratch(|dir, _| {
        let adapter = put_adapter(dir, files[0], files[1]);
        let base = put(dir, "base.safetensors", files[2]);
        let out = dir.join("merged.safetensors");
        let _ = peft_cli::merge::merge(&base, &adapter, &out, &Default::default());
    });
}

/// A model folder: `config.json`, then `model.safetensors`, loaded as OPT or Llama and run.
pub fn checkpoint(data: &[u8]) {
    let files = parts(data, 2);
    with_scratch(|dir, _| {
        let folder = dir.join("model");
        let _ = std::fs::create_dir_all(&folder);
        put(&folder, "config.json", files[0]);
        put(&folder, "model.safetensors", files[1]);
        if let Ok(model) = AnyCausalLm::load(&folder, &Device::default()) {
            match &model {
                AnyCausalLm::Opt(m) => run_model(m),
                AnyCausalLm::Llama(m) => run_model(m),
            }
        }
    });
}

/// Target matching: a config's matching fields (first part, JSON) against module paths (second
/// part, one per line).
pub fn targets(data: &[u8]) {
    let files = parts(data, 2);
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(files[0]) else {
        return;
    };
    let Ok(spec) = peft_core::config::read_target_spec(&map) else {
        return;
    };
    let Ok(matcher) = peft_core::targets::TargetMatcher::new(&spec) else {
        return;
    };
    for path in String::from_utf8_lossy(files[1]).lines() {
        let _ = matcher.outcome(path);
    }
}

/// The training data readers: a `tokenizer_config.json` (first part; its chat template is
/// compiled) with the fixture's `tokenizer.json`, and a JSONL data file (second part) in any
/// of TRL's formats, turned into training examples.
pub fn data(data: &[u8]) {
    let files = parts(data, 2);
    with_scratch(|dir, _| {
        let folder = dir.join("tokenizer");
        let _ = std::fs::create_dir_all(&folder);
        let tokenizer_json = folder.join("tokenizer.json");
        if !tokenizer_json.exists() {
            let _ = std::fs::copy(tiny_model_dir().join("tokenizer.json"), &tokenizer_json);
        }
        put(&folder, "tokenizer_config.json", files[0]);
        let jsonl = put(dir, "data.jsonl", files[1]);
        let Ok(tok) = peft_train::tokenizer::TextTokenizer::from_dir(&folder) else {
            return;
        };
        let options = peft_train::data::DataOptions {
            max_len: 64,
            truncate: files[1].len().is_multiple_of(2),
        };
        let _ = peft_train::data::read_jsonl(&jsonl, &tok, options);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_splits_and_pads() {
        let joined = join(&[b"a", b"", b"c"]);
        assert_eq!(parts(&joined, 3), vec![&b"a"[..], b"", b"c"]);
        assert_eq!(parts(b"x", 3), vec![&b"x"[..], b"", b""]);
        assert_eq!(
            parts(&joined, 2),
            vec![&b"a"[..], &joined[1 + SPLIT.len()..]]
        );
    }
}
