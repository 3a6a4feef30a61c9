//! OPT (Zhang et al. 2022) as transformers' `OPTForCausalLM` computes it: learned positions with
//! an offset of 2, pre- or post-layer-norm blocks, optional `project_in`/`project_out` when
//! `word_embed_proj_dim` differs from `hidden_size`, a ReLU MLP and a head tied to the token
//! embedding.
//!
//! Module paths equal transformers' parameter names (`model.decoder.layers.0.self_attn.q_proj`),
//! so PEFT adapters made for OPT load with no key map.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, activation::relu};
use peft_core::nn::{Embedding, Linear};
use serde::Deserialize;

use crate::attention::{causal_attention, merge_heads, split_heads};
use crate::causal_lm::{CausalLm, OutputWeight, tied_logits};
use crate::checkpoint::Checkpoint;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::norm::LayerNorm;

/// The position offset of OPT's learned position embedding (padding positions).
pub const POSITION_OFFSET: usize = 2;

fn yes() -> bool {
    true
}

fn relu_name() -> String {
    "relu".into()
}

/// The fields of an OPT `config.json` this implementation reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub ffn_dim: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Width of the token embedding (`hidden_size` when absent).
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    /// Pre-layer-norm blocks (`true`, most sizes) or post-layer-norm (350m).
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    /// Biases on the linear layers.
    #[serde(default = "yes")]
    pub enable_bias: bool,
    /// Drops the decoder's final layer norm (old checkpoints).
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Must be `relu`.
    #[serde(default = "relu_name")]
    pub activation_function: String,
    /// Must be `true`.
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    /// The head reuses the token embedding.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// End-of-sequence token.
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    /// Standard deviation of the random weights [`init`](Self::init) draws (transformers'
    /// `init_std`).
    #[serde(default = "crate::init::default_std")]
    pub init_std: f64,
}

impl OptConfig {
    fn preset(hidden: usize, layers: usize, heads: usize, proj: usize, pre_ln: bool) -> Self {
        Self {
            vocab_size: 50272,
            hidden_size: hidden,
            ffn_dim: 4 * hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            max_position_embeddings: 2048,
            word_embed_proj_dim: Some(proj),
            do_layer_norm_before: pre_ln,
            enable_bias: true,
            remove_final_layer_norm: false,
            activation_function: relu_name(),
            layer_norm_elementwise_affine: true,
            tie_word_embeddings: true,
            eos_token_id: Some(2),
            init_std: crate::init::default_std(),
        }
    }

    /// `facebook/opt-125m`'s architecture.
    pub fn opt_125m() -> Self {
        Self::preset(768, 12, 12, 768, true)
    }

    /// `facebook/opt-350m`'s architecture (post-layer-norm, 512-wide embedding).
    pub fn opt_350m() -> Self {
        Self::preset(1024, 24, 16, 512, false)
    }

    /// `facebook/opt-1.3b`'s architecture.
    pub fn opt_1_3b() -> Self {
        Self::preset(2048, 24, 32, 2048, true)
    }

    fn unsupported(field: &'static str, value: String, reason: &'static str) -> ModelError {
        ModelError::UnsupportedOption {
            model_type: "opt",
            field,
            value,
            reason,
        }
    }

    /// A lower bound on the number of values this config's model holds (token and position
    /// embeddings, head unless tied, attention and MLP weights); `None` when it overflows.
    pub fn min_values(&self) -> Option<u128> {
        let [v, h, ffn, layers, positions, word] = [
            self.vocab_size,
            self.hidden_size,
            self.ffn_dim,
            self.num_hidden_layers,
            self.max_position_embeddings,
            self.word_embed_proj_dim.unwrap_or(self.hidden_size),
        ]
        .map(|x| x as u128);
        let layer = h
            .checked_mul(h)?
            .checked_mul(4)?
            .checked_add(h.checked_mul(ffn)?.checked_mul(2)?)?;
        crate::checkpoint::model_size(
            layer,
            layers,
            v.checked_mul(word)?,
            self.tie_word_embeddings,
            positions.checked_add(2)?.checked_mul(h)?,
        )
    }

    /// Rejects options this implementation does not compute.
    pub fn validate(&self) -> Result<()> {
        if self.activation_function != "relu" {
            return Err(Self::unsupported(
                "activation_function",
                format!("{:?}", self.activation_function),
                "only relu is implemented",
            ));
        }
        if !self.layer_norm_elementwise_affine {
            return Err(Self::unsupported(
                "layer_norm_elementwise_affine",
                "false".into(),
                "layer norms without weights are not implemented",
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Self::unsupported(
                "num_attention_heads",
                self.num_attention_heads.to_string(),
                "must divide hidden_size",
            ));
        }
        Ok(())
    }

    fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// A randomly initialised model with this architecture, drawn as transformers does
    /// ([`crate::init`]: `normal(0, init_std)` weights, zero biases). The parameters are lazy:
    /// loading weights into the model afterwards never draws them.
    pub fn init(&self, device: &Device) -> Result<OptForCausalLm> {
        self.validate()?;
        let d = self.hidden_size;
        let e = self.embed_dim();
        let std = self.init_std;
        let linear = |i: usize, o: usize, bias: bool| crate::init::linear(i, o, bias, std, device);
        let embedding = |n: usize, d: usize| crate::init::embedding(n, d, std, device);
        let ln = || LayerNorm::new(d, 1e-5, device);
        let layers = (0..self.num_hidden_layers)
            .map(|_| OptDecoderLayer {
                self_attn: OptAttention {
                    q_proj: linear(d, d, self.enable_bias),
                    k_proj: linear(d, d, self.enable_bias),
                    v_proj: linear(d, d, self.enable_bias),
                    out_proj: linear(d, d, self.enable_bias),
                    heads: self.num_attention_heads,
                },
                self_attn_layer_norm: ln(),
                fc1: linear(d, self.ffn_dim, self.enable_bias),
                fc2: linear(self.ffn_dim, d, self.enable_bias),
                final_layer_norm: ln(),
                pre_layer_norm: self.do_layer_norm_before,
            })
            .collect();
        let projected = e != d;
        let decoder = OptDecoder {
            embed_tokens: embedding(self.vocab_size, e),
            embed_positions: embedding(self.max_position_embeddings + POSITION_OFFSET, d),
            project_in: projected.then(|| linear(e, d, false)),
            project_out: projected.then(|| linear(d, e, false)),
            final_layer_norm: (self.do_layer_norm_before && !self.remove_final_layer_norm).then(ln),
            layers,
        };
        Ok(OptForCausalLm {
            model: OptModel { decoder },
            lm_head: (!self.tie_word_embeddings).then(|| linear(e, self.vocab_size, false)),
            max_positions: self.max_position_embeddings,
            eos_token_id: self.eos_token_id,
        })
    }
}

/// Multi-head self-attention with biases.
#[derive(Module, Debug)]
pub struct OptAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl OptAttention {
    /// `[batch, seq, d]` → `[batch, seq, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, None)
    }

    /// [`forward`](Self::forward); with a cache, for the positions after those it holds for
    /// block `.1`, whose keys and values it appends.
    pub(crate) fn forward_with(
        &self,
        x: Tensor<3>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let d = x.dims()[2];
        let head_dim = d / self.heads;
        let q = split_heads(self.q_proj.forward(x.clone()), self.heads, head_dim);
        let k = split_heads(self.k_proj.forward(x.clone()), self.heads, head_dim);
        let v = split_heads(self.v_proj.forward(x), self.heads, head_dim);
        let (k, v) = match cache {
            Some((cache, block)) => cache.append(block, k, v),
            None => (k, v),
        };
        let out = causal_attention(q, k, v, (head_dim as f64).powf(-0.5));
        self.out_proj.forward(merge_heads(out))
    }
}

/// One decoder block.
#[derive(Module, Debug)]
pub struct OptDecoderLayer {
    /// Attention.
    pub self_attn: OptAttention,
    /// Layer norm of the attention sub-block.
    pub self_attn_layer_norm: LayerNorm,
    /// MLP up projection.
    pub fc1: Linear,
    /// MLP down projection.
    pub fc2: Linear,
    /// Layer norm of the MLP sub-block.
    pub final_layer_norm: LayerNorm,
    /// Normalise before (`true`) or after each sub-block.
    pub pre_layer_norm: bool,
}

impl OptDecoderLayer {
    /// `[batch, seq, d]` → `[batch, seq, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, None)
    }

    /// [`forward`](Self::forward); with a cache, for the positions after those it holds for
    /// block `.1`, whose keys and values it appends.
    pub(crate) fn forward_with(
        &self,
        x: Tensor<3>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let pre = self.pre_layer_norm;
        let h = if pre {
            self.self_attn_layer_norm.forward(x.clone())
        } else {
            x.clone()
        };
        let mut x = x + self.self_attn.forward_with(h, cache);
        if !pre {
            x = self.self_attn_layer_norm.forward(x);
        }
        let h = if pre {
            self.final_layer_norm.forward(x.clone())
        } else {
            x.clone()
        };
        let mut x = x + self.fc2.forward(relu(self.fc1.forward(h)));
        if !pre {
            x = self.final_layer_norm.forward(x);
        }
        x
    }
}

/// Embeddings, blocks and the final projections.
#[derive(Module, Debug)]
pub struct OptDecoder {
    /// Token embedding `[vocab, word_embed_proj_dim]`.
    pub embed_tokens: Embedding,
    /// Learned positions `[max_positions + 2, hidden]`.
    pub embed_positions: Embedding,
    /// `word_embed_proj_dim` → `hidden_size`, when they differ.
    pub project_in: Option<Linear>,
    /// `hidden_size` → `word_embed_proj_dim`, when they differ.
    pub project_out: Option<Linear>,
    /// Final layer norm (pre-layer-norm models).
    pub final_layer_norm: Option<LayerNorm>,
    /// The blocks.
    pub layers: Vec<OptDecoderLayer>,
}

/// transformers' `OPTModel` (its only child is `decoder`).
#[derive(Module, Debug)]
pub struct OptModel {
    /// The decoder.
    pub decoder: OptDecoder,
}

/// `OPTForCausalLM`.
#[derive(Module, Debug)]
pub struct OptForCausalLm {
    /// The decoder (`model.decoder.*`).
    pub model: OptModel,
    /// Untied head; `None` when tied to `model.decoder.embed_tokens`.
    pub lm_head: Option<Linear>,
    /// Longest sequence.
    pub max_positions: usize,
    /// End-of-sequence token.
    #[module(skip)]
    pub eos_token_id: Option<i64>,
}

impl OptForCausalLm {
    /// Loads a transformers OPT checkpoint (`model_type: "opt"`).
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &Device) -> Result<Self> {
        let config: OptConfig = checkpoint.parse_config()?;
        config.validate()?;
        let mut sd = checkpoint.state_dict()?;
        checkpoint.check_claimed_size(config.min_values(), &sd)?;
        let model = config.init(device)?;
        // Checkpoints saved from `OPTModel` (e.g. facebook/opt-125m) lack the `model.` prefix.
        if !sd.keys().any(|k| k.starts_with("model.")) {
            sd = sd
                .into_iter()
                .map(|(k, v)| (format!("model.{k}"), v))
                .collect();
        }
        checkpoint.load_into(model, sd, config.tie_word_embeddings)
    }

    /// The first block's input: token embeddings (through `project_in` when present) plus
    /// learned positions.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]`
    /// - output: `[batch, seq, hidden_size]`
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed_from(ids, 0)
    }

    /// [`embed`](Self::embed) of positions `past..past + seq` (those after `past` cached ones).
    fn embed_from(&self, ids: Tensor<2, Int>, past: usize) -> Tensor<3> {
        let d = &self.model.decoder;
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let mut x = d.embed_tokens.forward(ids);
        if let Some(p) = &d.project_in {
            x = p.forward(x);
        }
        let first = past + POSITION_OFFSET;
        let positions = Tensor::<1, Int>::arange(first as i64..(first + seq) as i64, &device)
            .unsqueeze::<2>()
            .expand([batch, seq]);
        x + d.embed_positions.forward(positions)
    }

    /// Logits from the first block's input (what [`OptForCausalLm::embed`] returns), like
    /// transformers' `inputs_embeds`: the blocks, the final norm, `project_out` and the head.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden_size]`
    /// - output: `[batch, seq, vocab_size]`
    pub fn forward_embeds(&self, mut x: Tensor<3>) -> Tensor<3> {
        for layer in &self.model.decoder.layers {
            x = layer.forward(x);
        }
        self.final_stage(x)
    }

    /// The final norm, `project_out` and the head.
    fn final_stage(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.final_features(x);
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => tied_logits(x, &self.model.decoder.embed_tokens),
        }
    }

    /// The final norm and `project_out`: what the head's product takes.
    fn final_features(&self, mut x: Tensor<3>) -> Tensor<3> {
        let d = &self.model.decoder;
        if let Some(ln) = &d.final_layer_norm {
            x = ln.forward(x);
        }
        if let Some(p) = &d.project_out {
            x = p.forward(x);
        }
        x
    }
}

impl CausalLm for OptForCausalLm {
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_embeds(OptForCausalLm::embed(self, ids))
    }

    fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<2>> {
        let [batch, seq] = ids.dims();
        let past = cache.check_next(batch, seq, Some(self.max_positions))?;
        let mut x = self.embed_from(ids, past);
        for (i, layer) in self.model.decoder.layers.iter().enumerate() {
            x = layer.forward_with(x, Some((cache, i)));
        }
        let logits = self.final_stage(x.narrow(1, seq - 1, 1));
        let vocab = logits.dims()[2];
        Ok(logits.reshape([batch, vocab]))
    }

    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        OptForCausalLm::embed(self, ids)
    }

    fn num_blocks(&self) -> usize {
        self.model.decoder.layers.len()
    }

    fn block(&self, i: usize, x: Tensor<3>) -> Tensor<3> {
        self.model.decoder.layers[i].forward(x)
    }

    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        self.final_stage(x)
    }

    fn output_weight(&self, tokens: usize) -> Option<OutputWeight> {
        match &self.lm_head {
            Some(head) => head.plain_weight(tokens).map(OutputWeight::transposed),
            None => Some(OutputWeight::tied(&self.model.decoder.embed_tokens)),
        }
    }

    fn head_features(&self, x: Tensor<3>) -> Tensor<3> {
        self.final_features(x)
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.max_positions)
    }

    fn vocab_size(&self) -> usize {
        self.model
            .decoder
            .embed_tokens
            .weight
            .lazy_shape()
            .dims::<2>()[0]
    }

    fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id.into_iter().collect()
    }
}
