"""The dashboard and the report in a real headless Chromium, driven by Playwright.

The browser is found by tests/chromium.py: AUTORESEARCH_CHROMIUM, a Chromium or Chrome on the system
(Debian's `chromium`), or Playwright's own; `make test` installs one where none is. Without one these
tests fail with a message saying how to install it (set AUTORESEARCH_SKIP_BROWSER=1 to skip them knowingly).
With AUTORESEARCH_SCREENSHOTS=DIR the screenshots are also written there (those in README.md and
docs/commands.md come from `AUTORESEARCH_SCREENSHOTS=docs/img pytest tests/test_browser.py`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import chromium
from autoresearch import control, observe
from autoresearch.records import State
from autoresearch.serve import create_app
from autoresearch.target import Target
from researched import build_researched
from toy import TAG, run_cli
from transfer_toy import build_transferred
from webserver import Server

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
POLL_MS = 200


def chromium_path() -> str:
    found = chromium.find()
    if found:
        return found
    if os.environ.get("AUTORESEARCH_SKIP_BROWSER") == "1":
        pytest.skip("no Chromium and AUTORESEARCH_SKIP_BROWSER=1: the browser tests did not run")
    pytest.fail("the browser tests need Chromium: `python tests/chromium.py --install` (which `make test` runs) "
                "installs one, or set AUTORESEARCH_CHROMIUM=/path/to/chrome (AUTORESEARCH_SKIP_BROWSER=1 skips "
                "these tests)", pytrace=False)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.evaluate("window.scrollTo(0, 0)")  # sticky table headers are drawn where the page was scrolled
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("AUTORESEARCH_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / name)
    assert path.stat().st_size > 10_000
    return path


@pytest.fixture(scope="module")
def researched(tmp_path_factory):
    return build_researched(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def server(researched):
    with Server(create_app(Target.open(researched.root))) as server:
        yield server


def rows(page) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all("#experiments tbody tr", "rs => rs.map(r => r.dataset.id)")]


def wait_rows(page, expected: list[int]) -> None:
    page.wait_for_function("ids => JSON.stringify(Array.from(document.querySelectorAll('#experiments tbody tr'))"
                           ".map(r => Number(r.dataset.id))) === JSON.stringify(ids)", arg=expected, timeout=10_000)


# ---------------------------------------------------------------------------- the dashboard


def test_dashboard_loads_without_errors_and_shows_chart_and_table(page, server, tmp_path):
    page.goto(f"{server.url}/?interval={POLL_MS}")
    wait_rows(page, list(range(8, -1, -1)))  # newest first
    assert page.locator("#chart svg .dot").count() == 9
    assert page.locator("#chart svg .best-line").count() == 1
    assert page.locator("#chart svg .dot.s-kept").count() == 2
    assert page.locator("#title").inner_text() == "autoresearch · toy · tag t"
    assert "ended" in page.locator("#session").inner_text()
    assert page.locator("#cards").inner_text().count("\n") > 5
    assert page.locator("#slots").inner_text().strip().startswith("cpu0")
    screenshot(page, tmp_path, "dashboard.png")
    assert page.errors == []


def test_dashboard_filters(page, server):
    page.goto(f"{server.url}/?interval={POLL_MS}")
    wait_rows(page, list(range(8, -1, -1)))
    page.select_option("#filter-state", "kept")
    wait_rows(page, [7, 1])
    page.select_option("#filter-agent", "harness")
    wait_rows(page, [])
    page.select_option("#filter-state", "")
    wait_rows(page, [0])
    page.select_option("#filter-agent", "")
    page.fill("#filter-q", "scorer")
    wait_rows(page, [5])
    assert page.errors == []


def test_diff_viewer_opens_on_a_click(page, server):
    page.goto(f"{server.url}/?interval={POLL_MS}")
    wait_rows(page, list(range(8, -1, -1)))
    assert page.locator("#detail").is_hidden()
    page.click("#experiments tbody tr[data-id='2']")
    page.wait_for_selector("#detail", state="visible")
    page.wait_for_function("document.querySelector('#diff').textContent.includes('+LR = 1.5')")
    assert page.locator("#detail-title").inner_text() == "#2 discarded: LR 1.5 instead"
    assert page.locator("#diff .add").count() == 1 and page.locator("#diff .del").count() == 1
    assert page.locator("#detail-runs tbody tr").count() == 3
    page.wait_for_function("document.querySelector('#log').textContent.includes('score: 3.6')")
    page.click("#chart svg .dot[data-id='7']")  # the chart's dots open the same viewer
    page.wait_for_function("document.querySelector('#diff').textContent.includes('+WIDTH = 8')")
    assert page.errors == []


def test_buttons_write_the_control_file(page, researched, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(researched.root, root)
    state = root / ".autoresearch"
    with Server(create_app(Target.open(root))) as server:
        page.goto(f"{server.url}/?interval={POLL_MS}")
        wait_rows(page, list(range(8, -1, -1)))
        page.click("#btn-pause")
        page.wait_for_function("document.querySelector('#control-note').textContent.startsWith('pause requested')")
        assert control.read(state)["command"] == "pause"
        page.click("#btn-resume")
        page.wait_for_function("document.querySelector('#control-note').textContent === ''")
        assert control.read(state)["command"] == "resume"
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#btn-stop")
        page.wait_for_function("document.querySelector('#control-note').textContent.startsWith('stop requested')")
        assert control.read(state)["command"] == "stop"
    assert page.errors == []


def test_a_running_then_finished_experiment_appears_without_a_reload(page, researched, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(researched.root, root)
    target = Target.open(root)
    with Server(create_app(target)) as server:
        page.goto(f"{server.url}/?interval={POLL_MS}")
        wait_rows(page, list(range(8, -1, -1)))
        ledger = observe.open_ledger(target)
        try:
            best = ledger.best(TAG)
            experiment = ledger.add_experiment(tag=TAG, session_id=None, state=State.RUNNING, parent=best.commit,
                                               commit=best.commit, description="deeper", agent="scripted")
            log = observe.run_dir(target, TAG, experiment.index) / "seed0" / "log.txt"
            log.parent.mkdir(parents=True)
            log.write_text("==> python train.py\nstep    30 |  60.0% | loss 1.7500 | lr x1.00 | 8,000 tok/s\n")
            page.wait_for_function("document.querySelector('#slots').textContent.includes('step 30')")
            assert "loss 1.75" in page.locator("#slots").inner_text()
            assert "8,000 tok/s" in page.locator("#slots").inner_text()
            page.wait_for_function("document.querySelector('#slots pre').textContent.includes('60.0%')")
            ledger.set_state(experiment.id, State.DISCARDED, metric=2.5, reason="does not beat 1.99", seconds=1.0)
        finally:
            ledger.close()
        wait_rows(page, list(range(9, -1, -1)))
        page.wait_for_selector("#experiments tbody tr.s-discarded[data-id='9']")
        assert page.locator("#chart svg .dot").count() == 10
        page.wait_for_function("document.querySelector('#slots').textContent.includes('idle')")
    assert page.errors == []


def test_token_in_the_page_address_is_passed_on(page, researched):
    with Server(create_app(Target.open(researched.root), token="tok")) as server:
        assert page.request.get(f"{server.url}/").status == 401
        assert page.request.get(f"{server.url}/api/summary").status == 401
        page.goto(f"{server.url}/?token=tok&interval={POLL_MS}")
        wait_rows(page, list(range(8, -1, -1)))
    assert page.errors == []


def test_dashboard_shows_the_latest_transfer_table(page, tmp_path_factory, tmp_path):
    """The transfer toy (transfer_toy.py): LR 1 -> 3 helps at both scales, WIDTH 4 -> 8 only at the small one."""
    toy, _ = build_transferred(tmp_path_factory.mktemp("transferred"))
    with Server(create_app(Target.open(toy.root))) as server:
        page.goto(f"{server.url}/?interval={POLL_MS}")
        page.wait_for_selector("#transfer-table tbody tr")
        assert page.locator("#transfer").is_visible()
        cells = page.eval_on_selector_all("#transfer-table tbody tr", "rs => rs.map(r => Array.from(r.cells, "
                                          "c => c.textContent))")
        assert [(row[0], row[4]) for row in cells] == [("whole chain (#0 -> #2)", "transfers"), ("#1", "transfers"),
                                                     ("#2", "does not")]
        assert cells[2][2].startswith("+0.4") and cells[2][3].startswith("-0.4") and "(3 pairs)" in cells[2][3]
        assert page.locator("#transfer-large").inner_text() == "large: size=+1 3s"
        assert page.locator("#transfer-table .v-does-not").count() == 1
        page.click("#transfer-table tbody tr[data-id='2']")  # a change's row opens its experiment
        page.wait_for_function("document.querySelector('#detail-title').textContent === '#2 kept: WIDTH to 8'")
        screenshot(page, tmp_path, "dashboard-transfer.png")
    assert page.errors == []


# ---------------------------------------------------------------------------- the report


def test_report_opens_offline_and_sorts(page, researched, tmp_path):
    out = tmp_path / "report"
    assert run_cli("report", "-C", researched.root, "--out", out).code == 0
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto((out / "report.html").as_uri())
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert page.evaluate("document.querySelector('img').naturalWidth") == 1200
    table = "table.all"
    first = f"{table} tbody tr:first-child td:first-child"
    assert page.locator(first).inner_text() == "#0"
    page.click(f"{table} th:nth-child(1)")  # ascending: already in order
    page.click(f"{table} th:nth-child(1)")  # descending
    assert page.locator(first).inner_text() == "#8"
    page.click(f"{table} th:nth-child(3)")  # by metric, ascending; no metric last
    assert page.locator(first).inner_text() == "#7"
    assert page.locator("details#diff-2 pre").is_hidden()
    page.click("details#diff-2 summary")
    assert page.locator("details#diff-2 pre").is_visible()
    page.click(f"{table} th:nth-child(1)")
    screenshot(page, tmp_path, "report.png")
    assert page.errors == []
