"""Pause, resume or stop a running session from outside: `.autoresearch/control.json`.

The dashboard (`autoresearch serve`) writes the file; the session reads it between experiments,
never during one: `pause` holds the session before its next proposal until `resume`; `stop` ends
it cleanly, as if its experiment count had been reached. Anyone who can write to the target's
`.autoresearch/` can do the same by hand:

    echo '{"command": "pause"}' > .autoresearch/control.json
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

FILE = "control.json"
COMMANDS = ("pause", "resume", "stop")
POLL_SECONDS = 0.5  # how often a paused session looks at the file again


def path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def read(state_dir: Path) -> dict:
    """The last command written, `{"command": "resume"}` when there is none (or it cannot be read)."""
    try:
        data = json.loads(path(state_dir).read_text())
    except (OSError, ValueError):
        return {"command": "resume"}
    if not isinstance(data, dict) or data.get("command") not in COMMANDS:
        return {"command": "resume"}
    return data


def write(state_dir: Path, command: str, by: str = "") -> dict:
    """Record `command` for the session to act on; written whole (rename), so a reader never sees half."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}; expected one of {', '.join(COMMANDS)}")
    data = {"command": command, "at": time.time(), "by": by}
    target = path(state_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{FILE}.{os.getpid()}")
    scratch.write_text(json.dumps(data))
    os.replace(scratch, target)
    return data


def clear(state_dir: Path) -> None:
    path(state_dir).unlink(missing_ok=True)


def hold(state_dir: Path, say: Callable[[str], None] = print, poll: float = POLL_SECONDS) -> bool:
    """Called by the session before each proposal: wait while paused; True when asked to stop."""
    announced = False
    while True:
        command = read(state_dir)["command"]
        if command == "stop":
            clear(state_dir)  # honoured once: the next session starts normally
            return True
        if command != "pause":
            if announced:
                say("resumed")
            return False
        if not announced:
            say(f"paused: waiting for resume (or stop) in {path(state_dir)}")
            announced = True
        time.sleep(poll)
