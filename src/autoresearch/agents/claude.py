"""The claude agent: the Anthropic Messages API through the official `anthropic` SDK, with tool use.

    autoresearch run --agent claude [--model claude-opus-5-5] [--base-url URL]

Needs `pip install 'autoresearch[claude]'` and ANTHROPIC_API_KEY. Each proposal is one fresh
conversation over the workbench's tools (agents/llm.py). The stable prefix (tools, system prompt,
program, current best code) carries prompt-cache breakpoints, and the growing conversation is
cached turn to turn. Rate limits (429), overload (529) and server errors (5xx) are retried by the
SDK with exponential backoff and jitter (`[agent] max_retries`), honouring `retry-after`.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from ..costs import priced
from . import AgentError
from .llm import LLMAgent, status_account
from .prompt import MIN_OUTPUT_TOKENS, TASK, first_message, max_output, one_line, output_chars, program_text, \
    system_prompt, tools_sentence
from .workbench import Workbench

# The strongest Claude model for code that the models overview recommended when this was written
# (2026-11): "Claude Opus 5.5, for long-running agentic coding". claude-fable-5-2 is the tier above,
# for demanding reasoning, at twice the price.
DEFAULT_MODEL = "claude-opus-5-5"
API_KEY_VARIABLE = "ANTHROPIC_API_KEY"
# Without streaming the SDK refuses requests that may run past 10 minutes: max_tokens above this.
MAX_NONSTREAMING_TOKENS = 21_000
CACHE = {"type": "ephemeral"}


class ClaudeAgent(LLMAgent):
    name = "claude"
    default_model = DEFAULT_MODEL

    def __init__(self, settings=None, **options):
        super().__init__(settings, **options)
        try:
            import anthropic
        except ImportError:
            raise ValueError("the claude agent needs the anthropic package: pip install 'autoresearch[claude]'") from None
        key = os.environ.get(API_KEY_VARIABLE)
        if not key:
            raise ValueError(f"{API_KEY_VARIABLE} is not set: the claude agent calls the Anthropic API with it "
                             "(export it, or use --agent claude-code with a Claude subscription)")
        if self.settings.max_tokens > MAX_NONSTREAMING_TOKENS:
            raise ValueError(f"max_tokens {self.settings.max_tokens} is above {MAX_NONSTREAMING_TOKENS:,}, which "
                             "the Anthropic SDK only serves by streaming; lower it")
        if self.settings.temperature is not None and self.settings.base_url is None:
            raise ValueError("the Anthropic API (version 2026-10-21) rejects temperature for every model; leave "
                             "temperature unset, or use it only with a --base-url server that accepts it")
        self.client = anthropic.Anthropic(api_key=key, base_url=self.settings.base_url,
                                          max_retries=self.settings.max_retries, timeout=self.settings.timeout)

    def converse(self, bench: Workbench) -> None:
        context = bench.context
        tools = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
                 for t in bench.tools]
        system_text = system_prompt(tools_sentence([t["name"] for t in tools]))
        fixed = len(system_text) + len(json.dumps(tools)) + len(program_text(context)) + len(TASK)
        first = first_message(context, self.settings, fixed, self.chars_per_token)
        bench.shown, bench.memory_chars = first.shown, first.memory_chars
        bench.output_chars = output_chars(self.settings, self.chars_per_token)
        system = [{"type": "text", "text": system_text},
                  {"type": "text", "text": program_text(context), "cache_control": CACHE}]
        messages: list[dict] = [{"role": "user", "content": [
            {"type": "text", "text": first.files, "cache_control": CACHE},
            {"type": "text", "text": first.memory + "\n" + TASK}]}]
        extra = {}
        if self.settings.effort:
            extra["output_config"] = {"effort": self.settings.effort}
        if self.settings.temperature is not None:
            extra["extra_body"] = {"temperature": self.settings.temperature}
        for _ in range(self.settings.max_turns):
            bench.turns += 1
            size = len(json.dumps(system)) + len(json.dumps(tools)) + len(json.dumps(messages))
            answer = max_output(self.settings, size, self.chars_per_token)
            if answer < MIN_OUTPUT_TOKENS:
                raise AgentError(f"the conversation outgrew context_tokens {self.settings.context_tokens} after "
                                 f"{bench.turns - 1} turns")
            response = self.client.messages.create(
                model=self.model, max_tokens=answer, system=system, messages=messages, tools=tools,
                cache_control=CACHE, **extra)
            bench.spend(self._usage(response))
            if response.stop_reason == "refusal":
                raise AgentError(f"the model refused: {one_line(self._text(response), 300) or 'no reason given'}")
            messages.append({"role": "assistant",
                             "content": [block.to_dict(mode="json", exclude_none=True) for block in response.content]})
            calls = [block for block in response.content if block.type == "tool_use"]
            if not calls:
                cut = response.stop_reason == "max_tokens"
                messages.append({"role": "user", "content": (
                    "Your reply was cut at max_tokens. " if cut else "") + "Use the tools to make your change, "
                    "then call finish(hypothesis). Plain text does nothing here."})
                continue
            results = []
            for call in calls:
                text, error = bench.call(call.name, call.input)
                results.append({"type": "tool_result", "tool_use_id": call.id, "content": text, "is_error": error})
            if bench.hypothesis is not None:
                return
            messages.append({"role": "user", "content": results})

    def _usage(self, response):
        usage = response.usage
        return priced(self.model, input_tokens=usage.input_tokens or 0, output_tokens=usage.output_tokens or 0,
                      cache_read_tokens=getattr(usage, "cache_read_input_tokens", None) or 0,
                      cache_write_tokens=getattr(usage, "cache_creation_input_tokens", None) or 0,
                      overrides=self.settings.prices)

    @staticmethod
    def _text(response) -> str:
        return " ".join(block.text for block in response.content if block.type == "text")

    def explain(self, exc: Exception) -> Optional[str]:
        if type(exc).__module__.split(".")[0] != "anthropic":
            return None
        return status_account(exc, "the Anthropic API", self.settings.max_retries, self.settings.base_url)
