"""Sums a FLEX_MM_TRACE log (benches/probes/mm-trace/README.md) per product shape.

    python3 mmsum.py LOG STEPS

LOG: the stderr of a run with `FLEX_MM_TRACE=1`; STEPS: how many training steps it ran. Products
with one output row or a batch of one (the guide's inference timings) are left out. Prints the
products' time per step, then each shape's time and calls per step, largest first; `lhsT`/`rhsT`
mark an operand read transposed (a unit row stride).
"""
import ast
import collections
import re
import sys

LINE = re.compile(r"MM Shape \{ dims: (\[.*?\]) \} (\[.*?\]) Shape \{ dims: (\[.*?\]) \} (\[.*?\]) (\d+)")


def rows(shape):
    n = 1
    for d in shape[:-1]:
        n *= d
    return n


def inference(lhs):
    return lhs[0] == 1 or (len(lhs) == 2 and lhs[0] == 256)


def main(path, steps):
    totals = collections.defaultdict(lambda: [0, 0])
    all_ns = 0
    for line in open(path, errors="replace"):
        m = LINE.match(line.strip())
        if not m:
            continue
        lhs, lhs_st, rhs, rhs_st = (ast.literal_eval(g) for g in m.groups()[:4])
        if inference(lhs):
            continue
        ns = int(m.group(5))
        kind = " ".join(k for k, st in (("lhsT", lhs_st), ("rhsT", rhs_st))
                        if st[-2] == 1 and st[-1] != 1) or "nn"
        key = f"{lhs} x {rhs} {kind}"
        totals[key][0] += 1
        totals[key][1] += ns
        all_ns += ns
    print(f"products: {all_ns / steps / 1e6:.1f} ms per step")
    for key, (calls, ns) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"{ns / steps / 1e6:8.1f} ms/step {calls / steps:5.1f} calls/step  {key}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
