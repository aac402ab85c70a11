"""A warm Python that forks a fresh child for each job: a script's installed imports load once per session.

    python forkserver.py --preload numpy,torch     # started by the local executor, inside the job's sandbox

Every run of the built-in target starts two Python processes, and each paid `import torch` (2 s on a CPU,
more with CUDA) and, at its end, the 0.6 s it takes an interpreter with torch loaded to tear itself down. On
Linux the local executor (executor.py) starts one server per slot and kind of job (training, evaluation), in
the sandbox that kind of job gets, with the environment it gets less the per-run `AUTORESEARCH_*` variables.
The server imports the modules the script imports at its top level (the installed ones, read from the
target's own copy of the script; never a module beside it, which the run may have written), then serves jobs
over its standard input, a Unix socket:

    harness -> server   {"argv": [python, SCRIPT.py, ARGS...], "cwd": ..., "env": {...}} and the log's descriptor
    server  -> harness  {"pid": PID}                                  the child runs, in a session of its own
    server  -> harness  {"pid": PID, "exit": CODE, "maxrss_kb": KB}   it has ended

The child runs the script as `python SCRIPT.py ARGS` would: as `__main__`, read from disk only now, its
directory first on sys.path, stdin at EOF, stdout and stderr to the log, the job's environment (and
`python -m MODULE ARGS` likewise, the working directory first on sys.path). It ends without
tearing the interpreter down: its non-daemon threads are joined, its atexit functions run, the files it opened
and the standard streams are flushed, then os._exit. Differences from a fresh interpreter: the installed modules are already imported (with
the environment the server started with, which the executor keeps equal to the job's but for AUTORESEARCH_*),
and all children share the server's string-hash seed. numpy's global random state is reseeded in each child,
as Python reseeds `random` itself.

The server never runs job code, and every child forks from that same state (modules imported, no thread pool
or GPU context started), so nothing of one run reaches the next. It exits when the harness closes the socket.
Only this file's standard library imports happen before the preloads: it must not import autoresearch.
"""

from __future__ import annotations

import json
import os
import socket
import sys

MESSAGE_BYTES = 1 << 20  # a job's description (its environment included) fits in one message


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


def script_imports(argv: list[str], root, worktree) -> tuple[str, ...] | None:
    """What a server for `argv` preloads, or None where `argv` cannot be forked: only `python SCRIPT.py ...` and
    `python -m MODULE ...` run by this interpreter. A script's imports are read from its copy under `root` (the
    target's own). A module is preloaded itself unless the worktree has one of its name, and where its first
    argument is a script (`python -m autoresearch.guard train.py`), so are that script's imports."""
    if len(argv) < 2 or argv[0] != sys.executable:
        return None
    if argv[1] == "-m" and len(argv) > 2:
        own = _imports(argv[3], root, worktree) if len(argv) > 3 and argv[3].endswith(".py") else ()
        local = argv[2].split(".")[0] in _neighbours(worktree)
        return own if local else (argv[2], *own)
    return _imports(argv[1], root, worktree) if argv[1].endswith(".py") else None


def _imports(script: str, root, worktree) -> tuple[str, ...]:
    from pathlib import Path

    path = Path(script)
    try:
        source = (path if path.is_absolute() else Path(root) / path).read_text()
    except (OSError, UnicodeDecodeError):
        return ()  # a script the target does not have in its root: forked all the same, with nothing preloaded
    return tuple(preloads(source, _neighbours((Path(worktree) / path).parent)))


def _neighbours(directory) -> set[str]:
    """The names a module beside a script in `directory` could be imported by."""
    from pathlib import Path

    try:
        return {p.stem if p.suffix == ".py" else p.name for p in Path(directory).iterdir()}
    except OSError:
        return set()


# ---------------------------------------------------------------------------- the server (inside the sandbox)


def serve(preload: list[str]) -> None:
    import gc
    import importlib
    import warnings

    # Python >= 3.12 warns about fork() in a process with threads; numpy's BLAS pool is one, and it stops itself
    # across a fork (pthread_atfork). Nothing else here has started a thread.
    warnings.filterwarnings("ignore", message=r".*fork\(\)", category=DeprecationWarning)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # the script meets the same error in its turn, and reports it
            pass
    # What the imports made is left out of the children's garbage collections and of the scan for open files
    # at their end (_finish): with torch, 166,000 objects, 60 ms per job to look through.
    gc.collect()
    gc.freeze()
    channel = socket.socket(fileno=0)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, MESSAGE_BYTES, 1)
        except OSError:
            return
        if not message:  # the harness has gone
            return
        job = json.loads(message)
        pid = os.fork()
        if pid == 0:
            channel.detach()  # fd 0 becomes /dev/null below: a run cannot talk to the harness for the server
            _child(job, fds[0])
        for fd in fds:
            os.close(fd)
        try:
            channel.send(json.dumps({"pid": pid}).encode())
            _, status, usage = os.wait4(pid, 0)
            channel.send(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status),
                                     "maxrss_kb": usage.ru_maxrss}).encode())
        except OSError:
            return


def _child(job: dict, log_fd: int) -> None:
    """Become the job (never returns)."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        code = run_script(job["argv"][1:])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(_finish(code))


def run_script(argv: list[str]) -> int:
    """`python argv...` (argv: `SCRIPT.py ARGS` or `-m MODULE ARGS`) run in this process; its exit status."""
    import runpy

    script = ""
    try:
        if argv[0] == "-m":
            import importlib.util

            sys.argv = [argv[1], *argv[2:]]  # the module's path replaces argv[0] as it starts, as under python -m
            sys.path.insert(0, os.getcwd())
            spec = importlib.util.find_spec(argv[1])
            script = spec.origin if spec and spec.origin else script
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = [script, *argv[1:]]
            sys.path.insert(0, os.path.dirname(script))
            runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException as error:  # reported as the interpreter would: from the script's own frames
        trace = error.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename != script:
            trace = trace.tb_next
        sys.excepthook(type(error), error.with_traceback(trace), trace)
        return 130 if isinstance(error, KeyboardInterrupt) else 1


def _finish(code: int) -> int:
    """What an interpreter's exit does that matters to a run, without tearing down its modules (0.6 s with
    torch): wait for non-daemon threads, run atexit functions, flush open files."""
    import atexit
    import gc
    import io
    import threading

    try:
        threading._shutdown()  # as the interpreter exits: threading's own exit hooks (which tell pools such as
        # concurrent.futures' to stop; torch.compile starts some), then wait for the non-daemon threads
        atexit._run_exitfuncs()
        # exact types: isinstance would read every object's __class__ (slow, and some lazy modules warn). The
        # scan sees what the job made (the server froze what it had made, with the standard streams among it).
        writers = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)
        opened = [obj for obj in gc.get_objects() if type(obj) in writers]
        for obj in (*opened, sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if obj is not None and not obj.closed:
                    obj.flush()
            except Exception:
                pass
    except BaseException:
        pass
    return code


if __name__ == "__main__":
    del sys.path[0]  # this file's directory: autoresearch's own modules must not shadow the script's imports
    options = sys.argv[1:]
    serve(list(filter(None, options[options.index("--preload") + 1].split(","))) if "--preload" in options else [])
