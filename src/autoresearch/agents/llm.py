"""What the LLM agents share: the base class that runs one proposal's conversation over a Workbench,
and how a provider's failures are told to the user.

Each proposal starts from a fresh conversation: the system prompt, the program and the current best
code (a stable prefix that prompt caching can reuse) and the research memory (agents/prompt.py),
then tool turns over the workbench (agents/workbench.py) until the model finishes. A server that
refuses the requests as sent (tool calling switched off, a context window too small) ends the
session with what to change (`AgentSetupError`); other failures are recorded and the loop goes on.
"""

from __future__ import annotations

import re
import time
from typing import Optional

from ..config import AgentSection
from . import Agent, AgentError, AgentSetupError, Context, Proposal, ProposalError
from .prompt import CHARS_PER_TOKEN, one_line
from .workbench import Workbench


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
        self.chars_per_token = CHARS_PER_TOKEN  # refined from the server's token counts (prompt.py's sizing)

    def converse(self, bench: Workbench) -> None:
        """Talk with the model until it finishes (bench.hypothesis set) or the turns run out."""
        raise NotImplementedError

    def explain(self, exc: Exception) -> Optional[str]:
        """A one-line account of a provider error, or None for errors that are not the provider's."""
        return None

    def setup_problem(self, exc: Exception) -> Optional[str]:
        """What to change when `exc` says the server cannot serve these requests at all; None otherwise."""
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
            problem = self.setup_problem(exc)
            if problem is not None:
                raise AgentSetupError(problem, usage=bench.usage) from exc
            account = self.explain(exc)
            if account is None:
                raise AgentError(f"{type(exc).__name__}: {exc}", usage=bench.usage) from exc
            raise AgentError(account, usage=bench.usage) from exc
        if bench.hypothesis is None:
            raise AgentError(f"the model did not finish within {self.settings.max_turns} tool turns"
                             + (" (its edits are dropped)" if bench.writes() else "") + problems_said(bench),
                             usage=bench.usage)
        return Proposal(bench.hypothesis, bench.writes(),
                        meta={"usage": bench.usage, "agent": self.name, "turns": bench.turns,
                              "seconds": time.monotonic() - started, "problems": dict(bench.problems),
                              "suggestions": [suggestion.id for suggestion in context.suggestions]})


def problems_said(bench: Workbench) -> str:
    """What the model got wrong on the way, for the record: `; its answers: no search/replace block (3), ...`."""
    if not bench.problems:
        return ""
    return "; its answers: " + ", ".join(f"{kind} ({n})" for kind, n in bench.problems.most_common(4))


def error_message(exc: Exception) -> str:
    """The server's own words in an SDK error (Anthropic's and OpenAI's SDKs: body.error.message, or message)."""
    body = getattr(exc, "body", None)
    detail = body.get("error", body) if isinstance(body, dict) else None
    detail = detail.get("message") if isinstance(detail, dict) else detail if isinstance(detail, str) else None
    return one_line(detail or getattr(exc, "message", None) or str(exc), 300)


def status_account(exc: Exception, provider: str, retries: int, base_url: Optional[str]) -> Optional[str]:
    """What went wrong with a request to an API built like Anthropic's and OpenAI's SDKs (status_code, message)."""
    status = getattr(exc, "status_code", None)
    message = error_message(exc)
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


# What local servers answer when they cannot serve tool calls or the request does not fit their context
# (vLLM, Ollama, llama.cpp's servers; OpenAI-compatible proxies say much the same).
_TOOL_REFUSALS = re.compile(r"enable-auto-tool-choice|tool-call-parser|does not support tools|"
                            r"tools? (?:param|parameter)s? requires? --jinja|tool.?(?:calling|use|choice)s? "
                            r"(?:is )?not supported|unsupported.{0,20}tool", re.I)
_CONTEXT_REFUSALS = re.compile(r"maximum context length|context (?:length|window|size)|exceeds? (?:the )?context|"
                               r"requested tokens.{0,40}exceed|prompt is too long|too many (?:input )?tokens|"
                               r"input (?:is )?too long|n_ctx", re.I)

TOOLS_HELP = ("the server refused tool calling ({message}). vLLM: start it with --enable-auto-tool-choice "
              "--tool-call-parser PARSER (hermes for Qwen and Hermes models, llama3_json for Llama 3; see vLLM's "
              "tool-calling page); llama.cpp's llama-server: --jinja; llama-cpp-python's server: --chat_format "
              "chatml-function-calling; Ollama: a model with the tools capability. Or answer without tools: "
              "[agent] tools = false (--agent-option tools=false)")
CONTEXT_HELP = ("the request did not fit the server's context window ({message}). Set [agent] context_tokens "
                "(--agent-option context_tokens=N) to the window the server was started with (vLLM: "
                "--max-model-len; llama.cpp: --ctx-size, llama-cpp-python: --n_ctx; Ollama: "
                "OLLAMA_CONTEXT_LENGTH), and every request is sized to fit it; or start the server with a larger one")


def server_refusal(exc: Exception) -> Optional[str]:
    """What to change when a server's error says it cannot serve tool calls or these request sizes, else None."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or status in (401, 403, 429):
        return None
    message = error_message(exc)
    if _TOOL_REFUSALS.search(message):
        return TOOLS_HELP.format(message=message)
    if _CONTEXT_REFUSALS.search(message):
        return CONTEXT_HELP.format(message=message)
    return None
