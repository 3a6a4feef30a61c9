//! Mapping between burn module paths and the PyTorch module names an adapter file uses.

use regex::Regex;

use crate::error::{PeftError, Result};

/// The prefix PEFT puts before every module name in `adapter_model.safetensors`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Rewrites burn module paths (`layers.0.attn.q`) into the module names of the PyTorch model an
/// adapter file was made for (`model.layers.0.self_attn.q_proj`).
///
/// Rules are regular expressions tried in order; the first that matches a path rewrites it
/// (`$1`-style replacement). A path no rule matches is used unchanged. Target matching
/// (`target_modules`, patterns) sees the rewritten names, as PEFT sees PyTorch's.
///
/// ```
/// use peft_core::KeyMap;
/// let map = KeyMap::identity()
///     .rule(r"^layers\.(\d+)\.attn\.q$", "model.layers.$1.self_attn.q_proj")?;
/// assert_eq!(map.to_peft("layers.3.attn.q"), "model.layers.3.self_attn.q_proj");
/// assert_eq!(map.to_peft("lm_head"), "lm_head");
/// # Ok::<(), peft_core::PeftError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    rules: Vec<(Regex, String)>,
}

impl KeyMap {
    /// Burn paths are the PyTorch names.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Adds a rule: paths matching `pattern` are rewritten with `replacement`.
    pub fn rule(mut self, pattern: &str, replacement: &str) -> Result<Self> {
        let re = Regex::new(pattern).map_err(|source| PeftError::InvalidPattern {
            field: "key map",
            pattern: pattern.to_string(),
            source: Box::new(source),
        })?;
        self.rules.push((re, replacement.to_string()));
        Ok(self)
    }

    /// The PyTorch module name for a burn module path.
    pub fn to_peft(&self, burn_path: &str) -> String {
        self.rules
            .iter()
            .find(|(re, _)| re.is_match(burn_path))
            .map(|(re, rep)| re.replace_all(burn_path, rep.as_str()).into_owned())
            .unwrap_or_else(|| burn_path.to_string())
    }
}
