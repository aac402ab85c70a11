"""Snapshots: files the training command writes as it goes, copied out of its reach the moment they appear.

A target names them in `[run] snapshots` (globs in $AUTORESEARCH_OUT, e.g. ["checkpoint-*.pt"]: the speedrun
program's checkpoints). While the train command runs, `Watcher` looks at the output directory every POLL_SECONDS;
a new file matching a glob is copied, whole, into the run's `snapshots/` directory (which no command can write),
with the time it appeared: seconds since the command started, on the harness's clock. A snapshot is what the file
held when it appeared, whatever happens to the file later. A file that changes after that (written again,
replaced, deleted, or not a plain file) is recorded as such, for the evaluator to judge. The evaluator gets the
directory as $AUTORESEARCH_SNAPSHOTS, with snapshots.json in it:

    {"seconds": 41.2,                               how long the train command ran
     "files": [{"name": "checkpoint-001.pt", "seconds": 4.1, "bytes": 123456, "changed": null}, ...]}

"changed" is null, "rewritten" or "deleted". A file is taken when two looks at it agree (size, time, inode): one
written in place can be caught half written, and its end then reads as a rewrite. Write such files under another
name and rename them into place (os.replace), as the built-in train.py does.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Optional

POLL_SECONDS = 0.1
MANIFEST = "snapshots.json"


class Watcher:
    """Snapshots of the files of `directory` matching `patterns`, into `into`, from now until `stop()`."""

    def __init__(self, directory: Path, patterns: list[str], into: Path, poll: float = POLL_SECONDS):
        self.directory, self.patterns, self.into, self.poll = Path(directory), list(patterns), Path(into), poll
        shutil.rmtree(self.into, ignore_errors=True)
        self.into.mkdir(parents=True)
        self.started = time.monotonic()
        self.files: dict[str, dict] = {}     # name -> its record (manifest entry, and "stat" while watched)
        self.candidates: dict[str, tuple] = {}  # name -> what the last look saw of a file not taken yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="snapshots", daemon=True)
        self._thread.start()

    def stop(self) -> Path:
        """Stop watching (the command has ended), look once more, and write the manifest; its path."""
        self._stop.set()
        self._thread.join()
        seconds = time.monotonic() - self.started
        self.look()
        self.look()  # a file that appeared in the last poll is only a candidate after one look; the command has ended
        for name, record in self.files.items():
            now = _identity(self.directory / name)
            if now is None:
                record["changed"] = record["changed"] or "deleted"
            elif now != record["stat"]:
                record["changed"] = record["changed"] or "rewritten"
        manifest = {"seconds": round(seconds, 3),
                    "files": [{k: v for k, v in record.items() if k != "stat"}
                              for record in sorted(self.files.values(), key=lambda r: (r["seconds"], r["name"]))]}
        path = self.into / MANIFEST
        path.write_text(json.dumps(manifest, indent=1))
        return path

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            self.look()

    def look(self) -> None:
        """One look at the directory: take what is new and settled, note what changed since it was taken."""
        try:
            names = [entry.name for entry in os.scandir(self.directory)]
        except OSError:
            return
        seconds = round(time.monotonic() - self.started, 3)
        for name in names:
            if not any(fnmatch(name, pattern) for pattern in self.patterns):
                continue
            path, record = self.directory / name, self.files.get(name)
            if record is not None:
                if not record["changed"] and _identity(path) != record["stat"]:
                    record["changed"] = "rewritten"
                continue
            seen = _identity(path)
            if seen is None or seen != self.candidates.get(name):
                self.candidates[name] = seen  # new, or still being written: taken when a later look agrees
                continue
            taken = self._take(path)
            if taken is not None:
                self.files[name] = {"name": name, "seconds": seconds, "bytes": taken[1], "changed": None,
                                    "stat": taken}

    def _take(self, path: Path) -> Optional[tuple]:
        """Copy `path` into the snapshots; its identity when it was copied unchanged, else None (try again)."""
        before = _identity(path)
        try:
            shutil.copyfile(path, self.into / path.name, follow_symlinks=False)
        except OSError:
            return None
        return before if before is not None and _identity(path) == before else None


def _identity(path: Path) -> Optional[tuple]:
    """(inode, size, modification time) of a plain file, None for anything else (a link, a directory, nothing)."""
    try:
        stat = os.lstat(path)
    except OSError:
        return None
    if not (stat.st_mode & 0o170000 == 0o100000):
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
