"""The run sandbox: what a jailed command can and cannot do, the resource limits that end a run with a
recorded reason, and the fallback where the OS offers no isolation. Real processes, no mocks."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autoresearch import sandbox
from autoresearch.config import ConfigError, load
from autoresearch.executor import Job, LocalExecutor, Slot
from autoresearch.records import RunState, State
from autoresearch.runner import Runner
from autoresearch.sandbox import Jail, Limits, SandboxError, parse_size
from autoresearch.target import Target
from jail import needs_jail
from toy import CONFIG, TAG, alive, build_toy, run_cli

SLOT = Slot("cpu0", "cpu", 1)
SRC = Path(sandbox.__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="memory and process limits read /proc")


def run_job(tmp_path, code: str, limits=None, jail=None, timeout: float = 30, cwd=None, args=(), out=None):
    """Run `code` as a Python script through the local executor; (JobResult, the log's text)."""
    script = tmp_path / "job.py"
    script.write_text(code)
    log = tmp_path / "log.txt"
    env = {"PATH": os.environ["PATH"], "AUTORESEARCH_OUT": str(out or tmp_path)}
    job = Job([sys.executable, str(script), *map(str, args)], cwd or tmp_path, env, timeout, log, jail=jail,
              limits=limits)
    result = LocalExecutor("cpu").run(job, SLOT)
    return result, log.read_text(errors="replace")


# ---------------------------------------------------------------- isolation: what a jailed command sees

# Tries everything a run must not do (and a few it must be able to do); prints one JSON object of outcomes:
# "ok", the errno's name, or what was read.
PROBE = '''\
import ctypes, errno, json, os, socket, sys

root, port, scratch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)

def attempt(action):
    try:
        value = action()
        return "ok" if value is None else value
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))

def write(path):
    with open(path, "a") as handle:
        handle.write("x")

def syscall(result):
    if result != 0:
        raise OSError(ctypes.get_errno(), "")

print(json.dumps({
    "write the root": attempt(lambda: write(f"{root}/new.txt")),
    "write the ledger": attempt(lambda: write(f"{root}/.autoresearch/ledger.sqlite")),
    "move a branch": attempt(lambda: write(f"{root}/.git/refs/heads/main")),
    "write a protected file": attempt(lambda: write(f"{root}/scorer.py")),
    "write the ledger via the cwd": attempt(lambda: write("../../ledger.sqlite")),
    "write the worktree": attempt(lambda: write("new.txt")),
    "write the out dir": attempt(lambda: write(os.environ["AUTORESEARCH_OUT"] + "/new.txt")),
    "write /tmp": attempt(lambda: write(scratch)),
    "read a hidden file": attempt(lambda: open(f"{root}/.autoresearch/data/val.bin").read()),
    "list a hidden dir": attempt(lambda: sorted(os.listdir(f"{root}/.autoresearch/data/test"))),
    "read the training data": attempt(lambda: open(f"{root}/.autoresearch/data/train/train.bin").read()),
    "connect to the host": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close()),
    "capabilities": [line.split()[1] for line in open("/proc/self/status") if line.startswith(("CapEff", "CapBnd"))],
    "unmount a hidden dir": attempt(lambda: syscall(libc.umount2(f"{root}/.autoresearch/data/test".encode(), 0))),
    "remount the root writable": attempt(lambda: syscall(libc.mount(None, root.encode(), None,
                                                                    ctypes.c_ulong(32 | 4096), None))),
}))
'''

JAILED = {
    "write the root": "EROFS", "write the ledger": "EROFS", "move a branch": "EROFS",
    "write a protected file": "EROFS", "write the ledger via the cwd": "EROFS",
    "write the worktree": "ok", "write the out dir": "ok", "write /tmp": "ok",
    "read a hidden file": "", "list a hidden dir": [], "read the training data": "train tokens",
    "capabilities": ["0000000000000000", "0000000000000000"],
    "unmount a hidden dir": "EPERM", "remount the root writable": "EPERM",
}


@pytest.fixture
def layout(tmp_path):
    """A target as the runner sees it: ledger, git, prepared data (train/ plus held-out splits), a worktree and
    an out dir; the jails the runner would give its train and evaluate commands."""
    toy = build_toy(tmp_path)
    state = toy.root / ".autoresearch"
    (state / "data" / "train").mkdir(parents=True)
    (state / "data" / "train" / "train.bin").write_text("train tokens")
    (state / "data" / "val.bin").write_text("held-out validation")
    (state / "data" / "test").mkdir()
    (state / "data" / "test" / "test.bin").write_text("held-out test")
    (state / "ledger.sqlite").write_text("the ledger")
    worktree, out = state / "worktrees" / "cpu0", state / "runs" / TAG / "00001" / "seed0" / "out"
    worktree.mkdir(parents=True)
    out.mkdir(parents=True)
    runner = Runner(Target.open(toy.root), LocalExecutor("cpu"))
    return {"root": toy.root, "worktree": worktree, "out": out,
            "train": runner.jail((worktree, out), runner.held_out()), "evaluate": runner.jail((out,))}


@pytest.fixture
def server():
    """A TCP server on the host's loopback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def probe(tmp_path, layout, port, jail):
    result, log = run_job(tmp_path, PROBE, jail=jail, cwd=layout["worktree"], out=layout["out"],
                          args=(layout["root"], port, tmp_path / "scratch.txt"))
    assert result.exit_code == 0, log
    return json.loads(log.strip().splitlines()[-1])


@needs_jail
def test_a_jailed_train_command_writes_only_its_worktree_out_dir_and_tmp(tmp_path, layout, server):
    outcomes = probe(tmp_path, layout, server, layout["train"])
    for key in ("write the root", "write the ledger", "move a branch", "write a protected file",
                "write the ledger via the cwd", "write the worktree", "write the out dir", "write /tmp"):
        assert (key, outcomes[key]) == (key, JAILED[key])
    assert (layout["root"] / ".autoresearch" / "ledger.sqlite").read_text() == "the ledger"


@needs_jail
def test_a_jailed_train_command_cannot_read_the_held_out_data(tmp_path, layout, server):
    outcomes = probe(tmp_path, layout, server, layout["train"])
    assert outcomes["read a hidden file"] == ""
    assert outcomes["list a hidden dir"] == []
    assert outcomes["read the training data"] == "train tokens"


@needs_jail
def test_a_jailed_command_cannot_reach_a_server_on_the_hosts_loopback(tmp_path, layout, server):
    assert probe(tmp_path, layout, server, layout["train"])["connect to the host"] in ("ECONNREFUSED", "ENETUNREACH")


@needs_jail
def test_a_jailed_command_cannot_undo_its_jail(tmp_path, layout, server):
    outcomes = probe(tmp_path, layout, server, layout["train"])
    for key in ("capabilities", "unmount a hidden dir", "remount the root writable"):
        assert (key, outcomes[key]) == (key, JAILED[key])


@needs_jail
def test_the_evaluate_command_reads_the_held_out_data_but_writes_only_its_out_dir(tmp_path, layout, server):
    outcomes = probe(tmp_path, layout, server, layout["evaluate"])
    assert outcomes["read a hidden file"] == "held-out validation"
    assert outcomes["list a hidden dir"] == ["test.bin"]
    assert (outcomes["write the out dir"], outcomes["write the worktree"]) == ("ok", "EROFS")
    assert outcomes["connect to the host"] != "ok"


@needs_jail
def test_the_jail_leaves_the_hosts_mounts_alone(tmp_path, layout, server):
    before = Path("/proc/self/mountinfo").read_text()
    probe(tmp_path, layout, server, layout["train"])
    assert Path("/proc/self/mountinfo").read_text() == before
    assert (layout["root"] / ".autoresearch" / "data" / "val.bin").read_text() == "held-out validation"


def test_without_a_jail_the_same_probe_succeeds(tmp_path, layout, server):
    """The control: the probe's attempts do work when nothing stops them."""
    outcomes = probe(tmp_path, layout, server, None)
    assert outcomes["write the ledger"] == "ok"
    assert outcomes["read a hidden file"] == "held-out validation"
    assert outcomes["connect to the host"] == "ok"


NOBODY = 65534
HARNESS = '''\
import json, sys
sys.path.insert(0, {src!r})
from pathlib import Path
from autoresearch.executor import Job, LocalExecutor, Slot
from autoresearch.sandbox import Jail, Limits
jail = Jail(**{{key: tuple(Path(p) for p in paths) for key, paths in json.loads(sys.argv[1]).items()}})
env = {{"PATH": "/usr/bin:/bin", "AUTORESEARCH_OUT": sys.argv[3]}}
log = Path(sys.argv[4])
result = LocalExecutor("cpu").run(Job([sys.executable, *sys.argv[5:]], Path(sys.argv[2]), env, 30, log, jail=jail,
                                      limits=Limits(open_files=256, processes=64)), Slot("cpu0"))
print(log.read_text().strip().splitlines()[-1])
'''


def _python_for(uid: int):
    """A Python interpreter that user `uid` can run, and that can run itself again (a root-only pyenv would not
    do), or None."""
    check = "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", candidate, "-c", check],
                              capture_output=True, cwd="/")
        if done.returncode == 0:
            return candidate
    return None


@needs_jail
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user")
def test_the_jail_holds_for_an_ordinary_user(server):
    """Run as root, CI runs as a user: check the unprivileged path (a user namespace) as `nobody`."""
    python = _python_for(NOBODY)
    if python is None:
        pytest.skip("no Python interpreter that nobody may run")
    base = Path(tempfile.mkdtemp(prefix="autoresearch-nobody-"))
    try:
        os.chmod(base, 0o755)
        layout = {}
        toy = build_toy(base)
        state = toy.root / ".autoresearch"
        for path, text in (("data/train/train.bin", "train tokens"), ("data/val.bin", "held-out validation"),
                           ("data/test/test.bin", "held-out test"), ("ledger.sqlite", "the ledger")):
            (state / path).parent.mkdir(parents=True, exist_ok=True)
            (state / path).write_text(text)
        layout["worktree"], layout["out"] = state / "worktrees" / "cpu0", state / "runs" / "out"
        for path in (layout["worktree"], layout["out"]):
            path.mkdir(parents=True)
        (base / "probe.py").write_text(PROBE)
        (base / "harness.py").write_text(HARNESS.format(src=str(SRC)))
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(base)], check=True)
        runner = Runner(Target.open(toy.root), LocalExecutor("cpu"))
        jail = runner.jail((layout["worktree"], layout["out"]), runner.held_out())
        paths = {"readonly": [str(toy.root)], "writable": [str(p) for p in jail.writable],
                 "hidden": [str(p) for p in jail.hidden]}
        done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
                               str(base / "harness.py"), json.dumps(paths), str(layout["worktree"]), str(layout["out"]),
                               str(base / "log.txt"), str(base / "probe.py"), str(toy.root), str(server),
                               str(base / "scratch.txt")], capture_output=True, text=True, timeout=60, cwd="/")
        assert done.returncode == 0, done.stderr
        outcomes = json.loads(done.stdout.strip().splitlines()[-1])
        assert {key: outcomes[key] for key in JAILED} == JAILED
        assert outcomes["connect to the host"] in ("ECONNREFUSED", "ENETUNREACH")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- resource limits, each ending the job with a reason

@linux_only
def test_a_memory_hog_is_killed_with_its_group_rss_as_the_reason(tmp_path):
    started = time.monotonic()
    result, log = run_job(tmp_path, "import time\nhog = b'x' * (300 * 2**20)\ntime.sleep(30)\n",
                          limits=Limits(memory=100 * 2**20))
    assert result.limit.startswith("memory limit 100.0 MiB exceeded (group RSS ")
    assert result.exit_code == -9 and not result.timed_out
    assert time.monotonic() - started < 5
    assert log.endswith(f"[autoresearch] killed: {result.limit}\n")


FORK_BOMB = '''\
import os, time
for _ in range(200):          # bounded, to be kind to the machine if the limit failed
    if os.fork() == 0:
        with open({pids!r}, "a") as pids:
            pids.write(f"{{os.getpid()}}\\n")
        time.sleep(30)
        os._exit(0)
    time.sleep(0.005)
time.sleep(30)
'''


@linux_only
def test_a_fork_bomb_is_killed_at_the_process_limit_and_nothing_of_it_survives(tmp_path):
    started = time.monotonic()
    result, _ = run_job(tmp_path, FORK_BOMB.format(pids=str(tmp_path / "pids")), limits=Limits(processes=64))
    assert result.limit.startswith("process limit 64 exceeded (")
    assert time.monotonic() - started < 5
    children = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert len(children) >= 64
    assert not [pid for pid in children if alive(pid)]


def test_a_flood_of_output_is_cut_at_the_limit(tmp_path):
    flood = "import sys\nchunk = b'y' * 2**20\nfor _ in range(954):\n    sys.stdout.buffer.write(chunk)\n"  # 10^9 bytes
    started = time.monotonic()
    result, log = run_job(tmp_path, flood, limits=Limits(output=2**20))
    assert result.limit.startswith("output limit 1.0 MiB exceeded")
    assert time.monotonic() - started < 10
    assert (tmp_path / "log.txt").stat().st_size < 2**20 + 200
    assert log.endswith(f"[autoresearch] killed: {result.limit}\n")
    assert log.startswith("y" * 1000)


def test_output_over_the_limit_from_a_run_that_ended_in_time_is_cut_too(tmp_path):
    result, log = run_job(tmp_path, "import sys\nsys.stdout.write('z' * 3 * 2**20)\n", limits=Limits(output=2**20))
    assert result.limit == "output limit 1.0 MiB exceeded (the run wrote more before it ended)"
    assert len(log) < 2**20 + 200


def test_open_files_and_core_dumps_are_limited(tmp_path):
    code = '''\
import resource
files = []
try:
    for _ in range(100):
        files.append(open(__file__))
except OSError as exc:
    print(f"opened {len(files)}: {exc.strerror}")
print("core", resource.getrlimit(resource.RLIMIT_CORE))
'''
    result, log = run_job(tmp_path, code, limits=Limits(open_files=32))
    assert result.exit_code == 0 and not result.limit
    assert "opened 2" in log and "Too many open files" in log  # stdin/out/err and the interpreter's own take a few
    assert "core (0, 0)" in log


def test_the_timeout_overshoot_is_measured_and_logged(tmp_path):
    result, log = run_job(tmp_path, "import time\nprint('started', flush=True)\ntime.sleep(30)\n", timeout=0.5,
                          limits=Limits())
    assert result.timed_out
    assert 0 <= result.overshoot < 1.0
    assert "[autoresearch] hard limit of 0.5s reached: SIGTERM to the process group, which was gone " in log


# ---------------------------------------------------------------- through the runner, into the ledger

def sandboxed(**keys) -> str:
    return CONFIG + "\n[sandbox]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())


GOOD = {"description": "raise LR to 2", "knobs": {"LR": 2.0}}


@linux_only
def test_a_run_over_a_limit_is_recorded_crashed_with_the_reason_and_the_loop_goes_on(make_toy):
    toy = make_toy(config=sandboxed(memory="100M"))
    hog = {"description": "hoard memory", "replace": [{"file": "train.py", "old": "time.sleep(SLEEP)\n",
                                                        "new": "hog = b'x' * (300 * 2**20)\ntime.sleep(30)\n"}]}
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([hog, GOOD]))
    assert result.code == 0, result.text
    _, hoarded, good = toy.experiments()
    assert hoarded.state is State.CRASHED
    assert hoarded.reason.startswith("seed 0: train killed: memory limit 100.0 MiB exceeded (group RSS ")
    (run,) = hoarded.runs
    assert (run.state, run.exit_code) == (RunState.CRASHED, -9)
    assert run.reason.startswith("train killed: memory limit")
    assert run.log_tail.endswith(f"[autoresearch] killed: {run.reason.removeprefix('train killed: ')}\n")
    assert good.state is State.KEPT


def test_running_out_of_open_files_is_named_in_the_reason(make_toy):
    toy = make_toy(config=sandboxed(open_files=32))
    hoard = {"description": "open too many files", "replace": [{
        "file": "train.py", "old": "time.sleep(SLEEP)\n", "new": "files = [open(__file__) for _ in range(100)]\n"}]}
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([hoard]))
    assert result.code == 0, result.text
    crashed = toy.experiments()[1]
    assert crashed.state is State.CRASHED
    assert crashed.reason.endswith("(out of open files: at most 32 per process, [sandbox] open_files)")


EVALUATE = '''\
import os
held_out = open(os.path.join(os.environ["AUTORESEARCH_DATA"], "val.bin")).read()
print(f"score: {len(held_out)}")
'''
# The agent's train.py: tries to read the held-out data, to rewrite the ledger, to reach the host and to move
# the research branch with git, then reports what happened.
SNEAKY = '''\
import os, socket, subprocess
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return type(exc).__name__
root = os.path.abspath("../../..")
print("read val:", repr(open(os.path.join(root, ".autoresearch", "data", "val.bin")).read()))
print("ledger:", attempt(lambda: open(os.path.join(root, ".autoresearch", "ledger.sqlite"), "w")))
print("network:", attempt(lambda: socket.create_connection(("127.0.0.1", int(os.environ.get("PORT", "9"))), 2)))
moved = subprocess.run(["git", "update-ref", "refs/heads/autoresearch/t", "HEAD"], capture_output=True, text=True)
print("git:", moved.returncode, moved.stderr.strip().splitlines()[-1:])
'''


@needs_jail
def test_through_the_runner_training_is_jailed_and_the_evaluator_sees_the_validation_data(make_toy):
    config = CONFIG.replace('train = "python train.py"', 'train = "python train.py"\nevaluate = "python evaluate.py"')
    toy = make_toy(config=config.replace('protected = ["scorer.py"', 'protected = ["evaluate.py", "scorer.py"'),
                   files={"evaluate.py": EVALUATE})
    data = toy.root / ".autoresearch" / "data"
    (data / "train").mkdir(parents=True)
    (data / "val.bin").write_text("x" * 7)
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([{"description": "sneak",
                                                                          "write": {"train.py": SNEAKY}}]))
    assert result.code == 0, result.text
    baseline, sneaky = toy.experiments()
    assert baseline.metric == 7.0  # the real evaluator ran, on the real validation data
    log = sneaky.runs[0].log_tail
    assert "read val: ''" in log
    assert "ledger: OSError" in log
    assert "network: ok" not in log and "network: " in log
    assert "git: 0" not in log and "Read-only file system" in log
    assert toy.branch() == baseline.commit


# ---------------------------------------------------------------- where isolation is unavailable

@pytest.fixture
def no_unshare(tmp_path, monkeypatch):
    """Isolation unavailable, as on macOS: the probe is pointed at an unshare that does not exist."""
    missing = tmp_path / "no-unshare"
    monkeypatch.setenv("AUTORESEARCH_UNSHARE", str(missing))
    return missing


def test_without_isolation_runs_still_work_and_the_harness_says_once_what_is_not_isolated(make_toy, no_unshare):
    toy = make_toy()
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([GOOD, {"description": "WIDTH 8",
                                                                                 "knobs": {"WIDTH": 8}}]))
    assert result.code == 0, result.text
    assert [e.state for e in toy.experiments()] == [State.BASELINE, State.KEPT, State.KEPT]
    assert result.err.count("runs are NOT isolated on this machine") == 1
    assert f"`{no_unshare}` (util-linux) was not found" in result.err
    for exposed in ("network", "held-out data", "the ledger and the research branch"):
        assert exposed in result.err


def test_isolation_required_but_unavailable_refuses_to_run(make_toy, no_unshare):
    toy = make_toy(config=sandboxed(isolate="required"))
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([GOOD]))
    assert result.code == 1
    assert 'isolate = "required", but runs cannot be isolated on this machine' in result.err
    assert "nothing was run" in result.err
    assert toy.experiments() == [] and toy.pids() == []


def test_the_executor_refuses_a_required_jail_it_cannot_build(tmp_path, no_unshare):
    with pytest.raises(SandboxError, match="not found"):
        run_job(tmp_path, "print('ran')", jail=Jail(required=True))
    assert not (tmp_path / "log.txt").exists() or "ran" not in (tmp_path / "log.txt").read_text()


def test_isolate_off_says_nothing(make_toy, no_unshare):
    toy = make_toy(config=sandboxed(isolate="off"))
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--experiments", "0", *toy.scripted([]))
    assert result.code == 0, result.text
    assert "isolated" not in result.err


# ---------------------------------------------------------------- configuration

def test_sizes():
    assert [parse_size(s) for s in ("8G", "512M", "64MiB", "1.5GB", "4096", "2k")] == \
        [8 * 2**30, 512 * 2**20, 64 * 2**20, int(1.5 * 2**30), 4096, 2048]
    assert parse_size("50%") == sandbox.machine_memory() // 2
    for bad in ("lots", "0", "-1G", "150%", "inf"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_sandbox_defaults_and_limits():
    config = load_text(CONFIG)
    assert config.sandbox.isolate == "auto"
    limits = config.sandbox.limits()
    assert limits == Limits(memory=int(sandbox.machine_memory() * 0.8), processes=256, open_files=4096,
                            output=64 * 2**20)


def load_text(text: str):
    directory = Path(tempfile.mkdtemp())
    (directory / "autoresearch.toml").write_text(text)
    try:
        return load(directory)
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("keys, message", [
    ({"isolate": "sometimes"}, "sandbox.isolate: Input should be 'auto', 'required' or 'off' (got 'sometimes')"),
    ({"memory": "lots"}, "sandbox.memory: expected a size like 8G, 512M or 80% (got 'lots')"),
    ({"processes": 0}, "sandbox.processes: Input should be greater than or equal to 1 (got 0)"),
    ({"network": True}, "sandbox.network: unknown key"),
])
def test_sandbox_config_errors_name_the_key(keys, message):
    with pytest.raises(ConfigError) as error:
        load_text(sandboxed(**keys))
    assert message in str(error.value)
