"""Parsing Python from several threads: every parse in the package takes pyast's lock.

CPython 3.11's AST constructor can fail with "SystemError: AST constructor recursion depth mismatch"
when two threads parse at once (cpython gh-106905); with several slots, the proposer thread and the
slot threads do. The race needs a thread switch inside the C constructor and is rare, so this checks
the one thing that rules it out: no module parses except through `autoresearch.pyast`.
"""

import re
import threading
from pathlib import Path

import autoresearch
from autoresearch import pyast

PACKAGE = Path(autoresearch.__file__).parent


def test_no_module_calls_ast_parse_or_literal_eval_on_text_directly():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "pyast.py" or "templates" in path.parts:  # templates run in the target's own process
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bast\.parse\(|\bcompile\(.*['\"]exec['\"]", line) or \
                    re.search(r"\bast\.literal_eval\((?!node)", line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "parse through autoresearch.pyast:\n" + "\n".join(offenders)


def test_parses_from_many_threads_all_succeed():
    source = (PACKAGE / "templates" / "gpt" / "train.py").read_text()
    failures = []

    def work():
        for _ in range(30):
            try:
                assert pyast.parse(source).body
                assert pyast.literal_eval(" (0.8, 0.95) ") == (0.8, 0.95)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
