"""The transfer toy, whose optimum moves with its scale, for the transfer tests and the views' tests.

The toy's evaluator scores (LR - 3)² + |WIDTH - w| / 10 on a data split, plus seeded noise (sd 0.01), where the
best WIDTH w is 8 at SIZE 1 (the session's scale) and 2 at any larger SIZE. So the change LR 1 -> 3 helps by 4 at
every scale, and the change WIDTH 4 -> 8 helps by 0.4 at SIZE 1 and hurts by 0.4 at SIZE 2: the planted change
that helps only at small scale.
"""

from __future__ import annotations

from toy import build_toy, run_cli

TRAIN = '''\
"""Transfer toy: writes its constants for the trusted evaluator."""
import json
import os

LR = 1.0     # best at 3, at any size
WIDTH = 4    # best at 8 at size 1, at 2 when larger
SIZE = 1     # the scale
if SIZE > 5:
    raise SystemExit("out of memory")  # a scale this toy cannot train at

with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json"), "w") as f:
    json.dump({"LR": LR, "WIDTH": WIDTH, "SIZE": SIZE}, f)
print("loss: 1.0")
'''

EVALUATE = '''\
"""Trusted evaluator of the transfer toy."""
import json
import os
import random

out, data = os.environ["AUTORESEARCH_OUT"], os.environ["AUTORESEARCH_DATA"]
split = os.environ.get("AUTORESEARCH_SPLIT") or "val"
with open(os.path.join(out, "model.json")) as f:
    model = json.load(f)
with open(os.path.join(data, split, "offset.txt")) as f:
    offset = float(f.read())
width = 8 if model["SIZE"] == 1 else 2
score = (model["LR"] - 3.0) ** 2 + abs(model["WIDTH"] - width) / 10 + offset
score += random.Random(f"{os.environ['AUTORESEARCH_SEED']} {split} {model}").gauss(0, 0.01)
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"score": score}, f)
print(f"score: {score}")
'''

CONFIG = '''\
[target]
name = "transfer-toy"

[commands]
train = "python train.py"
evaluate = "python evaluate.py"

[files]
editable = ["train.py"]
protected = ["evaluate.py", "program.md"]

[metric]
name = "score"
goal = "minimize"
source = "json"

[budget]
default = "1s"
timeout = 10

[judge]
rule = "plain"
final_test_seeds = 0
'''

TRANSFER = '''
[transfer]
scale = ["size=+1"]
budget = "3s"
runs = {runs}
at_end = {at_end}
'''

LR = {"description": "LR to 3", "knobs": {"LR": 3.0}}
WIDTH = {"description": "WIDTH to 8", "replace": [{"file": "train.py", "old": "WIDTH = 4", "new": "WIDTH = 8"}]}
LR_AGAIN = {"description": "LR to 2", "knobs": {"LR": 2.0}}

KNOB = '''
[[knobs]]
name = "LR"
file = "train.py"
low = 0.1
high = 10.0
log = true
'''


def build(tmp_path, runs=24, at_end="true", transfer=True):
    config = CONFIG + KNOB + (TRANSFER.format(runs=runs, at_end=at_end) if transfer else "")
    toy = build_toy(tmp_path, train=TRAIN.replace("{", "{{").replace("}", "}}"), config=config,
                    files={"evaluate.py": EVALUATE})
    for split in ("train", "val", "test"):
        folder = toy.root / ".autoresearch" / "data" / split
        folder.mkdir(parents=True)
        if split != "train":
            (folder / "offset.txt").write_text("1.5")
    return toy


def research(toy, steps):
    result = run_cli("run", "-C", toy.root, "--tag", "t", "--experiments", len(steps), *toy.scripted(steps))
    assert result.code == 0, result.text
    return result


def build_transferred(directory):
    """The toy researched with LR then WIDTH kept, and its transfer at the session's end: (toy, the run's output)."""
    toy = build(directory)
    return toy, research(toy, [LR, WIDTH])
