"""PyTorch's products in one training step of the guide's row, summed per shape (torch.profiler).

    python3 torch_products.py 350m lora-qv

The row is the guide's own (benches/guide/pytorch.py: OPT with transformers' random weights,
batch 4 × 256, or 1 × 256 on 1.3b, as the guide runs them; AdamW), two threads; two warm-up steps, three timed, then one profiled step.
"""
import collections
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "guide"))

import torch  # noqa: E402
from pytorch import Row  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import OPTConfig, OPTForCausalLM  # noqa: E402

# hidden, layers, heads, projection, pre-norm, batch (the guide's settings)
SIZES = {
    "125m": (768, 12, 12, 768, True, 4),
    "350m": (1024, 24, 16, 512, False, 4),
    "1.3b": (2048, 24, 32, 2048, True, 1),
}
PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def main(size, method):
    hidden, layers, heads, proj, pre_ln, batch = SIZES[size]
    config = OPTConfig(vocab_size=50272, hidden_size=hidden, ffn_dim=4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       max_position_embeddings=2048, word_embed_proj_dim=proj,
                       do_layer_norm_before=pre_ln, enable_bias=True, tie_word_embeddings=True,
                       dropout=0.0, attention_dropout=0.0)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    row = Row(OPTForCausalLM(config).float(), config, method, batch, 256)
    for _ in range(2):
        row.step()
    print("step s", sorted(row.step() for _ in range(3)))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        row.step()
    totals = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.name in PRODUCTS:
            key = f"{event.name} {event.input_shapes}"
            totals[key][0] += 1
            totals[key][1] += event.cpu_time_total / 1e3
    print(f"products: {sum(ms for _, ms in totals.values()):.1f} ms per step")
    for key, (calls, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"{ms:8.1f} ms/step {calls:4d} calls/step  {key}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
