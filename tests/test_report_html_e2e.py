"""The HTML report in a real browser: it makes no request beyond its own file, fits a 1,280 px
window, draws its charts, and its per-probe contents lead to each probe.

Debian's headless Chromium (``/usr/bin/chromium``) is driven by Playwright, as in
``tests/test_dashboard_e2e.py``. Every request the page makes is recorded (and any that does
not go to the file itself is aborted, so an offline machine cannot hang on one); the test fails
on any. The report is the factory's hostile one (every text field carries markup) plus long
unbroken gate messages, metric names and slice values, and robustness curves.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from audit.curves import confusion_matrix_evidence, curves_evidence, proportion_curve
from audit.findings import Finding, GateResult
from audit.render import write_reports
from audit.stats import wilson_interval
from tests.report_factory import make_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDTH = 1280

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"Debian's chromium is not installed ({CHROMIUM} missing); "
                       "apt-get install chromium"),
]


def _wide_report():
    r = make_report(hostile=True)
    long = "x" * 180
    n = 200
    extra = [Finding("robustness.classifier", "clean_accuracy", 0.9, True, n=n,
                     evidence=confusion_matrix_evidence([i % 10 for i in range(n)], [(i * 7) % 10 for i in range(n)],
                                                        [f"class-{i}" for i in range(10)]))]
    for attack, ks in (("fgsm", [180, 120, 60, 30]), ("pgd", [180, 80, 20, 2])):
        for eps, k in zip(("1/255", "2/255", "8/255"), ks[1:]):
            extra.append(Finding("robustness.classifier", "robust_accuracy", k / n, True, n=n, ci=wilson_interval(k, n),
                                 slice={"attack": attack, "eps": eps, "class": f"a-very-long-class-name-{long}"}))
        extra.append(Finding("robustness.classifier", "robust_accuracy_area", 0.3, True, n=n, slice={"attack": attack},
                             evidence=curves_evidence(proportion_curve(
                                 [0, 1 / 255, 2 / 255, 8 / 255], ks, [n] * 4, series=attack,
                                 chart="robust_accuracy_vs_eps", x_label="eps (linf)", y_label="robust accuracy",
                                 x_ticks=["0", "1/255", "2/255", "8/255"]))))
    extra.append(Finding(f"probe.{long}", f"metric_{long}", 1.0, True, slice={"group": long}))
    gates = (*r.gates, GateResult(metric=f"robustness.classifier/robust_accuracy[{long}]", passed=False,
                                  status="failed", message="message-without-spaces-" + long * 2, value=0.1, bound=0.5))
    return replace(r, findings=(*r.findings, *extra), gates=gates)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return write_reports(_wide_report(), out)["html"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def test_the_report_requests_nothing_but_itself_and_fits_1280_px(browser, report_file):
    url = report_file.resolve().as_uri()
    context = browser.new_context(viewport={"width": WIDTH, "height": 900})
    requests: list[str] = []
    errors: list[str] = []

    def route(r):
        requests.append(r.request.url)
        (r.continue_() if r.request.url == url else r.abort())

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url, wait_until="load")
        page.wait_for_timeout(300)  # anything lazy (fonts, icons) would be requested by now
        assert requests == [url], f"requests other than the report itself: {[u for u in requests if u != url]}"
        assert errors == []
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= WIDTH, f"the page is {scroll_width} px wide in a {WIDTH} px window"
        # The gates' message column wraps inside the table instead of widening it.
        gate_table = page.evaluate("document.querySelector('table.gates').getBoundingClientRect().right")
        assert gate_table <= WIDTH
        # Every chart is drawn, no wider than its figure.
        widths = page.evaluate("""[...document.querySelectorAll('figure svg')].map(s => {
            const f = s.closest('figure').getBoundingClientRect(); const r = s.getBoundingClientRect();
            return [r.width, r.height, f.width]; })""")
        assert len(widths) >= 4 and all(w > 200 and h > 50 and w <= fw for w, h, fw in widths), widths
        # The contents lead to each probe's section.
        links = page.locator("nav.probes a")
        assert links.count() >= 5
        target = links.nth(links.count() - 1).get_attribute("href")
        links.nth(links.count() - 1).click()
        assert page.evaluate("location.hash") == target
        top = page.evaluate(f"document.getElementById({target[1:]!r}).getBoundingClientRect().top")
        assert abs(top) < 5
    finally:
        context.close()
