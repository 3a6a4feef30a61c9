//! Peak training memory of LoRA and LoRA-FA on an OPT-shaped model, measured.
//!
//! ```text
//! cargo run --release -p peft-lorafa --example memory -- [--model 125m|tiny] [--batch 4] [--seq 512] [--r 16]
//! ```
//!
//! How it is measured: a counting global allocator (`peak_alloc`) records every byte the process
//! allocates. After the model and its adapters exist, the peak is reset and one training step
//! (forward, loss, backward, gradients collected) runs; the reported figure is that step's peak
//! minus the memory in use before it: activations kept for the backward pass plus gradients.
//! This sees tensors on host backends (flex, ndarray); a GPU backend's memory is not host memory.
//! Weights are random (same shapes as the real checkpoint); targets are all-linear (q, k, v,
//! out_proj, fc1, fc2).

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor};
use peak_alloc::PeakAlloc;
use peft_core::TargetModules;
use peft_lora::{InjectOptions, LoraConfig, LoraModel};
use peft_models::{CausalLm, OptConfig};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Which adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// LoRA: A and B train.
    Lora,
    /// LoRA-FA: A frozen.
    LoraFa,
}

/// Bytes above the pre-step level at the peak of one training step.
pub fn step_peak_bytes(
    config: &OptConfig,
    method: Method,
    batch: usize,
    seq: usize,
    r: usize,
) -> usize {
    let device = Device::default().autodiff();
    let model = config.init(&device).expect("valid config");
    let targets = TargetModules::names(["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]);
    let lora_config = LoraConfig::new(targets).with_r(r).with_alpha(r as f64);
    let mut lora =
        LoraModel::inject(model, &lora_config, &InjectOptions::default()).expect("inject");
    if method == Method::LoraFa {
        lora = peft_lorafa::freeze_a(lora);
    }
    let vocab = config.vocab_size;
    let ids = Tensor::<2>::random(
        [batch, seq],
        Distribution::Uniform(0.0, vocab as f64),
        &device,
    )
    .int();
    let targets: Tensor<1, Int> = ids.clone().reshape([batch * seq]);
    // Everything before the step (weights, adapters, inputs) is excluded.
    let before = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let logits = lora.model.forward(ids).reshape([batch * seq, vocab]);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    let grads = GradientsParams::from_grads(loss.backward(), &lora.model);
    let peak = ALLOC.peak_usage();
    drop(grads);
    let _ = lora.model.num_params();
    peak.saturating_sub(before)
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str, default: &str| {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .unwrap_or_else(|| default.to_string())
    };
    let num = |flag: &str, default: &str| get(flag, default).parse::<usize>().unwrap_or(0);
    let (batch, seq, r) = (num("--batch", "4"), num("--seq", "512"), num("--r", "16"));
    let config = match get("--model", "125m").as_str() {
        "125m" => OptConfig::opt_125m(),
        _ => tiny(),
    };
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let lora = step_peak_bytes(&config, Method::Lora, batch, seq, r);
    let fa = step_peak_bytes(&config, Method::LoraFa, batch, seq, r);
    println!(
        "OPT d={} layers={} batch={batch} seq={seq} r={r}, all-linear targets, backend {:?}",
        config.hidden_size,
        config.num_hidden_layers,
        Device::default()
    );
    println!(
        "peak training-step memory above the model: LoRA {:.1} MiB, LoRA-FA {:.1} MiB ({:.1}% of LoRA)",
        mib(lora),
        mib(fa),
        100.0 * fa as f64 / lora as f64
    );
}

/// A small OPT for quick checks.
pub fn tiny() -> OptConfig {
    let mut c = OptConfig::opt_125m();
    (c.vocab_size, c.hidden_size, c.ffn_dim, c.num_hidden_layers) = (512, 128, 512, 2);
    c.num_attention_heads = 4;
    c.word_embed_proj_dim = Some(128);
    c
}
