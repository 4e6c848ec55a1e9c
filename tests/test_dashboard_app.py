"""Tests of the dashboard's pages (Streamlit's AppTest), its data functions and its command.

The browser test is tests/test_dashboard_e2e.py; these run the app script in-process, set
widgets and query parameters, and check what each page puts on screen.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audit.errors import InputError
from audit.findings import AuditReport, Finding, Interval, ProbeStatus, SubjectIdentity
from audit.store import ReportStore
from dashboard import data
from tests.dashboard_support import CLASSIFIER, UNKNOWN_PROBE, classifier_report, demo_reports, fill_store
from tests.report_factory import CRASHED_PROBE, HOSTILE, make_report

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
REPO = Path(__file__).resolve().parent.parent
V2, V3 = "digits0200000000000000000000", "digits0300000000000000000000"
EPS8 = "robustness.pgd/robust_accuracy[eps=8/255]"


@pytest.fixture
def store_url(tmp_path) -> str:
    """The store the app reads (the conftest points GENAI_AUDIT_STORE at a fresh one)."""
    return os.environ["GENAI_AUDIT_STORE"]


@pytest.fixture
def demo_store(store_url):
    with ReportStore(store_url) as store:
        fill_store(store, demo_reports(), files_in=None)
        yield store


def _app(**query):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


_COUNTS = re.compile(r"^\*\*(\d+)\*\* audits?: :green\[\*\*(\d+)\*\* passed\] · :red\[\*\*(\d+)\*\* failed\] · "
                     r":orange\[\*\*(\d+)\*\* crashed\]$")  # fmt: skip


def _counts(at) -> tuple[str, ...]:
    """The list's counts: audits, passed, failed, crashed."""
    return next(m.groups() for el in at.markdown if (m := _COUNTS.match(el.value)))


def _unescape(cell: str) -> str:
    cell = re.sub(r"^:(?:green|red|orange)\[(\w+)\]$", r"\1", cell.strip())  # a coloured status
    return re.sub(r"\\(.)", r"\1", cell)


def _list(at) -> list[dict[str, str]]:
    """The rows of the audit list (a Markdown table), cells unescaped."""
    table = next(m.value for m in at.markdown if m.value.startswith("| created (UTC) |"))
    lines = table.splitlines()
    cells = [[_unescape(c) for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def _column(at, name: str) -> list[str]:
    return [row[name] for row in _list(at)]


_TABLES = {  # a column only that table has (display elements keep no key in AppTest)
    "gates_table": "requires",
    "findings_table": "warnings",  # the first one: the per-probe tables come after it
    "energy_table": "joules",
    "changes_table": "beyond CIs",
    "trend_table": "low",
    "failures_table": "error",
}


def _frame(at, key: str):
    return next(d for d in at.dataframe if _TABLES[key] in d.value.columns)


def _charts(at) -> int:
    return len(at.get("vega_lite_chart"))


# -- pages ----------------------------------------------------------------------------------


def test_empty_store_shows_how_to_run_a_first_audit(store_url):
    at = _app()
    _ok(at)
    assert at.title[0].value == "No audits yet"
    commands = [c.value for c in at.code]
    assert any(c.startswith("genai-audit demo --store ") for c in commands)
    assert any(c.startswith("genai-audit run audit.yaml --store ") for c in commands)


def test_list_filters_by_model_status_and_date(demo_store):
    at = _app()
    _ok(at)
    assert at.title[0].value == "Audits"
    assert _counts(at) == ("7", "5", "1", "1")
    assert _column(at, "audit")[:3] == ["smollm2-release-candidate", "smollm2-release-candidate", "digits-cnn-v3"]
    assert _list(at)[2] == {
        "created (UTC)": "2025-05-10 09:00", "audit": "digits-cnn-v3", "model": CLASSIFIER, "status": "failed",
        "findings": "11", "gates failed": "1", "probes failed": "0", "run id": V3[:8],
    }  # fmt: skip

    at.selectbox(key="model").set_value(CLASSIFIER).run()
    _ok(at)
    assert _counts(at) == ("3", "2", "1", "0")
    assert _column(at, "audit") == ["digits-cnn-v3", "digits-cnn-v2", "digits-cnn-v1"]

    at.selectbox(key="status").set_value("failed").run()
    assert _counts(at)[0] == "1" and _column(at, "run id") == [V3[:8]]

    at.selectbox(key="status").set_value("All").run()
    at.date_input(key="since").set_value(dt.date(2025, 4, 1)).run()
    at.date_input(key="until").set_value(dt.date(2025, 4, 30)).run()
    assert _column(at, "run id") == [V2[:8]]

    at.date_input(key="since").set_value(dt.date(2025, 5, 1)).run()  # after "until"
    _ok(at)
    assert "after the end date" in at.warning[0].value


def test_list_pages_through_many_audits(store_url):
    from tests.dashboard_support import many_reports

    n = data.LIST_PAGE_ROWS + 5
    reports = many_reports(n)  # one a day: the newest is the last
    with ReportStore(store_url) as store:
        fill_store(store, reports, files_in=None)
    at = _app()
    _ok(at)
    assert _counts(at)[0] == str(n)
    newest_first = [r.name for r in reversed(reports)]
    assert _column(at, "audit") == newest_first[: data.LIST_PAGE_ROWS]
    pages = next(s for s in at.selectbox if s.label == "Rows")
    assert pages.options == [f"1–{data.LIST_PAGE_ROWS} of {n}", f"{data.LIST_PAGE_ROWS + 1}–{n} of {n}"]
    pages.set_value(1).run()
    _ok(at)
    assert _column(at, "audit") == newest_first[data.LIST_PAGE_ROWS :]
    # The picker still offers every audit of the list, not only the page's.
    assert len(next(s for s in at.selectbox if s.label == "Audit").options) == n


def test_open_an_audit_from_the_list(demo_store):
    at = _app()
    picker = next(s for s in at.selectbox if s.label == "Audit")
    picker.set_value(V2).run()
    at.button(key="open").click().run()
    _ok(at)
    assert at.radio(key="view").value == "Scorecard"
    assert at.title[0].value == data.md_escape("digits-cnn-v2")
    assert at.query_params["run"] == [V2] or at.query_params["run"] == V2
    assert at.success[0].value.startswith("**PASSED**")
    gates = _frame(at, "gates_table").value
    assert list(gates["metric"]) == [EPS8, "bias.classifier/accuracy_gap"]
    assert list(gates["status"]) == ["passed", "passed"]
    findings = _frame(at, "findings_table").value
    report = demo_store.get(V2)
    assert len(findings) == len(report.findings) == int(_metric(at, "Findings"))
    row = findings[findings["metric"] == "robust_accuracy"].iloc[-1]
    f = report.finding(EPS8)
    assert (row["value"], row["ci low"], row["ci high"], row["n"]) == (f.value, f.ci.low, f.ci.high, f.n)
    # A probe the dashboard knows nothing about: its findings are still a table.
    assert UNKNOWN_PROBE in set(findings["probe"])
    assert [s.value for s in at.subheader] == [
        data.md_escape(p) + " · ok" for p in ("robustness.pgd", "bias.classifier", "energy.inference", UNKNOWN_PROBE)
    ]
    assert any("No chart for these findings" in c.value for c in at.caption)
    # Curve, per-eps bars, per-group bars, accuracy gap and energy values with intervals, energy by probe.
    assert _charts(at) == 6
    assert [b.proto.label for b in at.get("download_button")] == ["HTML", "Markdown", "JSON", "JUnit XML", "Model card"]
    energy = _frame(at, "energy_table").value
    assert list(energy["kind"]) == ["measured", "estimate", "unavailable", "not recorded"]
    assert math.isnan(energy["joules"].iloc[2])


def test_compare_defaults_to_the_previous_release_and_flags_changes_beyond_intervals(demo_store):
    at = _app(view="Compare", cand=V3)
    _ok(at)
    assert at.selectbox(key="base").value == V2  # the previous audit of the same model
    changes = data.compare_reports(demo_store.get(V2), demo_store.get(V3))
    # Independent count: the intervals of the two reports that do not overlap, by hand.
    before, after = demo_store.get(V2), demo_store.get(V3)
    beyond = [
        f.key for f in after.findings
        if (b := before.finding(f.key)) is not None and f.ci and b.ci
        and (f.ci.high < b.ci.low or b.ci.high < f.ci.low)
    ]  # fmt: skip
    assert beyond == [EPS8]
    assert _metric(at, "Worse, beyond CIs") == "1" and _metric(at, "Better, beyond CIs") == "0"
    assert _metric(at, "Worse") == str(sum(c.direction == "worse" for c in changes))
    table = _frame(at, "changes_table").value
    row = table[table["finding"] == EPS8].iloc[0]
    assert (row["direction"], row["beyond CIs"]) == ("worse", "yes")
    assert row["delta"] == pytest.approx(after.finding(EPS8).value - before.finding(EPS8).value)

    at.toggle(key="only_beyond").set_value(True).run()
    assert list(_frame(at, "changes_table").value["finding"]) == [EPS8]

    # The same audit on both sides: nothing to compare.
    at.selectbox(key="base").set_value(V3).run()
    _ok(at)
    assert "two different audits" in at.info[0].value


def test_trend_of_a_metric_over_one_models_audits(demo_store):
    at = _app(view="Trend", trend_model=CLASSIFIER, metric=EPS8)
    _ok(at)
    assert at.selectbox(key="metric").value == EPS8
    table = _frame(at, "trend_table").value
    expected = [classifier_report(i).finding(EPS8) for i in (1, 2, 3)]  # oldest first
    assert list(table["value"]) == [f.value for f in expected]
    assert list(table["low"]) == [f.ci.low for f in expected]
    assert list(table["run id"]) == ["digits01" + "0" * 20, V2, V3]
    assert _charts(at) == 1
    # Only the metrics this model has are offered.
    options = at.selectbox(key="metric").options
    assert EPS8 in options and not any(o.startswith("quality.") for o in options)


def test_failures_lists_probe_errors_with_tracebacks(demo_store):
    at = _app(view="Failures")
    _ok(at)
    table = _frame(at, "failures_table").value
    assert list(table["probe"]) == [CRASHED_PROBE]
    assert table["error"].iloc[0] == "RuntimeError: detector returned 3 scores for 4 texts"
    assert any("raise RuntimeError" in c.value for c in at.code)


def test_hostile_report_text_is_escaped(store_url):
    hostile = make_report(hostile=True, name=HOSTILE + " *bold* :red[x] [link](javascript:alert(1))")
    hostile_v3 = classifier_report(3, hostile=True)
    with ReportStore(store_url) as store:
        fill_store(store, [hostile, hostile_v3], files_in=None)
    shown: list[str] = []
    at = _app()
    # One app, every view (a new AppTest costs seconds of Streamlit's own start-up).
    for view, run in (("Audits", None), ("Scorecard", hostile.run_id), ("Scorecard", hostile_v3.run_id),
                      ("Failures", None), ("Compare", None)):  # fmt: skip
        at.radio(key="view").set_value(view).run()
        if run is not None:
            at.selectbox(key="run").set_value(run).run()
        _ok(at)
        markdown_like = [*at.title, *at.header, *at.subheader, *at.markdown, *at.caption, *at.error, *at.warning,
                         *at.info, *at.success, *at.expander]  # fmt: skip
        for el in markdown_like:
            text = el.label if hasattr(el, "label") and not hasattr(el, "value") else el.value
            # (The list colours statuses with :red[...] itself; the hostile name's ":red[x]" must not.)
            assert "<script>" not in text and "](" not in text and ":red[x]" not in text, text
            shown.append(text)
        for el in at.markdown:
            assert not el.proto.allow_html
    assert data.md_escape(HOSTILE) in " ".join(shown)  # shown, as text
    assert any(data.md_escape("[link](javascript:alert(1))") in s for s in shown)


def test_unreadable_store_is_an_error_on_the_page(monkeypatch):
    monkeypatch.setenv("GENAI_AUDIT_STORE", "postgresql+nosuchdriver://user:secret@db/audits")
    at = _app()
    _ok(at)
    assert "Cannot read the audit store" in at.error[0].value
    assert "secret" not in at.error[0].value


@pytest.mark.slow  # a fresh interpreter imports Streamlit and runs every view: 10-20 s here
def test_the_app_never_imports_probes(demo_store, store_url):
    script = textwrap.dedent(f"""
        import sys
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({APP!r}, default_timeout=60).run()
        for view in ("Scorecard", "Compare", "Trend", "Failures", "Audits"):
            at.radio(key="view").set_value(view).run()
            assert not at.exception, [e.value for e in at.exception]
            assert at.title[0].value != "No audits yet"
        import dashboard.cli, dashboard.data, dashboard.charts
        loaded = sorted(m for m in sys.modules if m == "probes" or m.startswith("probes."))
        print("PROBES:", loaded)
        sys.exit(1 if loaded else 0)
    """)
    env = dict(os.environ, GENAI_AUDIT_STORE=store_url)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PROBES: []" in done.stdout


# -- data -----------------------------------------------------------------------------------


def test_md_escape_defuses_markdown_html_and_streamlit_markup():
    assert data.md_escape("<b>x</b>") == r"\<b\>x\<\/b\>"
    assert data.md_escape("[a](http://e) :red[y] $x$ *i* `c`") == (
        r"\[a\]\(http\:\/\/e\) \:red\[y\] \$x\$ \*i\* \`c\`"
    )
    assert data.md_escape("two\nlines\x1b[31m red\x07") == "two lines red"
    assert data.md_escape("plain words 123") == "plain words 123"


def test_audits_markdown_is_a_table_of_the_rows_whatever_their_text(store_url):
    """Read back with an independent Markdown parser (markdown-it, GFM tables): one row per
    audit, every cell the report's text as text (no HTML, no link, no extra cell)."""
    markdown_it = pytest.importorskip("markdown_it")
    from html.parser import HTMLParser

    names = [HOSTILE + " a|b \\| c", "two\nlines [link](javascript:alert(1)) :red[x] *i* `c`", "plain"]
    with ReportStore(store_url) as store:
        fill_store(store, [make_report(name=n, run_id=f"run{i}" + "0" * 29) for i, n in enumerate(names)],
                   files_in=None)  # fmt: skip
        rows = data.all_audits(store)
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(data.audits_markdown(rows))

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.tags, self.in_cell = [], set(), False

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.rows[-1].append("")
                self.in_cell = True

        def handle_endtag(self, tag):
            self.in_cell = self.in_cell and tag not in ("td", "th")

        def handle_data(self, text):
            if self.in_cell:
                self.rows[-1][-1] += text

    parsed = Cells()
    parsed.feed(html)
    assert parsed.tags <= {"table", "thead", "tbody", "tr", "th", "td"}  # no script, link or emphasis
    header, *body = parsed.rows
    assert header == ["created (UTC)", "audit", "model", "status", "findings", "gates failed", "probes failed",
                      "run id"]  # fmt: skip
    assert [len(r) for r in body] == [len(header)] * 3
    by_name = {r[1]: r for r in body}
    # Line breaks are flattened to one space, as md_escape does everywhere; the rest is verbatim.
    assert set(by_name) == {" ".join(n.split()) for n in names}
    stored = next(r for r in rows if r.name == "plain")
    colour = {"passed": "green", "failed": "red", "crashed": "orange"}[stored.status]
    assert by_name["plain"] == [
        f"{stored.created_at:%Y-%m-%d %H:%M}", "plain", stored.subject_name, f":{colour}[{stored.status}]",
        str(stored.n_findings), str(stored.n_gates_failed), str(stored.n_probes_failed), "run20000",
    ]  # fmt: skip


def test_filter_audits_and_default_baseline(demo_store):
    rows = data.all_audits(demo_store)
    assert [r.run_id for r in rows] == [r.run_id for r in demo_store.list_audits()]
    assert data.models_of(rows) == sorted({"SmolLM2-135M-Instruct", CLASSIFIER, "tiny-dcgan"})
    assert [r.run_id for r in data.filter_audits(rows, model=CLASSIFIER, status="passed")] == [
        V2, "digits01" + "0" * 20,
    ]  # fmt: skip
    # Dates are inclusive on both ends, in UTC.
    day = dt.date(2025, 4, 10)
    assert [r.run_id for r in data.filter_audits(rows, since=day, until=day)] == [V2]
    with pytest.raises(InputError, match="status must be one of"):
        data.filter_audits(rows, status="ok")
    assert data.default_baseline(rows, V3) == V2
    assert data.default_baseline(rows, "dcgan02" + "0" * 21) == "dcgan01" + "0" * 21
    # The oldest audit of its model falls back to the previous audit of any model, or None.
    assert data.default_baseline(rows, "dcgan01" + "0" * 21) == "digits01" + "0" * 20
    assert data.default_baseline(rows, "digits01" + "0" * 20) is None
    assert data.default_baseline(rows, "no-such-run") is None


def test_report_bytes_serves_stored_files_and_renders_the_rest(store_url, tmp_path):
    with ReportStore(store_url) as store:
        with_files, without = classifier_report(1), classifier_report(2)
        fill_store(store, [with_files], files_in=tmp_path / "runs")
        fill_store(store, [without], files_in=None)
        stored = store.report_file(with_files.run_id, "report.html")
        assert stored is not None and stored.is_relative_to(store.reports_root)
        assert data.report_bytes(store, with_files.run_id, "report.html") == stored.read_bytes()
        assert [d.stored for d in data.report_downloads(store, with_files.run_id)] == [True] * 4
        assert [d.stored for d in data.report_downloads(store, without.run_id)] == [False] * 4
        rendered = data.report_bytes(store, without.run_id, "report.json")
        assert AuditReport.from_json(rendered.decode()) == without
        assert b"<testsuite" in data.report_bytes(store, without.run_id, "junit.xml")
        assert data.report_bytes(store, without.run_id, "report.md").startswith(b"#")
        # Nothing outside the store's report folder, whatever the name asked for.
        for name in ("../audits.db", "/etc/passwd", "report.json/../../audits.db"):
            with pytest.raises(InputError, match="unknown report file"):
                data.report_bytes(store, with_files.run_id, name)


def test_probe_sections_find_curves_groups_and_values():
    f_curve = Finding("robustness.pgd", "auc", 0.4, True, evidence={
        "curve": {"x": [0, 0.01, 0.03], "y": [0.9, "NaN", 0.1], "y_low": [0.8, 0.4], "x_scale": "log"}})
    f_bad = Finding("robustness.pgd", "other", 0.4, True, evidence={"curve": {"x": [1, 2], "y": [1]}})
    groups = [Finding("bias.x", "rate", v, False, ci=Interval(v - 0.1, v + 0.1, "m"), slice={"group": g})
              for g, v in (("a", 0.2), ("b", 0.3))]  # fmt: skip
    fid = Finding("quality.fid", "fid", 41.7, False, ci=Interval(39.0, 44.0, "bootstrap"))
    nan = Finding("quality.fid", "fid_nan", math.nan, False, ci=Interval(0, 1, "m"))
    report = AuditReport(
        name="r", subject=SubjectIdentity("m", "classifier", "python"),
        findings=(f_curve, f_bad, *groups, fid, nan),
        probes={"quality.fid": ProbeStatus("ok"), "robustness.pgd": ProbeStatus("ok"), "bias.x": ProbeStatus("ok")},
    )  # fmt: skip
    sections = {s.probe: s for s in data.probe_sections(report)}
    assert list(sections) == ["quality.fid", "robustness.pgd", "bias.x"]  # status (spec) order
    (curve,) = sections["robustness.pgd"].curves
    assert curve.y[0] == 0.9 and math.isnan(curve.y[1]) and curve.low is None  # malformed bounds dropped
    assert curve.x_scale == "linear"  # log asked for, but x has a 0
    (group,) = sections["bias.x"].groups
    frame = group.frame()
    assert list(frame["group"]) == ["group=a", "group=b"]
    assert list(frame["low"]) == pytest.approx([0.1, 0.2]) and list(frame["high"]) == pytest.approx([0.3, 0.4])
    assert sections["quality.fid"].values == (fid,)


# -- the command ----------------------------------------------------------------------------


def test_dashboard_command_serves_on_loopback_with_the_store(monkeypatch, tmp_path):
    from audit.cli import cli
    from click.testing import CliRunner

    seen = {}

    class FakePopen:
        def __init__(self, cmd, env):
            seen["cmd"], seen["env"] = cmd, env
            self.returncode = 0

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    import dashboard.cli as dcli

    monkeypatch.setattr(dcli.subprocess, "Popen", FakePopen)
    db = tmp_path / "s" / "audits.db"
    result = CliRunner().invoke(cli, ["dashboard", "--store", str(db), "--port", "8642"])
    assert result.exit_code == 0, result.output
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"] and cmd[4] == str(dcli.APP)
    opts = dict(zip(cmd[5::2], cmd[6::2]))
    assert opts["--server.address"] == "127.0.0.1" and opts["--server.port"] == "8642"
    assert opts["--server.headless"] == "true" and opts["--browser.gatherUsageStats"] == "false"
    assert seen["env"]["GENAI_AUDIT_STORE"] == str(db.resolve())
    assert db.is_file()  # the store was opened (created) before the server started

    CliRunner().invoke(cli, ["dashboard", "--store", str(db), "--host", "0.0.0.0"])
    assert dict(zip(seen["cmd"][5::2], seen["cmd"][6::2]))["--server.address"] == "0.0.0.0"


def test_dashboard_command_rejects_a_bad_store():
    done = subprocess.run(
        [sys.executable, "-m", "audit", "dashboard", "--store", "postgresql+nosuchdriver://u:pw@h/db"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot open the audit store" in done.stderr and "pw@" not in done.stderr
