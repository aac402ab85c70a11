"""What the LLM agents share: the prompt, the tools, and the bookkeeping of one proposal.

The model never touches the disk. Its tools work on a `Workbench`, an in-memory copy of the
editable files at the parent commit: `replace` applies exactly once or fails with a message the
model reads, and refuses any path that is not editable. The edited files become the proposal's
writes, so the harness checks the real worktree afterwards as it does for any agent.

Each proposal starts from a fresh conversation: the system prompt, the program and the current
best code (a stable prefix that prompt caching can reuse) and the research memory
(autoresearch.memory), which the ledger rebuilds every time.
"""

from __future__ import annotations

import posixpath
import time
from typing import Optional

from .. import memory, pyast, scope
from ..config import AgentSection
from ..costs import Usage
from . import Agent, AgentError, Context, Proposal, ProposalError

HYPOTHESIS_CHARS = 200

SYSTEM_PROMPT = f"""\
You are a machine-learning researcher in an automated research loop. Each time you are called you \
propose ONE experiment: a change to the editable files of a training repository. A harness you \
cannot influence commits your change on top of the best code so far, trains under a fixed budget, \
measures the metric with a trusted evaluator, and keeps the change only if the metric improves \
beyond noise. Every experiment, kept or not, is recorded in the research memory you are shown.

How to work:
- Read the program (the human's instructions), the current code and the research memory first.
- Make one coherent change that tests one idea: architecture, optimizer, schedule, data handling, \
hyperparameters. Prefer ideas with a real chance of improving the metric within the budget.
- Do not repeat an earlier experiment; build on what was kept, learn from what was discarded and \
from what crashed.
- Use the tools: read_file, list_files, replace (an exact, unique string in an editable file), \
view_memory. When your change is complete, call finish with a one-line hypothesis: what you changed \
and why it should help.

Rules, enforced by the harness (breaking one wastes the experiment): edit only the editable files; \
leave every Python file parseable; do not add dependencies; never touch evaluation, data or \
configuration files; never try to game the metric or the budget.

{memory.UNTRUSTED_NOTE}
"""

TASK = ("Propose the next experiment now: inspect what you need, make your change with replace, then call "
        "finish(hypothesis).")

TOOLS: list[dict] = [
    {"name": "read_file",
     "description": "Read an editable file as it is now, with your edits so far.",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
    {"name": "list_files",
     "description": "List the editable files with their sizes, marking the ones you have changed.",
     "parameters": {"type": "object", "properties": {}}},
    {"name": "replace",
     "description": ("Replace the one exact occurrence of `old` with `new` in an editable file (whitespace "
                     "counts). Fails and changes nothing when `old` occurs zero or several times: then include "
                     "more surrounding lines. With old = \"\" and a path that does not exist yet, creates that "
                     "file if it is editable."),
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "old": {"type": "string"},
                                                     "new": {"type": "string"}},
                    "required": ["path", "old", "new"]}},
    {"name": "view_memory",
     "description": ("With `experiment` (an index): that past experiment in detail, its diff, runs and log "
                     "tail. Without: the research memory again (it is already in your first message)."),
     "parameters": {"type": "object", "properties": {"experiment": {"type": "integer"}}}},
    {"name": "finish",
     "description": ("Submit your change for a training run, with a one-line hypothesis. Refused, with the "
                     "reason, when nothing changed, a Python file does not parse, or the change repeats an "
                     "earlier experiment."),
     "parameters": {"type": "object", "properties": {"hypothesis": {"type": "string"}},
                    "required": ["hypothesis"]}},
]


# ---------------------------------------------------------------------------- the prompt


def program_text(context: Context) -> str:
    return f"## The program (the human's instructions)\n\n{context.program.strip()}\n"


def files_text(context: Context) -> str:
    editable = ", ".join(context.config.files.editable)
    parts = [f"## The editable files at the best commit (experiment #{context.parent.index})\n",
             f"Editable: {editable}. Everything else is read-only to you.\n"]
    for path in sorted(context.files):
        parts.append(f"### {path}\n```\n{context.files[path]}\n```\n")
    return "\n".join(parts)


def suggestions_text(context: Context) -> str:
    """The human's suggestions queued for this proposal (`autoresearch suggest`), or nothing."""
    if not context.suggestions:
        return ""
    ideas = "\n".join(f"- {' '.join(s.text.split())}" for s in context.suggestions)
    return ("## A suggestion from the human, for this proposal\n\n"
            "The human running this research asks you to consider this idea now. Test it with this proposal if the "
            "editable files allow it (otherwise make the change closest to it), and say in your hypothesis how "
            f"you followed it.\n\n{ideas}\n\n")


def memory_text(context: Context, settings: AgentSection) -> str:
    text = suggestions_text(context) + "## Research memory\n\n" + memory.build(
        context.history, metric=context.config.metric.name, minimize=context.config.minimize,
        min_effect=context.config.judge.min_effect, budget=settings.memory_chars, recent=settings.memory_experiments)
    running = [e for e in context.history if not e.state.final]
    if running or context.pending:  # several slots: propose something else than what is already on its way
        lines = [f"- #{e.index} (running): {one_line(e.description)}" for e in running]
        lines += [f"- (waiting for a slot): {one_line(p.description)}" for p in context.pending]
        text += ("\n\n## In flight now\n\nThese changes are being tried at this moment; propose a different "
                 "idea, not one of these again:\n" + "\n".join(lines[:40]))
    return text


def one_line(text: str, limit: int = HYPOTHESIS_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------- the workbench


class Workbench:
    """The editable files in memory, and the tools that read and change them."""

    def __init__(self, context: Context, settings: AgentSection):
        self.context = context
        self.settings = settings
        self.original = dict(context.files)
        self.files = dict(context.files)
        self.hypothesis: Optional[str] = None  # set by an accepted finish
        self.usage = Usage(cost_usd=0.0)
        self.turns = 0
        self._warned: set[int] = set()

    def spend(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def writes(self) -> dict[str, Optional[str]]:
        """Changed and new files with their contents; deleted ones with None."""
        changed = {path: text for path, text in self.files.items() if text != self.original.get(path)}
        return {**changed, **{path: None for path in self.original if path not in self.files}}

    def call(self, name: str, arguments) -> tuple[str, bool]:
        """Run one tool: (what the model reads, whether it is an error)."""
        if self.hypothesis is not None:
            return "ignored: you already finished", True
        handler = getattr(self, f"tool_{name}", None)
        if name not in {t["name"] for t in TOOLS} or handler is None:
            return f"unknown tool {name!r}; the tools are {', '.join(t['name'] for t in TOOLS)}", True
        if not isinstance(arguments, dict):
            return "the arguments must be a JSON object", True
        try:
            return handler(**arguments)
        except TypeError as exc:
            return f"bad arguments for {name}: {exc}", True

    # ---------------------------------------------------------------- the tools

    def tool_read_file(self, path: str = "", **_) -> tuple[str, bool]:
        path, problem = self._path(path, writing=False)
        if problem:
            return problem, True
        if path not in self.files:
            return f"no file {path}; the editable files are: {', '.join(sorted(self.files))}", True
        return self.files[path], False

    def tool_list_files(self, **_) -> tuple[str, bool]:
        lines = [f"{path}  {len(text.splitlines())} lines" + ("  (changed)" if text != self.original.get(path) else "")
                 for path, text in sorted(self.files.items())]
        return "\n".join(lines) or "no editable files", False

    def tool_replace(self, path: str = "", old: str = "", new: str = "", **_) -> tuple[str, bool]:
        path, problem = self._path(path, writing=True)
        if problem:
            return problem, True
        if not isinstance(old, str) or not isinstance(new, str):
            return "old and new must be strings", True
        text = self.files.get(path)
        if text is None:
            if old:
                return (f"no file {path}; to create a new editable file call replace with old = \"\" "
                        f"(the files are: {', '.join(sorted(self.files))})"), True
            self.files[path] = new
            return f"created {path} ({len(new.splitlines())} lines)", False
        if not old:
            return f"old is empty; to edit {path}, give the exact text to replace", True
        count = text.count(old)
        if count != 1:
            hint = "" if count else self._closest(text, old)
            where = "was not found" if count == 0 else f"occurs {count} times"
            return (f"replace failed, nothing changed: the old text {where} in {path}; it must occur exactly "
                    f"once, whitespace included{hint}"), True
        self.files[path] = text.replace(old, new, 1)
        line = text[:text.index(old)].count("\n") + 1
        return (f"replaced in {path} at line {line} (-{len(old.splitlines())} +{len(new.splitlines())} lines)"), False

    def tool_view_memory(self, experiment: Optional[int] = None, **_) -> tuple[str, bool]:
        if experiment is None:
            return memory_text(self.context, self.settings), False
        try:
            index = int(experiment)
        except (TypeError, ValueError):
            return "experiment must be an experiment index (an integer)", True
        return memory.experiment_detail(self.context.history, index, minimize=self.context.config.minimize), False

    def tool_finish(self, hypothesis: str = "", **_) -> tuple[str, bool]:
        hypothesis = one_line(hypothesis or "")
        if not hypothesis:
            return "give a one-line hypothesis: what you changed and why it should improve the metric", True
        writes = self.writes()
        if not writes:
            return "nothing changed yet: make your change with replace, then finish", True
        for path, text in writes.items():
            if path.endswith(".py") and text is not None:
                try:
                    pyast.parse(text, filename=path)
                except SyntaxError as exc:
                    return f"{path} does not parse: {exc.msg} (line {exc.lineno}); fix it, then finish", True
        history = self.context.history
        same = memory.duplicate_change(memory.unified_diff(self.original, writes), history)
        if same is not None:
            return (f"refused: this change repeats experiment #{same.index} ({same.state.value}: "
                    f"{one_line(same.description, 100)}), which was already tested. Propose something different."), True
        like = memory.similar_hypothesis(hypothesis, history)
        if like is not None and like.index not in self._warned:
            self._warned.add(like.index)
            return (f"not yet accepted: your hypothesis reads like experiment #{like.index} ({like.state.value}: "
                    f"{one_line(like.description, 100)}). If your change is genuinely different, call finish "
                    "again; otherwise try another idea."), True
        self.hypothesis = hypothesis
        return "accepted: the harness will now run your experiment", False

    # ---------------------------------------------------------------- helpers

    def _path(self, path, writing: bool) -> tuple[str, Optional[str]]:
        if not isinstance(path, str) or not path.strip():
            return "", "give a path relative to the repository root, e.g. " + next(iter(sorted(self.files)), "train.py")
        clean = posixpath.normpath(path.strip().removeprefix("./"))
        if clean.startswith(("/", "..")) or ".git" in clean.split("/"):
            return clean, f"refused: {path!r} is not a path inside the repository"
        config = self.context.config
        if scope.is_protected(clean, config):
            return clean, f"refused: {clean} is protected; you may {'edit' if writing else 'read'} only the editable files ({', '.join(config.files.editable)})"
        if not scope.matches(clean, config.files.editable):
            return clean, f"refused: {clean} is not an editable file; the editable files are {', '.join(config.files.editable)}"
        return clean, None

    @staticmethod
    def _closest(text: str, old: str) -> str:
        """A hint for a failed replace: the line of the file most like the first line of `old`."""
        from difflib import SequenceMatcher

        first = next((line.strip() for line in old.splitlines() if line.strip()), "")
        lines = [line for line in text.splitlines() if line.strip()]
        if not first or not lines:
            return ". read_file shows the current text"

        def likeness(line: str) -> float:
            return SequenceMatcher(None, first, line.strip()[:len(first)]).ratio()

        best = max(lines, key=likeness)
        return f". The closest line in the file is: {best!r}" if likeness(best) >= 0.6 else \
            ". read_file shows the current text"


# ---------------------------------------------------------------------------- the agent


def settings_from(settings: Optional[AgentSection], options: dict) -> tuple[AgentSection, dict]:
    """`[agent]` settings with the `--agent-option KEY=VALUE` overrides that name its keys; the other options."""
    base = settings or AgentSection()
    known = {key: value for key, value in options.items() if key in AgentSection.model_fields}
    rest = {key: value for key, value in options.items() if key not in known}
    if known:
        base = AgentSection.model_validate({**base.model_dump(), **known})
    return base, rest


class LLMAgent(Agent):
    """An agent that converses with a model over the workbench's tools. Backends implement `converse`."""

    default_model: Optional[str] = None

    def __init__(self, settings: Optional[AgentSection] = None, **options):
        self.settings, rest = settings_from(settings, options)
        super().__init__(**rest)
        self.model = self.settings.model or self.default_model
        if not self.model:
            raise ValueError(f"the {self.name} agent needs a model: --model NAME, or model in [agent] of autoresearch.toml")

    def converse(self, bench: Workbench) -> None:
        """Talk with the model until it finishes (bench.hypothesis set) or the turns run out."""
        raise NotImplementedError

    def explain(self, exc: Exception) -> Optional[str]:
        """A one-line account of a provider error, or None for errors that are not the provider's."""
        return None

    def propose(self, context: Context) -> Proposal:
        bench = Workbench(context, self.settings)
        started = time.monotonic()
        try:
            self.converse(bench)
        except (AgentError, ProposalError) as exc:
            exc.usage = bench.usage
            raise
        except Exception as exc:
            account = self.explain(exc)
            if account is None:
                raise AgentError(f"{type(exc).__name__}: {exc}", usage=bench.usage) from exc
            raise AgentError(account, usage=bench.usage) from exc
        if bench.hypothesis is None:
            raise AgentError(f"the model did not finish within {self.settings.max_turns} tool turns"
                             + (" (its edits are dropped)" if bench.writes() else ""), usage=bench.usage)
        return Proposal(bench.hypothesis, bench.writes(),
                        meta={"usage": bench.usage, "agent": self.name, "turns": bench.turns,
                              "seconds": time.monotonic() - started,
                              "suggestions": [suggestion.id for suggestion in context.suggestions]})


def status_account(exc: Exception, provider: str, retries: int, base_url: Optional[str]) -> Optional[str]:
    """What went wrong with a request to an API built like Anthropic's and OpenAI's SDKs (status_code, message)."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    detail = body.get("error", body) if isinstance(body, dict) else None
    detail = detail.get("message") if isinstance(detail, dict) else None
    message = one_line(detail or getattr(exc, "message", None) or str(exc), 300)
    if status == 401:
        return f"{provider} refused the API key (401): {message}"
    if status == 429:
        return f"{provider} rate limit (429), after up to {retries} retries: {message}"
    if isinstance(status, int) and status >= 500:
        return f"{provider} server error ({status}), after up to {retries} retries: {message}"
    if isinstance(status, int):
        return f"{provider} rejected the request ({status}): {message}"
    if "Connection" in type(exc).__name__ or "Timeout" in type(exc).__name__:
        return f"cannot reach {provider} at {base_url or 'its default address'} after {retries} retries: {message}"
    return None
