//! Fuzz target `merge`: see `peft_fuzz::merge`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peft_fuzz::merge(data));
