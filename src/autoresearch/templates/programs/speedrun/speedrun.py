"""The speedrun protocol: how many training tokens the model needs to reach a target val_bpb. Protected.

    python speedrun.py prepare [--data NAME ...]   # prepare.py, then the target from the baseline
    python speedrun.py train                       # train.py, saving CHECKPOINTS evenly spaced checkpoints
    python speedrun.py evaluate                    # the trusted score: tokens_to_target

A run trains for the budget H (tokens) and saves its model at every H / CHECKPOINTS tokens
(train.py does it when AUTORESEARCH_CHECKPOINTS is set: checkpoint-001.pt ... in
$AUTORESEARCH_OUT). The evaluator scores the checkpoints in order on the held-out split, itself,
with evaluate.py's scoring (the model in jailed model processes, the cross-entropy here), and stops
at the first one at or below the target:

    tokens_to_target = where the line between that checkpoint and the one before it crosses the
                       target (the first checkpoint's own position if it is the first)
    never reached    = H * final_bpb / target: more than H, so a loss to every run that reaches the
                       target, and a smaller loss the closer the run came

Which weights a checkpoint holds is established outside the training process: the harness copies each
checkpoint the moment it appears ([run] snapshots in autoresearch.toml; $AUTORESEARCH_SNAPSHOTS), with the time it
appeared on its own clock, and notes any checkpoint written again, replaced or deleted after that. The evaluator
scores those copies, and rejects the run (a checkpoint is not what it claims to be) when a checkpoint changed after
it appeared, when checkpoints appeared out of order, or when they did not appear at the pace of one training run:
all in a burst at the end, or one far behind the others' rhythm (later weights saved under an earlier name). The
number is the evaluator's: checkpoint k stands for k * H / CHECKPOINTS tokens by this protocol, whatever the
training process prints or writes. (The token count itself is the training loop's, as for every token budget; the
harness's hard wall-clock limit and the run_seconds constraint bound a loop that trains on more tokens than it
says, or before its first checkpoint.)

The target is set from the baseline: `prepare` trains the train.py of your checkout once (seed 0,
the [budget] default of autoresearch.toml, which must be a token budget) and takes its final
checkpoint's bits per byte on each held-out split as that split's target, per device type, in
$AUTORESEARCH_DATA/speedrun.json (out of the training process's reach). Delete that file, or
change the data or the budget, to set it again.
"""

import hashlib
import json
import os
import runpy
import subprocess
import sys
import tempfile

import torch  # noqa: F401  train.py's, imported once per session by the harness's warm server (forkserver.py)

CHECKPOINTS = 10          # checkpoints per run, evenly spaced over the budget
CHECKPOINT_EVAL_TOKENS = {"cpu": 2**14, "mps": 2**16, "cuda": 2**18}  # held-out tokens scored per checkpoint
TARGET_FILE = "speedrun.json"
START_SHARE = 0.5         # the checkpoints' rhythm must start within this share of the train command's time ...
PACE = 0.25               # ... and none may lag it by more than this share of their span ...
SLACK_SECONDS = 1.0       # ... give or take this (the harness looks every 0.1 s; start-up varies)
REJECTED = 3              # exit status: the harness records the run as rejected


def fail(message, status=1):
    print(f"speedrun.py: {message}", file=sys.stderr)
    sys.exit(status)


def horizon(environ):
    tokens = environ.get("AUTORESEARCH_BUDGET_TOKENS")
    if not tokens:
        fail("the speedrun counts tokens: give the run a token budget (e.g. --budget 1Mtok), "
             f"not {environ.get('AUTORESEARCH_BUDGET') or 'none'}")
    return float(tokens)


def checkpoint_paths(out_dir):
    """[(k, path)] of the checkpoints to score. Under the harness: its copies ($AUTORESEARCH_SNAPSHOTS), once they
    are shown to be what they claim (`lie`); run by hand: the files in out_dir, as they are."""
    names = [f"checkpoint-{k:03d}.pt" for k in range(1, CHECKPOINTS + 1)]
    directory = os.environ.get("AUTORESEARCH_SNAPSHOTS")
    if directory:
        with open(os.path.join(directory, "snapshots.json")) as f:
            seen = {entry["name"]: entry for entry in json.load(f)["files"]}
        problem = lie(seen, names)
        if problem:
            fail(f"a checkpoint is not what it claims to be: {problem}", REJECTED)
    else:
        print("speedrun.py: note: not run by the harness ($AUTORESEARCH_SNAPSHOTS is not set): the checkpoint files are "
              "scored as they are now, unverified", file=sys.stderr)
        directory, seen = out_dir, {name: {} for name in names if os.path.exists(os.path.join(out_dir, name))}
    if not seen:
        fail(f"no checkpoints in {out_dir}: train.py must save checkpoint-001.pt ... checkpoint-{CHECKPOINTS:03d}.pt "
             "at every 1/AUTORESEARCH_CHECKPOINTS of the budget")
    return [(k, os.path.join(directory, name)) for k, name in enumerate(names, start=1) if name in seen]


def lie(seen, names):
    """Why the checkpoints the harness saw appear ({name: {"seconds", "changed"}}) cannot be what their names claim,
    or None. Checkpoint k claims the weights after k/CHECKPOINTS of the tokens: saved once, in order, and at the
    pace of one training run."""
    for name in names:
        if seen.get(name, {}).get("changed"):
            return (f"{name} was {seen[name]['changed']} after it appeared ({seen[name]['seconds']:.1f}s into "
                    "training): a checkpoint stands for the weights of the moment it is saved (save it once, whole: "
                    "under another name, then renamed)")
    times = [(k, seen[name]["seconds"]) for k, name in enumerate(names, start=1) if name in seen]
    for (k, t), (later, t_later) in zip(times, times[1:]):
        if t_later < t:
            return f"checkpoint-{later:03d}.pt appeared before checkpoint-{k:03d}.pt ({t_later:.1f}s, {t:.1f}s)"
    if len(times) < 2:
        return None
    (k_first, first), (k_last, last) = times[0], times[-1]
    interval = (last - first) / (k_last - k_first)  # seconds per checkpoint, by the first and the last
    start = first - k_first * interval               # when the first step was taken, by that rhythm
    if start > START_SHARE * last + SLACK_SECONDS:
        return (f"the checkpoints appeared only at the end of training (from {first:.1f}s to {last:.1f}s into it): "
                "each must be saved when training reaches it")
    for k, t in times:
        lag = t - (start + k * interval)
        if lag > PACE * (last - start) + SLACK_SECONDS:
            return (f"checkpoint-{k:03d}.pt appeared at {t:.1f}s, {lag:.1f}s behind the others' rhythm: it holds "
                    "weights from later than its name claims")
    return None


def checkpoint_bpbs(scorer, checkpoints, data_dir, split, device, threads, target=None):
    """[(tokens fraction k/N, bpb)] of the checkpoints [(k, path)] in order, scored by evaluate.py, and the
    parameter count of the model; stops at the first at or below `target`. A missing checkpoint scores infinity
    (the run did not show it got there)."""
    import evaluate

    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    paths = dict(checkpoints)
    curve, params = [], None
    for k in range(1, CHECKPOINTS + 1):
        bpb = float("inf")
        if k in paths:
            scores, params = evaluate.evaluate(scorer, paths[k], data_dir, split, meta, device,
                                               CHECKPOINT_EVAL_TOKENS[device.type], threads)
            bpb = scores[f"{split}_bpb"]
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
    """train.py with the checkpoint schedule of this protocol, in this process (its imports are loaded: a start-up
    short beside the training, which the checkpoints' pace is judged against)."""
    horizon(os.environ)  # a token budget, or nothing to train for
    os.environ["AUTORESEARCH_CHECKPOINTS"] = str(CHECKPOINTS)
    sys.argv = ["train.py", *sys.argv[2:]]
    runpy.run_path("train.py", run_name="__main__")


def evaluate_run():
    import evaluate

    from autoresearch import scoring

    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    out_dir = os.environ.get("AUTORESEARCH_OUT") or os.path.join(".autoresearch", "out")
    split = os.environ.get("AUTORESEARCH_SPLIT") or "val"
    total = horizon(os.environ)
    hide = [data_dir, *filter(None, [os.environ.get("AUTORESEARCH_CACHE")])]
    with scoring.Scorer(hide, required=os.environ.get("AUTORESEARCH_ISOLATE") == "required") as scorer:
        device = evaluate.pick_device(os.environ.get("AUTORESEARCH_DEVICE") or "auto")
        threads = int(os.environ.get("AUTORESEARCH_THREADS") or 0)
        if device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        path = os.path.join(data_dir, TARGET_FILE)
        try:
            with open(path) as f:
                target = json.load(f)["targets"][device.type][split]
        except (OSError, KeyError, ValueError):
            fail(f"no {split} target for {device.type} in {path}: run `autoresearch prepare` on this machine")
        checkpoints = checkpoint_paths(out_dir)
        curve, params = checkpoint_bpbs(scorer, checkpoints, data_dir, split, device, threads, target)
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
    import evaluate
    from autoresearch import config as target_config
    from autoresearch import scoring

    code = subprocess.call([sys.executable, "prepare.py", *sys.argv[2:]])
    if code:
        sys.exit(code)
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data")
    config = target_config.load(".")
    budget = config.default_budget()
    if budget.kind != "tokens":
        fail(f"[budget] default must be a token budget for the speedrun (e.g. \"1Mtok\"), not {budget}")
    with scoring.Scorer([data_dir]) as scorer:  # before this process reads the held-out data
        device = evaluate.pick_device(config.run.device)
        with open(os.path.join(data_dir, "meta.json")) as f:
            meta = json.load(f)
        with open("train.py", "rb") as f:
            baseline = f.read()
        key = {"stamp": meta["stamp"], "horizon_tokens": budget.value, "checkpoints": CHECKPOINTS,
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
            checkpoint = os.path.join(out_dir, "checkpoint-001.pt")
            targets = {split: evaluate.evaluate(scorer, checkpoint, data_dir, split, meta, device,
                                                CHECKPOINT_EVAL_TOKENS[device.type])[0][f"{split}_bpb"]
                       for split in ("val", "test")}
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
