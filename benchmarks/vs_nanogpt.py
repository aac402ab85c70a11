"""The built-in gpt target against a plain nanoGPT-style GPT of the same size, side by side in one run.

    python benchmarks/vs_nanogpt.py                              # 60s budget, 3 seeds, shakespeare
    python benchmarks/vs_nanogpt.py --budget 300steps --seeds 1 --data stdlib
    python benchmarks/vs_nanogpt.py --json results.json
    python benchmarks/vs_nanogpt.py --only nanogpt --nanogpt-set 'LEARNING_RATE=2e-3' --seeds 1   # tune the baseline

Makes a fresh target with `autoresearch.target.init`, prepares its data with its prepare command,
and sets a second tree beside it whose train.py is benchmarks/nanogpt_train.py (with the target's
sampler.py and evaluate.py, and the target's train.py as reference_train.py, which it reads its
model size from). Both train on the same prepared data through the harness's own Runner and local
executor (same scrubbed environment, budget variables, threads and time limits as a session),
interleaved: ours seed 0, nanoGPT seed 0, ours seed 1, ... so that drifting machine load hits
both alike; the same evaluate.py scores each. Prints per implementation the mean ± sd of
val_bpb, tokens/s, steps and parameters (MFU where the device's peak is known), then the ratios:
throughput ours / nanoGPT and val_bpb nanoGPT / ours. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from autoresearch import target as target_module
from autoresearch.budget import Budget
from autoresearch.executor import LocalExecutor
from autoresearch.records import RunState
from autoresearch.runner import Runner, RunSpec

from matmul_peak import cpu_mfu, fp32_matmul_flops
from prepared_target import prepared_target

NANOGPT_TRAIN = Path(__file__).resolve().parent / "nanogpt_train.py"
IMPLEMENTATIONS = ("ours", "nanogpt")
COLUMNS = [  # (summary key, heading, format)
    ("val_bpb", "val_bpb", "{:.4f}"),
    ("tokens_per_second", "tokens/s", "{:,.0f}"),
    ("num_steps", "steps", "{:,.0f}"),
    ("total_tokens_M", "tokens M", "{:.3f}"),
    ("num_params_M", "params M", "{:.3f}"),
    ("mfu_percent", "MFU %", "{:.2f}"),
]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float], fmt: str, known: bool = True) -> str:
    if not known:
        return "n/a"
    mean, sd = mean_sd(values)
    return f"{fmt.format(mean)} ± {fmt.format(sd)}" if len(values) > 1 else fmt.format(mean)


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ----------------------------------------------------------------------------


def set_up(work: Path, data: str, nanogpt_set: list[str]) -> tuple[target_module.Target, dict[str, Path]]:
    """The built-in target with its data prepared, and the nanoGPT tree beside it (constants changed by NAME=VALUE)."""
    target = prepared_target(work / "ours", data)
    ours = target.root
    nano = work / "nanogpt"
    nano.mkdir()
    for name in ("sampler.py", "evaluate.py"):
        shutil.copyfile(ours / name, nano / name)
    shutil.copyfile(ours / "train.py", nano / "reference_train.py")
    source = NANOGPT_TRAIN.read_text()
    for item in nanogpt_set:
        name, _, value = item.partition("=")
        source, n = re.subn(rf"^{re.escape(name)} = .*$", lambda _: f"{name} = {value}", source, flags=re.MULTILINE)
        if n != 1:
            sys.exit(f"--nanogpt-set {item}: no constant {name} in {NANOGPT_TRAIN.name}")
    (nano / "train.py").write_text(source)
    return target, {"ours": ours, "nanogpt": nano}


def race(target, trees: dict[str, Path], budget: Budget, seeds: int, device: str, work: Path,
         names: tuple[str, ...] = IMPLEMENTATIONS) -> tuple[dict[str, list[dict]], int]:
    """Each implementation's run summaries, interleaved by seed, and the slot's thread count."""
    executor = LocalExecutor(device)
    slot = executor.slots()[0]
    runner = Runner(target, executor)
    timeout = target.config.budget.timeout or (2 * budget.value + 60 if budget.kind == "seconds" else 3600.0)
    print(f"slot {slot.name}: device {slot.device}, {slot.threads} threads | hard limit {timeout:.0f}s per command",
          flush=True)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for seed in range(seeds):
        for name in names:
            load = os.getloadavg()[0]
            spec = RunSpec(experiment_id=0, worktree=trees[name], seed=seed, budget=budget, timeout=timeout,
                           directory=work / "runs" / f"{name}-{seed}")
            record = runner.run(spec, slot)
            if record.state is not RunState.OK:
                print(f"{name} seed {seed}: {record.state.value}: {record.reason}\n{record.log_tail[-2000:]}")
                sys.exit(1)
            summary = json.loads((spec.directory / "out" / "metrics.json").read_text())
            summary.update(implementation=name, seed=seed, load_before=round(load, 2),
                           wall_seconds=round(record.seconds, 1))
            results[name].append(summary)
            print(f"{name:8s} seed {seed}: val_bpb {summary['val_bpb']:.4f} | {summary['tokens_per_second']:,} tok/s | "
                  f"{summary['num_steps']} steps | train {summary['training_seconds']}s | wall {record.seconds:.0f}s | "
                  f"load {load:.2f}", flush=True)
    return results, slot.threads


def report(results: dict[str, list[dict]], info: dict) -> dict:
    print()
    print(f"device: {info['device']} | torch {info['torch']} | python {info['python']} | cpu: {info['cpu']} "
          f"({info['cores']} cores) | budget {info['budget']} | data {info['data']} | seeds {info['seeds']}"
          + (f" | nanoGPT overrides {' '.join(info['nanogpt_set'])}" if info['nanogpt_set'] else ""))
    in_order = sorted(sum(results.values(), []), key=lambda r: (r["seed"], r["implementation"] != "ours"))
    print(f"load average (1 min) before each run, in run order: {', '.join(str(r['load_before']) for r in in_order)}")
    if info.get("cpu_matmul_gflops"):
        print(f"MFU on the CPU: against the fp32 matmul rate measured here, {info['cpu_matmul_gflops']:.0f} GFLOP/s")
    rows = [["implementation", *(heading for _, heading, _ in COLUMNS)]]
    for name, runs in results.items():
        row = [{"ours": "ours (built-in)", "nanogpt": "nanoGPT-style"}[name]]
        for key, _, fmt in COLUMNS:
            values = [float(r[key]) for r in runs]
            row.append(cell(values, fmt, known=key != "mfu_percent" or all(values)))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(row[0].ljust(widths[0]) if j == 0 else text.rjust(widths[j]) for j, text in enumerate(row)))
        if i == 0:
            print("  ".join("-" * width for width in widths))

    if len(results) < 2:
        return {"info": info, "runs": results}
    ours, nano = results["ours"], results["nanogpt"]
    speed = (statistics.mean(r["tokens_per_second"] for r in ours)
             / statistics.mean(r["tokens_per_second"] for r in nano))
    bpb_ratio = statistics.mean(r["val_bpb"] for r in nano) / statistics.mean(r["val_bpb"] for r in ours)
    gaps = [n["val_bpb"] - o["val_bpb"] for o, n in zip(ours, nano)]  # paired by seed
    gap, gap_sd = mean_sd(gaps)
    print()
    print(f"throughput ratio (tokens/s ours / nanoGPT): {speed:.3f}x  -> ours is "
          f"{'faster' if speed > 1 else 'slower'} per token")
    print(f"val_bpb ratio (nanoGPT / ours): {bpb_ratio:.3f}x | val_bpb nanoGPT - ours: {gap:+.4f} ± {gap_sd:.4f} "
          f"(paired by seed)  -> ours is {'better' if gap > 0 else 'worse'}")
    return {"info": info, "runs": results, "tokens_per_second_ratio": speed, "val_bpb_ratio": bpb_ratio,
            "val_bpb_gap": gap, "val_bpb_gap_sd": gap_sd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s", help="per run, as the harness takes it: 60s, 500steps, 2Mtok")
    parser.add_argument("--seeds", type=int, default=3, help="runs per implementation, seeds 0..N-1")
    parser.add_argument("--data", default="shakespeare", help="data source for prepare.py: shakespeare or stdlib")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--only", choices=IMPLEMENTATIONS, help="run one implementation alone (no ratios)")
    parser.add_argument("--nanogpt-set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a constant of nanogpt_train.py, e.g. LEARNING_RATE=1e-3")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--workdir", help="keep the trees and runs here (default: a temporary directory, removed)")
    args = parser.parse_args()
    try:
        budget = Budget.parse(args.budget)
    except ValueError as e:
        parser.error(str(e))

    scratch = None if args.workdir else tempfile.mkdtemp(prefix="vs-nanogpt-")
    work = Path(args.workdir or scratch).resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"--workdir {work} is not empty")
    try:
        target, trees = set_up(work, args.data, args.nanogpt_set)
        results, threads = race(target, trees, budget, args.seeds, args.device, work,
                                (args.only,) if args.only else IMPLEMENTATIONS)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    info = {"device": next(iter(results.values()))[0].get("device", args.device), "budget": str(budget),
            "data": args.data, "seeds": args.seeds, "nanogpt_set": args.nanogpt_set, **machine()}
    if info["device"] == "cpu":  # no datasheet peak: MFU against what this CPU's matmul reaches
        peak = fp32_matmul_flops(threads)
        info["cpu_matmul_gflops"] = round(peak / 1e9, 1)
        for run in sum(results.values(), []):
            run["mfu_percent"] = round(cpu_mfu(run, peak), 2)
    out = report(results, info)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
