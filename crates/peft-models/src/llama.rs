//! Llama as transformers' `LlamaForCausalLM` computes it: RMSNorm, rotary position embeddings
//! (`default` or `llama3` frequencies), grouped-query attention, a SwiGLU MLP, a tied or untied
//! head.
//!
//! Module paths equal transformers' parameter names (`model.layers.0.self_attn.q_proj`), so PEFT
//! adapters made for Llama load with no key map.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData, activation::silu};
use peft_core::nn::{Embedding, Linear};
use serde::Deserialize;
use serde_json::Value;

use crate::attention::{causal_attention, merge_heads, split_heads};
use crate::causal_lm::{CausalLm, OutputWeight, tied_logits};
use crate::checkpoint::Checkpoint;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::norm::RmsNorm;

fn eps() -> f64 {
    1e-6
}

fn silu_name() -> String {
    "silu".into()
}

fn positions() -> usize {
    2048
}

/// The fields of a Llama `config.json` this implementation reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (`num_attention_heads` when absent).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width (`hidden_size / num_attention_heads` when absent).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    /// Longest sequence.
    #[serde(default = "positions")]
    pub max_position_embeddings: usize,
    /// Must be `silu`.
    #[serde(default = "silu_name")]
    pub hidden_act: String,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The head reuses the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// transformers ≥ 5: `{"rope_type", "rope_theta", ...}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// transformers < 5: RoPE base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers < 5: RoPE scaling (`{"rope_type": "llama3", ...}`).
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// End-of-sequence token(s): a number or a list.
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    /// Standard deviation of the random weights [`init`](Self::init) draws.
    #[serde(default = "crate::init::default_std")]
    pub initializer_range: f64,
}

/// How rotary frequencies are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Base of the frequencies.
    pub theta: f64,
    /// `llama3` scaling: `(factor, low_freq_factor, high_freq_factor, original_max_positions)`.
    pub llama3: Option<(f64, f64, f64, f64)>,
}

impl Rope {
    /// Inverse frequencies for a head width, as transformers computes them.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        let Some((factor, low, high, old)) = self.llama3 else {
            return base;
        };
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect()
    }

    /// `cos` and `sin` tables `[seq, head_dim]` for positions `start..start + seq`.
    pub fn tables(
        &self,
        start: usize,
        seq: usize,
        head_dim: usize,
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let inv = self.inv_freq(head_dim);
        let half = head_dim / 2;
        let mut cos = vec![0f32; seq * head_dim];
        let mut sin = vec![0f32; seq * head_dim];
        for p in 0..seq {
            for (i, f) in inv.iter().enumerate() {
                // transformers computes the angles in f32.
                let angle = ((start + p) as f32) * (*f as f32);
                for j in [i, i + half] {
                    cos[p * head_dim + j] = angle.cos();
                    sin[p * head_dim + j] = angle.sin();
                }
            }
        }
        let t = |v| Tensor::from_data(TensorData::new(v, [seq, head_dim]), device);
        (t(cos), t(sin))
    }
}

impl LlamaConfig {
    fn unsupported(field: &'static str, value: String, reason: &'static str) -> ModelError {
        ModelError::UnsupportedOption {
            model_type: "llama",
            field,
            value,
            reason,
        }
    }

    /// The RoPE settings, from either config format.
    pub fn rope(&self) -> Result<Rope> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let num = |v: Option<&Value>, key: &str| v.and_then(|p| p.get(key)).and_then(Value::as_f64);
        let theta = num(params, "rope_theta")
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let kind = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let llama3 = match kind {
            "default" => None,
            "llama3" => {
                let get = |key: &'static str| {
                    num(params, key).ok_or_else(|| {
                        Self::unsupported(
                            "rope_parameters",
                            key.into(),
                            "llama3 RoPE needs this field",
                        )
                    })
                };
                Some((
                    get("factor")?,
                    get("low_freq_factor")?,
                    get("high_freq_factor")?,
                    get("original_max_position_embeddings")?,
                ))
            }
            other => {
                return Err(Self::unsupported(
                    "rope_type",
                    format!("{other:?}"),
                    "only default and llama3 RoPE are implemented",
                ));
            }
        };
        Ok(Rope { theta, llama3 })
    }

    /// Rejects options this implementation does not compute.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_act != "silu" {
            return Err(Self::unsupported(
                "hidden_act",
                format!("{:?}", self.hidden_act),
                "only silu is implemented",
            ));
        }
        let heads = self.num_attention_heads;
        let kv = self.kv_heads();
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(Self::unsupported(
                "num_key_value_heads",
                kv.to_string(),
                "must divide num_attention_heads",
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(Self::unsupported(
                "num_attention_heads",
                heads.to_string(),
                "must divide hidden_size when head_dim is absent",
            ));
        }
        self.rope().map(|_| ())
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_width(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn eos(&self) -> Vec<i64> {
        match &self.eos_token_id {
            Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            _ => Vec::new(),
        }
    }

    /// A lower bound on the number of values this config's model holds (embedding, head unless
    /// tied, attention and MLP weights, norms); `None` when it overflows.
    pub fn min_values(&self) -> Option<u128> {
        let [v, h, inter, layers, heads, kv, hd] = [
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.kv_heads(),
            self.head_width(),
        ]
        .map(|x| x as u128);
        let attention = h
            .checked_mul(heads)?
            .checked_mul(hd)?
            .checked_mul(2)?
            .checked_add(h.checked_mul(kv)?.checked_mul(hd)?.checked_mul(2)?)?;
        let layer = attention
            .checked_add(h.checked_mul(inter)?.checked_mul(3)?)?
            .checked_add(h.checked_mul(2)?)?;
        crate::checkpoint::model_size(
            layer,
            layers,
            v.checked_mul(h)?,
            self.tie_word_embeddings,
            h,
        )
    }

    /// A randomly initialised model with this architecture, drawn as transformers does
    /// ([`crate::init`]: `normal(0, initializer_range)` weights, zero biases). The parameters
    /// are lazy: loading weights into the model afterwards never draws them.
    pub fn init(&self, device: &Device) -> Result<LlamaForCausalLm> {
        self.validate()?;
        let d = self.hidden_size;
        let hd = self.head_width();
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        let std = self.initializer_range;
        let linear = |i: usize, o: usize, bias: bool| crate::init::linear(i, o, bias, std, device);
        let norm = || RmsNorm::new(d, self.rms_norm_eps, device);
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    q_proj: linear(d, h * hd, self.attention_bias),
                    k_proj: linear(d, kv * hd, self.attention_bias),
                    v_proj: linear(d, kv * hd, self.attention_bias),
                    o_proj: linear(h * hd, d, self.attention_bias),
                    heads: h,
                    kv_heads: kv,
                    head_dim: hd,
                },
                mlp: LlamaMlp {
                    gate_proj: linear(d, self.intermediate_size, self.mlp_bias),
                    up_proj: linear(d, self.intermediate_size, self.mlp_bias),
                    down_proj: linear(self.intermediate_size, d, self.mlp_bias),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Ok(LlamaForCausalLm {
            model: LlamaModel {
                embed_tokens: crate::init::embedding(self.vocab_size, d, std, device),
                layers,
                norm: norm(),
            },
            lm_head: (!self.tie_word_embeddings).then(|| linear(d, self.vocab_size, false)),
            rope: self.rope()?,
            eos_token_ids: self.eos(),
            max_positions: self.max_position_embeddings,
        })
    }
}

/// Grouped-query attention with rotary positions.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

fn rotate(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

impl LlamaAttention {
    /// `[batch, seq, d]` → `[batch, seq, d]`; `cos`/`sin` are `[1, 1, seq, head_dim]`.
    pub fn forward(&self, x: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        self.forward_with(x, cos, sin, None)
    }

    /// [`forward`](Self::forward); with a cache, for the positions after those it holds for
    /// block `.1`, whose keys and values it appends.
    pub(crate) fn forward_with(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let q = split_heads(self.q_proj.forward(x.clone()), self.heads, self.head_dim);
        let k = split_heads(self.k_proj.forward(x.clone()), self.kv_heads, self.head_dim);
        let v = split_heads(self.v_proj.forward(x), self.kv_heads, self.head_dim);
        let (q, k) = (rotate(q, cos, sin), rotate(k, cos, sin));
        // Cached keys are stored rotated, as transformers' cache holds them.
        let (k, v) = match cache {
            Some((cache, block)) => cache.append(block, k, v),
            None => (k, v),
        };
        let out = causal_attention(q, k, v, (self.head_dim as f64).powf(-0.5));
        self.o_proj.forward(merge_heads(out))
    }
}

/// SwiGLU: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

impl LlamaMlp {
    /// `[batch, seq, d]` → `[batch, seq, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    /// Attention.
    pub self_attn: LlamaAttention,
    /// MLP.
    pub mlp: LlamaMlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

impl LlamaDecoderLayer {
    /// `[batch, seq, d]` → `[batch, seq, d]`.
    pub fn forward(&self, x: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        self.forward_with(x, cos, sin, None)
    }

    /// [`forward`](Self::forward); with a cache, for the positions after those it holds for
    /// block `.1`, whose keys and values it appends.
    pub(crate) fn forward_with(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = self.input_layernorm.forward(x.clone());
        let x = x + self.self_attn.forward_with(h, cos, sin, cache);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// transformers' `LlamaModel`.
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// The blocks.
    pub layers: Vec<LlamaDecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
}

/// `LlamaForCausalLM`.
#[derive(Module, Debug)]
pub struct LlamaForCausalLm {
    /// The body (`model.*`).
    pub model: LlamaModel,
    /// Untied head; `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Linear>,
    /// RoPE settings.
    #[module(skip)]
    pub rope: Rope,
    /// End-of-sequence tokens.
    #[module(skip)]
    pub eos_token_ids: Vec<i64>,
    /// The context the model was trained for (`max_position_embeddings`). RoPE itself has no
    /// limit, but text beyond it is outside what the model learned.
    #[module(skip)]
    pub max_positions: usize,
}

impl LlamaForCausalLm {
    /// Loads a transformers Llama checkpoint (`model_type: "llama"`).
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &Device) -> Result<Self> {
        let config: LlamaConfig = checkpoint.parse_config()?;
        config.validate()?;
        let mut sd = checkpoint.state_dict()?;
        checkpoint.check_claimed_size(config.min_values(), &sd)?;
        let model = config.init(device)?;
        // Buffers some older checkpoints carry.
        sd.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
        checkpoint.load_into(model, sd, config.tie_word_embeddings)
    }
}

impl LlamaForCausalLm {
    /// RoPE's `cos`/`sin` tables for `seq` positions, `[1, 1, seq, head_dim]`.
    fn rope_tables(&self, start: usize, seq: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
        let head_dim = self
            .model
            .layers
            .first()
            .map(|l| l.self_attn.head_dim)
            .unwrap_or(2);
        let (cos, sin) = self.rope.tables(start, seq, head_dim, device);
        (cos.unsqueeze::<4>(), sin.unsqueeze::<4>())
    }
}

impl CausalLm for LlamaForCausalLm {
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let (cos, sin) = self.rope_tables(0, ids.dims()[1], &ids.device());
        let mut x = self.model.embed_tokens.forward(ids);
        for layer in &self.model.layers {
            x = layer.forward(x, &cos, &sin);
        }
        self.head(x)
    }

    fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<2>> {
        let [batch, seq] = ids.dims();
        let past = cache.check_next(batch, seq, Some(self.max_positions))?;
        let (cos, sin) = self.rope_tables(past, seq, &ids.device());
        let mut x = self.model.embed_tokens.forward(ids);
        for (i, layer) in self.model.layers.iter().enumerate() {
            x = layer.forward_with(x, &cos, &sin, Some((cache, i)));
        }
        let logits = self.head(x.narrow(1, seq - 1, 1));
        let vocab = logits.dims()[2];
        Ok(logits.reshape([batch, vocab]))
    }

    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.model.embed_tokens.forward(ids)
    }

    fn num_blocks(&self) -> usize {
        self.model.layers.len()
    }

    fn block(&self, i: usize, x: Tensor<3>) -> Tensor<3> {
        let (cos, sin) = self.rope_tables(0, x.dims()[1], &x.device());
        self.model.layers[i].forward(x, &cos, &sin)
    }

    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.model.norm.forward(x);
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => tied_logits(x, &self.model.embed_tokens),
        }
    }

    fn output_weight(&self, tokens: usize) -> Option<OutputWeight> {
        match &self.lm_head {
            Some(head) => head.plain_weight(tokens).map(OutputWeight::transposed),
            None => Some(OutputWeight::tied(&self.model.embed_tokens)),
        }
    }

    fn head_features(&self, x: Tensor<3>) -> Tensor<3> {
        self.model.norm.forward(x)
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.max_positions)
    }

    fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.lazy_shape().dims::<2>()[0]
    }

    fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_ids.clone()
    }
}
