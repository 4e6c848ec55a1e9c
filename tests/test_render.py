"""Tests of the report writers: JSON round trip, HTML, Markdown, JUnit XML and the scorecard."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from audit.findings import AuditReport, Finding, GateResult, Interval, ProbeStatus, SubjectIdentity
from audit.render import REPORT_FILES, format_number, write_reports
from audit.render.html import render_html
from audit.render.junit import GATES_SUITE, PROBES_SUITE, render_junit
from audit.render.markdown import escape_cell, render_markdown
from audit.render.terminal import print_scorecard
from tests.report_factory import (
    AUDIT_NAME,
    CRASHED_PROBE,
    CURVE_FINDING,
    HOSTILE,
    NAN_FINDING,
    SKIPPED_PROBE,
    make_report,
    passing_report,
)

ESCAPED_HOSTILE = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def report() -> AuditReport:
    return make_report()


@pytest.fixture(scope="module")
def hostile() -> AuditReport:
    return make_report(hostile=True)


@pytest.fixture(scope="module")
def written(report: AuditReport, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_reports(report, tmp_path_factory.mktemp("reports") / "out")


@pytest.fixture(scope="module")
def page(written: dict[str, Path]) -> str:
    """The HTML report as written to disk (rendered once per module: charts cost time)."""
    return written["html"].read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def hostile_page(hostile: AuditReport) -> str:
    return render_html(hostile)


def _minimal(**kw) -> AuditReport:
    return AuditReport(
        name="mini",
        subject=SubjectIdentity(name="m", kind="classifier", source="python"),
        run_id="0" * 32,
        created_at="2025-01-01T00:00:00+00:00",
        **kw,
    )


# -- the factory -------------------------------------------------------------------------


def test_factory_covers_what_renderers_must_handle(report: AuditReport) -> None:
    statuses = {p.status for p in report.probes.values()}
    assert statuses == {"ok", "failed", "skipped"}
    assert {g.status for g in report.gates} == {"passed", "failed", "skipped"}
    assert math.isnan(report.finding(NAN_FINDING).value) and report.finding(NAN_FINDING).warnings
    assert "curve" in report.finding(CURVE_FINDING).evidence
    assert any("per_document" in f.evidence for f in report.findings)
    assert report.probes[CRASHED_PROBE].traceback.startswith("Traceback")
    assert report.status == "crashed"
    assert passing_report().status == "passed"
    assert make_report().to_json() == report.to_json(), "the factory must be deterministic"


# -- write_reports -------------------------------------------------------------------------


def test_write_reports_round_trips_json_exactly(written: dict[str, Path], report: AuditReport) -> None:
    paths = written
    out = paths["json"].parent
    assert {k: p.name for k, p in paths.items()} == dict(REPORT_FILES)
    assert all(p.is_file() and p.parent == out for p in paths.values())
    loaded = AuditReport.load(paths["json"])
    # `==` on the records would fail on the NaN finding (nan != nan); the JSON text is exact.
    assert loaded.to_json() == report.to_json()
    assert math.isnan(loaded.finding(NAN_FINDING).value)
    assert loaded.findings[0].evidence["per_document"] == report.findings[0].evidence["per_document"]
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES.values())
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(report)
    assert paths["junit"].read_text(encoding="utf-8") == render_junit(report)
    ET.parse(paths["junit"])


def test_write_reports_replaces_existing_files(tmp_path) -> None:
    out = tmp_path / "new" / "folder"
    write_reports(_minimal(), out)
    write_reports(_minimal(probes={"p": ProbeStatus(status="failed", error="boom")}), out)
    assert AuditReport.load(out / "report.json").status == "crashed"
    assert "CRASHED" in (out / "report.md").read_text(encoding="utf-8").splitlines()[0]
    assert "crashed" in (out / "report.html").read_text(encoding="utf-8")
    assert len(list(out.iterdir())) == len(REPORT_FILES)


def test_write_reports_writes_nothing_when_a_renderer_fails(tmp_path, monkeypatch) -> None:
    import audit.render.junit

    def broken(report: AuditReport) -> str:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(audit.render.junit, "render_junit", broken)
    with pytest.raises(RuntimeError, match="renderer bug"):
        write_reports(_minimal(), tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- HTML ----------------------------------------------------------------------------------

_EXTERNAL = [
    re.compile(r"""\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I),
    re.compile(r"""\b(?:xlink:)?href\s*=\s*["']?\s*(?:javascript|data|https?|ftp|file):""", re.I),
    re.compile(r"@import", re.I),
    re.compile(r"""url\(\s*["']?\s*(?!#)""", re.I),  # only url(#id) (SVG clip paths) is local
    re.compile(r"<(?:script|link|iframe|object|embed|img)\b", re.I),
]


def external_references(page: str) -> list[str]:
    """Everything in the page that could make a browser fetch something or run a script."""
    return [m.group(0) for rx in _EXTERNAL for m in rx.finditer(page)]


@pytest.mark.parametrize(
    "snippet",
    [
        '<img src="https://cdn.example/x.png">',
        "<link href='//fonts.example/css' rel=stylesheet>",
        "<style>@import 'x.css';</style>",
        "<div style=\"background: url('https://x/y.png')\"></div>",
        '<a href="http://example.com">x</a>',
        '<script src="app.js"></script>',
    ],
)
def test_external_reference_check_catches(snippet: str) -> None:
    assert external_references(f"<html><body>{snippet}</body></html>")


def test_html_is_self_contained(page: str, hostile_page: str) -> None:
    assert external_references(page) == []
    assert external_references(hostile_page) == []
    # The only absolute URLs are SVG/XLink namespace declarations, which browsers never fetch.
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert "<!DOCTYPE svg" not in page and "<?xml" not in page


def test_html_content(page: str, report: AuditReport) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert f"<title>genai-audit: {AUDIT_NAME} (crashed)</title>" in page
    for f in report.findings:
        assert f.metric in page
    for text in (
        report.run_id,
        report.created_at,
        report.subject.name,
        report.subject.source,
        report.subject.revision,
        report.subject.files[0].sha256,
        "toxicity parity",  # a gate's name
        "value 0.034 &gt; max 0.02",  # a gate's message, escaped
        "bootstrap-percentile-95",
        "[0.0213, 0.0537]",
        "RuntimeError: detector returned 3 scores for 4 texts",  # the crashed probe's error
        "File &#34;/work/main/audit/runner.py&#34;",  # its traceback, in a <details>
        "this subject is a text-generator",  # the skip reason
        "1,843 J (measured, nvml)",
        "≈ 5,120 J (estimate, tdp x time)",
        "unavailable: CPU only, RAPL not readable",
        "NVIDIA H100 80GB HBM3",  # environment, nested
        "packages.torch",
        "total_s",
    ):
        assert text in page, text
    for tag in ("table", "section", "details", "figure", "svg"):
        assert page.count(f"<{tag}") == page.count(f"</{tag}>"), tag


def test_html_nan_shows_as_na(page: str) -> None:
    row = _html_row(page, "length=long")
    assert ">n/a<" in row
    assert "nan" not in row.lower().replace("class=\"num nan\"", "")
    assert "no generation longer than 256 tokens" in row


def _html_row(page: str, needle: str) -> str:
    # Finding rows carry an id (the worst-slices tables link to them); other tables repeat slices.
    rows = [r for r in re.findall(r"<tr id=.*?</tr>", page, re.S) if needle in r]
    assert len(rows) == 1, rows
    return rows[0]


def test_html_draws_a_curve_only_when_evidence_has_one(report: AuditReport) -> None:
    curve = report.finding(CURVE_FINDING)
    with_curve = render_html(_minimal(findings=(curve,)))
    assert with_curve.count("<svg") == 1
    assert "batch size" in with_curve  # the axis label is drawn as SVG text
    without = render_html(_minimal(findings=(replace(curve, evidence={}),)))
    assert "<svg" not in without


def test_html_charts_per_probe(page: str, report: AuditReport) -> None:
    # An interval chart for each probe with several findings, one curve, one histogram.
    probes_with_several = {p for p in {f.probe for f in report.findings} if sum(f.probe == p for f in report.findings) > 1}
    assert page.count("<svg") == len(probes_with_several) + 2
    assert "distribution per document" in page
    assert "chart could not be drawn" not in page


def test_html_survives_bad_evidence() -> None:
    findings = (
        Finding("p", "cost", 3.0, False, unit="$", evidence={"curve": {"x": [1, 2], "y": [1.0, 2.0], "x_label": "in $ and $"}}),
        Finding("p", "broken", 1.0, True, evidence={"curve": {"x": [1, 2, 3], "y": [1.0]}, "per_document": ["a"]}),
        Finding("p", "nan_values", 1.0, True, evidence={"values": [float("nan"), float("inf")]}),
        Finding("p", "all_nan", float("nan"), True, ci=Interval(float("nan"), float("nan"), "m")),
    )
    page = render_html(_minimal(findings=findings))
    assert page.count("<svg") == 2  # the interval chart and the one valid curve
    assert "chart could not be drawn" not in page


def test_html_escapes_hostile_text(hostile_page: str) -> None:
    assert HOSTILE not in hostile_page
    assert re.search(r"<script", hostile_page, re.I) is None
    slice_row = _html_row(hostile_page, "group=nonbinary")
    assert f"group=nonbinary{ESCAPED_HOSTILE}" in slice_row  # the slice value
    assert f'<span class="warn">{ESCAPED_HOSTILE}</span>' in slice_row  # the warning
    assert hostile_page.count(ESCAPED_HOSTILE) >= 6  # + gate message, error, reason, environment


def test_html_of_an_empty_report() -> None:
    page = render_html(_minimal())
    assert "mini" in page and "passed" in page and "No findings." in page and "<svg" not in page


# -- Markdown ------------------------------------------------------------------------------


def _cells(row: str) -> list[str]:
    """Cells of a Markdown table row, split on unescaped pipes only (as GitHub does)."""
    assert row.startswith("| ") and row.endswith(" |"), row
    return [c.strip() for c in re.split(r"(?<!\\)\|", row[1:-1])]


def _section(md: str, title: str) -> list[str]:
    lines = md.splitlines()
    start = lines.index(f"#### {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#### ")), len(lines))
    return [line for line in lines[start:end] if line.strip()]


def test_markdown_headline(report: AuditReport) -> None:
    assert render_markdown(report).splitlines()[0] == f"### genai-audit: CRASHED · {AUDIT_NAME}"
    assert render_markdown(passing_report()).splitlines()[0].startswith("### genai-audit: PASSED")
    failed_only = replace(passing_report(), gates=report.gates)
    assert render_markdown(failed_only).splitlines()[0].startswith("### genai-audit: FAILED")
    md = render_markdown(report)
    assert not [c for c in md if 0x1F000 <= ord(c) <= 0x1FAFF or 0x2600 <= ord(c) <= 0x27BF], "no emoji"


def test_markdown_gate_table(report: AuditReport) -> None:
    rows = _section(render_markdown(report), "Gates")
    header, rule, *body = rows
    assert _cells(header) == ["Status", "Gate", "Value", "Bound", "Message"]
    assert len(body) == len(report.gates)
    assert all(len(_cells(r)) == 5 for r in rows)
    statuses = [_cells(r)[0] for r in body]
    assert statuses == ["PASSED", "**FAILED**", "PASSED", "SKIPPED"]
    assert "toxicity parity" in body[1] and "0.02" in _cells(body[1])[3]


def test_markdown_escapes_pipes_and_newlines() -> None:
    gate = GateResult(metric="p/m", passed=False, status="failed", message="a | b\nc")
    f = Finding("p", "m", 1.0, True, slice={"group": "x|y"}, warnings=("one\ntwo", "three|four"))
    md = render_markdown(_minimal(findings=(f,), gates=(gate,)))
    gate_row = _section(md, "Gates")[2]
    assert len(_cells(gate_row)) == 5
    assert _cells(gate_row)[4] == r"a \| b<br>c"
    finding_row = _section(md, "Findings")[2]
    assert len(_cells(finding_row)) == 6
    assert r"group=x\|y" in finding_row and r"one<br>two<br>three\|four" in finding_row
    assert escape_cell("a|b") == r"a\|b"


def test_markdown_findings_failed_and_skipped_probes(report: AuditReport, hostile: AuditReport) -> None:
    md = render_markdown(report)
    rows = _section(md, "Findings")
    assert len(rows) == 2 + len(report.findings)
    nan_row = next(r for r in rows if "length=long" in r)
    assert _cells(nan_row)[1] == "n/a"
    ppl = _cells(rows[2])
    assert ppl[1:4] == ["12.84 ppl", "[11.91, 13.89]", "200"]
    failed = _section(md, "Failed probes")
    assert failed == [f"- `{CRASHED_PROBE}`: RuntimeError: detector returned 3 scores for 4 texts"]
    assert "Traceback" not in md
    assert _section(md, "Skipped probes")[0].startswith(f"- `{SKIPPED_PROBE}`: applies to image-generator")
    hostile_md = render_markdown(hostile)
    assert HOSTILE not in hostile_md
    assert re.search(r"(?<!\\)<", hostile_md.replace("<br>", "").replace("<sub>", "").replace("</sub>", "")) is None
    assert r"group=nonbinary\<script\>alert(1)\</script\>" in hostile_md


# -- JUnit ---------------------------------------------------------------------------------


def _suite(root: ET.Element, name: str) -> ET.Element:
    (suite,) = [s for s in root.findall("testsuite") if s.get("name") == name]
    return suite


def _counts(el: ET.Element) -> dict[str, int]:
    return {k: int(el.get(k)) for k in ("tests", "failures", "errors", "skipped")}


def test_junit_counts_match_the_report(report: AuditReport) -> None:
    root = ET.fromstring(render_junit(report))
    assert root.tag == "testsuites"
    gates = _suite(root, GATES_SUITE)
    assert _counts(gates) == {"tests": 4, "failures": 1, "errors": 0, "skipped": 1}
    cases = gates.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "quality.perplexity/perplexity",
        "toxicity parity",
        "quality.diversity/distinct_2[length=short]",
        "quality.perplexity/perplexity",
    ]
    assert {c.get("classname") for c in cases} == {AUDIT_NAME}
    assert cases[1].find("failure").get("message") == "value 0.034 > max 0.02"
    assert cases[3].find("skipped").get("message").startswith("regression gate skipped")

    probes = _suite(root, PROBES_SUITE)
    assert _counts(probes) == {"tests": len(report.probes), "failures": 0, "errors": 1, "skipped": 1}
    (crashed,) = [c for c in probes.findall("testcase") if c.find("error") is not None]
    assert crashed.get("name") == CRASHED_PROBE
    error = crashed.find("error")
    assert error.get("message") == "RuntimeError: detector returned 3 scores for 4 texts"
    assert error.get("type") == "RuntimeError"
    assert error.text.startswith("Traceback (most recent call last):")
    assert _counts(root) == {"tests": 4 + len(report.probes), "failures": 1, "errors": 1, "skipped": 2}


def test_junit_passing_report_has_no_failures() -> None:
    root = ET.fromstring(render_junit(passing_report()))
    assert _counts(root)["failures"] == 0 and _counts(root)["errors"] == 0


def test_junit_parses_with_hostile_and_control_characters(hostile: AuditReport) -> None:
    probes = {**hostile.probes, "x": ProbeStatus(status="failed", error="bad\x00byte\x1b[31m red\x0c")}
    text = render_junit(replace(hostile, probes=probes))
    root = ET.fromstring(text)
    error = _suite(root, PROBES_SUITE).find("testcase[@name='x']/error")
    assert error.get("message") == "badbyte red"
    assert error.get("type") == "ProbeCrashed"
    assert "<script>" not in text  # escaped by the XML writer


# -- terminal scorecard ----------------------------------------------------------------------


def _scorecard(report: AuditReport) -> str:
    console = Console(record=True, width=100)
    print_scorecard(report, console)
    return console.export_text()


def test_scorecard_shows_status_gates_and_findings(report: AuditReport) -> None:
    text = _scorecard(report)
    assert "CRASHED" in text and AUDIT_NAME in text
    for f in report.findings:
        assert f.metric in text, f.metric
    assert "toxicity parity" in text and "FAILED" in text and "SKIPPED" in text
    assert f"{CRASHED_PROBE}: RuntimeError: detector returned 3 scores" in text
    assert SKIPPED_PROBE in text
    assert "PASSED" in _scorecard(passing_report())


def test_scorecard_nan_shows_as_na(report: AuditReport) -> None:
    (line,) = [ln for ln in _scorecard(report).splitlines() if "distinct_2[length=long]" in ln]
    assert "n/a" in line and "nan" not in line


def test_scorecard_survives_missing_numbers_and_markup() -> None:
    findings = (
        Finding("p", "m", float("nan"), True, n=None, slice={"eps": "[bold red]8/255"}),
        Finding("p", "inf", float("inf"), False),
    )
    gates = (GateResult(metric="p/m", passed=False, status="failed", message="[red]no value[/red]"),)
    text = _scorecard(_minimal(findings=findings, gates=gates, probes={"p": ProbeStatus(status="failed")}))
    assert "[bold red]8/255" in text and "[red]no value[/red]" in text
    assert "CRASHED" in text and "no error recorded" in text and "inf" in text


def test_scorecard_caps_findings_and_keeps_gated_ones(report: AuditReport) -> None:
    console = Console(record=True, width=100)
    print_scorecard(report, console, max_findings=2)
    text = console.export_text()
    assert "quality.perplexity/perplexity" in text  # named by a gate
    assert "more findings in report.html" in text
    assert "toxicity_rate[group=male]" not in text


# -- shared formatting -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "text"),
    [(None, "—"), (float("nan"), "n/a"), (float("inf"), "inf"), (0.0, "0"), (12.8431, "12.84"),
     (0.0034, "0.0034"), (123456.7, "123,457"), (-2.5e-5, "-2.500e-05")],
)
def test_format_number(x, text) -> None:
    assert format_number(x) == text
