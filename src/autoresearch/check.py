"""`autoresearch check`: a dry run of a target's commands at a tiny budget, and what to change.

    autoresearch check [--budget 10s]

It reads `autoresearch.toml` and the knobs from the committed files, probes the jail, prepares the
data if that was never done, then runs the committed code twice (seeds 0 and 1) exactly as a
session would (the same runner, sandbox and limits) in a worktree of its own, and reports: the
metric and its value, each run's time against its budget, the knob values, whether the seed
changes anything, whether the runs were isolated. Each problem comes with what to change in
`autoresearch.toml` (or in the code). Nothing is recorded in the ledger; the runs' logs are kept in
`.autoresearch/check/`. Exit status 0: ready for `autoresearch run`; 1: something to fix first.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import knobs as knob_values, sandbox
from .budget import Budget
from .config import Config
from .records import RunRecord, RunState
from .target import Target

SEEDS = (0, 1)
TINY = {"seconds": 5, "steps": 20, "tokens": 50_000}  # the check's budget, at most, in the target's own unit
SEED_HELP = ("pass it to the code: in Python, `torch.manual_seed(int(os.environ.get(\"AUTORESEARCH_SEED\", 0)))` "
             "(and the same for numpy and random, and for the order of the data); or, where the training script "
             "takes a flag, in [commands]: train = \"python train.py --seed $AUTORESEARCH_SEED\"")


def tiny_budget(config: Config) -> Budget:
    """The target's default budget, cut to TINY: a dry run, in the unit the target's commands expect."""
    default = config.default_budget()
    return Budget(default.kind, min(default.value, TINY[default.kind]))


def seed_ignored_message(value: float, runs: int, name: str) -> str:
    """The one plain-words warning for a metric that does not move with the seed."""
    return (f"{name} is exactly the same ({value:.6g}) for {runs} different seeds: the training does not use "
            "AUTORESEARCH_SEED, so the noise of initialisation and data order is never measured and every decision "
            "rests on one run, which may keep a change that only looked better by chance. To measure it, "
            + SEED_HELP)


@dataclass
class Report:
    """What the check found: facts (shown as they are) and problems (each with what to change)."""

    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"  {fact}" for fact in self.facts]
        if self.problems:
            lines += ["", f"{len(self.problems)} problem{'s' * (len(self.problems) > 1)} to fix before "
                      "`autoresearch run`:"] + [f"  {i}. {p}" for i, p in enumerate(self.problems, 1)]
        else:
            lines += ["", "ready: `autoresearch run` (add --agent claude, openai, ... for an LLM agent)"]
        return "\n".join(lines)


def check(target: Target, budget: Budget, say: Callable[[str], None] = print) -> Report:
    """Check `target` with two runs at `budget`; `say` reports progress."""
    config, report = target.config, Report()
    commit = _git(target, report)
    if commit is None:
        return report
    _files(target, config, commit, report)
    _jail(config, report)
    if not _prepared(target, report, say):
        return report
    runs = _runs(target, commit, budget, report, say)
    ok = [run for run in runs if run.state is RunState.OK]
    if len(ok) == len(SEEDS):
        values = [run.metric for run in ok]
        if max(values) - min(values) <= 1e-12 * max(1.0, abs(values[0])):
            report.problems.append(seed_ignored_message(values[0], len(values), config.metric.name))
        else:
            report.facts.append(f"seed: changes {config.metric.name} ({', '.join(f'{v:.6g}' for v in values)} "
                                f"for seeds {', '.join(map(str, SEEDS))}): the noise can be measured")
    return report


def _git(target: Target, report: Report) -> Optional[str]:
    git = target.git
    if not git.is_repo():
        report.problems.append(f"{target.root} is not a git repository: `git init && git add -A && git commit -m "
                               "start` (research starts from a commit)")
        return None
    commit = git.resolve("HEAD")
    if commit is None:
        report.problems.append("the repository has no commit yet: commit the target first")
        return None
    report.facts.append(f"commit: {commit[:9]} ({git.run('log', '-1', '--format=%s').strip()})")
    git.exclude(f"/{target.state.name}/")  # as a session does: git status stays clean
    return commit


def _files(target: Target, config: Config, commit: str, report: Report) -> None:
    from . import scope

    tracked = [p for p in target.git.run("ls-tree", "-r", "--name-only", commit).splitlines() if p]
    editable = [p for p in tracked if scope.matches(p, config.files.editable) and not scope.is_protected(p, config)]
    if editable:
        report.facts.append(f"editable: {', '.join(editable[:8])}{' ...' if len(editable) > 8 else ''}")
    else:
        report.problems.append(f"no committed file matches [files] editable = {config.files.editable}: name the "
                               "files the agent may change (globs relative to the repository root)")
    dirty = [p for p in target.git.dirty_paths() if scope.matches(p, (*config.files.editable, *config.files.protected))]
    if dirty:
        report.problems.append(f"uncommitted changes in {', '.join(dirty)}: the check and the research run the "
                               "committed code, so commit them first")
    texts: dict[str, str] = {}
    for knob in config.knobs:
        if knob.file not in texts:
            texts[knob.file] = target.git.run("show", f"{commit}:{knob.file}", check=False)
        where = f"flag {knob.flag}" if knob.flag else f"key {knob.key}" if knob.key else knob.name
        try:
            value = knob_values.get(knob, texts[knob.file])
        except (knob_values.KnobError, SyntaxError) as exc:
            report.problems.append(f"knob {knob.name} ({where} in {knob.file}): {exc}; fix its [[knobs]] entry "
                                   "(file, key or flag) or the file")
            continue
        inside = knob.type == "choice" and value in (knob.choices or ()) or (
            knob.type != "choice" and isinstance(value, (int, float)) and knob.low <= value <= knob.high)
        report.facts.append(f"knob {knob.name} = {knob_values.format_value(value)} ({where} in {knob.file})"
                            + ("" if inside else f"; outside its range {_range(knob)}: the search will move it in"))


def _range(knob) -> str:
    return str(knob.choices) if knob.type == "choice" else f"[{knob.low:g}, {knob.high:g}]"


def _jail(config: Config, report: Report) -> None:
    if config.sandbox.isolate == "off":
        report.facts.append('jail: off ([sandbox] isolate = "off"): runs are not isolated')
        return
    reason = sandbox.unavailable()
    if reason is None:
        report.facts.append("jail: works here (no network, the target read-only, held-out data hidden)")
    elif config.sandbox.isolate == "required":
        report.problems.append(f'jail: unavailable here ({reason}) and [sandbox] isolate = "required": nothing would '
                               f"run. {sandbox.HOW_TO_ENABLE} Or set isolate = \"auto\" to run unisolated.")
    else:
        report.facts.append(f"jail: unavailable here ({reason}): runs would not be isolated. {sandbox.HOW_TO_ENABLE}")


def _prepared(target: Target, report: Report, say: Callable[[str], None]) -> bool:
    if not target.config.commands.prepare or target.data.is_dir():
        return True
    from .cli import prepare

    say(f"preparing the data (`{target.config.commands.prepare}`), once")
    started = time.monotonic()
    if prepare(target) != 0:
        shutil.rmtree(target.data, ignore_errors=True)
        report.problems.append(f"the prepare command failed (`{target.config.commands.prepare}`; its output is "
                               "above): fix it or [commands] prepare")
        return False
    report.facts.append(f"prepare: {time.monotonic() - started:.1f} s")
    return True


def _runs(target: Target, commit: str, budget: Budget, report: Report, say: Callable[[str], None]) -> list[RunRecord]:
    from .executor import LocalExecutor
    from .runner import Runner, RunSpec

    config = target.config
    sandbox.check(config.sandbox.isolate)
    executor = LocalExecutor(config.run.device)
    runs = []
    try:
        slot = executor.slots()[0]
        worktree = target.git.add_worktree(target.worktrees / "check", commit)
        timeout = config.budget.timeout or (2 * budget.value + 60 if budget.kind == "seconds" else 600.0)
        for seed in SEEDS:
            say(f"run with seed {seed}, budget {budget} ...")
            directory = target.state / "check" / f"seed{seed}"
            shutil.rmtree(directory, ignore_errors=True)
            spec = RunSpec(0, worktree.root, seed, budget, timeout, directory, commit=commit)
            run = executor.execute(Runner(target, executor), spec, slot)
            runs.append(run)
            _describe(run, budget, timeout, config, report)
            if run.state is not RunState.OK:
                break
    finally:
        executor.close()
    return runs


def _describe(run: RunRecord, budget: Budget, timeout: float, config: Config, report: Report) -> None:
    name, log = config.metric.name, run.log_path
    if run.state is RunState.OK:
        report.facts.append(f"seed {run.seed}: {name} = {run.metric:.6g} in {run.seconds:.1f} s (budget {budget}; "
                            f"log {log})")
        if budget.kind == "seconds" and run.seconds > 3 * budget.value + 30:
            report.problems.append(
                f"a run of budget {budget} took {run.seconds:.0f} s: the training does not stop at its budget. "
                "Read AUTORESEARCH_BUDGET_SECONDS (or _STEPS, _TOKENS: one is set) in the code, or pass it as a "
                "flag, e.g. train = \"python train.py --max-seconds $AUTORESEARCH_BUDGET_SECONDS\"; or give "
                "[budget] default in steps (\"500steps\") and pass $AUTORESEARCH_BUDGET_STEPS")
        return
    if run.state is RunState.TIMEOUT:
        report.problems.append(f"seed {run.seed}: killed after {timeout:.0f} s (the hard limit of a {budget} "
                               "budget): the training does not stop at its budget; read AUTORESEARCH_BUDGET_SECONDS "
                               "(or pass it as a flag), or set [budget] timeout")
        return
    tail = "\n".join("       | " + line for line in run.log_tail.strip().splitlines()[-8:])
    if run.state is RunState.CRASHED and run.exit_code == 0:  # the commands ran; the metric was not found
        report.problems.append(f"seed {run.seed}: {run.reason}. {_metric_fix(config, run.log_tail)} "
                               f"The output ends:\n{tail}")
        return
    report.problems.append(f"seed {run.seed}: {run.state.value}: {run.reason} (log {log}); the output ends:\n{tail}")


def _metric_fix(config: Config, text: str) -> str:
    """What to set so the metric is found: a [metric] pattern that matches the output, when one is easy to see."""
    metric = config.metric
    if metric.source == "json":
        return (f"The metric is read from {metric.file} in $AUTORESEARCH_OUT; write it there, or set [metric] "
                f"source = \"stdout\" to read the output")
    words = [re.escape(w) for w in re.split(r"[_\s]+", metric.name) if w]
    guess = r"[ _]?".join(words) + r"\s*[:=]?\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
    if words and re.search(guess, text, re.IGNORECASE):
        example = re.search(guess, text, re.IGNORECASE).group(0)
        pattern = "(?i)" + guess if not re.search(guess, text) else guess
        return (f"The output prints it another way ({example!r}): set [metric] pattern = '{pattern}' (one group "
                "around the number; its last match is the metric)")
    return (f"Print `{metric.name}: <number>` at the end of the run, or set [metric] pattern to a regular "
            "expression with one group around the number, e.g. pattern = 'val loss ([0-9.]+)'")
