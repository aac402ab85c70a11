"""The speedrun protocol: how many training tokens the model needs to reach a target val_bpb. Protected.

    python speedrun.py prepare [--data NAME ...]   # prepare.py, then the target from the baseline
    python speedrun.py train                       # train.py, saving CHECKPOINTS evenly spaced checkpoints
    python speedrun.py evaluate                    # the trusted score: tokens_to_target

A run trains for the budget H (tokens) and saves its model at every H / CHECKPOINTS tokens
(train.py does it when AUTORESEARCH_CHECKPOINTS is set: checkpoint-001.pt ... in
$AUTORESEARCH_OUT). The evaluator scores the checkpoints in order on the held-out split, itself,
with evaluate.py's bits per byte, and stops at the first one at or below the target:

    tokens_to_target = where the line between that checkpoint and the one before it crosses the
                       target (the first checkpoint's own position if it is the first)
    never reached    = H * final_bpb / target: more than H, so a loss to every run that reaches the
                       target, and a smaller loss the closer the run came

The number is the evaluator's: checkpoint k stands for k * H / CHECKPOINTS tokens by this
protocol, whatever the training process prints or writes. (The token count itself is the
training loop's, as for every token budget; the harness's hard wall-clock limit bounds a loop
that lies about it.)

The target is set from the baseline: `prepare` trains the train.py of your checkout once (seed 0,
the [budget] default of autoresearch.toml, which must be a token budget) and takes its final
checkpoint's bits per byte on each held-out split as that split's target, per device type, in
$AUTORESEARCH_DATA/speedrun.json (out of the training process's reach). Delete that file, or
change the data or the budget, to set it again.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile

CHECKPOINTS = 10          # checkpoints per run, evenly spaced over the budget
CHECKPOINT_EVAL_TOKENS = {"cpu": 2**14, "mps": 2**16, "cuda": 2**18}  # held-out tokens scored per checkpoint
TARGET_FILE = "speedrun.json"


def fail(message, status=1):
    print(f"speedrun.py: {message}", file=sys.stderr)
    sys.exit(status)


def horizon(environ):
    tokens = environ.get("AUTORESEARCH_BUDGET_TOKENS")
    if not tokens:
        fail("the speedrun counts tokens: give the run a token budget (e.g. --budget 1Mtok), "
             f"not {environ.get('AUTORESEARCH_BUDGET') or 'none'}")
    return float(tokens)


def checkpoint_bpbs(out_dir, data_dir, split, device, target=None):
    """[(tokens fraction k/N, bpb)] of the checkpoints in order, scored by evaluate.py, and the parameter count of
    the model; stops at the first at or below `target`. A missing checkpoint scores infinity (the run did not
    show it got there)."""
    import evaluate

    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    names = [f"checkpoint-{k:03d}.pt" for k in range(1, CHECKPOINTS + 1)]
    if not any(os.path.exists(os.path.join(out_dir, name)) for name in names):
        fail(f"no checkpoints in {out_dir}: train.py must save checkpoint-001.pt ... checkpoint-{CHECKPOINTS:03d}.pt "
             "at every 1/AUTORESEARCH_CHECKPOINTS of the budget")
    curve, params = [], None
    for k, name in enumerate(names, start=1):
        path = os.path.join(out_dir, name)
        bpb = float("inf")
        if os.path.exists(path):
            model, model_args = evaluate.load_model(path, device)
            params = sum(p.numel() for p in model.parameters())
            bpb = evaluate.evaluate(model, model_args, data_dir, split, meta, device,
                                    CHECKPOINT_EVAL_TOKENS[device.type])[f"{split}_bpb"]
        curve.append((k / CHECKPOINTS, bpb))
        print(f"checkpoint {k:3d}/{CHECKPOINTS}: {split}_bpb {bpb:.6f}", flush=True)
        if target is not None and bpb <= target:
            break
    return curve, params


def tokens_to_target(curve, target, total):
    """Tokens at which the curve first reaches the target (linear between checkpoints), or total * final / target."""
    for i, (fraction, bpb) in enumerate(curve):
        if bpb <= target:
            if i == 0:
                return fraction * total, True
            before_fraction, before = curve[i - 1]
            if before == float("inf"):
                return fraction * total, True
            crossing = before_fraction + (fraction - before_fraction) * (before - target) / (before - bpb)
            return crossing * total, True
    return total * curve[-1][1] / target, False


# ----------------------------------------------------------------------------
# The three commands


def train():
    """train.py with the checkpoint schedule of this protocol."""
    horizon(os.environ)  # a token budget, or nothing to train for
    os.environ["AUTORESEARCH_CHECKPOINTS"] = str(CHECKPOINTS)
    os.execv(sys.executable, [sys.executable, "train.py", *sys.argv[2:]])


def evaluate_run():
    import evaluate
    import torch

    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    out_dir = os.environ.get("AUTORESEARCH_OUT") or os.path.join(".autoresearch", "out")
    split = os.environ.get("AUTORESEARCH_SPLIT") or "val"
    total = horizon(os.environ)
    device = evaluate.pick_device(os.environ.get("AUTORESEARCH_DEVICE") or "auto")
    if device.type == "cpu" and os.environ.get("AUTORESEARCH_THREADS"):
        torch.set_num_threads(int(os.environ["AUTORESEARCH_THREADS"]))
    path = os.path.join(data_dir, TARGET_FILE)
    try:
        with open(path) as f:
            target = json.load(f)["targets"][device.type][split]
    except (OSError, KeyError, ValueError):
        fail(f"no {split} target for {device.type} in {path}: run `autoresearch prepare` on this machine")
    with torch.no_grad():
        curve, params = checkpoint_bpbs(out_dir, data_dir, split, device, target)
    tokens, reached = tokens_to_target(curve, target, total)
    summary_path = os.path.join(out_dir, "train_summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    metrics = {"tokens_to_target": tokens, "reached": int(reached), "target_bpb": target,
               f"{split}_bpb": curve[-1][1], "checkpoints_scored": len(curve), "horizon_tokens": total,
               **{k: v for k, v in summary.items() if not k.endswith("_bpb")},
               **({"num_params_M": round(params / 1e6, 3)} if params else {})}  # counted here, not reported
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    print(f"{split}_bpb: {curve[-1][1]:.6f}")
    print(f"reached: {int(reached)}")
    print(f"tokens_to_target: {tokens:.1f}")


def prepare():
    """prepare.py with the given arguments, then the target from the baseline, unless it is already set."""
    import torch

    import evaluate
    from autoresearch import config as target_config

    code = subprocess.call([sys.executable, "prepare.py", *sys.argv[2:]])
    if code:
        sys.exit(code)
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    config = target_config.load(".")
    budget = config.default_budget()
    if budget.kind != "tokens":
        fail(f"[budget] default must be a token budget for the speedrun (e.g. \"1Mtok\"), not {budget}")
    device = evaluate.pick_device(config.run.device)
    with open(os.path.join(data_dir, "meta.json")) as f:
        stamp = json.load(f)["stamp"]
    with open("train.py", "rb") as f:
        baseline = f.read()
    key = {"stamp": stamp, "horizon_tokens": budget.value, "checkpoints": CHECKPOINTS,
           "train_py_sha256": hashlib.sha256(baseline).hexdigest()}
    path = os.path.join(data_dir, TARGET_FILE)
    known = json.load(open(path)) if os.path.exists(path) else {}
    if known.get("key") == key and device.type in known.get("targets", {}):
        print(f"{path}: target already set: {json.dumps(known['targets'][device.type])}")
        return
    print(f"setting the speedrun target: training the baseline train.py once ({budget}, seed 0, {device.type})",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="speedrun-baseline-") as out_dir:
        env = {**os.environ, "AUTORESEARCH_DATA": os.path.join(data_dir, "train"), "AUTORESEARCH_OUT": out_dir,
               "AUTORESEARCH_SEED": "0", "AUTORESEARCH_DEVICE": device.type, "AUTORESEARCH_CHECKPOINTS": "1",
               **budget.env()}
        env.pop("AUTORESEARCH_BUDGET_SECONDS", None), env.pop("AUTORESEARCH_BUDGET_STEPS", None)
        code = subprocess.call([sys.executable, "train.py"], env=env)
        if code:
            fail(f"the baseline train.py failed (exit code {code}): fix it, then prepare again")
        targets = {}
        with torch.no_grad():
            model, model_args = evaluate.load_model(os.path.join(out_dir, "checkpoint-001.pt"), device)
            with open(os.path.join(data_dir, "meta.json")) as f:
                meta = json.load(f)
            for split in ("val", "test"):
                targets[split] = evaluate.evaluate(model, model_args, data_dir, split, meta, device,
                                                   CHECKPOINT_EVAL_TOKENS[device.type])[f"{split}_bpb"]
    known = {"key": key, "targets": {**(known.get("targets", {}) if known.get("key") == key else {}),
                                     device.type: targets}}
    with open(path, "w") as f:
        json.dump(known, f, indent=1)
    print(f"{path}: target val_bpb {targets['val']:.6f} (test {targets['test']:.6f}), the baseline's after "
          f"{budget.value:,.0f} tokens")


if __name__ == "__main__":
    commands = {"prepare": prepare, "train": train, "evaluate": evaluate_run}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        fail(f"usage: python speedrun.py {{{'|'.join(commands)}}} [ARGS...]")
    commands[sys.argv[1]]()
