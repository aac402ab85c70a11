"""Trusted evaluator: bits per byte of the trained model on a held-out split. Protected: the agent cannot edit it.

    AUTORESEARCH_SPLIT=val python evaluate.py   # after train.py; cwd is the experiment's worktree

Imports build_model from ./train.py, loads $AUTORESEARCH_OUT/model.pt and scores the first
EVAL_TOKENS target tokens of $AUTORESEARCH_DATA/<split>.bin, in consecutive windows of the
model's sequence length. The cross-entropy is computed here, in fp32, from the model's logits;
each target token weighs its length in bytes (the document separator counts for nothing), so the
score is per byte of text, whatever the vocabulary. Writes
$AUTORESEARCH_OUT/metrics.json and prints `val_bpb: x` (`test_bpb: x` for the test split).

Not a sandbox: train.py is agent code running in this process. A cheap check rejects models
whose early logits depend on later tokens; it is a guard, not a proof.
"""

import importlib.util
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

EVAL_TOKENS = {"cpu": 2**17, "mps": 2**18, "cuda": 2**20}  # target tokens scored, fixed per device type
EVAL_BATCH = 8            # windows per forward pass: speed and memory only, not the result


REJECTED = 3  # exit status telling the harness the model broke a rule: the experiment is recorded as rejected


def fail(message, status=1):
    print(f"evaluate.py: {message}", file=sys.stderr)
    sys.exit(status)


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


def nats_and_bytes(logits, targets, token_bytes):
    """Sum of the cross-entropy (nats) over targets that stand for text, and the number of bytes they stand for.

    logits [B, T, V], targets [B, T] int64, token_bytes [V] int64. Targets with 0 bytes are left out.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    nats = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nbytes = token_bytes[targets]
    counted = nbytes > 0
    return nats[counted].double().sum().item(), nbytes[counted].sum().item()


def bits_per_byte(total_nats, total_bytes):
    return total_nats / (math.log(2) * total_bytes)


def load_model(out_dir, device):
    path = os.path.join(out_dir, "model.pt")
    if not os.path.exists(path):
        fail(f"{path} not found: did train.py finish?")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        model_args, state_dict = checkpoint["model_args"], checkpoint["state_dict"]
    except Exception as e:
        fail(f"{path} is not a checkpoint of the form {{'model_args': ..., 'state_dict': ...}}: {e}")
    sys.path.insert(0, os.getcwd())  # train.py imports its neighbours (sampler.py)
    spec = importlib.util.spec_from_file_location("train", os.path.join(os.getcwd(), "train.py"))
    train = sys.modules["train"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    model = train.build_model(**model_args)
    model.load_state_dict(state_dict)
    return model.to(device).eval(), model_args


def check_causal(model, window, vocab_size):
    """The logits of the first half of a window must not change when the second half does (checked in fp32)."""
    half = window.size(1) // 2
    changed = window.clone()
    changed[:, half:] = (changed[:, half:] + 1) % vocab_size
    a, b = model(window)[:, :half].float(), model(changed)[:, :half].float()
    if not torch.allclose(a, b, atol=1e-3, rtol=0):
        fail(f"the model is not causal: logits at positions < {half} change when later tokens change "
             f"(max difference {(a - b).abs().max().item():.3g})", REJECTED)


@torch.no_grad()
def main():
    t0 = time.time()
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    out_dir = os.environ.get("AUTORESEARCH_OUT") or os.path.join(".autoresearch", "out")
    split = os.environ.get("AUTORESEARCH_SPLIT") or "val"
    if split not in ("val", "test"):
        fail(f"AUTORESEARCH_SPLIT must be val or test, got {split!r}")
    device = pick_device(os.environ.get("AUTORESEARCH_DEVICE") or "auto")
    if device.type == "cpu" and os.environ.get("AUTORESEARCH_THREADS"):
        torch.set_num_threads(int(os.environ["AUTORESEARCH_THREADS"]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    meta_path, bin_path = os.path.join(data_dir, "meta.json"), os.path.join(data_dir, f"{split}.bin")
    for path in (meta_path, bin_path):
        if not os.path.exists(path):
            fail(f"{path} not found: run prepare.py first")
    with open(meta_path) as f:
        meta = json.load(f)
    token_bytes = torch.tensor(meta["token_bytes"], dtype=torch.int64, device=device)
    data = np.memmap(bin_path, dtype=np.uint16, mode="r")
    n_targets = min(EVAL_TOKENS[device.type], len(data) - 1)
    tokens = torch.from_numpy(data[:n_targets + 1].astype(np.int64)).to(device)

    model, model_args = load_model(out_dir, device)
    seq_len = int(model_args["sequence_len"])
    check_causal(model, tokens[None, :seq_len], meta["vocab_size"])

    # consecutive windows of seq_len (the last one may be shorter): every target is scored exactly once
    def score(x, y):
        with autocast:
            logits = model(x)
        if logits.shape != (*x.shape, meta["vocab_size"]):
            fail(f"logits have shape {tuple(logits.shape)}, expected {(*x.shape, meta['vocab_size'])}")
        if not torch.isfinite(logits).all():
            fail("the model produced non-finite logits")
        return nats_and_bytes(logits, y, token_bytes)

    full, batch = n_targets // seq_len, EVAL_BATCH
    xs, ys = tokens[:full * seq_len].view(full, seq_len), tokens[1:full * seq_len + 1].view(full, seq_len)
    scored = [score(xs[i:i + batch], ys[i:i + batch]) for i in range(0, full, batch)]
    if n_targets > full * seq_len:
        scored.append(score(tokens[None, full * seq_len:n_targets], tokens[None, full * seq_len + 1:]))
    total_nats, total_bytes = sum(n for n, _ in scored), sum(b for _, b in scored)
    if total_bytes == 0:
        fail(f"{bin_path}: no target tokens with bytes to score")
    bpb = bits_per_byte(total_nats, total_bytes)
    if not math.isfinite(bpb):
        fail(f"{split}_bpb is not finite ({bpb})")

    summary_path = os.path.join(out_dir, "train_summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    eval_seconds = time.time() - t0
    metrics = {f"{split}_bpb": bpb, **{k: v for k, v in summary.items() if not k.endswith("_bpb")},
               "eval_tokens": n_targets, "eval_bytes": total_bytes, "eval_seconds": round(eval_seconds, 2)}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    print(f"{split}_bpb: {bpb:.6f}")
    print(f"eval_seconds: {eval_seconds:.2f}")


if __name__ == "__main__":
    main()
