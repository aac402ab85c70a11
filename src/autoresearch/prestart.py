"""A Python command started before its turn: its installed imports load while the previous step still runs.

    python prestart.py --preload numpy,torch -- evaluate.py ARGS    # as the job's command (inside the sandbox)

The evaluator of a run is started together with its training: it imports what it needs from the Python
installation (`import torch` alone is 2 s on a CPU, more with CUDA) while training runs, then blocks on its
standard input. When training has ended and passed its checks, the harness writes one line (`run`) and the
command proceeds as `python evaluate.py ARGS` would: the script (read only now, so the checked file is what
runs) as `__main__`, its directory first on sys.path, stdin at EOF. If training fails, the harness kills it
instead. Its wall-clock limit counts from the word, not from its start.

Only the script's top-level imports of modules that are not beside it are loaded early (what the
harness lists with --preload, read from the protected copy in the target's root), and with the script's
directory off sys.path, so nothing the run may write is imported before its turn.
"""

from __future__ import annotations

import sys

GO = b"run\n"


def preloads(script_source: str, local_names: set[str]) -> list[str]:
    """The modules a script imports at its top level, less those that are its neighbours (`local_names`)."""
    import ast

    from .pyast import parse

    try:
        tree = parse(script_source)
    except SyntaxError:
        return []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found = [node.module]
        else:
            continue
        for name in found:
            if name.split(".")[0] not in local_names and name != "__future__" and name not in names:
                names.append(name)
    return names


def command(argv: list[str], root, worktree) -> list[str] | None:
    """`argv` started ahead of its turn, or None where it cannot be: only `python SCRIPT.py ...` run by this
    interpreter. The imports are read from the script's copy under `root` (the target's, protected)."""
    from pathlib import Path

    if len(argv) < 2 or argv[0] != sys.executable or not argv[1].endswith(".py"):
        return None
    script = Path(argv[1])
    trusted = Path(root) / script if not script.is_absolute() else script
    try:
        source = trusted.read_text()
        neighbours = {p.stem if p.suffix == ".py" else p.name for p in (Path(worktree) / script).parent.iterdir()}
    except (OSError, UnicodeDecodeError):
        return None
    modules = preloads(source, neighbours)
    return [argv[0], __file__, "--preload", ",".join(modules), "--", *argv[1:]]


def main() -> None:
    del sys.path[0]  # this file's directory: autoresearch's own modules must not shadow the command's imports
    import importlib
    import os
    import runpy

    split = sys.argv.index("--")
    options, argv = sys.argv[1:split], sys.argv[split + 1:]
    modules = options[options.index("--preload") + 1].split(",") if "--preload" in options else []
    for name in filter(None, modules):
        try:
            importlib.import_module(name)
        except Exception:  # the command meets the same error in its turn, and reports it
            pass
    word = sys.stdin.buffer.readline()
    if word != GO:
        sys.exit(f"prestart: the harness never gave the word to run {' '.join(argv)}")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
