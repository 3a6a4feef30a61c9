//! Exact-match accuracy: the model answers each question of a data set greedily, and an answer
//! counts when its text equals the expected one.
//!
//! Questions are `prompt`/`completion` rows (the prompt encoded with the tokenizer's special
//! tokens, as in training) or `messages` rows whose last turn is the assistant's (the turns
//! before it rendered by the chat template with the generation prompt). An answer is generated
//! for at most the expected answer's token count + 1 (room for the end-of-sequence token); it is
//! right when the decoded text, special tokens skipped and surrounding whitespace trimmed, equals
//! the expected text trimmed.

use std::path::Path;

use peft_models::CausalLm;
use serde_json::Value;

use crate::data::jsonl_rows;
use crate::error::{Result, TrainError};
use crate::generate::{GenerateOptions, generate, stop_tokens};
use crate::tokenizer::TextTokenizer;

/// One question of an evaluation set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The prompt as text (for reports).
    pub prompt: String,
    /// The prompt's token ids.
    pub ids: Vec<u32>,
    /// The expected answer.
    pub answer: String,
    /// Token count of the answer.
    pub answer_tokens: usize,
}

/// Reads the questions of a JSONL file; an error names the file and line.
pub fn read_questions(path: &Path, tok: &TextTokenizer) -> Result<Vec<Question>> {
    let template = tok.template()?;
    let mut questions = Vec::new();
    for (line, row) in jsonl_rows(path)? {
        let err = |message: String| TrainError::Data {
            path: path.into(),
            line,
            message,
        };
        let field = |key: &str| row.get(key).and_then(Value::as_str);
        let (prompt, ids, answer) =
            if let (Some(p), Some(c)) = (field("prompt"), field("completion")) {
                (p.to_string(), tok.encode(p, true)?, c.to_string())
            } else if let Some(messages) = row.get("messages").and_then(Value::as_array) {
                let Some((last, before)) = messages.split_last() else {
                    return Err(err("`messages` is empty".into()));
                };
                let answer = match (
                    last.get("role").and_then(Value::as_str),
                    last.get("content").and_then(Value::as_str),
                ) {
                    (Some("assistant"), Some(content)) => content.to_string(),
                    _ => {
                        return Err(err(
                            "the last message must be the assistant's answer to check".into(),
                        ));
                    }
                };
                let template = template.as_ref().ok_or_else(|| {
                    err("a `messages` row needs a chat template, and the tokenizer has none".into())
                })?;
                let prompt = template
                    .render(before, true)
                    .map_err(|e| err(e.to_string()))?;
                let ids = tok.encode(&prompt, false)?;
                (prompt, ids, answer)
            } else {
                return Err(err(
                    "an evaluation row needs `prompt` and `completion`, or `messages` ending with \
                 the assistant's answer"
                        .into(),
                ));
            };
        if answer.trim().is_empty() {
            return Err(err("the expected answer is empty".into()));
        }
        let answer_tokens = tok.encode(&answer, false)?.len();
        questions.push(Question {
            prompt,
            ids,
            answer,
            answer_tokens,
        });
    }
    if questions.is_empty() {
        return Err(TrainError::Dataset {
            path: path.into(),
            message: "no questions (the file is empty)".into(),
        });
    }
    Ok(questions)
}

/// What the model answered to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The question's prompt.
    pub prompt: String,
    /// The expected answer.
    pub expected: String,
    /// The model's answer (decoded, special tokens skipped).
    pub got: String,
    /// Whether they match.
    pub correct: bool,
}

/// The result of an exact-match evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactMatch {
    /// Each question with its answer, in file order.
    pub answers: Vec<Answered>,
}

impl ExactMatch {
    /// Right answers.
    pub fn correct(&self) -> usize {
        self.answers.iter().filter(|a| a.correct).count()
    }

    /// Right answers / questions.
    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.answers.len().max(1) as f64
    }
}

impl std::fmt::Display for ExactMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exact match {}/{} ({:.1}%)",
            self.correct(),
            self.answers.len(),
            100.0 * self.accuracy()
        )
    }
}

/// Answers every question greedily with `model` (gradients off) and checks the answers.
pub fn exact_match<M: CausalLm>(
    model: &M,
    tok: &TextTokenizer,
    questions: &[Question],
) -> Result<ExactMatch> {
    let model = model.valid();
    let stop = stop_tokens(&model, tok);
    let mut report = ExactMatch::default();
    for q in questions {
        let options = GenerateOptions {
            max_new_tokens: q.answer_tokens + 1,
            sampling: None,
            stop: stop.clone(),
        };
        let generation = generate(&model, &q.ids, &options, |_| Ok(()))?;
        let got = tok.decode(&generation.tokens, true)?;
        report.answers.push(Answered {
            prompt: q.prompt.clone(),
            expected: q.answer.clone(),
            correct: got.trim() == q.answer.trim(),
            got,
        });
    }
    Ok(report)
}
