//! Criterion benchmarks for peft-rs; run with `cargo xtask bench criterion`; the method-comparison guide is `guide/` (`cargo xtask bench`).
