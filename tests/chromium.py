"""The Chromium the browser tests drive, and `python tests/chromium.py --install`, which `make test` runs first.

Found, in this order: AUTORESEARCH_CHROMIUM; a Chromium or Chrome on PATH (Debian's `chromium`) or in
macOS's Applications; the one Playwright installed (`playwright install chromium`). Installed where none
is: on Debian through apt-get when this user may (root, or sudo without a password), else the ecosystem's
way, `python -m playwright install chromium`. AUTORESEARCH_SKIP_BROWSER=1 skips both (the tests then skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MACOS = ("/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
         "/Applications/Chromium.app/Contents/MacOS/Chromium")


def find() -> Optional[str]:
    named = os.environ.get("AUTORESEARCH_CHROMIUM")
    if named:
        return named
    for name in NAMES:
        found = shutil.which(name)
        if found and _runs(found):
            return found
    for path in MACOS:
        if os.access(path, os.X_OK):
            return path
    return _playwrights()


def _runs(path: str) -> bool:
    """Ubuntu's `chromium-browser` may be a stub that asks for a snap: only a browser that answers counts."""
    try:
        return subprocess.run([path, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _playwrights() -> Optional[str]:
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            path = playwright.chromium.executable_path
    except Exception:  # Playwright missing or broken: no browser of its own either
        return None
    return path if path and Path(path).exists() else None


def _may_use_apt() -> list[str]:
    """The prefix that runs apt-get as root here ([] as root, ["sudo", "-n"]), or raise LookupError."""
    if not shutil.which("apt-get"):
        raise LookupError("no apt-get")
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    raise LookupError("not root, and sudo asks for a password")


def _debian() -> bool:
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return False
    return "ID=debian" in release.splitlines()  # Ubuntu's chromium package is a snap, which containers lack


def install() -> int:
    if os.environ.get("AUTORESEARCH_SKIP_BROWSER") == "1":
        print("AUTORESEARCH_SKIP_BROWSER=1: no browser for the browser tests (they will skip)")
        return 0
    found = find()
    if found:
        print(f"browser tests: {found}")
        return 0
    try:
        sudo = _may_use_apt() if sys.platform.startswith("linux") else None
    except LookupError:
        sudo = None
    if sudo is not None and _debian():
        print("browser tests: installing Debian's chromium with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if (subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env).returncode == 0
                and subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "chromium"], env=env).returncode == 0):
            return 0 if find() else _failed("apt-get installed chromium, but it does not start")
    print("browser tests: installing Playwright's Chromium (python -m playwright install chromium)")
    command = [sys.executable, "-m", "playwright", "install", "chromium"]
    if sudo is not None:
        command.insert(-1, "--with-deps")  # the system libraries it needs, through the system's package manager
    if subprocess.run(command).returncode == 0 and find():
        return 0
    return _failed("Playwright could not install its Chromium")


def _failed(why: str) -> int:
    print(f"browser tests: {why}. Install Chromium or Chrome (Debian: `sudo apt-get install chromium`), or name one "
          "with AUTORESEARCH_CHROMIUM=/path/to/chrome; AUTORESEARCH_SKIP_BROWSER=1 skips the browser tests.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1:] != ["--install"]:
        sys.exit("usage: python tests/chromium.py --install")
    sys.exit(install())
