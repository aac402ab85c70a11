"""The target's configuration: one typed model loaded from `autoresearch.toml`.

Every error names the file, the key and what was expected (`ConfigError`; the CLI exits 2).
The full contract is in docs/target-contract.md.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .budget import Budget
from .sandbox import Limits, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "autoresearch.toml"


class ConfigError(Exception):
    """A problem with the target's configuration; the message is meant for the user as is."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSection(_Section):
    name: str = "target"
    program: str = "program.md"


class Commands(_Section):
    train: str
    prepare: Optional[str] = None
    evaluate: Optional[str] = None

    @field_validator("train", "prepare", "evaluate")
    @classmethod
    def _splits(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                words = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"not a valid command line ({exc})") from None
            if not words:
                raise ValueError("an empty command")
        return value


class Files(_Section):
    editable: list[str] = Field(min_length=1)
    protected: list[str] = []


class Metric(_Section):
    name: str
    goal: Literal["minimize", "maximize"] = "minimize"
    source: Literal["stdout", "json"] = "stdout"
    file: str = "metrics.json"
    # stdout: a regular expression with one group, for output that is not `name: value` lines;
    # the number its last match captures is the metric, e.g. 'val loss ([0-9.]+)'
    pattern: Optional[str] = None

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        if groups != 1:
            raise ValueError(f"a pattern needs exactly one group, (...), around the number; this one has {groups}")
        return value

    @model_validator(mode="after")
    def _pattern_reads_stdout(self) -> "Metric":
        if self.pattern is not None and self.source != "stdout":
            raise ValueError('pattern reads the output: it needs source = "stdout"')
        return self


class BudgetSection(_Section):
    default: str = "300s"
    timeout: Optional[float] = Field(default=None, gt=0)

    @field_validator("default")
    @classmethod
    def _parses(cls, value: str) -> str:
        Budget.parse(value)
        return value


class RunSection(_Section):
    seeds: list[int] = Field(default=[0], min_length=1)
    device: str = "auto"
    snapshots: list[str] = []  # globs of files in $AUTORESEARCH_OUT copied as they appear (snapshots.py)

    @field_validator("snapshots")
    @classmethod
    def _plain_names(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern or "/" in pattern or "\\" in pattern:
                raise ValueError(f"{pattern!r}: a file name or glob in $AUTORESEARCH_OUT, without a directory")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return _device(value)


def _device(value: str, also: str = "") -> str:
    if value in ("auto", "cpu", "cuda", "mps") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"expected {also}auto, cpu, cuda, cuda:N or mps")


class JudgeSection(_Section):
    """How keep-or-discard is decided; see stats.py for the rule and docs/target-contract.md for each key."""

    rule: Literal["statistical", "plain"] = "statistical"  # plain: the mean over run.seeds beats the best
    significance: float = Field(default=0.05, gt=0, lt=0.5)  # false-keep rate of a change that does nothing
    min_effect: float = Field(default=0.0, ge=0)  # a change must beat the best by more than this (metric units)
    line_cost: float = Field(default=0.02, ge=0)  # margin per net line of code added, in noise sds
    max_runs: int = Field(default=4, ge=2, le=50)  # runs (seeds) an experiment may get before it is discarded
    calibrate_seeds: int = Field(default=8, ge=2, le=100)  # baseline runs that measure the noise
    recalibrate_after: float = Field(default=10.0, gt=0)  # re-calibrate when the best moved this many sds
    implausible: float = Field(default=10.0, gt=1)  # a gain this many times the noise or the best gain so far
    final_test_seeds: int = Field(default=3, ge=0)  # seeds of the held-out test at a session's end (0: none)


class SandboxSection(_Section):
    isolate: Literal["auto", "required", "off"] = "auto"
    memory: str = "80%"       # total RSS of a run's processes: "8G", "512M", or a share of this machine's RAM
    processes: int = Field(default=256, ge=1)
    open_files: int = Field(default=4096, ge=16)
    output: str = "64M"       # stdout + stderr of one command
    hide: list[str] = []      # more paths no command may read (relative to the target root, or absolute)
    readonly: list[str] = []  # more paths no command may write

    @field_validator("memory", "output")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    def limits(self) -> Limits:
        return Limits(memory=parse_size(self.memory), processes=self.processes, open_files=self.open_files,
                      output=parse_size(self.output))


class Knob(_Section):
    """`[[knobs]]`: a value the search may set, in an editable file (see knobs.py for the forms)."""

    name: str  # how proposals, the ledger and reports call it; default: `key`, or `flag` without its dashes
    file: str  # the editable file that holds the value
    key: Optional[str] = None  # a Python file's top-level name, or a dotted key of a JSON/YAML/TOML file (default: name)
    flag: Optional[str] = None  # a command-line flag in `file` (a script): `--learning-rate 5e-4` or `--lr=5e-4`
    type: Literal["float", "int", "choice"] = "float"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[list[Union[int, float, str, bool]]] = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data):
        if isinstance(data, dict) and "name" not in data and (data.get("key") or data.get("flag")):
            data = {**data, "name": data.get("key") or str(data["flag"]).lstrip("-")}
        return data

    @model_validator(mode="after")
    def _has_range(self) -> "Knob":
        from . import knobs

        if self.flag is not None and not (self.flag.startswith("-") and len(self.flag.strip("-")) > 0):
            raise ValueError(f"flag must be a command-line option such as '--learning-rate' (got {self.flag!r})")
        if self.flag is not None and self.key is not None:
            raise ValueError("a knob has either 'flag' (in a script) or 'key' (in a config file), not both")
        try:
            kind = knobs.form(self)
        except knobs.KnobError as exc:
            raise ValueError(str(exc)) from None
        if kind == "python" and not (self.key or self.name).isidentifier():
            raise ValueError(f"in a Python file a knob is a top-level name such as LEARNING_RATE; "
                             f"{self.key or self.name!r} is not one (set 'key')")
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a choice knob needs a non-empty 'choices' list")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"{'an' if self.type == 'int' else 'a'} {self.type} knob needs 'low' < 'high'")
            if self.log and self.low <= 0:
                raise ValueError("a log-scale knob needs 'low' > 0")
        return self


class Constraint(_Section):
    """`[[constraints]]`: a bound on another number of every run; a change that breaks one is discarded."""

    metric: str  # a number of the run's metrics (metrics.json, `key: value` lines), or run_seconds (the harness's clock)
    max: Optional[float] = None  # the mean over the change's runs must be at most this ...
    min: Optional[float] = None  # ... at least this
    max_ratio: Optional[float] = Field(default=None, gt=0)  # ... at most this times the baseline's mean
    min_ratio: Optional[float] = Field(default=None, gt=0)  # ... at least this times the baseline's mean

    @model_validator(mode="after")
    def _bounded(self) -> "Constraint":
        if all(bound is None for bound in (self.max, self.min, self.max_ratio, self.min_ratio)):
            raise ValueError("a constraint needs a bound: max, min, max_ratio or min_ratio")
        return self


class Price(_Section):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: Optional[float] = Field(default=None, ge=0)  # default: the input price
    cache_write: Optional[float] = Field(default=None, ge=0)  # default: the input price


class AgentSection(_Section):
    """`[agent]`: who proposes and how. CLI flags (`--agent`, `--model`, `--base-url`, `--agent-option`) win."""

    name: str = "search"  # search | scripted | claude | claude-code | openai | hybrid | LLM+search
    model: Optional[str] = None  # default: the backend's own (claude: agents.claude.DEFAULT_MODEL)
    base_url: Optional[str] = None  # another server for the provider's API (a proxy, a local model)
    max_tokens: int = Field(default=16000, gt=0)  # per model response, thinking included
    temperature: Optional[float] = Field(default=None, ge=0, le=2)  # sent only when set
    effort: Optional[Literal["low", "medium", "high", "xhigh", "max"]] = None  # claude: output_config.effort
    max_turns: int = Field(default=30, gt=0)  # tool turns per proposal
    max_retries: int = Field(default=4, ge=0)  # per request, on rate limits and server errors
    timeout: float = Field(default=600, gt=0)  # seconds per request
    tools: bool = True  # openai: false = plain-text replies (search/replace blocks or a diff)
    memory_chars: int = Field(default=24000, ge=2000)  # the research memory's size budget
    # the model server's context window in tokens (a local model): every request is sized to fit it
    context_tokens: Optional[int] = Field(default=None, ge=2048)
    check: str = "cpu"  # where the agent's check tool runs the edited code (cpu, auto, cuda, cuda:N, mps), or off
    memory_experiments: int = Field(default=40, ge=1)  # rows of the recent-experiments table
    search_per_llm: int = Field(default=2, ge=0)  # hybrid: knob proposals after each LLM proposal
    adopt_knobs: bool = True  # hybrid: the search also tunes constants the LLM added or changed
    prices: dict[str, Price] = {}  # model -> price, over the built-in table (autoresearch.costs)

    @field_validator("check")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return value if value == "off" else _device(value, "off, ")


class LimitsSection(_Section):
    """`[limits]`: when a session stops by itself (`run --max-cost/--max-tokens/--max-hours` win)."""

    max_cost: Optional[float] = Field(default=None, gt=0)  # USD the agent may spend in one session
    max_tokens: Optional[int] = Field(default=None, gt=0)  # tokens (in + out) the agent may use in one session
    max_hours: Optional[float] = Field(default=None, gt=0)  # wall-clock hours of one session


class TransferSection(_Section):
    """`[transfer]`: do the kept changes hold at a larger scale? The baseline, the best and the best without each kept
    change, on the test split at the session's scale and at this one (transfer.py); at a session's end (`at_end`)
    and with `autoresearch transfer`."""

    scale: list[str] = Field(min_length=1)  # constants changed for the larger scale: "depth=+2", "seq_len=x2", "batch_size=32"
    budget: Optional[str] = None  # per-run budget at the larger scale (default: the session's)
    runs: int = Field(default=24, ge=8)  # the most runs it may spend, both scales together (8: baseline and best, 2 seeds)
    seeds: int = Field(default=3, ge=2, le=50)  # paired seeds per variant and scale (fewer, down to 2, to fit `runs`)
    at_end: bool = True  # run it when a session ends (false: only `autoresearch transfer`)
    timeout: Optional[float] = Field(default=None, gt=0)  # seconds per run at the larger scale (default: [budget]
    # timeout, else 3x the first larger run's wall time + 60)

    @field_validator("scale")
    @classmethod
    def _scales_parse(cls, value: list[str]) -> list[str]:
        from .scale import Scale, ScaleError

        for text in value:
            try:
                Scale.parse(text)
            except ScaleError as exc:
                raise ValueError(str(exc).removeprefix("--scale ")) from None
        return value

    @field_validator("budget")
    @classmethod
    def _budget_parses(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            Budget.parse(value)
        return value


class Config(_Section):
    target: TargetSection = TargetSection()
    commands: Commands
    files: Files
    metric: Metric
    budget: BudgetSection = BudgetSection()
    run: RunSection = RunSection()
    judge: JudgeSection = JudgeSection()
    sandbox: SandboxSection = SandboxSection()
    knobs: list[Knob] = []
    constraints: list[Constraint] = []
    agent: AgentSection = AgentSection()
    limits: LimitsSection = LimitsSection()
    transfer: Optional[TransferSection] = None

    @model_validator(mode="after")
    def _knobs_are_editable(self) -> "Config":
        from fnmatch import fnmatch

        for i, knob in enumerate(self.knobs):
            if not any(fnmatch(knob.file, pattern) for pattern in self.files.editable):
                # a model-level error has no location of its own, so the message names the key
                raise ValueError(f"knobs.{i}.file: knob {knob.name}'s file {knob.file!r} must match one of "
                                 f"files.editable ({', '.join(self.files.editable)})")
        return self

    @property
    def minimize(self) -> bool:
        return self.metric.goal == "minimize"

    def default_budget(self) -> Budget:
        return Budget.parse(self.budget.default)


def load(root: Path) -> Config:
    """Read and validate `<root>/autoresearch.toml`."""
    path = Path(root) / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is this an autoresearch target? see `autoresearch init`)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(path, exc)) from None


def format_errors(path: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        got = error.get("input")
        shown = "" if error["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {key + ': ' if key else ''}{message}{shown}")
    return "\n".join(lines)
