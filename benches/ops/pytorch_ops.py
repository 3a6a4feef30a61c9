"""The ops of `op-bench` (benches/ops/main.rs) in PyTorch, same shapes, same timing rule.

    python3 benches/ops/pytorch_ops.py [FILTER]

It first runs `op-bench --opt-configs` (target/release/op-bench, or the program OP_BENCH names),
whose transformers configs the OPT forward cases are built from, so build op-bench first. Two
threads (the project's CI machine has two cores), no autograd.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

import torch

torch.set_num_threads(2)
FILTER = sys.argv[1] if len(sys.argv) > 1 else None


def bench(name, flop, f):
    if FILTER is not None and FILTER not in name:
        return
    for _ in range(2):
        f()
    samples = []
    for _ in range(9):
        start = time.perf_counter()
        f()
        samples.append(time.perf_counter() - start)
    samples.sort()
    rate = f"{flop / samples[4] / 1e9:6.1f} GFLOP/s" if flop else ""
    print(f"{name:42} {samples[4] * 1e3:8.2f} ms ({samples[0] * 1e3:.2f}–{samples[8] * 1e3:.2f}) {rate}")


def opt_configs():
    """The OPT forward cases' transformers configs and parameter counts, as op-bench prints them
    (`op-bench --opt-configs`: the presets of peft-models' `OptConfig`)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    op_bench = os.environ.get("OP_BENCH", str(root / "target" / "release" / "op-bench"))
    try:
        out = subprocess.run([op_bench, "--opt-configs"], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"pytorch_ops.py: cannot run `{op_bench} --opt-configs` ({e}); build it with "
                 "`cargo build --release -p peft-benches --bin op-bench` or set OP_BENCH")
    return json.loads(out)


def main():
    keeps_head = FILTER is None or "head" in FILTER
    vocab = 50272 if keeps_head else 8
    tokens, d, ffn = 1024, 768, 3072
    r = torch.rand
    x = r(tokens, d)
    w = r(d, d)
    flop = 2 * tokens * d * d
    bench("x·W [4,256,768]·[768,768]", flop, lambda: x.reshape(4, 256, d) @ w)
    bench("x·W [1024,768]·[768,768]", flop, lambda: x @ w)
    bench("g·Wᵀ [1024,768]·[768,768]ᵀ", flop, lambda: x @ w.t())
    w_t = w.t().contiguous()
    bench("g·Wᵀ, Wᵀ stored contiguous", flop, lambda: x @ w_t)
    bench("xᵀ·g [768,1024]·[1024,768]", flop, lambda: x.t() @ x)
    up, down, h = r(d, ffn), r(ffn, d), r(tokens, ffn)
    bench("fc1 [1024,768]·[768,3072]", 4 * flop, lambda: x @ up)
    bench("fc2 [1024,3072]·[3072,768]", 4 * flop, lambda: h @ down)
    bench("fc1 g·Wᵀ [1024,3072]·[768,3072]ᵀ", 4 * flop, lambda: h @ up.t())
    bench("fc2 g·Wᵀ [1024,768]·[3072,768]ᵀ", 4 * flop, lambda: x @ down.t())
    token = r(1, d)
    bench("1 token x·W [1,768]·[768,768]", flop / tokens, lambda: token @ w)
    bench("1 token fc1 [1,768]·[768,3072]", 4 * flop / tokens, lambda: token @ up)
    if FILTER is None or FILTER in "1 token, 12 layers' products":
        layers = [[r(d, d), r(d, d), r(d, d), r(d, d), r(d, ffn), r(ffn, d)] for _ in range(12)]

        def decoder():
            y = token
            for q, k, v, o, u, dn in layers:
                y = ((((y @ q) @ k) @ v) @ o @ u) @ dn
                y = y * 1e-3
            return y

        bench("1 token, 12 layers' products", 12 * 12 * flop / tokens, decoder)
    # The whole forward of a decoding step and of a prompt: transformers' OPT, random weights,
    # as op-bench's "OPT-… forward" cases and the guide's merged inference rows, built from the
    # configs op-bench prints.
    for label, model_spec in opt_configs().items():
        for seq in (1, 256):
            name = f"{label} forward, {seq} tokens"
            if FILTER is not None and FILTER not in name:
                continue
            from transformers import OPTConfig, OPTForCausalLM

            params = model_spec["params"]
            model = OPTForCausalLM(OPTConfig(**model_spec["config"])).float().eval()
            ids = torch.randint(0, 50000, (1, seq))
            with torch.no_grad():
                bench(name, 2 * params * seq, lambda: model(input_ids=ids).logits)
            del model
    # The same forward with PEFT's LoRA r16 on q and v, unmerged and merged (op-bench's
    # "…, LoRA q,v unmerged / merged"; B is PEFT's zero init on both sides).
    for label, model_spec in opt_configs().items():
        for seq in (1, 256):
            names = [
                f"{label} forward, {seq} tokens, LoRA q,v {how}" for how in ("unmerged", "merged")
            ]
            if FILTER is not None and not any(FILTER in n for n in names):
                continue
            from peft import LoraConfig, get_peft_model
            from transformers import OPTConfig, OPTForCausalLM

            params = model_spec["params"]
            model = OPTForCausalLM(OPTConfig(**model_spec["config"])).float().eval()
            config = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"])
            unmerged = get_peft_model(model, config).eval()
            ids = torch.randint(0, 50000, (1, seq))
            bench(names[0], 2 * params * seq, lambda: unmerged(input_ids=ids).logits)
            merged = unmerged.merge_and_unload()
            bench(names[1], 2 * params * seq, lambda: merged(input_ids=ids).logits)
            del model, unmerged, merged
    # A decoding step with a key/value cache: one new token after a 256-token prompt (op-bench's
    # "decoding step, 256 cached"); the cache is cropped back to the prompt after each call
    # (`crop(-1)` drops the last position; transformers 5 takes the count to remove).
    for label, model_spec in opt_configs().items():
        name = f"{label} decoding step, 256 cached"
        if FILTER is not None and FILTER not in name:
            continue
        from transformers import OPTConfig, OPTForCausalLM

        model = OPTForCausalLM(OPTConfig(**model_spec["config"])).float().eval()
        with torch.no_grad():
            cache = model(input_ids=torch.randint(0, 50000, (1, 256)), use_cache=True).past_key_values
            token = torch.randint(0, 50000, (1, 1))

            def step():
                logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
                cache.crop(-1)  # the step's token: back to the prompt's 256
                return logits

            bench(name, 2 * model_spec["params"], step)
        del model, cache
    # Greedy generation of 32 tokens after a 256-token prompt (op-bench's "generate 32 after
    # 256"): `generate` with its DynamicCache, `min_new_tokens` so that it never stops early.
    for label, model_spec in opt_configs().items():
        name = f"{label} generate 32 after 256"
        if FILTER is not None and FILTER not in name:
            continue
        from transformers import OPTConfig, OPTForCausalLM

        model = OPTForCausalLM(OPTConfig(**model_spec["config"])).float().eval()
        prompt = torch.randint(3, 50000, (1, 256))

        def generate():
            out = model.generate(
                prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=1
            )
            assert out.shape == (1, 288), out.shape
            return out

        with torch.no_grad():
            bench(name, 2 * model_spec["params"] * 287, generate)
        del model
    embedding = r(vocab, d)
    for rows in [1, 80, 256, 512, 1024]:
        xs, g = r(rows, d), r(rows, vocab)
        bench(f"head x·Eᵀ, {rows} rows", 2 * rows * d * vocab, lambda: xs @ embedding.t())
        bench(f"head g·E, {rows} rows", 2 * rows * d * vocab, lambda: g @ embedding)

    # OPT-350m's head: 512 wide; the training step's slices of 512 rows.
    embedding_350m = torch.rand(vocab, 512)
    xs, g = torch.rand(512, 512), torch.rand(512, vocab)
    flop = 2 * 512 * 512 * vocab
    bench("head x·Eᵀ, 512 rows, 350m (512 wide)", flop, lambda: xs @ embedding_350m.t())
    bench("head g·E, 512 rows, 350m (512 wide)", flop, lambda: g @ embedding_350m)
    g_subnormal = g.clone()
    g_subnormal[:, ::3] = 1e-40
    bench("head g·E, 512 rows, 350m (512 wide), a third subnormal", flop,
          lambda: g_subnormal @ embedding_350m)
    q, scores = r(4, 12, 256, 64), r(4, 12, 256, 256)
    attention_flop = 2 * 48 * 256 * 256 * 64
    bench("attention q·kᵀ [48×256,64]·[64,256]", attention_flop, lambda: q @ q.transpose(2, 3))
    bench("attention p·v [48×256,256]·[256,64]", attention_flop, lambda: scores @ q)
    mask = r(1, 1, 256, 256)
    bench("scores + mask [4,12,256,256]+[1,1,256,256]", 0, lambda: scores + mask)
    bench("softmax [4,12,256,256]", 0, lambda: torch.softmax(scores, 3))
    bench("exp [4,12,256,256]", 0, lambda: scores.exp())
    # op-bench's OPT-350m attention, forward and backward, through PyTorch's fused causal
    # attention (what transformers' OPT runs).
    qa, ka, va, upa = (r(4, 256, 16, 64).transpose(1, 2) for _ in range(4))

    def sdpa_step():
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in (qa, ka, va))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                   scale=0.125)
            (out * upa).sum().backward()

    bench("attention fwd+bwd 350m, SDPA is_causal", 6 * 2 * 64 * 256 * 256 * 64, sdpa_step)
    # op-bench's Llama RMSNorm in a LoRA step (frozen weight), forward and backward: transformers'
    # LlamaRMSNorm.
    if FILTER is None or FILTER in "RMSNorm fwd+bwd [4,256,2048]":
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        norm = LlamaRMSNorm(2048, eps=1e-5)
        norm.weight.requires_grad_(False)
        xs, up_norm = torch.randn(4, 256, 2048), r(4, 256, 2048)

        def norm_step():
            with torch.enable_grad():
                x = xs.detach().requires_grad_()
                (norm(x) * up_norm).sum().backward()

        bench("RMSNorm fwd+bwd [4,256,2048]", 0, norm_step)
    # op-bench's OPT-1.3b layer (2048², one sequence of 256 tokens), forward and backward with
    # the input's gradient: frozen, and with PEFT's MiSS bat r 64 (MissConfig(init_weights="bat"),
    # PEFT's own layer, which composes W + ΔW on every forward) with its block trained.
    layer_rows = ("layer fwd+bwd 1.3b, frozen", "layer fwd+bwd 1.3b, bat r64")
    if FILTER is None or any(FILTER in row for row in layer_rows):
        from peft import MissConfig, get_peft_model

        side, bat_r, bat_tokens = 2048, 64, 256
        product, tiles = 2 * bat_tokens * side * side, 2 * side * side * bat_r

        class OneLayer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(side, side, bias=False)

            def forward(self, x):
                return self.lin(x)

        frozen = OneLayer().requires_grad_(False)
        bat = get_peft_model(OneLayer(), MissConfig(r=bat_r, init_weights="bat",
                                                     target_modules=["lin"]))
        with torch.no_grad():
            for name, p in bat.named_parameters():
                if "miss_block" in name:
                    p.copy_(torch.rand_like(p))
        xl, upl = r(bat_tokens, side), r(bat_tokens, side)

        def layer_step(model):
            def step():
                with torch.enable_grad():
                    x = xl.detach().requires_grad_()
                    (model(x) * upl).sum().backward()
            return step

        bench(layer_rows[0], 2 * product, layer_step(frozen))
        bench(layer_rows[1], 3 * product + 2 * tiles, layer_step(bat))
    a, b, xa = r(d, 16), r(16, d), r(tokens, 16)
    lora_flop = 2 * tokens * d * 16
    bench("LoRA x·A [1024,768]·[768,16]", lora_flop, lambda: x @ a)
    bench("LoRA (xA)·B [1024,16]·[16,768]", lora_flop, lambda: xa @ b)
    # A decoding step's LoRA branch on one OPT-350m layer (d 1024, r 16).
    a, b, token, ta, base = r(1024, 16), r(16, 1024), r(1, 1024), r(1, 16), r(1, 1024)
    token_flop = 2 * 1024 * 16
    bench("LoRA 1 token x·A [1,1024]·[1024,16]", token_flop, lambda: token @ a)
    bench("LoRA 1 token (xA)·B [1,16]·[16,1024]", token_flop, lambda: ta @ b)
    bench("LoRA 1 token branch, s·(x·A)·B + base", 2 * token_flop,
          lambda: base + ((token @ a) * 2.0) @ b)


if __name__ == "__main__":
    with torch.no_grad():
        main()
