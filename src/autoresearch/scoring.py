"""Scoring a model the evaluator does not trust: bits per byte of held-out tokens, from the logits of jailed model
processes (modelproc.py), with causality checked on what is scored. For a target's own evaluator:

    from autoresearch import scoring

    scorer = scoring.Scorer(hide=[data_dir])       # first: it forks, before any held-out data is read
    tokens = np.memmap("val.bin", dtype=np.uint16, mode="r")
    result = scorer.score(load, (checkpoint_path,), [scoring.Source(tokens, 2**17)], seq_len=1024,
                          token_bytes=token_bytes, vocab_size=vocab_size)
    print("val_bpb:", result.bits_per_byte(0))     # scoring.NotCausal: reject the model (exit status 3)
    scorer.close()

`load(*args)` is a module-level function of the evaluator; it runs only in a model process and returns
`answer(x)`: a LongTensor [B, T] of token ids to logits [B, T, V] (see modelproc.py for what that process can do).

The windows. Each window is seq_len inputs and the seq_len targets after them; windows are read at a stride of
seq_len + 1, so the last target of a window is never an input anywhere (with windows side by side, a model that
remembered the next window's first token would know it). Each target is scored once, its cross-entropy computed
here in fp32 from the returned logits, and weighed by its length in bytes (targets of 0 bytes, the document
separator, count for nothing).

Two model processes, started alike, score alternate windows (neither sees the text right after a window it
scores), in an order of their own, in batches of `batch` windows. The second runs the agent's code only after the
first is gone, so they never run at the same time.

The causality check. A share of the windows (PROBES of each process's, at least MIN_PROBES) is also given to
the other process, which never saw it, as a variant: the same tokens up to a random point, other held-out text
from there on. The log-probabilities that the two processes give the original targets before that point must
agree, each within `tolerance` (nats: the device's numerics), and on average (a small systematic gain is a cheat
too). A model that reads later tokens cannot know the suffix the other process saw; a model whose answer
depends on anything but the window (windows it saw before, the batch it is in, how often or how it is called)
cannot reproduce what the other process's history made it say. Probes are mixed into the batches at random, with
the same shapes as the scored windows, and the randomness comes from the OS: nothing in the code predicts it.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import modelproc

PROBES = 0.1      # share of each model process's windows that the other one is also given, as a variant
MIN_PROBES = 4    # at least this many per model process
MEAN_Z = 5.0      # standard errors by which the mean difference at the change may exceed tolerance / 10
PIPELINE_BYTES = 1 << 17  # a request sent ahead must fit in a socket's buffer (the model is not reading then)


class NotCausal(Exception):
    """The model's answers depend on more than each window's earlier tokens: reject it."""


@dataclass(frozen=True)
class Source:
    """Held-out tokens (a 1-D array; a memmap is read only as far as needed) and how many targets to score."""

    tokens: np.ndarray
    n_targets: int


@dataclass
class Score:
    nats: list[float] = field(default_factory=list)    # per source: cross-entropy summed over counted targets
    bytes: list[int] = field(default_factory=list)     # per source: bytes those targets stand for
    targets: list[int] = field(default_factory=list)   # per source: targets scored
    probes: int = 0                                    # variants compared
    max_difference: float = 0.0                        # largest log-probability difference seen (nats)
    jail_error: str = ""                               # why the model processes ran unjailed ("" if they did not)

    def bits_per_byte(self, source: int = 0) -> float:
        if self.bytes[source] == 0:
            return float("nan")
        return self.nats[source] / (math.log(2) * self.bytes[source])


@dataclass
class _Entry:
    """One window a model process is given: scored, or a probe of another process's window."""

    source: int
    window: int
    inputs: np.ndarray
    cut: int = 0  # a probe: the first position whose input differs from the original window's (0: scored)


class Scorer:
    """Scores models on held-out tokens. Create it before reading any held-out data (it forks the zygote that
    model processes are forked from)."""

    def __init__(self, hide: Sequence[str] = (), required: bool = False):
        self.zygote = modelproc.Zygote(hide, required)

    def close(self) -> None:
        self.zygote.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, load: Callable, args: tuple, sources: Sequence[Source], *, seq_len: int, token_bytes,
              vocab_size: int, batch: int = 8, transport: torch.dtype = torch.float32, tolerance: float = 1e-4,
              prepare: Optional[Callable] = None, pipeline: bool = False) -> Score:
        """Score the model that `load(*args)` makes in each model process. Raises NotCausal, modelproc.ModelError
        (the model failed), ValueError (too little data)."""
        rng = np.random.default_rng(secrets.randbits(128))
        pipeline = pipeline and 4 * batch * seq_len <= PIPELINE_BYTES
        token_bytes = torch.as_tensor(np.asarray(token_bytes), dtype=torch.int64)
        windows = [_windows(s.tokens, seq_len, s.n_targets) for s in sources]
        owners = [(np.arange(len(w)) + rng.integers(2)) % 2 for w in windows]
        streams = [[_Entry(s, i, w[i, :-1]) for s, w in enumerate(windows) for i in np.flatnonzero(owners[s] == k)]
                   for k in (0, 1)]
        for k in (0, 1):  # process k is given probes of the other's windows
            streams[k] += _probes(windows, owners, 1 - k, len(streams[k]), batch, vocab_size, rng)
        lp: list[np.ndarray] = [np.zeros((len(w), seq_len), np.float32) for w in windows]  # target log-probs
        probed: list[tuple[_Entry, np.ndarray]] = []
        result = Score()
        models = [self.zygote.spawn(load, args, prepare) for _ in (0, 1)]
        try:
            for model, stream in zip(models, streams):
                result.jail_error = result.jail_error or model.jail_error
                model.go()
                order = [stream[i] for i in rng.permutation(len(stream))]
                batches = [order[i:i + batch] for i in range(0, len(order), batch)]
                for i, entries in enumerate(batches):
                    if i == 0 or not pipeline:
                        model.ask(np.stack([e.inputs for e in entries]), transport)
                    if pipeline and i + 1 < len(batches):  # the model works on the next batch while this one is scored
                        model.ask(np.stack([e.inputs for e in batches[i + 1]]), transport)
                    logits = model.answer(vocab_size)
                    targets = torch.from_numpy(np.stack([windows[e.source][e.window, 1:] for e in entries]))
                    rows = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).numpy()
                    if not np.isfinite(rows).all():
                        raise modelproc.ModelError("the model produced non-finite logits")
                    for entry, row in zip(entries, rows):
                        if entry.cut:
                            probed.append((entry, row))
                        else:
                            lp[entry.source][entry.window] = row
                model.close()
        finally:
            for model in models:
                model.close()
        _check(probed, lp, tolerance, result)
        for s, w in enumerate(windows):
            targets = torch.from_numpy(w[:, 1:])
            nbytes = token_bytes[targets]
            counted = (nbytes > 0).numpy()
            result.nats.append(-float(lp[s][counted].astype(np.float64).sum()))
            result.bytes.append(int(nbytes.sum()))
            result.targets.append(targets.numel())
        return result


def _windows(tokens: np.ndarray, seq_len: int, n_targets: int) -> np.ndarray:
    """[W, seq_len + 1] int64: window i is tokens[i * (seq_len + 1):][:seq_len + 1], as many as cover n_targets."""
    stride = seq_len + 1
    count = min(len(tokens) // stride, -(-n_targets // seq_len))
    if count < 1:
        raise ValueError(f"{len(tokens)} held-out tokens hold no window of {stride} (the sequence length, plus one)")
    return np.asarray(tokens[:count * stride]).astype(np.int64).reshape(count, stride)


def _probes(windows: list[np.ndarray], owners: list[np.ndarray], owner: int, scored: int, batch: int,
            vocab_size: int, rng: np.random.Generator) -> list[_Entry]:
    """Variants of `owner`'s windows for the other process, which scores `scored` windows: a share of the owner's
    windows, at least MIN_PROBES, and as many more as fill its last batch."""
    pool = [(s, i) for s in range(len(windows)) for i in np.flatnonzero(owners[s] == owner)]
    seq_len = windows[0].shape[1] - 1
    if not pool or seq_len < 2:
        return []
    count = max(MIN_PROBES, math.ceil(PROBES * len(pool)))
    count += -(scored + count) % batch
    picks = [pool[i] for i in rng.permutation(len(pool))[:count]]
    picks += [pool[i] for i in rng.integers(len(pool), size=count - len(picks))]
    probes = []
    for s, i in picks:
        original = windows[s][i, :-1]
        donors = np.flatnonzero(owners[s] == owner)
        donors = donors[donors != i]  # the other text comes from the owner's other windows
        for _ in range(4):  # a donor whose text differs from the original right after the cut
            cut = int(rng.integers(1, seq_len))
            if len(donors):
                donor = windows[s][rng.choice(donors), :-1]  # inputs only: never a scored window's last target
            if not len(donors) or np.array_equal(donor[cut:], original[cut:]):
                donor = (original + 1 + rng.integers(vocab_size - 1, size=seq_len)) % vocab_size
            changed = np.flatnonzero(donor[cut:] != original[cut:])
            if len(changed):
                cut += int(changed[0])
                probes.append(_Entry(s, i, np.concatenate([original[:cut], donor[cut:]]), cut))
                break
    return probes


def _check(probed: list[tuple[_Entry, np.ndarray]], lp: list[np.ndarray], tolerance: float, result: Score) -> None:
    """Each probe's log-probabilities before its cut must match the scored window's; raises NotCausal."""
    result.probes = len(probed)
    if not probed:
        return
    worst, where, bad, at_cut = 0.0, (0, 0), 0, []
    for entry, row in probed:
        difference = lp[entry.source][entry.window][:entry.cut].astype(np.float64) - row[:entry.cut]
        position = int(np.argmax(np.abs(difference)))
        if abs(difference[position]) > tolerance:
            bad += 1
        if abs(difference[position]) > worst:
            worst, where = abs(float(difference[position])), (position, len(row))
        at_cut.append(difference[-1])  # the scored one minus the probe's: a model that peeks gains here
    result.max_difference = worst
    rule = ("A model's answer for a window must depend on that window's earlier tokens alone: not on later "
            "tokens, not on other windows it saw, not on how or how often it is called.")
    if bad:
        raise NotCausal(f"the model is not causal: the log-probability of a target changed when only later tokens "
                        f"of its window changed, in a fresh model process (on {bad} of {len(probed)} probes; up to "
                        f"{worst:.3g} nats, at position {where[0]} of {where[1]}; allowed {tolerance:g}). {rule}")
    mean = float(np.mean(at_cut))
    error = float(np.std(at_cut, ddof=1)) / math.sqrt(len(at_cut)) if len(at_cut) > 1 else 0.0
    if mean > max(MEAN_Z * error, tolerance / 10):
        raise NotCausal(f"the model is not causal: right before the tokens that changed, the scored windows' targets "
                        f"got {mean:.3g} nats more log-probability on average than a fresh model process gave them "
                        f"(standard error {error:.2g}, {len(at_cut)} probes). {rule}")
