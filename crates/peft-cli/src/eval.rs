//! `peft eval`: exact-match accuracy of a model (and adapter) on a question file.

use std::path::Path;

use burn::tensor::Device;
use peft_models::{AnyCausalLm, with_model};
use peft_train::eval::{ExactMatch, exact_match, read_questions};
use peft_train::tokenizer::TextTokenizer;

use crate::cli::ModelArgs;
use crate::error::Result;
use crate::registry;

/// Answers the questions of `data` with `run`'s model and adapter, using the tokenizer in
/// `tokenizer_dir`.
pub fn evaluate(run: &ModelArgs, tokenizer_dir: &Path, data: &Path) -> Result<ExactMatch> {
    let tok = TextTokenizer::from_dir(tokenizer_dir)?;
    let questions = read_questions(data, &tok)?;
    let model = AnyCausalLm::load(&run.model, &Device::default())?;
    with_model!(model, m => {
        let model = registry::apply_adapter(m, run.adapter.as_deref(), run.merge)?;
        Ok(exact_match(&model, &tok, &questions)?)
    })
}
