"""The live terminal view of `autoresearch run`: each slot's experiment in flight, the best so far, the counts.

An observer, not part of the loop: a thread reads the ledger and the running logs twice a second
and redraws a Rich Live panel under the session's own lines (which keep scrolling above it). The
CLI starts it around `scheduler.run` when stdout is a terminal; elsewhere (CI, a pipe, a log file)
the session prints its plain lines only.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from . import observe
from .target import Target

REFRESH_SECONDS = 0.5
_STATE_STYLES = {"kept": "green", "discarded": "dim", "crashed": "red", "timeout": "yellow", "rejected": "magenta",
                 "interrupted": "cyan", "running": "blue"}


def wanted(stream=None) -> bool:
    """Whether to draw the live view: stdout is a terminal that can redraw."""
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def snapshot(target: Target, ledger, tag: str, now: Optional[float] = None) -> dict:
    experiments = ledger.experiments(tag)
    return {"summary": observe.summary(observe.status(ledger, tag, target, experiments)),
            "slots": observe.in_flight(target, ledger, tag, experiments, now)}


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.6g}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def render(snap: dict) -> RenderableType:
    """The panel for one snapshot (pure: tests render it into a recording console)."""
    s = snap["summary"]
    name, goal = s["metric"]["name"], s["metric"]["goal"]
    lines = []
    baseline, best = s["baseline"], s["best"]
    figures = Text()
    figures.append(f"baseline {name} ", style="bold")
    figures.append(_number(baseline["metric"]) if baseline else "(none yet)")
    if best:
        figures.append("   best ", style="bold")
        figures.append(f"{_number(best['metric'])}", style="bold green")
        figures.append(f" (#{best['id']} {best['description'][:40]})")
    if s["improvement"] is not None and s["improvement"] != 0:
        relative = f", {100 * s['relative_improvement']:.1f}%" if s["relative_improvement"] is not None else ""
        figures.append(f"   {s['improvement']:+.6g} better than baseline{relative}", style="green")
    lines.append(figures)

    counts = Text()
    for state in ("kept", "discarded", "crashed", "rejected", "timeout", "interrupted"):
        n = s["counts"].get(state, 0)
        if n or state not in ("interrupted",):
            counts.append(f"{state} ", style=_STATE_STYLES[state])
            counts.append(f"{n}   ", style="bold")
    cost = s.get("cost") or {}
    if "usd" in cost:
        counts.append("cost ", style="bold")
        counts.append(f"${cost['usd']:.2f}   ")
    counts.append(f"{s['experiments']} experiments, {_duration(s['seconds'])} of runs", style="dim")
    lines.append(counts)

    session = s.get("session") or {}
    if session.get("control") in ("pause", "stop"):
        lines.append(Text(f"{'paused' if session['control'] == 'pause' else 'stopping'} from the control file: "
                          "takes effect between experiments", style="bold yellow"))

    table = Table.grid(padding=(0, 1))
    for _ in range(8):
        table.add_column(no_wrap=True)
    for slot in snap["slots"]:
        if not slot.get("busy"):
            table.add_row(Text(slot["slot"] or "slot", style="bold"), Text("idle", style="dim"))
            continue
        progress = slot["progress"]
        fraction = progress.get("fraction")
        bar = ProgressBar(total=1.0, completed=fraction or 0.0, width=24, pulse=fraction is None)
        detail = []
        if "step" in progress:
            detail.append(f"step {progress['step']}")
        if "loss" in progress:
            detail.append(f"loss {progress['loss']:.4f}")
        if "tokens_per_second" in progress:
            detail.append(f"{progress['tokens_per_second']:,.0f} tok/s")
        if slot["phase"] == "evaluate":
            detail.append("evaluating")
        table.add_row(Text(slot["slot"] or "slot", style="bold"),
                      Text(f"#{slot['id']} {slot['description'][:48]}", style="blue"), bar,
                      Text("" if fraction is None else f"{100 * fraction:3.0f}%"
                           + ("" if progress.get("source") == "log" else " (clock)")),
                      Text(" ".join(detail)),
                      Text(f"seed {slot['seed']} · run {slot['run']}", style="dim"),
                      Text(_duration(slot["elapsed"]), style="dim"),
                      Text("left by a stopped harness" if slot["stale"] else "", style="yellow"))
    if snap["slots"]:
        lines.append(table)
    title = f"autoresearch · {s['target']} · tag {s['tag']} · {name} ({goal})"
    return Panel(Group(*lines), title=title, title_align="left", border_style="blue")


class LiveView:
    """`with LiveView(target, tag): scheduler.run(session)` draws the panel until the block ends."""

    def __init__(self, target: Target, tag: str, console: Optional[Console] = None,
                 interval: float = REFRESH_SECONDS):
        self.target, self.tag, self.interval = target, tag, interval
        self.console = console or Console()
        self._stop = threading.Event()
        self._live: Optional[Live] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "LiveView":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        self._live = Live(console=self.console, auto_refresh=False, redirect_stdout=True, redirect_stderr=True)
        self._live.start()
        self._thread = threading.Thread(target=self._loop, name="autoresearch-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self._live:
            self._live.stop()

    def _loop(self) -> None:
        ledger = None
        try:
            while True:
                stopping = self._stop.is_set()  # after a stop, draw once more: the final state stays on screen
                try:
                    ledger = ledger or observe.open_ledger(self.target)
                    if ledger is not None and ledger.tag(self.tag):
                        self._live.update(render(snapshot(self.target, ledger, self.tag, time.time())), refresh=True)
                except Exception as exc:  # the view never takes the session down
                    self._live.update(Text(f"(live view unavailable: {type(exc).__name__}: {exc})", style="dim"),
                                      refresh=True)
                if stopping:
                    return
                self._stop.wait(self.interval)
        finally:
            if ledger is not None:
                ledger.close()
