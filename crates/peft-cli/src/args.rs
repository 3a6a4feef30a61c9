//! A small command-line parser: positional arguments, `--flag value` and `--switch`.

use std::collections::BTreeMap;

use crate::error::{CliError, Result};

/// Parsed arguments of one command.
#[derive(Debug, Default)]
pub struct Args {
    /// Arguments that are not flags, in order.
    pub positional: Vec<String>,
    values: BTreeMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    /// Parses `raw` given the flags that take a value and the switches that do not.
    pub fn parse(raw: &[String], valued: &[&str], switches: &[&str]) -> Result<Self> {
        let mut args = Args::default();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (name, None),
                };
                if valued.contains(&name) {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| CliError::Usage(format!("--{name} needs a value")))?,
                    };
                    args.values.insert(name.to_string(), value);
                } else if switches.contains(&name) && inline.is_none() {
                    args.switches.push(name.to_string());
                } else {
                    return Err(CliError::Usage(format!("unknown option --{name}")));
                }
            } else {
                args.positional.push(a.clone());
            }
        }
        Ok(args)
    }

    /// The value of `--name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `--name`, which must be given.
    pub fn required(&self, name: &str) -> Result<&str> {
        self.value(name)
            .ok_or_else(|| CliError::Usage(format!("missing --{name}")))
    }

    /// Whether `--name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_values_switches_and_positionals() {
        let a = Args::parse(
            &s(&["dir", "--out", "o", "--json", "--dtype=f16"]),
            &["out", "dtype"],
            &["json"],
        )
        .unwrap();
        assert_eq!(a.positional, ["dir"]);
        assert_eq!(a.value("out"), Some("o"));
        assert_eq!(a.value("dtype"), Some("f16"));
        assert!(a.switch("json"));
    }

    #[test]
    fn rejects_unknown_and_incomplete_flags() {
        assert!(Args::parse(&s(&["--nope"]), &[], &[]).is_err());
        assert!(Args::parse(&s(&["--out"]), &["out"], &[]).is_err());
        assert!(Args::parse(&s(&["--json=1"]), &[], &["json"]).is_err());
    }
}
