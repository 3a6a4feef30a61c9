//! `peft generate`: text in, text out, with a model and an adapter of any registered method.

use std::io::Write;
use std::path::Path;

use burn::tensor::Device;
use peft_models::{AnyCausalLm, CausalLm, with_model};
use peft_train::generate::{
    GenerateOptions, Generation, Sampling, TextStream, generate as run, stop_tokens,
};
use peft_train::tokenizer::TextTokenizer;
use serde_json::Value;

use crate::cli::GenerateCmd;
use crate::error::{CliError, Result};
use crate::registry;

/// The prompt's token ids: `--prompt` encoded with the tokenizer's special tokens, or the
/// `--messages` conversation rendered by its chat template with the generation prompt.
pub fn prompt_ids(
    tok: &TextTokenizer,
    prompt: Option<&str>,
    messages: Option<&Path>,
) -> Result<Vec<u32>> {
    match (prompt, messages) {
        (Some(text), _) => Ok(tok.encode(text, true)?),
        (None, Some(path)) => {
            let err = |message: String| {
                CliError::Train(peft_train::TrainError::Dataset {
                    path: path.to_path_buf(),
                    message,
                })
            };
            let text = std::fs::read_to_string(path).map_err(|e| CliError::io("read", path, e))?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
            let list = match &value {
                Value::Array(list) => list,
                Value::Object(map) => match map.get("messages") {
                    Some(Value::Array(list)) => list,
                    _ => return Err(err("no `messages` list".into())),
                },
                _ => return Err(err("expected a list of messages".into())),
            };
            let template = tok.template()?.ok_or_else(|| {
                err(format!(
                    "the tokenizer ({}) has no chat template to render messages with",
                    tok.path().display()
                ))
            })?;
            let rendered = template
                .render(list, true)
                .map_err(|e| err(e.to_string()))?;
            // transformers' apply_chat_template(tokenize=True): the template writes any bos.
            Ok(tok.encode(&rendered, false)?)
        }
        (None, None) => Err(CliError::Usage("give --prompt or --messages".into())),
    }
}

/// Runs `peft generate`, writing the text to `out` as it comes.
pub fn generate(cmd: &GenerateCmd, out: &mut dyn Write) -> Result<Generation> {
    let device = Device::default();
    let tok = TextTokenizer::from_dir(cmd.tokenizer.as_deref().unwrap_or(&cmd.run.model))?;
    let ids = prompt_ids(&tok, cmd.prompt.as_deref(), cmd.messages.as_deref())?;
    let model = AnyCausalLm::load(&cmd.run.model, &device)?;
    let stop = with_model!(&model, m => stop_tokens(m, &tok));
    let options = GenerateOptions {
        max_new_tokens: cmd.max_new_tokens,
        sampling: cmd.temperature.map(|temperature| Sampling {
            temperature,
            top_p: cmd.top_p,
            seed: cmd.seed,
        }),
        stop,
    };
    options.check()?;
    with_model!(model, m => stream(m, cmd, &tok, &ids, &options, out))
}

fn stream<M: CausalLm + 'static>(
    model: M,
    cmd: &GenerateCmd,
    tok: &TextTokenizer,
    ids: &[u32],
    options: &GenerateOptions,
    out: &mut dyn Write,
) -> Result<Generation> {
    let model = registry::apply_adapter(model, cmd.run.adapter.as_deref(), cmd.run.merge)?;
    let mut text = TextStream::default();
    let stdout_err = |e: std::io::Error| CliError::io("write", Path::new("<stdout>"), e);
    let generation = run(&model, ids, options, |id| {
        let piece = text.push(tok, id)?;
        out.write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| peft_train::TrainError::Settings(format!("cannot write: {e}")))
    })?;
    let rest = text.finish(tok)?;
    writeln!(out, "{rest}").map_err(stdout_err)?;
    Ok(generation)
}
