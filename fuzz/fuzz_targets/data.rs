//! Fuzz target `data`: see `peft_fuzz::data`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peft_fuzz::data(data));
