//! Fuzz target `adapter_folder`: see `peft_fuzz::adapter_folder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peft_fuzz::adapter_folder(data));
