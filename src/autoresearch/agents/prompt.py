"""What an LLM agent is told, and how it is sized to fit the model's context window.

The system prompt names the tools the backend really has (the workbench's, Claude Code's own, or
none in plain-text mode). The first message carries the program, the editable files at the best
commit and the research memory (autoresearch.memory), rebuilt from the ledger every proposal.

With `[agent] context_tokens` (a local model), the first message is sized to fit half the window
(a quarter stays for the answer, a quarter for the tool turns): the files are shown in full when
they fit beside a small memory, else a Python file's UPPERCASE constants and then its head, with a
note saying how to read the rest; the memory gets what is left (up to `memory_chars`); each request
then asks for at most the tokens the window has left (`max_output`), and each tool output is cut
to an eighth of the window (`output_chars`). Tokens are estimated from characters, at
CHARS_PER_TOKEN until the server's own counts (usage.prompt_tokens) give the real ratio.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from .. import memory
from ..config import AgentSection
from . import AgentSetupError, Context

CHARS_PER_TOKEN = 3.0  # cautious: prose and code run 3.5-4 characters per token in most tokenizers
MIN_OUTPUT_TOKENS = 512  # a request that leaves the model fewer than this to answer is not sent
MEMORY_FLOOR = 2000  # the memory's share of the context before the files are shown only in part
_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*\s*=")  # a module-level UPPERCASE constant: a hyperparameter

ROLE = """\
You are a machine-learning researcher in an automated research loop. Each time you are called you \
propose ONE experiment: a change to the editable files of a training repository. A harness you \
cannot influence commits your change on top of the best code so far, trains under a fixed budget, \
measures the metric with a trusted evaluator, and keeps the change only if the metric improves \
beyond noise. Every experiment, kept or not, is recorded in the research memory you are shown.

How to work:
- Read the program (the human's instructions), the current code and the research memory first: \
what the runs did (throughput, steps, model size, memory, loss curves, the device) and how the judge \
decided (the gain, its standard error and the margin it had to clear).
- Make one coherent change that tests one idea: architecture, optimizer, schedule, data handling, \
hyperparameters. Prefer ideas with a real chance of improving the metric within the budget.
- Do not repeat an earlier experiment; build on what was kept, learn from what was discarded and \
from what crashed."""

RULES = """\
Rules, enforced by the harness (breaking one wastes the experiment): edit only the editable files; \
leave every Python file parseable; do not add dependencies; never touch evaluation, data or \
configuration files; never try to game the metric or the budget."""

TOOL_WORDS = {
    "read_file": "read_file (the editable files, and the protected ones read-only)",
    "list_files": "list_files",
    "replace": "replace (an exact, unique string in an editable file)",
    "view_memory": "view_memory (any past experiment in detail)",
    "check": "check (runs your edited code for a few steps and returns the error, if any: use it before finish)",
    "note": "note (a line for your later proposals)",
}

TASK = ("Propose the next experiment now: inspect what you need, make your change with replace, then call "
        "finish(hypothesis).")

NO_TOOLS = "You have no tools: answer in plain text, in the format the first message asks for at its end."


def system_prompt(tools: str) -> str:
    """The system prompt, with `tools`: what the model can do, in its backend's own words."""
    return f"{ROLE}\n- {tools}\n\n{RULES}\n\n{memory.UNTRUSTED_NOTE}\n"


def tools_sentence(names: list[str]) -> str:
    """The workbench's tools (claude, openai), as the system prompt names them."""
    listed = ", ".join(TOOL_WORDS[name] for name in names if name in TOOL_WORDS)
    return f"Use the tools: {listed}. When your change is complete, call finish with a one-line hypothesis: " \
           "what you changed and why it should help."


def program_text(context: Context) -> str:
    return f"## The program (the human's instructions)\n\n{context.program.strip()}\n"


def files_text(context: Context, room: Optional[int] = None, tools: bool = True) -> tuple[str, set[str]]:
    """The editable files at the best commit, and which of them are shown in full: all of them, or with `room`
    (characters) too small for all, each file's head, with a note on the rest."""
    editable = ", ".join(context.config.files.editable)
    parts = [f"## The editable files at the best commit (experiment #{context.parent.index})\n",
             f"Editable: {editable}."
             + (f" Read-only (read_file): {', '.join(sorted(context.read_only))}." if context.read_only and tools else "")
             + " Everything else is out of your reach.\n"]
    whole = sum(len(text) + len(path) + 12 for path, text in context.files.items())
    if room is None or whole <= room:
        return "\n".join(parts + [f"### {path}\n```\n{context.files[path]}\n```\n" for path in sorted(context.files)]), \
            set(context.files)
    share = max(0, room // max(1, len(context.files)) - 250)
    for path in sorted(context.files):
        lines = context.files[path].splitlines(keepends=True)
        constants = [i for i, line in enumerate(lines) if path.endswith(".py") and _CONSTANT.match(line)]
        shown, size = [], 0
        for i in [*constants, *range(len(lines))]:  # the constants, where most ideas start; then from the top
            if i not in shown:
                if size + len(lines[i]) > share:
                    break
                shown.append(i)
                size += len(lines[i])
        rest = "read_file(path, start, end) shows any lines" if tools else "edit only lines shown here"
        excerpt = "".join(("...\n" if i and i - 1 not in shown else "") + lines[i] for i in sorted(shown))
        parts.append(f"### {path} ({len(shown)} of its {len(lines)} lines: the whole file does not fit the model's "
                     f"context; {rest})\n```\n{excerpt}```\n")
    return "\n".join(parts), set()


def suggestions_text(context: Context) -> str:
    """The human's suggestions queued for this proposal (`autoresearch suggest`), or nothing."""
    if not context.suggestions:
        return ""
    ideas = "\n".join(f"- {' '.join(s.text.split())}" for s in context.suggestions)
    return ("## A suggestion from the human, for this proposal\n\n"
            "The human running this research asks you to consider this idea now. Test it with this proposal if the "
            "editable files allow it (otherwise make the change closest to it), and say in your hypothesis how "
            f"you followed it.\n\n{ideas}\n\n")


VIEW_DETAIL = "view_memory(experiment=N) shows any experiment"  # where the workbench's agents find one in full


def memory_text(context: Context, settings: AgentSection, budget: Optional[int] = None,
                detail: str = VIEW_DETAIL) -> str:
    """The suggestions, the research memory (at most `budget` characters, default `memory_chars`; `detail`: where
    any experiment is shown in full, "" where nowhere), what is in flight."""
    config = context.config
    text = suggestions_text(context) + "## Research memory\n\n" + memory.build(
        context.history, metric=config.metric.name, minimize=config.minimize, min_effect=config.judge.min_effect,
        budget=budget or settings.memory_chars, recent=settings.memory_experiments, notes=context.notes, detail=detail)
    running = [e for e in context.history if not e.state.final]
    if running or context.pending:  # several slots: propose something else than what is already on its way
        lines = [f"- #{e.index} (running): {one_line(e.description)}" for e in running]
        lines += [f"- (waiting for a slot): {one_line(p.description)}" for p in context.pending]
        text += ("\n\n## In flight now\n\nThese changes are being tried at this moment; propose a different "
                 "idea, not one of these again:\n" + "\n".join(lines[:40]))
    return text


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------- sizing


@dataclass(frozen=True)
class FirstMessage:
    files: str
    memory: str
    shown: set  # the editable files it carries in full
    memory_chars: int  # the memory's budget, also for view_memory later


def first_message(context: Context, settings: AgentSection, fixed_chars: int, chars_per_token: float,
                  tools: bool = True) -> FirstMessage:
    """The files and memory of the first message; with `context_tokens`, sized to leave room for `fixed_chars`
    (the system prompt, the tools, the program, the task) and an answer."""
    if settings.context_tokens is None:
        files, shown = files_text(context, tools=tools)
        return FirstMessage(files, memory_text(context, settings, detail=VIEW_DETAIL if tools else ""), shown,
                            settings.memory_chars)
    answer = min(settings.max_tokens, max(MIN_OUTPUT_TOKENS, settings.context_tokens // 4))
    room = int((settings.context_tokens - answer - settings.context_tokens // 4) * chars_per_token) - fixed_chars
    files, shown = files_text(context, max(0, room - min(settings.memory_chars, MEMORY_FLOOR)), tools=tools)
    budget = min(settings.memory_chars, room - len(files))
    if budget < 300:
        raise AgentSetupError(
            f"context_tokens {settings.context_tokens} leaves no room: the system prompt, the program and the "
            f"tools alone take about {math.ceil(fixed_chars / chars_per_token):,} tokens and an answer "
            f"{answer:,}; start the server with a larger context window and raise [agent] context_tokens")
    return FirstMessage(files, memory_text(context, settings, budget, VIEW_DETAIL if tools else ""), shown, budget)


def output_chars(settings: AgentSection, chars_per_token: float) -> Optional[int]:
    """The most characters one tool output may bring into a conversation: an eighth of the window."""
    return None if settings.context_tokens is None else int(settings.context_tokens * chars_per_token / 8)


def max_output(settings: AgentSection, prompt_chars: int, chars_per_token: float) -> int:
    """The tokens a request may ask the model for: max_tokens, or less when the context window has less left."""
    if settings.context_tokens is None:
        return settings.max_tokens
    return min(settings.max_tokens, settings.context_tokens - math.ceil(prompt_chars / chars_per_token) - 16)
