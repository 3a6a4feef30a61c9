//! Training data: JSONL files in TRL's three formats, tokenized into ids and a loss mask.
//!
//! - `{"text": …}`: `encode(text, special tokens) ++ [eos]`, loss on every token;
//! - `{"prompt": …, "completion": …}`: `encode(prompt, special tokens) ++ encode(completion)
//!   ++ [eos]`, loss on the completion and the eos;
//! - `{"messages": [{"role", "content"}, …]}`: the chat template's text, tokenized without
//!   special tokens (the template writes them), loss on the tokens of assistant turns
//!   ([`ChatTemplate::assistant_spans`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::error::{Result, TrainError};
use crate::tokenizer::TextTokenizer;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `true` where the token is a label (counts in the loss).
    pub mask: Vec<bool>,
}

/// A tokenized data file.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file.
    pub path: PathBuf,
    /// Its examples, in file order.
    pub examples: Vec<Example>,
    /// How many examples `max_len` cut.
    pub truncated: usize,
}

/// How examples are made from lines.
#[derive(Debug, Clone, Copy)]
pub struct DataOptions {
    /// Longest example in tokens.
    pub max_len: usize,
    /// Cut longer examples (otherwise they are an error).
    pub truncate: bool,
}

/// The train (and validation) files of `--data`: a `.jsonl` file, or a folder with
/// `train.jsonl` and optionally `valid.jsonl` (as `mlx_lm.lora` reads).
pub fn data_files(data: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if data.is_dir() {
        let train = data.join("train.jsonl");
        if !train.is_file() {
            return Err(TrainError::Dataset {
                path: data.into(),
                message: "a data folder needs train.jsonl (and may have valid.jsonl)".into(),
            });
        }
        let valid = data.join("valid.jsonl");
        Ok((train, valid.is_file().then_some(valid)))
    } else if data.is_file() {
        Ok((data.into(), None))
    } else {
        Err(TrainError::Dataset {
            path: data.into(),
            message: "no such file or folder".into(),
        })
    }
}

/// The non-empty lines of a JSONL file as JSON values, with their line numbers (from 1). A line
/// that is not JSON is an error naming the file and line.
pub fn jsonl_rows(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map(|row| (i + 1, row))
                .map_err(|e| TrainError::Data {
                    path: path.into(),
                    line: i + 1,
                    message: format!("not a JSON object: {e}"),
                })
        })
        .collect()
}

/// Reads and tokenizes a JSONL file.
pub fn read_jsonl(path: &Path, tok: &TextTokenizer, options: DataOptions) -> Result<Dataset> {
    let template = tok.template()?;
    let mut examples = Vec::new();
    let mut truncated = 0;
    for (line, row) in jsonl_rows(path)? {
        let err = |message: String| TrainError::Data {
            path: path.into(),
            line,
            message,
        };
        let mut ex = example(&row, tok, template.as_ref()).map_err(|e| match e {
            TrainError::Settings(m) | TrainError::Template(m) => err(m),
            other => other,
        })?;
        if ex.ids.len() > options.max_len {
            if !options.truncate {
                return Err(err(format!(
                    "{} tokens, over --max-len {} (truncation is off)",
                    ex.ids.len(),
                    options.max_len
                )));
            }
            ex.ids.truncate(options.max_len);
            ex.mask.truncate(options.max_len);
            truncated += 1;
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        return Err(TrainError::Dataset {
            path: path.into(),
            message: "no examples (the file is empty)".into(),
        });
    }
    Ok(Dataset {
        path: path.into(),
        examples,
        truncated,
    })
}

fn string<'a>(row: &'a Value, key: &str) -> Result<&'a str> {
    row.get(key).and_then(Value::as_str).ok_or_else(|| {
        TrainError::Settings(match row.get(key) {
            Some(Value::Array(_)) => format!(
                "`{key}` is a list: conversational prompt/completion rows are not supported; \
                 use `messages`"
            ),
            _ => format!("`{key}` must be a string"),
        })
    })
}

/// One row → ids and mask, by the rules in the module docs.
pub fn example(
    row: &Value,
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
) -> Result<Example> {
    let Some(obj) = row.as_object() else {
        return Err(TrainError::Settings("not a JSON object".into()));
    };
    let eos = || {
        tok.eos.as_ref().map(|t| t.1).ok_or_else(|| {
            TrainError::Settings("the tokenizer has no eos_token (tokenizer_config.json)".into())
        })
    };
    if obj.contains_key("messages") {
        let messages = obj
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| TrainError::Settings("`messages` must be a list".into()))?;
        for (i, m) in messages.iter().enumerate() {
            let ok = m.get("role").and_then(Value::as_str).is_some()
                && m.get("content").and_then(Value::as_str).is_some();
            if !ok {
                return Err(TrainError::Settings(format!(
                    "message {i} needs string `role` and `content` fields"
                )));
            }
        }
        if !messages
            .iter()
            .any(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        {
            return Err(TrainError::Settings(
                "the conversation has no assistant turn, so nothing to learn".into(),
            ));
        }
        let template = template.ok_or_else(|| {
            TrainError::Settings(
                "a `messages` row needs a chat template, and the tokenizer has none \
                 (tokenizer_config.json `chat_template` or chat_template.jinja)"
                    .into(),
            )
        })?;
        let (text, spans) = template.assistant_spans(messages)?;
        let (ids, offsets) = tok.encode_with_offsets(&text, false)?;
        let mask = offsets
            .iter()
            .map(|(start, _)| spans.iter().any(|(s, e)| s <= start && start < e))
            .collect();
        Ok(Example { ids, mask })
    } else if obj.contains_key("prompt") || obj.contains_key("completion") {
        let prompt = string(row, "prompt")?;
        let completion = string(row, "completion")?;
        if completion.is_empty() {
            return Err(TrainError::Settings("`completion` is empty".into()));
        }
        let mut ids = tok.encode(prompt, true)?;
        let n = ids.len();
        ids.extend(tok.encode(completion, false)?);
        ids.push(eos()?);
        let mut mask = vec![false; n];
        mask.resize(ids.len(), true);
        Ok(Example { ids, mask })
    } else if obj.contains_key("text") {
        let mut ids = tok.encode(string(row, "text")?, true)?;
        ids.push(eos()?);
        let mask = vec![true; ids.len()];
        Ok(Example { ids, mask })
    } else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        Err(TrainError::Settings(format!(
            "expected `text`, `prompt`/`completion` or `messages`; found {keys:?}"
        )))
    }
}
