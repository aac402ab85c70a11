"""The hard limit: a run that ignores its budget is killed from outside, with its whole process group,
and recorded as `timeout`; one that also ignores SIGTERM is SIGKILLed after the grace period."""

import time

import pytest

from autoresearch.executor import KILL_GRACE_SECONDS
from autoresearch.records import RunState, State
from toy import CONFIG, TAG, alive, build_toy, run_cli, wait_for

LIMIT = 2
TIMEOUT_CONFIG = CONFIG.replace('default = "1s"', f'default = "1s"\ntimeout = {LIMIT}')
HANG = {"description": "ignore the budget", "replace": [{"file": "train.py", "old": "HANG = 0", "new": "HANG = 1"}]}
GOOD = {"description": "raise LR to 2", "knobs": {"LR": 2.0}}

# A train.py that starts a child process and then never finishes; {ignore} makes it (and, inherited, its
# child) ignore SIGTERM, {child_ignores} makes only the child ignore it.
STUBBORN = '''\
import os
import signal
import subprocess
import time

if {ignore}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
ignore_term = (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)) if {child_ignores} else None
child = subprocess.Popen(["sleep", "1000"], preexec_fn=ignore_term)
with open({pid_file!r}, "a") as pids:
    pids.write(f"{{os.getpid()}}\\n{{child.pid}}\\n")
print("running forever", flush=True)
while True:
    time.sleep(0.05)
'''


def stubborn(toy, ignore: bool, child_ignores: bool) -> dict:
    source = STUBBORN.format(ignore=ignore, child_ignores=child_ignores, pid_file=str(toy.pid_file))
    return {"description": "never finish", "write": {"train.py": source}}


def run_timed(toy, steps):
    started = time.monotonic()
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps))
    assert result.code == 0, result.text
    return time.monotonic() - started


@pytest.fixture(scope="module")
def hung(tmp_path_factory):
    """A session where #1 ignores its budget and #2 is an ordinary improvement."""
    toy = build_toy(tmp_path_factory.mktemp("hung"), config=TIMEOUT_CONFIG)
    seconds = run_timed(toy, [HANG, GOOD])
    return toy, toy.experiments(), seconds


def test_run_over_the_hard_limit_is_recorded_as_timeout(hung):
    _, (_, timed_out, _), _ = hung
    assert timed_out.state is State.TIMEOUT
    assert timed_out.metric is None
    assert timed_out.reason.startswith("seed 0: train killed after 2.")
    assert timed_out.reason.endswith(f"over the hard limit of {LIMIT}s for budget 1s")
    assert timed_out.runs[0].state is RunState.TIMEOUT


def test_a_run_that_stops_on_sigterm_is_killed_at_the_limit(hung):
    _, (_, timed_out, _), seconds = hung
    assert LIMIT <= timed_out.seconds < LIMIT + 1
    assert seconds < LIMIT + KILL_GRACE_SECONDS  # the whole session: no grace period was waited


def test_the_timed_out_process_is_gone(hung):
    toy, _, _ = hung
    baseline_pid, hung_pid, good_pid = toy.pids()
    assert not alive(hung_pid)


def test_the_loop_goes_on_after_a_timeout(hung):
    toy, (baseline, _, good), _ = hung
    assert (good.state, good.parent) == (State.KEPT, baseline.commit)
    assert toy.branch() == good.commit


def test_a_child_that_ignores_sigterm_dies_with_the_group(make_toy):
    toy = make_toy(config=TIMEOUT_CONFIG)
    run_timed(toy, [stubborn(toy, ignore=False, child_ignores=True)])
    _, train_pid, child_pid = toy.pids()
    assert toy.experiments()[1].state is State.TIMEOUT
    assert toy.experiments()[1].seconds < LIMIT + 1  # the parent honoured SIGTERM: no grace period
    assert wait_for(lambda: not alive(child_pid), timeout=2)
    assert not alive(train_pid)


@pytest.mark.slow
def test_a_run_that_ignores_sigterm_is_sigkilled_after_the_grace_period(make_toy):
    toy = make_toy(config=TIMEOUT_CONFIG)
    run_timed(toy, [stubborn(toy, ignore=True, child_ignores=True)])
    _, timed_out = toy.experiments()
    _, train_pid, child_pid = toy.pids()
    assert timed_out.state is State.TIMEOUT
    assert LIMIT + KILL_GRACE_SECONDS <= timed_out.seconds < LIMIT + KILL_GRACE_SECONDS + 2
    assert "running forever" in timed_out.runs[0].log_tail
    assert wait_for(lambda: not alive(train_pid) and not alive(child_pid), timeout=2)


def test_the_limit_of_a_steps_or_tokens_run_scales_with_its_budget():
    """Without [budget] timeout, a steps or tokens run's limit comes from the baseline's runs: at ten times the
    steps they ran at, ten times the time (it was the baseline's time as it stood, and every run of a line resumed,
    verified or calibrated at a larger budget was killed as a timeout)."""
    from autoresearch.budget import Budget
    from autoresearch.records import Experiment, RunRecord
    from autoresearch.session import run_timeout

    runs = tuple(RunRecord(experiment_id=1, seed=s, state=RunState.OK, metric=1.0, seconds=10.0 + s, budget="100steps")
                 for s in range(2)) + (RunRecord(experiment_id=1, seed=0, state=RunState.OK, metric=1.0, seconds=5.0,
                                                 budget="1ktok"),)
    baseline = Experiment(id=1, tag="t", index=0, state=State.BASELINE, parent=None, commit="c", description="",
                          agent="harness", metric=1.0, seconds=sum(r.seconds for r in runs), runs=runs)
    assert run_timeout(Budget.parse("1000steps"), None, baseline) == pytest.approx(3 * 110 + 60)
    assert run_timeout(Budget.parse("100steps"), None, baseline) == pytest.approx(3 * 11 + 60)
    assert run_timeout(Budget.parse("4ktok"), None, baseline) == pytest.approx(3 * 20 + 60)
    assert run_timeout(Budget.parse("30s"), None, baseline) == 2 * 30 + 60
    assert run_timeout(Budget.parse("1000steps"), 45.0, baseline) == 45.0  # [budget] timeout wins
    assert run_timeout(Budget.parse("1000steps"), None, None) == 3600.0
