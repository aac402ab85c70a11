"""The toy target the harness tests run on, and small helpers the test modules import.

The toy's score is computed from its UPPERCASE constants and the budget, lower is better:

    score = (LR - 3)**2 + |WIDTH - 8| / 10 + 1 / budget_seconds      (5.4 at the defaults, 1s budget)

Every run appends its pid to `toy.pid_file`, so a test can tell when a run has started and check
that it is gone afterwards. The fixtures that build one are in conftest.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from autoresearch.cli import main
from autoresearch.ledger import Ledger

TAG = "t"

TRAIN = '''\
"""Toy target: a score from the constants below and the budget. Lower is better."""
import os
import time

LR = 1.0     # learning rate: best at 3
WIDTH = 4    # width: best at 8
SLEEP = 0.0  # seconds each run takes
HANG = 0     # 1: ignore the budget and never finish

with open({pid_file!r}, "a") as pids:
    pids.write(f"{{os.getpid()}}\\n")
time.sleep(SLEEP)
while HANG:
    time.sleep(1)
budget = float(os.environ.get("AUTORESEARCH_BUDGET_SECONDS", "1"))
print(f"score: {{(LR - 3.0) ** 2 + abs(WIDTH - 8) / 10 + 1 / budget}}")
'''

CONFIG = '''\
[target]
name = "toy"

[commands]
train = "python train.py"

[files]
editable = ["train.py", "lib/*.py"]
protected = ["scorer.py", "program.md"]

[metric]
name = "score"
goal = "minimize"
source = "stdout"

[budget]
default = "1s"

[judge]
rule = "plain"  # the toy's score is deterministic: one run; tests of the statistical judge set their own

[[knobs]]
name = "LR"
file = "train.py"
low = 0.1
high = 10.0
log = true

[[knobs]]
name = "WIDTH"
file = "train.py"
type = "int"
low = 1
high = 16
'''

OTHER_FILES = {
    "scorer.py": '"""A trusted helper the agent may not touch."""\nPENALTY = 0.0\n',
    "program.md": "Make the score as low as you can.\n",
}


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Toy:
    """A toy target on disk, with the few lookups tests make into its git and ledger."""

    root: Path
    pid_file: Path

    def git(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["git", "-C", str(self.root), *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)}: {result.stderr}")
        return result.stdout.strip()

    def resolve(self, ref: str) -> Optional[str]:
        return self.git("rev-parse", "--verify", "--quiet", ref, check=False) or None

    def branch(self, tag: str = TAG) -> Optional[str]:
        return self.resolve(f"refs/heads/autoresearch/{tag}")

    def ledger(self) -> Ledger:
        return Ledger(self.root / ".autoresearch" / "ledger.sqlite")

    def experiments(self, tag: str = TAG) -> list:
        return self._read(lambda ledger: ledger.experiments(tag))

    def best(self, tag: str = TAG):
        return self._read(lambda ledger: ledger.best(tag))

    def sessions(self, tag: str = TAG) -> list[dict]:
        return self._read(lambda ledger: ledger.sessions(tag))

    def _read(self, query):
        ledger = self.ledger()
        try:
            return query(ledger)
        finally:
            ledger.close()

    def unfinished(self, tag: str = TAG) -> set[int]:
        """Indexes left proposed or running, read straight from SQLite (no migration, no writes)."""
        path = self.root / ".autoresearch" / "ledger.sqlite"
        if not path.exists():
            return set()
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute("SELECT idx FROM experiments WHERE tag = ? AND state IN ('proposed', 'running')",
                              (tag,)).fetchall()
        except sqlite3.OperationalError:  # killed before the schema existed
            rows = []
        finally:
            db.close()
        return {row[0] for row in rows}

    def pids(self) -> list[int]:
        return [int(line) for line in self.pid_file.read_text().split()] if self.pid_file.exists() else []

    def scripted(self, steps: list[dict], name: str = "script.json") -> list[str]:
        """Write a scripted agent's proposals; the `run` arguments that use them."""
        path = self.root.parent / name
        path.write_text(json.dumps(steps))
        return ["--agent", "scripted", "--agent-option", f"script={path}"]


def build_toy(directory: Path, train: Optional[str] = None, config: str = CONFIG, files: Optional[dict] = None,
              sleep: float = 0.0, name: str = "toy") -> Toy:
    """The toy target as a committed git repository at directory/name."""
    root = directory / name
    pid_file = directory / f"{name}-pids.txt"
    root.mkdir()
    source = (train or TRAIN).format(pid_file=str(pid_file))
    if sleep:
        source = source.replace("SLEEP = 0.0", f"SLEEP = {sleep}")
    for path, text in {"train.py": source, "autoresearch.toml": config, **OTHER_FILES, **(files or {})}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    toy = Toy(root, pid_file)
    toy.git("init", "-q", "-b", "main")
    toy.git("add", "-A")
    toy.git("commit", "-q", "-m", "toy target")
    return toy


# ---------------------------------------------------------------- the guarded toy: a trusted evaluator and data splits

GUARDED_TRAIN = '''\
"""Guarded toy: writes its constants for the trusted evaluator."""
import json
import os

LR = 1.0     # best at 3
WIDTH = 4    # best at 8

with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json"), "w") as f:
    json.dump({"LR": LR, "WIDTH": WIDTH}, f)
print("loss: 1.0")
'''

GUARDED_EVALUATE = '''\
"""Trusted evaluator of the guarded toy: the score of the saved constants plus the split's offset."""
import json
import os

out, data = os.environ["AUTORESEARCH_OUT"], os.environ["AUTORESEARCH_DATA"]
split = os.environ.get("AUTORESEARCH_SPLIT") or "val"
with open(os.path.join(out, "model.json")) as f:
    model = json.load(f)
with open(os.path.join(data, split, "offset.txt")) as f:
    offset = float(f.read())
score = (model["LR"] - 3.0) ** 2 + abs(model["WIDTH"] - 8) / 10 + offset
NOISE = 0.0  # sd of a seeded, per-code noise added to the score (tests of the statistics set it)
if NOISE:
    import random
    score += random.Random(f"{os.environ['AUTORESEARCH_SEED']} {split} {model}").gauss(0, NOISE)
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"score": score}, f)
print(f"score: {score}")
'''

GUARDED_CONFIG = '''\
[target]
name = "guarded-toy"

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
file = "metrics.json"

[budget]
default = "1s"
timeout = 4

[judge]
calibrate_seeds = 2
final_test_seeds = 2
'''



def build_guarded(directory: Path, noise: float = 0.0, config: str = GUARDED_CONFIG) -> Toy:
    """The guarded toy: train.py saves its constants, a protected evaluate.py scores them on a data split
    (val offset 1.5, test offset 1.5), optionally with seeded noise of sd `noise`."""
    evaluate = GUARDED_EVALUATE.replace("NOISE = 0.0", f"NOISE = {noise}")
    toy = build_toy(directory, train=GUARDED_TRAIN.replace("{", "{{").replace("}", "}}"), config=config,
                    files={"evaluate.py": evaluate})
    for split in ("train", "val", "test"):
        folder = toy.root / ".autoresearch" / "data" / split
        folder.mkdir(parents=True)
        if split != "train":
            (folder / "offset.txt").write_text("1.5")
    return toy


def run_cli(*args) -> Result:
    """`autoresearch ARGS...` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    sigterm = signal.getsignal(signal.SIGTERM)  # `run` installs its own handler
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    return Result(code, out.getvalue(), err.getvalue())


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "autoresearch.cli", *(str(a) for a in args)]


# ---------------------------------------------------------------- processes


def _proc_stats():
    """(pid, state, process group) of every process, from /proc; None where there is no /proc."""
    if not Path("/proc/self/stat").exists():
        return None
    stats = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats.append((int(entry.name), fields[0], int(fields[2])))
    return stats


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    if Path("/proc/self/stat").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def children(pid: int, among: list[int]) -> list[int]:
    """Those of the processes `among` that are running and descend from `pid` (Linux: from /proc); a job
    forked by a warm server (forkserver.py) is the harness's grandchild."""

    def parent(process: int) -> tuple[int, str]:
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0, "X"
        return int(fields[1]), fields[0]

    found = []
    for child in among:
        up, state = parent(child)
        if state in ("Z", "X"):
            continue
        while up > 1 and up != pid:
            up, _ = parent(up)
        if up == pid:
            found.append(child)
    return found


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (zombies don't count)."""
    stats = _proc_stats()
    if stats is not None:
        return any(group == pgid and state not in ("Z", "X") for _, state, group in stats)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def quick_judge(text: str, calibrate_seeds: int = 2, max_runs: int = 2, final_test_seeds: int = 0) -> str:
    """A built-in template's autoresearch.toml with a quicker [judge], whatever the template's defaults are."""
    for key, value in (("calibrate_seeds", calibrate_seeds), ("max_runs", max_runs),
                       ("final_test_seeds", final_test_seeds)):
        text, found = re.subn(rf"^{key} = \d+", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
        assert found, f"no {key} in the [judge] table"
    return text


def wait_for(condition, timeout: float = 30.0, interval: float = 0.01) -> bool:
    """Poll `condition` until it is true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
