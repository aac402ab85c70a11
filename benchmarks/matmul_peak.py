"""The fp32 matrix-multiply rate of this machine's CPU: the denominator of a CPU's MFU.

    python benchmarks/matmul_peak.py --threads 2

train.py reports MFU against a GPU's datasheet peak and leaves it 0 on a CPU, whose peak depends on its
cores, clock and vector units. The benchmarks measure instead what PyTorch's own matmul reaches here:
the best median over square fp32 products of 512 to 2048, with the given number of threads.
"""

from __future__ import annotations

import argparse
import statistics
import time


def fp32_matmul_flops(threads: int, repeats: int = 10) -> float:
    """FLOP/s of the fastest square fp32 matmul size, median of `repeats` timed products each."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = 0.0
        for n in (512, 1024, 2048):
            a, b = torch.randn(n, n), torch.randn(n, n)
            a @ b  # warm up: threads started, buffers allocated
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - start)
            best = max(best, 2 * n ** 3 / statistics.median(times))
        return best
    finally:
        torch.set_num_threads(before)


def cpu_mfu(summary: dict, peak: float) -> float:
    """MFU in percent of a run's summary (train.py's flops_per_token and tokens_per_second) against `peak` FLOP/s."""
    return 100 * summary["flops_per_token"] * summary["tokens_per_second"] / peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"fp32 matmul, {args.threads} threads: {fp32_matmul_flops(args.threads) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
