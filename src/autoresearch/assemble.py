"""One place that assembles a session: the target, the agent (autoresearch.toml's [agent] with the command line's
overrides), the executor and its slots, the limits. The CLI, the demo and the benchmarks all start sessions here.

    with assemble.opened(target, agent, "search", assemble.executor("local", "cpu")) as session:
        scheduler.run(session, experiments=4)
"""

from __future__ import annotations

import signal
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Iterator, Optional

from . import agents, sandbox, scheduler
from .agents import Agent
from .budget import Budget
from .config import AgentSection, LimitsSection
from .executor import Executor, LocalExecutor
from .ledger import Ledger
from .errors import SessionError, UsageError
from .session import Session
from .target import Target


def agent_settings(target: Target, overrides: dict, options: dict) -> tuple[AgentSection, dict]:
    """`[agent]` from autoresearch.toml with the command line's overrides; the options it does not know."""
    from pydantic import ValidationError

    known = {key: value for key, value in options.items() if key in AgentSection.model_fields}
    changes = {**known, **{key: value for key, value in overrides.items() if value is not None}}
    section = target.config.agent
    try:
        settings = AgentSection.model_validate({**section.model_dump(), **changes}) if changes else section
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise UsageError(f"agent settings from the command line: {problems}") from None
    return settings, {key: value for key, value in options.items() if key not in known}


def agent(target: Target, name: str, options: Optional[dict] = None, overrides: Optional[dict] = None) -> Agent:
    """The agent `name` with its settings ([agent], then `overrides` such as model and base_url) and `options`."""
    settings, rest = agent_settings(target, overrides or {}, options or {})
    try:
        return agents.create(name, settings=settings, **rest)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"agent {name}: {exc}") from None


def limits(target: Target, given: Optional[dict] = None) -> LimitsSection:
    """[limits] from autoresearch.toml with the command line's (max_cost, max_tokens, max_hours) winning."""
    given = {key: value for key, value in (given or {}).items() if value is not None}
    for key, value in given.items():
        if value <= 0:
            raise UsageError(f"--{key.replace('_', '-')} must be more than 0")
    return LimitsSection.model_validate({**target.config.limits.model_dump(), **given})


def executor(name: str = "local", device: str = "auto", slots: Optional[int] = None,
             address: Optional[str] = None) -> Executor:
    """The executor `name` (local, ray) with `slots` slots (None: one per visible GPU, else one)."""
    if slots is not None and slots < 1:
        raise UsageError("--slots must be 1 or more")
    if name == "local":
        if address:
            raise UsageError("--address is for --executor ray")
        return LocalExecutor(device, slots)
    if name == "ray":
        from .ray_executor import RayExecutor, RayUnavailable

        try:
            return RayExecutor(device=device, slots=slots, address=address)
        except RayUnavailable as exc:
            raise UsageError(str(exc)) from None
    raise UsageError(f"unknown executor {name!r}; available: local, ray")


def stop_on_sigterm() -> None:
    """SIGTERM (a cluster scheduler, `kill`) stops the session as cleanly as Ctrl-C does."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


@contextmanager
def opened(target: Target, agent: Optional[Agent], agent_name: str, executor: Executor, *, tag: Optional[str] = None,
           budget: Optional[Budget] = None, limits: Optional[LimitsSection] = None,
           say: Callable[[str], None] = print) -> Iterator[Session]:
    """An open session on `target` (its lock held); the session and the executor are closed when the block ends."""
    try:
        try:
            sandbox.check(target.config.sandbox.isolate)  # once, before anything runs: refuse, or say what is not
        except sandbox.SandboxError as exc:              # isolated here
            raise SessionError(str(exc)) from None
        session = Session.open(target, agent, agent_name, executor, tag=tag, budget=budget, say=say, limits=limits)
    except BaseException:
        executor.close()
        raise
    try:
        yield session
    finally:
        session.close()
        executor.close()


def run(target: Target, agent_name: str, *, agent_options: Optional[dict] = None, overrides: Optional[dict] = None,
        caps: Optional[dict] = None, experiments: Optional[int] = None, budget: Optional[Budget] = None,
        tag: Optional[str] = None, device: Optional[str] = None, slots: Optional[int] = None,
        pipeline: Optional[bool] = None, executor_name: str = "local", address: Optional[str] = None,
        say: Callable[[str], None] = print,
        watch: Optional[Callable[[Session], ContextManager]] = None) -> str:
    """`autoresearch run`: assemble the session, run it, and return why it ended. `watch(session)` is held open
    while it runs (the CLI's live view)."""
    chosen = agent(target, agent_name, agent_options, overrides)
    caps_ = limits(target, caps)
    runner = executor(executor_name, device or target.config.run.device, slots, address)
    stop_on_sigterm()
    with opened(target, chosen, agent_name, runner, tag=tag, budget=budget, limits=caps_, say=say) as session:
        where = runner.slots()
        shown = f"slot {where[0].name}" if len(where) == 1 else f"{len(where)} slots"
        say(f"session {session.session_id} on {session.branch}: agent {agent_name}, budget {session.budget}, "
            f"{shown}" + (f" ({runner.name})" if runner.name != "local" else ""))
        with watch(session) if watch else nullcontext():
            return scheduler.run(session, experiments, pipeline=pipeline)


@contextmanager
def harness_session(target: Target, purpose: str, tag: Optional[str] = None, budget: Optional[Budget] = None,
                    device: Optional[str] = None, slots: Optional[int] = None,
                    say: Callable[[str], None] = print) -> Iterator[Session]:
    """A session on an existing tag for a harness job (calibrate, verify): no agent. Its end is recorded in
    the ledger however the job ends."""
    if tag is None and _latest_tag(target) is None:
        raise UsageError(f"nothing to {purpose}: no research yet (`autoresearch run` starts with the baseline)")
    stop_on_sigterm()
    with opened(target, None, purpose, executor("local", device or target.config.run.device, slots), tag=tag,
                budget=budget, say=say) as session:
        reason = f"{purpose}: done"
        try:
            yield session
        except KeyboardInterrupt:
            reason = "stopped by the user"
            raise
        except BaseException as exc:
            reason = f"{purpose} failed: {exc}"
            raise
        finally:
            session.ledger.end_session(session.session_id, reason)


def _latest_tag(target: Target) -> Optional[str]:
    if not target.ledger_path.exists():
        return None
    ledger = Ledger(target.ledger_path)
    try:
        return ledger.latest_tag()
    finally:
        ledger.close()
