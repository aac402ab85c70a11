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
