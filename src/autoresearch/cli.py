"""The `autoresearch` command. Each subcommand takes `-C DIR`, the target (default: here).

Exit status: 0 done, 1 the work could not be done (message says why), 2 bad input (a broken
config or command line).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from . import __version__
from .budget import Budget
from .config import ConfigError
from .target import Target, cache_dir, command_argv


class UsageError(Exception):
    """Bad input on the command line: exit status 2."""


def _budget(spec: str) -> Budget:
    try:
        return Budget.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--agent-option {pair!r}: expected KEY=VALUE")
        options[key.replace("-", "_")] = value
    return options


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`) stops the session as cleanly as Ctrl-C does."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------------- commands


def cmd_init(args) -> int:
    from .target import init

    directory = args.C / args.directory
    try:
        init(directory, args.template)
    except (FileExistsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"created {directory}: the built-in {args.template} target, committed on branch main")
    print(f"next: cd {directory} && autoresearch prepare && autoresearch run")
    return 0


def cmd_prepare(args) -> int:
    target = Target.open(args.C)
    extra = (["--shards", str(args.shards)] if args.shards else []) + (["--max-bytes", args.max_bytes]
                                                                        if args.max_bytes else [])
    return prepare(target, args.data, args.vocab, extra)


def prepare(target: Target, data: Optional[str] = None, vocab: Optional[int] = None, extra: list = ()) -> int:
    """Run the target's prepare command; `--data`, `--vocab` and any further flags are passed on."""
    command = target.config.commands.prepare
    if not command:
        print("this target declares no prepare command; nothing to do")
        return 0
    argv = (command_argv(command) + (["--data", data] if data else []) + (["--vocab", str(vocab)] if vocab else [])
            + list(extra))
    env = {**os.environ, "AUTORESEARCH_DATA": str(target.data), "AUTORESEARCH_CACHE": str(cache_dir())}
    target.data.mkdir(parents=True, exist_ok=True)
    code = subprocess.call(argv, cwd=target.root, env=env)
    if code != 0:
        print(f"prepare failed: `{' '.join(argv)}` exited with code {code}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    target = Target.open(args.C)
    return run_session(target, args.agent, _options(args.agent_option), args.experiments, args.budget, args.tag,
                       args.device)


def run_session(target: Target, agent_name: str, agent_options: dict, experiments: Optional[int],
                budget: Optional[Budget], tag: Optional[str], device: Optional[str]) -> int:
    from . import agents, sandbox
    from .executor import LocalExecutor
    from .session import Session, SessionError

    try:
        agent = agents.create(agent_name, **agent_options)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"agent {agent_name}: {exc}") from None
    executor = LocalExecutor(device or target.config.run.device)
    try:
        sandbox.check(target.config.sandbox.isolate)  # once, before anything runs: refuse, or say what is not isolated
    except sandbox.SandboxError as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return 1
    _stop_on_sigterm()
    try:
        session = Session.open(target, agent, agent_name, executor, tag=tag, budget=budget)
        print(f"session {session.session_id} on {session.branch}: agent {agent_name}, budget {session.budget}, "
              f"slot {executor.slots()[0].name}")
        try:
            reason = session.run(experiments)
        finally:
            session.close()
    except SessionError as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return 1
    print(f"session ended: {reason}")
    return 0 if not reason.startswith("paused") else 1


def cmd_status(args) -> int:
    from .ledger import Ledger
    from .status import render, status_dict

    target = Target.open(args.C)
    tag = _existing_tag(target, args.tag)
    if tag is None:
        if args.json:
            print(json.dumps({"tag": None, "best": None, "baseline": None, "experiments": []}))
        else:
            print("no research yet: `autoresearch run` starts a session")
        return 0
    status = status_dict(Ledger(target.ledger_path), tag, target.config)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def _existing_tag(target: Target, tag: Optional[str]) -> Optional[str]:
    from .ledger import Ledger

    if not target.ledger_path.exists():
        if tag:
            raise UsageError(f"no research line {tag!r}: this target has no ledger yet")
        return None
    ledger = Ledger(target.ledger_path)
    if tag and ledger.tag(tag) is None:
        raise UsageError(f"no research line {tag!r} in {target.ledger_path}")
    return tag or ledger.latest_tag()


def cmd_export(args) -> int:
    from .export import write_tsv
    from .ledger import Ledger

    target = Target.open(args.C)
    tag = _existing_tag(target, args.tag)
    if tag is None:
        raise UsageError("nothing to export: no research yet")
    if not args.tsv:
        raise UsageError("say what to export: --tsv FILE")
    rows = write_tsv(Ledger(target.ledger_path), tag, target.config.metric.name, Path(args.tsv))
    print(f"wrote {rows} experiments to {args.tsv}")
    return 0


def cmd_demo(args) -> int:
    from .demo import demo

    return demo(args.C / args.dir, args.experiments, args.budget, args.data)


# ---------------------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-C", metavar="DIR", default=".", type=Path,
                        help="run as if started in DIR: the target directory (default: here)")
    top = argparse.ArgumentParser(prog="autoresearch", description="An AI agent researches training code; "
                                  "a trusted harness runs, measures, and keeps or reverts each change.")
    top.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="create a target repository from a built-in template")
    p.add_argument("directory")
    p.add_argument("--template", default="gpt", help="built-in target (default: gpt)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("prepare", parents=[common], help="make the data and tokenizer the target needs")
    p.add_argument("--data", help="data source, e.g. shakespeare (default) or stdlib")
    p.add_argument("--vocab", type=int, help="tokenizer vocabulary size (BPE; default: bytes)")
    p.add_argument("--shards", type=int, metavar="N", help="hub corpora: how many parquet shards to download")
    p.add_argument("--max-bytes", metavar="SIZE", help="hub corpora: at most this much text, e.g. 200M, 2G")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", parents=[common], help="run (or resume) a research session")
    p.add_argument("--agent", default="search", help="who proposes changes (default: search, offline)")
    p.add_argument("--agent-option", action="append", metavar="KEY=VALUE", help="an option for the agent")
    p.add_argument("--experiments", type=int, metavar="N", help="stop after N experiments (0: baseline only)")
    p.add_argument("--budget", type=_budget, metavar="SPEC", help="per-run budget: 300s, 500steps, 2Mtok")
    p.add_argument("--tag", help="research line; its branch is autoresearch/TAG (default: the latest, or today)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: from autoresearch.toml)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", parents=[common], help="the research at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--tag", help="research line (default: the latest)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", parents=[common], help="export results (results.tsv)")
    p.add_argument("--tsv", metavar="FILE", help="write karpathy/autoresearch's results.tsv format")
    p.add_argument("--tag", help="research line (default: the latest)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", parents=[common], help="offline demo: init + prepare + run the search agent on the built-in target")
    p.add_argument("--dir", default="autoresearch-demo", help="where to create the demo target")
    p.add_argument("--experiments", type=int, default=6, metavar="N", help="experiments after the baseline")
    p.add_argument("--budget", type=_budget, default=Budget.parse("20s"), metavar="SPEC", help="per-run budget")
    p.add_argument("--data", default="shakespeare", help="data source (shakespeare; stdlib needs no download)")
    p.set_defaults(func=cmd_demo)
    return top


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run" and args.experiments is not None and args.experiments < 0:
        print("autoresearch: --experiments must be 0 or more", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
