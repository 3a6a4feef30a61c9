//! # peft-lora
//!
//! PEFT-exact LoRA for burn: inject adapters into any model, train them, save and load
//! PEFT-format adapter folders, merge and unmerge.
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use burn::module::Module;
//! use peft_core::nn::{InitFactored, Linear};
//! use peft_core::TargetModules;
//! use peft_lora::{InjectOptions, LoraConfig, LoraModel};
//!
//! #[derive(Module, Debug)]
//! struct Mlp { up: Linear, down: Linear }
//!
//! let device = Device::default();
//! let model = Mlp {
//!     up: LinearConfig::new(16, 64).init_factored(&device),
//!     down: LinearConfig::new(64, 16).init_factored(&device),
//! };
//! let config = LoraConfig::new(TargetModules::names(["up", "down"])).with_r(4).with_alpha(8.0);
//! let lora = LoraModel::inject(model, &config, &InjectOptions::default())?;
//! assert_eq!(lora.param_counts().trainable, 4 * (16 + 64) + 4 * (64 + 16));
//!
//! let x = Tensor::<2>::random([3, 16], Distribution::Default, &device);
//! let y = lora.model.down.forward(lora.model.up.forward(x)); // B = 0: same as the base model
//! assert_eq!(y.dims(), [3, 16]);
//!
//! let dir = std::env::temp_dir().join(format!("peft-lora-doc-{}", std::process::id()));
//! lora.save(&dir)?;                       // adapter_model.safetensors + adapter_config.json
//! let merged = lora.merge_and_unload();   // plain Mlp with W + s·A·B
//! # let _ = merged; std::fs::remove_dir_all(&dir).ok();
//! # // Let the device finish before exit: on lavapipe a shader still compiling while exit
//! # // runs LLVM's destructors can crash the process after the example has passed.
//! # device.sync().expect("the device finishes its queued work");
//! # Ok::<(), peft_lora::LoraError>(())
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod dora;
pub mod error;
pub mod inject;
pub mod io;
pub mod layer;
pub mod method;
pub mod model;

pub use config::{LoraConfig, LoraInit};
pub use error::{LoraError, Result};
pub use inject::InjectOptions;
pub use layer::LoraAdapter;
pub use method::Lora;
pub use model::{LoraModel, LoraTarget, MergedLoraModel};
