"""One F.linear of OPT-1.3b's q at a 256-token prompt ([256, 2048] x [2048, 2048], the weight warm),
median of 20 calls on 2 threads, in GFLOP/s: with MKL on its AVX-512 kernels it runs at about twice
the rate of its kernels for CPUs without AVX-512 on a Zen 5.

    python3 benches/probes/mkl-avx512/check.py
    LD_PRELOAD=/tmp/libintel_cpu.so python3 benches/probes/mkl-avx512/check.py
"""

import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
x, w = torch.randn(256, 2048), torch.randn(2048, 2048)
for _ in range(3):
    F.linear(x, w)
ts = []
for _ in range(20):
    t = time.perf_counter()
    F.linear(x, w)
    ts.append(time.perf_counter() - t)
ts.sort()
m = ts[10]
print("median ms %.2f GFLOP/s %.0f" % (m * 1e3, 2 * 256 * 2048 * 2048 / m / 1e9))
