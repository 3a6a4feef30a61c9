//! `--vs-pytorch`: the same rows in HF PEFT on PyTorch (`pytorch.py`): a persistent worker that
//! runs each row's steps in the guide's rounds, and one process per row for memory.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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

/// A running `pytorch.py --worker` holding every row of one model.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts the worker and builds `methods` on one model; returns it with the setup answer
    /// (`{"rows": {key: {...}}, "versions": {...}}`; the versions include the BLAS torch was
    /// built with, its CPU capability and its threads).
    pub fn start(
        python: &str,
        config: &OptConfig,
        methods: &[Method],
        s: &Settings,
        threads: usize,
    ) -> Result<(Self, Value), String> {
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `{python}`: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("pytorch.py: no pipes".into());
        };
        let mut worker = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let keys: Vec<&str> = methods.iter().map(|m| m.key()).collect();
        let setup = worker.ask(&json!({
            "cmd": "setup",
            "config": peft_benches::transformers_opt_config(config),
            "methods": keys,
            "batch": s.batch,
            "seq": s.seq,
            "threads": threads,
        }))?;
        Ok((worker, setup))
    }

    /// Sends one command and reads its answer.
    fn ask(&mut self, cmd: &Value) -> Result<Value, String> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("pytorch.py stopped: {e}"))?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("pytorch.py stopped: {e}"))?;
        if line.is_empty() {
            return Err("pytorch.py stopped (see its error above)".into());
        }
        let answer: Value =
            serde_json::from_str(&line).map_err(|e| format!("pytorch.py printed no JSON ({e})"))?;
        match answer["error"].as_str() {
            Some(e) => Err(format!("pytorch.py: {e}")),
            None => Ok(answer),
        }
    }

    /// One training step of `method`'s row; its time in seconds.
    pub fn step(&mut self, method: &str) -> Result<f64, String> {
        let a = self.ask(&json!({"cmd": "step", "method": method}))?;
        a["s"].as_f64().ok_or_else(|| "pytorch.py: no time".into())
    }

    /// A prompt and one token through `method`'s row (`"base"`: the base model, which is what
    /// a merged adapter is); their times in seconds.
    pub fn infer(&mut self, method: &str) -> Result<(f64, f64), String> {
        let a = self.ask(&json!({"cmd": "infer", "method": method}))?;
        match (a["prompt_s"].as_f64(), a["token_s"].as_f64()) {
            (Some(p), Some(t)) => Ok((p, t)),
            _ => Err("pytorch.py: no times".into()),
        }
    }

    /// One `F.linear` of an `[m, k]` input and an `[n, k]` weight or, with `input_gradient`, one
    /// `matmul` of an `[m, n]` gradient and that weight; its time in seconds.
    pub fn product(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        input_gradient: bool,
    ) -> Result<f64, String> {
        let cmd = json!({"cmd": "product", "m": m, "k": k, "n": n, "grad": input_gradient});
        let a = self.ask(&cmd)?;
        a["s"].as_f64().ok_or_else(|| "pytorch.py: no time".into())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// A step's peak resident-set growth of `method`'s row alone in a PyTorch process.
pub fn memory(
    python: &str,
    config: &OptConfig,
    method: Method,
    s: &Settings,
    threads: usize,
) -> Result<u64, String> {
    let spec = json!({
        "config": peft_benches::transformers_opt_config(config),
        "method": method.key(),
        "batch": s.batch,
        "seq": s.seq,
        "threads": threads,
    });
    let out = Command::new(python)
        .arg(SCRIPT)
        .arg("--memory")
        .arg(spec.to_string())
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    parse_memory(&out, "pytorch.py")
}

/// The `peak_rss_growth_bytes` a memory process printed, or why there is none.
pub fn parse_memory(out: &std::process::Output, who: &str) -> Result<u64, String> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{who} failed: {}",
            err.lines().last().unwrap_or("").trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let v: Value =
        serde_json::from_str(line).map_err(|e| format!("{who} printed no JSON ({e})"))?;
    v["peak_rss_growth_bytes"]
        .as_u64()
        .ok_or_else(|| format!("{who} printed no peak_rss_growth_bytes"))
}
