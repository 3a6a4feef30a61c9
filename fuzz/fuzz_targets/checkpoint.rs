//! Fuzz target `checkpoint`: see `peft_fuzz::checkpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peft_fuzz::checkpoint(data));
