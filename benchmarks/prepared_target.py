"""The built-in GPT target, made fresh in a directory, with its data prepared: what the benchmarks measure."""

from __future__ import annotations

import sys
from pathlib import Path

from autoresearch import target as target_module
from autoresearch.cli import prepare


def prepared_target(directory: Path, data: str) -> target_module.Target:
    """`autoresearch init DIRECTORY` then `autoresearch prepare --data DATA`; exits when preparing fails."""
    target = target_module.Target.open(target_module.init(directory))
    if prepare(target, data) != 0:
        sys.exit(f"preparing --data {data} failed")
    return target
