//! `TextTokenizer`: a Hugging Face `tokenizer.json` with the special tokens and chat template of
//! its `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::error::{Result, TrainError};

/// Token ids and the byte range of the text each came from.
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// A tokenizer as transformers' `AutoTokenizer` sees a model folder: `tokenizer.json` (the
/// pipeline, run by the `tokenizers` crate) plus `tokenizer_config.json` (bos/eos/pad tokens and
/// the `chat_template`; a `chat_template.jinja` file next to it wins, as in transformers).
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    /// Beginning-of-sequence token, if the config names one.
    pub bos: Option<(String, u32)>,
    /// End-of-sequence token, if the config names one.
    pub eos: Option<(String, u32)>,
    /// Padding token, if the config names one.
    pub pad: Option<(String, u32)>,
    /// The Jinja chat template, if any.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_name(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` and
    /// `dir/chat_template.jinja`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TrainError::Tokenizer {
                path,
                message: "no tokenizer.json here (pass --tokenizer DIR to use another folder)"
                    .into(),
            });
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| TrainError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| TrainError::io(&config_path, e))?;
            serde_json::from_str(&text).map_err(|e| TrainError::Tokenizer {
                path: config_path.clone(),
                message: format!("not JSON: {e}"),
            })?
        } else {
            Value::Null
        };
        let mut tok = Self {
            inner,
            path,
            bos: None,
            eos: None,
            pad: None,
            chat_template: None,
        };
        let id = |tok: &Self, key: &str| -> Result<Option<(String, u32)>> {
            let Some(name) = token_name(config.get(key)) else {
                return Ok(None);
            };
            match tok.inner.token_to_id(&name) {
                Some(id) => Ok(Some((name, id))),
                None => Err(TrainError::Tokenizer {
                    path: config_path.clone(),
                    message: format!("{key} {name:?} is not in tokenizer.json's vocabulary"),
                }),
            }
        };
        tok.bos = id(&tok, "bos_token")?;
        tok.eos = id(&tok, "eos_token")?;
        tok.pad = id(&tok, "pad_token")?;
        let jinja = dir.join("chat_template.jinja");
        tok.chat_template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| TrainError::io(&jinja, e))?)
        } else {
            match config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // Several named templates: transformers uses the one named "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            }
        };
        Ok(tok)
    }

    /// The `tokenizer.json` this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`; `special` adds the tokenizer's special tokens (e.g. bos), as
    /// transformers' `add_special_tokens=True`.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, special)?.0)
    }

    /// Token ids and the byte range of `text` each token came from.
    pub fn encode_with_offsets(&self, text: &str, special: bool) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| TrainError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`; `skip_special` leaves special tokens out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TrainError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The compiled chat template, with this tokenizer's bos/eos names (`None`: it has none).
    pub fn template(&self) -> Result<Option<ChatTemplate>> {
        let Some(source) = &self.chat_template else {
            return Ok(None);
        };
        let name = |t: &Option<(String, u32)>| t.as_ref().map(|t| t.0.clone()).unwrap_or_default();
        ChatTemplate::new(source, &name(&self.bos), &name(&self.eos)).map(Some)
    }

    /// The id used for padding: `pad_token`, else `eos_token` (as TRL does), else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad
            .as_ref()
            .or(self.eos.as_ref())
            .map(|t| t.1)
            .unwrap_or(0)
    }
}
