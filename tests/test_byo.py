"""Bring your own repository: a training script written without autoresearch in mind (flags, a YAML config, its
metric printed its own way, a seed flag) researched by the search and hybrid agents, and `autoresearch check`."""

import sys

import pytest

from autoresearch.records import State
from standin import StandIn, message, tool_use
from toy import TAG, build_toy

TRAIN = '''\
"""A repository's own training script: flags, a YAML config, and output in its own words."""
import argparse

import yaml

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--seed", type=int, default=1337)
args = parser.parse_args()
width = yaml.safe_load(open("config.yaml"))["model"]["width"]
loss = (args.lr - 3.0) ** 2 + abs(width - 8) / 10 + SEED_EFFECT
for step in (0, 100):
    print(f"step {step}: train loss {loss + 0.5:.4f}, val loss {loss + 1 - step / 100:.4f}")
'''
RUN = '#!/bin/sh\nexec {python} train.py --lr 1.0 --seed "$1"\n'
YAML = "# the model\nmodel:\n  width: 4   # channels\n  depth: 2\n"
CONFIG = '''\
[target]
name = "byo"

[commands]
train = "sh run.sh $AUTORESEARCH_SEED"

[files]
editable = ["train.py", "run.sh", "config.yaml"]

[metric]
name = "val_loss"
goal = "minimize"
{pattern}

[budget]
default = "1s"

[judge]
rule = "plain"

[[knobs]]
flag = "--lr"
file = "run.sh"
low = 0.1
high = 10.0
log = true

[[knobs]]
name = "width"
file = "config.yaml"
key = "model.width"
type = "int"
low = 1
high = 16
'''
PATTERN = "pattern = 'val loss ([0-9.]+)'"


def byo(tmp_path, pattern=PATTERN, seed_effect="args.seed / 1000", extra=""):
    files = {"run.sh": RUN.format(python=sys.executable), "config.yaml": YAML}
    return build_toy(tmp_path, train=TRAIN.replace("SEED_EFFECT", seed_effect).replace("{", "{{").replace("}", "}}"),
                     config=CONFIG.format(pattern=pattern) + extra, files=files, name="byo")


def test_the_search_tunes_a_flag_and_a_yaml_key_and_reads_the_metric_by_its_pattern(tmp_path, cli):
    target = byo(tmp_path)
    result = cli("run", "-C", target.root, "--tag", TAG, "--agent", "search", "--experiments", "4")
    assert result.code == 0, result.text
    baseline, *experiments = target.experiments()
    assert baseline.knobs == {"lr": 1.0, "width": 4}
    assert baseline.metric == pytest.approx((1.0 - 3.0) ** 2 + 0.4)  # seed 0: the seed flag came through
    for experiment in experiments:
        assert experiment.state in (State.KEPT, State.DISCARDED), experiment.reason
        lr, width = experiment.knobs["lr"], experiment.knobs["width"]
        assert experiment.metric == pytest.approx((lr - 3.0) ** 2 + abs(width - 8) / 10, abs=1e-4)
        changed = {line[6:].split()[0] for line in experiment.diff.splitlines() if line.startswith("+++ b/")}
        assert changed <= {"run.sh", "config.yaml"} and len(experiment.description.split(", ")) <= 2
    assert "  width: " in target.git("show", f"autoresearch/{TAG}:config.yaml")  # the layout and comment stay
    assert "# channels" in target.git("show", f"autoresearch/{TAG}:config.yaml")


def test_the_hybrid_tunes_a_flag_after_the_llm_change(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    target = byo(tmp_path)
    comment = [message(tool_use("replace", path="train.py", old="import argparse\n", new="import argparse  # flags\n")),
               message(tool_use("finish", hypothesis="a comment"))]
    with StandIn(comment) as server:
        result = cli("run", "-C", target.root, "--tag", TAG, "--agent", "claude+search", "--base-url", server.url,
                     "--agent-option", "search_per_llm=2", "--experiments", "3")
    assert result.code == 0, result.text
    llm, *searched = target.experiments()[1:]
    assert llm.agent == "claude" and [e.agent for e in searched] == ["search", "search"]
    for experiment in searched:
        assert "run.sh" in experiment.diff or "config.yaml" in experiment.diff
        assert experiment.knobs != llm.knobs


def test_check_reports_the_metric_knobs_seed_and_jail_of_a_ready_target(tmp_path, cli):
    target = byo(tmp_path)
    result = cli("check", "-C", target.root, "--budget", "1s")
    assert result.code == 0, result.text
    assert "seed 0: val_loss = 4.4 in" in result.out and "seed 1: val_loss = 4.401 in" in result.out
    assert "knob lr = 1.0 (flag --lr in run.sh)" in result.out
    assert "knob width = 4 (key model.width in config.yaml)" in result.out
    assert "seed: changes val_loss" in result.out and "jail: " in result.out and "ready:" in result.out
    assert not (target.root / ".autoresearch" / "ledger.sqlite").exists()  # a dry run records nothing
    assert target.git("status", "--porcelain") == ""


def test_check_suggests_the_pattern_for_a_metric_printed_its_own_way(tmp_path, cli):
    target = byo(tmp_path, pattern="")
    result = cli("check", "-C", target.root, "--budget", "1s")
    assert result.code == 1
    assert "no 'val_loss: <number>' line in the output" in result.out
    suggested = result.out.split("set [metric] pattern = '")[1].split("'")[0]
    (target.root / "autoresearch.toml").write_text(CONFIG.format(pattern=f"pattern = '{suggested}'"))
    target.git("commit", "-qam", "the suggested pattern")
    assert cli("check", "-C", target.root, "--budget", "1s").code == 0


def test_check_says_once_how_to_pass_a_seed_the_code_ignores(tmp_path, cli):
    target = byo(tmp_path, seed_effect="0.0")
    result = cli("check", "-C", target.root, "--budget", "1s")
    assert result.code == 1
    assert result.out.count("does not use AUTORESEARCH_SEED") == 1
    assert "--seed $AUTORESEARCH_SEED" in result.out and "torch.manual_seed" in result.out


def test_check_names_a_knob_it_cannot_read_and_what_to_fix(tmp_path, cli):
    extra = '\n[[knobs]]\nname = "dropout"\nfile = "config.yaml"\nkey = "model.dropout"\nlow = 0.0\nhigh = 0.5\n'
    target = byo(tmp_path, extra=extra)
    result = cli("check", "-C", target.root, "--budget", "1s")
    assert result.code == 1
    assert "knob dropout (key model.dropout in config.yaml): config.yaml has no key 'model.dropout'" in result.out


def test_a_run_reads_the_metric_by_the_last_match_of_its_pattern(tmp_path, cli):
    target = byo(tmp_path)
    assert cli("run", "-C", target.root, "--tag", TAG, "--experiments", "0").code == 0
    assert target.experiments()[0].metric == pytest.approx(4.4)  # not the step-0 value 5.4


def test_a_pattern_that_matches_nothing_crashes_the_run_with_the_reason(tmp_path, cli):
    target = byo(tmp_path, pattern="pattern = 'validation bpb ([0-9.]+)'")
    result = cli("run", "-C", target.root, "--tag", TAG, "--experiments", "0")
    assert result.code == 1
    baseline = target.experiments()[0]
    assert baseline.state is State.CRASHED and "no match of [metric] pattern" in baseline.reason
