"""The method comparison's rows in HF PEFT on PyTorch, for `cargo xtask bench --vs-pytorch`.

The same configuration as `benches/guide/measure.rs`: OPT with random weights, the same method,
batch, sequence length, AdamW at lr 1e-4, cross-entropy of the logits against the input ids.

Two modes:

    python3 pytorch.py --worker
        A persistent worker, so that the guide runs PyTorch's rows in the same rounds as its
        own and import time never counts. It reads one JSON command per line on stdin and
        answers one JSON line on stdout:
          {"cmd": "setup", "config": {...OPTConfig...}, "methods": [...], "batch": 4,
           "seq": 256, "threads": 2}           -> {"rows": {key: {...} | {"skipped": why}},
                                                   "versions": {...}}
          {"cmd": "step", "method": key}       -> {"s": seconds}  (one training step)
          {"cmd": "infer", "method": key}      -> {"prompt_s": .., "token_s": ..}  (no grad)
          {"cmd": "product", "m": M, "k": K, "n": N, "grad": false}
                                               -> {"s": seconds}  (one F.linear of an [M, K]
                                                   input and an [N, K] weight, no grad; with
                                                   "grad": true one matmul of an [M, N]
                                                   gradient and that weight, as autograd
                                                   computes a Linear's input gradient)
          {"cmd": "quit"}
        Every row shares the base model's weight tensors (full fine-tuning gets its own copy),
        as the Rust rows do. A merged adapter is the base architecture with other weight
        values, so `"method": "base"` times the merged figures of every row. The setup's
        "versions" also say which BLAS this torch was built with, which CPU capability it
        runs its own kernels at and, under "preload", LD_PRELOAD where it is set.

    python3 pytorch.py --memory '{"config": ..., "method": key, "batch": 4, "seq": 256,
                                  "threads": 2}'
        One row alone in this process: the growth of the peak resident set over the resident
        set before the first step, over one warm-up and one more step (the Rust side measures
        the same way: `guide --memory`).
"""

import json
import os
import re
import sys
import time
import warnings

# transformers' deprecation notices on every training step would flood the guide's output.
warnings.filterwarnings("ignore", category=FutureWarning)

QV = ["q_proj", "v_proj"]
NO_COUNTERPART = {"burn-lora"}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Row:
    """One method on a model whose frozen weights are `base`'s tensors."""

    def __init__(self, base, config, method, batch, seq):
        import torch
        import peft
        from transformers import OPTForCausalLM

        self.method, self.batch, self.seq = method, batch, seq
        self.vocab = config.vocab_size
        state = base.state_dict()
        if method == "full":
            state = {k: v.clone() for k, v in state.items()}
        with torch.device("meta"):
            model = OPTForCausalLM(config)
        model.load_state_dict(state, assign=True)
        model.tie_weights()
        model.requires_grad_(False)
        self.total = sum(p.numel() for p in model.parameters())
        optimizer = None
        if method == "full":
            model.requires_grad_(True)
        elif method in ("lora-qv", "lora-all", "lorafa-qv", "dora-qv"):
            targets = "all-linear" if method == "lora-all" else QV
            model = peft.get_peft_model(
                model,
                peft.LoraConfig(r=16, lora_alpha=16, target_modules=targets,
                                use_dora=method == "dora-qv"),
            )
            if method == "lorafa-qv":
                from peft.optimizers import create_lorafa_optimizer

                optimizer = create_lorafa_optimizer(model, r=16, lora_alpha=16, lr=1e-4)
        elif method in ("bone", "bone-bat"):
            init = "bat" if method == "bone-bat" else True
            model = peft.get_peft_model(
                model, peft.MissConfig(r=64, target_modules=QV, init_weights=init)
            )
        elif method not in ("frozen", "base"):
            raise ValueError(f"unknown method `{method}`")
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if optimizer is None and self.trainable:
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=1e-4
            )
        self.model, self.optimizer = model, optimizer

    def step(self):
        import torch
        import torch.nn.functional as F

        model = self.model
        model.train()
        ids = torch.randint(0, self.vocab, (self.batch, self.seq))
        t0 = time.perf_counter()
        if self.method == "frozen":
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
            logits = model(inputs_embeds=embeds).logits
        else:
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), ids.reshape(-1))
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def infer(self):
        import torch

        self.model.eval()
        prompt = torch.randint(0, self.vocab, (1, self.seq))
        token = torch.randint(0, self.vocab, (1, 1))
        out = {}
        with torch.no_grad():
            for name, ids in (("prompt_s", prompt), ("token_s", token)):
                t0 = time.perf_counter()
                self.model(input_ids=ids)
                out[name] = time.perf_counter() - t0
        return out


def blas_info(torch):
    """The BLAS this torch was built with, as `torch.__config__.show()` names it."""
    shown = torch.__config__.show()
    for line in shown.splitlines():
        line = line.strip().lstrip("- ")
        if "Math Kernel Library Version" in line:
            return line.split(" for ")[0]
    found = re.search(r"BLAS_INFO=([^,\s]+)", shown)
    return found.group(1) if found else "unknown"


class Products:
    """`F.linear` alone, or a Linear's input gradient `matmul(dY, W)` (`grad`), on operands made
    once per shape (uniform in [-1, 1), no grad)."""

    def __init__(self):
        self.operands = {}

    def time(self, m, k, n, grad=False):
        import torch
        import torch.nn.functional as F

        if (m, k, n, grad) not in self.operands:
            x = torch.rand(m, n if grad else k) * 2 - 1
            w = torch.rand(n, k) * 2 - 1
            self.operands[(m, k, n, grad)] = (x, w)
        x, w = self.operands[(m, k, n, grad)]
        with torch.no_grad():
            t0 = time.perf_counter()
            if grad:
                torch.matmul(x, w)
            else:
                F.linear(x, w)
            return time.perf_counter() - t0


def opt_config(spec):
    from transformers import OPTConfig

    return OPTConfig(**spec["config"])


def setup(spec):
    import torch
    import peft
    import transformers
    from transformers import OPTForCausalLM

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = opt_config(spec)
    # The guide's config turns dropout off: the Rust models have none.
    base = OPTForCausalLM(config).float()
    rows, info = {"base": Row(base, config, "base", spec["batch"], spec["seq"])}, {}
    for method in spec["methods"]:
        if method in NO_COUNTERPART:
            info[method] = {"skipped": f"no PyTorch counterpart for `{method}`"}
            continue
        row = Row(base, config, method, spec["batch"], spec["seq"])
        rows[method] = row
        info[method] = {"trainable_params": row.trainable, "total_params": row.total}
    versions = {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "blas": blas_info(torch),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    # A library preloaded into the worker can change which kernels torch's BLAS takes
    # (benches/probes/mkl-avx512): say so beside the versions.
    if os.environ.get("LD_PRELOAD"):
        versions["preload"] = os.environ["LD_PRELOAD"]
    return rows, {"rows": info, "versions": versions}


def worker():
    rows, products = {}, Products()
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "setup":
                rows, answer = setup(cmd)
            elif cmd["cmd"] == "step":
                answer = {"s": rows[cmd["method"]].step()}
            elif cmd["cmd"] == "infer":
                answer = rows[cmd["method"]].infer()
            elif cmd["cmd"] == "product":
                answer = {"s": products.time(cmd["m"], cmd["k"], cmd["n"], cmd.get("grad", False))}
            elif cmd["cmd"] == "quit":
                return
            else:
                answer = {"error": f"unknown command {cmd['cmd']}"}
        except Exception as e:  # answered, so that the guide can say why
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


def memory(spec):
    import torch
    from transformers import OPTForCausalLM

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = opt_config(spec)
    base = OPTForCausalLM(config).float()
    row = Row(base, config, spec["method"], spec["batch"], spec["seq"])
    del base
    reset_peak_rss()
    before = rss_bytes()
    row.step()
    row.step()
    print(json.dumps({"peak_rss_growth_bytes": peak_rss_bytes() - before}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker()
    elif sys.argv[1:2] == ["--memory"]:
        memory(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: pytorch.py --worker | --memory SPEC")
