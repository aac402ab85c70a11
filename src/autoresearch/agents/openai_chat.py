"""The openai agent: any OpenAI-compatible chat-completions server through the official `openai` SDK.

    autoresearch run --agent openai --model NAME [--base-url http://127.0.0.1:8000/v1]

For OpenAI itself and for local or hosted servers that speak its API (vLLM, Ollama, llama.cpp's
server, and other providers). Needs `pip install 'autoresearch[openai]'`; the key comes from
OPENAI_API_KEY, and a --base-url server that wants none gets a placeholder. With tool calling
(default) the model has the same tools as the claude agent; with `[agent] tools = false` (models
without tool calling) it answers in plain text: search/replace blocks or a unified diff, plus a
`HYPOTHESIS:` line, and every problem is sent back to it as the next message.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from ..costs import priced
from .llm import SYSTEM_PROMPT, TASK, TOOLS, LLMAgent, Workbench, files_text, memory_text, program_text, \
    status_account

API_KEY_VARIABLE = "OPENAI_API_KEY"

TEXT_FORMAT = """\
Answer in plain text; you have no tools. Give each edit as a search/replace block: the file's path on \
its own line, then

<<<<<<< SEARCH
exact lines of the current file (they must occur exactly once)
=======
the lines that replace them
>>>>>>> REPLACE

or give a unified diff in a ```diff block. An empty SEARCH part with a new path creates that file. End \
with one line: HYPOTHESIS: what you changed and why it should improve the metric."""


class OpenAIAgent(LLMAgent):
    name = "openai"

    def __init__(self, settings=None, **options):
        super().__init__(settings, **options)
        try:
            import openai
        except ImportError:
            raise ValueError("the openai agent needs the openai package: pip install 'autoresearch[openai]'") from None
        key = os.environ.get(API_KEY_VARIABLE)
        if not key:
            if self.settings.base_url is None:
                raise ValueError(f"{API_KEY_VARIABLE} is not set: the openai agent calls the OpenAI API with it "
                                 "(export it, or point --base-url at a server that needs no key)")
            key = "no-key"  # local servers ignore it; the SDK wants one
        self.client = openai.OpenAI(api_key=key, base_url=self.settings.base_url,
                                    max_retries=self.settings.max_retries, timeout=self.settings.timeout)

    def converse(self, bench: Workbench) -> None:
        context = bench.context
        prompt = "\n".join([program_text(context), files_text(context), memory_text(context, self.settings)])
        messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPT}]
        if self.settings.tools:
            messages.append({"role": "user", "content": prompt + "\n" + TASK})
            self._with_tools(bench, messages)
        else:
            messages.append({"role": "user", "content": prompt + "\n" + TEXT_FORMAT})
            self._in_text(bench, messages)

    def _ask(self, bench: Workbench, messages: list[dict], **extra):
        bench.turns += 1
        options = {"max_completion_tokens": self.settings.max_tokens, **extra}
        if self.settings.temperature is not None:
            options["temperature"] = self.settings.temperature
        response = self.client.chat.completions.create(model=self.model, messages=messages, **options)
        bench.spend(self._usage(response))
        if not response.choices:
            raise ValueError("the server answered with no choices")
        return response.choices[0].message

    def _with_tools(self, bench: Workbench, messages: list[dict]) -> None:
        tools = [{"type": "function", "function": t} for t in TOOLS]
        for _ in range(self.settings.max_turns):
            message = self._ask(bench, messages, tools=tools)
            calls = message.tool_calls or []
            messages.append({"role": "assistant", "content": message.content or ("" if not calls else None),
                             **({"tool_calls": [c.to_dict(mode="json", exclude_none=True) for c in calls]}
                                if calls else {})})
            if not calls:
                messages.append({"role": "user", "content": "Use the tools to make your change, then call "
                                 "finish(hypothesis). Plain text does nothing here."})
                continue
            for call in calls:
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except json.JSONDecodeError as exc:
                    text, error = f"the arguments are not valid JSON ({exc.msg}); call {call.function.name} again", True
                else:
                    text, error = bench.call(call.function.name, arguments)
                messages.append({"role": "tool", "tool_call_id": call.id,
                                 "content": ("error: " if error else "") + text})
            if bench.hypothesis is not None:
                return

    def _in_text(self, bench: Workbench, messages: list[dict]) -> None:
        for _ in range(self.settings.max_turns):
            message = self._ask(bench, messages)
            reply = message.content or ""
            messages.append({"role": "assistant", "content": reply})
            problems = apply_text_edits(bench, reply)
            if not problems:
                hypothesis = hypothesis_line(reply)
                text, error = bench.call("finish", {"hypothesis": hypothesis})
                if not error:
                    return
                problems = [text if hypothesis else "no HYPOTHESIS: line"]
            messages.append({"role": "user", "content": "Your answer could not be used:\n- " + "\n- ".join(problems)
                             + "\nThe files are back as they were; answer again in the format asked."})
            bench.files = dict(bench.original)

    def _usage(self, response):
        usage = response.usage
        if usage is None:
            return priced(self.model, overrides=self.settings.prices)
        details = usage.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details else 0
        written = (getattr(details, "cache_write_tokens", None) or 0) if details else 0
        return priced(self.model, input_tokens=max(0, (usage.prompt_tokens or 0) - cached - written),
                      output_tokens=usage.completion_tokens or 0, cache_read_tokens=cached,
                      cache_write_tokens=written, overrides=self.settings.prices)

    def explain(self, exc: Exception) -> Optional[str]:
        if type(exc).__module__.split(".")[0] != "openai":
            return None
        return status_account(exc, "the chat-completions server", self.settings.max_retries, self.settings.base_url)


# ---------------------------------------------------------------------------- plain-text answers

_BLOCK = re.compile(r"^<{5,}\s*SEARCH[ \t]*(?P<path>\S*)[ \t]*\n(?P<old>.*?)^={5,}[ \t]*\n(?P<new>.*?)^>{5,}\s*REPLACE[^\n]*$",
                    re.M | re.S)
_DIFF = re.compile(r"```(?:diff|patch)[^\n]*\n(?P<body>.*?)^```", re.M | re.S)


def hypothesis_line(reply: str) -> str:
    found = re.findall(r"^\W*hypothesis\W*:\s*(.+)$", reply, re.I | re.M)
    return found[-1].strip().strip("*`") if found else ""


def _path_before(reply: str, start: int) -> str:
    for line in reversed(reply[:start].splitlines()[-3:]):
        line = line.strip().strip("`*#").strip()
        line = re.sub(r"^(file|path)\s*:\s*", "", line, flags=re.I).strip("`* ")
        if line and " " not in line and not line.startswith("```"):
            return line
    return ""


def apply_text_edits(bench: Workbench, reply: str) -> list[str]:
    """Apply the reply's search/replace blocks, else its unified diffs, through the workbench; the problems."""
    problems: list[str] = []
    blocks = list(_BLOCK.finditer(reply))
    for block in blocks:
        path = block.group("path") or _path_before(reply, block.start())
        text, error = bench.call("replace", {"path": path, "old": block.group("old"), "new": block.group("new")})
        if error:
            problems.append(text)
    if blocks:
        return problems
    diffs = [m.group("body") for m in _DIFF.finditer(reply)] or ([reply] if re.search(r"^@@ ", reply, re.M) else [])
    for body in diffs:
        problems += _apply_diff(bench, body)
    if not blocks and not diffs:
        problems.append("no search/replace block and no unified diff found")
    return problems


def _apply_diff(bench: Workbench, body: str) -> list[str]:
    """A unified diff applied hunk by hunk as exact replacements (line numbers are not trusted)."""
    problems, path, lines = [], "", body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ "):
            path = re.sub(r"^b/", "", line[4:].split("\t")[0].strip())
        elif line.startswith("@@"):
            old, new = [], []
            i += 1
            while i < len(lines) and not lines[i].startswith(("@@", "--- ", "+++ ", "diff ")):
                text = lines[i]
                if text.startswith("-"):
                    old.append(text[1:])
                elif text.startswith("+"):
                    new.append(text[1:])
                elif not text.startswith("\\"):
                    old.append(text[1:] if text.startswith(" ") else text)
                    new.append(text[1:] if text.startswith(" ") else text)
                i += 1
            joined_old = "\n".join(old) + ("\n" if old else "")
            result, error = bench.call("replace", {"path": path, "old": joined_old, "new": "\n".join(new) + "\n"})
            if error:
                problems.append(result)
            continue
        i += 1
    if not path:
        problems.append("the diff names no file (+++ b/PATH)")
    return problems
