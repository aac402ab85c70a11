"""The scoring machinery (scoring.py, modelproc.py) with hand-written models: its arithmetic, its windows, the jail
of the model processes, and the causality check against models that cheat in each way it is meant to catch.

The models are module-level functions of this file: the model processes are forked from the test process, so they
find them here. Where the jail is unavailable, the jail tests fail (AUTORESEARCH_SKIP_JAIL=1 skips them knowingly).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys

import numpy as np
import pytest
import torch

from autoresearch import modelproc, scoring
from jail import needs_jail

V = 11  # vocabulary of the hand-written models
SEQ = 8
DATA = np.random.default_rng(0).integers(0, V, 4000).astype(np.uint16)
TOKEN_BYTES = np.ones(V, np.int64)


# ---------------------------------------------------------------------------- models (run in the model processes)


def bigram(*_):
    """A causal model: logits from the current token alone (a fixed random table)."""
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(1))
    return lambda x: table[x]


def peeking(kind, *_):
    """A bigram model that also boosts the next input token's logit, when `kind` says it is not being probed."""
    base, calls = bigram(), [0]

    def answer(x):
        calls[0] += 1
        logits = base(x).clone()
        cheat = {"always": True, "batch of 8": x.shape[0] == 8, "after 2 calls": calls[0] > 2,
                 "in the mode it is scored in": torch.is_grad_enabled()}[kind]
        if cheat:
            logits[:, :-1].scatter_add_(-1, x[:, 1:, None], torch.full(x[:, 1:, None].shape, 5.0))
        return logits

    return answer


def remembering(*_):
    """Causal within a window, but it boosts tokens that followed the current token in windows seen before."""
    base, seen = bigram(), torch.zeros(V, V)

    def answer(x):
        logits = base(x) + 3 * (seen[x] > 0)
        for row in x:
            seen[row[:-1], row[1:]] = 1
        return logits

    return answer


def wrong_shape(*_):
    return lambda x: torch.zeros(x.shape[0], x.shape[1] + 1, V)


def nan_logits(*_):
    return lambda x: torch.full((*x.shape, V), float("nan"))


def crashing(*_):
    raise RuntimeError("boom in build_model")


def report(findings):
    raise RuntimeError("FINDINGS " + json.dumps(findings))


def look_around(hidden, written, secret_module, *_):
    """What a model process can see and do, reported through the error it raises."""
    found = {"pid": os.getpid(), "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
             "secret": getattr(sys.modules[secret_module], "SECRET", None)}
    try:
        found["hidden"] = open(hidden).read()
    except OSError as exc:
        found["hidden"] = f"error {exc.errno}"
    for path in (written, "/tmp/autoresearch-model-wrote", "/dev/shm/autoresearch-model-wrote"):
        try:
            open(path, "w").write("x")
            found[path] = "wrote"
        except OSError as exc:
            found[path] = f"error {exc.errno}"
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
        found["network"] = "connected"
    except OSError as exc:
        found["network"] = f"error {exc.errno}"
    report(found)


# ---------------------------------------------------------------------------- helpers


def score(load, args=(), tokens=DATA, n_targets=400, **options):
    with scoring.Scorer() as scorer:
        return scorer.score(load, args, [scoring.Source(tokens, n_targets)], seq_len=SEQ, token_bytes=TOKEN_BYTES,
                            vocab_size=V, batch=4, **options)


def expected_nats(tokens, n_targets):
    """The bigram model's cross-entropy over the windows the layout says are scored, computed directly."""
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(1))
    count = min(len(tokens) // (SEQ + 1), -(-n_targets // SEQ))
    windows = torch.from_numpy(tokens[:count * (SEQ + 1)].astype(np.int64)).view(count, SEQ + 1)
    logprobs = torch.log_softmax(table[windows[:, :-1]], -1).gather(-1, windows[:, 1:, None])
    return -logprobs.double().sum().item(), windows[:, 1:].numel()


# ---------------------------------------------------------------------------- arithmetic and layout


def test_an_honest_model_is_scored_on_every_window_once_by_the_cross_entropy_computed_here():
    result = score(bigram)
    nats, targets = expected_nats(DATA, 400)
    assert result.targets == [targets] == [400] and result.bytes == [400]
    assert result.nats[0] == pytest.approx(nats, rel=1e-6)
    assert result.bits_per_byte() == pytest.approx(nats / math.log(2) / 400, rel=1e-6)
    assert result.probes >= 2 * scoring.MIN_PROBES and result.max_difference == 0.0


def test_the_cuda_path_bf16_logits_and_a_batch_sent_ahead_scores_the_same_on_a_cpu():
    """What evaluate.py does on CUDA (logits in bf16, the next batch asked for while one is scored), run here."""
    exact = score(bigram)
    result = score(bigram, transport=torch.bfloat16, pipeline=True)
    assert result.targets == exact.targets and result.bytes == exact.bytes
    assert result.nats[0] == pytest.approx(exact.nats[0], rel=1e-2)  # bf16 keeps 8 bits of each logit
    assert result.max_difference == 0.0  # both processes round the same logits the same way


def test_separator_targets_count_for_nothing():
    token_bytes = TOKEN_BYTES.copy()
    token_bytes[0] = 0  # token 0 stands for no text
    with scoring.Scorer() as scorer:
        result = scorer.score(bigram, (), [scoring.Source(DATA, 400)], seq_len=SEQ, token_bytes=token_bytes,
                              vocab_size=V, batch=4)
    windows = DATA[:50 * (SEQ + 1)].reshape(50, SEQ + 1)
    assert result.bytes == [int((windows[:, 1:] != 0).sum())]


def test_windows_are_read_at_a_stride_of_one_more_token_so_no_target_is_ever_an_input():
    windows = scoring._windows(np.arange(100), 8, 30)
    assert windows.shape == (4, 9) and windows[1, 0] == 9 and windows[1, -1] == 17
    gaps = set(windows[:, -1].tolist())  # each window's last target
    assert not gaps & set(windows[:, :-1].ravel().tolist())
    owners = [np.arange(11) % 2]
    many = scoring._windows(np.arange(1000), 8, 88)
    rng = np.random.default_rng(0)
    probes = scoring._probes([many], owners, 0, 5, 4, 1000, rng)
    assert all(not set(p.inputs.tolist()) & set(many[:, -1].tolist()) for p in probes)  # nor in a probe
    assert all(owners[0][p.window] == 0 and 1 <= p.cut < 8 for p in probes)
    assert len(probes) >= scoring.MIN_PROBES and (5 + len(probes)) % 4 == 0  # the last batch is full
    with pytest.raises(ValueError, match="no window"):
        scoring._windows(np.arange(5), 8, 30)


# ---------------------------------------------------------------------------- the causality check


@pytest.mark.parametrize("kind", ["always", "batch of 8", "after 2 calls", "in the mode it is scored in"])
def test_a_model_that_peeks_at_later_tokens_is_caught_however_it_hides(kind):
    with pytest.raises(scoring.NotCausal, match="not causal"):
        with scoring.Scorer() as scorer:
            scorer.score(peeking, (kind,), [scoring.Source(DATA, 600)], seq_len=SEQ, token_bytes=TOKEN_BYTES,
                         vocab_size=V, batch=8)


def test_a_model_that_remembers_the_windows_it_has_seen_is_caught():
    with pytest.raises(scoring.NotCausal, match="other windows it saw"):
        score(remembering)


def test_a_small_systematic_peek_is_caught_on_average():
    probed = [(scoring._Entry(0, i, np.zeros(SEQ), 3), np.zeros(SEQ, np.float32)) for i in range(20)]
    lp = [np.zeros((20, SEQ), np.float32)]
    lp[0][:, 2] = 5e-5  # below the per-probe tolerance, on every probe, right before the change
    with pytest.raises(scoring.NotCausal, match="on average"):
        scoring._check(probed, lp, 1e-4, scoring.Score())
    lp[0][:, 2] = np.random.default_rng(0).normal(0, 2e-5, 20)  # numerical noise: no systematic gain
    scoring._check(probed, lp, 1e-4, scoring.Score())


# ---------------------------------------------------------------------------- failures are clear


@pytest.mark.parametrize("load, words", [(wrong_shape, "logits of shape (4, 9, 11)"),
                                         (nan_logits, "non-finite logits"),
                                         (crashing, "boom in build_model")])
def test_a_broken_model_is_an_error_that_says_why(load, words):
    with pytest.raises(modelproc.ModelError, match=words.replace("(", r"\(").replace(")", r"\)")):
        score(load)


# ---------------------------------------------------------------------------- the jail


SECRET = None


@needs_jail
def test_a_model_process_sees_no_held_out_data_no_process_no_network_and_writes_nothing(tmp_path):
    global SECRET
    data = tmp_path / "data"
    data.mkdir()
    (data / "val.bin").write_text("held out")
    writable = tmp_path / "out"
    writable.mkdir()
    with scoring.Scorer(hide=[data]) as scorer:
        SECRET = "read after the scorer was made"  # like the held-out data: the model processes never see it
        try:
            with pytest.raises(modelproc.ModelError, match="FINDINGS") as raised:
                scorer.score(look_around, (str(data / "val.bin"), str(writable / "x"), __name__),
                             [scoring.Source(DATA, 100)], seq_len=SEQ, token_bytes=TOKEN_BYTES, vocab_size=V)
        finally:
            SECRET = None
    found = json.JSONDecoder().raw_decode(str(raised.value).split("FINDINGS ", 1)[1])[0]
    assert found["secret"] is None
    assert found["hidden"] != "held out"
    assert found["pid"] == 1 and found["processes"] == [1]  # its own pid namespace: not the evaluator, not the harness
    assert all(found[path].startswith("error") for path in (str(writable / "x"), "/tmp/autoresearch-model-wrote",
                                                            "/dev/shm/autoresearch-model-wrote"))
    assert found["network"].startswith("error")
    assert not (writable / "x").exists()


@needs_jail
def test_a_model_process_is_jailed_here():
    with scoring.Scorer() as scorer:
        model = scorer.zygote.spawn(bigram)
        try:
            assert model.jail_error == ""
        finally:
            model.close()


def test_isolation_required_but_unavailable_refuses(monkeypatch):
    monkeypatch.setattr(modelproc, "_namespaces", lambda hide: "no namespaces here (simulated)")
    with modelproc.Zygote(required=True) as zygote:
        with pytest.raises(modelproc.ModelError, match="cannot be isolated"):
            zygote.spawn(bigram)
    with modelproc.Zygote() as zygote:  # not required: it runs, and says it was not isolated
        model = zygote.spawn(bigram)
        assert "simulated" in model.jail_error
        model.close()
