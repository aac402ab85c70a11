"""The built-in train.py's two attention paths on a CPU, forward and backward, at several context lengths: where
CPUAttention (QK-norm, rotary and softmax attention as batched matmuls, backward written out) stops beating
NormRotate + SDPA's flash kernel, which is where attention() switches between them.

    python benchmarks/cpu_attention.py [--threads 2] [--repeats 40]

The CPU preset's heads (4 of 32 channels), 2,048 tokens per call (batch x length), the paths taking turns.
Prints the median milliseconds of each and their ratio. Not a test: it measures this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from prepared_target import load_train, with_harness_malloc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    with_harness_malloc()

    import torch
    import torch.nn.functional as F

    train = load_train("train")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    heads, head_dim = 4, 32

    def sdpa_path(qkv, cos, sin):
        q, k = train.NormRotate.apply(qkv[:, :, :2], cos[:, None, None], sin[:, None, None]).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2),
                                           is_causal=True)
        return y.transpose(1, 2).flatten(2)

    print(f"{args.threads} threads | {heads} heads of {head_dim} | 2,048 tokens per call | forward + backward, medians")
    for length in (128, 256, 512, 1024):
        batch = 2048 // length
        cos, sin = train.rotary_tables(length, head_dim)
        mask = torch.zeros(length, length).masked_fill_(~train.allowed_keys(length, None, "cpu"), float("-inf"))
        qkv = torch.randn(batch, length, 3, heads, head_dim, requires_grad=True)
        grad = torch.randn(batch, length, heads * head_dim)
        paths = {"CPUAttention": lambda: train.CPUAttention.apply(qkv, cos, sin, mask),
                 "SDPA": lambda: sdpa_path(qkv, cos, sin)}
        times = {name: [] for name in paths}
        for i in range(args.repeats + 5):
            for name, path in paths.items():
                start = time.perf_counter()
                path().backward(grad)
                if i >= 5:
                    times[name].append(time.perf_counter() - start)
        ours, sdpa = (statistics.median(times[name]) * 1000 for name in paths)
        print(f"context {length:5d} (batch {batch:2d}): CPUAttention {ours:6.2f} ms | NormRotate + SDPA {sdpa:6.2f} ms "
              f"| {sdpa / ours:.2f}x")


if __name__ == "__main__":
    main()
