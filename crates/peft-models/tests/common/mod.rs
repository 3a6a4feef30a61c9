//! Shared test support: the model fixtures written by `cargo xtask fixtures` (transformers and
//! PEFT 0.21.2).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};

pub fn models() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/models"
    ))
}

pub fn read(rel: &str) -> BTreeMap<String, TensorData> {
    peft_core::io::read_safetensors(&models().join(rel)).expect("fixture file")
}

/// The device the suite runs on (`BURN_DEVICE` picks the backend), with autodiff.
pub fn device() -> Device {
    Device::default().autodiff()
}

pub fn input_ids(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(read("inputs.safetensors")["input_ids"].clone(), device)
}

pub fn max_abs_diff(a: &TensorData, b: &TensorData) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    let a = a.clone().convert::<f32>().try_into_vec::<f32>().unwrap();
    let b = b.clone().convert::<f32>().try_into_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[track_caller]
pub fn assert_close(what: &str, a: &TensorData, b: &TensorData, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs error {d} > {tol}");
}

/// The decoder fixtures: (name, adapter cases).
pub const MODELS: &[(&str, &[&str])] = &[
    ("opt_pre", &["qv", "all_linear_rslora", "dora_qv"]),
    ("opt_post", &["patterns", "embed"]),
    ("llama", &["qv", "all_embed_saved", "dora_all_embed"]),
    ("llama_tied", &["qv"]),
];
