"""What one claude proposal sends, measured, and what a night costs, estimated.

Runs the real claude agent (the anthropic SDK) on the built-in gpt target against a local
Messages API stand-in that plays a short scripted proposal (read the file, view one past
experiment, one edit, finish), with a synthetic ledger of 10, 100 and 1,000 past experiments: each
with its runs' summaries (throughput, steps, size, memory), a log with a loss curve, and the judge's
gain, standard error and margin, as a session records them. It measures the characters of every
request the SDK sends: the cached prefix (tools, system prompt, program, current code) and the
rest. Tokens are estimated at 3.5 characters per token; output tokens and the number of tool turns
of a real model are assumptions (flags), so the dollar figures are estimates, not measurements.
Then the openai agent's first request on a local server's window (`[agent] context_tokens`, stand-in
server, 1,000 experiments): its characters and the answer it may ask for.

It runs against any checkout of autoresearch (PYTHONPATH=OTHER/src measures another version).

    python benchmarks/agent_tokens.py [--turns 8] [--output-tokens 1500] [--model claude-opus-5-5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from standin import StandIn, call, completion, message, tool_use  # noqa: E402

from autoresearch.agents import Context, create  # noqa: E402
from autoresearch.config import AgentSection  # noqa: E402
from autoresearch.costs import price_of  # noqa: E402
from autoresearch.records import Experiment, RunRecord, RunState, State  # noqa: E402
from autoresearch.target import Target, init  # noqa: E402

CHARS_PER_TOKEN = 3.5


def history(n: int) -> tuple[Experiment, ...]:
    """A plausible tag's history: hypotheses of ~80 characters, diffs of ~12 lines, some crashes with logs."""
    out = [Experiment(id=1, tag="t", index=0, state=State.BASELINE, parent=None, commit="c0", description="baseline",
                      agent="harness", metric=2.40, runs=tuple(run(1, seed, 2.40) for seed in range(8)))]
    best = out[0]
    for i in range(1, n + 1):
        state = [State.DISCARDED, State.DISCARDED, State.KEPT, State.CRASHED, State.DISCARDED][i % 5]
        metric = None if state is State.CRASHED else best.metric + (-0.004 if state is State.KEPT else 0.006)
        diff = "--- a/train.py\n+++ b/train.py\n@@ -40,6 +40,6 @@\n" + "".join(
            f" context line {j}\n-MATRIX_LR = 0.0{j}  # old\n+MATRIX_LR = 0.0{j + 1}  # new\n" for j in range(4))
        runs = (RunRecord(i + 1, 0, RunState.CRASHED, None,
                          log_tail="step 100 | loss 2.31\n" * 60 + "RuntimeError: shape mismatch"),) if metric is None \
            else tuple(run(i + 1, seed, metric) for seed in range(2))
        judged = {} if metric is None else {"effect": best.metric - metric, "effect_se": 0.003, "margin": 0.002}
        e = Experiment(id=i + 1, tag="t", index=i, state=state, parent=best.commit, commit=f"c{i}",
                       description=f"experiment {i}: try a different warmdown ratio and a larger matrix learning rate",
                       agent="claude", diff=diff, lines_added=4, lines_removed=4, metric=metric,
                       reason="seed 0: train exited with code 1" if metric is None else "", runs=runs, **judged)
        out.append(e)
        best = e if state is State.KEPT else best
    return tuple(out)


def run(experiment_id: int, seed: int, metric: float) -> RunRecord:
    """A successful run of the built-in target at a 60 s budget: its log tail (progress, summary, evaluation)."""
    progress = "".join(f"step {60 * k + 1:5d} | {5.0 * k:5.1f}% | loss {metric + 2.5 - 0.12 * k:.4f} | lr x1.00 | "
                       f"41,230 tok/s\n" for k in range(21))
    summary = {"training_seconds": 60.0, "total_seconds": 63.2, "peak_memory_mb": 812.4, "mfu_percent": 0.0,
               "total_tokens_M": 2.47, "tokens_per_second": 41230, "flops_per_token": 2949888, "num_steps": 1204,
               "num_params_M": 0.459, "depth": 2, "train_loss": metric + 0.1}
    tail = progress + "---\n" + "".join(f"{k}: {v}\n" for k, v in summary.items()) + f"device: cpu\nval_bpb: {metric}\n"
    return RunRecord(experiment_id, seed, RunState.OK, metric, metrics={**summary, "val_bpb": metric},
                     log_tail=tail)


def with_services(context: Context, target: Target) -> Context:
    """The context a session gives, where this version of autoresearch has them: the protected files to read, the
    check and the note tools (never called here)."""
    names = {f.name for f in dataclasses.fields(Context)}
    if "check" not in names:
        return context
    protected = {p: (target.root / p).read_text() for p in target.config.files.protected if (target.root / p).exists()}
    return dataclasses.replace(context, read_only=protected, check=lambda writes, device: None, note=lambda text: None)


def measure(context: Context, model: str) -> list[dict]:
    script = [message(tool_use("read_file", path="train.py")), message(tool_use("view_memory", experiment=3)),
              message(tool_use("replace", path="train.py", old="SOFTCAP = 15.0", new="SOFTCAP = 20.0")),
              message(tool_use("finish", hypothesis="measure the prompt"))]
    os.environ.setdefault("ANTHROPIC_API_KEY", "measure")
    with StandIn(script) as server:
        create("claude", settings=AgentSection(base_url=server.url, model=model)).propose(context)
    sizes = []
    for request in server.requests:
        body = request.body
        prefix = len(json.dumps(body["tools"])) + len(json.dumps(body["system"])) + \
            len(body["messages"][0]["content"][0]["text"])
        sizes.append({"prefix": prefix, "total": len(json.dumps(body["tools"])) + len(json.dumps(body["system"]))
                      + len(json.dumps(body["messages"]))})
    return sizes


def estimate(sizes: list[dict], turns: int, output_tokens: int, model: str) -> float:
    """USD for one proposal of `turns` turns: the prefix written to the cache once (the cache's five minutes
    usually lapse while an experiment runs), each turn reading what came before from the cache and writing
    what is new; turns beyond the measured ones grow like the last measured one."""
    price = price_of(model)
    totals = [s["total"] / CHARS_PER_TOKEN for s in sizes]
    step = totals[-1] - totals[-2]
    while len(totals) < turns:
        totals.append(totals[-1] + step)
    cost, previous = 0.0, 0.0
    for total in totals[:turns]:
        cost += previous * price.cache_read + (total - previous) * price.cache_write + output_tokens * price.output
        previous = total + output_tokens
    return cost / 1e6


def first_openai_request(context: Context, window: int) -> dict:
    """The openai agent's first request with `context_tokens` = window, as a local server receives it."""
    settings = {"base_url": None, "model": "local", "max_retries": 0}
    if "context_tokens" in AgentSection.model_fields:
        settings["context_tokens"] = window
    script = [completion(calls=[call("finish", {"hypothesis": "measure"})])]
    os.environ.setdefault("OPENAI_API_KEY", "measure")
    with StandIn(script) as server:
        settings["base_url"] = server.url
        try:
            create("openai", settings=AgentSection(**settings)).propose(context)
        except Exception:  # nothing changed: finish is refused, and the script is over
            pass
    body = server.requests[0].body
    chars = len(json.dumps(body["messages"])) + len(json.dumps(body.get("tools", [])))
    return {"chars": chars, "answer": body.get("max_tokens") or body.get("max_completion_tokens")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8, help="tool turns a real model takes per proposal (assumed)")
    parser.add_argument("--output-tokens", type=int, default=1500, help="output tokens per turn, thinking included")
    parser.add_argument("--model", default="claude-opus-5-5")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        target = Target.open(init(Path(directory) / "gpt", "gpt"))
        files = {"train.py": (target.root / "train.py").read_text()}
        print(f"model {args.model}; {args.turns} turns of {args.output_tokens} output tokens assumed; "
              f"tokens = characters / {CHARS_PER_TOKEN}")
        print("experiments  prefix chars  first request chars  last request chars  est. USD/proposal  "
              "USD/night (1-min runs, 5-min runs)")
        for n in (10, 100, 1000):
            past = history(n)
            best = [e for e in past if e.state in (State.BASELINE, State.KEPT)][-1]
            context = with_services(Context(target.config, target.program(), files, best, past[0], past), target)
            sizes = measure(context, args.model)
            usd = estimate(sizes, args.turns, args.output_tokens, args.model)
            night = [usd * 8 * 60 / minutes for minutes in (1.5, 5.5)]  # run + evaluation + proposal
            print(f"{n:>11}  {sizes[0]['prefix']:>12,}  {sizes[0]['total']:>19,}  {sizes[-1]['total']:>18,}  "
                  f"{usd:>17.3f}  ${night[0]:.0f}, ${night[1]:.0f}")
        print("\nopenai agent, first request, 1,000 experiments (prompt tokens estimated at 3.0 characters per token)")
        print("context_tokens  request chars  est. prompt tokens  answer asked (max_tokens)  fits")
        for window in (8192, 32768):
            first = first_openai_request(context, window)
            tokens = first["chars"] / 3.0
            print(f"{window:>14,}  {first['chars']:>13,}  {tokens:>18,.0f}  {first['answer']:>25,}  "
                  f"{'yes' if tokens + first['answer'] <= window else 'NO'}")


if __name__ == "__main__":
    main()
