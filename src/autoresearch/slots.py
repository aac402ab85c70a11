"""A session's slots, each with its worktree (`.autoresearch/worktrees/<slot>`), lent one at a time: to an experiment
for its whole life, or to single runs (a new tag's calibration of the baseline, a re-calibration, a verification,
the held-out test) so that whatever needs several runs uses every slot that is free, not only the first.

    with session.slots.take() as (worktree, slot):            # one slot, waiting for one to be free
        ...
    runs = session.slots.map(jobs, held=(worktree, slot))     # jobs at once: the held slot and every free one
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, TypeVar

from .executor import Executor, Slot
from .gitrepo import Git

T = TypeVar("T")
Lease = tuple[Git, Slot]


class Slots:
    def __init__(self, git: Git, executor: Executor, worktrees, start: Callable[[], str]):
        """`worktrees`: the directory of the slots' worktrees; `start()`: the commit a new worktree is made at."""
        self.git, self.executor, self.worktrees, self.start = git, executor, worktrees, start
        self.all = executor.slots()
        self.free = list(self.all)
        self.made: dict[str, Git] = {}
        self.cond = threading.Condition()
        self.making = threading.Lock()  # one `git worktree add` at a time

    def __len__(self) -> int:
        return len(self.all)

    def worktree(self, slot: Slot) -> Git:
        """The slot's worktree, made (or reset to the best commit) on first use in this session."""
        with self.making:
            if slot.name not in self.made:
                self.made[slot.name] = self.git.add_worktree(self.worktrees / slot.name, self.start())
            return self.made[slot.name]

    @contextmanager
    def take(self) -> Iterator[Lease]:
        """A free slot (waiting for one) and its worktree, given back when the block ends."""
        with self.cond:
            while not self.free:
                self.cond.wait()
            slot = self.free.pop(0)
        try:
            yield self.worktree(slot), slot
        finally:
            self._give_back(slot)

    def _try_take(self) -> Optional[Slot]:
        with self.cond:
            return self.free.pop(0) if self.free else None

    def _give_back(self, slot: Slot) -> None:
        with self.cond:
            self.free.append(slot)
            self.free.sort(key=self.all.index)
            self.cond.notify_all()

    def map(self, jobs: Sequence[Callable[[Git, Slot], T]], held: Optional[Lease] = None) -> list[T]:
        """Each job called with a slot's worktree and the slot, at once on `held` (the caller's own, or one taken
        for the purpose) and on every slot free now; the results in the jobs' order. An exception in one job stops
        the others' runs (the executor is interrupted) and is raised here once they are done."""
        if not jobs:
            return []
        if held is None:
            with self.take() as lease:
                return self.map(jobs, lease)
        results: list = [None] * len(jobs)
        failed: list[BaseException] = []
        order = iter(range(len(jobs)))
        lock = threading.Lock()

        def work(lease: Lease) -> None:
            while not failed:
                with lock:
                    index = next(order, None)
                if index is None:
                    return
                try:
                    results[index] = jobs[index](*lease)
                except BaseException as exc:
                    failed.append(exc)
                    self.executor.interrupt()

        def helper(slot: Slot) -> None:
            try:
                work((self.worktree(slot), slot))
            except BaseException as exc:  # making its worktree failed
                failed.append(exc)
            finally:
                self._give_back(slot)

        helpers = []
        while len(helpers) + 1 < len(jobs) and (slot := self._try_take()) is not None:
            helpers.append(threading.Thread(target=helper, args=(slot,), daemon=True, name=f"autoresearch-{slot.name}"))
            helpers[-1].start()
        try:
            work(held)
        except BaseException as exc:  # Ctrl-C between two jobs
            failed.append(exc)
            self.executor.interrupt()
        for thread in helpers:
            thread.join()
        if failed:
            raise failed[0]
        return results
