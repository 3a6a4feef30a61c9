//! Fuzz target `targets`: see `peft_fuzz::targets`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peft_fuzz::targets(data));
