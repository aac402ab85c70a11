"""`ast.parse` that is safe to call from several threads at once.

CPython 3.11 keeps the AST constructor's recursion counter in per-interpreter state, so two threads
parsing at the same moment (the proposer thread checking an agent's edit while a slot thread runs the
scope checks) can fail with "SystemError: AST constructor recursion depth mismatch" (cpython
gh-106905). Every parse in autoresearch goes through this lock; a parse takes milliseconds.
"""

from __future__ import annotations

import ast
import threading

_lock = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    with _lock:
        return ast.parse(source, filename=filename)


def literal_eval(text: str):
    """`ast.literal_eval` of a string, parsed under the same lock."""
    with _lock:
        tree = ast.parse(text.strip(), mode="eval")
    return ast.literal_eval(tree)
