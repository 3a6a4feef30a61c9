//! `--vs-pytorch`: the same rows in HF PEFT on PyTorch, one Python process per row
//! (`pytorch.py`).

use std::process::Command;

use peft_models::OptConfig;
use serde_json::{Value, json};

use crate::measure::{Method, Settings};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/guide/pytorch.py");

/// The versions of torch, transformers and peft that `python` imports, or why it cannot.
pub fn probe(python: &str) -> Result<String, String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, transformers, peft; print(f'torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')",
        ])
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim();
        return Err(format!(
            "`{python}` cannot import torch, transformers and peft ({last})"
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// transformers' `OPTConfig` keyword arguments for `config` (dropout off: the Rust models have
/// none).
fn transformers_config(c: &OptConfig) -> Value {
    json!({
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "ffn_dim": c.ffn_dim,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "word_embed_proj_dim": c.word_embed_proj_dim.unwrap_or(c.hidden_size),
        "do_layer_norm_before": c.do_layer_norm_before,
        "enable_bias": c.enable_bias,
        "tie_word_embeddings": c.tie_word_embeddings,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    })
}

/// Runs one row in PyTorch; the script's JSON object, or why it failed.
pub fn run(
    python: &str,
    config: &OptConfig,
    method: Method,
    s: &Settings,
    threads: usize,
) -> Result<Value, String> {
    let spec = json!({
        "config": transformers_config(config),
        "method": method.key(),
        "batch": s.batch,
        "seq": s.seq,
        "steps": s.steps,
        "reps": s.reps,
        "threads": threads,
    });
    let out = Command::new(python)
        .arg(SCRIPT)
        .arg(spec.to_string())
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "pytorch.py failed: {}",
            err.lines().last().unwrap_or("").trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| format!("pytorch.py printed no JSON ({e})"))
}
