"""Run a training script with the held-out data out of its reach from Python: an audit hook.

    python -m autoresearch.guard train.py [ARGS...]   # the `train` command of the data and synthetic programs

`$AUTORESEARCH_DATA` is what training may read (the data directory's `train/`); everything else
in the data directory beside it (the validation and test splits, meta.json with their document
lists) is held out. Before the script runs, this installs a `sys.addaudithook` hook, which Python
code cannot remove: opening a held-out file, or linking, renaming or deleting one, raises
PermissionError, and the refusal is written to `$AUTORESEARCH_OUT/guard.json`, where the harness
finds it and rejects the run (runner.py), even when the script caught the error and trained on.
The record itself cannot be opened, renamed or deleted from inside the run.

This covers code the agent edits inside the process (a data sampler, a synthetic-data generator).
It is a guard, not a boundary: a C extension that opens files itself, ctypes, or a subprocess
reads around it. The sandbox (OS isolation of the run, where the machine allows it) is the
boundary; the guard makes the common case fail loudly on machines without one.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

GUARD_FILE = "guard.json"  # in $AUTORESEARCH_OUT
FILE_EVENTS = ("open", "os.remove", "os.rename", "os.link", "os.symlink", "os.truncate", "os.chmod",
               "os.chown", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
               "shutil.copytree", "shutil.move")


def _text(path) -> str | None:
    if isinstance(path, bytes):
        return os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    return None  # a file descriptor: opened earlier, and checked then


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def install(data_dir: str, out_dir: str) -> list[str]:
    """Guard this process: held-out data beside `data_dir` becomes unreadable. Returns the list of refusals."""
    train = os.path.realpath(data_dir)
    root = os.path.dirname(train)
    record = os.path.join(os.path.realpath(out_dir), GUARD_FILE)
    refusals: list[str] = []
    writing = [False]

    def refuse(event: str, path: str, what: str) -> None:
        message = f"{event} {path!r}: {what}"
        refusals.append(message)
        print(f"autoresearch guard: refused {message}", file=sys.stderr, flush=True)
        writing[0] = True
        try:
            with open(record, "w") as handle:
                json.dump({"refused": refusals}, handle, indent=1)
        finally:
            writing[0] = False
        raise PermissionError(f"autoresearch guard: {message}")

    def hook(event: str, args: tuple) -> None:
        if event not in FILE_EVENTS or writing[0]:
            return
        paths = args[:1] if event in ("open", "os.remove", "os.truncate", "os.chmod", "os.chown", "os.utime",
                                      "shutil.rmtree") else args[:2]
        for path in paths:
            text = _text(path)
            if text is None:
                continue
            real = os.path.realpath(text)
            if real == record or (event != "open" and _inside(record, real)):
                refuse(event, text, "the guard's record of refusals may not be touched")
            if _inside(real, root) and not _inside(real, train):
                refuse(event, text, f"held-out data; training may read only {train}")

    sys.addaudithook(hook)
    return refusals


def refusals(out_dir) -> list[str]:
    """What the guard refused a finished training command (empty: nothing, or it was not guarded)."""
    path = os.path.join(out_dir, GUARD_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as handle:
            found = json.load(handle)["refused"]
        return [str(item) for item in found] or [f"{path} is empty"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{path} is unreadable"]


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m autoresearch.guard SCRIPT [ARGS...]")
    data_dir = os.environ.get("AUTORESEARCH_DATA") or os.path.join(".autoresearch", "data", "train")
    out_dir = os.environ.get("AUTORESEARCH_OUT") or os.path.join(".autoresearch", "out")
    os.makedirs(out_dir, exist_ok=True)
    install(data_dir, out_dir)
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
