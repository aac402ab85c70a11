"""The built-in gpt target against a plain nanoGPT-style GPT of the same size (and any other train.py), in one run.

    python benchmarks/vs_nanogpt.py                              # 60s budget, 3 seeds, shakespeare
    python benchmarks/vs_nanogpt.py --budget 300steps --seeds 1 --data stdlib
    python benchmarks/vs_nanogpt.py --nanogpt-lr 1e-3 2e-3 3e-3 6e-3 --only-nanogpt --seeds 3   # the baseline's sweep
    python benchmarks/vs_nanogpt.py --seeds 5 --impl old=git:ed30712^ --against old   # and the hand-written-autograd file
    python benchmarks/vs_nanogpt.py --only ours --impl compiled=ours --set 'compiled:COMPILE=True' --against ours

Makes a fresh target with `autoresearch.target.init`, prepares its data with its prepare command, and sets a
tree beside it for every other implementation: its train.py (benchmarks/nanogpt_train.py for `nanogpt`, the
template for `ours`, a file, or the template's train.py at a git revision with `git:REV`) with the target's
sampler.py and evaluate.py, and the target's train.py as reference_train.py, which nanoGPT reads its model size
from. `--set NAME:CONST=VALUE` changes a constant of one implementation's train.py; `--budget-for NAME=SPEC`
gives one a budget of its own (e.g. eager training for as long as a compiled run takes in all). All train on
the same prepared data through the harness's own Runner and local executor (same scrubbed environment, budget
variables, threads, time limits and compile cache as a session; the cache starts empty in each invocation unless
TORCHINDUCTOR_CACHE_DIR names one, so an implementation's first compiled run compiles from scratch and the later
ones load it), interleaved: every
implementation's seed 0, then seed 1, ... so that drifting machine load hits all alike; the same evaluate.py
scores each. Prints per implementation the mean ± sd and the median of val_bpb, tokens/s, steps, parameters, MFU,
each run's wall time and its overhead beyond the training seconds, the size of its train.py; then each one's
ratios to the nanoGPT-style model (val_bpb by mean and by median, paired gap by seed; throughput). Not a test: it
takes minutes (a run is its budget plus a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from autoresearch.budget import Budget
from autoresearch.executor import LocalExecutor
from autoresearch.records import RunState
from autoresearch.runner import Runner, RunSpec

from matmul_peak import cpu_mfu, fp32_matmul_flops
from prepared_target import TEMPLATE, prepared_target

NANOGPT_TRAIN = Path(__file__).resolve().parent / "nanogpt_train.py"
REPO = TEMPLATE.parents[3]
COLUMNS = [  # (summary key, heading, format)
    ("val_bpb", "val_bpb", "{:.4f}"),
    ("tokens_per_second", "tokens/s", "{:,.0f}"),
    ("num_steps", "steps", "{:,.0f}"),
    ("num_params_M", "params M", "{:.3f}"),
    ("mfu_percent", "MFU %", "{:.1f}"),
    ("wall_seconds", "wall s", "{:.1f}"),
    ("overhead_seconds", "overhead s", "{:.1f}"),
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


def source_of(spec: str) -> str:
    """A train.py's text: `ours` (the template), `nanogpt`, `git:REV` (the template at a revision), or a path."""
    if spec == "ours":
        return (TEMPLATE / "train.py").read_text()
    if spec == "nanogpt":
        return NANOGPT_TRAIN.read_text()
    if spec.startswith("git:"):
        path = (TEMPLATE / "train.py").relative_to(REPO).as_posix()
        done = subprocess.run(["git", "-C", str(REPO), "show", f"{spec[4:]}:{path}"], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"--impl ...={spec}: {done.stderr.strip()}")
        return done.stdout
    return Path(spec).read_text()


def with_constants(source: str, settings: list[str], name: str) -> str:
    for item in settings:
        constant, _, value = item.partition("=")
        source, n = re.subn(rf"^{re.escape(constant)} = .*$", lambda _: f"{constant} = {value}", source,
                            flags=re.MULTILINE)
        if n != 1:
            sys.exit(f"--set {name}:{item}: no constant {constant} in that train.py")
    return source


def set_up(work: Path, data: str, impls: dict[str, str], settings: dict[str, list[str]]):
    """The built-in target with its data prepared, and a tree per implementation beside it."""
    target = prepared_target(work / "target", data)
    trees = {}
    for name, spec in impls.items():
        tree = work / "trees" / name
        tree.mkdir(parents=True)
        for file in ("sampler.py", "evaluate.py"):
            shutil.copyfile(target.root / file, tree / file)
        shutil.copyfile(target.root / "train.py", tree / "reference_train.py")  # nanoGPT's model size
        (tree / "train.py").write_text(with_constants(source_of(spec), settings.get(name, []), name))
        trees[name] = tree
    return target, trees


def race(target, trees: dict[str, Path], budgets: dict[str, Budget], seeds: int, device: str,
         work: Path) -> tuple[dict[str, list[dict]], int]:
    """Each implementation's run summaries, interleaved by seed, and the slot's thread count."""
    executor = LocalExecutor(device)
    slot = executor.slots()[0]
    runner = Runner(target, executor)
    results: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        for seed in range(seeds):
            for name, tree in trees.items():
                budget = budgets[name]
                timeout = target.config.budget.timeout or (2 * budget.value + 300 if budget.kind == "seconds"
                                                           else 3600.0)  # a cold compile on a busy CPU: minutes
                load = os.getloadavg()[0]
                spec = RunSpec(experiment_id=0, worktree=tree, seed=seed, budget=budget, timeout=timeout,
                               directory=work / "runs" / f"{name}-{seed}")
                record = runner.run(spec, slot)
                if record.state is not RunState.OK:
                    print(f"{name} seed {seed}: {record.state.value}: {record.reason}\n{record.log_tail[-2000:]}")
                    sys.exit(1)
                summary = json.loads((spec.directory / "out" / "metrics.json").read_text())
                summary.update(implementation=name, seed=seed, load_before=round(load, 2),
                               wall_seconds=round(record.seconds, 2),
                               overhead_seconds=round(record.seconds - summary["training_seconds"], 2))
                results[name].append(summary)
                print(f"{name:10s} seed {seed}: val_bpb {summary['val_bpb']:.4f} | {summary['tokens_per_second']:,} "
                      f"tok/s | {summary['num_steps']} steps | train {summary['training_seconds']}s | wall "
                      f"{record.seconds:.1f}s (+{summary['overhead_seconds']:.1f}s) | load {load:.2f}", flush=True)
    finally:
        executor.close()
    return results, slot.threads


def report(results: dict[str, list[dict]], info: dict) -> dict:
    print()
    print(f"device: {info['device']} | torch {info['torch']} | python {info['python']} | cpu: {info['cpu']} "
          f"({info['cores']} cores) | budget {info['budget']} | data {info['data']} | seeds {info['seeds']}")
    for name, spec in info["impls"].items():
        extra = " ".join(info["settings"].get(name, [])) + (f" budget {info['budgets'][name]}"
                                                           if info["budgets"][name] != info["budget"] else "")
        print(f"  {name}: {spec} ({info['chars'][name]:,} characters){' | ' + extra if extra.strip() else ''}")
    in_order = sorted(sum(results.values(), []), key=lambda r: r["seed"])
    print(f"load average (1 min) before each run, in run order: {', '.join(str(r['load_before']) for r in in_order)}")
    if info.get("cpu_matmul_gflops"):
        print(f"MFU on the CPU: against the fp32 matmul rate measured here, {info['cpu_matmul_gflops']:.0f} GFLOP/s")
    rows = [["implementation", "chars", *(heading for _, heading, _ in COLUMNS), "median val_bpb"]]
    for name, runs in results.items():
        row = [name, f"{info['chars'][name]:,}"]
        for key, _, fmt in COLUMNS:
            values = [float(r[key]) for r in runs]
            row.append(cell(values, fmt, known=key != "mfu_percent" or all(values)))
        row.append(f"{statistics.median(r['val_bpb'] for r in runs):.4f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(row[0].ljust(widths[0]) if j == 0 else text.rjust(widths[j]) for j, text in enumerate(row)))
        if i == 0:
            print("  ".join("-" * width for width in widths))

    out = {"info": info, "runs": results, "ratios": {}}
    nanos = [name for name in results if info["impls"][name] == "nanogpt"]
    if nanos and len(nanos) < len(results):
        mean_val_bpb = lambda name: statistics.mean(r["val_bpb"] for r in results[name])
        nano = min(nanos, key=mean_val_bpb)  # its best learning rate of the sweep
        print(f"\nagainst {nano} (the nanoGPT-style run with the lowest mean val_bpb here):")
        out["ratios"] = compare(results, nano, [name for name in results if name not in nanos])
    for base in info.get("against", []):
        print(f"\nagainst {base}:")
        out.setdefault("against", {})[base] = compare(results, base, [name for name in results if name != base])
    return out


def compare(results: dict[str, list[dict]], base_name: str, names: list[str]) -> dict[str, dict]:
    """Each named implementation's val_bpb and throughput against one other's, by mean, by median and by seed."""
    mean_of = lambda runs, key: statistics.mean(r[key] for r in runs)
    base = results[base_name]
    ratios = {}
    for name in names:
        runs = results[name]
        gaps = [b["val_bpb"] - r["val_bpb"] for r, b in zip(runs, base)]  # paired by seed
        gap, gap_sd = mean_sd(gaps)
        ratios[name] = one = {
            "val_bpb_by_mean": mean_of(base, "val_bpb") / mean_of(runs, "val_bpb"),
            "val_bpb_by_median": (statistics.median(r["val_bpb"] for r in base)
                                  / statistics.median(r["val_bpb"] for r in runs)),
            "val_bpb_gap": gap, "val_bpb_gap_sd": gap_sd,
            "tokens_per_second": mean_of(runs, "tokens_per_second") / mean_of(base, "tokens_per_second")}
        print(f"  {name:10s} val_bpb {base_name} / {name}: {one['val_bpb_by_mean']:.3f}x by mean, "
              f"{one['val_bpb_by_median']:.3f}x by median | {base_name} - {name}: {gap:+.4f} ± {gap_sd:.4f} "
              f"(paired by seed) | tokens/s {name} / {base_name}: {one['tokens_per_second']:.3f}x")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s", help="per run, as the harness takes it: 60s, 500steps, 2Mtok")
    parser.add_argument("--seeds", type=int, default=3, help="runs per implementation, seeds 0..N-1")
    parser.add_argument("--data", default="shakespeare", help="data source for prepare.py: shakespeare or stdlib")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--impl", action="append", default=[], metavar="NAME=SOURCE",
                        help="another implementation: ours, nanogpt, git:REV (the template's train.py there), a path")
    parser.add_argument("--set", action="append", default=[], metavar="NAME:CONST=VALUE",
                        help="change a constant of one implementation's train.py, e.g. nanogpt:LEARNING_RATE=1e-3")
    parser.add_argument("--nanogpt-set", action="append", default=[], metavar="CONST=VALUE",
                        help="the same as --set nanogpt:CONST=VALUE")
    parser.add_argument("--nanogpt-lr", nargs="+", default=[], metavar="LR",
                        help="race the nanoGPT-style model at each of these learning rates (a sweep) instead of one")
    parser.add_argument("--only-nanogpt", action="store_true", help="leave out the built-in target (a sweep alone)")
    parser.add_argument("--only", choices=("ours", "nanogpt"), help="run one of the two defaults alone")
    parser.add_argument("--budget-for", action="append", default=[], metavar="NAME=SPEC",
                        help="a budget of its own for one implementation")
    parser.add_argument("--against", action="append", default=[], metavar="NAME",
                        help="also compare every other implementation with this one (e.g. today's train.py)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--workdir", help="keep the trees and runs here (default: a temporary directory, removed)")
    args = parser.parse_args()
    try:
        budget = Budget.parse(args.budget)
        budgets_for = {name: Budget.parse(spec) for name, _, spec in (b.partition("=") for b in args.budget_for)}
    except ValueError as e:
        parser.error(str(e))

    impls = {} if args.only_nanogpt or args.only == "nanogpt" else {"ours": "ours"}
    if args.only != "ours":
        impls.update({f"nanogpt@{lr}": "nanogpt" for lr in args.nanogpt_lr} or {"nanogpt": "nanogpt"})
    impls.update(item.split("=", 1) for item in args.impl)
    settings: dict[str, list[str]] = {}
    for item in args.set + [f"nanogpt:{s}" for s in args.nanogpt_set]:
        name, _, setting = item.partition(":")
        for each in (n for n in impls if n == name or (name == "nanogpt" and impls[n] == "nanogpt")):
            settings.setdefault(each, []).append(setting)
    for lr in args.nanogpt_lr:
        settings.setdefault(f"nanogpt@{lr}", []).append(f"LEARNING_RATE={lr}")
    unknown = (set(settings) | set(budgets_for) | set(args.against)) - set(impls)
    if unknown:
        parser.error(f"no implementation named {', '.join(sorted(unknown))}")

    scratch = None if args.workdir else tempfile.mkdtemp(prefix="vs-nanogpt-")
    work = Path(args.workdir or scratch).resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"--workdir {work} is not empty")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "torch-compile"))  # empty: the first compile is cold
    try:
        target, trees = set_up(work, args.data, impls, settings)
        chars = {name: len((tree / "train.py").read_text()) for name, tree in trees.items()}
        budgets = {name: budgets_for.get(name, budget) for name in impls}
        results, threads = race(target, trees, budgets, args.seeds, args.device, work)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    info = {"device": next(iter(results.values()))[0].get("device", args.device), "budget": str(budget),
            "data": args.data, "seeds": args.seeds, "impls": impls, "settings": settings, "chars": chars,
            "budgets": {name: str(b) for name, b in budgets.items()}, "against": args.against, **machine()}
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
