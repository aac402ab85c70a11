"""The decision rule on synthetic metric streams: properties that must hold whatever the noise."""

import random
import statistics

import pytest
from hypothesis import given, settings, strategies as st

from autoresearch.stats import Noise, Rule, confidence_interval, pooled_noise, verdict
from autoresearch.scale import Scale
from autoresearch.verify import paired_effect

RULE = Rule()
sds = st.floats(min_value=1e-4, max_value=10.0)
levels = st.floats(min_value=-100.0, max_value=100.0)


def sequential(draw, parent, noise, rule=RULE, minimize=True, lines=(0, 0)):
    """Run the sequential test: draw() gives one run's metric; returns (kept, runs used)."""
    runs = []
    while True:
        runs.append(draw())
        v = verdict(runs, parent, noise, rule, minimize=minimize, lines_added=lines[0], lines_removed=lines[1])
        if v.keep is not None:
            return v.keep, len(runs)


@settings(deadline=None)  # a new (df, parent runs) pair simulates its keep boundary once: slow on a loaded machine
@given(level=levels, sd=sds, n=st.integers(1, 10), parent_n=st.integers(1, 10), df=st.integers(1, 200))
def test_no_keep_when_the_change_does_nothing(level, sd, n, parent_n, df):
    v = verdict([level] * n, [level] * parent_n, Noise(sd, df), RULE, minimize=True)
    assert v.keep is not True


@settings(deadline=None)
@given(sd=sds, effect=st.floats(0, 20), more=st.floats(0, 20), n=st.integers(1, 6), df=st.integers(1, 100),
       minimize=st.booleans())
def test_monotone_in_the_effect(sd, effect, more, n, df, minimize):
    """If an effect is kept, a larger one is kept too; if it is dropped, a smaller one is dropped too."""
    sign = -1 if minimize else 1
    small = verdict([sign * effect * sd] * n, [0.0] * 5, Noise(sd, df), RULE, minimize=minimize)
    large = verdict([sign * (effect + more) * sd] * n, [0.0] * 5, Noise(sd, df), RULE, minimize=minimize)
    assert large.effect >= small.effect - 1e-9
    if small.keep is True:
        assert large.keep is True
    if large.keep is False:
        assert small.keep is False or small.runs >= RULE.max_runs


@settings(deadline=None)
@given(sd=sds, n=st.integers(1, 6), lines=st.integers(1, 500))
def test_added_code_needs_a_larger_margin(sd, n, lines):
    plain = verdict([-2 * sd] * n, [0.0] * 5, Noise(sd, 50), RULE, minimize=True)
    costly = verdict([-2 * sd] * n, [0.0] * 5, Noise(sd, 50), RULE, minimize=True, lines_added=lines)
    assert costly.margin > plain.margin
    assert not (costly.keep is True and plain.keep is not True)


def test_removing_code_with_an_equal_result_can_be_kept():
    noise = Noise(0.01, 100)
    same = [1.0] * 4
    assert verdict(same, [1.0] * 20, noise, RULE, minimize=True).keep is False
    simpler = verdict(same, [1.0] * 20, noise, RULE, minimize=True, lines_removed=200)
    assert simpler.keep is True and simpler.margin < 0


def test_a_single_promising_run_is_confirmed_before_it_is_kept():
    v = verdict([0.0], [1.0] * 5, Noise(0.01, 20), RULE, minimize=True)  # 100 sd better
    assert v.keep is None and "confirming" in v.reason
    assert verdict([0.0, 0.0], [1.0] * 5, Noise(0.01, 20), RULE, minimize=True).keep is True


def test_a_clear_loser_stops_after_one_run():
    v = verdict([1.05], [1.0] * 5, Noise(0.01, 20), RULE, minimize=True)
    assert v.keep is False and v.runs == 1 and "clearly below" in v.reason


def test_a_deterministic_metric_decides_in_one_run():
    assert verdict([0.9], [1.0], Noise(0.0, 3), RULE, minimize=True).keep is True
    assert verdict([1.0], [1.0], Noise(0.0, 3), RULE, minimize=True).keep is False


def test_maximize_flips_the_sign():
    v = verdict([2.0, 2.0], [1.0] * 5, Noise(0.01, 20), RULE, minimize=False)
    assert v.keep is True and v.effect == pytest.approx(1.0)


def test_unknown_noise_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="calibrate"):
        verdict([1.0], [1.0], Noise(float("nan"), 0), RULE, minimize=True)


def test_the_keep_boundary_is_lower_than_splitting_the_significance_over_the_looks():
    from scipy.special import stdtrit

    for n_parent, df in ((5, 4), (8, 7), (8, 100)):
        boundary = RULE.t_keep(df, n_parent)
        assert stdtrit(df, 1 - RULE.significance) < boundary < stdtrit(df, 1 - RULE.significance / (RULE.max_runs - 1))
        assert RULE.t_keep(df, n_parent) == boundary  # the same inputs give the same boundary


@pytest.mark.parametrize("df", [4, 30])
def test_the_false_keep_rate_of_null_changes_is_at_most_the_significance(df):
    rng = random.Random(1)
    sd, trials = 1.0, 3000
    kept = 0
    for _ in range(trials):
        parent = [rng.gauss(0, sd) for _ in range(5)]
        noise = Noise(statistics.stdev([rng.gauss(0, sd) for _ in range(df + 1)]), df)
        keep, _ = sequential(lambda: rng.gauss(0, sd), parent, noise)
        kept += keep
    assert kept / trials <= RULE.significance


@pytest.mark.parametrize("calibration, df", [(5, 60), (8, 7)])  # a long session; a fresh one (8 calibration seeds)
def test_two_sigma_effects_are_mostly_kept_with_less_compute_than_three_fixed_seeds(calibration, df):
    rng = random.Random(2)
    trials, kept, runs = 2000, 0, 0
    for _ in range(trials):
        parent = [rng.gauss(0, 1) for _ in range(calibration)]
        noise = Noise(statistics.stdev([rng.gauss(0, 1) for _ in range(df + 1)]), df)
        keep, used = sequential(lambda: rng.gauss(-2, 1), parent, noise)
        kept += keep
        runs += used
    assert kept / trials >= 0.8
    assert runs / trials < 3


def test_pooled_noise_weights_groups_by_their_degrees_of_freedom():
    noise = pooled_noise([[1.0, 3.0], [10.0, 10.0, 10.0], [5.0], []])
    assert noise.df == 3 and noise.groups == 2
    assert noise.sd == pytest.approx((2.0 / 3) ** 0.5)
    assert pooled_noise([[2.0, 2.0, 2.0]]).deterministic
    assert not pooled_noise([[1.0]]).known


def test_confidence_interval_covers_the_mean():
    low, high = confidence_interval([1.0, 2.0, 3.0])
    assert low < 2.0 < high and high - low == pytest.approx(2 * 4.302653 * 1 / 3 ** 0.5, rel=1e-5)


def test_paired_effect_and_its_interval():
    result = paired_effect([2.0, 2.1, 2.2], [1.9, 2.0, 2.1], minimize=True)
    assert result["effect"] == pytest.approx(0.1) and result["verdict"] == "holds"
    assert paired_effect([2.0, None], [1.0, 1.0], minimize=True)["verdict"] == "one pair: no interval"
    assert paired_effect([2.0, 1.0], [1.0, 2.0], minimize=True)["verdict"] == "inconclusive"


@pytest.mark.parametrize("text, value, expected", [
    ("depth=+2", {"cpu": 2, "cuda": 6}, {"cpu": 4, "cuda": 8}),
    ("SEQ_LEN=x2", 128, 256),
    ("matrix_lr=0.01", 0.04, 0.01),
    ("batch_size=-8", 16, 8),
])
def test_scales(text, value, expected):
    assert Scale.parse(text).apply(value) == expected


@settings(max_examples=50)
@given(text=st.text(max_size=20))
def test_a_bad_scale_is_a_clear_error(text):
    try:
        Scale.parse(text)
    except ValueError as exc:
        assert "--scale" in str(exc)


def paired_sequential(rng, rho, effect, calibration=8, df=20, rule=RULE):
    """One experiment whose run i shares seed i with the parent's run i, correlated `rho` (unit sd, lower is better):
    (kept, runs used, analysis)."""
    shared = [rng.gauss(0, 1) for _ in range(calibration)]
    parent = shared
    noise = Noise(statistics.stdev([rng.gauss(0, 1) for _ in range(df + 1)]), df)
    runs = []
    for i in range(rule.max_runs):
        runs.append(rho * shared[i] + (1 - rho ** 2) ** 0.5 * rng.gauss(0, 1) - effect)
        pairs = [p - c for p, c in zip(parent, runs)]
        v = verdict(runs, parent, noise, rule, minimize=True, pairs=pairs, paired_looks=rule.max_runs)
        if v.keep is not None:
            return v.keep, len(runs), v.analysis
    raise AssertionError("the judge did not decide by max_runs")


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.99])
def test_with_pairs_the_false_keep_rate_stays_within_the_significance_whatever_the_correlation(rho):
    rng = random.Random(3)
    trials = 3000
    kept = sum(paired_sequential(rng, rho, 0.0)[0] for _ in range(trials))
    # Each test spends half the significance; they overlap little when the pairs are uncorrelated, so the rate is
    # then close to the significance itself: allowed two standard errors of the simulation (0.4 points each).
    assert kept / trials <= RULE.significance + 0.008


def test_highly_correlated_pairs_keep_small_effects_the_unpaired_test_misses():
    # A knob change keeps the initialisation and data order: its runs differ from the parent's seed by seed by little.
    rng = random.Random(4)
    trials = 1000
    outcomes = [paired_sequential(rng, 0.99, 1.0) for _ in range(trials)]
    assert sum(kept for kept, _, _ in outcomes) / trials >= 0.9
    assert sum(analysis == "paired" for kept, _, analysis in outcomes if kept) / trials >= 0.8
    rng = random.Random(4)
    unpaired = 0
    for _ in range(trials):
        shared = [rng.gauss(0, 1) for _ in range(8)]
        noise = Noise(statistics.stdev([rng.gauss(0, 1) for _ in range(21)]), 20)
        draws = iter([0.99 * shared[i] + 0.141 * rng.gauss(0, 1) - 1.0 for i in range(RULE.max_runs)])
        unpaired += sequential(lambda: next(draws), shared, noise)[0]
    assert unpaired / trials < 0.6


def test_the_paired_level_lies_between_bonferroni_over_the_looks_and_one_look():
    from autoresearch.stats import paired_level

    assert paired_level(0.025, 2) == 0.025  # one look: its own level
    for looks in (3, 4, 6):
        assert 0.025 / (looks - 1) < paired_level(0.025, looks) < 0.025
    assert RULE.paired_keep(2, 4) > RULE.paired_keep(3, 4) > RULE.paired_keep(4, 4)  # more pairs, more df


def test_bit_identical_pairs_are_not_a_gain_but_a_simpler_equal_change_is_kept():
    noise = Noise(0.05, 20)
    same = verdict([1.0, 1.1], [1.0, 1.1, 0.9, 1.05], noise, RULE, minimize=True, pairs=[0.0, 0.0], paired_looks=4)
    assert same.keep is not True
    simpler = verdict([1.0, 1.1], [1.0, 1.1, 0.9, 1.05], noise, RULE, minimize=True, pairs=[0.0, 0.0],
                      paired_looks=4, lines_removed=10)
    assert simpler.keep is True and simpler.analysis == "paired" and simpler.margin < 0


def test_without_pairs_the_unpaired_test_gets_the_whole_significance():
    # The same runs: with pairs there, the unpaired test's boundary is the one for half the significance.
    noise = Noise(1.0, 20)
    args = ([-1.75, -1.75], [0.0] * 8, noise, RULE)  # t 2.21: between the boundaries (2.02 alone, 2.39 beside)
    alone = verdict(*args, minimize=True)
    beside = verdict(*args, minimize=True, pairs=[5.0, -1.8], paired_looks=4)
    assert alone.keep is True and alone.analysis == "unpaired"
    assert beside.keep is None and "paired" in beside.reason


def _config(rule="statistical"):
    from autoresearch.config import Config

    return Config.model_validate({"commands": {"train": "python train.py"}, "files": {"editable": ["train.py"]},
                                  "metric": {"name": "score", "goal": "minimize"},
                                  "judge": {"rule": rule}, "run": {"seeds": [0, 1]}})


def _experiment(values, budget, state="baseline"):
    from autoresearch.records import Experiment, RunRecord, RunState, State

    runs = tuple(RunRecord(experiment_id=1, seed=i, state=RunState.OK, metric=v, budget=budget)
                 for i, v in enumerate(values))
    return Experiment(id=1, tag="t", index=0, state=State(state), parent=None, commit="c" * 40, description="best",
                      agent="harness", metric=statistics.fmean(values), runs=runs)


def test_the_statistical_rule_never_decides_on_one_run_against_an_unknown_noise():
    from autoresearch import judge
    from autoresearch.records import RunRecord, RunState

    best = _experiment([2.0], "60s")  # one run at the budget: no spread to measure the noise by
    run = RunRecord(experiment_id=2, seed=0, state=RunState.OK, metric=1.0, budget="60s")
    decision = judge.decide([run], best, _config(), pooled_noise([[2.0], [1.0]]), budget="60s")
    assert decision.state is None and "not known yet: one more run to measure it" in decision.reason


@pytest.mark.parametrize("rule", ["statistical", "plain"])
def test_a_parent_without_runs_at_the_budget_is_never_compared(rule):
    from autoresearch import judge
    from autoresearch.records import RunRecord, RunState

    best = _experiment([2.0, 2.1], "60s")
    runs = [RunRecord(experiment_id=2, seed=i, state=RunState.OK, metric=1.0, budget="120s") for i in (0, 1)]
    with pytest.raises(ValueError, match="no successful run at budget 120s"):
        judge.decide(runs, best, _config(rule), pooled_noise([[2.0, 2.1]]), budget="120s")
