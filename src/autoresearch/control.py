"""A running session as the outside sees it: the lock that says one is running, and the control file that pauses,
resumes or stops it (`.autoresearch/session.lock`, `.autoresearch/control.json`).

A session holds an exclusive lock on the target while it lives (the OS releases it if the process dies), so two
sessions never share worktrees or fight over a branch, and "is a session running?" has one answer: `holder`.

`autoresearch pause/resume/stop` and the dashboard (`autoresearch serve`) write the control file; the session reads
it between experiments, never during one: `pause` holds the session before its next proposal until `resume`; `stop`
ends it cleanly, as if its experiment count had been reached. Anyone who can write to the target's `.autoresearch/`
can do the same by hand:

    echo '{"command": "pause"}' > .autoresearch/control.json
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Callable, Optional

FILE = "control.json"
LOCK = "session.lock"
LOCK_TRIES = 25  # 0.5 s
COMMANDS = ("pause", "resume", "stop")
POLL_SECONDS = 0.5  # how often a paused session looks at the file again


class Locked(Exception):
    """Another session holds the target's lock."""


def lock(state_dir: Path) -> IO:
    """Take the target's session lock (raises Locked, naming the holder); held until the handle is closed."""
    file = Path(state_dir) / LOCK
    file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(file, "a+")
    for attempt in range(LOCK_TRIES):  # `holder` (a view, `autoresearch pause`) holds it for an instant: try again
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt + 1 < LOCK_TRIES:
                time.sleep(0.02)
    else:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise Locked(f"another autoresearch session ({holder}) is running on this target")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def holder(state_dir: Path) -> Optional[int]:
    """The pid of the session running on the target (the process holding its lock), or None when none is."""
    file = Path(state_dir) / LOCK
    if not file.exists():
        return None
    with open(file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            words = handle.read().split()
            return int(words[1]) if len(words) == 2 and words[1].isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


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
