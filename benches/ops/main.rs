//! `op-bench`: the products and element-wise ops of an OPT-125m training step (batch 4 × 256)
//! and of a decoding step (one token), timed one at a time on the default device, to find the
//! ops that run far below PyTorch's rate; the attention and a Llama RMS norm forward and backward
//! (op by op and as one node); one OPT-1.3b layer forward and backward, frozen and with
//! MiSS/Bone bat composed as in a training step; MiSS/Bone bat's few-token layer, factored and
//! composed; the LoRA branch's products, at 1024 tokens and at one; an unmerged LoRA Linear
//! without gradients, factored and composed, from 64 to 4096 tokens; OPT-1.3b's fc1 at one
//! sequence in 2-D, forward and input gradient, as the guide's products table times them (no
//! PyTorch twin: the guide times PyTorch's); and the whole OPT-125m,
//! OPT-350m and OPT-1.3b forward of 1 and 256 tokens (also with LoRA q,v, unmerged and merged), a
//! decoding step after 256 cached tokens and a greedy generation of 32 tokens after 256
//! (pytorch_ops.py runs transformers' OPT, and PEFT's LoRA, on the same shapes; OPT-1.3b's 5.3 GB
//! of random weights take about half a minute to draw).
//!
//! ```text
//! BURN_DEVICE=flex target/release/op-bench [FILTER]        # ours
//! python3 benches/ops/pytorch_ops.py [FILTER]               # the same ops in PyTorch
//! target/release/op-bench --opt-configs                     # the OPT cases' transformers configs
//! ```
//!
//! `pytorch_ops.py` builds transformers' OPT for the forward cases from `--opt-configs` (the
//! presets of `peft_models::OptConfig`, through the guide's `transformers_opt_config`), so build
//! op-bench first.
//!
//! Each op runs 2 times untimed, then 9 timed (`OP_BENCH_CALLS=N`: N, for profiling one case;
//! `OP_BENCH_IN_POOL=1`: each call on a thread of rayon's pool instead of the main thread);
//! it prints the median, min–max and the FLOP rate of the median. `FILTER` keeps the ops whose name contains it (and skips building the 154 MB
//! embedding unless a `head` op is kept). The two programs run one after the other, not
//! interleaved: use them to find large gaps, and the guide (`cargo xtask bench`) for ratios.

use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;

/// Whether the command line's `FILTER` (if any) keeps the op `name`.
fn kept(name: &str) -> bool {
    std::env::args().nth(1).is_none_or(|f| name.contains(&f))
}

/// Times `f`, which returns one element of its result (so the op has run), unless `FILTER`
/// excludes `name`.
fn time(name: &str, flop: f64, mut f: impl FnMut() -> f32 + Send) {
    if !kept(name) {
        return;
    }
    // `OP_BENCH_IN_POOL=1`: each call runs on a thread of rayon's pool (as inside a parallel
    // region), not on the main thread, which otherwise hands every parallel piece to the pool.
    let in_pool = std::env::var("OP_BENCH_IN_POOL").is_ok_and(|v| v == "1");
    let mut f = move || {
        if in_pool { rayon::scope(|_| f()) } else { f() }
    };
    let mut sink = 0.0;
    for _ in 0..2 {
        sink += f();
    }
    // `OP_BENCH_CALLS` more timed calls (default 9) make a profile of one case mostly that case.
    let calls = std::env::var("OP_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(9usize)
        .max(1);
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        sink += f();
        samples.push(start.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    let rate = if flop > 0.0 {
        format!("{:6.1} GFLOP/s", flop / samples[calls / 2] / 1e9)
    } else {
        String::new()
    };
    println!(
        "{name:42} {:8.2} ms ({:.2}–{:.2}) {rate}{}",
        samples[calls / 2] * 1e3,
        samples[0] * 1e3,
        samples[calls - 1] * 1e3,
        if sink.is_nan() { " (NaN)" } else { "" }
    );
}

/// One of the OPT forward cases' models: label, configuration preset and parameter count (for
/// the FLOP rate).
type OptModel = (&'static str, fn() -> peft_models::OptConfig, f64);

/// The OPT forward cases' models; `op-bench --opt-configs` prints them for `pytorch_ops.py`.
const OPT_MODELS: [OptModel; 3] = [
    ("OPT-125m", peft_models::OptConfig::opt_125m, 124e6),
    ("OPT-350m", peft_models::OptConfig::opt_350m, 331e6),
    ("OPT-1.3b", peft_models::OptConfig::opt_1_3b, 1316e6),
];

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--opt-configs") {
        let configs: serde_json::Map<String, serde_json::Value> = OPT_MODELS
            .iter()
            .map(|(label, config, params)| {
                let config = peft_benches::transformers_opt_config(&config());
                (
                    label.to_string(),
                    serde_json::json!({"config": config, "params": params}),
                )
            })
            .collect();
        println!("{}", serde_json::Value::Object(configs));
        return;
    }
    // As `peft` does.
    peft_train::memory::retain_freed_memory();
    let device = Device::default();
    let random = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Default, &device);
    // One element, so that the op has run (flex is eager) without copying the result.
    let first = |t: Tensor<4>| t.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>();
    let keeps_head = std::env::args().nth(1).is_none_or(|f| f.contains("head"));
    let vocab = if keeps_head { 50272 } else { 8 };

    let (tokens, d, ffn) = (1024usize, 768usize, 3072usize);
    let x = random([1, 1, tokens, d]);
    let x_batched = x.clone().reshape([1, 4, 256, d]);
    let w = random([1, 1, d, d]);
    let flop = 2.0 * (tokens * d * d) as f64;
    time("x·W [4,256,768]·[768,768]", flop, || {
        first(x_batched.clone().matmul(w.clone()))
    });
    time("x·W [1024,768]·[768,768]", flop, || {
        first(x.clone().matmul(w.clone()))
    });
    time("g·Wᵀ [1024,768]·[768,768]ᵀ", flop, || {
        first(x.clone().matmul(w.clone().swap_dims(2, 3)))
    });
    let w_t = Tensor::<4>::from_data(w.clone().swap_dims(2, 3).into_data(), &device);
    time("g·Wᵀ, Wᵀ stored contiguous", flop, || {
        first(x.clone().matmul(w_t.clone()))
    });
    time("xᵀ·g [768,1024]·[1024,768]", flop, || {
        first(x.clone().swap_dims(2, 3).matmul(x.clone()))
    });
    let up = random([1, 1, d, ffn]);
    let down = random([1, 1, ffn, d]);
    let h = random([1, 1, tokens, ffn]);
    time("fc1 [1024,768]·[768,3072]", 4.0 * flop, || {
        first(x.clone().matmul(up.clone()))
    });
    time("fc2 [1024,3072]·[3072,768]", 4.0 * flop, || {
        first(h.clone().matmul(down.clone()))
    });
    time("fc1 g·Wᵀ [1024,3072]·[768,3072]ᵀ", 4.0 * flop, || {
        first(h.clone().matmul(up.clone().swap_dims(2, 3)))
    });
    time("fc2 g·Wᵀ [1024,768]·[3072,768]ᵀ", 4.0 * flop, || {
        first(x.clone().matmul(down.clone().swap_dims(2, 3)))
    });
    // OPT-1.3b's fc1 at one sequence, 2-D as the guide's products table times them: the
    // forward and the input gradient through the weight's transposed view.
    {
        let random2 =
            |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Default, &device);
        let first2 = |t: Tensor<2>| t.slice([0..1, 0..1]).into_scalar::<f32>();
        let (t, d, f) = (256usize, 2048usize, 8192usize);
        let flop = 2.0 * (t * d * f) as f64;
        if kept("1.3b fc1") {
            let (x, w, g) = (random2([t, d]), random2([d, f]), random2([t, f]));
            time("1.3b fc1 x·W [256,2048]·[2048,8192]", flop, || {
                first2(x.clone().matmul(w.clone()))
            });
            time("1.3b fc1 g·Wᵀ [256,8192]·[2048,8192]ᵀ", flop, || {
                first2(g.clone().matmul(w.clone().transpose()))
            });
        }
    }

    let token = random([1, 1, 1, d]);
    time(
        "1 token x·W [1,768]·[768,768]",
        flop / tokens as f64,
        || first(token.clone().matmul(w.clone())),
    );
    time(
        "1 token fc1 [1,768]·[768,3072]",
        4.0 * flop / tokens as f64,
        || first(token.clone().matmul(up.clone())),
    );

    // A decoding step's products: one token through 12 layers' q, k, v, o, fc1 and fc2, each
    // with its own weight (340 MB in all, as OPT-125m's), so that weights stream from memory
    // as they do in a model instead of staying in cache from the previous call.
    let decoder = "1 token, 12 layers' products";
    if kept(decoder) {
        let layers: Vec<[Tensor<4>; 6]> = (0..12)
            .map(|_| {
                let w = |rows, cols| {
                    let bound = 1.0 / (rows as f64).sqrt();
                    Tensor::<4>::random(
                        [1, 1, rows, cols],
                        Distribution::Uniform(-bound, bound),
                        &device,
                    )
                };
                [w(d, d), w(d, d), w(d, d), w(d, d), w(d, ffn), w(ffn, d)]
            })
            .collect();
        time(decoder, 12.0 * 12.0 * flop / tokens as f64, || {
            let mut y = token.clone();
            for [q, k, v, o, up, down] in &layers {
                y = y.matmul(q.clone()).matmul(k.clone()).matmul(v.clone());
                y = y.matmul(o.clone()).matmul(up.clone()).matmul(down.clone());
            }
            first(y)
        });
    }

    // The whole OPT forward of a decoding step and of a prompt (no gradients): products plus
    // every small op around them. pytorch_ops.py runs transformers' OPT on the same shapes (the
    // guide's merged single-token and prompt rows).
    for ((label, config, params), seq) in OPT_MODELS.iter().flat_map(|m| [(m, 1usize), (m, 256)]) {
        let name = format!("{label} forward, {seq} tokens");
        if !kept(&name) {
            continue;
        }
        use peft_models::CausalLm;
        let model = config().init(&device).expect("valid OPT config");
        let ids = Tensor::<2>::random([1, seq], Distribution::Uniform(0.0, 50000.0), &device).int();
        let flop = 2.0 * params * seq as f64;
        time(&name, flop, || {
            let logits = model.forward(ids.clone());
            logits.slice([0..1, 0..1, 0..1]).into_scalar::<f32>()
        });
    }

    // The same forward with LoRA r16 on q and v: unmerged (the factored branch beside each base
    // product) and merged into the weights (the guide's "1 token unmerged → merged"). B is
    // PEFT's zero init; zeros cost the products what trained values do.
    for ((label, config, params), seq) in OPT_MODELS.iter().flat_map(|m| [(m, 1usize), (m, 256)]) {
        let names = ["unmerged", "merged"]
            .map(|how| format!("{label} forward, {seq} tokens, LoRA q,v {how}"));
        if !names.iter().any(|n| kept(n)) {
            continue;
        }
        use peft_models::CausalLm;
        let model = config().init(&device).expect("valid OPT config");
        let lora =
            peft_lora::LoraConfig::new(peft_core::TargetModules::names(["q_proj", "v_proj"]))
                .with_r(16)
                .with_alpha(16.0);
        let lora = peft_lora::LoraModel::inject(model, &lora, &peft_lora::InjectOptions::default())
            .expect("q_proj and v_proj exist");
        let ids = Tensor::<2>::random([1, seq], Distribution::Uniform(0.0, 50000.0), &device).int();
        let flop = 2.0 * params * seq as f64;
        let unmerged = lora.model.clone();
        let merged = lora.merge_and_unload();
        for (name, model) in names.iter().zip([&unmerged, &merged]) {
            time(name, flop, || {
                let logits = model.forward(ids.clone());
                logits.slice([0..1, 0..1, 0..1]).into_scalar::<f32>()
            });
        }
    }

    // A decoding step with a key/value cache: one new token after a 256-token prompt, as
    // `generate` runs every token after the first (pytorch_ops.py: transformers' step with
    // `past_key_values`). After each call the cache is truncated back to the prompt, as
    // pytorch_ops.py crops transformers'; the cache has room for the step, as `generate`
    // reserves it, so the step writes its keys and values in place.
    for (label, config, params) in &OPT_MODELS {
        let name = format!("{label} decoding step, 256 cached");
        if !kept(&name) {
            continue;
        }
        use peft_models::{CausalLm, KvCache};
        let model = config().init(&device).expect("valid OPT config");
        let ids =
            |n| Tensor::<2>::random([1, n], Distribution::Uniform(0.0, 50000.0), &device).int();
        let mut cache = KvCache::with_capacity(257);
        model
            .forward_cached(ids(256), &mut cache)
            .expect("256 positions fit");
        let token = ids(1);
        time(&name, 2.0 * params, || {
            let logits = model
                .forward_cached(token.clone(), &mut cache)
                .expect("257 positions fit");
            cache.truncate(256);
            logits.slice([0..1, 0..1]).into_scalar::<f32>()
        });
    }

    // Greedy generation of 32 tokens after a 256-token prompt, as a user runs it: the prompt
    // once, then 31 decoding steps against the growing cache (pytorch_ops.py: transformers'
    // `generate` with `min_new_tokens` 32, so neither side stops early). The FLOP rate counts the
    // prompt's and the steps' products.
    for (label, config, params) in &OPT_MODELS {
        let name = format!("{label} generate 32 after 256");
        if !kept(&name) {
            continue;
        }
        use peft_models::CausalLm;
        let model = config().init(&device).expect("valid OPT config");
        // Ids from 3 on: no end-of-sequence token in the prompt.
        let prompt = Tensor::<2>::random([1, 256], Distribution::Uniform(3.0, 50000.0), &device);
        let prompt = prompt.int();
        time(&name, 2.0 * params * 287.0, || {
            let out = model
                .generate(prompt.clone(), 32, 1)
                .expect("288 positions fit");
            // Random weights could pick the end-of-sequence token; then the row is shorter
            // than transformers' and not comparable.
            assert_eq!(out.dims(), [1, 288], "generation stopped early");
            out.dims()[1] as f32
        });
    }

    // MiSS/Bone bat on one 1024 × 1024 layer (r 64, no gradients), the two ways `peft-bone` can
    // run a few tokens: `x·W` plus ΔW's product without composing ΔW
    // (`BoneAdapter::bat_delta_factored`), and `x·(W + ΔW)` with ΔW composed
    // (`BoneAdapter::delta_weight`), on both sides of `bat_runs_factored`'s switch at r tokens.
    // No PyTorch twin: PEFT always composes. The FLOP rate counts `x·W` only.
    let bat_rows = [1usize, 8, 16, 32, 64, 96, 128, 192, 256];
    if bat_rows
        .iter()
        .any(|t| kept(&format!("bat layer, {t} tokens")))
    {
        let (side, r) = (1024usize, 64usize);
        let w = Tensor::<2>::random([side, side], Distribution::Default, &device);
        let block = Tensor::<3>::random([side / r, r, r], Distribution::Default, &device);
        let adapter = peft_bone::BoneAdapter::new(
            burn::module::Param::from_tensor(block),
            r,
            peft_bone::BoneMode::Bat,
            0.0,
            peft_core::AdapterSwitch::default(),
        );
        let first2 = |t: Tensor<2>| t.slice([0..1, 0..1]).into_scalar::<f32>();
        for tokens in bat_rows {
            let x = Tensor::<2>::random([tokens, side], Distribution::Default, &device);
            let flop = 2.0 * (tokens * side * side) as f64;
            time(
                &format!("bat layer, {tokens} tokens, factored"),
                flop,
                || first2(x.clone().matmul(w.clone()) + adapter.bat_delta_factored(x.clone(), &w)),
            );
            time(
                &format!("bat layer, {tokens} tokens, composed"),
                flop,
                || {
                    first2(
                        x.clone()
                            .matmul(w.clone() + adapter.delta_weight(w.clone())),
                    )
                },
            );
        }
    }

    let embedding = random([1, 1, vocab, d]);
    let head_flop = |rows: usize| 2.0 * (rows * d * vocab) as f64;
    for rows in [1, 80, 256, 512, 1024] {
        let x = random([1, 1, rows, d]);
        let g = random([1, 1, rows, vocab]);
        time(
            &format!("head x·Eᵀ, {rows} rows"),
            head_flop(rows),
            || first(x.clone().matmul(embedding.clone().swap_dims(2, 3))),
        );
        time(&format!("head g·E, {rows} rows"), head_flop(rows), || {
            first(g.clone().matmul(embedding.clone()))
        });
    }

    // OPT-350m's head: 512 wide (its `project_out` runs before it); the training step's slices.
    let embedding_350m = random([1, 1, vocab, 512]);
    let x_350m = random([1, 1, 512, 512]);
    let g_350m = random([1, 1, 512, vocab]);
    let flop = 2.0 * (512 * 512 * vocab) as f64;
    time("head x·Eᵀ, 512 rows, 350m (512 wide)", flop, || {
        first(
            x_350m
                .clone()
                .matmul(embedding_350m.clone().swap_dims(2, 3)),
        )
    });
    time("head g·E, 512 rows, 350m (512 wide)", flop, || {
        first(g_350m.clone().matmul(embedding_350m.clone()))
    });
    // A third of the gradient subnormal, as a softmax over very spread logits makes it
    // (burn's default `normal(0, 1)` embedding made the guide's random OPT do that).
    let tiny = Tensor::<4>::full([1, 1, 512, vocab], 1e-40, &device);
    let every_third = Tensor::<1, burn::tensor::Int>::arange(0..vocab as i64, &device)
        .remainder_scalar(3)
        .equal_elem(0)
        .reshape([1, 1, 1, vocab])
        .expand([1, 1, 512, vocab]);
    let g_subnormal = g_350m.mask_where(every_third, tiny);
    time(
        "head g·E, 512 rows, 350m (512 wide), a third subnormal",
        flop,
        || first(g_subnormal.clone().matmul(embedding_350m.clone())),
    );

    let q = random([4, 12, 256, 64]);
    let scores = random([4, 12, 256, 256]);
    let attention_flop = 2.0 * (48 * 256 * 256 * 64) as f64;
    time(
        "attention q·kᵀ [48×256,64]·[64,256]",
        attention_flop,
        || first(q.clone().matmul(q.clone().swap_dims(2, 3))),
    );
    time(
        "attention p·v [48×256,256]·[256,64]",
        attention_flop,
        || first(scores.clone().matmul(q.clone())),
    );
    let mask = random([1, 1, 256, 256]);
    time("scores + mask [4,12,256,256]+[1,1,256,256]", 0.0, || {
        first(scores.clone() + mask.clone())
    });
    time("softmax [4,12,256,256]", 0.0, || {
        first(burn::tensor::activation::softmax(scores.clone(), 3))
    });
    time("exp [4,12,256,256]", 0.0, || first(scores.clone().exp()));

    // One training step's attention of an OPT-350m layer (batch 4, 16 heads of 64, 256
    // positions; heads split from `[4, 256, 1024]` as the model does), forward and backward:
    // burn's ops with peft-core's causal softmax (the models' attention before the node), and
    // the node.
    let ad = device.clone().autodiff();
    let heads = |seed: u64| {
        ad.seed(seed);
        Tensor::<4>::random([4, 256, 16, 64], Distribution::Default, &ad).swap_dims(1, 2)
    };
    let (q350, k350, v350, up350) = (heads(1), heads(2), heads(3), heads(4));
    // Forward 2 products, backward 4, each [64×256,64]·[64,256] or its transposes.
    let attention_flop = 6.0 * 2.0 * (64 * 256 * 256 * 64) as f64;
    let step = |fused: bool| {
        let (q, k, v) = (
            q350.clone().require_grad(),
            k350.clone().require_grad(),
            v350.clone().require_grad(),
        );
        let out = if fused {
            peft_core::nn::causal_attention(q.clone(), k.clone(), v.clone(), 0.125)
        } else {
            let scores = q
                .clone()
                .mul_scalar(0.125)
                .matmul(k.clone().swap_dims(2, 3));
            peft_core::nn::causal_softmax(scores).matmul(v.clone())
        };
        let grads = (out * up350.clone()).sum().backward();
        let g = |t: &Tensor<4>| t.grad(&grads).map_or(f32::NAN, first);
        g(&q) + g(&k) + g(&v)
    };
    time(
        "attention fwd+bwd 350m, masked softmax",
        attention_flop,
        || step(false),
    );
    time("attention fwd+bwd 350m, one node", attention_flop, || {
        step(true)
    });

    // A Llama RMSNorm in a LoRA step (4 × 256 tokens, 2048 wide as Llama 3.2 1B, the weight
    // frozen), forward and backward: burn's ops, as peft-models wrote it before the node, and
    // the node.
    let xs = Tensor::<3>::random([4, 256, 2048], Distribution::Normal(0.0, 1.0), &ad);
    let norm_weight = Tensor::<1>::random([2048], Distribution::Normal(1.0, 0.1), &ad);
    let up_norm = Tensor::<3>::random([4, 256, 2048], Distribution::Default, &ad);
    let norm_step = |fused: bool| {
        let x = xs.clone().require_grad();
        let y = if fused {
            peft_core::nn::rms_norm(x.clone(), norm_weight.clone(), 1e-5)
        } else {
            let ms = x.clone().powi_scalar(2).mean_dim(2);
            x.clone() / ms.add_scalar(1e-5).sqrt() * norm_weight.clone().unsqueeze()
        };
        let grads = (y * up_norm.clone()).sum().backward();
        x.grad(&grads)
            .map_or(f32::NAN, |g| first(g.unsqueeze::<4>()))
    };
    time("RMSNorm fwd+bwd [4,256,2048], ops", 0.0, || {
        norm_step(false)
    });
    time("RMSNorm fwd+bwd [4,256,2048], one node", 0.0, || {
        norm_step(true)
    });

    // One 2048² layer of an OPT-1.3b step at one sequence (256 tokens), forward and backward
    // with the input's gradient: frozen (`x·W`), and with MiSS/Bone bat r 64 as a bat model's
    // q or v runs it at r tokens or more, `x·(W + ΔW)` with ΔW composed through
    // `Reparameterization::apply` (as PEFT does) and the block trained. The FLOP counts: the
    // frozen layer's two products; bat's three (`xᵀ·dy` for the composed weight's gradient)
    // and its tiles `W[a,c]·B[a]` forward and their gradient for `B`.
    let (side, bat_r, bat_tokens) = (2048usize, 64usize, 256usize);
    let layer_rows = ["layer fwd+bwd 1.3b, frozen", "layer fwd+bwd 1.3b, bat r64"];
    if layer_rows.iter().any(|row| kept(row)) {
        use burn::module::Reparameterization;
        let w = Tensor::<2>::random([side, side], Distribution::Default, &ad);
        let block = Tensor::<3>::random([side / bat_r, bat_r, bat_r], Distribution::Default, &ad);
        let adapter = peft_bone::BoneAdapter::new(
            burn::module::Param::from_tensor(block.require_grad()),
            bat_r,
            peft_bone::BoneMode::Bat,
            0.0,
            peft_core::AdapterSwitch::default(),
        );
        let xs = Tensor::<2>::random([bat_tokens, side], Distribution::Default, &ad);
        let up = Tensor::<2>::random([bat_tokens, side], Distribution::Default, &ad);
        let product = 2.0 * (bat_tokens * side * side) as f64;
        let tiles = 2.0 * (side * side * bat_r) as f64;
        let layer_step = |bat: bool| {
            let x = xs.clone().require_grad();
            let weight = if bat {
                adapter.apply(w.clone())
            } else {
                w.clone()
            };
            let grads = (x.clone().matmul(weight) * up.clone()).sum().backward();
            let gx = x
                .grad(&grads)
                .map_or(f32::NAN, |g| first(g.unsqueeze::<4>()));
            let gb = adapter
                .block
                .val()
                .grad(&grads)
                .map_or(0.0, |g| first(g.unsqueeze::<4>()));
            gx + if bat { gb } else { 0.0 }
        };
        time(layer_rows[0], 2.0 * product, || layer_step(false));
        time(layer_rows[1], 3.0 * product + 2.0 * tiles, || {
            layer_step(true)
        });
    }

    let a = random([1, 1, d, 16]);
    let b = random([1, 1, 16, d]);
    let xa = random([1, 1, tokens, 16]);
    let lora_flop = 2.0 * (tokens * d * 16) as f64;
    time("LoRA x·A [1024,768]·[768,16]", lora_flop, || {
        first(x.clone().matmul(a.clone()))
    });
    time("LoRA (xA)·B [1024,16]·[16,768]", lora_flop, || {
        first(xa.clone().matmul(b.clone()))
    });
    // A decoding step's LoRA branch on one OPT-350m layer (d 1024, r 16), the products and the
    // scaling and addition the unmerged layer runs after its base product.
    let (a, b) = (random([1, 1, 1024, 16]), random([1, 1, 16, 1024]));
    let token = random([1, 1, 1, 1024]);
    let token_flop = 2.0 * (1024 * 16) as f64;
    time("LoRA 1 token x·A [1,1024]·[1024,16]", token_flop, || {
        first(token.clone().matmul(a.clone()))
    });
    let ta = random([1, 1, 1, 16]);
    time("LoRA 1 token (xA)·B [1,16]·[16,1024]", token_flop, || {
        first(ta.clone().matmul(b.clone()))
    });
    let base = random([1, 1, 1, 1024]);
    time(
        "LoRA 1 token branch, s·(x·A)·B + base",
        2.0 * token_flop,
        || {
            first(
                base.clone()
                    + token
                        .clone()
                        .matmul(a.clone())
                        .mul_scalar(2.0)
                        .matmul(b.clone()),
            )
        },
    );

    // An unmerged LoRA Linear (r 16) without gradients, both ways it can run: factored,
    // `x·W + s·(x·A)·B`, and composed, `x·(W + s·A·B)` (what `LoraAdapter::runs_factored` picks
    // between), on OPT-125m's, OPT-350m's and OPT-1.3b's q and OPT-350m's fc1, from 64 to 4096
    // tokens. The FLOP rate is the base product's.
    for (d_in, d_out) in [(768, 768), (1024, 1024), (2048, 2048), (1024, 4096)] {
        let name = format!("LoRA layer {d_in}x{d_out}");
        if !kept(&name) {
            continue;
        }
        let random2 =
            |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Default, &device);
        let (w, a, b) = (
            random2([d_in, d_out]),
            random2([d_in, 16]),
            random2([16, d_out]),
        );
        for tokens in [64, 128, 256, 512, 1024, 2048, 4096] {
            let x = random2([tokens, d_in]);
            let flop = 2.0 * (tokens * d_in * d_out) as f64;
            time(&format!("{name}, {tokens} tokens, factored"), flop, || {
                let branch = x
                    .clone()
                    .matmul(a.clone())
                    .mul_scalar(2.0)
                    .matmul(b.clone());
                first((x.clone().matmul(w.clone()) + branch).unsqueeze())
            });
            time(&format!("{name}, {tokens} tokens, composed"), flop, || {
                let composed = w.clone() + a.clone().matmul(b.clone()).mul_scalar(2.0);
                first(x.clone().matmul(composed).unsqueeze())
            });
        }
    }
}
