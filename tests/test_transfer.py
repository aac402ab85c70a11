"""Transfer: the kept changes at a larger scale, end to end on a toy whose optimum moves with its scale.

The toy's evaluator scores (LR - 3)² + |WIDTH - w| / 10 on a data split, plus seeded noise (sd 0.01), where the
best WIDTH w is 8 at SIZE 1 (the session's scale) and 2 at any larger SIZE. So the change LR 1 -> 3 helps by 4 at
every scale, and the change WIDTH 4 -> 8 helps by 0.4 at SIZE 1 and hurts by 0.4 at SIZE 2: the planted change
that helps only at small scale. Each test asserts what the ledger and git record.
"""

import pytest

from autoresearch.config import ConfigError, TransferSection, load
from autoresearch.transfer import fit
from toy import build_toy, run_cli

TRAIN = '''\
"""Transfer toy: writes its constants for the trusted evaluator."""
import json
import os

LR = 1.0     # best at 3, at any size
WIDTH = 4    # best at 8 at size 1, at 2 when larger
SIZE = 1     # the scale
if SIZE > 5:
    raise SystemExit("out of memory")  # a scale this toy cannot train at

with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json"), "w") as f:
    json.dump({"LR": LR, "WIDTH": WIDTH, "SIZE": SIZE}, f)
print("loss: 1.0")
'''

EVALUATE = '''\
"""Trusted evaluator of the transfer toy."""
import json
import os
import random

out, data = os.environ["AUTORESEARCH_OUT"], os.environ["AUTORESEARCH_DATA"]
split = os.environ.get("AUTORESEARCH_SPLIT") or "val"
with open(os.path.join(out, "model.json")) as f:
    model = json.load(f)
with open(os.path.join(data, split, "offset.txt")) as f:
    offset = float(f.read())
width = 8 if model["SIZE"] == 1 else 2
score = (model["LR"] - 3.0) ** 2 + abs(model["WIDTH"] - width) / 10 + offset
score += random.Random(f"{os.environ['AUTORESEARCH_SEED']} {split} {model}").gauss(0, 0.01)
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"score": score}, f)
print(f"score: {score}")
'''

CONFIG = '''\
[target]
name = "transfer-toy"

[commands]
train = "python train.py"
evaluate = "python evaluate.py"

[files]
editable = ["train.py"]
protected = ["evaluate.py", "program.md"]

[metric]
name = "score"
goal = "minimize"
source = "json"

[budget]
default = "1s"
timeout = 10

[judge]
rule = "plain"
final_test_seeds = 0
'''

TRANSFER = '''
[transfer]
scale = ["size=+1"]
budget = "3s"
runs = {runs}
at_end = {at_end}
'''

LR = {"description": "LR to 3", "knobs": {"LR": 3.0}}
WIDTH = {"description": "WIDTH to 8", "replace": [{"file": "train.py", "old": "WIDTH = 4", "new": "WIDTH = 8"}]}
LR_AGAIN = {"description": "LR to 2", "knobs": {"LR": 2.0}}

KNOB = '''
[[knobs]]
name = "LR"
file = "train.py"
low = 0.1
high = 10.0
log = true
'''


def build(tmp_path, runs=24, at_end="true", transfer=True):
    config = CONFIG + KNOB + (TRANSFER.format(runs=runs, at_end=at_end) if transfer else "")
    toy = build_toy(tmp_path, train=TRAIN.replace("{", "{{").replace("}", "}}"), config=config,
                    files={"evaluate.py": EVALUATE})
    for split in ("train", "val", "test"):
        folder = toy.root / ".autoresearch" / "data" / split
        folder.mkdir(parents=True)
        if split != "train":
            (folder / "offset.txt").write_text("1.5")
    return toy


def research(toy, steps):
    result = run_cli("run", "-C", toy.root, "--tag", "t", "--experiments", len(steps), *toy.scripted(steps))
    assert result.code == 0, result.text
    return result


def transfers(toy):
    return toy._read(lambda ledger: ledger.transfers("t"))


def rows(record):
    return {row["label"]: row for row in record["summary"]["rows"]}


def test_a_change_that_helps_only_at_small_scale_is_shown_as_not_transferring(tmp_path):
    toy = build(tmp_path)
    result = research(toy, [LR, WIDTH])
    kept = [e for e in toy.experiments() if e.state.value == "kept"]
    assert [e.description for e in kept] == ["LR to 3", "WIDTH to 8"]
    (record,) = transfers(toy)
    assert record["finished_at"] is not None and record["session_id"] == toy.sessions()[-1]["id"]
    plan = record["settings"]
    assert plan["scale"] == ["size=+1"] and plan["budgets"] == {"small": "1s", "large": "3s"}
    assert [v["name"] for v in plan["variants"]] == ["baseline", "best", "without #1", "without #2"]
    assert plan["seeds"] == [0, 1, 2] and plan["planned"] == 24 == len(record["runs"])
    assert all(r["state"] == "ok" and r["split"] == "test" for r in record["runs"])
    assert {r["budget"] for r in record["runs"] if r["scale"] == "large"} == {"3s"}
    # seed by seed, each variant at both scales
    assert [(r["seed"], r["scale"], r["variant"]) for r in record["runs"][:8]] == [
        (0, scale, name) for scale in ("small", "large") for name in ("baseline", "best", "without #1", "without #2")]

    table = rows(record)
    chain, lr, width = table["whole chain (#0 -> #2)"], table["#1"], table["#2"]
    assert lr["small"]["effect"] == pytest.approx(4.0, abs=0.05) and lr["large"]["effect"] == pytest.approx(4.0, abs=0.05)
    assert lr["verdict"] == "transfers" and lr["large"]["ci"][0] > 0
    assert width["small"]["effect"] == pytest.approx(0.4, abs=0.05) and width["small"]["ci"][0] > 0
    assert width["large"]["effect"] == pytest.approx(-0.4, abs=0.05) and width["large"]["ci"][1] < 0
    assert width["verdict"] == "does not"
    assert chain["large"]["effect"] == pytest.approx(3.6, abs=0.05) and chain["verdict"] == "transfers"

    # the ablations and the scaled code are what they claim, and stay reachable
    without_width = toy.resolve("refs/autoresearch/t/transfer/1/without-2")
    assert toy.git("show", f"{without_width}:train.py").count("WIDTH = 4") == 1
    assert "LR = 3.0" in toy.git("show", f"{without_width}:train.py")
    large_best = toy.resolve("refs/autoresearch/t/transfer/1/best-large")
    assert "SIZE = 2" in toy.git("show", f"{large_best}:train.py")
    assert toy.branch() == toy.best().commit == kept[-1].commit  # the research line is untouched
    assert "does not" in result.out and "transfer #1" in result.out


def test_the_runs_it_may_spend_leave_out_the_changes_with_the_smallest_gains(tmp_path):
    toy = build(tmp_path, at_end="false")
    research(toy, [LR, WIDTH])
    assert transfers(toy) == []  # at_end = false: only on request
    result = run_cli("transfer", "-C", toy.root, "--runs", "12")
    assert result.code == 0, result.text
    (record,) = transfers(toy)
    assert len(record["runs"]) == 12 and record["settings"]["seeds"] == [0, 1]
    assert [v["name"] for v in record["settings"]["variants"]] == ["baseline", "best", "without #1"]
    table = rows(record)
    assert table["#1"]["verdict"] == "transfers"
    assert table["#2"]["verdict"] == "not measured" and "over the budget of 12 runs" in table["#2"]["reason"]
    assert "not measured" in result.out


def test_fit_prefers_every_ablation_then_seeds():
    settings = TransferSection(scale=["depth=+2"], runs=24, seeds=3)
    assert fit(2, settings) == (3, 2)  # 4 variants x 2 scales x 3 seeds = 24
    assert fit(4, settings) == (2, 4)  # 6 variants at 2 seeds = 24
    assert fit(5, settings) == (2, 4)  # one left out
    assert fit(0, TransferSection(scale=["depth=+2"], runs=8)) == (2, 0)


def test_a_change_whose_lines_a_later_change_rewrote_cannot_be_taken_out_alone(tmp_path):
    toy = build(tmp_path)
    research(toy, [LR_AGAIN, LR, WIDTH])  # LR 1 -> 2, then 2 -> 3 on the same line
    (record,) = transfers(toy)
    table = rows(record)
    assert table["#1"]["verdict"] == "not measured" and "a later kept change rewrote" in table["#1"]["reason"]
    assert table["#2"]["verdict"] == "transfers"  # without it, LR is back at 2
    assert table["#2"]["large"]["effect"] == pytest.approx(1.0, abs=0.05)
    assert table["#3"]["verdict"] == "does not"
    assert not any(r["variant"] == "without #1" for r in record["runs"])


def test_a_single_kept_change_is_measured_against_the_baseline(tmp_path):
    toy = build(tmp_path, runs=8)
    research(toy, [WIDTH])
    (record,) = transfers(toy)
    assert [v["name"] for v in record["settings"]["variants"]] == ["baseline", "best"]  # without it is the baseline
    assert rows(record)["#1"]["versus"] == "baseline" and rows(record)["#1"]["verdict"] == "does not"
    assert len(record["runs"]) == 8


def test_runs_that_fail_at_the_larger_scale_are_recorded_and_the_verdict_is_unclear(tmp_path):
    toy = build(tmp_path, at_end="false")
    research(toy, [LR])
    result = run_cli("transfer", "-C", toy.root, "--scale", "size=+9", "--runs", "8")
    assert result.code == 0, result.text
    (record,) = transfers(toy)
    large = [r for r in record["runs"] if r["scale"] == "large"]
    assert len(large) == 4 and all(r["state"] == "crashed" for r in large)
    assert all(r["state"] == "ok" for r in record["runs"] if r["scale"] == "small")
    row = rows(record)["#1"]
    assert row["small"]["effect"] == pytest.approx(4.0, abs=0.05)
    assert row["large"]["effect"] is None and row["verdict"] == "unclear"


def test_nothing_kept_is_nothing_to_transfer(tmp_path):
    toy = build(tmp_path)
    research(toy, [{"description": "worse", "knobs": {"LR": 0.5}}])
    assert transfers(toy) == []
    result = run_cli("transfer", "-C", toy.root)
    assert result.code == 1 and "no kept change yet" in result.out


@pytest.mark.parametrize("table, message", [
    ('scale = ["depth+2"]', "transfer.scale: 'depth+2': expected NAME=+N"),
    ('scale = []', "transfer.scale: List should have at least 1 item"),
    ('scale = ["size=+1"]\nruns = 4', "transfer.runs: Input should be greater than or equal to 8"),
    ('scale = ["size=+1"]\nbudget = "a while"', "transfer.budget: budget 'a while' is not understood"),
    ('scale = ["size=+1"]\nseeds = 1', "transfer.seeds: Input should be greater than or equal to 2"),
    ('scale = ["size=+1"]\nrun = 3', "transfer.run: unknown key"),
])
def test_config_errors_name_the_file_the_key_and_what_was_expected(tmp_path, table, message):
    toy = build(tmp_path, transfer=False)
    (toy.root / "autoresearch.toml").write_text(CONFIG + KNOB + "\n[transfer]\n" + table + "\n")
    with pytest.raises(ConfigError) as error:
        load(toy.root)
    assert str(toy.root / "autoresearch.toml") in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("args, message", [
    ([], "no [transfer] table in autoresearch.toml and no --scale"),
    (["--scale", "nothing=+1"], "no editable file defines a constant NOTHING"),
    (["--scale", "size=+1", "--runs", "5"], "--runs: Input should be greater than or equal to 8"),
])
def test_transfer_command_bad_input_is_a_clear_error(tmp_path, args, message):
    toy = build(tmp_path, transfer=False)
    research(toy, [LR])
    result = run_cli("transfer", "-C", toy.root, *args)
    assert result.code == 2 and message in result.err, result.text
    assert transfers(toy) == []


def test_the_built_in_targets_transfer_example_is_a_valid_table(tmp_path):
    from autoresearch.target import init

    root = init(tmp_path / "gpt")
    text = (root / "autoresearch.toml").read_text()
    assert load(root).transfer is None  # off unless the user turns it on: it spends runs
    lines = text.split("# [transfer]", 1)[1].splitlines()[:4]
    (root / "autoresearch.toml").write_text(text + "\n[transfer]\n" + "\n".join(line[2:] for line in lines[1:]) + "\n")
    settings = load(root).transfer
    assert settings.scale == ["depth=+2"] and settings.budget == "180s" and settings.runs == 24 and settings.at_end
