"""The harness's snapshots of a run's checkpoints (snapshots.py): copied when they appear, with when, and what
happened to them after. Real files written by a real thread, a real watcher."""

from __future__ import annotations

import json
import os
import time

from autoresearch.snapshots import MANIFEST, POLL_SECONDS, Watcher


def save(directory, name: str, content: bytes) -> None:
    """As the built-in train.py saves: written aside, then renamed into place."""
    (directory / (name + ".tmp")).write_bytes(content)
    os.replace(directory / (name + ".tmp"), directory / name)


def look_twice(watcher) -> None:
    """What the watcher's thread does every POLL_SECONDS; a file is taken when two looks agree."""
    watcher.look()
    watcher.look()


def test_files_are_copied_as_they_appear_with_when_and_later_changes_are_recorded(tmp_path):
    out, into = tmp_path / "out", tmp_path / "snapshots"
    out.mkdir()
    watcher = Watcher(out, ["checkpoint-*.pt"], into, poll=3600)  # it looks when told to, here
    time.sleep(0.01)
    save(out, "checkpoint-001.pt", b"early weights")
    look_twice(watcher)
    time.sleep(0.01)
    save(out, "checkpoint-002.pt", b"later weights")
    save(out, "model.pt", b"not watched")
    look_twice(watcher)
    save(out, "checkpoint-001.pt", b"final weights")  # later weights under the early name
    save(out, "checkpoint-003.pt", b"will go")
    look_twice(watcher)
    (out / "checkpoint-003.pt").unlink()
    manifest = json.loads(watcher.stop().read_text())
    files = {f["name"]: f for f in manifest["files"]}
    assert list(files) == ["checkpoint-001.pt", "checkpoint-002.pt", "checkpoint-003.pt"]  # in the order they came
    assert 0 < files["checkpoint-001.pt"]["seconds"] < files["checkpoint-002.pt"]["seconds"] <= manifest["seconds"]
    assert (into / "checkpoint-001.pt").read_bytes() == b"early weights"  # what it held when it appeared
    assert files["checkpoint-001.pt"]["changed"] == "rewritten"
    assert files["checkpoint-002.pt"]["changed"] is None and files["checkpoint-002.pt"]["bytes"] == 13
    assert files["checkpoint-003.pt"]["changed"] == "deleted"
    assert not (into / "model.pt").exists() and (into / MANIFEST).exists()


def test_the_watcher_looks_by_itself_until_stopped(tmp_path):
    out, into = tmp_path / "out", tmp_path / "snapshots"
    out.mkdir()
    watcher = Watcher(out, ["checkpoint-*.pt"], into)
    save(out, "checkpoint-001.pt", b"weights")
    deadline = time.monotonic() + 30
    while not (into / "checkpoint-001.pt").exists() and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    assert (into / "checkpoint-001.pt").read_bytes() == b"weights"
    assert [f["name"] for f in json.loads(watcher.stop().read_text())["files"]] == ["checkpoint-001.pt"]


def test_a_file_is_taken_only_once_two_looks_agree_and_a_link_never(tmp_path):
    out, into = tmp_path / "out", tmp_path / "snapshots"
    out.mkdir()
    (tmp_path / "elsewhere.pt").write_bytes(b"weights kept elsewhere")
    watcher = Watcher(out, ["*.pt"], into, poll=3600)  # it looks only when told to, here
    os.symlink(tmp_path / "elsewhere.pt", out / "checkpoint-001.pt")
    with open(out / "checkpoint-002.pt", "wb") as handle:  # written in place, in pieces, a look between each
        for _ in range(3):
            handle.write(b"x" * 1000)
            handle.flush()
            os.utime(handle.fileno(), ns=(time.time_ns(), time.time_ns()))  # a coarse clock may not tick
            watcher.look()
    assert not (into / "checkpoint-002.pt").exists()  # every look saw it change
    watcher.look()
    files = {f["name"]: f for f in json.loads(watcher.stop().read_text())["files"]}
    assert "checkpoint-001.pt" not in files and not (into / "checkpoint-001.pt").exists()
    assert files["checkpoint-002.pt"]["bytes"] == 3000 and (into / "checkpoint-002.pt").read_bytes() == b"x" * 3000
    assert files["checkpoint-002.pt"]["changed"] is None


def test_a_file_written_just_before_the_command_ends_is_taken(tmp_path):
    """The last checkpoint lands between two polls; the command has ended, so the watcher's final looks take it."""
    out, into = tmp_path / "out", tmp_path / "snapshots"
    out.mkdir()
    watcher = Watcher(out, ["checkpoint-*.pt"], into, poll=3600)
    save(out, "checkpoint-010.pt", b"the final weights")
    manifest = json.loads(watcher.stop().read_text())
    assert [(f["name"], f["changed"]) for f in manifest["files"]] == [("checkpoint-010.pt", None)]
    assert (into / "checkpoint-010.pt").read_bytes() == b"the final weights"
