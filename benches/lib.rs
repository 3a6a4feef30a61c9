//! Criterion benchmarks for peft-rs; run with `cargo xtask bench`.
