"""What the evaluation's size buys: the sampling error of a val_bpb difference, against the seconds it costs.

    python benchmarks/eval_tokens.py [--budget 60s] [--data shakespeare] [--tokens 32768 65536 131072 262144]

Trains two models of the built-in target (CPU preset, seeds 0 and 1) with train.py as the harness runs it, then
scores both with evaluate.py's own code on the first N validation tokens, for each N. Prints each model's
val_bpb, their difference, the standard error of that difference from the spread of the paired per-window
differences (a ratio estimator: bits over bytes, window by window), and the seconds one evaluation of N tokens
takes here. Every run is compared on the same tokens, so this error is not seed noise: it is how far a
difference measured on N tokens may sit from the one on the whole validation text. Compare it with the
seed-to-seed spread of a run (`benchmarks/gpt_target.py`). Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.budget import Budget

from prepared_target import prepared_target


def train(root: Path, out: Path, seed: int, budget: Budget) -> None:
    env = {**os.environ, **budget.env(), "AUTORESEARCH_DATA": str(root / ".autoresearch" / "data" / "train"),
           "AUTORESEARCH_OUT": str(out), "AUTORESEARCH_SEED": str(seed), "AUTORESEARCH_DEVICE": "cpu"}
    subprocess.run([sys.executable, "train.py"], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s")
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--tokens", type=int, nargs="+", default=[2**15, 2**16, 2**17, 2**18])
    args = parser.parse_args()
    budget = Budget.parse(args.budget)
    with tempfile.TemporaryDirectory() as work:
        target = prepared_target(Path(work) / "gpt", args.data)
        root = target.root
        for seed in (0, 1):
            train(root, Path(work) / f"seed{seed}", seed, budget)
        sys.path.insert(0, str(root))
        os.chdir(root)  # evaluate.py builds the model from ./train.py
        import numpy as np
        import torch

        import evaluate  # the target's own evaluator: its model loading and its cross-entropy

        device = torch.device("cpu")
        meta = json.loads((target.data / "meta.json").read_text())
        token_bytes = torch.tensor(meta["token_bytes"], dtype=torch.int64)
        tokens = np.memmap(target.data / "val.bin", dtype=np.uint16, mode="r")
        longest = min(max(args.tokens), len(tokens) - 1)
        models, seq_len = [], None
        for seed in (0, 1):
            model, model_args = evaluate.load_model(str(Path(work) / f"seed{seed}" / "model.pt"), device)
            models.append(model)
            seq_len = int(model_args["sequence_len"])
        windows = longest // seq_len
        data = torch.from_numpy(tokens[:windows * seq_len + 1].astype(np.int64))
        xs, ys = data[:-1].view(windows, seq_len), data[1:].view(windows, seq_len)
        bits = []  # per model: the bits of each window, and each window's bytes
        with torch.no_grad():
            for model in models:
                per_window, nbytes = [], []
                for i in range(windows):
                    nats, count = evaluate.nats_and_bytes(model(xs[i:i + 1]), ys[i:i + 1], token_bytes)
                    per_window.append(nats / math.log(2))
                    nbytes.append(count)
                bits.append(torch.tensor(per_window, dtype=torch.float64))
        nbytes = torch.tensor(nbytes, dtype=torch.float64)
        print(f"budget {budget} | data {args.data} | two models (seeds 0 and 1) | windows of {seq_len} tokens")
        print(f"{'tokens':>8} {'bpb seed 0':>11} {'bpb seed 1':>11} {'difference':>11} {'its se':>8} {'eval seconds':>13}")
        for n_tokens in sorted(args.tokens):
            n = min(n_tokens // seq_len, windows)
            b = nbytes[:n]
            bpb = [float(x[:n].sum() / b.sum()) for x in bits]
            d = bits[0][:n] - bits[1][:n]
            difference = float(d.sum() / b.sum())
            residual = d - difference * b
            se = math.sqrt(n / (n - 1) * float((residual ** 2).sum())) / float(b.sum())
            started = time.perf_counter()
            evaluate.bits(models[0], seq_len, str(target.data / "val.bin"), n * seq_len, meta, device)
            seconds = time.perf_counter() - started
            print(f"{n * seq_len:>8} {bpb[0]:>11.4f} {bpb[1]:>11.4f} {difference:>+11.4f} {se:>8.4f} {seconds:>12.2f}s")


if __name__ == "__main__":
    main()
