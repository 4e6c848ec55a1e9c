"""How fast the dashboard opens its list of audits on a store of 500 audits.

Builds a SQLite store of N realistic audits (``tests/report_factory.py``'s report with values
drawn at random, 10 models, one audit a day), then times:

1. the data layer: opening the store, reading every summary, filtering, counting, sorting and
   building the first page of the list (the records the run table draws);
2. the app script (Streamlit's AppTest, in-process): the list view, first run and later runs;
3. a real browser (headless Debian chromium through Playwright, when /usr/bin/chromium exists):
   from navigation to the list on screen (the count of audits, and every row of the list's
   first page, the newest audit first), on a fresh server (first visitor, Python imports
   included) and on a warm one. Each visitor is a new browser context: nothing cached.

The target is "under 2 seconds" for the list of 500 audits. Run from the repository root:

    .venv/bin/python bench/bench_dashboard.py [--audits 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

# The list is on screen: the count of audits, and every row of the list's first page with the
# newest audit first, laid out. Checked at every animation frame (``expect`` polls at growing
# intervals, up to a second apart, which would add its own delay to the timing).
_LIST_SHOWN = """([n, rows, newest]) => {
    const counts = document.querySelector(".st-key-audit_counts [data-testid=stMarkdown]");
    // The run table lives in its component's shadow root.
    const host = document.querySelector(".st-key-audit_list");
    const roots = host === null ? [] : [host, ...Array.from(host.querySelectorAll("*"))
        .filter(e => e.shadowRoot).map(e => e.shadowRoot)];
    const trs = roots.flatMap(r => Array.from(r.querySelectorAll("tbody tr")));
    return counts !== null && counts.textContent.trim().startsWith(`${n} audit${n === 1 ? "" : "s"}:`)
        && counts.getBoundingClientRect().height > 0
        && trs.length === rows && trs[0].cells[1].textContent.trim() === newest
        && trs[0].getBoundingClientRect().height > 0;
}"""


def _fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


def build_store(folder: Path, n: int) -> tuple[str, float]:
    from audit.store import ReportStore
    from tests.dashboard_support import many_reports

    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'audits.db'}"
    reports = many_reports(n)
    start = time.perf_counter()
    with ReportStore(url) as store:
        for r in reports:
            store.ingest(r)
        assert store.count() == n
    return url, time.perf_counter() - start


def bench_data(url: str, repeats: int) -> list[float]:
    from audit.store import ReportStore
    from dashboard import data

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with ReportStore(url) as store:
            rows = data.all_audits(store)
            shown = data.filter_audits(rows)
            data.status_counts(shown)
            ordered = data.sort_audits(shown, "created", descending=True)
            data.list_records(ordered[: data.LIST_PAGE_ROWS])
        times.append(time.perf_counter() - start)
    return times


def bench_apptest(url: str, n: int, repeats: int) -> tuple[float, list[float]]:
    os.environ["GENAI_AUDIT_STORE"] = url
    from streamlit.testing.v1 import AppTest

    from dashboard import data

    app = str(REPO / "dashboard" / "app.py")
    runs = []
    # One AppTest, rerun: a new AppTest rescans every installed package for Streamlit
    # components (seconds here), which is test machinery, not the dashboard.
    at = AppTest.from_file(app, default_timeout=120)
    for _ in range(repeats + 1):
        start = time.perf_counter()
        at.run()
        runs.append(time.perf_counter() - start)
        assert not at.exception, [e.value for e in at.exception]
        import json

        (table,) = at.get("bidi_component")
        assert any(m.value.startswith(f"**{n}** audits:") for m in at.markdown)
        assert len(json.loads(table.proto.json)["rows"]) == min(n, data.LIST_PAGE_ROWS)
    return runs[0], runs[1:]


def bench_browser(url: str, n: int, repeats: int) -> tuple[float, list[float]] | None:
    """Seconds from navigation to the list on screen (``n`` audits; ``n == 0``: the start page)."""
    if not CHROMIUM.is_file():
        return None
    from playwright.sync_api import sync_playwright

    from audit.store import ReportStore
    from dashboard import data

    with ReportStore(url) as store:
        newest = next((r.name for r in store.list_audits(limit=1)), None)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit", "dashboard", "--store", url, "--port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the dashboard did not start") from None
                time.sleep(0.2)
        times = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            for _ in range(repeats + 1):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                start = time.perf_counter()
                page.goto(base + "/")
                if n == 0:
                    page.get_by_role("heading", name="No audits yet").wait_for(timeout=120_000)
                else:
                    page.wait_for_function(_LIST_SHOWN, arg=[n, min(n, data.LIST_PAGE_ROWS), newest],
                                           polling="raf", timeout=120_000)  # fmt: skip
                times.append(time.perf_counter() - start)
                page.close()
            browser.close()
        return times[0], times[1:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audits", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="genai-audit-bench-dashboard-"))
    try:
        url, ingest_s = build_store(folder, args.audits)
        print(f"store: {args.audits} audits ingested in {ingest_s:.1f} s "
              f"({(folder / 'audits.db').stat().st_size / 1e6:.1f} MB)")  # fmt: skip
        print(f"data layer (open store, read {args.audits} summaries, filter, count, sort, first page as records): "
              f"{_fmt(bench_data(url, args.repeats))}")
        first, warm = bench_apptest(url, args.audits, args.repeats)
        print(f"app script, list view (AppTest): first run {first:.3f} s; later runs {_fmt(warm)}")
        browser = bench_browser(url, args.audits, args.repeats)
        if browser is None:
            print(f"browser: skipped ({CHROMIUM} missing)")
        else:
            cold, warm_b = browser
            print(f"browser, navigation to list on screen: first visitor {cold:.3f} s; later visitors {_fmt(warm_b)}")
            # The same server and browser on an empty store: what Streamlit itself costs here.
            empty_url, _ = build_store(folder / "empty", 0)
            _, warm_e = bench_browser(empty_url, 0, args.repeats)
            print(f"browser, same server on an empty store (start page): later visitors {_fmt(warm_e)}")
            small_url, _ = build_store(folder / "small", 10)
            _, warm_s = bench_browser(small_url, 10, args.repeats)
            print(f"browser, same server on a store of 10 audits: later visitors {_fmt(warm_s)}")
            median, base, small = (statistics.median(x) for x in (warm_b, warm_e, warm_s))
            print(f"list of {args.audits} audits vs empty start page: ratio {median / base:.2f}, +{median - base:.3f} s; "
                  f"vs a list of 10 audits: ratio {median / small:.2f}, +{median - small:.3f} s")
            verdict = "under" if median < 2.0 else "OVER"
            print(f"target: list of {args.audits} audits in < 2 s -> {verdict} (median {median:.3f} s; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
