"""Model processes: the agent's model answering "logits for these windows" from a jailed child process.

    zygote = Zygote(hide=[data_dir])            # first: forked before this process reads any held-out data
    model = zygote.spawn(load, (path,))          # a fresh model process, jailed; no agent code has run in it yet
    model.go()                                   # it calls load(path) now: the agent's code runs from here on
    model.ask(windows)                           # int array [B, T] of token ids
    logits = model.answer(vocab_size)            # float32 tensor [B, T, V], copied into this process
    model.close()                                # it and everything it started are gone when this returns

Model processes are forked from the zygote, a copy of this process made before it read anything held out, so no
held-out token is in their memory. `load(*args)` (a module-level function: it is pickled by reference) runs in
the model process when `go()` is called: it imports the agent's code and returns `answer(x)`, mapping a
LongTensor [B, T] to logits [B, T, V]. From then on the process is the agent's: whatever it sends back (shape,
dtype, size, values) is checked here, and nothing else it does reaches this process. An optional `prepare(*args)`
runs before `go()`, still trusted code (e.g. to start CUDA while another model process works).

The jail, which each model process makes for itself on Linux (so it nests inside the harness's own): new user,
mount, network, IPC and pid namespaces; every mount read-only (mount_setattr, Linux >= 5.12); the `hide` paths
covered (the held-out data, the download cache); a /proc of its own, where it sees no other process (not this
one, not the harness); no network device; a keyring of its own; no capabilities. It can read what your user can
read elsewhere and can write nothing at all, not even /tmp. Its stdout and stderr go to a pipe this process
reads (shown when it fails), never to the run's log. It is pid 1 of its namespace: killing it kills everything
it started. Where the jail cannot be made (no user namespaces, not Linux), `spawn` raises with `required=True`,
and otherwise runs the model process unjailed with `ModelProcess.jail_error` saying why.

Creating a Zygote makes this process non-dumpable: other processes of your user can no longer read its memory
or open its files through /proc.
"""

from __future__ import annotations

import os
import pickle
import platform
import select
import signal
import socket
import struct
import sys
from typing import Callable, Optional, Sequence

import torch

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 16384, 1 << 18
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD, SYS_MOUNT_SETATTR = 1, 0x8000, -100, 442  # 442 on every architecture
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}

REQUEST = struct.Struct("<III")    # batch, length, transport dtype; batch 0 means "go"
FRAME = struct.Struct("<IIIIQ")    # kind, batch, length, vocab, payload bytes
HELLO, PID, LOGITS, ERROR = 1, 2, 3, 4
TRANSPORT = {0: torch.float32, 1: torch.bfloat16}  # the dtype logits travel in
OUTPUT_KEPT = 16384                # bytes of a model process's output kept for error messages
GONE_SECONDS = 10.0                # how long close() waits for a killed model process to be gone


class ModelError(Exception):
    """The model process failed (the agent's code raised, it died, or it broke the protocol)."""


# ---------------------------------------------------------------------------- this process's side


class ModelProcess:
    """One model process, as seen from the evaluator: requests go out, checked logits come back."""

    def __init__(self, channel: socket.socket, output: int):
        self.channel, self.output = channel, output
        self.tail = bytearray()
        self.pid: Optional[int] = None
        self.jail_error = ""
        self.pending: list[tuple[int, int, int]] = []  # requests not answered yet: (batch, length, dtype code)
        kind, _, _, _, size = self._frame()
        if kind != PID:
            raise ModelError(f"the model process did not start{self._shown()}")
        self.pid = int.from_bytes(self._read(size), "little")
        kind, _, _, _, size = self._frame()
        if kind != HELLO:
            raise ModelError(f"the model process did not start{self._shown()}")
        self.jail_error = self._read(size).decode(errors="replace")

    def go(self) -> None:
        """Let it load the model (run the agent's code)."""
        self.channel.sendall(REQUEST.pack(0, 0, 0))

    def ask(self, windows, transport: torch.dtype = torch.float32) -> None:
        """Send a batch of windows (int array [B, T]); its logits come back with the next `answer`."""
        x = torch.as_tensor(windows).to(torch.int32).contiguous()
        code = next(code for code, dtype in TRANSPORT.items() if dtype == transport)
        self.channel.sendall(REQUEST.pack(x.shape[0], x.shape[1], code) + x.numpy().tobytes())
        self.pending.append((x.shape[0], x.shape[1], code))

    def answer(self, vocab_size: int) -> torch.Tensor:
        """The logits of the oldest request not answered yet: float32 [B, T, V], or ModelError."""
        batch, length, code = self.pending.pop(0)
        kind, b, t, v, size = self._frame()
        if kind == ERROR:  # its words on one line: nothing it says reads as a `key: value` line of the evaluator's
            said = " ".join(self._read(min(size, 65536)).decode(errors="replace").split())[:2000]
            raise ModelError(said + self._shown())
        expected = batch * length * vocab_size * TRANSPORT[code].itemsize
        if kind != LOGITS or (b, t, v) != (batch, length, vocab_size) or size != expected:
            raise ModelError(f"the model answered a batch of {batch} windows of {length} tokens with logits of shape "
                             f"({b}, {t}, {v}) ({size} bytes), expected ({batch}, {length}, {vocab_size})")
        logits = torch.empty((batch, length, vocab_size), dtype=TRANSPORT[code])
        self._read_into(memoryview(logits.view(torch.uint8).numpy()).cast("B"))
        return logits.float()

    def close(self) -> None:
        """Kill the model process and wait until nothing of it is left (its pid namespace is gone)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        # Every process that could hold the channel is the model process or its descendant: EOF means all are gone.
        try:
            self.channel.settimeout(GONE_SECONDS)
            while self.channel.recv(1 << 16):
                pass
        except OSError:
            pass
        self.channel.close()
        try:
            os.close(self.output)
        except OSError:
            pass

    # -- reading, while keeping its output drained (a full pipe would block it)

    def _frame(self) -> tuple[int, int, int, int, int]:
        return FRAME.unpack(self._read(FRAME.size))

    def _read(self, size: int) -> bytes:
        buffer = bytearray(size)
        self._read_into(memoryview(buffer))
        return bytes(buffer)

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            ready, _, _ = select.select([self.channel, self.output], [], [])
            if self.output in ready:
                self._drain()
            if self.channel in ready:
                try:
                    n = self.channel.recv_into(view[got:])
                except ConnectionResetError:
                    n = 0
                if n == 0:
                    self._drain()
                    raise ModelError(f"the model process ended{self._shown()}")
                got += n

    def _drain(self) -> None:
        try:
            data = os.read(self.output, 1 << 16)
        except OSError:
            return
        self.tail = (self.tail + data)[-OUTPUT_KEPT:]

    def _shown(self) -> str:
        """Its output so far, for an error message."""
        text = self.tail.decode(errors="replace").strip()
        return ("; its output ends:\n" + "\n".join("  | " + line for line in text.splitlines()[-40:])) if text else ""


class Zygote:
    """A clean copy of this process (forked before any held-out data is read) that forks the model processes."""

    def __init__(self, hide: Sequence[str] = (), required: bool = False):
        self.hide, self.required = [os.path.abspath(p) for p in hide], required
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        self.socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.socket.close()
                _zygote(theirs, self.hide)
            finally:
                os._exit(0)
        theirs.close()

    def spawn(self, load: Callable, args: tuple = (), prepare: Optional[Callable] = None) -> ModelProcess:
        """A new model process; `load(*args)` runs in it at `go()`, `prepare(*args)` (if given) before."""
        channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        try:
            socket.send_fds(self.socket, [pickle.dumps((load, prepare, args))], [theirs.fileno(), out_w])
        finally:
            theirs.close()
            os.close(out_w)
        model = ModelProcess(channel, out_r)
        if model.jail_error and self.required:
            model.close()
            raise ModelError(f"the model process cannot be isolated here ({model.jail_error}), and isolation is "
                             "required")
        return model

    def close(self) -> None:
        self.socket.close()  # it exits when it sees the socket closed
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- the zygote and the model processes


def _zygote(channel: socket.socket, hide: list[str]) -> None:
    """Fork a model process for each request, until the evaluator closes the socket."""
    _die_with_parent()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 2)
        except OSError:
            message = b""
        _reap(block=not message)
        if not message:
            return
        if os.fork() == 0:
            code = 70
            try:
                channel.close()
                code = _intermediate(pickle.loads(message), fds[0], fds[1], hide)
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


def _reap(block: bool) -> None:
    """Wait for the intermediate processes that have ended (all of them when `block`): their CPU time, and their
    model process's, then counts in this process's children's, as for any child process."""
    try:
        while os.waitpid(-1, 0 if block else os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _intermediate(spec: tuple, channel_fd: int, out_w: int, hide: list[str]) -> int:
    """Make the jail's namespaces, fork the model process into them (pid 1 of a new pid namespace), report its
    pid, wait for it. Returns the exit status to leave with."""
    _die_with_parent()
    problem = _namespaces(hide)
    gate_r, gate_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(gate_w)
            os.read(gate_r, 1)  # until the pid is on the channel: the model process's frames come after it
            os.close(gate_r)
            code = _model(spec, channel_fd, out_w, problem)
        finally:
            os._exit(code)
    os.close(gate_r)
    channel = socket.socket(fileno=channel_fd)
    channel.sendall(FRAME.pack(PID, 0, 0, 0, 8) + pid.to_bytes(8, "little"))
    channel.close()
    os.close(out_w)
    os.close(gate_w)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) & 0xFF


def _model(spec: tuple, channel_fd: int, out_w: int, problem: str) -> int:
    """The model process: finish the jail, serve requests. Returns its exit status."""
    load, prepare, args = spec
    _die_with_parent()
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.dup2(channel_fd, 3)
    os.closerange(4, _max_fd())  # the evaluator's and the other model processes' descriptors among them
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # the evaluator's may write elsewhere (a test's capture)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    channel = socket.socket(fileno=3)
    if not problem:
        problem = _own_proc_and_no_capabilities()
    for name in [n for n in os.environ if n.startswith("AUTORESEARCH_") and n not in KEPT_ENVIRON]:
        del os.environ[name]
    try:
        os.chdir(os.getcwd())  # re-enter the working directory through the new mounts
    except OSError:
        pass
    note = problem.encode()
    channel.sendall(FRAME.pack(HELLO, 0, 0, 0, len(note)) + note)
    try:
        if prepare is not None:
            prepare(*args)
        if _request(channel) is None:
            return 0
        answer = load(*args)
        while (request := _request(channel)) is not None:
            x, code = request
            logits = answer(x).detach().to(TRANSPORT[code]).cpu().contiguous()
            payload = logits.view(torch.uint8).numpy()
            shape = tuple(logits.shape) if logits.dim() == 3 else (0, 0, 0)  # the evaluator refuses a wrong one
            channel.sendall(FRAME.pack(LOGITS, *shape, payload.nbytes))
            channel.sendall(memoryview(payload).cast("B"))
    except BaseException as error:  # the agent's code failed: say how, in its output and to the evaluator
        import traceback

        try:
            traceback.print_exc()
        except OSError:
            pass
        text = f"the model failed: {type(error).__name__}: {error}".encode()
        try:
            channel.sendall(FRAME.pack(ERROR, 0, 0, 0, len(text)) + text)
            while channel.recv(1 << 16):  # until the evaluator has read it and hung up (closing with its requests
                pass                      # unread would reset the connection, and the message with it)
        except OSError:
            pass
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


KEPT_ENVIRON = {"AUTORESEARCH_DEVICE", "AUTORESEARCH_THREADS", "AUTORESEARCH_SEED"}


def _request(channel: socket.socket):
    """The next request: (LongTensor [B, T], transport code), () for "go", None when the evaluator has gone."""
    head = _recv_exact(channel, REQUEST.size)
    if head is None:
        return None
    batch, length, code = REQUEST.unpack(head)
    if batch == 0:
        return ()
    data = _recv_exact(channel, 4 * batch * length)
    if data is None:
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.int32).view(batch, length).long(), code


def _recv_exact(channel: socket.socket, size: int) -> Optional[bytes]:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = channel.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


# ---------------------------------------------------------------------------- the jail


def _namespaces(hide: list[str]) -> str:
    """In the intermediate process: new namespaces for its next child, every mount read-only, `hide` covered.
    Returns why not ("" when done)."""
    if not sys.platform.startswith("linux"):
        return f"no Linux namespaces on {sys.platform}"
    from . import launcher

    libc = launcher.libc()
    uid, gid = os.geteuid(), os.getegid()
    try:
        launcher.check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID),
                       "unshare")
    except OSError as exc:
        return str(exc)
    # Mapping uid 0 of the parent namespace needs CAP_SETFCAP there: refused for root without capabilities (inside
    # the harness's jail), and then the process stays unmapped (nobody), which changes nothing here: it reads as
    # your user and writes nothing either way.
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
        except OSError:
            pass
    try:
        launcher.mount(None, "/", None, MS_REC | MS_PRIVATE)
        for path in hide:
            if os.path.exists(path):
                launcher.hide(path)
        _all_readonly(libc)
    except OSError as exc:
        return str(exc)
    machine = platform.machine()
    if machine in SYS_KEYCTL:  # the keyring session inherited from the evaluator would be shared by model processes
        libc.syscall(SYS_KEYCTL[machine], KEYCTL_JOIN_SESSION_KEYRING, None)
    return ""


def _all_readonly(libc) -> None:
    """Every mount of this namespace read-only (they are its own copies: the rest of the machine is unchanged)."""
    import ctypes

    from . import launcher

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    launcher.check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
                                ctypes.sizeof(attr)), "mount_setattr (Linux >= 5.12)")


def _own_proc_and_no_capabilities() -> str:
    """In the model process (pid 1 of its namespace): a /proc showing only its namespace, then no capabilities."""
    from . import launcher

    problem = ""
    try:
        launcher.mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as exc:  # a container's masked /proc: the other processes stay visible (not their memory)
        problem = f"no /proc of its own: {exc}"
    try:
        launcher.drop_capabilities()
    except OSError as exc:
        problem = problem or str(exc)
    return problem


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _max_fd() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 65536
