//! The error type of `peft-core`.

use std::path::PathBuf;

/// Everything a user, a config or an adapter file can get wrong in `peft-core`.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// A regular expression in a config field does not compile.
    #[error("invalid regular expression `{pattern}` in `{field}`: {source}")]
    InvalidPattern {
        /// The config field that holds the pattern.
        field: &'static str,
        /// The pattern as written.
        pattern: String,
        /// What the regex engine said.
        #[source]
        source: Box<regex::Error>,
    },
    /// A device name that is malformed or names a backend this build does not have.
    #[error("device `{spec}`: {reason}")]
    Device {
        /// The name as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A config value is out of range or contradicts another one.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A config field asks for behaviour this crate does not implement.
    #[error("unsupported option `{field}` = {value}: {reason}")]
    Unsupported {
        /// The field name as PEFT spells it.
        field: String,
        /// The offending value, as JSON.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The targets matched no module of the model.
    #[error(
        "target modules {targets} matched no module of the model{excluded}; modules that can carry an adapter: {available}"
    )]
    NoMatchingModule {
        /// The configured targets.
        targets: String,
        /// A note when everything that matched was excluded.
        excluded: String,
        /// The adaptable modules the model has.
        available: String,
    },
    /// The model already carries adapters (nested adapters are not supported).
    #[error("module `{0}` already carries an adapter; unload or merge it before injecting another")]
    AlreadyAdapted(String),
    /// A module or parameter named by the caller does not exist.
    #[error("no module or parameter `{0}` in the model")]
    UnknownModule(String),
    /// `adapter_config.json` is not valid JSON or has a field of the wrong type.
    #[error("malformed adapter config: {0}")]
    Json(#[from] serde_json::Error),
    /// A filesystem operation failed.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file is malformed or holds an unsupported dtype.
    #[error("malformed safetensors file `{path}`: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tensors of an adapter file do not fit the model.
    #[error("adapter does not fit the model: {0}")]
    Mismatch(String),
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor name.
        name: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A method crate's own error, passed through the registry ([`crate::method`]).
    #[error(transparent)]
    Method(Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias for `peft-core`.
pub type Result<T, E = PeftError> = std::result::Result<T, E>;
