//! LoRA-FA keeps less for the backward pass than LoRA: with A frozen, autodiff keeps `x·A`
//! (`[tokens, r]`) instead of each adapted layer's input `x` (`[tokens, d_in]`). Measured with a
//! counting allocator (see `examples/memory.rs`).
#![allow(clippy::unwrap_used)]

#[path = "../examples/memory.rs"]
#[allow(dead_code, missing_docs)]
mod memory;

use memory::{Method, step_peak_bytes, tiny};

#[test]
fn lorafa_step_needs_less_memory_than_lora() {
    let config = tiny();
    let lora = step_peak_bytes(&config, Method::Lora, 2, 64, 8);
    let fa = step_peak_bytes(&config, Method::LoraFa, 2, 64, 8);
    // One [tokens, d] f32 activation is 2·64·128·4 = 64 KiB; below that, the tensors live in
    // device memory the host allocator cannot see (GPU backends), and there is nothing to compare.
    if lora < 64 * 1024 {
        eprintln!(
            "memory: tensors are not in host memory on this backend ({lora} bytes seen); compared on flex/ndarray"
        );
        return;
    }
    eprintln!("memory: LoRA {lora} B, LoRA-FA {fa} B");
    // At least one [tokens, d] activation per adapted layer input is gone.
    assert!(
        fa + 2 * 64 * 1024 < lora,
        "LoRA-FA {fa} B is not below LoRA {lora} B"
    );
}
