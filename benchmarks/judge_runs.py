"""Collect the real runs benchmarks/judge.py judges: the built-in GPT target, CPU preset, the same seeds for every variant.

    python benchmarks/judge_runs.py --out judge-runs.json --seeds 16 --budget 60steps
    python benchmarks/judge_runs.py --out judge-runs.json --seeds 8 --budget 8s --variants baseline stream

Each seed runs every variant back to back (interleaved, so load drift hits them alike), through the harness's
own Runner and executor, as a session's runs are: seed i of every variant is the harness's seed i, so a
variant's run pairs with the baseline's run of the same seed (under a step budget: the same initialisation
and data order, unless the variant changes them). The variants:

- baseline: the template's train.py.
- stream:   one extra draw from torch's random stream before the model is built. The expected result is the
            baseline's (nothing else changes), but every weight starts elsewhere, so a run is not the
            baseline's run of its seed: the A/A case, as harsh for pairing as a change can be that keeps the
            data order (any change that adds or reshapes a parameter moves the stream like this).
- lr:       MATRIX_LR x0.8, a real change of the kind a search makes (same stream, same data order).

Resumable: runs already in --out (variant, budget, seed) are not run again, so seeds can be added later.
Every run's val_bpb, steps and seconds go to --out, with `uptime` load at the start of each seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import knobs
from autoresearch.budget import Budget
from autoresearch.executor import LocalExecutor
from autoresearch.records import RunState
from autoresearch.runner import Runner, RunSpec

from prepared_target import prepared_target

STREAM_LINE = "    torch.manual_seed(seed)\n"


def stream_variant(source: str) -> str:
    if STREAM_LINE not in source:
        sys.exit("train.py no longer seeds with `torch.manual_seed(seed)`: update STREAM_LINE")
    return source.replace(STREAM_LINE, STREAM_LINE + "    torch.rand(1)  # A/A: the random stream moves, nothing else\n")


def lr_variant(source: str) -> str:
    return knobs.set_value(source, "MATRIX_LR", knobs.read(source, "MATRIX_LR") * 0.8)


VARIANTS = {"baseline": lambda source: source, "stream": stream_variant, "lr": lr_variant}


def load() -> str:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of runs (read first: existing runs are kept)")
    parser.add_argument("--budget", default="60steps", help="per run: a step budget pairs exactly")
    parser.add_argument("--seeds", type=int, default=16, help="seeds 0..N-1")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    budget = Budget.parse(args.budget)
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {"runs": [], "data": args.data}
    if saved["data"] != args.data:
        sys.exit(f"{out} holds runs on {saved['data']!r}, not {args.data!r}")
    done = {(r["variant"], r["budget"], r["seed"]) for r in saved["runs"]}

    work = Path(tempfile.mkdtemp(prefix="judge-runs-"))
    try:
        target = prepared_target(work / "target", args.data)
        source = (target.root / "train.py").read_text()
        trees = {}
        for name in args.variants:
            tree = work / name
            shutil.copytree(target.root, tree, ignore=shutil.ignore_patterns(".autoresearch", ".git"))
            (tree / "train.py").write_text(VARIANTS[name](source))
            trees[name] = tree
        executor = LocalExecutor(args.device)
        slot = executor.slots()[0]
        runner = Runner(target, executor)
        try:
            for seed in range(args.seeds):
                for name, tree in trees.items():
                    if (name, str(budget), seed) in done:
                        continue
                    started, before = time.time(), load()
                    spec = RunSpec(0, tree, seed, budget, 3600.0, work / "runs" / f"{name}-{budget}-{seed}")
                    record = runner.run(spec, slot)
                    if record.state is not RunState.OK:
                        sys.exit(f"{name} seed {seed}: {record.state.value}: {record.reason}\n{record.log_tail[-2000:]}")
                    saved["runs"].append({"variant": name, "budget": str(budget), "seed": seed,
                                          "metric": record.metric, "steps": record.metrics.get("num_steps"),
                                          "seconds": round(record.seconds, 2), "load": round(before, 2),
                                          "at": round(started)})
                    out.write_text(json.dumps(saved, indent=1))  # after every run: a stopped collection resumes
                    print(f"{budget} seed {seed:3d} {name:8s} val_bpb {record.metric:.5f}  "
                          f"steps {record.metrics.get('num_steps')}  {record.seconds:.0f}s  load {before:.1f}",
                          flush=True)
        finally:
            executor.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
