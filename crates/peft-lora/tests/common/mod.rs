//! Shared test support: fixtures written by `cargo xtask fixtures` (real PEFT 0.21.2) and the
//! tiny model they were made on.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData, activation::relu};
use peft_core::nn::{Embedding, EmbeddingConfig, InitFactored, Linear, LinearConfig};

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/lora"))
}

pub fn read(rel: &str) -> BTreeMap<String, TensorData> {
    peft_core::io::read_safetensors(&fixtures().join(rel)).expect("fixture file")
}

pub fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap()).unwrap()
}

/// Serialises the tests of one binary that draw random numbers: burn's generator is global per
/// backend, so a test that seeds it and expects a given draw (a dropout mask) holds this lock, as
/// does every other test of its binary that draws (random inputs, randomly initialised layers).
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The device the suite runs on (`BURN_DEVICE` picks the backend), with autodiff.
pub fn device() -> Device {
    Device::default().autodiff()
}

pub fn t2(d: &TensorData, device: &Device) -> Tensor<2> {
    Tensor::from_data(d.clone(), device)
}

pub fn t3(d: &TensorData, device: &Device) -> Tensor<3> {
    Tensor::from_data(d.clone(), device)
}

pub fn ids(d: &TensorData, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(d.clone().convert::<i64>(), device)
}

pub fn transpose(d: &TensorData) -> TensorData {
    peft_core::io::transpose(d).unwrap()
}

/// Max |a - b|, asserting equal shapes.
pub fn max_abs_diff(a: TensorData, b: &TensorData) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    let a = a.convert::<f32>().try_into_vec::<f32>().unwrap();
    let b = b.clone().convert::<f32>().try_into_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[track_caller]
pub fn assert_close(what: &str, a: TensorData, b: &TensorData, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs error {d} > {tol}");
}

/// Mirrors `Block` in xtask/fixtures/generate.py.
#[derive(Module, Debug)]
pub struct Block {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

/// Mirrors `Tiny` in xtask/fixtures/generate.py; module paths equal PyTorch's.
#[derive(Module, Debug)]
pub struct TinyModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub lm_head: Linear,
}

impl Block {
    pub fn new(d: usize, dv: usize, device: &Device) -> Self {
        Self {
            q_proj: LinearConfig::new(d, d).init_factored(device),
            k_proj: LinearConfig::new(d, d)
                .with_bias(false)
                .init_factored(device),
            v_proj: LinearConfig::new(d, dv).init_factored(device),
            o_proj: LinearConfig::new(dv, d).init_factored(device),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.q_proj.forward(x.clone()).mul_scalar(0.5)
            + self.k_proj.forward(x.clone()).mul_scalar(0.5);
        x.clone() + self.o_proj.forward(relu(self.v_proj.forward(x))) + h
    }
}

impl TinyModel {
    /// Random init with the fixture's shapes.
    pub fn new(device: &Device) -> Self {
        Self {
            embed_tokens: EmbeddingConfig::new(32, 16).init_factored(device),
            layers: (0..3).map(|_| Block::new(16, 8, device)).collect(),
            lm_head: LinearConfig::new(16, 32)
                .with_bias(false)
                .init_factored(device),
        }
    }

    /// The fixture's base weights.
    pub fn pretrained(device: &Device) -> Self {
        let sd = read("tiny/base.safetensors");
        peft_core::io::load_pytorch_state_dict(
            Self::new(device),
            &sd,
            &peft_core::KeyMap::identity(),
        )
        .unwrap()
    }

    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let mut x = self.embed_tokens.forward(ids);
        for l in &self.layers {
            x = l.forward(x);
        }
        self.lm_head.forward(x)
    }
}

/// Max |a - b| ≤ rel · max(1, max |b|): f32 rounding grows with the magnitude of the values.
#[track_caller]
pub fn assert_close_rel(what: &str, a: TensorData, b: &TensorData, rel: f32) {
    let scale = b
        .clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
        .iter()
        .fold(1f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(a, b);
    assert!(
        d <= rel * scale,
        "{what}: max abs error {d} > {rel} x {scale}"
    );
}

/// One factored Linear at module path `layer` (PEFT fixtures wrap one layer the same way).
#[derive(Module, Debug)]
pub struct OneFactored {
    pub layer: Linear,
}

/// One burn `Linear` (weight-space path) at module path `layer`.
#[derive(Module, Debug)]
pub struct OneBurn {
    pub layer: burn::nn::Linear,
}

/// One factored Embedding at module path `layer`.
#[derive(Module, Debug)]
pub struct OneEmbedding {
    pub layer: Embedding,
}

pub fn factored(i: usize, o: usize, bias: bool, d: &Device) -> OneFactored {
    OneFactored {
        layer: LinearConfig::new(i, o).with_bias(bias).init(d).into(),
    }
}

pub fn burn_linear(i: usize, o: usize, bias: bool, d: &Device) -> OneBurn {
    OneBurn {
        layer: burn::nn::LinearConfig::new(i, o).with_bias(bias).init(d),
    }
}

pub fn embedding(num: usize, dim: usize, d: &Device) -> OneEmbedding {
    OneEmbedding {
        layer: EmbeddingConfig::new(num, dim).init(d).into(),
    }
}
