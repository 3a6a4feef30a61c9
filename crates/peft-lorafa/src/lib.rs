//! # peft-lorafa
//!
//! LoRA-FA (Zhang et al. 2023, arXiv 2308.03303, "memory-efficient LoRA": *frozen-A*, not "fast
//! adaptation") as PEFT 0.21.2 implements it. A keeps its random initialisation and gets no
//! gradient; only B trains, with PEFT's projected gradient
//! `ĝ_B = (1/s²)·∇B·pinv(A·Aᵀ + 1e-8·I)` and Hugging Face's AdamW. The adapter files are PEFT's
//! plain LoRA (`peft_type: "LORA"`).
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::LinearConfig;
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use peft_core::nn::{InitFactored, Linear};
//! use peft_core::TargetModules;
//! use peft_lora::{InjectOptions, LoraConfig};
//! use peft_lorafa::LoraFaOptimizerConfig;
//!
//! #[derive(Module, Debug)]
//! struct Mlp { up: Linear, down: Linear }
//!
//! let device = Device::default().autodiff();
//! let model = Mlp {
//!     up: LinearConfig::new(16, 64).init_factored(&device),
//!     down: LinearConfig::new(64, 16).init_factored(&device),
//! };
//! let config = LoraConfig::new(TargetModules::names(["up", "down"])).with_r(4).with_alpha(8.0);
//! let mut lora = peft_lorafa::inject(model, &config, &InjectOptions::default())?;
//! let mut optim = LoraFaOptimizerConfig::new().with_weight_decay(0.01).init(&lora)?;
//!
//! let x = Tensor::<2>::random([8, 16], Distribution::Default, &device);
//! let loss = lora.model.down.forward(lora.model.up.forward(x)).powi_scalar(2).mean();
//! let grads = GradientsParams::from_grads(loss.backward(), &lora.model);
//! lora.model = optim.step(1e-3, lora.model, grads); // only the B factors move
//! # // Let the device finish before exit: on lavapipe a shader still compiling while exit
//! # // runs LLVM's destructors can crash the process after the example has passed.
//! # device.sync().expect("the device finishes its queued work");
//! # Ok::<(), peft_lorafa::LoraFaError>(())
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod adamw;
pub mod error;
pub mod freeze;
pub mod optimizer;
pub mod projection;

pub use error::{LoraFaError, Result};
pub use freeze::{freeze_a, inject, load};
pub use optimizer::LoraFaOptimizerConfig;
pub use projection::ProjectionPrecision;
