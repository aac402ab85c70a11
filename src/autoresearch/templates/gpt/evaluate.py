"""Trusted evaluator: bits per byte of the trained model on a held-out split. Protected: the agent cannot edit it.

    AUTORESEARCH_SPLIT=val python evaluate.py   # after train.py; cwd is the experiment's worktree

This process never runs the agent's code. The model ($AUTORESEARCH_OUT/model.pt, built by ./train.py's
build_model) runs in two model processes, jailed (autoresearch.modelproc: they see no held-out data, reach no
network, write nothing), which answer "logits for these windows"; this process computes the cross-entropy from
those logits, in fp32, and checks causality on what it scores: a share of the windows is also given to the other
model process with later tokens changed, and the log-probabilities before the change must agree; a model that
fails this is rejected (exit status 3). See autoresearch.scoring for the windows and the check.

It scores the first EVAL_TOKENS target tokens of $AUTORESEARCH_DATA/<split>.bin, in windows of the model's
sequence length read at a stride of one token more. Data prepared from several sources (a validation mix) is
scored source by source, each on its weight's share of EVAL_TOKENS, and val_bpb is the weighted mean (each
source's bits per byte is reported as well). Each target token weighs its length in bytes (the document
separator counts for nothing), so the score is per byte of text, whatever the vocabulary. Writes
$AUTORESEARCH_OUT/metrics.json and prints `val_bpb: x` (`test_bpb: x` for the test split). The parameter count
is read from the saved weights, not from the training summary.
"""

import importlib.util
import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from autoresearch import modelproc, scoring

EVAL_TOKENS = {"cpu": 2**17, "mps": 2**18, "cuda": 2**20}  # target tokens scored, fixed per device type
EVAL_BATCH = 8            # windows per forward pass: speed and memory only, not the result
TOLERANCE = {"cpu": 1e-4, "mps": 2e-2, "cuda": 2e-2}  # nats a probe's log-probabilities may differ by (numerics)
TRANSPORT = {"cpu": torch.float32, "mps": torch.float32, "cuda": torch.bfloat16}  # dtype the logits travel in

REJECTED = 3  # exit status telling the harness the model broke a rule: the experiment is recorded as rejected


def fail(message, status=1):
    print(f"evaluate.py: {message}", file=sys.stderr)
    sys.exit(status)


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


# ----------------------------------------------------------------------------
# What runs in the model processes (jailed): the agent's train.py builds the model there, never here


def start_device(path, device, threads):
    """Before the agent's code runs: the device ready (CUDA starts while the other model process works)."""
    device = torch.device(device)
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.zeros(1, device=device)


def load_model(path, device, threads):
    """./train.py's build_model(**model_args) with the saved weights; returns answer(x) -> logits [B, T, V]."""
    device = torch.device(device)
    spec = importlib.util.spec_from_file_location("train", os.path.join(os.getcwd(), "train.py"))
    train = sys.modules["train"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = train.build_model(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    model = model.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    @torch.no_grad()
    def answer(x):
        with autocast:
            return model(x.to(device))

    return answer


# ----------------------------------------------------------------------------
# The trusted side


def checkpoint_info(path):
    """(model_args, parameter count) of the checkpoint at `path`, read as data (weights only, memory-mapped)."""
    if not os.path.exists(path):
        fail(f"{path} not found: did train.py finish?")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        model_args, state_dict = checkpoint["model_args"], checkpoint["state_dict"]
        int(model_args["sequence_len"])
        tensors = {(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)): t.numel()
                   for t in state_dict.values() if isinstance(t, torch.Tensor)}  # a tied weight counts once
    except Exception as e:
        fail(f"{path} is not a checkpoint of the form {{'model_args': {{'sequence_len': ..., ...}}, "
             f"'state_dict': ...}}: {e}")
    return model_args, sum(tensors.values())


def held_out(data_dir, split, meta):
    """[(source or None, weight, path)] of the split: one file, or one per source of a validation mix
    (prepare --data a,b), weighted as prepare recorded."""
    mix = meta.get("mix")
    if not mix:
        return [(None, 1.0, os.path.join(data_dir, f"{split}.bin"))]
    return [(name, weight, os.path.join(data_dir, f"{split}.{name}.bin")) for name, weight in mix.items() if weight > 0]


def evaluate(scorer, path, data_dir, split, meta, device, eval_tokens, threads=0):
    """Score the checkpoint at `path`: ({f"{split}_bpb": ..., per-source bpb when the split is a mix, eval_tokens,
    eval_bytes, probes, probe_max_diff}, parameter count). A mix scores each source on its weight's share of
    eval_tokens and averages their bits per byte with the same weights."""
    model_args, params = checkpoint_info(path)
    seq_len = int(model_args["sequence_len"])
    files = held_out(data_dir, split, meta)
    for _, _, file in files:
        if not os.path.exists(file):
            fail(f"{file} not found: run prepare.py first")
    total = sum(weight for _, weight, _ in files)
    sources = [scoring.Source(np.memmap(file, dtype=np.uint16, mode="r"),
                              max(seq_len, round(eval_tokens * weight / total))) for _, weight, file in files]
    try:
        result = scorer.score(load_model, (path, str(device), threads), sources, seq_len=seq_len,
                              token_bytes=meta["token_bytes"], vocab_size=meta["vocab_size"], batch=EVAL_BATCH,
                              transport=TRANSPORT[device.type], tolerance=TOLERANCE[device.type],
                              prepare=start_device, pipeline=device.type != "cpu")
    except scoring.NotCausal as e:
        fail(str(e), REJECTED)
    except (modelproc.ModelError, ValueError) as e:
        fail(str(e))
    if result.jail_error:
        print(f"evaluate.py: note: the model processes ran without their jail ({result.jail_error})", file=sys.stderr)
    out = {f"{split}_bpb": 0.0, "eval_tokens": sum(result.targets), "eval_bytes": sum(result.bytes),
           "probes": result.probes, "probe_max_diff": result.max_difference}
    for i, (name, weight, _) in enumerate(files):
        bpb = result.bits_per_byte(i)
        if not math.isfinite(bpb):
            fail(f"{split}_bpb is not finite ({bpb})")
        if name is not None:
            out[f"{split}_bpb_{re.sub(r'[^A-Za-z0-9]', '_', name)}"] = bpb
        out[f"{split}_bpb"] += weight / total * bpb
    return out, params


def main():
    t0 = time.time()
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    out_dir = os.environ.get("AUTORESEARCH_OUT") or os.path.join(".autoresearch", "out")
    split = os.environ.get("AUTORESEARCH_SPLIT") or "val"
    if split not in ("val", "test"):
        fail(f"AUTORESEARCH_SPLIT must be val or test, got {split!r}")
    hide = [data_dir, *filter(None, [os.environ.get("AUTORESEARCH_CACHE")])]
    with scoring.Scorer(hide, required=os.environ.get("AUTORESEARCH_ISOLATE") == "required") as scorer:
        # from here on this process may read held-out data: the model processes are forked from the scorer's
        # zygote, made above, before it did
        device = pick_device(os.environ.get("AUTORESEARCH_DEVICE") or "auto")
        threads = int(os.environ.get("AUTORESEARCH_THREADS") or 0)  # the model process's
        if device.type == "cpu":
            # The model computes on the same cores. This process's work between its answers is small, and its
            # OpenMP workers, spinning after each operation, would take a core from it: 1.7x the evaluation's time.
            torch.set_num_threads(1)
        meta_path = os.path.join(data_dir, "meta.json")
        if not os.path.exists(meta_path):
            fail(f"{meta_path} not found: run prepare.py first")
        with open(meta_path) as f:
            meta = json.load(f)
        scores, params = evaluate(scorer, os.path.join(out_dir, "model.pt"), data_dir, split, meta, device,
                                  EVAL_TOKENS[device.type], threads)
    summary_path = os.path.join(out_dir, "train_summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    eval_seconds = time.time() - t0
    metrics = {**scores, **{k: v for k, v in summary.items() if not k.endswith("_bpb") and k not in scores},
               "num_params_M": round(params / 1e6, 3),  # counted here, from the saved weights, not reported
               "eval_seconds": round(eval_seconds, 2)}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    for key, value in scores.items():
        if key.startswith(f"{split}_bpb"):
            print(f"{key}: {value:.6f}")
    print(f"causality: {scores['probes']} probes by a fresh model process, largest log-probability difference "
          f"{scores['probe_max_diff']:.3g} nats")
    print(f"eval_seconds: {eval_seconds:.2f}")


if __name__ == "__main__":
    main()
