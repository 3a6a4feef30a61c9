//! The `peft` command-line tool's commands, as a library (the binary is `src/main.rs`).
//!
//! The tool holds no method math: each command looks the adapter's method up in
//! [`registry`] (one table, `peft_type` → method crate) and calls the method through
//! [`peft_core::method`].
//!
//! - [`inspect`](inspect::inspect): method, ranks, alphas, targets, parameter count, file size.
//! - [`merge`](merge::merge): state-dict-level merge of an adapter into any transformers
//!   checkpoint, streamed tensor by tensor, written atomically.
//! - [`forward`](forward::forward): logits of an OPT or Llama checkpoint with an optional adapter.
//! - [`convert`](convert::convert): Bone ↔ MiSS adapter folders.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod convert;
pub mod error;
pub mod eval;
pub mod forward;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod registry;
pub mod stream;
pub mod train;

pub use error::{CliError, Result};

/// The README's examples, compiled and run as doc tests (this crate depends on every other).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
