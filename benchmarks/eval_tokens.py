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

        import evaluate  # the target's own evaluator: its model loading and its layout of the windows

        from autoresearch import scoring

        threads = torch.get_num_threads()
        meta = json.loads((target.data / "meta.json").read_text())
        token_bytes = torch.tensor(meta["token_bytes"], dtype=torch.int64)
        tokens = np.memmap(target.data / "val.bin", dtype=np.uint16, mode="r")
        paths = [str(Path(work) / f"seed{seed}" / "model.pt") for seed in (0, 1)]
        seq_len = int(evaluate.checkpoint_info(paths[0])[0]["sequence_len"])
        windows = torch.from_numpy(scoring._windows(tokens, seq_len, max(args.tokens)))  # the evaluator's windows
        bits = []  # per model: the bits of each window, and each window's bytes
        for path in paths:
            answer = evaluate.load_model(path, "cpu", threads)  # in this process: a benchmark, not an evaluation
            per_window, nbytes = [], []
            for window in windows:
                x, y = window[None, :-1], window[None, 1:]
                logprobs = torch.log_softmax(answer(x).float(), -1).gather(-1, y[..., None]).squeeze(-1)
                counted = token_bytes[y] > 0
                per_window.append(-logprobs[counted].double().sum().item() / math.log(2))
                nbytes.append(token_bytes[y][counted].sum().item())
            bits.append(torch.tensor(per_window, dtype=torch.float64))
        nbytes = torch.tensor(nbytes, dtype=torch.float64)
        print(f"budget {budget} | data {args.data} | two models (seeds 0 and 1) | windows of {seq_len} tokens")
        print(f"{'tokens':>8} {'bpb seed 0':>11} {'bpb seed 1':>11} {'difference':>11} {'its se':>8} {'eval seconds':>13}")
        for n_tokens in sorted(args.tokens):
            n = min(n_tokens // seq_len, len(windows))
            b = nbytes[:n]
            bpb = [float(x[:n].sum() / b.sum()) for x in bits]
            d = bits[0][:n] - bits[1][:n]
            difference = float(d.sum() / b.sum())
            residual = d - difference * b
            se = math.sqrt(n / (n - 1) * float((residual ** 2).sum())) / float(b.sum())
            started = time.perf_counter()
            with scoring.Scorer([str(target.data)]) as scorer:  # what evaluate.py does: jailed model processes
                scorer.score(evaluate.load_model, (paths[0], "cpu", threads), [scoring.Source(tokens, n * seq_len)],
                             seq_len=seq_len, token_bytes=meta["token_bytes"], vocab_size=meta["vocab_size"],
                             batch=evaluate.EVAL_BATCH, tolerance=evaluate.TOLERANCE["cpu"])
            seconds = time.perf_counter() - started
            print(f"{n * seq_len:>8} {bpb[0]:>11.4f} {bpb[1]:>11.4f} {difference:>+11.4f} {se:>8.4f} {seconds:>12.2f}s")


if __name__ == "__main__":
    main()
