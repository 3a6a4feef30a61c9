//! Target-module matching with PEFT 0.21.2's exact semantics
//! (`check_target_module_exists`, `get_pattern_key`, `all-linear`).
//!
//! Keys are dotted module paths such as `model.layers.0.self_attn.q_proj`. Regular expressions
//! follow Python's `re` for everything the Rust `regex` crate supports (no look-around or
//! back-references); a pattern that uses those is rejected with [`PeftError::InvalidPattern`].

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};

/// Which modules an adapter targets: PEFT's `target_modules` / `exclude_modules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// A list: an entry matches the whole path or a `.`-separated suffix of it.
    List(Vec<String>),
    /// A regular expression that must match the whole path; the string `all-linear`
    /// (any case) means every `Linear` except the output head.
    Pattern(String),
}

impl TargetModules {
    /// A list of names, each matching the whole path or a dotted suffix.
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self::List(names.into_iter().map(Into::into).collect())
    }

    /// A regular expression that must match the whole module path.
    pub fn regex(pattern: impl Into<String>) -> Self {
        Self::Pattern(pattern.into())
    }

    /// Every `Linear` module except the output head (PEFT's `"all-linear"`).
    pub fn all_linear() -> Self {
        Self::Pattern("all-linear".into())
    }

    /// Whether this is PEFT's `"all-linear"` shorthand.
    pub fn is_all_linear(&self) -> bool {
        matches!(self, Self::Pattern(p) if p.eq_ignore_ascii_case("all-linear"))
    }

    fn describe(&self) -> String {
        match self {
            Self::List(l) => format!("{l:?}"),
            Self::Pattern(p) => format!("{p:?}"),
        }
    }
}

/// An `int` or a list of layer indices (PEFT's `layers_to_transform`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// One index.
    One(usize),
    /// Several indices.
    Many(Vec<usize>),
}

/// A string or a list of strings (PEFT's `layers_pattern`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One pattern.
    One(String),
    /// Several patterns, tried in order.
    Many(Vec<String>),
}

impl OneOrMany {
    fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// The matching-related fields shared by every PEFT method config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetSpec {
    /// `target_modules`.
    pub target_modules: Option<TargetModules>,
    /// `exclude_modules`.
    pub exclude_modules: Option<TargetModules>,
    /// `layers_to_transform`.
    pub layers_to_transform: Option<LayerIndices>,
    /// `layers_pattern`.
    pub layers_pattern: Option<OneOrMany>,
    /// `modules_to_save`: trained and saved in full, never adapted.
    pub modules_to_save: Option<Vec<String>>,
}

fn compile(field: &'static str, pattern: String) -> Result<Regex> {
    Regex::new(&pattern).map_err(|source| PeftError::InvalidPattern {
        field,
        pattern,
        source: Box::new(source),
    })
}

/// Python `re.fullmatch(p, key)`.
fn fullmatch(field: &'static str, p: &str) -> Result<Regex> {
    compile(field, format!(r"^(?:{p})\z"))
}

/// Python `re.match(p, key)` (anchored at the start only).
fn match_start(field: &'static str, p: &str) -> Result<Regex> {
    compile(field, format!(r"^(?:{p})"))
}

#[derive(Debug, Clone)]
enum Matcher {
    List(Vec<String>),
    Regex(Regex),
}

impl Matcher {
    fn new(field: &'static str, t: &TargetModules) -> Result<Self> {
        Ok(match t {
            TargetModules::List(l) => Self::List(l.clone()),
            TargetModules::Pattern(p) => Self::Regex(fullmatch(field, p)?),
        })
    }

    fn hit(&self, key: &str) -> bool {
        match self {
            Self::Regex(r) => r.is_match(key),
            Self::List(l) => l.iter().any(|t| key == t || suffix_match(key, t)),
        }
    }
}

fn suffix_match(key: &str, t: &str) -> bool {
    key.len() > t.len() && key.ends_with(t) && key.as_bytes()[key.len() - t.len() - 1] == b'.'
}

/// Why a module was or was not targeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOutcome {
    /// The module is targeted.
    Targeted,
    /// `exclude_modules` or `modules_to_save` excluded it.
    Excluded,
    /// The targets do not match it.
    NotMatched,
}

/// A compiled [`TargetSpec`]: decides, for a module path, whether it is targeted.
#[derive(Debug, Clone)]
pub struct TargetMatcher {
    spec: TargetSpec,
    targets: Matcher,
    exclude: Option<Matcher>,
    modules_to_save: Vec<Regex>,
    layer_index: Vec<Regex>,
}

impl TargetMatcher {
    /// Compiles and validates a spec with PEFT's rules.
    ///
    /// `all-linear` must be expanded first with [`expand_all_linear`]: this matcher treats it as
    /// an error, since it needs to know the module types.
    pub fn new(spec: &TargetSpec) -> Result<Self> {
        let targets = spec.target_modules.as_ref().ok_or_else(|| {
            PeftError::InvalidConfig(
                "`target_modules` is not set: name the modules to adapt (e.g. [\"q_proj\", \"v_proj\"])"
                    .into(),
            )
        })?;
        if targets.is_all_linear() {
            return Err(PeftError::InvalidConfig(
                "`all-linear` must be expanded against the model before matching".into(),
            ));
        }
        if matches!(targets, TargetModules::Pattern(_)) {
            if spec.layers_to_transform.is_some() {
                return Err(PeftError::InvalidConfig(
                    "`layers_to_transform` cannot be used when `target_modules` is a str".into(),
                ));
            }
            if spec.layers_pattern.is_some() {
                return Err(PeftError::InvalidConfig(
                    "`layers_pattern` cannot be used when `target_modules` is a str".into(),
                ));
            }
        }
        if spec.layers_pattern.is_some() && spec.layers_to_transform.is_none() {
            return Err(PeftError::InvalidConfig(
                "when `layers_pattern` is specified, `layers_to_transform` must also be specified"
                    .into(),
            ));
        }
        if let Some(e) = &spec.exclude_modules
            && e.is_all_linear()
        {
            return Err(PeftError::InvalidConfig(
                "`exclude_modules` cannot be `all-linear`".into(),
            ));
        }
        let exclude = spec
            .exclude_modules
            .as_ref()
            .map(|e| Matcher::new("exclude_modules", e))
            .transpose()?;
        let modules_to_save = spec
            .modules_to_save
            .iter()
            .flatten()
            .map(|m| match_start("modules_to_save", &format!(r"(^|.*\.){m}($|\..*)")))
            .collect::<Result<_>>()?;
        let layer_index = match spec.layers_pattern.as_ref().map(OneOrMany::as_slice) {
            None | Some([]) => vec![match_start(
                "layers_pattern",
                r".*?\.[^.]*\.(?P<idx>\d+)\.",
            )?],
            Some(patterns) if patterns.iter().all(String::is_empty) => {
                vec![match_start(
                    "layers_pattern",
                    r".*?\.[^.]*\.(?P<idx>\d+)\.",
                )?]
            }
            Some(patterns) => patterns
                .iter()
                .map(|p| {
                    match_start(
                        "layers_pattern",
                        &format!(r"(?:^|.*?\.){p}\.(?P<idx>\d+)\."),
                    )
                })
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            spec: spec.clone(),
            targets: Matcher::new("target_modules", targets)?,
            exclude,
            modules_to_save,
            layer_index,
        })
    }

    /// PEFT's `check_target_module_exists`, as an outcome.
    pub fn outcome(&self, key: &str) -> MatchOutcome {
        if self.exclude.as_ref().is_some_and(|e| e.hit(key)) {
            return MatchOutcome::Excluded;
        }
        if self.modules_to_save.iter().any(|r| r.is_match(key)) {
            return MatchOutcome::Excluded;
        }
        let found = match &self.targets {
            Matcher::Regex(r) => r.is_match(key),
            Matcher::List(l) if l.iter().any(|t| t == key) => true,
            Matcher::List(l) => {
                let found = l.iter().any(|t| suffix_match(key, t));
                match &self.spec.layers_to_transform {
                    Some(LayerIndices::Many(v)) if v.is_empty() => found,
                    Some(indices) if found => self.layer_matches(key, indices),
                    _ => found,
                }
            }
        };
        if found {
            MatchOutcome::Targeted
        } else {
            MatchOutcome::NotMatched
        }
    }

    /// Whether `key` is targeted.
    pub fn is_targeted(&self, key: &str) -> bool {
        self.outcome(key) == MatchOutcome::Targeted
    }

    fn layer_matches(&self, key: &str, indices: &LayerIndices) -> bool {
        let idx = self
            .layer_index
            .iter()
            .find_map(|r| r.captures(key))
            .and_then(|c| c.name("idx").and_then(|m| m.as_str().parse::<usize>().ok()));
        match (idx, indices) {
            (None, _) => false,
            (Some(i), LayerIndices::One(j)) => i == *j,
            (Some(i), LayerIndices::Many(v)) => v.contains(&i),
        }
    }

    /// Selects the targeted keys, or explains why none was.
    pub fn select<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<Vec<String>> {
        let mut excluded = 0;
        let mut out = Vec::new();
        for key in keys.clone() {
            match self.outcome(key) {
                MatchOutcome::Targeted => out.push(key.to_string()),
                MatchOutcome::Excluded => excluded += 1,
                MatchOutcome::NotMatched => {}
            }
        }
        if out.is_empty() {
            let available: Vec<&str> = keys.into_iter().collect();
            return Err(PeftError::NoMatchingModule {
                targets: self
                    .spec
                    .target_modules
                    .as_ref()
                    .map(TargetModules::describe)
                    .unwrap_or_default(),
                excluded: if excluded > 0 {
                    format!(" ({excluded} matching modules were excluded)")
                } else {
                    String::new()
                },
                available: format!("{available:?}"),
            });
        }
        Ok(out)
    }
}

/// PEFT's `get_pattern_key`: the first key of `patterns`, in order, for which
/// `(.*\.)?(key)$` matches `module` from its start.
pub fn pattern_key<'a>(
    patterns: impl IntoIterator<Item = &'a str>,
    module: &str,
) -> Result<Option<&'a str>> {
    for p in patterns {
        if match_start("rank_pattern/alpha_pattern", &format!(r"(.*\.)?({p})$"))?.is_match(module) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Expands `all-linear` to the full names of every Linear module except the output head, as
/// PEFT does for a transformers `PreTrainedModel`. The output head is `output_head` when given,
/// else a top-level-or-nested module whose last component is `lm_head`.
pub fn expand_all_linear<'a>(
    linear_modules: impl IntoIterator<Item = &'a str>,
    output_head: Option<&str>,
) -> Vec<String> {
    linear_modules
        .into_iter()
        .filter(|m| match output_head {
            Some(head) => *m != head,
            None => *m != "lm_head" && !m.ends_with(".lm_head"),
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(t: TargetModules) -> TargetSpec {
        TargetSpec {
            target_modules: Some(t),
            ..Default::default()
        }
    }

    #[test]
    fn suffix_must_fall_on_a_dot() {
        let m = TargetMatcher::new(&spec(TargetModules::names(["proj"]))).unwrap();
        assert!(!m.is_targeted("layers.0.q_proj"));
        let m = TargetMatcher::new(&spec(TargetModules::names(["q_proj"]))).unwrap();
        assert!(m.is_targeted("layers.0.q_proj"));
        assert!(m.is_targeted("q_proj"));
        assert!(!m.is_targeted("layers.0.xq_proj"));
    }

    #[test]
    fn rejects_contradictory_specs() {
        let mut s = spec(TargetModules::regex(".*q"));
        s.layers_to_transform = Some(LayerIndices::One(0));
        assert!(matches!(
            TargetMatcher::new(&s),
            Err(PeftError::InvalidConfig(_))
        ));
        let mut s = spec(TargetModules::names(["q"]));
        s.layers_pattern = Some(OneOrMany::One("layers".into()));
        assert!(matches!(
            TargetMatcher::new(&s),
            Err(PeftError::InvalidConfig(_))
        ));
        let s = spec(TargetModules::regex("(unclosed"));
        assert!(matches!(
            TargetMatcher::new(&s),
            Err(PeftError::InvalidPattern { .. })
        ));
    }

    #[test]
    fn no_match_lists_what_exists() {
        let m = TargetMatcher::new(&spec(TargetModules::names(["nope"]))).unwrap();
        let err = m.select(["a.q", "a.v"]).unwrap_err().to_string();
        assert!(err.contains("a.q") && err.contains("nope"), "{err}");
    }
}
