"""Transfer: the kept changes at a larger scale, end to end on a toy whose optimum moves with its scale
(transfer_toy.py: the change LR 1 -> 3 helps at every scale, WIDTH 4 -> 8 only at the session's). Each test asserts
what the ledger and git record, and the views (status, the report, the dashboard's JSON) what they show of it.
"""

import json
import re
import shutil

import pytest
from fastapi.testclient import TestClient

from autoresearch.config import ConfigError, TransferSection, load
from autoresearch.ledger import Ledger
from autoresearch.records import RunRecord, RunState
from autoresearch.serve import create_app
from autoresearch.target import Target
from autoresearch.transfer import fit
from toy import run_cli
from transfer_toy import CONFIG, KNOB, LR, LR_AGAIN, WIDTH, build, build_transferred, research


def transfers(toy):
    return toy._read(lambda ledger: ledger.transfers("t"))


def rows(record):
    return {row["label"]: row for row in record["summary"]["rows"]}


@pytest.fixture(scope="module")
def transferred(tmp_path_factory):
    return build_transferred(tmp_path_factory.mktemp("transferred"))


def test_a_change_that_helps_only_at_small_scale_is_shown_as_not_transferring(transferred):
    toy, result = transferred
    kept = [e for e in toy.experiments() if e.state.value == "kept"]
    assert [e.description for e in kept] == ["LR to 3", "WIDTH to 8"]
    (record,) = transfers(toy)
    assert record["finished_at"] is not None and record["session_id"] == toy.sessions()[-1]["id"]
    plan = record["settings"]
    assert plan["scale"] == ["size=+1"] and plan["budgets"] == {"small": "1s", "large": "3s"}
    assert [v["name"] for v in plan["variants"]] == ["baseline", "best", "without #1", "without #2"]
    assert plan["seeds"] == [0, 1, 2] and plan["planned"] == 24 == len(record["runs"])
    assert all(r["state"] == "ok" and r["split"] == "test" for r in record["runs"])
    assert {r["budget"] for r in record["runs"] if r["scale"] == "large"} == {"3s"}
    # seed by seed, each variant at both scales
    assert [(r["seed"], r["scale"], r["variant"]) for r in record["runs"][:8]] == [
        (0, scale, name) for scale in ("small", "large") for name in ("baseline", "best", "without #1", "without #2")]

    table = rows(record)
    chain, lr, width = table["whole chain (#0 -> #2)"], table["#1"], table["#2"]
    assert lr["small"]["effect"] == pytest.approx(4.0, abs=0.05) and lr["large"]["effect"] == pytest.approx(4.0, abs=0.05)
    assert lr["verdict"] == "transfers" and lr["large"]["ci"][0] > 0
    assert width["small"]["effect"] == pytest.approx(0.4, abs=0.05) and width["small"]["ci"][0] > 0
    assert width["large"]["effect"] == pytest.approx(-0.4, abs=0.05) and width["large"]["ci"][1] < 0
    assert width["verdict"] == "does not"
    assert chain["large"]["effect"] == pytest.approx(3.6, abs=0.05) and chain["verdict"] == "transfers"

    # the ablations and the scaled code are what they claim, and stay reachable
    without_width = toy.resolve("refs/autoresearch/t/transfer/1/without-2")
    assert toy.git("show", f"{without_width}:train.py").count("WIDTH = 4") == 1
    assert "LR = 3.0" in toy.git("show", f"{without_width}:train.py")
    large_best = toy.resolve("refs/autoresearch/t/transfer/1/best-large")
    assert "SIZE = 2" in toy.git("show", f"{large_best}:train.py")
    assert toy.branch() == toy.best().commit == kept[-1].commit  # the research line is untouched
    assert "does not" in result.out and "transfer #1" in result.out


VERDICTS = {"whole chain (#0 -> #2)": "transfers", "#1": "transfers", "#2": "does not"}


def shown_verdicts(table):
    return {row["label"]: row["verdict"] for row in table["rows"]}


def test_status_the_report_and_the_dashboard_show_the_transfer_table(transferred, tmp_path):
    toy, _ = transferred
    result = run_cli("status", "-C", toy.root, "--json")
    assert result.code == 0, result.text
    (table,) = json.loads(result.out)["transfers"]
    assert shown_verdicts(table) == VERDICTS and table["finished"] and table["runs"] == table["planned"] == 24
    width = next(row for row in table["rows"] if row["label"] == "#2")
    assert width["small"]["effect"] == pytest.approx(0.4, abs=0.05)
    assert width["large"]["effect"] == pytest.approx(-0.4, abs=0.05) and width["large"]["ci"][1] < 0

    text = run_cli("status", "-C", toy.root).out
    assert "transfer #1 (score gain of the best, test split, paired seeds [0, 1, 2]" in text
    lines = {line.split()[0]: line for line in text.split("transfer #1", 1)[1].splitlines()[2:5]}
    assert lines["#1"].startswith("  #1 LR to 3") and lines["#1"].endswith(" transfers")
    assert lines["#2"].startswith("  #2 WIDTH to 8") and lines["#2"].endswith(" does not")
    assert "+0.4" in lines["#2"] and "-0.4" in lines["#2"]  # helps small, hurts large
    assert lines["whole"].endswith(" transfers")

    assert run_cli("report", "-C", toy.root, "--out", tmp_path / "report").code == 0
    page = (tmp_path / "report" / "report.html").read_text()
    section = page.split('<section id="transfer">', 1)[1].split("</section>", 1)[0]
    body = section.split('<table class="sortable transfer">', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]
    assert [(row[0], re.sub("<[^>]+>", "", row[4])) for row in cells] == [
        ("whole chain (#0 -&gt; #2)", "transfers"), ("#1", "transfers"), ("#2", "does not")]
    assert cells[2][2].startswith("+0.4") and cells[2][3].startswith("-0.4")
    assert "Transfer #1</h3>" in section and "size=+1 (3s)" in section

    client = TestClient(create_app(Target.open(toy.root)), base_url="http://127.0.0.1")
    summary = client.get("/api/summary").json()
    assert shown_verdicts(summary["transfer"]) == VERDICTS and summary["transfer"]["id"] == 1
    assert transfers(toy)[0]["summary"]["rows"] == table["rows"]  # the views only read it


def test_an_unfinished_transfer_shows_the_table_of_its_runs_so_far(transferred, tmp_path):
    """A transfer stopped after its first seed (written through the ledger's API, as the loop writes it): the views
    show what its runs say, marked unfinished, and the latest transfer is the one shown."""
    toy, _ = transferred
    root = tmp_path / "copy"
    shutil.copytree(toy.root, root)
    ledger = Ledger(Target.open(root).ledger_path)
    try:
        (finished,) = ledger.transfers("t")
        second = ledger.start_transfer("t", None, finished["settings"])
        for run in finished["runs"][:8]:  # seed 0, every variant at both scales
            record = RunRecord(experiment_id=0, seed=run["seed"], state=RunState(run["state"]), metric=run["metric"],
                               seconds=run["seconds"])
            ledger.add_transfer_run(second, run["scale"], run["variant"], run["commit"], run["split"], run["budget"],
                                    record)
    finally:
        ledger.close()
    status = json.loads(run_cli("status", "-C", root, "--json").out)
    assert [t["id"] for t in status["transfers"]] == [1, 2]
    latest = status["transfers"][-1]
    assert not latest["finished"] and latest["finished_at"] is None and latest["runs"] == 8
    # one seed: effects without intervals, so no verdict can be drawn yet
    assert shown_verdicts(latest) == {label: "unclear" for label in VERDICTS}
    width = next(row for row in latest["rows"] if row["label"] == "#2")
    assert width["large"]["effect"] == pytest.approx(-0.4, abs=0.05) and width["large"]["ci"] is None
    text = run_cli("status", "-C", root).out
    assert "transfer #2 (" in text and "8 of 24 runs, unfinished" in text and "1 earlier transfers" in text
    summary = TestClient(create_app(Target.open(root)), base_url="http://127.0.0.1").get("/api/summary").json()
    assert summary["transfer"]["id"] == 2 and not summary["transfer"]["finished"]


def test_the_runs_it_may_spend_leave_out_the_changes_with_the_smallest_gains(tmp_path):
    toy = build(tmp_path, at_end="false")
    research(toy, [LR, WIDTH])
    assert transfers(toy) == []  # at_end = false: only on request
    result = run_cli("transfer", "-C", toy.root, "--runs", "12")
    assert result.code == 0, result.text
    (record,) = transfers(toy)
    assert len(record["runs"]) == 12 and record["settings"]["seeds"] == [0, 1]
    assert [v["name"] for v in record["settings"]["variants"]] == ["baseline", "best", "without #1"]
    table = rows(record)
    assert table["#1"]["verdict"] == "transfers"
    assert table["#2"]["verdict"] == "not measured" and "over the budget of 12 runs" in table["#2"]["reason"]
    assert "not measured" in result.out


def test_fit_prefers_every_ablation_then_seeds():
    settings = TransferSection(scale=["depth=+2"], runs=24, seeds=3)
    assert fit(2, settings) == (3, 2)  # 4 variants x 2 scales x 3 seeds = 24
    assert fit(4, settings) == (2, 4)  # 6 variants at 2 seeds = 24
    assert fit(5, settings) == (2, 4)  # one left out
    assert fit(0, TransferSection(scale=["depth=+2"], runs=8)) == (2, 0)


def test_a_change_whose_lines_a_later_change_rewrote_cannot_be_taken_out_alone(tmp_path):
    toy = build(tmp_path)
    research(toy, [LR_AGAIN, LR, WIDTH])  # LR 1 -> 2, then 2 -> 3 on the same line
    (record,) = transfers(toy)
    table = rows(record)
    assert table["#1"]["verdict"] == "not measured" and "a later kept change rewrote" in table["#1"]["reason"]
    assert table["#2"]["verdict"] == "transfers"  # without it, LR is back at 2
    assert table["#2"]["large"]["effect"] == pytest.approx(1.0, abs=0.05)
    assert table["#3"]["verdict"] == "does not"
    assert not any(r["variant"] == "without #1" for r in record["runs"])


def test_a_single_kept_change_is_measured_against_the_baseline(tmp_path):
    toy = build(tmp_path, runs=8)
    research(toy, [WIDTH])
    (record,) = transfers(toy)
    assert [v["name"] for v in record["settings"]["variants"]] == ["baseline", "best"]  # without it is the baseline
    assert rows(record)["#1"]["versus"] == "baseline" and rows(record)["#1"]["verdict"] == "does not"
    assert len(record["runs"]) == 8


def test_runs_that_fail_at_the_larger_scale_are_recorded_and_the_verdict_is_unclear(tmp_path):
    toy = build(tmp_path, at_end="false")
    research(toy, [LR])
    result = run_cli("transfer", "-C", toy.root, "--scale", "size=+9", "--runs", "8")
    assert result.code == 0, result.text
    (record,) = transfers(toy)
    large = [r for r in record["runs"] if r["scale"] == "large"]
    assert len(large) == 4 and all(r["state"] == "crashed" for r in large)
    assert all(r["state"] == "ok" for r in record["runs"] if r["scale"] == "small")
    row = rows(record)["#1"]
    assert row["small"]["effect"] == pytest.approx(4.0, abs=0.05)
    assert row["large"]["effect"] is None and row["verdict"] == "unclear"


def test_nothing_kept_is_nothing_to_transfer(tmp_path):
    toy = build(tmp_path)
    research(toy, [{"description": "worse", "knobs": {"LR": 0.5}}])
    assert transfers(toy) == []
    result = run_cli("transfer", "-C", toy.root)
    assert result.code == 1 and "no kept change yet" in result.out


@pytest.mark.parametrize("table, message", [
    ('scale = ["depth+2"]', "transfer.scale: 'depth+2': expected NAME=+N"),
    ('scale = []', "transfer.scale: List should have at least 1 item"),
    ('scale = ["size=+1"]\nruns = 4', "transfer.runs: Input should be greater than or equal to 8"),
    ('scale = ["size=+1"]\nbudget = "a while"', "transfer.budget: budget 'a while' is not understood"),
    ('scale = ["size=+1"]\nseeds = 1', "transfer.seeds: Input should be greater than or equal to 2"),
    ('scale = ["size=+1"]\nrun = 3', "transfer.run: unknown key"),
])
def test_config_errors_name_the_file_the_key_and_what_was_expected(tmp_path, table, message):
    toy = build(tmp_path, transfer=False)
    (toy.root / "autoresearch.toml").write_text(CONFIG + KNOB + "\n[transfer]\n" + table + "\n")
    with pytest.raises(ConfigError) as error:
        load(toy.root)
    assert str(toy.root / "autoresearch.toml") in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("args, message", [
    ([], "no [transfer] table in autoresearch.toml and no --scale"),
    (["--scale", "nothing=+1"], "no editable file defines a constant NOTHING"),
    (["--scale", "size=+1", "--runs", "5"], "--runs: Input should be greater than or equal to 8"),
])
def test_transfer_command_bad_input_is_a_clear_error(tmp_path, args, message):
    toy = build(tmp_path, transfer=False)
    research(toy, [LR])
    result = run_cli("transfer", "-C", toy.root, *args)
    assert result.code == 2 and message in result.err, result.text
    assert transfers(toy) == []


def test_the_built_in_targets_transfer_example_is_a_valid_table(tmp_path):
    from autoresearch.target import init

    root = init(tmp_path / "gpt")
    text = (root / "autoresearch.toml").read_text()
    assert load(root).transfer is None  # off unless the user turns it on: it spends runs
    lines = text.split("# [transfer]", 1)[1].splitlines()[:4]
    (root / "autoresearch.toml").write_text(text + "\n[transfer]\n" + "\n".join(line[2:] for line in lines[1:]) + "\n")
    settings = load(root).transfer
    assert settings.scale == ["depth=+2"] and settings.budget == "180s" and settings.runs == 24 and settings.at_end
