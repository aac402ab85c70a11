"""The claude-code agent: Claude Code itself, through the Claude Agent SDK, on a scratch copy of the files.

    autoresearch run --agent claude-code [--model claude-opus-5-5]

For users on a Claude subscription (log in once with the `claude` program) as well as API keys.
Needs `pip install 'autoresearch[claude-code]'`, which bundles the Claude Code program. Each
proposal runs Claude Code in a fresh temporary directory holding the editable files, the protected
files it may read (read-only), and `autoresearch-memory/`: the research memory and every past
experiment in detail, one read-only file each. It has only the Read, Edit, Write, Glob and Grep
tools (no shell, no web) and two of the harness's, served in-process over MCP: `check` (its edited
code run for a few steps, trial.py) and `note` (a line for later proposals). No settings or hooks
are loaded from disk, the turns are limited (`[agent] max_turns`), and a guard sees every tool call:
every path-like argument (paths, and Glob and Grep patterns) must stay in the scratch directory,
and Edit and Write only reach editable files. The editable files it changed become the proposal;
the harness checks the real worktree afterwards, as for any agent. Its system prompt names these
tools and asks for a last line `HYPOTHESIS: ...`; when the hypothesis is refused (nothing changed, a
file does not parse, the change repeats an earlier experiment), it is told why once, in the same
conversation.
"""

from __future__ import annotations

import re
import stat
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Optional

from .. import memory, scope
from ..costs import priced, with_cost
from . import AgentError
from .claude import DEFAULT_MODEL
from .llm import LLMAgent
from .openai_chat import hypothesis_line
from .prompt import memory_text, one_line, program_text, system_prompt
from .workbench import ALL_TOOLS, Workbench

TOOLS = ["Read", "Edit", "Write", "Glob", "Grep"]
# Every argument of those tools that names a place: a path, or a glob pattern (Glob's pattern, Grep's glob).
PATH_KEYS = ("file_path", "path", "notebook_path", "pattern", "glob")
PATTERN_KEYS = {"Glob": ("pattern",), "Grep": ("glob",)}  # Grep's pattern is a regular expression, not a path
SERVER = "autoresearch"  # the harness's MCP server: its tools are mcp__autoresearch__check and ..._note
MEMORY_DIR = "autoresearch-memory"
FOLLOW_UPS = 1  # times a refused hypothesis is sent back to the model
DETAIL = f"{MEMORY_DIR}/experiment-NNNN.md has any experiment in full"  # said where the memory is cut

TOOLS_SENTENCE = """\
Your tools are Claude Code's Read, Glob and Grep to look at the files of the working directory, and Edit \
and Write to change the editable ones; there is no shell. The directory holds the editable files, the \
protected files they depend on (read-only) and {memory}/: memory.md (the research memory) and \
experiment-NNNN.md, every past experiment in detail (its diff, its runs' figures and loss curves, and a failed \
run's log tail).{services} When your change is complete, end your reply with one line: HYPOTHESIS: what you \
changed and why it should improve the metric."""
CHECK_SENTENCE = (f" mcp__{SERVER}__check runs your edited code for a few steps and returns the error, if any "
                  "(use it before you finish).")
NOTE_SENTENCE = f" mcp__{SERVER}__note writes a line for your later proposals."

PROMPT_TAIL = """\
The working directory holds the editable files ({files}){read_only}. Read what you need, make your change with \
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
        from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, create_sdk_mcp_server

        env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "CLAUDE_CODE_MAX_RETRIES": str(self.settings.max_retries),
               "API_TIMEOUT_MS": str(int(self.settings.timeout * 1000))}
        if self.settings.base_url:
            env["ANTHROPIC_BASE_URL"] = self.settings.base_url
        if self.settings.max_tokens:
            env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(self.settings.max_tokens)
        services = self._services(scratch, bench)
        names = [f"mcp__{SERVER}__{tool.name}" for tool in services]
        prompt = system_prompt(TOOLS_SENTENCE.format(
            memory=MEMORY_DIR, services=(CHECK_SENTENCE if "check" in [t.name for t in services] else "")
            + (NOTE_SENTENCE if "note" in [t.name for t in services] else "")))
        return ClaudeAgentOptions(
            tools=list(TOOLS), allowed_tools=[*TOOLS, *names], permission_mode="dontAsk", setting_sources=[],
            max_turns=self.settings.max_turns, cwd=str(scratch), model=self.model, system_prompt=prompt,
            env=env, cli_path=self.cli_path, stderr=self.stderr.append, effort=self.settings.effort,
            mcp_servers={SERVER: create_sdk_mcp_server(SERVER, tools=services)} if services else {},
            hooks={"PreToolUse": [HookMatcher(matcher="|".join(TOOLS), hooks=[self._guard(scratch, bench)])]})

    def _services(self, scratch: Path, bench: Workbench) -> list:
        """The harness's tools that this proposal offers (check, note), as in-process MCP tools over the workbench:
        the files as Claude Code left them in `scratch` are what check runs."""
        import anyio
        from claude_agent_sdk import tool

        one_at_a_time = threading.Lock()  # Claude Code may call both at once; the workbench is not shared

        def served(name: str):
            spec = next(t for t in ALL_TOOLS if t["name"] == name)

            def call(arguments: dict) -> tuple[str, bool]:
                with one_at_a_time:
                    collect(scratch, bench)
                    return bench.call(name, arguments)

            async def handler(arguments):
                text, error = await anyio.to_thread.run_sync(call, dict(arguments or {}))
                return {"content": [{"type": "text", "text": text}], "is_error": error}

            return tool(name, spec["description"], spec["parameters"])(handler)

        offered = {t["name"] for t in bench.tools}
        return [served(name) for name in ("check", "note") if name in offered]

    def _guard(self, scratch: Path, bench: Workbench):
        """A PreToolUse hook: every path inside the scratch directory; edits only to editable files."""
        root = scratch.resolve()
        config = bench.context.config

        async def guard(data, tool_use_id, context):
            tool = data.get("tool_name", "")
            arguments = data.get("tool_input") or {}
            base = root
            for key in PATH_KEYS:
                value = arguments.get(key)
                if value is None or (key == "pattern" and tool != "Glob"):
                    continue
                if not isinstance(value, str):
                    return _deny(f"{key} must be a string")
                if key in PATTERN_KEYS.get(tool, ()):
                    if _pattern_escapes(value, base, root):
                        return _deny(f"{value} reaches outside the working directory; only its files are here")
                    continue
                path = (root / Path(value).expanduser()).resolve()
                if path != root and root not in path.parents:
                    return _deny(f"{value} is outside the working directory; only its files are here")
                base = path
                relative = path.relative_to(root).as_posix()
                if tool in ("Edit", "Write") and not _editable(relative, config):
                    return _deny(f"refused: {relative} is not an editable file; the editable files are "
                                 f"{', '.join(config.files.editable)}")
            return {}

        return guard

    # ---------------------------------------------------------------- one proposal

    def converse(self, bench: Workbench) -> None:
        import anyio

        context = bench.context
        read_only = sorted(p for p in context.read_only if p not in context.files)
        memory_md = memory_text(context, self.settings, detail=DETAIL)
        prompt = "\n".join([program_text(context), memory_md, PROMPT_TAIL.format(
            files=", ".join(sorted(context.files)),
            read_only=f", the protected files ({', '.join(read_only)}: read-only)" if read_only else "")])
        with tempfile.TemporaryDirectory(prefix="autoresearch-claude-code-") as directory:
            scratch = Path(directory)
            for path, text in context.files.items():
                _write(scratch / path, text)
            for path in read_only:
                _write(scratch / path, context.read_only[path], read_only=True)
            config = context.config
            _write(scratch / MEMORY_DIR / "memory.md", memory_md, read_only=True)
            for index, text in memory.experiment_details(context.history, minimize=config.minimize,
                                                         metric=config.metric.name).items():
                _write(scratch / MEMORY_DIR / f"experiment-{index:04d}.md", text, read_only=True)
            try:
                anyio.run(self._session, scratch, bench, prompt)
            finally:
                for path in scratch.rglob("*"):  # read-only files in read-only directories: let them be removed
                    if path.is_dir() and not path.is_symlink():
                        path.chmod(0o700)

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
        parts = path.relative_to(scratch).parts
        relative = path.relative_to(scratch).as_posix()
        if path.is_file() and not path.is_symlink() and _editable(relative, config) \
                and ".claude" not in parts and parts[0] != MEMORY_DIR:
            found[relative] = path.read_text(errors="replace")
    bench.files = found


def _editable(relative: str, config) -> bool:
    return scope.matches(relative, config.files.editable) and not scope.is_protected(relative, config) \
        and PurePosixPath(relative).parts[0] != MEMORY_DIR


def _pattern_escapes(pattern: str, base: Path, root: Path) -> bool:
    """Whether a glob pattern can match outside `root`: an absolute or home-relative one whose fixed prefix is not
    inside it, or one with a `..` segment anywhere (a wildcard before it could climb anywhere)."""
    if ".." in PurePosixPath(pattern).parts or pattern.startswith("~") or re.search(r"[{,]\s*[/~]", pattern):
        return True  # a brace alternative may be absolute too: {/etc,x}/*
    fixed = []
    for part in PurePosixPath(pattern).parts:
        if any(c in part for c in "*?[{"):
            break
        fixed.append(part)
    where = (base / Path(*fixed)).resolve() if fixed else base
    return where != root and root not in where.parents


def _write(path: Path, text: str, read_only: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if read_only:
        path.chmod(stat.S_IRUSR | stat.S_IRGRP)


def _deny(reason: str) -> dict:
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}
