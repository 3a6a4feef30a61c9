//! # peft-core
//!
//! The method-independent half of peft-rs: PEFT's target matching, `adapter_config.json`
//! fields, injection of adapters into any burn module through burn's
//! [`Reparameterizer`](burn::module::Reparameterizer), adapter-aware layers that run adapters
//! factored ([`nn`]), and PEFT-format adapter files.
//!
//! Method crates (`peft-lora`, …) build on it; most users start there.
#![cfg_attr(test, allow(clippy::unwrap_used))]
// Built without any backend (a type check), `#[backend_extension]` leaves the scalar arguments of
// the extensions' default methods (`nn`, `optim`) unused.
#![cfg_attr(
    not(any(
        feature = "flex",
        feature = "ndarray",
        feature = "wgpu",
        feature = "cuda"
    )),
    allow(unused_variables)
)]

pub mod config;
pub mod device;
pub mod error;
pub mod fault;
pub mod inject;
pub mod inventory;
pub mod io;
pub mod keymap;
pub mod method;
pub mod nn;
pub mod optim;
pub mod packed;
pub mod params;
pub mod paths;
pub mod require_grad;
pub mod switch;
pub mod targets;

pub use error::{PeftError, Result};
pub use inject::{AdapterFactory, InjectionPlan, ResolveOptions, Target, inject};
pub use inventory::{Inventory, LayerEntry, LayerKind};
pub use keymap::{KeyMap, PEFT_PREFIX};
pub use method::{Adapted, AttachMethod, AttachOptions, Method};
pub use params::ParamCounts;
pub use switch::AdapterSwitch;
pub use targets::{
    LayerIndices, MatchOutcome, OneOrMany, TargetMatcher, TargetModules, TargetSpec,
};
