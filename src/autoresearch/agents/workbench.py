"""The LLM agents' tools, over a `Workbench`: an in-memory copy of the editable files at the parent commit.

The model never touches the disk. `replace` applies exactly once or fails with a message the model
reads, and refuses any path that is not editable; `read_file` also reads the protected files
(read-only: the code the editable files depend on, `Context.read_only`). `check` hands the edited
files to the harness, which runs them for a few steps (trial.py) and returns "ok" with what the run
printed, or the error; `note` stores a line for later proposals in the ledger. Every call is checked
against the tool's schema first: a missing or mistyped argument is an error the model reads, never a
default (a `replace` without its `new` text must not delete the match). The edited files become the
proposal's writes, so the harness checks the real worktree afterwards as it does for any agent.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from typing import Optional

from .. import memory, pyast, scope
from ..config import AgentSection
from ..costs import Usage
from . import Context
from .prompt import memory_text, one_line

MAX_CHECKS = 3  # check runs per proposal: each takes 5-30 s of this machine
MAX_NOTES = 2  # notes per proposal

_READ = {"name": "read_file",
         "description": ("Read a file: an editable one as it is now (your edits included), or a protected one "
                         "(read-only: the code the editable files use). An editable file you have not changed is "
                         "already in your first message (in full, unless it says otherwise): ask for it again only "
                         "by lines. With start and end (line numbers, from 1, inclusive): only those lines."),
         "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "start": {"type": "integer"},
                                                         "end": {"type": "integer"}},
                        "required": ["path"]}}
_LIST = {"name": "list_files",
         "description": "List the editable files (marking the ones you changed) and the read-only ones, with sizes.",
         "parameters": {"type": "object", "properties": {}}}
_REPLACE = {"name": "replace",
            "description": ("Replace the one exact occurrence of `old` with `new` in an editable file (whitespace "
                            "counts). Fails and changes nothing when `old` occurs zero or several times: then include "
                            "more surrounding lines. With old = \"\" and a path that does not exist yet, creates that "
                            "file if it is editable. To delete text, give new = \"\"."),
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "old": {"type": "string"},
                                                            "new": {"type": "string"}},
                           "required": ["path", "old", "new"]}}
_MEMORY = {"name": "view_memory",
           "description": ("With `experiment` (an index): that past experiment in detail: its diff, its runs' "
                           "figures and loss curves, and a failed run's log tail. Without: the research memory again "
                           "(it is already in your first message)."),
           "parameters": {"type": "object", "properties": {"experiment": {"type": "integer"}}}}
_CHECK = {"name": "check",
          "description": (f"Try your edited code before you finish: the harness runs the training command on the "
                          f"files as you edited them for 4 optimizer steps (or a few thousand tokens), on the CPU "
                          f"unless configured otherwise ({MAX_CHECKS} checks per proposal, 5-30 s each). Returns ok "
                          "with what the run printed (parameter count, throughput) or the error and its traceback. "
                          "Nothing is recorded but its cost."),
          "parameters": {"type": "object", "properties": {}}}
_NOTE = {"name": "note",
         "description": (f"Write a note for your later proposals (at most 600 characters, {MAX_NOTES} per proposal): "
                         "an observation, a plan, an idea to try next. It is stored in the research ledger and shown "
                         "in the research memory of every later proposal."),
         "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}
_FINISH = {"name": "finish",
           "description": ("Submit your change for a training run, with a one-line hypothesis. Refused, with the "
                           "reason, when nothing changed, a Python file does not parse, or the change repeats an "
                           "earlier experiment."),
           "parameters": {"type": "object", "properties": {"hypothesis": {"type": "string"}},
                          "required": ["hypothesis"]}}
ALL_TOOLS = (_READ, _LIST, _REPLACE, _MEMORY, _CHECK, _NOTE, _FINISH)


class Workbench:
    """The editable files in memory, and the tools that read and change them."""

    def __init__(self, context: Context, settings: AgentSection):
        self.context = context
        self.settings = settings
        self.original = dict(context.files)
        self.files = dict(context.files)
        self.shown: set[str] = set()  # editable files the first message carried in full (not sent again unchanged)
        self.memory_chars = settings.memory_chars  # the memory's budget in this conversation (view_memory)
        self.output_chars: Optional[int] = None  # the most one tool output may bring in (a small context window)
        self.hypothesis: Optional[str] = None  # set by an accepted finish
        self.usage = Usage(cost_usd=0.0)
        self.turns = 0
        self.checks = self.notes = 0
        self.problems: Counter = Counter()  # what went wrong with the model's calls and answers, by kind
        self._warned: set[int] = set()

    @property
    def tools(self) -> list[dict]:
        """The tools this proposal offers: check and note where the harness provides them."""
        absent = set()
        if self.context.check is None or self.settings.check == "off":
            absent.add("check")
        if self.context.note is None:
            absent.add("note")
        return [tool for tool in ALL_TOOLS if tool["name"] not in absent]

    def spend(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def writes(self) -> dict[str, Optional[str]]:
        """Changed and new files with their contents; deleted ones with None."""
        changed = {path: text for path, text in self.files.items() if text != self.original.get(path)}
        return {**changed, **{path: None for path in self.original if path not in self.files}}

    def problem(self, kind: str, text: str) -> tuple[str, bool]:
        """An error the model reads, counted by kind for the record of a proposal that fails."""
        self.problems[kind] += 1
        return text, True

    def call(self, name: str, arguments) -> tuple[str, bool]:
        """Run one tool: (what the model reads, whether it is an error)."""
        if self.hypothesis is not None:
            return "ignored: you already finished", True
        tools = {tool["name"]: tool for tool in self.tools}
        if name not in tools:
            return self.problem("unknown tool", f"unknown tool {name!r}; the tools are {', '.join(tools)}")
        if not isinstance(arguments, dict):
            return self.problem("bad arguments", "the arguments must be a JSON object")
        arguments, wrong = _validated(tools[name], arguments)
        if wrong:
            return self.problem("bad arguments", f"{name} was not run: {wrong}")
        text, error = getattr(self, f"tool_{name}")(**arguments)
        if self.output_chars is not None and len(text) > self.output_chars:
            text = (text[:self.output_chars] + f"\n[... {len(text) - self.output_chars:,} more characters cut to fit "
                    "the model's context window: read fewer lines at a time]")
        return text, error

    # ---------------------------------------------------------------- the tools

    def tool_read_file(self, path: str, start: Optional[int] = None, end: Optional[int] = None) -> tuple[str, bool]:
        path, problem = self._path(path, writing=False)
        if problem:
            return self.problem("refused path", problem)
        text = self.files.get(path, self.context.read_only.get(path))
        if text is None:
            return self.problem("no such file", f"no file {path}; the files are: {', '.join(self._listed())}")
        if start is None and end is None:
            if path in self.shown and text == self.original.get(path):
                return (f"{path} is unchanged since your first message, which has it in full "
                        f"({len(text.splitlines())} lines); give start and end to read lines of it"), False
            return text, False
        lines = text.splitlines(keepends=True)
        first, last = max(1, start or 1), min(len(lines), end or len(lines))
        if first > last:
            return self.problem("bad arguments", f"{path} has {len(lines)} lines; lines {first}-{last} are none of them")
        return f"{path}, lines {first}-{last} of {len(lines)}:\n" + "".join(lines[first - 1:last]), False

    def tool_list_files(self) -> tuple[str, bool]:
        lines = [f"{path}  {len(text.splitlines())} lines" + ("  (changed)" if text != self.original.get(path) else "")
                 for path, text in sorted(self.files.items())]
        lines += [f"{path}  {len(text.splitlines())} lines  (read-only)"
                  for path, text in sorted(self.context.read_only.items()) if path not in self.files]
        return "\n".join(lines) or "no files", False

    def tool_replace(self, path: str, old: str, new: str) -> tuple[str, bool]:
        path, problem = self._path(path, writing=True)
        if problem:
            return self.problem("refused path", problem)
        text = self.files.get(path)
        if text is None:
            if old:
                return self.problem("no such file", f"no file {path}; to create a new editable file call replace "
                                    f"with old = \"\" (the files are: {', '.join(sorted(self.files))})")
            self.files[path] = new
            return f"created {path} ({len(new.splitlines())} lines)", False
        if not old:
            return self.problem("empty old", f"old is empty; to edit {path}, give the exact text to replace")
        count = text.count(old)
        if count != 1:
            hint = "" if count else self._closest(text, old)
            where = "was not found" if count == 0 else f"occurs {count} times"
            return self.problem("old text not found" if count == 0 else "old text not unique",
                                f"replace failed, nothing changed: the old text {where} in {path}; it must occur "
                                f"exactly once, whitespace included{hint}")
        self.files[path] = text.replace(old, new, 1)
        line = text[:text.index(old)].count("\n") + 1
        return (f"replaced in {path} at line {line} (-{len(old.splitlines())} +{len(new.splitlines())} lines)"), False

    def tool_view_memory(self, experiment: Optional[int] = None) -> tuple[str, bool]:
        if experiment is None:
            return memory_text(self.context, self.settings, self.memory_chars), False
        config = self.context.config
        return memory.experiment_detail(self.context.history, experiment, minimize=config.minimize,
                                        metric=config.metric.name), False

    def tool_check(self) -> tuple[str, bool]:
        if self.checks >= MAX_CHECKS:
            return self.problem("too many checks", f"refused: you have used the {MAX_CHECKS} checks of this proposal")
        writes = self.writes()
        for path, text in writes.items():
            problem = _parse_problem(path, text)
            if problem:
                return self.problem("does not parse", f"not run: {problem}")
        self.checks += 1
        try:
            result = self.context.check(writes, self.settings.check)
        except Exception as exc:  # the harness's side failed (git, the disk): the model may go on without it
            return self.problem("check failed", f"the check could not run: {type(exc).__name__}: {exc}")
        self.spend(Usage(checks=1, check_seconds=result.seconds))
        where = f"{result.budget} on {result.device}, {result.seconds:.1f}s in all"
        if result.ok:
            printed = ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                                for key, value in result.figures.items())
            return f"ok ({where}): the run printed {printed or 'no figures'}", False
        tail = memory.fence(result.log_tail, "check log tail", 2500, keep="tail") if result.log_tail.strip() else ""
        return self.problem("check failed", f"the check failed ({where}): {result.reason}\n{tail}".rstrip())

    def tool_note(self, text: str) -> tuple[str, bool]:
        text = " ".join(text.split())
        if not text:
            return self.problem("bad arguments", "the note is empty")
        if self.notes >= MAX_NOTES:
            return self.problem("too many notes", f"refused: you have written the {MAX_NOTES} notes of this proposal")
        self.notes += 1
        note = self.context.note(text)
        return f"noted (after experiment #{getattr(note, 'after', '?')}); later proposals will see it", False

    def tool_finish(self, hypothesis: str) -> tuple[str, bool]:
        hypothesis = one_line(hypothesis or "")
        if not hypothesis:
            return self.problem("no hypothesis",
                                "give a one-line hypothesis: what you changed and why it should improve the metric")
        writes = self.writes()
        if not writes:
            return self.problem("no change", "nothing changed yet: make your change with replace, then finish")
        for path, text in writes.items():
            problem = _parse_problem(path, text)
            if problem:
                return self.problem("does not parse", f"{problem}; fix it, then finish")
        history = self.context.history
        same = memory.duplicate_change(memory.unified_diff(self.original, writes), history)
        if same is not None:
            return self.problem("repeats an experiment", (
                f"refused: this change repeats experiment #{same.index} ({same.state.value}: "
                f"{one_line(same.description, 100)}), which was already tested. Propose something different."))
        like = memory.similar_hypothesis(hypothesis, history)
        if like is not None and like.index not in self._warned:
            self._warned.add(like.index)
            return (f"not yet accepted: your hypothesis reads like experiment #{like.index} ({like.state.value}: "
                    f"{one_line(like.description, 100)}). If your change is genuinely different, call finish "
                    "again; otherwise try another idea."), True
        self.hypothesis = hypothesis
        return "accepted: the harness will now run your experiment", False

    # ---------------------------------------------------------------- helpers

    def _listed(self) -> list[str]:
        return sorted({*self.files, *self.context.read_only})

    def _path(self, path: str, writing: bool) -> tuple[str, Optional[str]]:
        if not path.strip():
            return "", "give a path relative to the repository root, e.g. " + next(iter(sorted(self.files)), "train.py")
        clean = posixpath.normpath(path.strip().removeprefix("./"))
        if clean.startswith(("/", "..")) or ".git" in clean.split("/"):
            return clean, f"refused: {path!r} is not a path inside the repository"
        config = self.context.config
        if not writing and clean in self.context.read_only:
            return clean, None
        if scope.is_protected(clean, config):
            return clean, (f"refused: {clean} is protected; you may edit only the editable files "
                           f"({', '.join(config.files.editable)})" + (
                               f" and read those and {', '.join(sorted(self.context.read_only))}"
                               if self.context.read_only else ""))
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


def _parse_problem(path: str, text: Optional[str]) -> Optional[str]:
    if not path.endswith(".py") or text is None:
        return None
    try:
        pyast.parse(text, filename=path)
    except SyntaxError as exc:
        return f"{path} does not parse: {exc.msg} (line {exc.lineno})"
    return None


def _validated(tool: dict, arguments: dict) -> tuple[dict, str]:
    """The arguments the tool's schema names, checked: (arguments, "") or ({}, what is wrong)."""
    schema = tool["parameters"]["properties"]
    missing = [key for key in tool["parameters"].get("required", ()) if arguments.get(key) is None]
    if missing:
        required = tool["parameters"]["required"]
        needs = " and ".join([", ".join(required[:-1]), required[-1]] if len(required) > 1 else required)
        return {}, f"missing argument{'s' * (len(missing) > 1)} {', '.join(missing)} ({tool['name']} needs {needs})"
    out = {}
    for key, spec in schema.items():
        value = arguments.get(key)
        if value is None:
            continue
        if spec["type"] == "integer":
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)  # small models quote their numbers
            if not isinstance(value, int) or isinstance(value, bool):
                return {}, f"{key} must be an integer, got {value!r}"
        elif spec["type"] == "string" and not isinstance(value, str):
            return {}, f"{key} must be a string, got {type(value).__name__}"
        out[key] = value
    return out, ""
