"""The built-in programs: `init --program NAME` end to end on the real GPT target, on the CPU.

Each program gets a tag with a scripted agent: a real change the judge keeps, and the
attack the program must survive. The test targets are the templates with a tiny model, a small
evaluation, one CPU thread (two threads are ten times slower on a busy 2-core machine) and a
quick judge, committed as the target's base; data is `stdlib` and `pydocs` (no download).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from autoresearch import trial
from autoresearch.target import Target
from jail import require_jail
from toy import quick_judge, run_cli

TINY = {"DEPTH": "1", "ASPECT": "64", "HEAD_DIM": "32", "SEQ_LEN": "32", "BATCH_SIZE": "8"}
TEMPLATES = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates"


def set_constants(path: Path, **values) -> None:
    source = path.read_text()
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", source, flags=re.MULTILINE)
        assert n == 1, f"no constant {name} in {path}"
    path.write_text(source)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def tiny_target(root: Path, program: str, budget: str, data: str, base: dict | None = None) -> Path:
    """`init --program`, shrunk for a test and committed (with `base`: {file: {CONSTANT: value}}), then prepared."""
    assert run_cli("init", root, "--program", program).code == 0
    set_constants(root / "train.py", **TINY)
    set_constants(root / "evaluate.py", EVAL_TOKENS='{"cpu": 2**12, "mps": 2**18, "cuda": 2**20}')
    if (root / "speedrun.py").exists():
        set_constants(root / "speedrun.py", CHECKPOINT_EVAL_TOKENS='{"cpu": 2**11, "mps": 2**16, "cuda": 2**18}')
    for name in ("train.py", "evaluate.py", "speedrun.py"):
        path = root / name
        if path.exists():
            path.write_text(path.read_text().replace('torch.set_num_threads(int(os.environ["AUTORESEARCH_THREADS"]))',
                                                     "torch.set_num_threads(1)"))
    for name, values in (base or {}).items():
        set_constants(root / name, **values)
    config = root / "autoresearch.toml"
    text = re.sub(r'^default = ".*"', f'default = "{budget}"', config.read_text(), flags=re.MULTILINE)
    text = (quick_judge(text).replace("[judge]\n", "[judge]\nimplausible = 1000\n")
            .replace("max_ratio = 1.5 ", "max_ratio = 20 ").replace("max_ratio = 1.25 ", "max_ratio = 20 "))
    config.write_text(text)  # a busy test machine: the wall-time constraint stays, loosely
    git(root, "commit", "-qam", "a tiny model, a quick judge")
    prepared = run_cli("prepare", "-C", root, "--data", data, "--max-bytes", "300k")
    assert prepared.code == 0, prepared.text
    return root


def research(root: Path, steps: list[dict], tag: str = "p") -> list[dict]:
    script = root.parent / f"script-{tag}.json"
    script.write_text(json.dumps(steps))
    result = run_cli("run", "-C", root, "--tag", tag, "--experiments", len(steps), "--agent", "scripted",
                     "--agent-option", f"script={script}")
    assert result.code == 0, result.text
    return status(root, tag)["experiments"]


def status(root: Path, tag: str = "p") -> dict:
    result = run_cli("status", "-C", root, "--json", "--tag", tag)
    assert result.code == 0, result.text
    return json.loads(result.out)


def edit(path: str, old: str, new: str) -> dict:
    return {"file": path, "old": old, "new": new}


# ---------------------------------------------------------------- init


@pytest.mark.parametrize("program, editable, protected", [
    ("train", ["train.py"], {"sampler.py", "evaluate.py", "prepare.py"}),
    ("data", ["sampler.py"], {"train.py", "evaluate.py", "prepare.py"}),
    ("synthetic", ["synthetic.py"], {"train.py", "sampler.py", "evaluate.py", "prepare.py"}),
    ("speedrun", ["train.py"], {"speedrun.py", "sampler.py", "evaluate.py", "prepare.py"}),
])
def test_each_program_is_a_complete_committed_target(tmp_path, program, editable, protected):
    from autoresearch.config import load

    root = tmp_path / program
    result = run_cli("init", root, "--program", program)
    assert result.code == 0, result.text
    config = load(root)
    assert config.files.editable == editable and protected <= set(config.files.protected)
    assert {"program.md", "autoresearch.toml"} <= set(config.files.protected)
    for path in [*editable, *protected, "program.md", ".gitignore"]:
        assert (root / path).is_file(), path
    assert git(root, "status", "--porcelain") == "" and "program" in (root / "program.md").read_text().lower()
    assert all(knob.file in editable for knob in config.knobs)


def test_programs_share_the_gpt_files_they_do_not_replace(tmp_path):
    for program in ("data", "synthetic", "speedrun"):
        root = tmp_path / program
        assert run_cli("init", root, "--program", program).code == 0
        assert (root / "train.py").read_text() == (TEMPLATES / "gpt" / "train.py").read_text()
        assert (root / "evaluate.py").read_text() == (TEMPLATES / "gpt" / "evaluate.py").read_text()
        assert (root / "program.md").read_text() != (TEMPLATES / "gpt" / "program.md").read_text()


def test_an_unknown_program_is_a_usage_error(tmp_path):
    result = run_cli("init", tmp_path / "x", "--program", "nope")
    assert result.code == 2 and "unknown program 'nope'" in result.err and "speedrun" in result.err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- data


@pytest.fixture(scope="module")
def data_program(tmp_path_factory):
    """Research on the data program from a deliberate bad start: training on the code alone, validated on an
    equal mix of code and prose."""
    root = tiny_target(tmp_path_factory.mktemp("data") / "research", "data", "30steps", "stdlib:1,pydocs:1",
                       base={"sampler.py": {"WEIGHTS": '{"pydocs": 0.0}'}})
    peek = edit("sampler.py", "    rng = np.random.default_rng(seed)\n",
                "    rng = np.random.default_rng(seed)\n"
                "    try:  # train on the validation prose as well, if it can be read\n"
                "        tokens = np.concatenate([tokens, np.fromfile(os.path.join(data_dir, '..', 'val.pydocs.bin'),"
                " dtype=np.uint16)])\n"
                "    except OSError as error:\n"
                "        print('could not peek:', error)\n")
    experiments = research(root, [
        {"description": "mix the prose in", "replace": [edit("sampler.py", 'WEIGHTS = {"pydocs": 0.0}', "WEIGHTS = {}")]},
        {"description": "peek at the validation prose", "replace": [peek]},
    ])
    return root, experiments


@pytest.mark.slow
def test_data_a_better_mixture_is_kept(data_program):
    root, experiments = data_program
    baseline, mixed = experiments[0], experiments[1]
    assert mixed["state"] == "kept" and mixed["metric"] < baseline["metric"] - 0.05, mixed
    assert git(root, "show", "autoresearch/p:sampler.py").count("WEIGHTS = {}") == 1


@pytest.mark.slow
def test_data_val_bpb_is_the_mix_of_each_sources_bits_per_byte(data_program):
    root, experiments = data_program
    run = experiments[1]["runs"][0]
    metrics = json.loads(Path(run["log"]).with_name("out").joinpath("metrics.json").read_text())
    assert metrics["val_bpb"] == pytest.approx((metrics["val_bpb_stdlib"] + metrics["val_bpb_pydocs"]) / 2)
    log = Path(run["log"]).read_text()
    assert "sampler: stdlib" in log and "pydocs" in log  # the mixture it trained on


@pytest.mark.slow
def test_data_the_sampler_cannot_read_the_validation_mix(data_program):
    root, experiments = data_program
    cheat = experiments[2]
    assert cheat["state"] == "rejected" and cheat["metric"] is None
    assert "tried to read held-out data" in cheat["reason"] and "val.pydocs.bin" in cheat["reason"]
    assert status(root)["best"]["id"] == 1  # nothing it did counts
    assert any(flag["index"] == 2 and flag["kind"] == "guard" for flag in status(root)["flags"])


@pytest.mark.slow
def test_data_a_read_around_the_guard_gets_nothing_in_the_sandbox(data_program):
    """The guard sees Python's own file opens; a subprocess reads around it. Only the sandbox stops that."""
    require_jail()  # a subprocess reads what the in-process guard cannot see: the jail is what stops it
    root, _ = data_program
    cat = edit("sampler.py", "    rng = np.random.default_rng(seed)\n",
               "    rng = np.random.default_rng(seed)\n"
               "    import subprocess\n"
               "    peeked = subprocess.run(['cat', os.path.join(data_dir, '..', 'val.pydocs.bin')],\n"
               "                            capture_output=True).stdout\n"
               "    print(f'peeked {len(peeked)} bytes')\n"
               "    if len(peeked) > 2:\n"
               "        tokens = np.concatenate([tokens, np.frombuffer(peeked[:len(peeked) // 2 * 2], np.uint16)])\n")
    experiments = research(root, [{"description": "peek through cat", "replace": [cat]}], tag="cat")
    cheat = experiments[-1]
    log = Path(cheat["runs"][0]["log"]).read_text()
    assert "peeked 0 bytes" in log or cheat["state"] in ("crashed", "rejected"), log[-2000:]
    assert cheat["state"] != "kept"


# ---------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synthetic_program(tmp_path_factory):
    """Research on the synthetic program from a deliberate bad start: half the training rows synthetic."""
    root = tiny_target(tmp_path_factory.mktemp("synthetic") / "research", "synthetic", "30steps", "stdlib",
                       base={"synthetic.py": {"RATIO": "0.5"}})
    experiments = research(root, [
        {"description": "a smaller share of synthetic text", "knobs": {"RATIO": 0.05}},
        {"description": "imitate the validation text", "replace": [edit(
            "synthetic.py", "def generate(rng):\n",
            "def generate(rng):\n    import os\n"
            "    return open(os.path.join(os.environ['AUTORESEARCH_DATA'], '..', 'val.bin'), errors='replace').read()\n")]},
    ])
    return root, experiments


@pytest.mark.slow
def test_synthetic_a_better_ratio_is_kept_and_generation_runs_inside_training(synthetic_program):
    root, experiments = synthetic_program
    baseline, better = experiments[0], experiments[1]
    assert better["state"] == "kept" and better["metric"] < baseline["metric"], better
    log = Path(better["runs"][0]["log"]).read_text()
    train_part = log.split("==> python evaluate.py")[0]
    assert "sampler: 5.0% of the rows synthetic" in train_part and "synthetic documents" in train_part


@pytest.mark.slow
def test_synthetic_the_generator_cannot_read_the_validation_text(synthetic_program):
    root, experiments = synthetic_program
    cheat = experiments[2]
    assert cheat["state"] == "rejected" and "tried to read held-out data" in cheat["reason"]
    assert status(root)["best"]["id"] == 1


@pytest.mark.slow
def test_synthetic_declares_the_wall_time_constraint(synthetic_program):
    root, _ = synthetic_program
    constraints = status(root)["constraints"]
    assert [c["metric"] for c in constraints] == ["run_seconds"] and constraints[0]["baseline"] > 0


# ---------------------------------------------------------------- speedrun


@pytest.fixture(scope="module")
def speedrun_program(tmp_path_factory):
    """A speedrun from a deliberately slow start (learning rates 40x too low): the target is its val_bpb after 8k
    tokens; the tuned rates get there much sooner."""
    slow = {"MATRIX_LR": "0.001", "EMBEDDING_LR": "0.01", "UNEMBEDDING_LR": "0.0004"}
    root = tiny_target(tmp_path_factory.mktemp("speedrun") / "research", "speedrun", "8ktok", "stdlib",
                       base={"train.py": slow})
    claim = edit("train.py", '    print("---")\n',
                 '    print("---")\n    print("tokens_to_target: 1.0")\n'
                 '    json.dump({"tokens_to_target": 1.0}, open(os.path.join(out_dir, "metrics.json"), "w"))\n')
    final = '    save("model.pt")\n'
    overwrite = edit("train.py", final, '    save("checkpoint-001.pt")  # the final weights, under the first name\n' + final)
    late = [edit("train.py", '            save(f"checkpoint-{saved:03d}.pt")',
                 '            if saved > 1:\n                save(f"checkpoint-{saved:03d}.pt")'), overwrite]
    experiments = research(root, [
        {"description": "tuned learning rates", "knobs": {"MATRIX_LR": 0.04, "EMBEDDING_LR": 0.3,
                                                          "UNEMBEDDING_LR": 0.004}},
        {"description": "claim a record", "replace": [claim]},
        {"description": "overwrite the first checkpoint with the final weights", "replace": [overwrite]},
        {"description": "save the first checkpoint at the end, with the final weights", "replace": late},
    ])
    return root, experiments


@pytest.mark.slow
def test_speedrun_prepare_sets_the_target_from_the_baseline(speedrun_program):
    root, experiments = speedrun_program
    target = json.loads((root / ".autoresearch" / "data" / "speedrun.json").read_text())
    assert target["key"]["horizon_tokens"] == 8000 and set(target["targets"]["cpu"]) == {"val", "test"}
    baseline = experiments[0]
    seed0 = json.loads(Path(baseline["runs"][0]["log"]).with_name("out").joinpath("metrics.json").read_text())
    assert seed0["target_bpb"] == target["targets"]["cpu"]["val"]
    assert seed0["tokens_to_target"] == pytest.approx(8000) and seed0["reached"] == 1  # the baseline, at the end


@pytest.mark.slow
def test_speedrun_a_faster_learner_is_kept(speedrun_program):
    root, experiments = speedrun_program
    faster = experiments[1]
    assert faster["state"] == "kept" and faster["metric"] < 0.5 * experiments[0]["metric"], faster
    log = Path(faster["runs"][0]["log"]).read_text()
    assert "checkpoint   1/10" in log and "checkpoint  10/10" not in log  # scored until it got there


@pytest.mark.slow
def test_speedrun_the_score_comes_from_the_evaluator_not_the_training_script(speedrun_program):
    root, experiments = speedrun_program
    claim = experiments[2]
    assert claim["metric"] != 1.0 and claim["state"] == "discarded"
    measured = json.loads(Path(claim["runs"][0]["log"]).with_name("out").joinpath("metrics.json").read_text())
    assert measured["tokens_to_target"] == claim["runs"][0]["metric"] > 1.0  # the evaluator's number
    kinds = {flag["kind"] for flag in status(root)["flags"] if flag["index"] == 2}
    assert kinds == {"metric"}  # the claim on stdout and the metrics.json it wrote: both noticed, both ignored


@pytest.mark.slow
@pytest.mark.parametrize("index, words", [(3, "checkpoint-001.pt was rewritten after it appeared"),
                                          (4, "checkpoint-002.pt appeared before checkpoint-001.pt")])
def test_speedrun_a_checkpoint_that_is_not_what_it_claims_is_rejected(speedrun_program, index, words):
    """Later weights under an early checkpoint's name: the harness copied each checkpoint as it appeared and saw
    when; the evaluator rejects the run before scoring anything."""
    root, experiments = speedrun_program
    lie = experiments[index]
    assert lie["state"] == "rejected", lie["reason"]
    assert "not what it claims to be" in lie["reason"] and words in lie["reason"]
    log = Path(lie["runs"][0]["log"]).read_text()
    assert "checkpoint   1/10" not in log  # not scored at all
    snapshots = json.loads(Path(lie["runs"][0]["log"]).with_name("snapshots").joinpath("snapshots.json").read_text())
    assert [f["name"] for f in snapshots["files"]][-1] == "checkpoint-010.pt" or index == 4
    assert any(flag["index"] == index and flag["kind"] == "evaluator" for flag in status(root)["flags"])



@pytest.mark.slow
def test_speedrun_the_agents_check_runs_the_edited_code_at_a_token_budget(speedrun_program):
    """The LLM agents' check tool tries edited code at a tiny budget; the speedrun refuses any budget but tokens,
    so the check gives it tokens (at a step budget every check failed with "give the run a token budget")."""
    root, _ = speedrun_program
    target = Target.open(root)
    head = git(root, "rev-parse", "HEAD").strip()
    ok = trial.check(target, head, {})
    assert ok.ok, ok.log_tail
    assert ok.budget == "8192tok" and "tokens_per_second" in ok.figures
    broken = trial.check(target, head, {"train.py": "raise SystemExit('a broken edit')\n"})
    assert not broken.ok and "a broken edit" in broken.log_tail

@pytest.mark.parametrize("seen, words", [
    ({k: k + 0.5 for k in range(1, 11)}, None),                                # one per second after a start-up
    ({k: 0.5 + k / 10 for k in range(1, 11)}, None),                           # a test's run: 1 s, after 0.5 s
    ({**{k: k + 0.5 for k in range(1, 11)}, 1: 10.6}, "appeared before"),      # the first one saved last
    ({k: 60 + k * 0.2 for k in range(1, 11)}, "only at the end of training"),  # all of them after training
    ({**{k: k + 0.5 for k in (1, 2, 3, 10)}, **{k: 8.2 + k / 10 for k in range(4, 10)}},
     "checkpoint-004.pt appeared at 8.6s"),                                     # later weights under 4 to 9
])
def test_speedrun_checkpoints_must_appear_in_order_and_at_the_pace_of_training(seen, words):
    speedrun = load_speedrun()
    names = [f"checkpoint-{k:03d}.pt" for k in range(1, 11)]
    problem = speedrun.lie({f"checkpoint-{k:03d}.pt": {"seconds": t, "changed": None} for k, t in seen.items()}, names)
    assert problem is None if words is None else words in problem
    rewritten = {name: {"seconds": 1.0, "changed": None} for name in names}
    rewritten["checkpoint-004.pt"]["changed"] = "deleted"
    assert "checkpoint-004.pt was deleted" in speedrun.lie(rewritten, names)


def load_speedrun():
    spec = importlib.util.spec_from_file_location("speedrun_protocol", TEMPLATES / "programs" / "speedrun" / "speedrun.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speedrun_interpolates_between_checkpoints_and_scores_a_miss_above_the_budget():
    speedrun = load_speedrun()
    curve = [(0.1, 5.0), (0.2, 4.0), (0.3, 3.0)]
    assert speedrun.tokens_to_target(curve, 3.5, 1000) == (pytest.approx(250), True)
    assert speedrun.tokens_to_target(curve, 5.5, 1000) == (pytest.approx(100), True)
    assert speedrun.tokens_to_target(curve, 2.0, 1000) == (pytest.approx(1500), False)  # 1000 * 3.0 / 2.0
    assert speedrun.tokens_to_target([(0.1, float("inf")), (0.2, 3.0)], 3.5, 1000) == (pytest.approx(200), True)
