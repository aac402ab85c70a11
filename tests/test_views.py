"""What the views read (progress from a log, what each slot runs) and show (the live terminal panel), and the
control file a session obeys between experiments."""

import io
import threading
import time

import pytest
from rich.console import Console

from autoresearch import control, live, observe
from autoresearch.target import Target
from researched import build_researched, with_one_in_flight
from toy import TAG, run_cli, wait_for

GPT_LOG = """==> python train.py
device: cpu | budget: 60 seconds | params: 0.46M | tokens/step: 2,048
step    60 |  12.5% | loss 3.4567 | lr x1.00 | 14,900 tok/s
step   120 |  35.0% | loss 2.1234 | lr x1.00 | 15,000 tok/s
"""


def test_progress_from_the_gpt_target_line():
    progress = observe.parse_progress(GPT_LOG)
    assert progress["fraction"] == pytest.approx(0.35)
    assert (progress["step"], progress["loss"], progress["tokens_per_second"]) == (120, 2.1234, 15000.0)


def test_progress_from_other_formats():
    assert observe.parse_progress("epoch 1 step: 40 loss=0.5\n") == {"line": "epoch 1 step: 40 loss=0.5",
                                                                     "step": 40, "loss": 0.5}
    assert observe.parse_progress("[50%] 2.5k tok/s\n")["tokens_per_second"] == 2500.0


def test_no_progress_once_evaluation_started_or_where_nothing_is_printed():
    assert observe.parse_progress(GPT_LOG + "==> python evaluate.py\nloading\n") == {}
    assert observe.parse_progress("hello\nworld\n") == {}


@pytest.fixture(scope="module")
def researched(tmp_path_factory):
    return build_researched(tmp_path_factory.mktemp("views"))


@pytest.fixture
def running(researched, tmp_path):
    """A copy of the research with #9 in flight on seed 0: its ledger row and its log, as a session leaves them."""
    target, ledger, experiment, _ = with_one_in_flight(researched, tmp_path / "copy", GPT_LOG, "deeper model")
    yield target, ledger, experiment
    ledger.close()


def test_in_flight_shows_the_running_experiment_with_its_progress(running):
    target, ledger, experiment = running
    slots = observe.in_flight(target, ledger, TAG, now=experiment.created_at + 7)
    assert len(slots) == 1
    slot = slots[0]
    assert (slot["slot"], slot["busy"], slot["id"], slot["seed"], slot["run"]) == ("cpu0", True, 9, 0, 1)
    assert slot["progress"]["source"] == "log" and slot["progress"]["step"] == 120
    assert slot["elapsed"] == pytest.approx(7)
    assert slot["stale"]  # no session is alive: a harness left it


def test_in_flight_falls_back_to_the_clock_for_a_silent_target(running):
    target, ledger, experiment = running
    (observe.run_dir(target, TAG, 9) / "seed0" / "log.txt").write_text("==> python train.py\n")
    slot = observe.in_flight(target, ledger, TAG, now=experiment.created_at + 0.25)[0]
    # the budget of the last session is 1s
    assert slot["progress"] == {"fraction": pytest.approx(0.25), "source": "clock"}


def test_an_idle_slot_is_listed(researched):
    target = Target.open(researched.root)
    ledger = observe.open_ledger(target)
    try:
        assert observe.in_flight(target, ledger, TAG) == [{"slot": "cpu0", "busy": False}]
    finally:
        ledger.close()


def test_log_tail_of_a_running_experiment_reads_the_live_file(running):
    target, ledger, experiment = running
    tail = observe.log_tail(target, TAG, ledger.experiment(experiment.id), lines=2)
    assert tail["running"] and tail["lines"] == GPT_LOG.splitlines()[-2:]


def test_live_panel_shows_slot_progress_best_baseline_and_counts(running):
    target, ledger, experiment = running
    console = Console(record=True, width=150, force_terminal=False)
    console.print(live.render(live.snapshot(target, ledger, TAG, now=experiment.created_at + 65)))
    text = console.export_text()
    assert "baseline score 5.39" in text and "best 1.99 (#7 widen to 8" in text
    assert "kept 2" in text and "discarded 1" in text and "crashed 1" in text and "rejected 2" in text
    assert "timeout 1" in text and "interrupted 1" in text
    assert "#9 deeper model" in text and "35%" in text and "step 120" in text and "loss 2.1234" in text
    assert "15,000 tok/s" in text and "seed 0 · run 1" in text and "1:05" in text
    assert "cost" not in text  # the ledger has no cost columns


def test_live_view_draws_from_its_own_thread_and_stops(researched):
    out = io.StringIO()
    view = live.LiveView(Target.open(researched.root), TAG, console=Console(file=out, force_terminal=True, width=120),
                         interval=0.05)
    with view:
        assert wait_for(lambda: "best" in out.getvalue(), timeout=10)
    assert not view._thread.is_alive()
    assert "kept" in out.getvalue()


def test_live_view_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert not live.wanted(io.StringIO())
    assert live.wanted(Terminal())


def test_run_prints_plain_lines_when_not_on_a_terminal(toy):
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--experiments", "0")
    assert result.code == 0
    assert "#0    baseline" in result.out and "╭" not in result.out


# ---------------------------------------------------------------------------- control file


def test_control_file_commands(tmp_path):
    assert control.read(tmp_path)["command"] == "resume"
    control.write(tmp_path, "pause", by="test")
    assert control.read(tmp_path)["command"] == "pause" and control.read(tmp_path)["by"] == "test"
    with pytest.raises(ValueError):
        control.write(tmp_path, "explode")
    (tmp_path / control.FILE).write_text("{not json")
    assert control.read(tmp_path)["command"] == "resume"


def test_hold_returns_at_once_without_a_command_and_stops_once(tmp_path):
    assert control.hold(tmp_path, say=lambda _: None) is False
    control.write(tmp_path, "stop")
    assert control.hold(tmp_path, say=lambda _: None) is True
    assert not (tmp_path / control.FILE).exists()  # honoured once


def test_hold_waits_while_paused_until_resumed(tmp_path):
    said = []
    control.write(tmp_path, "pause")
    threading.Timer(0.3, lambda: control.write(tmp_path, "resume")).start()
    started = time.monotonic()
    assert control.hold(tmp_path, say=said.append, poll=0.02) is False
    assert time.monotonic() - started >= 0.25
    assert said[0].startswith("paused") and said[-1] == "resumed"


def test_a_session_stops_cleanly_on_the_stop_command(make_toy, spawn_cli, tmp_path):
    toy = make_toy(sleep=0.3)
    steps = [{"description": f"LR {lr}", "knobs": {"LR": lr}} for lr in (1.5, 2.0, 2.5, 2.8, 2.9, 3.1, 3.2, 3.3)]
    log = tmp_path / "session.log"
    process = spawn_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps), log=log)
    assert wait_for(lambda: len(toy.experiments()) >= 2 if (toy.root / ".autoresearch" / "ledger.sqlite").exists()
                    else False, timeout=60)
    control.write(toy.root / ".autoresearch", "pause")
    assert wait_for(lambda: "paused: waiting for resume" in log.read_text(), timeout=30)
    held = len(toy.experiments())
    time.sleep(1.0)
    assert len(toy.experiments()) == held and not toy.unfinished()  # nothing started while paused
    control.write(toy.root / ".autoresearch", "stop")
    assert process.wait(timeout=30) == 0
    assert "stopped on request" in log.read_text()
    assert toy.sessions()[-1]["end_reason"].startswith("stopped on request")
    assert len(toy.experiments()) == held and not (toy.root / ".autoresearch" / control.FILE).exists()


def test_a_new_session_ignores_a_stale_command(toy):
    control.write(toy.root / ".autoresearch", "stop")
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([{"description": "LR 2", "knobs": {"LR": 2}}]),
                     "--experiments", "1")
    assert result.code == 0 and len(toy.experiments()) == 2


def test_a_session_is_running_exactly_while_a_process_holds_the_lock(researched, tmp_path):
    """One answer to "is a session running?" for the CLI and every view: the target's session lock."""
    import os
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(researched.root, root)
    target = Target.open(root)
    assert control.holder(target.state) is None
    ledger = observe.open_ledger(target)
    session = ledger.start_session(TAG, "scripted", "1s", [], os.getpid())  # a row a killed harness would leave
    try:
        assert observe.session_state(ledger, TAG, target.state)["alive"] is False  # no lock: not running
        handle = control.lock(target.state)
        try:
            assert control.holder(target.state) == os.getpid()
            assert observe.session_state(ledger, TAG, target.state)["alive"] is True
            assert run_cli("pause", "-C", root).out.startswith("pause requested") and \
                "no session is running" not in run_cli("pause", "-C", root).out
        finally:
            handle.close()
        assert control.holder(target.state) is None
        assert observe.session_state(ledger, TAG, target.state)["alive"] is False
        ledger.end_session(session, "done")
    finally:
        ledger.close()
