"""Shared fixtures: the toy target (see toy.py) built in tmp_path, and the CLI run for real, in this
process or as a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from toy import Result, Toy, build_toy, cli_command, run_cli

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """A download cache of the test session's own, and a git with no user configuration but an identity
    (session-wide, so that module-scoped fixtures see it too)."""
    home = tmp_path_factory.mktemp("env")
    (home / "gitconfig").write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_CACHE", str(home / "cache"))
        patch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
        patch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for key, value in GIT_IDENTITY.items():
            patch.setenv(key, value)
        yield


@pytest.fixture
def make_toy(tmp_path):
    """Build a toy target in tmp_path as a committed git repository: make_toy(train=..., config=..., sleep=...)."""
    return lambda **options: build_toy(tmp_path, **options)


@pytest.fixture
def toy(tmp_path) -> Toy:
    return build_toy(tmp_path)


@pytest.fixture
def cli():
    """Run `autoresearch ARGS...` in this process: cli(*args) -> Result(code, out, err)."""
    return run_cli


@pytest.fixture
def cli_process():
    """Run `autoresearch ARGS...` as a subprocess of this interpreter: cli_process(*args) -> Result."""

    def run(*args, timeout: float = 120) -> Result:
        done = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    return run


def _sigint_default() -> None:
    """Ctrl-C as a terminal gives it: a suite started in the background (`cmd &`) has SIGINT ignored, which its
    children inherit, and a Python started so never turns SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn_cli():
    """Start `autoresearch ARGS...` as a subprocess in its own session, so a test can signal it alone.

    Whatever is still running of it at the end of the test is killed (its whole group)."""
    started: list[subprocess.Popen] = []

    def spawn(*args, log: Path) -> subprocess.Popen:
        with open(log, "ab") as handle:
            process = subprocess.Popen(cli_command(*args), stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_sigint_default)
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
