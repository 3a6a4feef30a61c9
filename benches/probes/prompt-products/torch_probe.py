"""PyTorch's side of the prompt-products probe: the same products (the weight as PyTorch stores
it, [out, in]) through F.linear and through F.linear with a bias (addmm), interleaved, 2
threads (THREADS=n: n), 512 MiB written between calls unless WARM is set (COPIES=n: the next of n copies of
the weight instead), a Linear's input gradient (" dX " shapes) through matmul with the weight
[out, in]; a shape's tokens are the first number of its m x k x n. ROUNDS timed rounds (default 15) after one untimed; FILTER keeps the shapes whose
name contains it."""

import os
import time

import torch

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
SHAPES = [
    ("1.3b q x·W 256x2048x2048", 2048, 2048),
    ("1.3b fc1 x·W 256x2048x8192", 2048, 8192),
    ("1.3b fc2 x·W 256x8192x2048", 8192, 2048),
    ("1.3b head x·Et 256x2048x50272", 2048, 50272),
    ("125m fc1 x·W 256x768x3072", 768, 3072),
    ("125m head x·Et 256x768x50272", 768, 50272),
    ("125m q x·W 256x768x768", 768, 768),
    ("350m q x·W 256x1024x1024", 1024, 1024),
    ("350m fc1 x·W 256x1024x4096", 1024, 4096),
    ("350m fc2 x·W 256x4096x1024", 4096, 1024),
    # A Linear's input gradient dY·W, W [out, in] = [k, n] row-major, as autograd computes it.
    ("1.3b q dX dY·Wt 256x2048x2048", 2048, 2048),
    ("350m fc1 dX dY·Wt 256x4096x1024", 4096, 1024),
    ("350m q dX dY·Wt 256x1024x1024", 1024, 1024),
    ("1.3b fc1 dX dY·Wt 256x8192x2048", 8192, 2048),
    ("1.3b fc2 dX dY·Wt 256x2048x8192", 2048, 8192),
    # A training step's 4 × 256 tokens (OPT-125m and OPT-350m).
    ("125m q dX dY·Wt 1024x768x768", 768, 768),
    ("125m fc1 dX dY·Wt 1024x3072x768", 3072, 768),
    ("125m fc2 dX dY·Wt 1024x768x3072", 768, 3072),
    ("350m q dX dY·Wt 1024x1024x1024", 1024, 1024),
    ("350m fc1 dX dY·Wt 1024x4096x1024", 4096, 1024),
    ("350m fc2 dX dY·Wt 1024x1024x4096", 1024, 4096),
]
filt = os.environ.get("FILTER", "")
copies = int(os.environ.get("COPIES", "0"))
rounds = int(os.environ.get("ROUNDS", "15"))
warm = "WARM" in os.environ
flush = torch.zeros(128 << 20)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for name, k, n in SHAPES:
    if filt not in name:
        continue
    t = int(name.split()[-1].split("x")[0])  # the tokens, from the name's m x k x n
    x, b = torch.rand(t, k), torch.rand(n)
    # COPIES=n: n copies of the weight used in turn instead of the flush.
    dx = " dX " in name
    ws = [torch.rand(k, n) if dx else torch.rand(n, k) for _ in range(max(copies, 1))]
    nxt = 0
    times = {"linear": [], "addmm": []}
    for r in range(rounds + 1):
        for label in times:
            if not warm and copies == 0:
                flush.add_(1)
            w = ws[nxt % len(ws)]
            nxt += 1
            t0 = time.perf_counter()
            if dx:
                torch.matmul(x, w)
            else:
                torch.nn.functional.linear(x, w, b if label == "addmm" else None)
            dt = time.perf_counter() - t0
            if r > 0:
                times[label].append(dt)
    for label, v in times.items():
        v.sort()
        m = v[len(v) // 2]
        print(f"{name:32} {label:6} {m * 1e3:8.2f} ms ({v[0] * 1e3:.2f}–{v[-1] * 1e3:.2f})"
              f" {2 * t * k * n / m / 1e9:6.1f} GFLOP/s")
