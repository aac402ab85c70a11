"""`--executor ray`: each run is a Ray task on a Ray cluster; the code is shipped from the coordinator's git.

    autoresearch run --slots 8 --executor ray --address HEAD_IP:6379

A slot is a task's resources: one GPU (`num_gpus=1`) where the cluster has GPUs, else a share of its CPUs; as many
runs are in flight as there are slots (several at once from a new tag's calibration, a verification or the held-out
test: slots.py), each waiting on its task in its own thread. A run's
task gets the experiment's commit as a `git archive` of the coordinator's repository (committed again in a scratch
repository on the worker: blob hashes, which the integrity checks compare, are the same) and the prepared data
(put in Ray's object store once per session, unpacked once per node), then does on the worker exactly what a local
run does (runner.py: the jail where the node allows it, limits, the tampering checks, the trusted evaluator) and
returns the run's record, log and small output files. A worker needs autoresearch's dependencies, not the user's
repository; autoresearch itself travels with the tasks (`py_modules`).

A task lost to its node or worker dying is submitted again (up to MAX_REQUEUE times), with a flag saying so; an
exception inside the task is the run's crash; Ctrl-C cancels the tasks, which kill their process groups.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from .executor import Executor, Job, JobHandle, LocalExecutor, Slot
from .records import Flag, RunRecord, RunState

MAX_REQUEUE = 3  # submissions of one run after its node or worker died
OUT_FILE_LIMIT = 16 * 2**20  # output files brought back per run (weights are not: the evaluator ran there)


class RayUnavailable(Exception):
    pass


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, device: str = "auto", slots: Optional[int] = None, address: Optional[str] = None,
                 init_options: Optional[dict] = None):
        try:
            import ray
        except ImportError:
            raise RayUnavailable("--executor ray needs Ray: pip install 'autoresearch[ray]'") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            package = str(Path(__file__).resolve().parent)
            options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                       "runtime_env": {"py_modules": [package]}, **(init_options or {})}
            ray.init(address=address, **options)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if gpus and device in ("auto", "cuda"):
            count = slots or gpus
            self._slots = [Slot(f"ray-gpu{i}", "cuda", max(1, cpus // count)) for i in range(count)]
        else:
            count = slots or 1
            self._slots = [Slot(f"ray-cpu{i}", device, max(1, cpus // count)) for i in range(count)]
        self.gpus = bool(gpus and device in ("auto", "cuda"))
        self._task = ray.remote(_remote_run)
        self._data: dict[str, tuple] = {}  # data directory -> (digest, object ref)
        self._shipping = threading.Lock()

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def start(self, job: Job, slot: Slot) -> JobHandle:
        raise NotImplementedError("the ray executor runs whole runs (execute), not single commands")

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()

    # ---------------------------------------------------------------- one run

    def execute(self, runner, spec, slot: Slot) -> RunRecord:
        target = runner.target
        commit = spec.commit or target.git.resolve("HEAD")
        archive = target.git.run_bytes("archive", "--format=tar", commit)
        digest, data = self._shipped_data(target.data)
        payload = {"archive": archive, "data_digest": digest, "config": target.config, "protected": runner.protected,
                   "spec": dataclasses.replace(spec, worktree=Path("."), directory=Path(".")), "slot": slot,
                   "root_name": target.root.name}
        options = {"num_cpus": slot.threads, "num_gpus": 1 if self.gpus else 0, "max_retries": 0}
        flags: list[Flag] = []
        for attempt in range(1 + MAX_REQUEUE):
            ref = self._task.options(**options).remote(payload, data)
            try:
                result = self._wait(ref)
            except self.ray.exceptions.TaskCancelledError:
                return RunRecord(experiment_id=spec.experiment_id, seed=spec.seed, state=RunState.INTERRUPTED,
                                 metric=None, reason="train interrupted", slot=slot.name, started_at=time.time())
            except self.ray.exceptions.RayTaskError as exc:  # the run's code on the worker failed: a crash
                return RunRecord(experiment_id=spec.experiment_id, seed=spec.seed, state=RunState.CRASHED,
                                 metric=None, reason=f"the ray task failed: {str(exc).splitlines()[0]}",
                                 slot=slot.name, started_at=time.time())
            except self.ray.exceptions.RayError as exc:  # the node or worker died: run it again elsewhere
                note = f"its ray worker or node died ({type(exc).__name__}); submitted again (attempt {attempt + 2})"
                flags.append(Flag("requeued", note))
                if attempt == MAX_REQUEUE:
                    return RunRecord(experiment_id=spec.experiment_id, seed=spec.seed, state=RunState.CRASHED,
                                     metric=None, reason=f"lost {attempt + 1} times to dying ray workers or nodes",
                                     slot=slot.name, flags=tuple(flags), started_at=time.time())
                continue
            return self._received(result, spec, slot, flags)
        raise AssertionError("unreachable")

    def _wait(self, ref):
        stop = self.stopping()
        while True:
            ready, _ = self.ray.wait([ref], timeout=0.2)
            if ready:
                return self.ray.get(ref)
            if stop.is_set():
                self.ray.cancel(ref)  # a KeyboardInterrupt in the task: its run's process group is killed
                return self.ray.get(ref)

    def _received(self, result: dict, spec, slot: Slot, flags: list) -> RunRecord:
        """The remote run's record, with its log and outputs where a local run would have left them."""
        out = spec.directory / "out"
        out.mkdir(parents=True, exist_ok=True)
        log = spec.directory / "log.txt"
        with open(log, "a") as handle:
            handle.write(f"[autoresearch] ran on ray node {result['node']}\n{result['log']}")
        for name, content in result["out"].items():
            (out / name).write_bytes(content)
        record = result["record"]
        return dataclasses.replace(record, log_path=str(log), slot=slot.name, flags=(*flags, *record.flags))

    def _shipped_data(self, data: Path) -> tuple[str, object]:
        """The prepared data as a tar in the object store, once per session (keyed by the files' sizes and times)."""
        files = sorted(p for p in data.rglob("*") if p.is_file()) if data.is_dir() else []
        stamp = hashlib.sha256(repr([(str(p.relative_to(data)), p.stat().st_size, p.stat().st_mtime_ns)
                                     for p in files]).encode()).hexdigest()[:16]
        with self._shipping:  # runs start from several threads at once (slots.py): the data is put once
            if self._data.get(str(data), (None,))[0] != stamp:
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w") as tar:
                    for path in files:
                        tar.add(path, arcname=str(path.relative_to(data)))
                self._data[str(data)] = (stamp, self.ray.put(buffer.getvalue()))
            return self._data[str(data)]


# ---------------------------------------------------------------------------- on the worker

_NODE_CACHE = Path(tempfile.gettempdir()) / "autoresearch-ray-data"


def _remote_run(payload: dict, data: bytes) -> dict:
    """One run on a Ray worker: the commit in a scratch repository, the data beside it, the local runner."""
    from .gitrepo import Git
    from .runner import Runner
    from .target import Target

    scratch = Path(tempfile.mkdtemp(prefix="autoresearch-run-"))
    try:
        root = scratch / payload["root_name"]
        root.mkdir()
        _extract(payload["archive"], root)
        git = Git.init(root)
        commit = git.commit_all("the experiment's commit, shipped by autoresearch")
        _unpack_data(payload["data_digest"], data, root / ".autoresearch" / "data")
        target = Target(root, payload["config"])
        git.exclude("/.autoresearch/")
        slot = payload["slot"]
        worktree = git.add_worktree(target.worktrees / slot.name, commit)
        spec = dataclasses.replace(payload["spec"], worktree=worktree.root, commit=commit,
                                   directory=target.runs / "run")
        local = Slot(slot.name, slot.device, slot.threads,
                     visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES") if slot.device == "cuda" else None)
        executor = LocalExecutor(slot.device)
        try:
            record = Runner(target, executor, payload["protected"]).run(spec, local)
        finally:
            executor.close()
        log = spec.directory / "log.txt"
        out, size = {}, 0
        for path in sorted((spec.directory / "out").glob("*")):
            if path.is_file() and path.suffix != ".pt" and size + path.stat().st_size <= OUT_FILE_LIMIT:
                out[path.name] = path.read_bytes()
                size += path.stat().st_size
        return {"record": record, "log": log.read_text(errors="replace") if log.exists() else "", "out": out,
                "node": socket.gethostname()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack_data(digest: str, data: bytes, dest: Path) -> None:
    """The session's data, unpacked once per node, then hard-linked (or copied) into the run's target."""
    cache = _NODE_CACHE / digest
    if not cache.is_dir():
        partial = Path(tempfile.mkdtemp(prefix=f"{digest}-", dir=_make(_NODE_CACHE)))
        _extract(data, partial)
        try:
            partial.rename(cache)
        except OSError:  # another task on this node got there first
            shutil.rmtree(partial, ignore_errors=True)

    def link(source, target):
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(cache, dest, copy_function=link)


def _extract(archive: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: no links out, no absolute paths
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover
            tar.extractall(dest)


def _make(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
