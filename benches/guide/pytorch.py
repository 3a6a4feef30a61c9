"""One row of the method comparison in HF PEFT on PyTorch, for `cargo xtask bench --vs-pytorch`.

Runs the same configuration as `benches/guide/measure.rs` (OPT with random weights, the same
method, batch, sequence length, timed steps and repetitions, AdamW at lr 1e-4, cross-entropy of
the logits against the input ids) and prints one JSON object on stdout:

    python3 pytorch.py '{"config": {...OPTConfig...}, "method": "lora-qv", "batch": 4,
                         "seq": 256, "steps": 3, "reps": 5, "threads": 2}'

Memory is the growth of the process's peak resident set over the resident set before the first
step (one process per row), not the counting allocator the Rust rows use.
"""

import json
import resource
import sys
import time


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    spec = json.loads(sys.argv[1])
    import torch
    import torch.nn.functional as F
    from transformers import OPTConfig, OPTForCausalLM
    import peft

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    method = spec["method"]
    model = OPTForCausalLM(OPTConfig(**spec["config"])).float()
    total = sum(p.numel() for p in model.parameters())
    qv = ["q_proj", "v_proj"]
    optimizer = None
    if method == "frozen":
        model.requires_grad_(False)
    elif method == "full":
        pass
    elif method in ("lora-qv", "lora-all", "lorafa-qv", "dora-qv"):
        targets = "all-linear" if method == "lora-all" else qv
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=16, lora_alpha=16, target_modules=targets,
                                   use_dora=method == "dora-qv")
        )
        if method == "lorafa-qv":
            from peft.optimizers import create_lorafa_optimizer

            optimizer = create_lorafa_optimizer(model, r=16, lora_alpha=16, lr=1e-4)
    elif method in ("bone", "bone-bat"):
        init = "bat" if method == "bone-bat" else True
        model = peft.get_peft_model(
            model, peft.MissConfig(r=64, target_modules=qv, init_weights=init)
        )
    else:
        print(json.dumps({"skipped": f"no PyTorch counterpart for `{method}`"}))
        return
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if optimizer is None and trainable:
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-4
        )
    vocab = spec["config"]["vocab_size"]
    batch, seq = spec["batch"], spec["seq"]
    model.train()
    # transformers' OPT has dropout 0.1 by default; the Rust models have none.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    before = rss_bytes()
    times = []
    for step in range(spec["steps"] + 1):
        ids = torch.randint(0, vocab, (batch, seq))
        t0 = time.perf_counter()
        if method == "frozen":
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
            logits = model(inputs_embeds=embeds).logits
        else:
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab), ids.reshape(-1))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step > 0:
            times.append(dt)
    peak = peak_rss_bytes() - before
    del optimizer
    model.eval()

    def timed(fn):
        with torch.no_grad():
            fn()
            samples = []
            for _ in range(spec["reps"]):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return sorted(samples)[len(samples) // 2]

    prompt = torch.randint(0, vocab, (1, seq))
    token = torch.randint(0, vocab, (1, 1))
    u_prompt = timed(lambda: model(input_ids=prompt))
    u_token = timed(lambda: model(input_ids=token))
    if isinstance(model, peft.PeftModel):
        model = model.merge_and_unload()
    m_prompt = timed(lambda: model(input_ids=prompt))
    m_token = timed(lambda: model(input_ids=token))
    step_s = sorted(times)[len(times) // 2]
    print(
        json.dumps(
            {
                "trainable_params": trainable,
                "total_params": total,
                "step_s": step_s,
                "tokens_per_s": batch * seq / step_s,
                "peak_rss_growth_bytes": peak,
                "prompt_unmerged_s": u_prompt,
                "prompt_merged_s": m_prompt,
                "token_unmerged_s": u_token,
                "token_merged_s": m_token,
                "versions": {
                    "torch": torch.__version__,
                    "peft": peft.__version__,
                    "transformers": __import__("transformers").__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
