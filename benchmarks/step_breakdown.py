"""Where a training step's time goes: forward, backward and optimizer of the built-in target's train.py against the
nanoGPT-style baseline (and any other train.py), interleaved step by step in one process.

    python benchmarks/step_breakdown.py                        # CPU preset, 60 timed steps each
    python benchmarks/step_breakdown.py --train edited=path/to/train.py --steps 100

Each implementation builds its model at the built-in train.py's preset size for the device (depth, width, heads,
sequence length, batch) with a byte vocabulary (257), with its own optimizers, and trains on one fixed batch of
random tokens: no data loading, no schedule, just the step. The implementations take turns, one step each, so a
drifting machine load hits all alike; the first 10 rounds are not counted. Prints the median milliseconds of each
phase and of the whole step, tokens/s, and each one's throughput against the nanoGPT-style baseline. On a GPU the
phases are synchronized and the models are not compiled: the figures show the ops, not the CUDA preset's speed.
A process started without a malloc setting re-executes itself with the harness's (runner.MALLOC_TUNING), so the
allocator behaves as it does in a real run. Not a test: it measures this machine as it is.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from prepared_target import load_train, with_harness_malloc

HERE = Path(__file__).resolve().parent
VOCAB = 257
WARMUP_ROUNDS = 10


def stepper(name: str, module, size: dict, device, x, y):
    """One training step of `module`'s model and optimizers, returning (forward, backward, optimizer) seconds."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    if name == "nanogpt":
        model = module.build_model(**size).to(device)
        optimizer = module.make_optimizer(model, device, module.LEARNING_RATE[device.type])

        def update():
            torch.nn.utils.clip_grad_norm_(model.parameters(), module.GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model = module.build_model(**size, softcap=module.SOFTCAP).to(device)
        optimizers = module.make_optimizers(model, size["model_dim"])

        def update():
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).view(-1, VOCAB), y.view(-1))
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        update()
        loss.item()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per implementation")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | mps")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the CPU preset is measured with 2)")
    parser.add_argument("--train", action="append", default=[], metavar="NAME=PATH",
                        help="also time this train.py (same contract as the built-in one)")
    args = parser.parse_args()
    with_harness_malloc()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    ours = load_train("ours")
    preset = lambda value: value[device.type] if isinstance(value, dict) else value
    depth, head_dim = preset(ours.DEPTH), preset(ours.HEAD_DIM)
    seq_len, batch = preset(ours.SEQ_LEN), preset(ours.BATCH_SIZE)
    width = math.ceil(depth * ours.ASPECT / head_dim) * head_dim
    size = dict(vocab_size=VOCAB, sequence_len=seq_len, depth=depth, model_dim=width, n_head=width // head_dim)
    x = torch.randint(0, VOCAB, (batch, seq_len), device=device)
    y = torch.randint(0, VOCAB, (batch, seq_len), device=device)
    modules = {"ours": ours, "nanogpt": load_train("nanogpt", HERE / "nanogpt_train.py")}
    for item in args.train:
        name, _, path = item.partition("=")
        modules[name] = load_train(name, Path(path))
    steps = {name: stepper(name, module, size, device, x, y) for name, module in modules.items()}

    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in steps}
    for round_ in range(WARMUP_ROUNDS + args.steps):
        for name, step in steps.items():
            phases = step()
            if round_ >= WARMUP_ROUNDS:
                times[name].append(phases)

    print(f"device {device} | {args.threads} threads | torch {torch.__version__} | depth {depth} width {width} "
          f"heads {width // head_dim} | batch {batch} x {seq_len} tokens | {args.steps} steps each, medians")
    baseline = statistics.median(sum(t) for t in times["nanogpt"])
    for name, rows in times.items():
        forward, backward, update = (statistics.median(row[i] for row in rows) * 1000 for i in range(3))
        total = statistics.median(sum(row) for row in rows)
        print(f"{name:10s} forward {forward:6.1f} | backward {backward:6.1f} | optimizer {update:5.1f} | "
              f"step {total * 1000:6.1f} ms | {batch * seq_len / total:9,.0f} tokens/s | "
              f"{baseline / total:.3f}x nanoGPT's throughput")


if __name__ == "__main__":
    main()
