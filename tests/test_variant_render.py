"""Reports with variants: the side-by-side tables and the quality-versus-cost chart in HTML,
Markdown, the terminal, ``diff``, the store and the dashboard; reports without variants unchanged."""

import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from audit.cli import cli
from audit.compare import diff_markdown, diff_reports
from audit.findings import GateResult
from audit.render import describe_bound, gate_label, print_scorecard, render_html, render_markdown
from audit.render.pareto import pareto_chart
from audit.variant_view import report_quality_cost
from dashboard.text import md_escape
from tests.report_factory import HOSTILE, make_report, make_variant_report


def _terminal(report, width=100):
    console = Console(record=True, width=width)
    print_scorecard(report, console)
    return console.export_text()


def test_html_has_the_variants_part_the_tables_and_the_chart():
    html = render_html(make_variant_report())
    assert '<h2 id="variants">Variants</h2>' in html and '<a href="#variants">Variants</a>' in html
    assert html.count("<h4>Variants side by side</h4>") == 3  # one per probe
    assert html.count('class="num flag"') == 1  # int8 perplexity only
    assert "Δ +7.5% [+4.17%, +10.8%]" in html  # 0.9 / 12 and the paired interval [0.5, 1.3] / 12
    assert "Δ +0.002 [-0.004, +0.008]" in html  # a rate: in points, not %
    assert "quantization=int8-dynamic" in html and "cdcdcdcdcdcd…" in html  # overrides and the adapter's hash
    assert "Pareto front: int8, lora" in html
    # the subject's findings table lists the subject's findings only
    section = html.split('id="probe-quality-perplexity"')[1].split("<h4>Variants side by side</h4>")[0]
    assert section.count("<tr id=") == 1


def test_variant_pages_are_self_contained(tmp_path):
    from audit.compare import write_diff_html
    from tests.test_render import external_references

    r = make_variant_report(hostile=True)
    assert external_references(render_html(r)) == []
    assert external_references(write_diff_html(r, r, tmp_path / "d.html").read_text()) == []


def test_report_without_variants_has_no_variant_part():
    for r in (make_report(), make_report(hostile=True)):
        html, md, term = render_html(r), render_markdown(r), _terminal(r)
        assert 'id="variants"' not in html and "Variants side by side" not in html
        assert "side by side" not in md and "Quality against cost" not in md
        assert "side by side" not in term


def test_hostile_text_in_variant_parts_is_escaped():
    html = render_html(make_variant_report(hostile=True))
    assert HOSTILE not in html and "&lt;script&gt;" in html
    assert re.search(r"<script", html, re.I) is None
    md = render_markdown(make_variant_report(hostile=True))
    outside_code = re.sub(r"`[^`]*`", "", md)  # inside a code span it is shown as text
    assert "<script>" not in outside_code and r"\<script\>" in outside_code
    text = _terminal(make_variant_report(hostile=True), width=200)
    assert HOSTILE in text  # printed as text, never interpreted as markup


def test_pareto_svg_marks_the_front():
    qc = report_quality_cost(make_variant_report())
    svg = pareto_chart(qc)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    circles = re.findall(r'<circle [^>]*fill="([^"]+)"[^>]*stroke-width="2"><title>([^<]+)</title>', svg)
    assert sorted((t.split(":")[0], fill != "#fff") for fill, t in circles) == [
        ("base", False), ("int8", True), ("lora", True)]
    assert svg.count("<polyline") == 1  # the front joined
    with pytest.raises(ValueError, match="no point"):
        pareto_chart(replace(qc, points=()))


def test_markdown_side_by_side_and_points():
    md = render_markdown(make_variant_report())
    assert "#### Variants side by side" in md
    assert "| Finding | base | int8 | lora |" in md
    row = next(line for line in md.splitlines() if line.startswith("| `quality.perplexity/perplexity` | 12 ppl"))
    assert "**worse (significant)**" in row and row.count("Δ") == 2
    assert "| int8 | 12.9 | 180,000,000 | yes |" in md and "| base | 12 | 540,000,000 |  |" in md
    # the findings table holds the subject's four findings
    findings = md.split("#### Findings")[1].split("####")[0]
    assert len([line for line in findings.splitlines() if line.startswith("| ↓")]) == 4


def test_terminal_scorecard_is_compact_and_flags():
    text = _terminal(make_variant_report())
    assert "Variants side by side" in text
    line = next(x for x in text.splitlines() if "quality.perplexity/perplexity" in x and "12.9" in x)
    assert "+7.5% ▲" in line and "11.4 ppl -5%" in line and "[" not in line  # no intervals in the terminal
    assert "▲ worse, interval excludes 0" in text


def test_gate_label_and_bound_of_a_variant_gate():
    g = GateResult(metric="quality.perplexity/perplexity", passed=False, message="m", status="failed",
                   gate={"metric": "quality.perplexity/perplexity", "variant": "int8", "max_delta": 0.05,
                         "relative": True, "significant_only": True})
    assert gate_label(g) == "quality.perplexity/perplexity · variant int8"
    assert describe_bound(g) == "worse by ≤ 5%, if significant"
    named = replace(g, gate={**g.gate, "name": "int8 ppl"})
    assert gate_label(named) == "int8 ppl"


def test_diff_reports_matches_variant_by_variant():
    a = make_variant_report()
    b = replace(a, findings=tuple(replace(f, value=f.value + (1.0 if f.variant == "int8" else 0.0)) for f in a.findings))
    changes = diff_reports(a, b)
    assert len(changes) == 12
    moved = [(c.key, c.variant, c.delta) for c in changes if c.direction != "same"]
    assert moved == [(k, "int8", pytest.approx(1.0)) for k in (
        "quality.perplexity/perplexity", "bias.toxicity/toxicity_rate[group=female]",
        "energy.footprint/weight_bytes_memory", "energy.footprint/energy_j_per_1k_tokens")]
    assert "`quality.perplexity/perplexity · variant int8`" in diff_markdown(changes)


def test_cli_diff_side_by_side_and_html(tmp_path):
    a = make_variant_report()
    b = replace(a, run_id="b" * 32,
                findings=tuple(replace(f, value=f.value * (1.2 if f.variant == "int8" else 1.0), delta=None)
                               for f in a.findings))
    pa, pb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "diff.html"
    a.save(pa)
    b.save(pb)
    res = CliRunner().invoke(cli, ["diff", str(pa), str(pb), "--markdown", "--html", str(out)])
    assert res.exit_code == 0, res.output
    assert "#### variant int8: A against B" in res.output and "| Finding | A int8 | B int8 |" in res.output
    # int8 perplexity 12.9 -> 15.48: +2.58, se from both intervals: sqrt(2) * 0.5 / 1.96 -> excludes 0
    assert "Δ +20% \\[" in res.output and "**worse (significant)**" in res.output
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "unpaired-normal-from-intervals-95" in html


def test_cli_diff_without_variants_prints_as_before(tmp_path):
    r = make_report()
    p = tmp_path / "r.json"
    r.save(p)
    plain = CliRunner().invoke(cli, ["diff", str(p), str(p), "--markdown"])
    assert plain.exit_code == 0 and plain.output == diff_markdown(diff_reports(r, r)) + "\n"
    side = CliRunner().invoke(cli, ["diff", str(p), str(p), "--markdown", "--side-by-side"])
    assert "#### A (base) against B" in side.output


def test_store_keeps_variant_findings_out_of_metric_history(tmp_path):
    from audit.store import ReportStore

    r = make_variant_report()
    with ReportStore(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.ingest(r)
        points = store.metric_history(r.subject.name, "quality.perplexity/perplexity")
        assert [p.value for p in points] == [12.0]
        assert len(store.findings(r.run_id)) == len(r.findings)  # the report itself keeps them all


# -- dashboard ------------------------------------------------------------------------------


def test_dashboard_frames_and_pareto_chart():
    from dashboard.variants import pareto_chart as alt_pareto
    from dashboard.variants import pareto_frame, side_by_side_frame

    from audit.variant_view import side_by_side

    report = make_variant_report()
    frame = side_by_side_frame(side_by_side(report))
    assert list(frame.columns) == ["finding", "base", "int8", "Δ int8", "lora", "Δ lora", "flagged"]
    assert list(frame["flagged"]) == ["int8", "", "", ""]
    assert frame.loc[0, "Δ int8"] == "+7.5% [+4.17%, +10.8%]"
    assert list(side_by_side_frame(side_by_side(report), "bias.toxicity")["finding"]) == [
        "bias.toxicity/toxicity_rate[group=female]"]
    qc = report_quality_cost(report)
    pts = pareto_frame(qc)
    assert list(pts["variant"]) == ["base", "int8", "lora"] and list(pts["front"]) == [False, True, True]
    spec = alt_pareto(qc).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["line", "rule", "point", "text"]


def test_dashboard_run_page_shows_variants():
    import os

    from streamlit.testing.v1 import AppTest

    from audit.store import ReportStore
    from tests.dashboard_support import fill_store

    report = make_variant_report()
    with ReportStore(os.environ["GENAI_AUDIT_STORE"]) as store:
        fill_store(store, [report, make_report()], files_in=None)
    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    at = AppTest.from_file(str(app), default_timeout=60)
    at.query_params["view"] = "Scorecard"
    at.query_params["run"] = report.run_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Variants" in [h.value for h in at.header]
    frames = [d.value for d in at.dataframe]
    side = next(f for f in frames if "Δ int8" in f.columns and len(f) == 4)
    assert side.loc[0, "flagged"] == "int8"
    own = next(f for f in frames if "warnings" in f.columns)
    assert len(own) == 4  # the subject's findings only
    assert md_escape("Pareto front: int8, lora") in [c.value for c in at.caption]
    assert len(at.get("vega_lite_chart")) >= 1
    # each probe tab has its own side-by-side table
    assert sum("Δ lora" in f.columns and len(f) == 1 for f in frames) == 2


def test_junit_lists_each_variants_probes_and_the_card_counts_the_subjects_findings():
    import xml.etree.ElementTree as ET

    from audit.findings import ProbeStatus
    from audit.render import render_junit
    from audit.render.card import render_card

    r = make_variant_report()
    crashed = replace(r.variants[0], probes={**r.variants[0].probes,
                                             "bias.toxicity": ProbeStatus("failed", error="RuntimeError: oom")})
    r = replace(r, variants=(crashed, r.variants[1]))
    probes = ET.fromstring(render_junit(r)).findall("testsuite")[1]
    names = [c.get("name") for c in probes.findall("testcase")]
    assert names[:3] == ["quality.perplexity", "bias.toxicity", "energy.footprint"]
    assert "bias.toxicity · variant int8" in names and len(names) == 9
    assert probes.get("errors") == "1" and r.exit_code == 3
    assert "they gave 4 finding(s)" in render_card(r)


def test_a_nan_variant_finding_renders_as_na_everywhere():
    import math

    from audit.findings import Delta

    r = make_variant_report()
    nan = math.nan
    fs = tuple(replace(f, value=nan, ci=None, delta=Delta(f.delta.base_value, nan), warnings=("not computed",))
               if f.variant == "lora" and f.metric == "perplexity" else f for f in r.findings)
    r = replace(r, findings=fs)
    html, md, term = render_html(r), render_markdown(r), _terminal(r)
    assert "Δ n/a" in html and "Δ n/a" in md and "n/a n/a" in term
    # the quality must be measured on every variant: without lora's perplexity (and no other unsliced
    # quality finding) there is no chart, and the page says why
    assert report_quality_cost(r) is None and "No quality-versus-cost chart" in html
