"""End-to-end test of the dashboard in a real browser.

``genai-audit dashboard`` serves a store of demo-like audits on 127.0.0.1 (a free port; one
server for the module); Debian's headless Chromium, driven by Playwright, sorts the run table,
clicks into an audit, opens its HTML report, drills into a finding, renders an audit of every
status, compares several releases, follows deep links to the trend, leaderboard and failures
views, and checks what is rendered, including that hostile text from reports shows as text and
never runs. Every request of every page is recorded: none may leave 127.0.0.1.

Screenshots are kept as test artefacts in ``$GENAI_AUDIT_ARTEFACTS`` (or a temporary folder).
With ``GENAI_AUDIT_UPDATE_DOCS=1`` the README's pictures (``docs/dashboard-*.png``) are
replaced by the ones taken here, so that they show what the dashboard draws.
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

from tests.dashboard_support import CLASSIFIER, demo_reports, fill_store, invalid_report, set_stored_status
from tests.report_factory import CRASHED_PROBE, HOSTILE, passing_report

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
V2_RUN, V3_RUN = "digits02" + "0" * 20, "digits03x" + "0" * 20
FUTURE_RUN = "future" + "0" * 26  # stored with a status this dashboard does not know
STATUS_RUNS = {  # status -> (run id, the banner's text)
    "passed": (V2_RUN, "PASSED: 2 gates passed"),
    "failed": (V3_RUN, "FAILED: 1 of 2 gate(s) failed"),
    "invalid": ("invalid" + "0" * 25, "INVALID: 1 probe(s) failed on invalid input"),
    "crashed": ("5d1c0b3a9e8f47a6b2c1d0e9f8a7b6c5", "CRASHED: 1 probe(s) crashed"),
    "quarantined": (FUTURE_RUN, "QUARANTINED: a status this dashboard does not know"),
}
DOCS = REPO / "docs"


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
    future = passing_report(name="smollm2-next", run_id=FUTURE_RUN, created_at="2025-11-22T10:00:00+00:00")
    with ReportStore(db) as store:
        # Report files (and per-sample records) for one run, served from the store's folder; the
        # others are rendered on demand, and writing nine HTML reports would only slow the test down.
        fill_store(store, [r for r in reports if r.name == V2], files_in=root / "runs", samples=True)
        fill_store(store, [r for r in reports if r.name != V2] + [invalid_report(), future], files_in=None)
    set_stored_status(db, FUTURE_RUN, "quarantined")
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
def page(browser, request, artefacts, server):
    """A fresh page that records dialogs (a hostile script would open one), page errors and
    every request it makes; on teardown, no request may have left this machine."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    pg.dialogs, pg.errors, pg.requests, pg.allowed_files = [], [], [], ()
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    context.on("request", lambda r: pg.requests.append(r.url))
    context.on("page", lambda p: p.on("websocket", lambda ws: pg.requests.append(ws.url)))
    pg.on("websocket", lambda ws: pg.requests.append(ws.url))
    try:
        yield pg
        _only_local(pg.requests, server, files=pg.allowed_files)
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


def _only_local(urls: list[str], server: str, *, files: tuple[str, ...] = ()) -> None:
    """Every request went to this server (http or its websocket), to one of ``files``, or
    stayed in the page (``data:``, ``blob:`` of this server)."""
    host = urllib.parse.urlsplit(server).netloc
    outside = [
        u for u in urls
        if not (urllib.parse.urlsplit(u).scheme in ("http", "ws") and urllib.parse.urlsplit(u).netloc == host)
        and not u.startswith(("data:", f"blob:{server}/")) and u not in files
    ]  # fmt: skip
    assert not outside, f"requests that left 127.0.0.1: {outside}"
    assert urls, "no request recorded: the recorder is broken"


def _list_rows(pg, *, until=None) -> list[list[str]]:
    """The cells of the run table, row by row; ``until``: a predicate on them to wait for."""
    rows = pg.locator(".st-key-audit_list tbody tr")
    rows.first.wait_for()
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        cells = [[c.strip() for c in r.locator("td").all_text_contents()] for r in rows.all()]
        if until is None or until(cells) or time.monotonic() > deadline:
            return cells
        time.sleep(0.2)


def _banner(pg):
    """The status banner (its text follows the icon's ligature name)."""
    return pg.locator("[data-testid^='stAlertContent']").filter(has_text=re.compile(r"[A-Z]{4,}: "))


def _doc_shot(pg, name: str, artefacts: Path, *, height: int = 1100) -> None:
    """A picture for the artefacts, and for the README with ``GENAI_AUDIT_UPDATE_DOCS=1``."""
    pg.set_viewport_size({"width": 1280, "height": height})
    pg.wait_for_timeout(800)  # let Vega finish its transitions
    pg.screenshot(path=str(artefacts / f"{name}.png"))
    if os.environ.get("GENAI_AUDIT_UPDATE_DOCS") == "1":
        pg.screenshot(path=str(DOCS / f"dashboard-{name}.png"))
    pg.set_viewport_size({"width": 1600, "height": 1000})


def _no_script_ran(pg) -> None:
    assert pg.dialogs == [], f"a dialog opened: {pg.dialogs}"
    assert pg.locator("script", has_text="alert(1)").count() == 0
    assert not any("alert" in e for e in pg.errors), pg.errors


# -- tests ----------------------------------------------------------------------------------


def test_list_sort_then_click_into_an_audit_its_report_and_samples(server, page, artefacts):
    page.goto(server + "/")
    page.get_by_role("heading", name="Audits", exact=True).wait_for()
    rows = _list_rows(page, until=lambda r: len(r) == 9)
    names = [r[1] for r in rows]
    for name in ("digits-cnn-v1", V2, V3, "dcgan-r1", "smollm2-release-candidate", "smollm2-bad-input"):
        assert name in names, name  # V3's name is hostile HTML, shown as text
    assert {len(r) for r in rows} == {8}  # eight columns: no name split a row or added a cell
    expect(_counts(page)).to_have_text("9 audits: 5 passed · 1 failed · 1 invalid · 1 crashed · 1 other")
    statuses = {r[3]: page.locator(".st-key-audit_list td.status", has_text=r[3]).first for r in rows}
    assert set(statuses) == {"passed", "failed", "invalid", "crashed", "quarantined"}
    _doc_shot(page, "list", artefacts, height=900)

    # Sort by a column: a click on its name, a second click reverses it.
    header = page.locator(".st-key-audit_list th button", has_text="audit")
    header.click()
    rows = _list_rows(page, until=lambda r: r[0][1] == V3)  # "<" sorts first
    assert [r[1] for r in rows] == sorted(names, key=str.casefold)
    header.click()
    _list_rows(page, until=lambda r: r[0][1] == "smollm2-release-candidate" or r[0][1] == "smollm2-next")

    # Filter by model: the list, the counts and the URL follow.
    _choose(page, "Model", CLASSIFIER)
    expect(_counts(page)).to_have_text(re.compile(r"^3 audits: "))
    expect(page).to_have_url(re.compile(rf"[?&]model={CLASSIFIER}"))
    rows = _list_rows(page, until=lambda r: len(r) == 3)
    assert {r[2] for r in rows} == {CLASSIFIER}

    # Click a row: its scorecard.
    page.locator(".st-key-audit_list tbody tr", has_text=V2).click()
    page.get_by_role("heading", name=V2, exact=True).wait_for()
    expect(page).to_have_url(re.compile(r"view=Scorecard.*run=digits02|run=digits02.*view=Scorecard"))
    expect(_banner(page)).to_contain_text(STATUS_RUNS["passed"][1])
    expect(_metric(page, "Findings")).to_have_text("11")
    gates = _cells(page, table=0, until=lambda c: "passed" in c)
    assert "robustness.pgd/robust_accuracy[eps=8/255]" in gates
    findings = _cells(page, table=1, until=lambda c: "acme.watermark" in c)
    assert "watermark_recall" in findings  # a probe the dashboard knows nothing about
    for probe in ("robustness.pgd", "bias.classifier", "energy.inference", "acme.watermark"):
        expect(page.get_by_role("tab", name=f"{probe} · ok")).to_have_count(1)

    # The robustness tab: robust accuracy versus eps, one line per attack, and the per-eps bars.
    page.get_by_role("tab", name="robustness.pgd · ok").click()
    panel = page.get_by_role("tabpanel").filter(has=page.get_by_text("Drill down"))
    panel.locator("[data-testid='stVegaLiteChart'] svg.marks, [data-testid='stVegaLiteChart'] canvas").nth(1).wait_for()
    box = panel.get_by_test_id("stVegaLiteChart").first.bounding_box()
    assert box["width"] > 1000, box  # the container's width, not ~143 px
    # Drill down: the worst slice first, and the per-sample records behind it.
    expect(panel.get_by_role("combobox", name="Finding")).to_have_value(re.compile(re.escape("[eps=8/255]")))
    samples = panel.get_by_test_id("stDataFrame").nth(1)
    samples.locator("[role='gridcell']").first.wait_for(state="attached")
    assert "img-0000" in [c.strip() for c in samples.locator("[role='gridcell']").all_text_contents()]
    _doc_shot(page, "scorecard", artefacts, height=1900)

    page.get_by_role("tab", name="bias.classifier · ok").click()
    page.get_by_text("confusion matrix: bias.classifier/accuracy_gap").or_(
        page.locator("[data-testid='stVegaLiteChart'] svg.marks")).first.wait_for(state="attached")

    # The stored HTML report, in a new tab, served by this server from the store's folder.
    with page.context.expect_page() as opened:
        page.get_by_role("link", name="Open HTML report").click()
    report_tab = opened.value
    report_tab.wait_for_load_state()
    assert report_tab.url.startswith(server + "/media/"), report_tab.url
    expect(report_tab.locator("body")).to_contain_text("digits-cnn-v2")
    report_tab.close()

    # Take the report away: the stored copy of report.json.
    with page.expect_download() as download:
        page.get_by_role("button", name="JSON").click()
    saved = artefacts / "downloaded-report.json"
    download.value.save_as(saved)
    assert json.loads(saved.read_text(encoding="utf-8"))["run_id"].startswith("digits02")
    _no_script_ran(page)


@pytest.mark.parametrize("status", list(STATUS_RUNS))
def test_every_status_renders(server, page, status):
    run_id, banner = STATUS_RUNS[status]
    page.goto(f"{server}/?view=Scorecard&run={run_id}")
    expect(_banner(page)).to_contain_text(banner)
    assert page.get_by_test_id("stException").count() == 0
    expect(page.get_by_text("every gate passed")).to_have_count(0)
    _no_script_ran(page)


def test_compare_several_runs_then_failures(server, page, artefacts):
    page.goto(server + "/?view=Compare")
    page.get_by_role("heading", name="Compare audits").wait_for()
    _choose(page, "Candidate", "digits-cnn-v3")
    # The baseline follows: the previous audit of the same model.
    expect(page.get_by_role("combobox", name="Baseline", exact=True)).to_have_value(re.compile(re.escape(V2)))
    expect(_metric(page, "Worse, beyond CIs")).to_have_text("1")
    expect(_metric(page, "Unchanged")).to_have_text("3")
    # Wait for the candidate's own gate (the page first shows the default candidate's, which may fail too).
    gates = _cells(page, table=0, until=lambda c: "robustness.pgd/robust_accuracy[eps=8/255]" in c)
    assert "robustness.pgd/robust_accuracy[eps=8/255]" in gates and "failed" in gates
    assert _charts_drawn(page, at_least=1) >= 1
    row = page.get_by_test_id("stDataFrame").last.locator("[role='row']").filter(
        has_text="robustness.pgd/robust_accuracy[eps=8/255]"
    )
    row.first.wait_for(state="attached")  # the findings table follows the rerun a moment later
    cells = [c.strip() for c in row.first.locator("[role='gridcell']").all_text_contents()]
    assert cells[0] == "robustness.pgd/robust_accuracy[eps=8/255]" and cells[-2:] == ["worse", "yes"], cells
    # A third run: v1 beside v3, both against v2.
    page.get_by_role("combobox", name="More candidates").click()
    page.get_by_role("option", name=re.compile("digits-cnn-v1")).click()
    page.keyboard.press("Escape")
    page.get_by_test_id("stDataFrame").filter(has_text="worse beyond CIs").wait_for()
    _doc_shot(page, "compare", artefacts, height=1500)

    page.get_by_test_id("stSidebar").get_by_text("Failures", exact=True).click()
    page.get_by_role("heading", name="Probe failures").wait_for()
    assert CRASHED_PROBE in _cells(page, until=lambda c: CRASHED_PROBE in c)
    # Every "Open scorecard" opens, the invalid audit's too (it used to crash the scorecard).
    expander = page.get_by_test_id("stExpander").filter(has_text="smollm2-bad-input")
    expander.get_by_text("smollm2-bad-input").click()
    button = expander.get_by_role("button", name="Open scorecard")
    expect(button).to_be_visible()
    button.click()
    page.get_by_role("heading", name="smollm2-bad-input", exact=True).wait_for()
    expect(_banner(page)).to_contain_text("INVALID: ")
    assert page.get_by_test_id("stException").count() == 0
    _no_script_ran(page)


def test_links_to_a_hostile_audit_a_trend_and_the_leaderboard(server, page, artefacts):
    page.goto(f"{server}/?view=Scorecard&run={V3_RUN}")
    page.get_by_role("heading", name=V3, exact=True).wait_for()  # the script tag, as text
    expect(_banner(page)).to_contain_text("FAILED: ")
    page.get_by_role("tab", name="robustness.pgd · ok").click()
    assert _charts_drawn(page, at_least=2) >= 2
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
    _doc_shot(page, "trend", artefacts, height=900)

    page.goto(f"{server}/?view=Leaderboard")
    page.get_by_role("heading", name="Leaderboard").wait_for()
    cells = _cells(page, until=lambda c: "tiny-dcgan" in c)
    assert {"SmolLM2-135M-Instruct", CLASSIFIER, "tiny-dcgan"} <= set(cells)
    _doc_shot(page, "leaderboard", artefacts, height=700)
    _no_script_ran(page)


def test_no_page_and_no_report_requests_anything_outside(server, page, demo_store):
    """Each view, then the stored HTML report opened as a file: every request is recorded
    (the page fixture fails on any that leaves this machine)."""
    for path, heading in (("/", "Audits"), (f"/?view=Scorecard&run={V2_RUN}", V2), ("/?view=Compare", "Compare audits"),
                          ("/?view=Trend", "Trend of a metric"), ("/?view=Leaderboard", "Leaderboard"),
                          ("/?view=Failures", "Probe failures")):  # fmt: skip
        page.goto(server + path)
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        page.wait_for_timeout(1500)  # icons, fonts and charts load after the heading
    favicon = page.evaluate("document.querySelector(\"link[rel='shortcut icon']\").href")
    assert favicon.startswith("data:image/svg+xml"), favicon  # the emoji, not a font host's icon
    (html,) = (demo_store.parent / "reports").glob("*/report.html")
    page.allowed_files = (html.as_uri(),)
    report = page.context.new_page()
    report.goto(html.as_uri())
    report.wait_for_load_state("load")
    report.close()
    requests = list(page.requests)
    assert html.as_uri() in requests
    _only_local(requests, server, files=(html.as_uri(),))
