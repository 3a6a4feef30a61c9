//! Chat templates: the tokenizer's Jinja `chat_template`, rendered with `minijinja`.

use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::Value;

use crate::error::{Result, TrainError};

/// The most template instructions one render may run: a chat template comes with a downloaded
/// tokenizer, and one that loops without end must fail, not hang the run. Real templates use a
/// few hundred per message.
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// A compiled chat template, with transformers' globals (`raise_exception`, Python string
/// methods such as `.strip()`).
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the template's `bos_token` / `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TrainError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Renders `messages` (a list of `{"role", "content"}` objects); `add_generation_prompt`
    /// appends the header of an assistant turn.
    pub fn render(&self, messages: &[Value], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TrainError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| TrainError::Template(e.to_string()))
    }

    /// The full text of a conversation and the byte ranges of its assistant turns: turn `i`
    /// spans from the end of `render(messages[..i], add_generation_prompt)` to the end of
    /// `render(messages[..=i])`. Fails when the template does not render prefixes as prefixes.
    pub fn assistant_spans(&self, messages: &[Value]) -> Result<(String, Vec<(usize, usize)>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.get("role").and_then(Value::as_str) != Some("assistant") {
                continue;
            }
            let start = self.render(&messages[..i], true)?;
            let upto = self.render(&messages[..=i], false)?;
            if !upto.starts_with(&start) || !full.starts_with(&upto) {
                return Err(TrainError::Template(format!(
                    "message {i}: the template does not render a conversation's beginning as a \
                     prefix of the whole, so assistant turns cannot be located"
                )));
            }
            spans.push((start.len(), upto.len()));
        }
        Ok((full, spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_and_finds_assistant_turns() {
        let t = ChatTemplate::new(
            "{% for m in messages %}[{{ m['role'] }}]{{ m['content'].strip() }}{% endfor %}\
             {% if add_generation_prompt %}[assistant]{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let msgs = vec![
            json!({"role": "user", "content": " hi "}),
            json!({"role": "assistant", "content": "yo"}),
        ];
        let (full, spans) = t.assistant_spans(&msgs).unwrap();
        assert_eq!(full, "[user]hi[assistant]yo");
        assert_eq!(&full[spans[0].0..spans[0].1], "yo");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("no system role"), "{e}");
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("fuel"), "{e}");
        // A ChatML template still renders a long conversation.
        let chatml = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n\
             {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "",
            "",
        )
        .unwrap();
        let msgs: Vec<Value> = (0..500)
            .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "x"}))
            .collect();
        assert!(chatml.render(&msgs, true).is_ok());
    }
}
