"""What one claude proposal sends, measured, and what a night costs, estimated.

Runs the real claude agent (the anthropic SDK) on the built-in gpt target against a local
Messages API stand-in that plays a short scripted proposal (read the file, view one past
experiment, one edit, finish), with a synthetic ledger of 10, 100 and 1,000 past experiments. It measures
the characters of every request the SDK sends: the cached prefix (tools, system prompt,
program, current code) and the rest. Tokens are estimated at 3.5 characters per token; output
tokens and the number of tool turns of a real model are assumptions (flags), so the dollar
figures are estimates, not measurements.

    python benchmarks/agent_tokens.py [--turns 8] [--output-tokens 1500] [--model claude-opus-5-5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from standin import StandIn, message, tool_use  # noqa: E402

from autoresearch.agents import Context, create  # noqa: E402
from autoresearch.config import AgentSection  # noqa: E402
from autoresearch.costs import price_of  # noqa: E402
from autoresearch.records import Experiment, RunRecord, RunState, State  # noqa: E402
from autoresearch.target import Target, init  # noqa: E402

CHARS_PER_TOKEN = 3.5


def history(n: int) -> tuple[Experiment, ...]:
    """A plausible tag's history: hypotheses of ~80 characters, diffs of ~12 lines, some crashes with logs."""
    out = [Experiment(id=1, tag="t", index=0, state=State.BASELINE, parent=None, commit="c0", description="baseline",
                      agent="harness", metric=2.40)]
    best = out[0]
    for i in range(1, n + 1):
        state = [State.DISCARDED, State.DISCARDED, State.KEPT, State.CRASHED, State.DISCARDED][i % 5]
        metric = None if state is State.CRASHED else best.metric + (-0.004 if state is State.KEPT else 0.006)
        diff = "--- a/train.py\n+++ b/train.py\n@@ -40,6 +40,6 @@\n" + "".join(
            f" context line {j}\n-MATRIX_LR = 0.0{j}  # old\n+MATRIX_LR = 0.0{j + 1}  # new\n" for j in range(4))
        runs = (RunRecord(i + 1, 0, RunState.CRASHED if metric is None else RunState.OK, metric,
                          log_tail=("step 100 | loss 2.31\n" * 60 + "RuntimeError: shape mismatch") if metric is None
                          else ""),)
        e = Experiment(id=i + 1, tag="t", index=i, state=state, parent=best.commit, commit=f"c{i}",
                       description=f"experiment {i}: try a different warmdown ratio and a larger matrix learning rate",
                       agent="claude", diff=diff, lines_added=4, lines_removed=4, metric=metric,
                       reason="seed 0: train exited with code 1" if metric is None else "", runs=runs)
        out.append(e)
        best = e if state is State.KEPT else best
    return tuple(out)


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
            context = Context(target.config, target.program(), files, best, past[0], past)
            sizes = measure(context, args.model)
            usd = estimate(sizes, args.turns, args.output_tokens, args.model)
            night = [usd * 8 * 60 / minutes for minutes in (1.5, 5.5)]  # run + evaluation + proposal
            print(f"{n:>11}  {sizes[0]['prefix']:>12,}  {sizes[0]['total']:>19,}  {sizes[-1]['total']:>18,}  "
                  f"{usd:>17.3f}  ${night[0]:.0f}, ${night[1]:.0f}")


if __name__ == "__main__":
    main()
