"""Is the loop a good use of compute? The whole loop (the search agent and the statistical judge) against the
reference loop's rule, Optuna TPE and random search, at equal compute, on the built-in GPT target (CPU preset).

    python benchmarks/research_efficiency.py                   # collect (resumable), then the table
    python benchmarks/research_efficiency.py --analyse         # the table from what was collected, no training
    python benchmarks/research_efficiency.py --runs 24 --reps 3 --budget 120steps --test-seeds 3

Design
- Equal compute: each method gets the same number of training runs (--runs) of the same budget (--budget, in steps,
  so that compute is equal and exact whatever the machine's load). Every run counts: the loop's baseline and its
  calibration runs, the confirmations of an implausible jump on the test split, every Optuna trial. A loop session
  is stopped when its runs reach the compute: the run that would go over is recorded interrupted without running,
  and the session stops (its control file) after that experiment.
- Two starts: `tuned`, the template's defaults, and `untuned`, the demo's starting point (demo.UNTUNED: Muon's
  MATRIX_LR 20 times below its default).
- Four methods (by default) over the template's [[knobs]], each repeated --reps times with different seeds:
    stat    autoresearch's `search` agent with the statistical judge, the template's [judge] as shipped: a real
            session assembled as `autoresearch run` assembles it
    plain   the same with [judge] rule = "plain": one run (seed 0), kept when lower (the reference loop's rule)
    tpe     Optuna's TPESampler(seed=rep) run directly: one run per trial (seed 0), the best trial picked
    random  Optuna's RandomSampler(seed=rep), likewise
  and, on request (--methods stat4 quick wide novel), variants of the loop that were tried:
    stat4   stat with [judge] calibrate_seeds = 4 (half the baseline's calibration runs)
    quick   stat4 with [judge] max_runs = 3 (a promising change gets at most 3 runs, not 4)
    wide    stat4 with the search agent moving every knob TPE moves, not the one or two it moves furthest
            (search.MAX_MOVED and SECOND_MOVE set in this process: no setting of the tool)
    novel   stat with the search agent refusing a move within 10% of a knob's range of a value an earlier
            experiment moved the same knobs to from the same best (search.MIN_STEP = 0.1, set likewise)
  The start is the first trial of tpe and random (and is told to the sampler where it lies inside the knobs'
  ranges, as the search agent is told the baseline); the loop's pick is its best commit.
- Scoring: each pick and its start on the held-out test split with fresh seeds (--test-seeds of them: 1000, 1001,
  ...), paired by seed; gain = val_bpb of the start minus that of the pick (positive: better). A pick equal to its
  start scores 0 without runs. Reported per start and method: the gain's mean ± sd over repetitions, the gain the
  method itself believed (on the validation split), and the false keeps: picks that differ from the start and are
  not better than it on the test split.
- Resumable: every finished search and every scoring run is appended to --results (JSON lines) as it comes, with
  the machine's load and the package's commit; a re-run skips what is there (a loop session resumes from its ledger,
  Optuna from its recorded trials).
- Each search, and each scoring of a pick, holds /tmp/autoresearch-bench.lock (flock) while it trains, so it never
  overlaps another benchmark; in between, others may take it.

Not a test: a full collection is ~650 runs (about 2 hours on 2 idle CPU cores at 120 steps).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from autoresearch import assemble, control, knobs as knob_edit, scheduler
from autoresearch.budget import Budget
from autoresearch.demo import UNTUNED
from autoresearch.ledger import Ledger
from autoresearch.records import RunRecord, RunState
from autoresearch.runner import Runner, RunSpec
from autoresearch.target import Target

from prepared_target import prepared_target

LOCK = "/tmp/autoresearch-bench.lock"
STARTS = ("tuned", "untuned")
METHODS = ("stat", "plain", "tpe", "random", "stat4", "quick", "wide", "novel")
DEFAULT_METHODS = METHODS[:4]  # the rest are variants of the loop that were tried, collected on request
SPENT = "the benchmark's compute for this method is spent"
TEST_SEED = 1000  # scoring seeds start here: none of them trains during a search
TIMEOUT = 3600.0  # per run: a steps budget on a machine other jobs load may take many times its idle time
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- bookkeeping


def machine() -> dict:
    """What a figure was measured on: the load and the package's commit."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True)
    return {"load": [round(x, 2) for x in os.getloadavg()], "commit": head.stdout.strip() + ("+" if dirty.stdout.strip()
                                                                                             else ""),
            "at": time.strftime("%Y-%m-%d %H:%M:%S")}


class Results:
    """The results file: JSON lines, appended and flushed one at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
            if path.exists() else []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def find(self, **where) -> list[dict]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in where.items())]


@contextmanager
def bench_lock():
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MeteredExecutor:
    """The local executor, counting runs: once `limit` runs were made, a run is recorded interrupted without running
    and the session is asked to stop (between experiments)."""

    def __init__(self, inner, limit: int, spent: int = 0, state_dir: Optional[Path] = None):
        self.inner, self.limit, self.spent, self.state_dir = inner, limit, spent, state_dir

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, runner, spec, slot) -> RunRecord:
        if self.spent >= self.limit:
            if self.state_dir is not None:
                control.write(self.state_dir, "stop", by="research_efficiency")
            return RunRecord(spec.experiment_id, spec.seed, RunState.INTERRUPTED, None, reason=SPENT)
        record = self.inner.execute(runner, spec, slot)
        self.spent += 1
        if self.spent >= self.limit and self.state_dir is not None:
            control.write(self.state_dir, "stop", by="research_efficiency")
        return record


# ---------------------------------------------------------------------------- targets


def base_target(work: Path, start: str, data: str) -> Path:
    """The built-in target at `start`, prepared once and copied for every search: the template's [judge], a hard
    limit that a loaded machine never reaches, no held-out test at a session's end (the benchmark scores)."""
    root = work / f"base-{start}"
    if (root / ".autoresearch" / "data").is_dir():
        return root
    shutil.rmtree(root, ignore_errors=True)
    target = prepared_target(root, data)
    source = (root / "train.py").read_text()
    if start == "untuned":
        for name, value in UNTUNED.items():
            source = knob_edit.set_value(source, name, value)
    (root / "train.py").write_text(source)
    text = (root / "autoresearch.toml").read_text()
    text = text.replace("[budget]\n", f"[budget]\ntimeout = {TIMEOUT:g}\n", 1)
    text = re.sub(r"^final_test_seeds = \d+", "final_test_seeds = 0", text, flags=re.MULTILINE)
    (root / "autoresearch.toml").write_text(text)
    target.git.commit_all(f"research_efficiency: the {start} start")
    return root


def start_knobs(root: Path) -> dict:
    target = Target.open(root)
    source = (root / "train.py").read_text()
    return {k.name: knob_edit.get(k, source) for k in target.config.knobs}


def key(values: dict) -> str:
    return json.dumps({k: knob_edit.format_value(v) for k, v in sorted(values.items())})


# ---------------------------------------------------------------------------- the loop's rules

CALIBRATE_4 = [(r"^calibrate_seeds = \d+", "calibrate_seeds = 4")]
LOOP_VARIANTS = {  # method: the [judge] lines of the template it changes, as (pattern, replacement)
    "plain": [(r'^rule = "statistical"', 'rule = "plain"')],
    "stat4": CALIBRATE_4,
    "quick": CALIBRATE_4 + [(r"^max_runs = \d+", "max_runs = 3")],
    "wide": CALIBRATE_4,
}
SEARCH_VARIANTS = {"wide": {"MAX_MOVED": 1000, "SECOND_MOVE": 0.0},  # method: the search agent's constants it sets
                   "novel": {"MIN_STEP": 0.1}}


@contextmanager
def search_constants(method: str):
    """The search agent's module constants as `method` wants them, for the length of its session."""
    from autoresearch.agents import search

    wanted = SEARCH_VARIANTS.get(method, {})
    before = {name: getattr(search, name) for name in wanted}
    for name, value in wanted.items():
        setattr(search, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(search, name, value)


def loop_search(base: Path, unit: Path, method: str, rep: int, runs: int, budget: Budget, log: Callable) -> dict:
    """A real session of the search agent on a copy of the start, until its runs reach `runs`; its best's knobs."""
    if not (unit / "autoresearch.toml").exists():
        shutil.rmtree(unit, ignore_errors=True)
        shutil.copytree(base, unit, ignore=shutil.ignore_patterns("worktrees", "runs", "ledger.sqlite*"))
        if method in LOOP_VARIANTS:
            text = (unit / "autoresearch.toml").read_text()
            for pattern, replacement in LOOP_VARIANTS[method]:
                text, changed = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
                if not changed:
                    raise SystemExit(f"research_efficiency: the template's [judge] has no line {pattern!r}")
            (unit / "autoresearch.toml").write_text(text)
            Target.open(unit).git.commit_all(f"research_efficiency: the {method} variant of the loop")
    target = Target.open(unit)
    tag = f"{method}-r{rep}"
    spent = _runs_made(target, tag)
    if spent < runs:
        executor = MeteredExecutor(assemble.executor("local", "cpu"), runs, spent, target.state)
        agent = assemble.agent(target, "search")
        with search_constants(method), assemble.opened(target, agent, "search", executor, tag=tag, budget=budget,
                                                        say=log) as session:
            scheduler.run(session, None, final_test=False)
        made = _runs_made(target, tag)
        if made < runs:  # the session was stopped (Ctrl-C) before its compute was spent: no result, resume later
            raise SystemExit(f"research_efficiency: {unit.name} stopped after {made} of its {runs} runs; nothing "
                             f"recorded for it: run the same command again to go on from there")
    ledger = Ledger(target.ledger_path)
    try:
        best, baseline = ledger.best(tag), ledger.baseline(tag)
        experiments = ledger.experiments(tag)
        states = [e.state.value for e in experiments]
        return {"pick": best.knobs, "start_values": baseline.knobs, "val_pick": best.metric, "val_start": baseline.metric,
                "runs": _runs_made(target, tag), "experiments": len(experiments) - 1,
                "kept": states.count("kept"), "trajectory": [[e.index, e.state.value, e.metric, e.description]
                                                             for e in experiments]}
    finally:
        ledger.close()


def _runs_made(target: Target, tag: str) -> int:
    """Runs that trained on this line: the experiments' and the verifications' (test-split confirmations)."""
    if not target.ledger_path.exists():
        return 0
    ledger = Ledger(target.ledger_path)
    try:
        (experiment_runs,) = ledger.db.execute(
            "SELECT COUNT(*) FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE e.tag = ? AND r.reason != ?",
            (tag, SPENT)).fetchone()
        (check_runs,) = ledger.db.execute(
            "SELECT COUNT(*) FROM verification_runs r JOIN verifications v ON v.id = r.verification_id "
            "WHERE v.tag = ? AND r.reason != ?", (tag, SPENT)).fetchone()
        return experiment_runs + check_runs
    finally:
        ledger.close()


# ---------------------------------------------------------------------------- Optuna run directly


class Trainer:
    """Runs of a start's code with given knob values, through the harness's runner (the same jail, limits and
    evaluator as a session's runs), in a scratch copy of the target's files."""

    def __init__(self, base: Path, scratch: Path, budget: Budget):
        self.target = Target.open(base)
        self.scratch, self.budget = scratch, budget
        self.source = {k.file: (base / k.file).read_text() for k in self.target.config.knobs}
        if not scratch.is_dir():
            shutil.copytree(base, scratch, ignore=shutil.ignore_patterns(".git", ".autoresearch"))
        self.executor = assemble.executor("local", "cpu")
        self.slot = self.executor.slots()[0]

    def run(self, values: dict, seed: int, split: str, name: str) -> RunRecord:
        files = dict(self.source)
        for k in self.target.config.knobs:
            files[k.file] = knob_edit.put(k, files[k.file], values[k.name])
        for path, text in files.items():
            (self.scratch / path).write_text(text)
        spec = RunSpec(0, self.scratch, seed, self.budget, TIMEOUT, self.scratch.parent / "runs" / name, split=split)
        return self.executor.execute(Runner(self.target, self.executor), spec, self.slot)

    def close(self) -> None:
        self.executor.close()


def optuna_search(base: Path, unit: Path, method: str, rep: int, runs: int, budget: Budget, results: Results,
                  where: dict, log: Callable) -> dict:
    """Optuna's sampler over the [[knobs]], one run (seed 0) per trial, the start first; the best trial's knobs."""
    import optuna
    from autoresearch.agents.search import _distribution, _within

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = Target.open(base).config
    distributions = {k.name: _distribution(k) for k in config.knobs}
    sampler = optuna.samplers.TPESampler(seed=rep) if method == "tpe" else optuna.samplers.RandomSampler(seed=rep)
    study = optuna.create_study(direction=config.metric.goal, sampler=sampler)
    start = start_knobs(base)

    def tell(values: dict, metric: Optional[float], trial=None) -> None:
        state = optuna.trial.TrialState.COMPLETE if metric is not None else optuna.trial.TrialState.FAIL
        if trial is not None:
            study.tell(trial, metric, state=state)
        elif all(_within(k, values[k.name]) for k in config.knobs):  # the start, or a trial recorded before a resume
            study.add_trial(optuna.trial.create_trial(params=values, distributions=distributions, state=state,
                                                      value=metric))

    trials = [(r["values"], r["metric"]) for r in sorted(results.find(kind="trial", **where), key=lambda r: r["index"])]
    for values, metric in trials:
        tell(values, metric)
    trainer = Trainer(base, unit / "tree", budget)
    try:
        while len(trials) < runs:
            trial = study.ask(distributions) if trials else None
            values = {**start, **trial.params} if trial is not None else start
            record = trainer.run(values, 0, "val", f"trial{len(trials):03d}")
            metric = record.metric if record.state is RunState.OK else None
            results.add({"kind": "trial", **where, "index": len(trials), "values": values, "metric": metric,
                         "state": record.state.value, "seconds": record.seconds, **machine()})
            trials.append((values, metric))
            tell(values, metric, trial)
            log(f"trial {len(trials) - 1}: {metric if metric is not None else record.state.value}  {key(values)}")
    finally:
        trainer.close()
    finished = [(v, m) for v, m in trials if m is not None]
    best = min(finished, key=lambda t: t[1] if config.minimize else -t[1])
    return {"pick": best[0], "start_values": start, "val_pick": best[1], "val_start": trials[0][1], "runs": len(trials),
            "experiments": len(trials) - 1, "kept": int(key(best[0]) != key(start)),
            "trajectory": [[i, None, m, key(v)] for i, (v, m) in enumerate(trials)]}


# ---------------------------------------------------------------------------- scoring on the test split


def score(base: Path, work: Path, start: str, values: dict, seeds: list[int], budget: Budget, results: Results,
          log: Callable) -> None:
    """Test-split runs of `values` on the start's code with `seeds`, those not yet recorded."""
    wanted = [s for s in seeds if not results.find(kind="score", start=start, values=key(values), seed=s,
                                                   budget=str(budget))]
    if not wanted:
        return
    trainer = Trainer(base, work / f"score-{start}" / "tree", budget)
    try:
        for seed in wanted:
            record = trainer.run(values, seed, "test", f"{zlib.crc32(key(values).encode()):08x}-seed{seed}")
            metric = record.metric if record.state is RunState.OK else None
            results.add({"kind": "score", "start": start, "values": key(values), "seed": seed, "budget": str(budget),
                         "metric": metric, "state": record.state.value, "seconds": record.seconds, **machine()})
            log(f"score {start} seed {seed}: {metric}  {key(values)}")
    finally:
        trainer.close()


# ---------------------------------------------------------------------------- the table


def analyse(results: Results, runs: int, budget: Budget, seeds: list[int], reps: int) -> str:
    """The results table (markdown) from the collected rows of this design."""
    lines = [f"Design: {runs} runs of {budget} per search, {reps} repetitions, test split with seeds {seeds}; "
             "gain = test val_bpb of the start minus that of the pick (positive: better), paired by seed.", "",
             "| start | method | test gain, mean ± sd over reps | per repetition | gain it believed (validation) "
             "| false keeps | experiments per search (kept) | runs per search |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for start in STARTS:
        for method in METHODS:
            rows = sorted(results.find(kind="search", start=start, method=method, runs_cap=runs, budget=str(budget)),
                          key=lambda r: r["rep"])[:reps]
            if not rows:
                continue
            gains, believed, false_keeps, complete = [], [], 0, True
            for row in rows:
                gain = test_gain(results, row, seeds, budget)
                if gain is None:
                    complete = False
                    continue
                gains.append(gain)
                if key(row["pick"]) != key(row["start_values"]) and gain <= 0:
                    false_keeps += 1
                if row["val_pick"] is not None and row["val_start"] is not None:
                    believed.append(row["val_start"] - row["val_pick"])
            mean = f"{statistics.fmean(gains):+.4f}" if gains else "-"
            sd = f" ± {statistics.stdev(gains):.4f}" if len(gains) > 1 else ""
            each = ", ".join(f"{g:+.3f}" for g in gains) + ("" if complete else " (scoring unfinished)")
            told = f"{statistics.fmean(believed):+.4f}" if believed else "-"
            experiments = statistics.fmean(r["experiments"] for r in rows)
            kept = statistics.fmean(r["kept"] for r in rows)
            used = statistics.fmean(r["runs"] for r in rows)
            lines.append(f"| {start} | {method} | {mean}{sd} | {each} | {told} | {false_keeps} of {len(gains)} | "
                         f"{experiments:.1f} ({kept:.1f}) | {used:.1f} |")
    loads = [r["load"][0] for r in results.rows if "load" in r]
    commits = sorted({r["commit"] for r in results.rows if r.get("commit")})
    if loads:
        lines += ["", f"Load average (1 min) while measuring: {min(loads):.1f}-{max(loads):.1f} (median "
                      f"{statistics.median(loads):.1f}); package commits: {', '.join(commits)}."]
    return "\n".join(lines)


def test_gain(results: Results, row: dict, seeds: list[int], budget: Budget) -> Optional[float]:
    """The pick's paired gain over its start on the test split, or None while a run is missing."""
    if key(row["pick"]) == key(row["start_values"]):
        return 0.0  # the same code: nothing was kept
    diffs = []
    for seed in seeds:
        found = {}
        for role in ("start_values", "pick"):
            hits = results.find(kind="score", start=row["start"], values=key(row[role]), seed=seed,
                                budget=str(budget))
            if not hits:
                return None
            found[role] = hits[-1]["metric"]
        if found["start_values"] is not None and found["pick"] is not None:
            diffs.append(found["start_values"] - found["pick"])
    return statistics.fmean(diffs) if diffs else None


# ---------------------------------------------------------------------------- collecting


def collect(args, results: Results) -> None:
    work = Path(args.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    budget = args.budget
    seeds = [TEST_SEED + i for i in range(args.test_seeds)]
    bases = {start: base_target(work, start, args.data) for start in args.starts}
    for rep in range(args.reps):  # repetition-major: a partial collection is balanced across methods
        for start in args.starts:
            base = bases[start]
            logfile = open(work / "logs" / f"{start}-score.txt", "a")
            say = _logger(logfile, f"{start} score")
            with bench_lock():
                score(base, work, start, start_knobs(base), seeds, budget, results, say)
            for method in args.methods:
                where = {"start": start, "method": method, "rep": rep, "runs_cap": args.runs, "budget": str(budget)}
                if not results.find(kind="search", **where):
                    unit = work / "units" / f"{start}-{method}-r{rep}-{args.runs}x{budget}"
                    with open(work / "logs" / f"{unit.name}.txt", "a") as handle:
                        log = _logger(handle, f"{start} {method} r{rep}")
                        with bench_lock():
                            began = machine()
                            if method in ("stat", *LOOP_VARIANTS, *SEARCH_VARIANTS):
                                outcome = loop_search(base, unit, method, rep, args.runs, budget, log)
                            else:
                                outcome = optuna_search(base, unit, method, rep, args.runs, budget, results, where,
                                                        log)
                    results.add({"kind": "search", **where, **outcome, "began": began,
                                 **machine()})
                    print(f"{start} {method} r{rep}: pick {key(outcome['pick'])} after {outcome['runs']} runs "
                          f"(validation {outcome['val_start']} -> {outcome['val_pick']})", flush=True)
                row = results.find(kind="search", **where)[-1]
                if key(row["pick"]) != key(row["start_values"]):
                    with bench_lock():
                        score(base, work, start, row["pick"], seeds, budget, results, say)
            logfile.close()


def _logger(handle, prefix: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        handle.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        handle.flush()
        if message.startswith("#") or message.startswith("trial") or message.startswith("score"):
            print(f"  [{prefix}] {message.splitlines()[0][:150]}", flush=True)
    return say


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/autoresearch-bench/research_efficiency",
                        help="targets, runs and logs (default: %(default)s)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("research_efficiency.jsonl")),
                        help="the collected results, JSON lines (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=24, help="training runs per search (default: 24)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per start and method (default: 3)")
    parser.add_argument("--budget", type=Budget.parse, default=Budget.parse("120steps"),
                        help="per-run budget, in steps (default: 120steps)")
    parser.add_argument("--test-seeds", type=int, default=3, help="fresh seeds of the test-split scoring (default: 3)")
    parser.add_argument("--data", default="shakespeare", help="data source (default: shakespeare)")
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    parser.add_argument("--analyse", action="store_true", help="only the table, from --results")
    args = parser.parse_args()
    if args.budget.kind != "steps":
        parser.error("--budget must be in steps: a seconds budget makes compute depend on the machine's load")
    results = Results(Path(args.results))
    if not args.analyse:
        collect(args, results)
    print(analyse(results, args.runs, args.budget, [TEST_SEED + i for i in range(args.test_seeds)], args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
