"""The search agent: offline numeric search over the target's declared knobs, no LLM.

Optuna's TPE sampler proposes values; it is told every finished experiment of the tag
from the ledger (whoever proposed it, using the knob values the harness read from its files), so
a resumed session continues where it left off. A proposal is a move from the best of one knob,
or two (`MAX_MOVED`): of TPE's point, the knobs it moves furthest from the best's values, in units of
each knob's range (a knob outside its declared range first, alone), so that every kept change is one
idea a reader can name. Values are rounded to `DIGITS` significant digits and written into the
editable files through `autoresearch.knobs` (a Python constant, a flag in a script, a config file's key).
"""

from __future__ import annotations

import math
import random
import warnings
import zlib

from .. import knobs as knob_edit
from ..config import Knob
from ..records import State
from . import Agent, AgentExhausted, Context, Proposal

_MAX_TRIES = 20
MAX_MOVED = 2  # knobs one proposal changes
SECOND_MOVE = 0.8  # a second knob moves too when TPE moves it nearly as far as the first (this share of its distance)
# A move must land at least this share of a knob's range from where an earlier experiment moved the same knobs from
# the same values (0: only exact repeats are refused). benchmarks/research_efficiency.py's `novel` tries 0.1.
MIN_STEP = 0.0
DIGITS = 2  # significant digits of a proposed float: "MATRIX_LR 0.002 -> 0.035"


def _distribution(knob: Knob):
    import optuna.distributions as d

    if knob.type == "choice":
        return d.CategoricalDistribution(knob.choices)
    if knob.type == "int":
        return d.IntDistribution(int(knob.low), int(knob.high), log=knob.log)
    return d.FloatDistribution(knob.low, knob.high, log=knob.log)


def _within(knob: Knob, value) -> bool:
    if knob.type == "choice":
        return value in knob.choices
    return isinstance(value, (int, float)) and knob.low <= value <= knob.high


class SearchAgent(Agent):
    name = "search"

    def __init__(self, **options):
        super().__init__(**options)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = None
        self.told: set[int] = set()

    def propose(self, context: Context) -> Proposal:
        knobs = context.config.knobs
        if not knobs:
            raise AgentExhausted("the search agent needs [[knobs]] in autoresearch.toml, and there are none")
        by_name = {k.name: k for k in knobs}
        distributions = {k.name: _distribution(k) for k in knobs}
        study = self._study(context, by_name, distributions)
        current = {k.name: knob_edit.get(k, context.files[k.file]) for k in knobs}
        # in flight: running in a slot, or proposed and waiting for one (a proposal's meta holds the knobs it
        # moves); never proposed twice, and told to TPE as running trials (the constant liar) so that what runs
        # at once is spread out
        in_flight = [e.knobs for e in context.history if not e.state.final and e.knobs]
        in_flight += [{**current, **p.meta["knobs"]} for p in context.pending if isinstance(p.meta.get("knobs"), dict)]
        tried = [e.knobs for e in context.history if e.knobs] + in_flight
        seen = {self._key(values) for values in tried}
        seed = zlib.crc32(context.parent.tag.encode()) + len(context.history) + len(context.pending)
        liars = self._pretend_running(study, in_flight, distributions, by_name=by_name)
        moved = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for multivariate TPE
            study.sampler = self.optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=bool(liars),
                                                            n_startup_trials=min(8, 2 * len(knobs) + 2))
            for _ in range(_MAX_TRIES):
                trial = study.ask(distributions)
                point = {name: self._rounded(value) for name, value in trial.params.items()}
                study.tell(trial, state=self.optuna.trial.TrialState.FAIL)  # only told real outcomes
                moved = _move(current, point, knobs)
                if moved and self._key({**current, **moved}) not in seen \
                        and not _near_tried(current, moved, tried, by_name):
                    break
            else:
                moved = self._nudge(current, knobs, random.Random(seed))
        for number in liars:  # their real outcomes are told when they finish
            study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        files = dict(context.files)
        for name, value in moved.items():
            knob = by_name[name]
            files[knob.file] = knob_edit.put(knob, files[knob.file], value)
        changed = [f"{name} {knob_edit.format_value(current[name])} -> {knob_edit.format_value(value)}"
                   for name, value in moved.items()]
        writes = {path: text for path, text in files.items() if text != context.files.get(path)}
        return Proposal(", ".join(changed), writes, meta={"knobs": moved})

    def _study(self, context: Context, by_name: dict[str, Knob], distributions: dict):
        if self.study is None:
            direction = "minimize" if context.config.minimize else "maximize"
            self.study = self.optuna.create_study(direction=direction)
        for experiment in context.history:
            if experiment.id in self.told or not experiment.state.final:
                continue
            self.told.add(experiment.id)
            params = {name: value for name, value in experiment.knobs.items()
                      if name in by_name and _within(by_name[name], value)}
            if not params:
                continue
            if experiment.ok and experiment.state in (State.BASELINE, State.KEPT, State.DISCARDED, State.SUPERSEDED):
                trial = self.optuna.trial.create_trial(
                    params=params, distributions={n: distributions[n] for n in params}, value=experiment.metric)
            elif experiment.state in (State.CRASHED, State.TIMEOUT):
                trial = self.optuna.trial.create_trial(
                    params=params, distributions={n: distributions[n] for n in params},
                    state=self.optuna.trial.TrialState.FAIL)
            else:
                continue
            self.study.add_trial(trial)
        return self.study

    def _pretend_running(self, study, in_flight: list[dict], distributions: dict, by_name: dict) -> list[int]:
        """Add the in-flight points as running trials; their trial numbers."""
        numbers = []
        for values in in_flight:
            params = {n: v for n, v in values.items() if n in by_name and _within(by_name[n], v)}
            if not params:
                continue
            study.add_trial(self.optuna.trial.create_trial(
                params=params, distributions={n: distributions[n] for n in params},
                state=self.optuna.trial.TrialState.RUNNING))
            numbers.append(len(study.trials) - 1)
        return numbers

    @staticmethod
    def _rounded(value):
        return float(f"{value:.{DIGITS}g}") if isinstance(value, float) else value

    @staticmethod
    def _key(values: dict) -> tuple:
        return tuple(sorted((k, knob_edit.format_value(v)) for k, v in values.items()))

    @staticmethod
    def _nudge(current: dict, knobs: list[Knob], rng: random.Random) -> dict:
        """Every sampled move was tried already: move one knob a step from where it is."""
        knob = rng.choice(knobs)
        value = current[knob.name]
        if knob.type == "choice":
            options = [c for c in knob.choices if c != value] or knob.choices
            new = rng.choice(options)
        elif knob.log and value > 0:
            new = min(knob.high, max(knob.low, value * math.exp(rng.choice((-1, 1)) * 0.3)))
        else:
            new = min(knob.high, max(knob.low, value + rng.choice((-1, 1)) * 0.1 * (knob.high - knob.low)))
        new = int(round(new)) if knob.type == "int" else SearchAgent._rounded(float(new)) if knob.type == "float" else new
        return {knob.name: new}


def distance(knob: Knob, old, new) -> float:
    """How far `new` is from `old`, as a share of the knob's range (on a log scale where the knob has one)."""
    if knob.type == "choice":
        return 0.0 if new == old else 1.0
    if not isinstance(old, (int, float)) or isinstance(old, bool):
        return 1.0
    if knob.log and old > 0 and new > 0:
        return abs(math.log(new) - math.log(old)) / (math.log(knob.high) - math.log(knob.low))
    return abs(new - old) / (knob.high - knob.low)


def _near_tried(current: dict, moved: dict, tried: list[dict], by_name: dict[str, Knob]) -> bool:
    """Whether an earlier experiment from the same values moved the same knobs to within MIN_STEP of `moved`."""
    if MIN_STEP <= 0:
        return False
    for values in tried:
        changed = {k for k, v in values.items()
                   if k in current and knob_edit.format_value(v) != knob_edit.format_value(current[k])}
        if changed == set(moved) and all(distance(by_name[k], values[k], moved[k]) < MIN_STEP for k in moved):
            return True
    return False


def _move(current: dict, point: dict, knobs: list[Knob]) -> dict:
    """The move from `current` towards TPE's `point`: the knob it moves furthest, and a second one when that moves
    nearly as far (SECOND_MOVE); {} when the point is where the best already is. A knob whose value lies outside
    its declared range moves first, alone: the range says where its value belongs."""
    moved = [k for k in knobs if knob_edit.format_value(current[k.name]) != knob_edit.format_value(point[k.name])]
    outside = [k for k in moved if not _within(k, current[k.name])]
    if outside:
        return {outside[0].name: point[outside[0].name]}
    ranked = sorted(((distance(k, current[k.name], point[k.name]), k.name) for k in moved), reverse=True)
    if not ranked:
        return {}
    chosen = [name for d, name in ranked[:MAX_MOVED] if d >= SECOND_MOVE * ranked[0][0]]
    return {name: point[name] for name in chosen}
