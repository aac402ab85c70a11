"""The search agent: offline numeric search over the target's declared knobs, no LLM.

Optuna's TPE sampler proposes values; it is told every finished experiment of the tag
from the ledger (whoever proposed it, using the knob values the harness read from its files), so
a resumed session continues where it left off. Values are written into the editable file through
the parser (`autoresearch.knobs`).
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
        distributions = {k.name: _distribution(k) for k in knobs}
        study = self._study(context, {k.name: k for k in knobs}, distributions)
        current = {k.name: knob_edit.read(context.files[k.file], k.name) for k in knobs}
        # in flight: running in a slot, or proposed and waiting for one; never proposed twice, and told to TPE
        # as running trials (the constant liar) so that what runs at once is spread out
        in_flight = [e.knobs for e in context.history if not e.state.final and e.knobs]
        in_flight += [p.meta["knobs"] for p in context.pending if isinstance(p.meta.get("knobs"), dict)]
        seen = {self._key(e.knobs) for e in context.history if e.knobs} | {self._key(v) for v in in_flight}
        seed = zlib.crc32(context.parent.tag.encode()) + len(context.history) + len(context.pending)
        liars = self._pretend_running(study, in_flight, distributions, by_name={k.name: k for k in knobs})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for multivariate TPE
            study.sampler = self.optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=bool(liars),
                                                            n_startup_trials=min(8, 2 * len(knobs) + 2))
            for _ in range(_MAX_TRIES):
                trial = study.ask(distributions)
                values = {name: self._rounded(value) for name, value in trial.params.items()}
                study.tell(trial, state=self.optuna.trial.TrialState.FAIL)  # only told real outcomes
                if self._key({**current, **values}) not in seen:
                    break
            else:
                values = self._nudge(current, knobs, random.Random(seed))
        for number in liars:  # their real outcomes are told when they finish
            study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        files = dict(context.files)
        for knob in knobs:
            files[knob.file] = knob_edit.set_value(files[knob.file], knob.name, values[knob.name])
        changed = [f"{k.name} {knob_edit.format_value(current[k.name])} -> {knob_edit.format_value(values[k.name])}"
                   for k in knobs if knob_edit.format_value(current[k.name]) != knob_edit.format_value(values[k.name])]
        writes = {path: text for path, text in files.items() if text != context.files.get(path)}
        return Proposal(", ".join(changed) or "no change", writes, meta={"knobs": values})

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
        return float(knob_edit.format_value(value)) if isinstance(value, float) else value

    @staticmethod
    def _key(values: dict) -> tuple:
        return tuple(sorted((k, knob_edit.format_value(v)) for k, v in values.items()))

    @staticmethod
    def _nudge(current: dict, knobs: list[Knob], rng: random.Random) -> dict:
        """Every sampled point was tried already: move one knob a step from where it is."""
        knob = rng.choice(knobs)
        value = current[knob.name]
        if knob.type == "choice":
            options = [c for c in knob.choices if c != value] or knob.choices
            new = rng.choice(options)
        elif knob.log:
            new = min(knob.high, max(knob.low, value * math.exp(rng.choice((-1, 1)) * 0.3)))
        else:
            new = min(knob.high, max(knob.low, value + rng.choice((-1, 1)) * 0.1 * (knob.high - knob.low)))
        if knob.type == "int":
            new = int(round(new))
        return {**current, knob.name: new}
