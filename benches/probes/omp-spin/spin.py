"""How long PyTorch's OpenMP threads keep a CPU busy after a parallel call returns.

After each `F.linear` of an OPT-125m fc1 product at 256 tokens (2 threads), the main thread
sleeps in 1 ms steps for 50 ms and reads the process's CPU time (every thread's) at each step:
CPU time that grows while the main thread sleeps is the pool's threads spinning. The guide's
`--settle-ms` (benches/guide/measure.rs, SETTLE_MS) is sized from this.

    python3 benches/probes/omp-spin/spin.py                        # torch's default wait policy
    OMP_WAIT_POLICY=PASSIVE python3 benches/probes/omp-spin/spin.py  # threads sleep at once

Prints, for each of ROUNDS calls (default 5), the process CPU time in ms burnt over the
first 5, 10, 20 and 50 ms after the call returned (about 1 ms of it is the main thread's own
waking). Raw output of a run: run-2026-12-04-zen5.txt."""

import os
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
x, w = torch.rand(256, 768), torch.rand(3072, 768)
for _ in range(3):
    F.linear(x, w)
time.sleep(0.2)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
marks = (5, 10, 20, 50)
for r in range(int(os.environ.get("ROUNDS", "5"))):
    F.linear(x, w)
    t0, c0 = time.perf_counter(), time.process_time()
    burnt = {}
    while (elapsed := (time.perf_counter() - t0) * 1e3) < marks[-1]:
        time.sleep(0.001)
        elapsed = (time.perf_counter() - t0) * 1e3
        for m in marks:
            if m not in burnt and elapsed >= m:
                burnt[m] = (time.process_time() - c0) * 1e3
    print(f"call {r + 1}: CPU ms burnt after the call, by ms since it returned: "
          + ", ".join(f"{m} ms: {burnt[m]:.0f}" for m in marks))
    time.sleep(0.2)
