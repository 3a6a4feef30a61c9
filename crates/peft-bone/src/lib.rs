//! # peft-bone
//!
//! Bone (Block-Affine adaptation, Kang, arXiv 2409.15371) and its successor MiSS (Matrix Shard
//! Sharing), PEFT-exact, on Linear layers:
//!
//! - **default** (Bone = MiSS default): block `[r, out]`, zero init;
//!   `y = x·W + b + (Σ r-wide chunks of the zero-padded x)·block`, computed factored;
//! - **bat**: block `[out/r, r, r]`, per r×r tile `W' = W·(I + B) + B`;
//! - **mini** (MiSS only): block `[r, mini_r]` tiled across the output.
//!
//! Reads PEFT's Bone (`"BONE"`, PEFT ≤ 0.18) and MiSS (`"MISS"`) folders; writes MiSS by default.
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use peft_core::nn::{InitFactored, Linear};
//! use peft_core::{KeyMap, TargetModules};
//! use peft_bone::{BoneConfig, BoneMode, BoneModel};
//!
//! #[derive(Module, Debug)]
//! struct Mlp { up: Linear }
//!
//! let device = Device::default();
//! let model = Mlp { up: LinearConfig::new(16, 32).init_factored(&device) };
//! let config = BoneConfig::new(TargetModules::names(["up"])).with_r(4).with_mode(BoneMode::Bat);
//! let bone = BoneModel::inject(model, &config, &KeyMap::identity())?;
//! assert_eq!(bone.param_counts().trainable, 32 / 4 * 4 * 4);
//! let x = Tensor::<2>::random([3, 16], Distribution::Default, &device);
//! let y = bone.model.up.forward(x);   // zero block: the base output
//! let merged = bone.merge();          // W' per tile; `merged.unmerge()` restores W
//! # let _ = (y, merged);
//! # // Let the device finish before exit: on lavapipe a shader still compiling while exit
//! # // runs LLVM's destructors can crash the process after the example has passed.
//! # device.sync().expect("the device finishes its queued work");
//! # Ok::<(), peft_bone::BoneError>(())
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod error;
pub mod inject;
pub mod io;
pub mod layer;
pub mod method;
pub mod model;

pub use config::{BoneConfig, BoneFormat, BoneMode};
pub use error::{BoneError, Result};
pub use layer::{BoneAdapter, bat_runs_factored};
pub use method::Bone;
pub use model::{BoneModel, MergedBoneModel};
