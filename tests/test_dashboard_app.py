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
from dashboard import data, history
from dashboard import report_view as rv
from dashboard.text import md_escape
from tests.dashboard_support import (
    CLASSIFIER,
    CONFUSION,
    UNKNOWN_PROBE,
    classifier_report,
    demo_reports,
    fill_store,
    invalid_report,
    set_stored_status,
)
from tests.report_factory import CRASHED_PROBE, HOSTILE, make_report, passing_report

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
                     r":violet\[\*\*(\d+)\*\* invalid\] · :orange\[\*\*(\d+)\*\* crashed\] · "
                     r":gray\[\*\*(\d+)\*\* other\]$")  # fmt: skip


def _counts(at) -> tuple[str, ...]:
    """The list's counts: audits, passed, failed, invalid, crashed, other."""
    return next(m.groups() for el in at.markdown if (m := _COUNTS.match(el.value)))


def _table(at) -> dict:
    """What the run table was given: its columns, rows (JSON records) and sort."""
    import json

    (el,) = [e for e in at.get("bidi_component") if e.proto.component_name == "genai_audit_runs_table"]
    return json.loads(el.proto.json)


def _list(at) -> list[dict[str, object]]:
    """The rows of the audit list, as the browser receives them."""
    return _table(at)["rows"]


def _column(at, name: str) -> list[object]:
    return [row[name] for row in _list(at)]


_TABLES = {  # a column only that table has (display elements keep no key in AppTest)
    "gates_table": "requires",
    "findings_table": "warnings",  # the first one: the per-probe tables come after it
    "energy_table": "joules",
    "changes_table": "beyond CIs",
    "trend_table": "low",
    "failures_table": "error",
    "gate_changes_table": "candidate status",
    "counts_table": "worse beyond CIs",
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


def test_list_filters_by_name_model_status_date_and_metric(demo_store):
    at = _app()
    _ok(at)
    assert at.title[0].value == "Audits"
    assert _counts(at) == ("7", "5", "1", "0", "1", "0")
    assert _column(at, "audit")[:3] == ["smollm2-release-candidate", "smollm2-release-candidate", "digits-cnn-v3"]
    row = _list(at)[2]
    assert {k: row[k] for k in data.LIST_COLUMNS} == {
        "created": "2025-05-10 09:00", "audit": "digits-cnn-v3", "model": CLASSIFIER, "status": "failed",
        "findings": 11, "gates failed": 1, "probes failed": 0, "run id": V3[:8],
    }  # fmt: skip
    assert row["run"] == V3 and row["colour"] == "red"

    at.selectbox(key="model").set_value(CLASSIFIER).run()
    _ok(at)
    assert _counts(at) == ("3", "2", "1", "0", "0", "0")
    assert _column(at, "audit") == ["digits-cnn-v3", "digits-cnn-v2", "digits-cnn-v1"]

    at.selectbox(key="status").set_value("failed").run()
    assert _counts(at)[0] == "1" and _column(at, "run id") == [V3[:8]]

    at.selectbox(key="status").set_value("All").run()
    at.text_input(key="q").set_value("CNN-V").run()  # case-insensitive, part of the name
    assert _counts(at)[0] == "3"
    at.text_input(key="q").set_value("").run()
    at.date_input(key="since").set_value(dt.date(2025, 4, 1)).run()
    at.date_input(key="until").set_value(dt.date(2025, 4, 30)).run()
    assert _column(at, "run id") == [V2[:8]]

    at.date_input(key="since").set_value(dt.date(2025, 5, 1)).run()  # after "until"
    _ok(at)
    assert "after the end date" in at.warning[0].value
    at.date_input(key="since").set_value(None).run()
    at.date_input(key="until").set_value(None).run()

    # A metric's range: robust accuracy at eps 8/255 between 0.05 and 1 (v3 fell to 0).
    at.toggle(key="metric_filter").set_value(True).run()
    at.selectbox(key="list_metric").set_value(EPS8).run()
    at.number_input(key="list_min").set_value(0.05).run()
    _ok(at)
    assert _column(at, "run id") == [V2[:8], "digits01"]
    assert [c["name"] for c in _table(at)["columns"]][4] == EPS8  # the metric is a column, after status
    assert _column(at, EPS8) == [float(f"{classifier_report(i).finding(EPS8).value:.6g}") for i in (2, 1)]


def test_every_status_renders_and_the_counts_add_up(store_url):
    """passed (with a skipped gate), failed, invalid, crashed and a status unknown here."""
    passing = passing_report(run_id="pass" + "0" * 28)
    reports = [passing, classifier_report(3), invalid_report(), make_report(), classifier_report(1)]
    with ReportStore(store_url) as store:
        fill_store(store, reports, files_in=None)
    set_stored_status(Path(store_url.removeprefix("sqlite:///")), classifier_report(1).run_id, "quarantined")
    at = _app()
    _ok(at)
    assert _counts(at) == ("5", "1", "1", "1", "1", "1")
    assert sum(map(int, _counts(at)[1:])) == 5
    at.selectbox(key="status").set_value("other").run()
    assert _column(at, "status") == ["quarantined"] and _list(at)[0]["colour"] == "gray"
    at.selectbox(key="status").set_value("invalid").run()
    assert _column(at, "audit") == ["smollm2-bad-input"]

    banners = {}
    for report in reports:
        at.radio(key="view").set_value("Scorecard").run()
        at.selectbox(key="run").set_value(report.run_id).run()
        _ok(at)
        alerts = [*at.success, *at.error, *at.warning, *at.info]
        (banner,) = [a.value for a in alerts if re.match(r"^\*\*[A-Z]+\*\*: ", a.value)]
        banners[report.run_id] = banner
    assert banners[passing.run_id] == "**PASSED**: 2 gates passed, 1 skipped (not checked)"
    assert banners[classifier_report(3).run_id] == "**FAILED**: 1 of 2 gate(s) failed"
    assert banners[invalid_report().run_id] == "**INVALID**: 1 probe(s) failed on invalid input"
    assert banners[make_report().run_id] == "**CRASHED**: 1 probe(s) crashed"
    assert banners[classifier_report(1).run_id].startswith("**QUARANTINED**: a status this dashboard does not know")
    assert not any("every gate passed" in b for b in banners.values())
    at.selectbox(key="run").set_value(passing.run_id).run()
    assert _metric(at, "Gates skipped") == "1" and _metric(at, "Gates passed") == "2"


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
    # Sorting sorts the whole list, not one page: oldest first puts the first audit on top.
    at.session_state["list_sort"] = ("created", False)
    at.run()
    assert _column(at, "audit")[0] == reports[0].name
    assert _table(at)["sort"] == {"column": "created", "descending": False}
    # The picker still offers every audit of the list, not only the page's.
    assert len(next(s for s in at.selectbox if s.label == "Audit").options) == n


def test_open_an_audit_from_the_list(demo_store):
    at = _app()
    picker = next(s for s in at.selectbox if s.label == "Audit")
    picker.set_value(V2).run()
    at.button(key="open").click().run()
    _ok(at)
    assert at.radio(key="view").value == "Scorecard"
    assert at.title[0].value == md_escape("digits-cnn-v2")
    assert at.query_params["run"] == [V2] or at.query_params["run"] == V2
    assert at.success[0].value == "**PASSED**: 2 gates passed"
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
    assert [t.label for t in at.tabs] == ["Summary"] + [
        md_escape(p + " · ok") for p in ("robustness.pgd", "bias.classifier", "energy.inference", UNKNOWN_PROBE)
    ]
    assert any("No chart for these findings" in c.value for c in at.caption)
    # Curves (pgd and fgsm in one chart), confusion matrix, per-eps and per-group bars, accuracy
    # gap and energy each as a value with its interval, energy by probe.
    assert _charts(at) == 7
    # The per-probe table lists slices worst first: eps=8/255 (the lowest accuracy) on top.
    per_probe = next(d.value for d in at.dataframe if "warnings" in d.value.columns and
                     set(d.value["probe"]) == {"robustness.pgd"})  # fmt: skip
    assert list(per_probe["slice"])[:5] == ["eps=8/255", "eps=4/255", "eps=2/255", "eps=1/255", "eps=0/255"]
    assert [b.proto.label for b in at.get("download_button")] == ["HTML", "Markdown", "JSON", "JUnit XML",
                                                                   "Model card"]
    energy = _frame(at, "energy_table").value
    assert list(energy["kind"]) == ["measured", "estimate", "unavailable", "not recorded"]
    assert math.isnan(energy["joules"].iloc[2])
    # Drill-down: the worst finding of each probe first, its evidence on demand.
    assert at.selectbox(key="drill_0").value == 0
    assert "No per-sample records stored" in " ".join(c.value for c in at.caption)


def _beyond(before, after) -> list[str]:
    """Independent count: the findings whose intervals in the two reports do not overlap, by hand."""
    return [
        f.key for f in after.findings
        if (b := before.finding(f.key)) is not None and f.ci and b.ci
        and (f.ci.high < b.ci.low or b.ci.high < f.ci.low)
    ]  # fmt: skip


def test_compare_defaults_to_the_previous_release_and_flags_changes_beyond_intervals(demo_store):
    at = _app(view="Compare", cand=V3)
    _ok(at)
    assert at.selectbox(key="base").value == V2  # the previous audit of the same model
    before, after = demo_store.get(V2), demo_store.get(V3)
    assert _beyond(before, after) == [EPS8]
    assert _metric(at, "Worse, beyond CIs") == "1" and _metric(at, "Better, beyond CIs") == "0"
    same = [f.key for f in after.findings if before.finding(f.key) and before.finding(f.key).value == f.value]
    assert _metric(at, "Unchanged") == str(len(same))
    assert _metric(at, "Changed") == str(len(after.findings) - len(same))
    assert (_metric(at, "Added"), _metric(at, "Removed")) == ("0", "0")
    table = _frame(at, "changes_table").value
    row = table[table["finding"] == EPS8].iloc[0]
    assert (row["direction"], row["beyond CIs"]) == ("worse", "yes")
    assert row["delta"] == pytest.approx(after.finding(EPS8).value - before.finding(EPS8).value)
    gates = _frame(at, "gate_changes_table").value
    assert gates[["metric", "baseline", "candidate status"]].values.tolist() == [[EPS8, "passed", "failed"]]
    assert _charts(at) == 1  # the per-finding changes

    at.toggle(key="only_beyond").set_value(True).run()
    assert list(_frame(at, "changes_table").value["finding"]) == [EPS8]

    # More than two runs: v1 as the baseline, v2 and v3 as candidates.
    at.selectbox(key="base").set_value("digits01" + "0" * 20).run()
    at.multiselect(key="more").set_value([V2]).run()
    _ok(at)
    counts = _frame(at, "counts_table").value
    v1 = demo_store.get("digits01" + "0" * 20)
    assert list(counts["worse beyond CIs"]) == [len(_beyond(v1, after)), len(_beyond(v1, before))] == [2, 0]

    # The same audit on both sides: nothing to compare.
    at.selectbox(key="base").set_value(V3).run()
    _ok(at)
    assert "two different audits" in at.info[0].value


def test_compare_identical_runs_counts_everything_unchanged(store_url):
    from dataclasses import replace

    a = classifier_report(2)
    b = replace(a, run_id="copy" + "0" * 28, created_at="2025-04-11T09:00:00+00:00")
    with ReportStore(store_url) as store:
        fill_store(store, [a, b], files_in=None)
    at = _app(view="Compare", cand=b.run_id)
    _ok(at)
    assert _metric(at, "Unchanged") == str(len(a.findings)) and _metric(at, "Changed") == "0"
    assert any("No gate changed status" in c.value for c in at.caption)


def test_trend_of_a_metric_over_one_models_audits(demo_store):
    at = _app(view="Trend", trend_model=CLASSIFIER, metric=EPS8)
    _ok(at)
    assert at.selectbox(key="metric").value == EPS8
    table = _frame(at, "trend_table").value
    expected = [classifier_report(i).finding(EPS8) for i in (1, 2, 3)]  # oldest first
    assert list(table["value"]) == [f.value for f in expected]
    assert list(table["low"]) == [f.ci.low for f in expected]
    assert list(table["run"]) == [1, 2, 3]
    assert list(table["run id"]) == ["digits01" + "0" * 20, V2, V3]
    assert _charts(at) == 1
    spec = at.get("vega_lite_chart")[0].proto.spec
    assert '"run:O"' in spec or '"field": "run"' in spec or '"field":"run"' in spec
    assert "strokeDash" in spec  # the gate's bound (min 0.05) as a dashed line
    at.radio(key="trend_x").set_value("time").run()
    _ok(at)
    assert '"tickCount": "day"' in at.get("vega_lite_chart")[0].proto.spec.replace('":"', '": "')
    # Only the metrics this model has are offered.
    options = at.selectbox(key="metric").options
    assert EPS8 in options and not any(o.startswith("quality.") for o in options)


def test_leaderboard_is_the_latest_audit_of_each_model(demo_store):
    at = _app(view="Leaderboard")
    _ok(at)
    at.multiselect(key="board_metrics").set_value([EPS8, "quality.fid/fid"]).run()
    _ok(at)
    board = next(d.value for d in at.dataframe if "open" in d.value.columns)
    assert list(board["model"]) == ["SmolLM2-135M-Instruct", CLASSIFIER, "tiny-dcgan"]  # newest audit first
    by_model = board.set_index("model")
    assert by_model.loc[CLASSIFIER, EPS8] == classifier_report(3).finding(EPS8).value
    assert by_model.loc["tiny-dcgan", "quality.fid/fid"] == 41.7
    assert by_model.loc["tiny-dcgan", "quality.fid/fid CI"] == "[39.6, 44]"
    assert math.isnan(by_model.loc["tiny-dcgan", EPS8])
    assert by_model.loc[CLASSIFIER, "open"] == f"?view=Scorecard&run={V3}"


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
                      ("Failures", None), ("Compare", None), ("Leaderboard", None)):  # fmt: skip
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
        shown.extend(t.label for t in at.tabs)
    assert md_escape(HOSTILE) in " ".join(shown)  # shown, as text
    assert any(md_escape("[link](javascript:alert(1))") in s for s in shown)
    # The run table gets the names as they are: the browser shows them with textContent.
    at.radio(key="view").set_value("Audits").run()
    assert HOSTILE + " *bold* :red[x] [link](javascript:alert(1))" in _column(at, "audit")


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
        for view in ("Scorecard", "Compare", "Trend", "Leaderboard", "Failures", "Audits"):
            at.radio(key="view").set_value(view).run()
            assert not at.exception, [e.value for e in at.exception]
            assert at.title[0].value != "No audits yet"
        import dashboard.cli, dashboard.data, dashboard.charts, dashboard.history, dashboard.report_view
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
    assert md_escape("<b>x</b>") == r"\<b\>x\<\/b\>"
    assert md_escape("[a](http://e) :red[y] $x$ *i* `c`") == r"\[a\]\(http\:\/\/e\) \:red\[y\] \$x\$ \*i\* \`c\`"
    assert md_escape("two\nlines\x1b[31m red\x07") == "two lines red"
    assert md_escape("plain words 123") == "plain words 123"


def test_list_records_sorting_and_counts(demo_store):
    rows = data.all_audits(demo_store)
    records = data.list_records(rows)
    assert [r["run"] for r in records] == [r.run_id for r in rows]
    assert set(records[0]) == {"run", "colour", *data.LIST_COLUMNS}
    by_findings = data.sort_audits(rows, "findings", descending=True)
    assert [r.n_findings for r in by_findings] == sorted((r.n_findings for r in rows), reverse=True)
    assert [r.name for r in data.sort_audits(rows, "audit", descending=False)][:2] == ["dcgan-r1", "dcgan-r2"]
    # Status sorts by severity (passed, failed, invalid, crashed), unknown ones last.
    assert [r.status for r in data.sort_audits(rows, "status", descending=False)][-2:] == ["failed", "crashed"]
    values = data.metric_values(demo_store, rows, EPS8)
    assert set(values) == {"digits01" + "0" * 20, V2, V3}
    ranked = data.sort_audits(rows, EPS8, descending=True, values=values)
    assert [r.run_id for r in ranked[:3]] == ["digits01" + "0" * 20, V2, V3] and len(ranked) == len(rows)
    with pytest.raises(InputError, match="cannot sort the list by"):
        data.sort_audits(rows, "nope", descending=True)
    counts = data.status_counts(rows)
    assert sum(counts.values()) == len(rows) and counts["other"] == 0


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
    assert [r.name for r in data.filter_audits(rows, name="DCGAN")] == ["dcgan-r2", "dcgan-r1"]
    values = {V2: 0.5, V3: 0.1}
    assert [r.run_id for r in data.filter_audits(rows, values=values, low=0.2)] == [V2]
    assert [r.run_id for r in data.filter_audits(rows, values=values, low=0.1, high=0.1)] == [V3]
    with pytest.raises(InputError, match="status must be one of passed, failed, invalid, crashed, other"):
        data.filter_audits(rows, status="ok")
    with pytest.raises(InputError, match="lower bound 2 is above its upper bound 1"):
        data.filter_audits(rows, values=values, low=2, high=1)
    assert history.default_baseline(rows, V3) == V2
    assert history.default_baseline(rows, "dcgan02" + "0" * 21) == "dcgan01" + "0" * 21
    # The oldest audit of its model falls back to the previous audit of any model, or None.
    assert history.default_baseline(rows, "dcgan01" + "0" * 21) == "digits01" + "0" * 20
    assert history.default_baseline(rows, "digits01" + "0" * 20) is None
    assert history.default_baseline(rows, "no-such-run") is None


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
        for name in ("../audits.db", "/etc/passwd", "report.json/../../audits.db", "samples.parquet"):
            with pytest.raises(InputError, match="unknown report file"):
                data.report_bytes(store, with_files.run_id, name)


def test_samples_of_a_finding_come_from_the_stores_copy(store_url, tmp_path):
    report = classifier_report(2)
    with ReportStore(store_url) as store:
        fill_store(store, [report], files_in=tmp_path / "runs", samples=True)
        assert store.report_file(report.run_id, "samples.parquet").is_relative_to(store.reports_root)
        f = report.finding(EPS8)
        samples = data.samples_frame(store, report.run_id, f)
        # As many records as the finding counted, as many correct as its value says (capped for display).
        full = data.samples_frame(store, report.run_id, f, limit=10_000)
        assert len(full) == f.n and full["correct"].sum() == round(f.value * f.n)
        assert len(samples) == data.SAMPLE_ROWS and set(full["eps"]) == {"8/255"}
        assert "probe" not in samples and {"sample_id", "label", "seed", "fold", "score"} <= set(samples)
        # A finding of another probe: no record; a run without the file: None.
        assert data.samples_frame(store, report.run_id, report.finding("bias.classifier/accuracy_gap")).empty
        other = classifier_report(1)
        fill_store(store, [other], files_in=None)
        assert data.samples_frame(store, other.run_id, f) is None
        (store.reports_root / report.run_id / "samples.parquet").write_bytes(b"not parquet")
        with pytest.raises(InputError, match="cannot read samples.parquet"):
            data.samples_frame(store, report.run_id, f)


def test_probe_sections_find_curves_matrices_groups_and_values():
    f_curve = Finding("robustness.pgd", "auc", 0.4, True, evidence={
        "curve": {"x": [0, 0.01, 0.03], "y": [0.9, "NaN", 0.1], "y_low": [0.8, 0.4], "x_scale": "log",
                  "series": "pgd", "x_label": "eps"},
        "curves": [{"x": [0, 0.01, 0.03], "y": [0.8, 0.5, 0.2], "y_low": [0.7, 0.4, 0.1], "y_high": [0.9, 0.6, 0.3],
                    "series": "fgsm", "x_label": "eps"}, {"x": "bad"}]})  # fmt: skip
    f_bad = Finding("robustness.pgd", "other", 0.4, True, evidence={"curve": {"x": [1, 2], "y": [1]}})
    # The probes' format (audit/curves.py): a chart id joins curves whatever their labels; x_ticks name x.
    f_chart = Finding("deepfake.y", "auroc", 0.9, True, evidence={"curves": [
        {"x": [0, 1], "y": [0.9, 0.8], "x_ticks": ["none", "jpeg-75"], "series": "d1", "chart": "steps",
         "x_label": "step"},
        {"x": [0, 1], "y": [0.7, 0.6], "x_ticks": ["none", "jpeg-75"], "series": "d2", "chart": "steps",
         "x_label": "post-processing"}]})  # fmt: skip
    f_steps = Finding("deepfake.x", "auroc", 0.9, True, evidence={
        "curve": {"x": ["none", "jpeg-75", "resize-0.5"], "y": [0.99, 0.9, 0.7], "x_label": "post-processing"}})
    f_matrix = Finding("bias.c", "accuracy", 0.9, True, evidence={"confusion_matrix": CONFUSION})
    f_bad_matrix = Finding("bias.c", "gap", 0.1, False, evidence={"confusion_matrix": {"matrix": [[1, 2], [3]]}})
    groups = [Finding("bias.x", "rate", v, True, ci=Interval(v - 0.1, v + 0.1, "m"), slice={"group": g, "attack": "fgsm"})
              for g, v in (("a", 0.3), ("b", 0.2))]  # fmt: skip
    fid = Finding("quality.fid", "fid", 41.7, False, ci=Interval(39.0, 44.0, "bootstrap"))
    nan = Finding("quality.fid", "fid_nan", math.nan, False, ci=Interval(0, 1, "m"))
    report = AuditReport(
        name="r", subject=SubjectIdentity("m", "classifier", "python"),
        findings=(f_curve, f_bad, f_steps, f_chart, f_matrix, f_bad_matrix, *groups, fid, nan),
        probes={"quality.fid": ProbeStatus("ok"), "robustness.pgd": ProbeStatus("ok"), "bias.x": ProbeStatus("ok")},
    )  # fmt: skip
    sections = {s.probe: s for s in rv.probe_sections(report)}
    assert list(sections)[:3] == ["quality.fid", "robustness.pgd", "bias.x"]  # status (spec) order
    (curves,) = sections["robustness.pgd"].curves  # both attacks in one chart
    pgd, fgsm = curves.curves
    assert (pgd.series, fgsm.series) == ("pgd", "fgsm")
    assert pgd.y[0] == 0.9 and math.isnan(pgd.y[1]) and pgd.low is None  # malformed bounds dropped
    assert fgsm.low == (0.7, 0.4, 0.1) and curves.x_scale == "linear"  # log asked for, but x has a 0
    assert list(curves.frame()["series"]) == ["pgd"] * 3 + ["fgsm"] * 3
    (steps,) = sections["deepfake.x"].curves
    assert steps.x_kind == "names" and steps.curves[0].x == ("none", "jpeg-75", "resize-0.5")
    (chart,) = sections["deepfake.y"].curves
    assert [c.series for c in chart.curves] == ["d1", "d2"] and chart.curves[1].x == ("none", "jpeg-75")
    (matrix,) = sections["bias.c"].matrices
    assert matrix.labels == ("digit 0-4", "digit 5-9")
    cm = matrix.frame().set_index(["true", "predicted"])
    assert cm.loc[("digit 5-9", "digit 0-4"), "count"] == 14
    assert cm.loc[("digit 0-4", "digit 0-4"), "share"] == pytest.approx(172 / 180)
    (group,) = sections["bias.x"].groups
    frame = group.frame()
    assert list(frame["group"]) == ["attack=fgsm, group=b", "attack=fgsm, group=a"]  # whole slice, worst first
    assert list(frame["low"]) == pytest.approx([0.1, 0.2]) and list(frame["high"]) == pytest.approx([0.3, 0.4])
    assert sections["quality.fid"].values == (fid,)


def test_history_helpers_on_hand_made_reports():
    from dataclasses import replace

    v1, v3 = classifier_report(1), classifier_report(3)
    counts = history.change_counts(history.compare_reports(v1, v1))
    assert counts["unchanged"] == len(v1.findings) and counts["changed"] == counts["added"] == counts["removed"] == 0
    assert [(g.metric, g.before, g.after) for g in history.gate_changes(v1, v3)] == [(EPS8, "passed", "failed")]
    fewer = replace(v3, gates=v3.gates[:1])
    assert [(g.metric, g.after) for g in history.gate_changes(v1, fewer)] == [
        (EPS8, "failed"), ("bias.classifier/accuracy_gap", "—")]
    frame = history.runs_values_frame([("v1", v1), ("v3", v3)], [EPS8])
    b, a = v1.finding(EPS8), v3.finding(EPS8)
    assert list(frame["change"]) == pytest.approx([0.0, 100 * (a.value - b.value) / b.value])
    assert frame["low"].iloc[1] == pytest.approx(100 * (a.ci.low - b.value) / b.value)
    assert history.gate_bounds(v1, EPS8) == [("min", 0.05)]
    assert history.gate_bounds(v1, "bias.classifier/accuracy_gap") == [("max", 0.1)]
    assert history.gate_bounds(v1, "robustness.pgd/robust_accuracy_auc") == []


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
