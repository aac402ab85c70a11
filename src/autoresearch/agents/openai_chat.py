"""The openai agent: any OpenAI-compatible chat-completions server through the official `openai` SDK.

    autoresearch run --agent openai --model NAME [--base-url http://127.0.0.1:8000/v1]

For OpenAI itself and for local or hosted servers that speak its API (vLLM, Ollama, llama.cpp's
server, and other providers). Needs `pip install 'autoresearch[openai]'`; the key comes from
OPENAI_API_KEY, and a --base-url server that wants none gets a placeholder. With tool calling
(default) the model has the same tools as the claude agent; with `[agent] tools = false` (models
without tool calling) it answers in plain text: search/replace blocks or a unified diff, plus a
`HYPOTHESIS:` line, and every problem is sent back to it as the next message.

Local servers: with `[agent] context_tokens` every request is sized to the server's window (see
agents/prompt.py; the oldest tool outputs are dropped when the conversation outgrows it), and a
--base-url server gets the answer's cap as `max_tokens` too (the name vLLM, llama.cpp and Ollama
read) besides OpenAI's `max_completion_tokens`. A server that refuses tool calls or the request's
size ends the session with what to change (vLLM's tool-calling flags, the context window); one that
read far fewer tokens than it was sent (Ollama cuts prompts to its context length without an error)
too.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from ..costs import priced
from . import AgentError, AgentSetupError
from .llm import LLMAgent, server_refusal, status_account
from .prompt import MIN_OUTPUT_TOKENS, NO_TOOLS, TASK, first_message, max_output, output_chars, program_text, \
    system_prompt, tools_sentence
from .workbench import Workbench

API_KEY_VARIABLE = "OPENAI_API_KEY"
DROPPED = "[dropped to fit the model's context window; call the tool again if you need it]"
# A prompt's characters per token stay below this in any tokenizer (code and prose, JSON-escaped, 3-5.5): a server
# that counts far fewer tokens than that read only part of the prompt.
MAX_CHARS_PER_TOKEN = 7.0
TRUNCATED = ("the server read only {tokens:,} tokens of a prompt of {chars:,} characters (at least "
             "{least:,} tokens): it cut the prompt to its context window without an error. Ollama does this at its "
             "default context length: start it with OLLAMA_CONTEXT_LENGTH=32768 (or a Modelfile with PARAMETER "
             "num_ctx 32768); then set [agent] context_tokens (--agent-option context_tokens=N) to that window, and "
             "every request is sized to fit it")

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
        tools = [{"type": "function", "function": t} for t in bench.tools] if self.settings.tools else None
        system = system_prompt(tools_sentence([t["function"]["name"] for t in tools]) if tools else NO_TOOLS)
        tail = TASK if tools else TEXT_FORMAT
        fixed = len(system) + len(json.dumps(tools or [])) + len(program_text(context)) + len(tail)
        first = first_message(context, self.settings, fixed, self.chars_per_token, tools=bool(tools))
        bench.shown, bench.memory_chars = first.shown, first.memory_chars
        bench.output_chars = output_chars(self.settings, self.chars_per_token)
        prompt = "\n".join([program_text(context), first.files, first.memory])
        messages: list[dict] = [{"role": "system", "content": system}, {"role": "user", "content": prompt + "\n" + tail}]
        if tools:
            self._with_tools(bench, messages, tools)
        else:
            self._in_text(bench, messages)

    def _ask(self, bench: Workbench, messages: list[dict], tools: Optional[list] = None):
        bench.turns += 1
        size = self._fit(messages, tools, bench)
        answer = max_output(self.settings, size, self.chars_per_token)
        options: dict = {"max_completion_tokens": answer}
        if self.settings.base_url:
            options["max_tokens"] = answer  # the name local servers read
        if tools:
            options.update(tools=tools, tool_choice="auto")  # explicit: some servers use tools only when told
        if self.settings.temperature is not None:
            options["temperature"] = self.settings.temperature
        response = self.client.chat.completions.create(model=self.model, messages=messages, **options)
        bench.spend(self._usage(response))
        self._learn(response.usage, size)
        if not response.choices:
            raise ValueError("the server answered with no choices")
        return response.choices[0].message

    def _fit(self, messages: list[dict], tools: Optional[list], bench: Workbench) -> int:
        """The request's size in characters, once it leaves the answer room in the context window: the oldest
        outputs (never the system prompt, the first message or the latest turn) are dropped until it does."""
        def size() -> int:
            return len(json.dumps(messages)) + len(json.dumps(tools or []))

        def fits() -> bool:
            return max_output(self.settings, size(), self.chars_per_token) >= MIN_OUTPUT_TOKENS

        if self.settings.context_tokens is None:
            return size()
        for message in messages[2:-2]:
            if fits():
                break
            if len(message.get("content") or "") > len(DROPPED):
                message["content"] = DROPPED
        if not fits():
            raise AgentError(f"the conversation outgrew context_tokens {self.settings.context_tokens} after "
                             f"{bench.turns - 1} turns")
        return size()

    def _learn(self, usage, size: int) -> None:
        """The server's token count of the prompt: the real characters per token, or a sign it cut the prompt."""
        tokens = getattr(usage, "prompt_tokens", None) or 0
        if tokens < 256:  # none reported, or a server that counts only what its cache did not hold
            return
        ratio = size / tokens
        if ratio > MAX_CHARS_PER_TOKEN:
            raise AgentSetupError(TRUNCATED.format(tokens=tokens, chars=size, least=int(size / MAX_CHARS_PER_TOKEN)))
        self.chars_per_token = max(1.5, min(ratio * 0.95, self.chars_per_token * 1.5))

    def _with_tools(self, bench: Workbench, messages: list[dict], tools: list) -> None:
        called = False
        for _ in range(self.settings.max_turns):
            message = self._ask(bench, messages, tools)
            calls = message.tool_calls or []
            called = called or bool(calls)
            reply: dict = {"role": "assistant"}
            if message.content or not calls:  # content null beside tool calls is refused by some servers
                reply["content"] = message.content or ""
            if calls:
                reply["tool_calls"] = [c.to_dict(mode="json", exclude_none=True) for c in calls]
            messages.append(reply)
            if not calls:
                bench.problem("no tool call", "")
                messages.append({"role": "user", "content": "Use the tools to make your change, then call "
                                 "finish(hypothesis). Plain text does nothing here."})
                continue
            for call in calls:
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except json.JSONDecodeError as exc:
                    text, error = bench.problem("arguments not JSON", f"the arguments are not valid JSON "
                                                f"({exc.msg}); call {call.function.name} again")
                else:
                    text, error = bench.call(call.function.name, arguments)
                messages.append({"role": "tool", "tool_call_id": call.id,
                                 "content": ("error: " if error else "") + text})
            if bench.hypothesis is not None:
                return
        if not called:
            raise AgentError(f"the model answered in plain text {self.settings.max_turns} times and never called a "
                             "tool: if the server ignores tools (llama-cpp-python's server without --chat_format "
                             "chatml-function-calling, a model without tool support), set [agent] tools = false")

    def _in_text(self, bench: Workbench, messages: list[dict]) -> None:
        for _ in range(self.settings.max_turns):
            message = self._ask(bench, messages)
            reply = message.content or ""
            messages.append({"role": "assistant", "content": reply})
            problems = apply_text_edits(bench, reply) if reply.strip() else \
                [bench.problem("empty answer", "your answer was empty")[0]]
            if not problems:
                hypothesis = hypothesis_line(reply)
                text, error = bench.call("finish", {"hypothesis": hypothesis}) if hypothesis else \
                    bench.problem("no hypothesis line", "no HYPOTHESIS: line")
                if not error:
                    return
                problems = [text]
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

    def setup_problem(self, exc: Exception) -> Optional[str]:
        return server_refusal(exc) if type(exc).__module__.split(".")[0] == "openai" else None

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
        problems.append(bench.problem("no edit block", "no search/replace block and no unified diff found")[0])
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
        problems.append(bench.problem("diff without a file", "the diff names no file (+++ b/PATH)")[0])
    return problems
