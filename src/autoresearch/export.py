"""`autoresearch export`: what happened, in formats other tools read.

`--tsv FILE` writes karpathy/autoresearch's results.tsv: `commit val_bpb memory_gb status
description`, tab separated, status keep / discard / crash (rejected, timed-out and interrupted
experiments count as crash, with the reason in the description; the metric column is named after
the target's metric).
"""

from __future__ import annotations

from pathlib import Path

from .ledger import Ledger
from .records import State

_STATUS = {State.BASELINE: "keep", State.KEPT: "keep", State.DISCARDED: "discard",
           State.SUPERSEDED: "discard"}  # won, but another win came first: its change was stacked on that one


def tsv(ledger: Ledger, tag: str, metric_name: str) -> str:
    rows = [f"commit\t{metric_name}\tmemory_gb\tstatus\tdescription"]
    for e in ledger.experiments(tag):
        if not e.state.final:
            continue
        peaks = [r.peak_memory_mb for r in e.runs if r.peak_memory_mb]
        memory_gb = max(peaks) / 1024 if peaks else 0.0
        status = _STATUS.get(e.state, "crash")
        description = e.description if e.state in (State.BASELINE, State.KEPT, State.DISCARDED) else \
            f"{e.description} [{e.state.value}: {e.reason}]"
        description = " ".join(description.split())  # one line, no tabs
        rows.append(f"{(e.commit or '-------')[:7]}\t{(e.metric or 0.0):.6f}\t{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(rows) + "\n"


def write_tsv(ledger: Ledger, tag: str, metric_name: str, path: Path) -> int:
    text = tsv(ledger, tag, metric_name)
    Path(path).write_text(text)
    return text.count("\n") - 1
