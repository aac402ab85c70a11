"""The claude-code agent: Claude Code itself, through the Claude Agent SDK, on a scratch copy of the files.

    autoresearch run --agent claude-code [--model claude-opus-5-5]

For users on a Claude subscription (log in once with the `claude` program) as well as API keys.
Needs `pip install 'autoresearch[claude-code]'`, which bundles the Claude Code program. Each
proposal runs Claude Code in a fresh temporary directory holding only the editable files, with
only the Read, Edit, Write, Glob and Grep tools (no shell, no web), no settings or hooks from
disk, a turn limit (`[agent] max_turns`), and a guard on every tool call: paths must stay in the
scratch directory, and Edit and Write only reach editable files. The editable files it changed
become the proposal; the harness checks the real worktree afterwards, as for any agent. When its
hypothesis is refused (nothing changed, a file does not parse, the change repeats an earlier
experiment), it is told why once, in the same conversation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from .. import scope
from ..costs import priced, with_cost
from . import AgentError
from .claude import DEFAULT_MODEL
from .llm import SYSTEM_PROMPT, LLMAgent, Workbench, memory_text, one_line, program_text
from .openai_chat import hypothesis_line

TOOLS = ["Read", "Edit", "Write", "Glob", "Grep"]
PATH_KEYS = ("file_path", "path", "notebook_path")
FOLLOW_UPS = 1  # times a refused hypothesis is sent back to the model

PROMPT_TAIL = """\
The editable files are in the current directory: {files}. Read what you need, make your change with \
Edit or Write, then end your reply with one line:
HYPOTHESIS: what you changed and why it should improve the metric"""


class ClaudeCodeAgent(LLMAgent):
    name = "claude-code"
    default_model = DEFAULT_MODEL

    def __init__(self, settings=None, cli_path: Optional[str] = None, **options):
        super().__init__(settings, **options)
        try:
            import claude_agent_sdk  # noqa: F401
        except ImportError:
            raise ValueError("the claude-code agent needs the Claude Agent SDK: "
                             "pip install 'autoresearch[claude-code]'") from None
        if self.settings.temperature is not None:
            raise ValueError("Claude Code takes no temperature; leave it unset")
        self.cli_path = cli_path
        self.stderr: list[str] = []

    # ---------------------------------------------------------------- options

    def sdk_options(self, scratch: Path, bench: Workbench):
        """The Claude Agent SDK options for one proposal in `scratch`."""
        from claude_agent_sdk import ClaudeAgentOptions, HookMatcher

        env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "CLAUDE_CODE_MAX_RETRIES": str(self.settings.max_retries),
               "API_TIMEOUT_MS": str(int(self.settings.timeout * 1000))}
        if self.settings.base_url:
            env["ANTHROPIC_BASE_URL"] = self.settings.base_url
        if self.settings.max_tokens:
            env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(self.settings.max_tokens)
        return ClaudeAgentOptions(
            tools=list(TOOLS), allowed_tools=list(TOOLS), permission_mode="dontAsk", setting_sources=[],
            max_turns=self.settings.max_turns, cwd=str(scratch), model=self.model, system_prompt=SYSTEM_PROMPT,
            env=env, cli_path=self.cli_path, stderr=self.stderr.append, effort=self.settings.effort,
            hooks={"PreToolUse": [HookMatcher(matcher="|".join(TOOLS), hooks=[self._guard(scratch, bench)])]})

    def _guard(self, scratch: Path, bench: Workbench):
        """A PreToolUse hook: every path inside the scratch directory; edits only to editable files."""
        root = scratch.resolve()
        config = bench.context.config

        async def guard(data, tool_use_id, context):
            tool = data.get("tool_name", "")
            arguments = data.get("tool_input") or {}
            for key in PATH_KEYS:
                value = arguments.get(key)
                if not value:
                    continue
                path = (root / value).resolve()
                if path != root and root not in path.parents:
                    return _deny(f"{value} is outside the working directory; only the editable files are here")
                relative = path.relative_to(root).as_posix()
                if tool in ("Edit", "Write") and (scope.is_protected(relative, config)
                                                  or not scope.matches(relative, config.files.editable)):
                    return _deny(f"refused: {relative} is not an editable file; the editable files are "
                                 f"{', '.join(config.files.editable)}")
            return {}

        return guard

    # ---------------------------------------------------------------- one proposal

    def converse(self, bench: Workbench) -> None:
        import anyio

        context = bench.context
        prompt = "\n".join([program_text(context), memory_text(context, self.settings),
                            PROMPT_TAIL.format(files=", ".join(sorted(context.files)))])
        with tempfile.TemporaryDirectory(prefix="autoresearch-claude-code-") as directory:
            scratch = Path(directory)
            for path, text in context.files.items():
                (scratch / path).parent.mkdir(parents=True, exist_ok=True)
                (scratch / path).write_text(text)
            anyio.run(self._session, scratch, bench, prompt)

    async def _session(self, scratch: Path, bench: Workbench, prompt: str) -> None:
        from claude_agent_sdk import ClaudeSDKClient

        self.stderr.clear()
        async with ClaudeSDKClient(self.sdk_options(scratch, bench)) as client:
            for attempt in range(FOLLOW_UPS + 1):
                await client.query(prompt)
                result = await self._result(client, bench)
                collect(scratch, bench)
                if result.is_error:
                    raise AgentError(self._failure(result))
                hypothesis = hypothesis_line(result.result or "") or one_line(
                    (result.result or "").strip().splitlines()[-1] if (result.result or "").strip() else "")
                text, refused = bench.call("finish", {"hypothesis": hypothesis})
                if not refused:
                    return
                if attempt == FOLLOW_UPS:
                    raise AgentError(f"the hypothesis was refused: {text}")
                prompt = f"Your change was not accepted: {text}\nFix this, then end with the HYPOTHESIS: line."

    async def _result(self, client, bench: Workbench):
        from claude_agent_sdk import ResultMessage

        result = None
        async for message in client.receive_response():
            if isinstance(message, ResultMessage):
                result = message
        if result is None:
            raise AgentError("Claude Code ended without a result" + self._stderr_tail())
        bench.turns += result.num_turns or 0
        bench.spend(self._usage(result))
        return result

    def _usage(self, result):
        usage = result.usage or {}
        spent = priced(self.model, input_tokens=usage.get("input_tokens") or 0,
                       output_tokens=usage.get("output_tokens") or 0,
                       cache_read_tokens=usage.get("cache_read_input_tokens") or 0,
                       cache_write_tokens=usage.get("cache_creation_input_tokens") or 0,
                       requests=max(1, result.num_turns or 0), overrides=self.settings.prices)
        if spent.cost_usd is None and result.total_cost_usd is not None:
            spent = with_cost(spent, result.total_cost_usd)  # Claude Code's own estimate for a model we do not price
        return spent

    def _failure(self, result) -> str:
        if result.subtype == "error_max_turns":
            return f"Claude Code hit the turn limit ({self.settings.max_turns}) before finishing"
        status = f" (HTTP {result.api_error_status})" if result.api_error_status else ""
        detail = "; ".join(result.errors or []) or result.result or result.subtype
        return f"Claude Code failed{status}: {one_line(detail, 300)}"

    def _stderr_tail(self) -> str:
        tail = " ".join(line.strip() for line in self.stderr[-5:] if line.strip())
        return f": {one_line(tail, 300)}" if tail else ""

    def explain(self, exc: Exception) -> Optional[str]:
        if type(exc).__module__.split(".")[0] != "claude_agent_sdk":
            return None
        name = type(exc).__name__
        if name == "CLINotFoundError":
            return f"the Claude Code program was not found: {exc}"
        if name == "ResultError" and "maximum number of turns" in str(exc):
            return f"Claude Code hit the turn limit ({self.settings.max_turns}) before finishing"
        return f"Claude Code failed ({name}): {one_line(str(exc), 300)}{self._stderr_tail()}"


def collect(scratch: Path, bench: Workbench) -> None:
    """The editable files as Claude Code left them: changed, created and deleted ones."""
    config = bench.context.config
    found = {}
    for path in scratch.rglob("*"):
        relative = path.relative_to(scratch).as_posix()
        if path.is_file() and not path.is_symlink() and scope.matches(relative, config.files.editable) \
                and not scope.is_protected(relative, config) and ".claude" not in path.relative_to(scratch).parts:
            found[relative] = path.read_text(errors="replace")
    bench.files = found


def _deny(reason: str) -> dict:
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}
