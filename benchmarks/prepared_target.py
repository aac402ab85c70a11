"""What the benchmarks share about the built-in GPT target: a fresh one with its data prepared, its train.py as a
module, and the allocator settings a harness run gets."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from autoresearch import target as target_module
from autoresearch.runner import MALLOC_TUNING

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"


def prepared_target(directory: Path, data: str) -> target_module.Target:
    """`autoresearch init DIRECTORY` then `autoresearch prepare --data DATA`; exits when preparing fails."""
    target = target_module.Target.open(target_module.init(directory))
    if target_module.prepare(target, data) != 0:
        sys.exit(f"preparing --data {data} failed")
    return target


def load_train(name: str, path: Path = TEMPLATE / "train.py"):
    """A train.py imported as module `name`, its `from sampler import batches` served by the template's sampler."""
    if str(TEMPLATE) not in sys.path:
        sys.path.insert(0, str(TEMPLATE))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_harness_malloc() -> None:
    """Re-execute this process with runner.MALLOC_TUNING unless a malloc setting is already there: glibc reads it at
    start, and a run under the harness has it, so timings in process match a run's."""
    if not any(name.startswith("MALLOC_") for name in os.environ):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_TUNING})
