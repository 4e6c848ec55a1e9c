"""Tests of audit.compare with hand-built findings and hand-derived numbers."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import replace

import pytest
from rich.console import Console

from audit.compare import (
    FindingChange,
    compare_findings,
    diff_markdown,
    diff_reports,
    intervals_overlap,
    render_diff_table,
)
from audit.findings import AuditReport, Finding, Interval, SubjectIdentity
from tests.report_factory import NAN_FINDING, finding, make_report

NAN = float("nan")


def _report(*findings: Finding) -> AuditReport:
    return AuditReport(
        name="r", subject=SubjectIdentity(name="m", kind="classifier", source="python"), findings=findings
    )


# -- direction, delta, relative --------------------------------------------------------------


@pytest.mark.parametrize(
    ("higher_is_better", "before", "after", "direction"),
    [
        (True, 0.80, 0.70, "worse"),
        (True, 0.70, 0.80, "better"),
        (False, 0.80, 0.70, "better"),  # e.g. a toxicity rate that fell
        (False, 12.0, 15.0, "worse"),  # e.g. perplexity that rose
        (True, 0.5, 0.5, "same"),
        (False, 0.5, 0.5, "same"),
    ],
)
def test_direction_follows_higher_is_better(higher_is_better, before, after, direction) -> None:
    c = compare_findings(
        finding("m", before, higher_is_better=higher_is_better), finding("m", after, higher_is_better=higher_is_better)
    )
    assert c.direction == direction


def test_delta_and_relative_by_hand() -> None:
    c = compare_findings(finding("acc", 0.80), finding("acc", 0.70))
    assert c.delta == pytest.approx(-0.10)
    assert c.relative == pytest.approx(-0.125)  # -0.10 / 0.80
    # The relative change is taken against |before|, so its sign is the sign of the delta.
    c = compare_findings(finding("margin", -2.0), finding("margin", -1.0))
    assert c.delta == pytest.approx(1.0) and c.relative == pytest.approx(0.5) and c.direction == "better"
    c = compare_findings(finding("ppl", 12.0, higher_is_better=False), finding("ppl", 15.0, higher_is_better=False))
    assert (c.delta, c.relative) == (pytest.approx(3.0), pytest.approx(0.25))


def test_relative_is_none_when_before_is_zero_or_nan() -> None:
    c = compare_findings(finding("rate", 0.0), finding("rate", 0.1))
    assert c.delta == pytest.approx(0.1) and c.relative is None and c.direction == "better"
    c = compare_findings(finding("rate", NAN), finding("rate", 0.1))
    assert c.delta is None and c.relative is None and c.direction == "n/a"
    c = compare_findings(finding("rate", 0.1), finding("rate", NAN))
    assert c.delta is None and c.relative is None and c.direction == "n/a"
    c = compare_findings(finding("rate", math.inf), finding("rate", 1.0))
    assert c.delta == -math.inf and c.relative is None and c.direction == "worse"
    c = compare_findings(finding("rate", math.inf), finding("rate", math.inf))
    assert c.delta == 0.0 and c.direction == "same"


# -- intervals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "beyond"),
    [
        ((0.78, 0.82), (0.68, 0.72), True),  # disjoint, after below
        ((0.68, 0.72), (0.78, 0.82), True),  # disjoint, after above
        ((0.70, 0.80), (0.75, 0.85), False),  # partial overlap
        ((0.70, 0.90), (0.75, 0.80), False),  # nested
        ((0.70, 0.75), (0.75, 0.80), False),  # touching at one point counts as overlap
        ((0.70, 0.75), (0.7500001, 0.80), True),
    ],
)
def test_beyond_intervals(a, b, beyond) -> None:
    c = compare_findings(finding("acc", sum(a) / 2, ci=a), finding("acc", sum(b) / 2, ci=b))
    assert c.beyond_intervals is beyond
    assert intervals_overlap(Interval(*a, "m"), Interval(*b, "m")) is (not beyond)


def test_beyond_intervals_is_none_without_both_intervals() -> None:
    assert compare_findings(finding("acc", 0.8, ci=(0.7, 0.9)), finding("acc", 0.1)).beyond_intervals is None
    assert compare_findings(finding("acc", 0.8), finding("acc", 0.1, ci=(0.0, 0.2))).beyond_intervals is None
    nan_ci = compare_findings(finding("acc", 0.8, ci=(NAN, NAN)), finding("acc", 0.1, ci=(0.0, 0.2)))
    assert nan_ci.beyond_intervals is None


# -- matching reports ------------------------------------------------------------------------


def test_diff_reports_matches_by_key_and_reports_added_and_removed() -> None:
    kept_a = finding("acc", 0.80, ci=(0.78, 0.82), slice={"group": "a"})
    kept_b = finding("acc", 0.70, ci=(0.68, 0.72), slice={"group": "a"})
    removed = finding("acc", 0.60, slice={"group": "b"})
    added = finding("acc", 0.65, slice={"group": "c"})
    same = finding("f1", 0.5)
    changes = diff_reports(_report(kept_a, removed, same), _report(added, same, kept_b))
    by_key = {c.key: c for c in changes}
    # b's keys in b's order, then what only a had.
    assert [c.key for c in changes] == [
        "test.probe/acc[group=c]",
        "test.probe/f1",
        "test.probe/acc[group=a]",
        "test.probe/acc[group=b]",
    ]
    assert by_key["test.probe/acc[group=a]"].direction == "worse"
    assert by_key["test.probe/acc[group=a]"].beyond_intervals is True
    assert by_key["test.probe/acc[group=a]"].before is kept_a and by_key["test.probe/acc[group=a]"].after is kept_b
    add = by_key["test.probe/acc[group=c]"]
    assert (add.direction, add.before, add.after, add.delta, add.relative, add.beyond_intervals) == (
        "added", None, added, None, None, None
    )
    rem = by_key["test.probe/acc[group=b]"]
    assert (rem.direction, rem.before, rem.after, rem.delta) == ("removed", removed, None, None)
    assert by_key["test.probe/f1"].direction == "same" and by_key["test.probe/f1"].delta == 0.0


def test_diff_of_a_report_with_itself() -> None:
    report = make_report()
    changes = diff_reports(report, report)
    assert len(changes) == len(report.findings)
    assert {c.key: c.direction for c in changes if c.direction != "same"} == {NAN_FINDING: "n/a"}
    assert all(c.beyond_intervals is False for c in changes if c.before.ci is not None)


def test_diff_of_empty_reports() -> None:
    assert diff_reports(_report(), _report()) == []


def test_compare_findings_rejects_mismatched_input() -> None:
    with pytest.raises(ValueError, match="different keys"):
        compare_findings(finding("a", 1.0), finding("b", 1.0))
    with pytest.raises(ValueError, match="at least one"):
        compare_findings(None, None)


def test_finding_change_is_frozen() -> None:
    c = compare_findings(finding("a", 1.0), finding("a", 2.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.direction = "better"  # type: ignore[misc]
    assert isinstance(c, FindingChange)


# -- rendering -----------------------------------------------------------------------------


def _changes() -> list:
    base = make_report()
    worse = replace(base.findings[1], value=0.09, ci=Interval(0.07, 0.11, "wilson-95"))
    new = finding("toxicity_rate", 0.02, probe="bias.toxicity", slice={"group": "a|b"})
    return diff_reports(base, replace(base, findings=(worse, *base.findings[2:], new)))


def test_diff_markdown_rows_and_escaping() -> None:
    changes = _changes()
    md = diff_markdown(changes)
    rows = md.strip().splitlines()
    assert len(rows) == 2 + len(changes)
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row.strip()[1:-1])) == 7, row
    (worse,) = [r for r in rows if "group=female" in r]
    assert "**worse**" in worse and "| yes |" in worse and "+0.056" in worse and "+165%" in worse
    (added,) = [r for r in rows if r"a\|b" in r]
    assert "added" in added
    (removed,) = [r for r in rows if "quality.perplexity/perplexity" in r]
    assert "removed" in removed


def test_render_diff_table() -> None:
    console = Console(record=True, width=140)
    render_diff_table(_changes(), console)
    text = console.export_text()
    for word in ("worse", "added", "removed", "same", "n/a", "bias.toxicity/toxicity_rate[group=female]"):
        assert word in text, word
    console = Console(record=True, width=100)
    render_diff_table([], console)
    assert "no findings in either report" in console.export_text()


def _intersectional_changes(n: int = 60) -> list:
    """Two audits of a classifier's fairness by sex+race: long metric names, long slice values."""
    races = ["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"]
    out = []
    for i in range(n):
        sl = {"race": races[i % 5] + ("-and-a-very-long-group-name" if i % 7 == 0 else ""),
              "sex": ["Female", "Male"][i % 2], "attribute": "sex+race"}
        metric = ["true_positive_rate", "false_positive_rate_difference", "selection_rate"][i % 3]
        a = Finding("bias.classifier", metric, 0.5 + i / 1000, True, ci=Interval(0.41234, 0.61234, "w"), slice=sl)
        b = Finding("bias.classifier", metric, 0.4 + i / 1000, True, ci=Interval(0.31234, 0.51234, "w"), slice=sl)
        out.append(compare_findings(a, b))
    out.append(compare_findings(None, Finding("quality.perplexity", "perplexity", 12.3, False)))
    return out


@pytest.mark.parametrize("width, max_lines_per_change", [(80, 6), (200, 2)])
def test_diff_table_fits_the_terminal(width: int, max_lines_per_change: int) -> None:
    changes = _intersectional_changes()
    console = Console(width=width, record=True, highlight=False)
    render_diff_table(changes, console)
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    # Each change takes a few lines (it took one line per character of its name: 5,286 for two audits).
    assert len(lines) <= 5 + max_lines_per_change * len(changes), len(lines)
    text = "\n".join(lines)
    # Metric names are never cut (folded at most); every change's verdict is shown.
    first_column = "".join(re.split(r"\s{2,}", line.strip())[0] for line in lines)
    flat = re.sub(r"\s+", "", first_column)
    for name in ("true_positive_rate", "false_positive_rate_difference", "quality.perplexity/perplexity"):
        assert name in flat
    assert text.count("worse") == len(changes) - 1 and "added" in text
    if width == 200:  # room for every name in full, on one line
        assert "bias.classifier/true_positive_rate[attribute=sex+race, race=Amer-Indian-Eskimo, sex=Female]" in text
    else:  # a slice value too long for the column is abbreviated
        assert "…" in text and "[attribute=sex+race," in text
