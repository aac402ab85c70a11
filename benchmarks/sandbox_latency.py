"""Start-up latency the sandbox adds to one command: `true` bare, with the limits only (the launcher),
and jailed with the limits (unshare + launcher), as the runner builds them for a train command. Each
is timed as a plain subprocess (what the sandbox adds to the process chain) and through the local
executor (which adds its exit polling and /proc checks). Median and range over interleaved
repetitions, in milliseconds.

    python benchmarks/sandbox_latency.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import sandbox
from autoresearch.config import Config
from autoresearch.executor import Job, LocalExecutor, Slot
from autoresearch.runner import Runner
from autoresearch.target import Target

CONFIG = {"commands": {"train": "true"}, "files": {"editable": ["train.py"]}, "metric": {"name": "score"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    reason = sandbox.unavailable()
    if reason:
        sys.exit(f"no isolation on this machine: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("worktree", "out", ".autoresearch/data/train", ".autoresearch/data/test"):
            (root / sub).mkdir(parents=True)
        (root / ".autoresearch/data/val.bin").write_text("held out")
        target = Target(root, Config.model_validate(CONFIG))
        runner, executor = Runner(target, LocalExecutor("cpu")), LocalExecutor("cpu")
        jail = runner.jail((root / "worktree", root / "out"), runner.held_out())
        limits = target.config.sandbox.limits()
        variants = {"bare": (None, None), "limits (launcher)": (None, limits), "jail + limits": (jail, limits)}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for name, (job_jail, job_limits) in variants.items():
                started = time.perf_counter()
                subprocess.run(sandbox.command(["true"], job_jail, job_limits), cwd=root / "worktree", check=True)
                times.setdefault(("subprocess", name), []).append((time.perf_counter() - started) * 1000)
                job = Job(["true"], root / "worktree", {"PATH": os.environ["PATH"]}, 60, root / "log.txt",
                          jail=job_jail, limits=job_limits)
                started = time.perf_counter()
                result = executor.run(job, Slot("cpu0"))
                times.setdefault(("executor", name), []).append((time.perf_counter() - started) * 1000)
                assert result.exit_code == 0, (root / "log.txt").read_text()
        print(f"jail: {len(jail.readonly)} read-only, {len(jail.writable)} writable, {len(jail.hidden)} hidden paths; "
              f"{'root' if os.geteuid() == 0 else 'user namespace'}; {args.repeat} repetitions")
        for (way, name), values in times.items():
            median, bare = statistics.median(values), statistics.median(times[(way, "bare")])
            print(f"{way:<10} {name:<18} median {median:6.1f} ms  (min {min(values):5.1f}, max {max(values):6.1f})  "
                  f"added {median - bare:+6.1f} ms")


if __name__ == "__main__":
    main()
