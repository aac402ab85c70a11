"""Measure the built-in gpt target on this machine: val_bpb, tokens/s and MFU after a fixed budget, per seed.

    python benchmarks/gpt_target.py                       # 60 s budget, seeds 0 1 2, shakespeare, best device
    python benchmarks/gpt_target.py --device cpu --budget 20s --seeds 0
    python benchmarks/gpt_target.py --set DEPTH=3 --set MATRIX_LR=0.03
    python benchmarks/gpt_target.py --set 'BATCH_SIZE={"cuda": 128}' --budget 200steps   # a preset's throughput
    python benchmarks/gpt_target.py --train path/to/edited/train.py

Copies the template into a scratch worktree (constants changed textually with --set), prepares the
data once, then runs train.py and evaluate.py one run at a time, as the harness would, and prints
one line per run plus the mean and spread of val_bpb. Not a test: it takes minutes.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from autoresearch.runner import MALLOC_TUNING  # a harness run's allocator settings
from matmul_peak import cpu_mfu, fp32_matmul_flops
from prepared_target import TEMPLATE

SRC = TEMPLATE.parents[2]


def run(cmd, env, cwd):
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s", help="e.g. 60s, 500steps, 2Mtok")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--threads", default="2", help="CPU threads (the CPU preset is measured with 2)")
    parser.add_argument("--train", help="use this train.py instead of the template's")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a train.py constant")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "autoresearch-gpt-target"))
    args = parser.parse_args()

    work = Path(args.workdir)
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(TEMPLATE, tree)
    train_py = tree / "train.py"
    source = Path(args.train).read_text() if args.train else train_py.read_text()
    for item in args.set:
        name, value = item.split("=", 1)
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", source, flags=re.MULTILINE)
        if n != 1:
            sys.exit(f"--set {item}: no constant {name} in train.py")
    train_py.write_text(source)

    number, scale, unit = re.fullmatch(r"([\d.]+)([kMG]?)(s|steps|tok)", args.budget).groups()
    value = float(number) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[scale]
    kind = {"s": "SECONDS", "steps": "STEPS", "tok": "TOKENS"}[unit]
    env = {**MALLOC_TUNING, **os.environ, "PYTHONPATH": str(SRC), "AUTORESEARCH_DEVICE": args.device, "AUTORESEARCH_THREADS": args.threads,
           "AUTORESEARCH_DATA": str(work / "data" / args.data), "AUTORESEARCH_BUDGET": args.budget,
           f"AUTORESEARCH_BUDGET_{kind}": f"{value:g}"}
    run([sys.executable, "prepare.py", "--data", args.data], env, tree)

    print(f"budget {args.budget} | data {args.data} | device {args.device} | threads {args.threads} | "
          f"overrides {args.set or 'none'}")
    scores, peak = [], None
    for seed in args.seeds:
        out = work / f"out-{seed}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        run_env = {**env, "AUTORESEARCH_SEED": str(seed), "AUTORESEARCH_OUT": str(out)}
        run([sys.executable, "train.py"], {**run_env, "AUTORESEARCH_DATA": str(work / "data" / args.data / "train")}, tree)
        run([sys.executable, "evaluate.py"], {**run_env, "AUTORESEARCH_SPLIT": "val"}, tree)
        m = json.loads((out / "metrics.json").read_text())
        scores.append(m["val_bpb"])
        if m["device"] == "cpu":  # no datasheet peak: MFU against what this CPU's matmul reaches
            if peak is None:
                peak = fp32_matmul_flops(int(args.threads))
                print(f"MFU on the CPU: against the fp32 matmul rate measured here, {peak / 1e9:.0f} GFLOP/s")
            m["mfu_percent"] = round(cpu_mfu(m, peak), 2)
        mfu = f"{m['mfu_percent']}%" if m["mfu_percent"] else "n/a"  # n/a where the device's peak is unknown
        print(f"seed {seed}: val_bpb {m['val_bpb']:.4f} | params {m['num_params_M']}M | steps {m['num_steps']} | "
              f"tokens {m['total_tokens_M']}M | {m['tokens_per_second']:,} tok/s | MFU {mfu} | "
              f"peak {m['peak_memory_mb']:,.0f} MB | {m['device']} | train {m['training_seconds']}s | "
              f"total {m['total_seconds']}s | eval {m['eval_seconds']}s", flush=True)
    if len(scores) > 1:
        print(f"val_bpb mean {statistics.mean(scores):.4f} | stdev {statistics.stdev(scores):.4f} | "
              f"range {max(scores) - min(scores):.4f}")


if __name__ == "__main__":
    main()
