//! # peft-train
//!
//! Fine-tuning for peft-rs: a Hugging Face tokenizer, TRL's data formats, transformers' loss,
//! AdamW, schedules and gradient clipping, driven step by step over burn-train's
//! [`TrainStep`](burn_train::TrainStep), with adapter-only checkpoints that resume exactly.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod adamw;
pub mod batch;
pub mod chat;
pub mod clip;
pub mod data;
pub mod error;
pub mod eval;
pub mod generate;
pub mod loss;
pub mod memory;
pub mod schedule;
pub mod step;
pub mod tokenizer;

pub use adamw::FusedAdamW;
pub use error::{Result, TrainError};
pub mod checkpoint;
pub mod trainer;

pub use trainer::{Resume, TrainData, TrainReport, TrainSettings, evaluate, train};
