//! Turning a model's adapters off and on without removing them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared on/off switch for the adapters of one injection (PEFT's `disable_adapter()`).
///
/// Every adapter created by one injection holds a clone; clones of the model share it.
#[derive(Debug, Clone)]
pub struct AdapterSwitch(Arc<AtomicBool>);

impl Default for AdapterSwitch {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl AdapterSwitch {
    /// Whether the adapters contribute to the output.
    pub fn is_enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Turns the adapters on or off.
    pub fn set(&self, enabled: bool) {
        self.0.store(enabled, Ordering::Relaxed);
    }
}
