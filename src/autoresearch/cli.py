"""The `autoresearch` command. Each subcommand takes `-C DIR`, the target (default: here).

Exit status: 0 done, 1 the work could not be done (message says why), 2 bad input (a broken
config or command line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from . import __version__
from .budget import Budget
from .config import ConfigError
from .errors import SessionError, UsageError
from .target import Target, prepare


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


def _programs() -> dict:
    from .programs import PROGRAMS

    return PROGRAMS


# ---------------------------------------------------------------------------- commands


def cmd_init(args) -> int:
    from .target import init

    directory = args.C / args.directory
    try:
        init(directory, args.template, args.program)
    except (FileExistsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"created {directory}: the built-in {args.template} target, program {args.program}, committed on branch main")
    print(f"next: cd {directory} && autoresearch prepare && autoresearch run")
    return 0


def cmd_prepare(args) -> int:
    target = Target.open(args.C)
    extra = (["--shards", str(args.shards)] if args.shards else []) + (["--max-bytes", args.max_bytes]
                                                                        if args.max_bytes else [])
    return prepare(target, args.data, args.vocab, extra)


def cmd_run(args) -> int:
    from . import assemble

    target = Target.open(args.C)
    reason = assemble.run(target, args.agent or target.config.agent.name, agent_options=_options(args.agent_option),
                          overrides={"model": args.model, "base_url": args.base_url},
                          caps={"max_cost": args.max_cost, "max_tokens": args.max_tokens, "max_hours": args.max_hours},
                          experiments=args.experiments, budget=args.budget, tag=args.tag, device=args.device,
                          slots=args.slots, pipeline=args.pipeline, executor_name=args.executor, address=args.address,
                          watch=_live_view)
    print(f"session ended: {reason}")
    return 0 if not reason.startswith("paused") else 1


def _live_view(session):
    """The Rich live panel while the session runs, on a terminal; nothing elsewhere (plain lines only)."""
    from contextlib import nullcontext

    from .live import LiveView, wanted

    return LiveView(session.target, session.tag) if wanted() else nullcontext()


def cmd_calibrate(args) -> int:
    from . import assemble

    target = Target.open(args.C)
    name = target.config.metric.name
    with assemble.harness_session(target, "calibrate", args.tag, args.budget, args.device, args.slots) as session:
        record = session.calibrate(args.seeds)
        noise = session.noise()
    if record["sd"] is None:
        print(f"calibration: {record['runs']} successful run(s): too few for a spread")
        return 1
    print(f"noise model ({record['runs']} runs of the best commit, budget {session.budget}):")
    print(f"  {name}: mean {record['mean']:.6f}  sd {record['sd']:.6f}  "
          f"95% CI of the mean [{record['ci_low']:.6f}, {record['ci_high']:.6f}]")
    if record["steps_mean"] is not None:
        spread = f" ± {record['steps_sd']:.1f}" if record["steps_sd"] is not None else ""
        print(f"  steps per run: {record['steps_mean']:.1f}{spread}")
    print(f"  pooled over tag {session.tag}: {noise.describe()}")
    return 0


def cmd_verify(args) -> int:
    from . import assemble, verify
    from .scale import Scale, ScaleError

    target = Target.open(args.C)
    try:
        scales = [Scale.parse(text) for text in args.scale or []]
    except ScaleError as exc:
        raise UsageError(str(exc)) from None
    if args.seeds < 2:
        raise UsageError("--seeds must be 2 or more: the interval needs pairs")
    if args.split == "test" and not target.config.commands.evaluate:
        raise UsageError("this target has no evaluate command, so nothing scores the held-out test split: its train "
                         "command's own number is the only one; compare on it with --split val")
    with assemble.harness_session(target, "verify", args.tag, args.budget, args.device, args.slots) as session:
        baseline = session.ledger.baseline(session.tag)
        if baseline is None:
            raise UsageError(f"tag {session.tag!r} has no baseline yet")
        candidate = target.git.resolve(args.commit) if args.commit else session.ledger.best(session.tag).commit
        if candidate is None:
            raise UsageError(f"no commit {args.commit!r} in {target.root}")
        try:
            with session.slots.take() as (worktree, slot):
                summary = verify.compare(session, worktree, slot, baseline.commit, candidate,
                                         seeds=list(range(args.seeds)), split=args.split, kind="verify",
                                         budget=args.budget, scales=scales)
        except (verify.VerifyError, ScaleError) as exc:
            raise UsageError(str(exc)) from None
    effect = summary["effect"]
    name = target.config.metric.name
    for role in ("baseline", "candidate"):
        part = summary[role]
        mean = f"{part['mean']:.6f}" if part["mean"] is not None else "-"
        sd = f" ± {part['sd']:.6f}" if part["sd"] is not None else ""
        print(f"{role:<9} {name} ({args.split}) {mean}{sd}  ({part['ok']}/{part['runs']} runs ok)")
    if effect["effect"] is None:
        print(f"gain: {effect['verdict']}")
        return 1
    interval = f", 95% CI [{effect['ci'][0]:+.6f}, {effect['ci'][1]:+.6f}]" if effect["ci"] else ""
    print(f"gain of the candidate: {effect['effect']:+.6f}{interval} over {effect['pairs']} paired seeds: "
          f"{effect['verdict']}")
    return 0


def cmd_transfer(args) -> int:
    from pydantic import ValidationError

    from . import assemble, transfer
    from .config import TransferSection

    target = Target.open(args.C)
    given = {"scale": args.scale, "budget": str(args.budget) if args.budget else None, "runs": args.runs,
             "seeds": args.seeds}
    given = {key: value for key, value in given.items() if value is not None}
    if target.config.transfer is None and "scale" not in given:
        raise UsageError("no [transfer] table in autoresearch.toml and no --scale: say what the larger scale is "
                         "(see docs/transfer.md), e.g. --scale depth=+2 --budget 600steps --runs 24")
    base = target.config.transfer.model_dump() if target.config.transfer else {}
    try:
        settings = TransferSection.model_validate({**base, **given})
    except ValidationError as exc:
        problems = "; ".join(f"--{'.'.join(map(str, e['loc'][:1]))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise UsageError(problems) from None
    # --budget is the larger scale's, not the session's
    with assemble.harness_session(target, "transfer", args.tag, None, args.device) as session:
        try:
            summary = transfer.run(session, settings)
        except transfer.TransferError as exc:
            raise UsageError(str(exc)) from None
    return 0 if summary is not None else 1


def cmd_status(args) -> int:
    from . import observe
    from .status import render

    target = Target.open(args.C)
    tag = _existing_tag(target, args.tag)
    if tag is None:
        if args.json:
            print(json.dumps({"tag": None, "best": None, "baseline": None, "experiments": []}))
        else:
            print("no research yet: `autoresearch run` starts a session")
        return 0
    ledger = observe.open_ledger(target)
    try:
        status = observe.status(ledger, tag, target)
    finally:
        ledger.close()
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def _existing_tag(target: Target, tag: Optional[str]) -> Optional[str]:
    from .ledger import Ledger

    if not target.ledger_path.exists():
        if tag:
            raise UsageError(f"no tag {tag!r}: this target has no ledger yet")
        return None
    ledger = Ledger(target.ledger_path)
    if tag and ledger.tag(tag) is None:
        raise UsageError(f"no tag {tag!r} in {target.ledger_path}")
    return tag or ledger.latest_tag()


def cmd_export(args) -> int:
    from .export import ExportError, write_branch, write_patches, write_tsv
    from .ledger import Ledger

    target = Target.open(args.C)
    tag = _existing_tag(target, args.tag)
    if tag is None:
        raise UsageError("nothing to export: no research yet")
    if not (args.tsv or args.patches or args.branch or args.mlflow is not None or args.wandb):
        raise UsageError("say what to export: --tsv FILE, --patches DIR, --branch NAME, --mlflow [URI] or "
                         "--wandb PROJECT")
    ledger = Ledger(target.ledger_path)
    if args.tsv:
        rows = write_tsv(ledger, tag, target.config.metric.name, Path(args.tsv))
        print(f"wrote {rows} experiments to {args.tsv}")
    try:
        if args.branch:
            commits = write_branch(target.git, ledger, tag, target.config, args.branch)
            print(f"branch {args.branch}: {len(commits)} commits, one per kept change, on the base commit "
                  f"(git log {args.branch})")
        if args.patches:
            files = write_patches(target.git, ledger, tag, target.config, args.patches)
            print(f"wrote {len(files)} patches to {args.patches} (apply on the base commit with "
                  f"`git am {Path(args.patches) / '*.patch'}`)")
        _export_trackers(args, target, ledger, tag)
    except ExportError as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return 1
    return 0


def _export_trackers(args, target: Target, ledger, tag: str) -> None:
    from . import trackers

    name = target.config.metric.name
    try:
        if args.mlflow is not None:
            experiment = f"{target.config.target.name}/{tag}"
            sent = trackers.to_mlflow(ledger, tag, name, args.mlflow or None, experiment)
            print(f"MLflow: {sent} new runs in experiment {experiment}" + (f" at {args.mlflow}" if args.mlflow else ""))
        if args.wandb:
            sent = trackers.to_wandb(ledger, tag, name, args.wandb, target.state / "exports", mode=args.wandb_mode,
                                     entity=args.wandb_entity)
            print(f"Weights & Biases: {sent} new runs in project {args.wandb}, group {tag}")
    except trackers.TrackerError as exc:
        raise UsageError(str(exc)) from None


def cmd_report(args) -> int:
    from .ledger import Ledger
    from .report import build

    target = Target.open(args.C)
    tag = _existing_tag(target, args.tag)
    if tag is None:
        raise UsageError("nothing to report: no research yet (`autoresearch run` starts a session)")
    out = Path(args.out) if args.out else target.state / "report"
    png, page = build(target, Ledger(target.ledger_path), tag, out)
    print(f"wrote {page} and {png}")
    return 0


def cmd_serve(args) -> int:
    from .serve import ServeError, serve

    target = Target.open(args.C)
    if args.tag:
        _existing_tag(target, args.tag)
    try:
        serve(target, args.host, args.port, args.token, args.tag)
    except ServeError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_suggest(args) -> int:
    from . import control
    from .ledger import Ledger

    target = Target.open(args.C)
    text = " ".join(args.text).strip()
    if not text:
        raise UsageError("say what to suggest: autoresearch suggest \"try a cosine schedule\"")
    tag = _existing_tag(target, args.tag)
    ledger = Ledger(target.ledger_path)
    try:
        suggestion = ledger.add_suggestion(text, tag, source="cli")
        waiting = len(ledger.pending_suggestions(tag or ""))
    finally:
        ledger.close()
    line = f"tag {tag}" if tag else "whichever tag runs next"
    print(f"suggestion #{suggestion.id} queued for {line}: {text}")
    print("the next proposal considers it" if waiting == 1 else
          f"{waiting - 1} suggestion(s) are ahead of it: each proposal takes up the oldest one")
    if control.holder(target.state) is None:
        print("no session is running on this target: `autoresearch run` will take it up")
    return 0


def cmd_control(args) -> int:
    from . import control

    target = Target.open(args.C)
    control.write(target.state, args.command, by="cli")
    running = control.holder(target.state) is not None
    print({"pause": "pause requested: the session holds before its next proposal, until `autoresearch resume`",
           "resume": "resume requested: a paused session goes on with its next proposal",
           "stop": "stop requested: the session ends cleanly after the experiment it is running"}[args.command]
          + ("" if running else " (no session is running on this target: the next `autoresearch run` starts afresh)"))
    return 0


def cmd_check(args) -> int:
    from .check import check, tiny_budget

    target = Target.open(args.C)
    budget = args.budget or tiny_budget(target.config)
    print(f"checking {target.root} ({target.config.target.name}): two runs at budget {budget}")
    report = check(target, budget)
    print(report.render())
    return 1 if report.problems else 0


def cmd_demo(args) -> int:
    from .demo import demo

    return demo(args.C / args.dir, args.experiments, args.budget, args.data)


# ---------------------------------------------------------------------------- parser


def _slots_option(p: argparse.ArgumentParser, what: str) -> None:
    """--slots N; --workers N is its old name, kept (hidden) so existing scripts go on working."""
    p.add_argument("--slots", type=int, metavar="N", help=what)
    p.add_argument("--workers", dest="slots", type=int, help=argparse.SUPPRESS)


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
    p.add_argument("--program", default="train", metavar="NAME",
                   help=f"what the agent researches: {', '.join(_programs())} (default: train; docs/programs/)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("prepare", parents=[common], help="make the data and tokenizer the target needs")
    p.add_argument("--data", help="data source, e.g. shakespeare (default) or stdlib")
    p.add_argument("--vocab", type=int, help="tokenizer vocabulary size (BPE; default: bytes)")
    p.add_argument("--shards", type=int, metavar="N", help="hub corpora: how many parquet shards to download")
    p.add_argument("--max-bytes", metavar="SIZE", help="hub corpora: at most this much text, e.g. 200M, 2G")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", parents=[common], help="run (or resume) a research session")
    p.add_argument("--agent", help="who proposes changes: search (offline), claude, claude-code, openai, hybrid, "
                   "LLM+search, scripted (default: [agent] name in autoresearch.toml, else search)")
    p.add_argument("--model", help="the LLM agent's model (claude default: claude-opus-5-5)")
    p.add_argument("--base-url", help="the LLM provider's API at another address (a proxy, a local server)")
    p.add_argument("--agent-option", action="append", metavar="KEY=VALUE",
                   help="an option for the agent: any [agent] key (max_turns=20, tools=false, ...) or the agent's own")
    p.add_argument("--experiments", "--max-experiments", type=int, metavar="N",
                   help="stop after N experiments (0: baseline only)")
    p.add_argument("--max-cost", type=float, metavar="USD", help="stop once the agent has spent this much in this session")
    p.add_argument("--max-tokens", type=int, metavar="N", help="stop once the agent has used this many tokens in this session")
    p.add_argument("--max-hours", type=float, metavar="H", help="stop after this many hours")
    p.add_argument("--budget", type=_budget, metavar="SPEC", help="per-run budget: 300s, 500steps, 2Mtok")
    p.add_argument("--tag", help="the name of this line of research: its branch is autoresearch/TAG, its experiments "
                   "are numbered in it (default: the latest tag, or today's date for the first)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: from autoresearch.toml)")
    _slots_option(p, "experiments in flight at once, one per slot, each in its own worktree (default: one per visible "
                  "GPU, else 1; on the CPU, N slots share the cores)")
    p.add_argument("--pipeline", action="store_true", default=None,
                   help="propose the next experiments while the current ones train (always on with --slots > 1)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where runs happen: this machine (default) or a Ray cluster (pip install 'autoresearch[ray]')")
    p.add_argument("--address", metavar="ADDR", help="--executor ray: the cluster (host:port of `ray start --head`, "
                   "or 'auto'); default: a local Ray started for the session")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("calibrate", parents=[common], help="measure the metric's noise: rerun the best commit")
    p.add_argument("--seeds", type=int, default=5, metavar="K", help="more runs of the best commit (default: 5)")
    p.add_argument("--budget", type=_budget, metavar="SPEC", help="per-run budget (default: the target's)")
    p.add_argument("--tag", help="the tag (default: the latest)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: from autoresearch.toml)")
    _slots_option(p, "runs at once, one per slot (default: one per visible GPU, else 1)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("verify", parents=[common],
                       help="does the gain hold? baseline vs best, side by side, on the test split, maybe scaled up")
    p.add_argument("commit", nargs="?", help="the candidate (default: the tag's best)")
    p.add_argument("--scale", action="append", metavar="NAME=+N",
                   help="change a constant of both sides first: depth=+2, seq_len=x2, batch_size=32")
    p.add_argument("--budget", type=_budget, metavar="SPEC", help="per-run budget (default: the target's)")
    p.add_argument("--seeds", type=int, default=3, metavar="K", help="paired seeds per side (default: 3)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="evaluation split (default: test)")
    p.add_argument("--tag", help="the tag (default: the latest)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: from autoresearch.toml)")
    _slots_option(p, "runs at once, one per slot (default: one per visible GPU, else 1)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("transfer", parents=[common], help="which kept changes still help at a larger scale? the "
                       "baseline, the best and the best without each kept change, small and large, on the test split")
    p.add_argument("--scale", action="append", metavar="NAME=+N",
                   help="the larger scale (default: [transfer] scale): depth=+2, seq_len=x2, batch_size=32")
    p.add_argument("--budget", type=_budget, metavar="SPEC", help="per-run budget at the larger scale "
                   "(default: [transfer] budget, else the tag's)")
    p.add_argument("--runs", type=int, metavar="N", help="the most runs it may spend, both scales (default: "
                   "[transfer] runs, else 24)")
    p.add_argument("--seeds", type=int, metavar="K", help="paired seeds per variant and scale (default: [transfer] "
                   "seeds, else 3)")
    p.add_argument("--tag", help="the tag (default: the latest)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: from autoresearch.toml)")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("status", parents=[common], help="the research at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--tag", help="the tag (default: the latest)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", parents=[common], help="export results (results.tsv) or the kept chain (commits)")
    p.add_argument("--tsv", metavar="FILE", help="write karpathy/autoresearch's results.tsv format")
    p.add_argument("--patches", metavar="DIR", help="the kept chain as format-patch files, one per kept change")
    p.add_argument("--branch", metavar="NAME", help="the kept chain as a new branch, one commit per kept change")
    p.add_argument("--mlflow", nargs="?", const="", metavar="URI", help="every run to MLflow (pip install "
                   "'autoresearch[mlflow]'): the tracking URI, e.g. sqlite:///mlflow.db (default: MLflow's own)")
    p.add_argument("--wandb", metavar="PROJECT", help="every run to this Weights & Biases project (pip install "
                   "'autoresearch[wandb]')")
    p.add_argument("--wandb-entity", metavar="ENTITY", help="the W&B team or user (default: W&B's own)")
    p.add_argument("--wandb-mode", choices=("online", "offline"), help="offline: W&B's local files, to `wandb sync` "
                   "later (default: W&B's own, WANDB_MODE)")
    p.add_argument("--tag", help="the tag (default: the latest)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", parents=[common], help="progress.png and a self-contained report.html")
    p.add_argument("--out", metavar="DIR", help="where to write them (default: .autoresearch/report/)")
    p.add_argument("--tag", help="the tag (default: the latest)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", parents=[common], help="live dashboard in the browser")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; others need --token)")
    p.add_argument("--token", help="required on every request (default: $AUTORESEARCH_TOKEN); needed off localhost")
    p.add_argument("--tag", help="the tag to show (default: the latest, followed as new ones start)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("suggest", parents=[common], help="queue an idea for the next proposal to consider")
    p.add_argument("text", nargs="+", help="the idea, in words")
    p.add_argument("--tag", help="the tag (default: the latest)")
    p.set_defaults(func=cmd_suggest)

    for command, what in (("pause", "hold a running session before its next proposal"),
                          ("resume", "let a paused session go on"),
                          ("stop", "end a running session cleanly after its current experiment")):
        p = sub.add_parser(command, parents=[common], help=what)
        p.set_defaults(func=cmd_control)

    p = sub.add_parser("check", parents=[common], help="a dry run of the target's commands at a tiny budget: what "
                       "works, what to change in autoresearch.toml")
    p.add_argument("--budget", type=_budget, metavar="SPEC",
                   help="per-run budget of its two runs (default: the target's, at most 5s, 20steps or 50ktok)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", parents=[common], help="offline demo: init + prepare + run the search agent on the built-in target")
    p.add_argument("--dir", default="autoresearch-demo", help="where to create the demo target")
    p.add_argument("--experiments", type=int, default=4, metavar="N", help="experiments after the baseline")
    p.add_argument("--budget", type=_budget, default=Budget.parse("120steps"), metavar="SPEC",
                   help="per-run budget (default: 120steps, about 10 s on 2 CPU cores; in steps, so a busy or slow "
                   "machine makes the demo slower, never noisier)")
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
    except SessionError as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
