"""End-to-end test of the dashboard in a real browser.

``genai-audit dashboard`` serves a store of demo-like audits on 127.0.0.1 (a free port); Debian's
headless Chromium, driven by Playwright, opens the list, clicks into an audit, compares two
releases, follows deep links to the trend and failures views, and checks what is rendered,
including that hostile text from reports shows as text and never runs.

Screenshots are kept as test artefacts in ``$GENAI_AUDIT_ARTEFACTS`` (or a temporary folder).
With ``GENAI_AUDIT_UPDATE_DOCS=1`` the scorecard screenshot also replaces ``docs/dashboard.png``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.dashboard_support import CLASSIFIER, demo_reports, fill_store
from tests.report_factory import CRASHED_PROBE, HOSTILE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
UI_TIMEOUT_MS = 30_000
expect.set_options(timeout=UI_TIMEOUT_MS)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"Debian's chromium is not installed ({CHROMIUM} missing); "
                       "apt-get install chromium"),
]

V2, V3 = "digits-cnn-v2", f"{HOSTILE}digits-cnn-v3"


# -- fixtures -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = os.environ.get("GENAI_AUDIT_ARTEFACTS")
    path = Path(folder) / "dashboard" if folder else tmp_path_factory.mktemp("dashboard-artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    from audit.store import ReportStore

    root = tmp_path_factory.mktemp("dashboard-store")
    db = root / "store" / "audits.db"
    reports = demo_reports(hostile=True)
    with ReportStore(db) as store:
        # Report files for one run (served from the store's folder); the others are rendered
        # on demand, and writing seven HTML reports would only slow the test down.
        fill_store(store, [r for r in reports if r.name == V2], files_in=root / "runs")
        fill_store(store, [r for r in reports if r.name != V2], files_in=None)
    return db


@pytest.fixture(scope="module")
def server(demo_store, artefacts):
    """``genai-audit dashboard`` on a free loopback port; always stopped, within bounded time."""
    port = _free_port()
    log = (artefacts / "server.log").open("wb")
    env = dict(os.environ, HOME=str(demo_store.parent), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit", "dashboard", "--store", str(demo_store), "--port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the dashboard exited with {proc.returncode}; see {artefacts / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not answer within {START_TIMEOUT_S} s; see {artefacts / 'server.log'}")
            time.sleep(0.25)
        yield base
    finally:
        # The session holds the CLI and the Streamlit process it started: stop both.
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, request, artefacts):
    """A fresh page that records dialogs (a hostile script would open one) and page errors."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    pg.dialogs, pg.errors = [], []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    try:
        yield pg
    finally:
        # The last state of every test, passed or failed, for whoever reads the artefacts.
        try:
            pg.screenshot(path=str(artefacts / f"{request.node.name}-last.png"))
        finally:
            context.close()


# -- helpers --------------------------------------------------------------------------------


def _cells(pg, table: int | None = None, *, until=None) -> list[str]:
    """The text of the cells of the dataframes on the page (the grid draws on a canvas; these
    are its accessible, off-screen cells, which follow a rerun a moment later: ``until`` is a
    predicate on the cells to wait for)."""
    frames = pg.get_by_test_id("stDataFrame")
    scope = frames if table is None else frames.nth(table)
    scope.first.locator("[role='gridcell']").first.wait_for(state="attached")
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        cells = [c.strip() for c in scope.locator("[role='gridcell']").all_text_contents()]
        if until is None or until(cells) or time.monotonic() > deadline:
            return cells
        time.sleep(0.2)


def _list_cells(pg, *, until=None) -> list[str]:
    """The text of the cells of the audit list (a Markdown table); ``until``: as for :func:`_cells`."""
    cells = pg.locator(".st-key-audit_list table td")
    cells.first.wait_for()
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        texts = [c.strip() for c in cells.all_text_contents()]
        if until is None or until(texts) or time.monotonic() > deadline:
            return texts
        time.sleep(0.2)


def _counts(pg):
    """The line of counts above the list (a locator: ``expect`` waits for a rerun)."""
    return pg.locator(".st-key-audit_counts [data-testid='stMarkdown']")


def _choose(pg, label: str, text: str) -> None:
    """Pick the option containing ``text`` in the selectbox labelled ``label``."""
    pg.get_by_role("combobox", name=label, exact=True).click()
    pg.keyboard.type(text)
    pg.get_by_role("option", name=re.compile(re.escape(text))).first.click()
    expect(pg.get_by_role("combobox", name=label, exact=True)).to_have_value(re.compile(re.escape(text)))


def _metric(pg, label: str):
    """The value of the metric labelled ``label`` (a locator: ``expect`` waits for a rerun)."""
    metric = pg.get_by_test_id("stMetric").filter(has=pg.get_by_text(label, exact=True))
    return metric.get_by_test_id("stMetricValue")


def _charts_drawn(pg, at_least: int) -> int:
    charts = pg.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg.marks")
    charts.nth(at_least - 1).wait_for(state="attached")
    return charts.count()


def _no_script_ran(pg) -> None:
    assert pg.dialogs == [], f"a dialog opened: {pg.dialogs}"
    assert pg.locator("script", has_text="alert(1)").count() == 0
    assert not any("alert" in e for e in pg.errors), pg.errors


# -- tests ----------------------------------------------------------------------------------


def test_list_then_click_into_an_audit(server, page, artefacts):
    page.goto(server + "/")
    page.get_by_role("heading", name="Audits", exact=True).wait_for()
    cells = _list_cells(page, until=lambda c: "dcgan-r1" in c)
    for name in ("digits-cnn-v1", V2, V3, "dcgan-r1", "smollm2-release-candidate"):
        assert name in cells, name  # V3's name is hostile HTML, shown as text
    assert len(cells) == 7 * 8  # seven audits, eight columns: no name split a row or added a cell
    expect(_counts(page)).to_have_text("7 audits: 5 passed · 1 failed · 1 crashed")
    # The statuses are coloured (markup of the dashboard, never of a report).
    expect(page.locator(".st-key-audit_list table td span", has_text="failed")).to_have_count(1)
    # The list is drawn before the widgets' own scripts have loaded: wait for them, for the picture.
    expect(page.get_by_role("button", name="Compare with previous")).to_be_visible()
    page.screenshot(path=str(artefacts / "list.png"))

    # Filter by model: the list, the counts, the URL and the picker follow.
    _choose(page, "Model", CLASSIFIER)
    expect(_counts(page)).to_have_text(re.compile(r"^3 audits: "))
    expect(page).to_have_url(re.compile(rf"[?&]model={CLASSIFIER}"))
    cells = _list_cells(page, until=lambda c: V2 in c and "dcgan-r1" not in c)
    assert "dcgan-r1" not in cells and V2 in cells
    expect(page.get_by_role("combobox", name="Audit", exact=True)).to_have_value(re.compile(re.escape(V3)))

    # Click into an audit.
    _choose(page, "Audit", V2)
    page.get_by_role("button", name="Open scorecard").click()
    page.get_by_role("heading", name=V2, exact=True).wait_for()
    expect(page).to_have_url(re.compile(r"view=Scorecard.*run=digits02|run=digits02.*view=Scorecard"))
    expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="PASSED")).to_have_count(1)
    expect(_metric(page, "Findings")).to_have_text("11")
    gates = _cells(page, table=0, until=lambda c: "passed" in c)
    assert "robustness.pgd/robust_accuracy[eps=8/255]" in gates
    findings = _cells(page, table=1, until=lambda c: "acme.watermark" in c)
    # Findings of a probe the dashboard knows nothing about are in the table too.
    assert "watermark_recall" in findings
    for probe in ("robustness.pgd", "bias.classifier", "energy.inference", "acme.watermark"):
        page.get_by_role("heading", name=f"{probe} · ok").wait_for()
    # Robust accuracy versus eps, per-group bars (eps and groups), values with intervals, energy.
    assert _charts_drawn(page, at_least=6) >= 6
    # Streamlit scrolls an inner element, so a full-page screenshot needs a tall viewport.
    page.set_viewport_size({"width": 1600, "height": 3600})
    _charts_drawn(page, at_least=6)
    page.screenshot(path=str(artefacts / "scorecard.png"))
    if os.environ.get("GENAI_AUDIT_UPDATE_DOCS") == "1":  # the README's picture
        page.set_viewport_size({"width": 1280, "height": 1900})
        page.get_by_role("heading", name=V2, exact=True).scroll_into_view_if_needed()
        _charts_drawn(page, at_least=6)
        page.wait_for_timeout(1000)  # let Vega finish its transitions
        page.screenshot(path=str(REPO / "docs" / "dashboard.png"))
    page.set_viewport_size({"width": 1600, "height": 1000})

    # Take the report away: the stored copy of report.json.
    with page.expect_download() as download:
        page.get_by_role("button", name="JSON").click()
    saved = artefacts / "downloaded-report.json"
    download.value.save_as(saved)
    assert json.loads(saved.read_text(encoding="utf-8"))["run_id"].startswith("digits02")
    _no_script_ran(page)


def test_compare_two_audits_then_failures(server, page, artefacts):
    page.goto(server + "/?view=Compare")
    page.get_by_role("heading", name="Compare two audits").wait_for()
    _choose(page, "Candidate", "digits-cnn-v3")
    # The baseline follows: the previous audit of the same model.
    expect(page.get_by_role("combobox", name="Baseline", exact=True)).to_have_value(re.compile(re.escape(V2)))
    expect(_metric(page, "Worse, beyond CIs")).to_have_text("1")
    _cells(page, until=lambda c: "yes" in c)
    # The grid's accessible rows: the regression is worse, and beyond the intervals.
    row = page.get_by_test_id("stDataFrame").locator("[role='row']").filter(
        has_text="robustness.pgd/robust_accuracy[eps=8/255]"
    )
    cells = [c.strip() for c in row.locator("[role='gridcell']").all_text_contents()]
    assert cells[0] == "robustness.pgd/robust_accuracy[eps=8/255]" and cells[-2:] == ["worse", "yes"], cells
    page.screenshot(path=str(artefacts / "compare.png"), full_page=True)

    page.get_by_text("Only changes beyond the intervals").click()
    cells = _cells(page, until=lambda c: "robustness.pgd/robust_accuracy[eps=0/255]" not in c)
    assert [c for c in cells if c.startswith("robustness.pgd/")] == ["robustness.pgd/robust_accuracy[eps=8/255]"]

    page.get_by_test_id("stSidebar").get_by_text("Failures", exact=True).click()
    page.get_by_role("heading", name="Probe failures").wait_for()
    assert CRASHED_PROBE in _cells(page, until=lambda c: CRASHED_PROBE in c)
    page.screenshot(path=str(artefacts / "failures.png"))
    _no_script_ran(page)


def test_links_to_a_hostile_audit_and_a_trend(server, page, artefacts):
    page.goto(server + "/?view=Scorecard&run=digits03x" + "0" * 20)
    page.get_by_role("heading", name=V3, exact=True).wait_for()  # the script tag, as text
    assert _charts_drawn(page, at_least=6) >= 6
    expect(page.get_by_test_id("stAlertContentError").filter(has_text="FAILED")).to_have_count(1)
    page.screenshot(path=str(artefacts / "hostile.png"))
    _no_script_ran(page)

    metric = "robustness.pgd/robust_accuracy[eps=8/255]"
    page.goto(f"{server}/?view=Trend&trend_model={CLASSIFIER}&metric={urllib.parse.quote(metric)}")
    page.get_by_role("heading", name="Trend of a metric").wait_for()
    assert _charts_drawn(page, at_least=1) >= 1
    cells = _cells(page, until=lambda c: any(x.startswith("digits") for x in c))
    assert [c for c in cells if c.startswith("digits")] == [
        "digits0100000000000000000000", "digits0200000000000000000000", "digits03x00000000000000000000",
    ]  # fmt: skip
    page.screenshot(path=str(artefacts / "trend.png"))
    _no_script_ran(page)
