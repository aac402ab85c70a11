"""Knobs: reading and setting UPPERCASE constants through the parser, layout preserved."""

import ast

import pytest

from autoresearch import knobs

SOURCE = '''\
"""A training script."""
import math

# ---------------------------------------------------------------- hyperparameters
MATRIX_LR = 0.04        # learning rate of the matrices
DEPTH = 8               # number of layers
WARMUP: float = 0.1     # fraction of the budget
SCALE = 2**-4           # computed from literals
ACTIVATION = "relu"     # a string constant
COMPILE = True          # a bool constant
NEG = -1e-3             # a negative constant
DERIVED = DEPTH * 64    # not a literal: refers to another name


def lr_at(step):
    MATRIX_LR = 1.0     # a local, not the constant
    return MATRIX_LR * math.cos(step)
'''


@pytest.mark.parametrize("name, value", [
    ("MATRIX_LR", 0.04), ("DEPTH", 8), ("WARMUP", 0.1), ("SCALE", 2**-4), ("ACTIVATION", "relu"),
    ("COMPILE", True), ("NEG", -1e-3),
])
def test_read_literal_constants(name, value):
    assert knobs.read(SOURCE, name) == value


def test_read_ignores_assignments_below_top_level():
    assert knobs.read(SOURCE, "MATRIX_LR") == 0.04


def test_the_last_top_level_assignment_wins():
    assert knobs.read("LR = 1.0\nLR = 2.0\n", "LR") == 2.0


def test_read_missing_constant_is_a_knob_error():
    with pytest.raises(knobs.KnobError, match="no top-level assignment to MISSING"):
        knobs.read(SOURCE, "MISSING")


def test_read_non_literal_is_a_knob_error_showing_the_expression():
    with pytest.raises(knobs.KnobError, match=r"DERIVED is not a literal value: DEPTH \* 64"):
        knobs.read(SOURCE, "DERIVED")


def test_read_all_leaves_out_what_it_cannot_read():
    assert knobs.read_all(SOURCE, ["DEPTH", "DERIVED", "MISSING"]) == {"DEPTH": 8}


def test_read_all_of_a_file_that_does_not_parse_is_empty():
    assert knobs.read_all("DEPTH = 8\ndef (", ["DEPTH"]) == {}


def test_set_value_changes_only_the_value_expression():
    edited = knobs.set_value(SOURCE, "MATRIX_LR", 0.0125)
    assert edited == SOURCE.replace("MATRIX_LR = 0.04        #", "MATRIX_LR = 0.0125        #")


def test_set_value_leaves_the_local_of_the_same_name_alone():
    edited = knobs.set_value(SOURCE, "MATRIX_LR", 0.5)
    assert "    MATRIX_LR = 1.0     # a local, not the constant\n" in edited


def test_set_value_on_an_annotated_assignment_keeps_the_annotation():
    assert "WARMUP: float = 0.25     # fraction" in knobs.set_value(SOURCE, "WARMUP", 0.25)


def test_set_value_replaces_a_whole_expression():
    edited = knobs.set_value(SOURCE, "SCALE", 0.5)
    assert "SCALE = 0.5           # computed from literals\n" in edited


def test_set_value_counts_columns_in_bytes_after_non_ascii_text():
    source = 'NAME = "héllo wörld"; LR = 0.1  # η, the learning rate\n'
    assert knobs.set_value(source, "LR", 0.2) == 'NAME = "héllo wörld"; LR = 0.2  # η, the learning rate\n'


@pytest.mark.parametrize("name, value", [("DEPTH", 12), ("NEG", -0.5), ("ACTIVATION", "gelu"), ("COMPILE", False)])
def test_set_value_reads_back(name, value):
    assert knobs.read(knobs.set_value(SOURCE, name, value), name) == value


def test_set_value_result_still_parses():
    ast.parse(knobs.set_value(SOURCE, "DEPTH", 3))


def test_set_missing_constant_is_a_knob_error():
    with pytest.raises(knobs.KnobError):
        knobs.set_value(SOURCE, "MISSING", 1)


@pytest.mark.parametrize("value, text", [
    (0.04, "0.04"), (1.0, "1.0"), (3.0, "3.0"), (0.0123456, "0.01235"), (1e-5, "1e-05"), (123456.0, "1.235e+05"),
    (-2.5, "-2.5"), (8, "8"), ("relu", "'relu'"), (True, "True"),
])
def test_format_value_keeps_four_significant_digits_and_the_type(value, text):
    assert knobs.format_value(value) == text
    assert type(ast.literal_eval(text)) is type(value)


# ---------------------------------------------------------------- knobs in flags and config files

from autoresearch.config import Knob  # noqa: E402

CONFIG_FILES = {
    "config.yaml": "# optimizer settings\noptimizer:\n  lr: 0.001   # the learning rate\n  betas: [0.9, 0.95]\nsteps: 100\n",
    "config.json": '{\n  "optimizer": {"lr": 0.001, "betas": [0.9, 0.95]},\n  "steps": 100\n}\n',
    "config.toml": "steps = 100\n\n[optimizer]\nlr = 1e-3  # the learning rate\nbetas = [0.9, 0.95]\n",
    "config.py": "# nanoGPT-style config\nlearning_rate = 1e-3  # the learning rate\nmax_iters = 100\n",
}


@pytest.mark.parametrize("path", sorted(CONFIG_FILES))
def test_a_config_file_key_is_read_and_set_with_only_its_value_changed(path):
    key = "learning_rate" if path.endswith(".py") else "optimizer.lr"
    knob = Knob(name="lr", file=path, key=key, low=1e-5, high=1e-1, log=True)
    text = CONFIG_FILES[path]
    assert knobs.get(knob, text) == 0.001
    for value in (0.0005, 1e-05, 0.02):
        edited = knobs.put(knob, text, value)
        assert knobs.get(knob, edited) == pytest.approx(value)
        changed = [(a, b) for a, b in zip(text.splitlines(), edited.splitlines()) if a != b]
        assert len(changed) == 1 and len(text.splitlines()) == len(edited.splitlines())
        assert "the learning rate" in changed[0][1] or path.endswith(".json")  # the comment stays


def test_an_int_key_of_a_config_file_stays_an_int():
    knob = Knob(name="steps", file="config.yaml", type="int", low=10, high=1000)
    edited = knobs.put(knob, CONFIG_FILES["config.yaml"], 200)
    assert "steps: 200\n" in edited and knobs.get(knob, edited) == 200


@pytest.mark.parametrize("written, value, edited", [("--learning-rate 5e-4", 0.0005, "--learning-rate 0.002"),
                                                     ("--learning-rate=5e-4", 0.0005, "--learning-rate=0.002"),
                                                     ("--learning-rate\t0.01", 0.01, "--learning-rate\t0.002")])
def test_a_flag_in_a_script_is_read_and_set(written, value, edited):
    script = "#!/bin/sh\nexec python train.py \\\n  {} --batch-size 32 --out \"$AUTORESEARCH_OUT\"\n"
    knob = Knob(flag="--learning-rate", file="train.sh", low=1e-4, high=1e-1, log=True)
    assert knob.name == "learning-rate" and knobs.get(knob, script.format(written)) == value
    assert knobs.put(knob, script.format(written), 0.002) == script.format(edited)


def test_a_flag_that_is_a_prefix_of_another_is_not_confused_with_it():
    script = "python train.py --lr-min 1e-5 --lr 3e-4\n"
    knob = Knob(flag="--lr", file="run.sh", low=1e-5, high=1.0)
    assert knobs.get(knob, script) == 3e-4
    assert knobs.put(knob, script, 0.001) == "python train.py --lr-min 1e-5 --lr 0.001\n"


@pytest.mark.parametrize("script, problem", [("python train.py\n", "is not in the file"),
                                             ("a --lr 1\nb --lr 2\n", "appears 2 times")])
def test_a_flag_must_appear_once(script, problem):
    with pytest.raises(knobs.KnobError, match=problem):
        knobs.get(Knob(flag="--lr", file="run.sh", low=0.1, high=1.0), script)


@pytest.mark.parametrize("path, key", [("config.yaml", "optimizer.momentum"), ("config.json", "steps.x"),
                                       ("config.toml", "optimizer.betas")])
def test_a_missing_or_composite_key_is_a_knob_error(path, key):
    with pytest.raises(knobs.KnobError):
        knobs.get(Knob(name="k", file=path, key=key, low=0.1, high=1.0), CONFIG_FILES[path])


def test_current_leaves_out_what_it_cannot_read():
    declared = [Knob(name="lr", file="config.yaml", key="optimizer.lr", low=1e-5, high=1.0),
                Knob(name="gone", file="config.yaml", key="optimizer.gone", low=1e-5, high=1.0),
                Knob(flag="--lr", file="missing.sh", low=1e-5, high=1.0)]
    assert knobs.current(declared, {"config.yaml": CONFIG_FILES["config.yaml"]}) == {"lr": 0.001}


# ---------------------------------------------------------------- the search agent's moves


def test_with_a_min_step_a_move_near_one_already_tried_from_the_same_values_is_refused(monkeypatch):
    """search.MIN_STEP (off by default; the benchmark's `novel` variant): from the same best, a move of the same
    knob to within that share of its range of a value already tried is refused; from other values, or of other
    knobs, it is not."""
    from autoresearch.agents import search

    by_name = {"WD": Knob(name="WD", file="t.py", low=0.0, high=0.2),
               "LR": Knob(name="LR", file="t.py", low=0.01, high=0.15, log=True)}
    best = {"WD": 0.18, "LR": 0.04}
    tried = [{"WD": 0.1, "LR": 0.04}]
    assert not search._near_tried(best, {"WD": 0.099}, tried, by_name)  # off: only exact repeats are refused
    monkeypatch.setattr(search, "MIN_STEP", 0.1)
    assert search._near_tried(best, {"WD": 0.09}, tried, by_name)  # 0.01 of a 0.2 range: 5%
    assert not search._near_tried(best, {"WD": 0.07}, tried, by_name)  # 15%
    assert not search._near_tried({"WD": 0.18, "LR": 0.08}, {"WD": 0.09}, tried, by_name)  # another best
    assert not search._near_tried(best, {"LR": 0.045}, tried, by_name)  # another knob
    assert not search._near_tried(best, {"WD": 0.09, "LR": 0.05}, tried, by_name)  # two knobs, not the one
