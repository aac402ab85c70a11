"""Budget specs: parsing, the canonical string, and the variables a run reads."""

import pytest

from autoresearch.budget import Budget


@pytest.mark.parametrize("spec, kind, value", [
    ("300s", "seconds", 300),
    ("1.5s", "seconds", 1.5),
    ("5min", "seconds", 300),
    ("5m", "seconds", 300),
    ("2h", "seconds", 7200),
    ("500steps", "steps", 500),
    ("1step", "steps", 1),
    ("2.5ksteps", "steps", 2500),
    ("2Mtok", "tokens", 2_000_000),
    ("1Gtokens", "tokens", 1_000_000_000),
    (" 60 s ", "seconds", 60),
])
def test_parse(spec, kind, value):
    assert Budget.parse(spec) == Budget(kind, value)


@pytest.mark.parametrize("spec", ["", "fast", "10", "s", "10ms", "10 parsecs", "-5s", "1e3s", "2Xtok"])
def test_unparseable_spec_is_an_error_that_shows_examples(spec):
    with pytest.raises(ValueError, match="not understood: expected e.g. '300s'"):
        Budget.parse(spec)


@pytest.mark.parametrize("spec", ["0s", "0steps", "0.0min", "0.5steps", "0.4tok"])
def test_budget_must_be_positive(spec):
    with pytest.raises(ValueError, match="must be positive"):
        Budget.parse(spec)


@pytest.mark.parametrize("spec", ["300s", "1.5s", "5min", "500steps", "2.5ksteps", "2Mtok"])
def test_str_round_trips(spec):
    budget = Budget.parse(spec)
    assert Budget.parse(str(budget)) == budget


def test_str_is_canonical():
    assert [str(Budget.parse(s)) for s in ("5min", "1.5s", "2ksteps", "2Mtok")] == \
        ["300s", "1.5s", "2000steps", "2000000tok"]


@pytest.mark.parametrize("spec, name, number", [
    ("90s", "AUTORESEARCH_BUDGET_SECONDS", "90"),
    ("1.5s", "AUTORESEARCH_BUDGET_SECONDS", "1.5"),
    ("500steps", "AUTORESEARCH_BUDGET_STEPS", "500"),
    ("2Mtok", "AUTORESEARCH_BUDGET_TOKENS", "2000000"),
])
def test_env_sets_the_spec_and_exactly_one_number(spec, name, number):
    env = Budget.parse(spec).env()
    assert env == {"AUTORESEARCH_BUDGET": str(Budget.parse(spec)), name: number}
