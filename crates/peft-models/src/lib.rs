//! # peft-models
//!
//! Reference decoder models for peft-rs, written with [`peft_core::nn`] layers so that every
//! adapter runs factored: **OPT** ([`OptForCausalLm`]) and **Llama** ([`LlamaForCausalLm`]).
//! They load transformers checkpoints (`config.json` + `model.safetensors` or shards; f32, f16
//! or bf16 on disk, f32 in memory) and their module paths equal transformers' parameter names, so
//! PEFT adapters load onto them with no key map.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use peft_models::{CausalLm, OptConfig};
//!
//! let device = Device::default();
//! let mut config = OptConfig::opt_125m();
//! (config.vocab_size, config.hidden_size, config.ffn_dim) = (100, 32, 64);
//! (config.num_hidden_layers, config.num_attention_heads, config.word_embed_proj_dim) = (2, 4, Some(32));
//! // Random weights may pick any token, the end-of-sequence one too, which ends generation.
//! config.eos_token_id = None;
//! let model = config.init(&device)?; // random weights; `AnyCausalLm::load` reads a checkpoint
//! let ids = Tensor::<2, Int>::from_data([[5, 6, 7]], &device);
//! assert_eq!(model.forward(ids.clone()).dims(), [1, 3, 100]);
//! let out = model.generate(ids, 4, 1)?;  // greedy
//! assert_eq!(out.dims(), [1, 7]);
//! # Ok::<(), peft_models::ModelError>(())
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod attention;
pub mod causal_lm;
pub mod checkpoint;
pub mod error;
pub mod init;
pub mod kv_cache;
pub mod llama;
pub mod norm;
pub mod opt;
pub mod pretrained;

pub use causal_lm::{CausalLm, OutputWeight};
pub use checkpoint::Checkpoint;
pub use error::{ModelError, Result};
pub use kv_cache::KvCache;
pub use llama::{LlamaConfig, LlamaForCausalLm};
pub use opt::{OptConfig, OptForCausalLm};
pub use pretrained::AnyCausalLm;
