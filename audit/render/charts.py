"""What the HTML report draws for one probe, chosen from its findings.

- values with their intervals, one panel per metric (when the probe has two findings or more);
- the curves of the findings' evidence (:mod:`audit.curves`): curves that share a ``chart``
  id are drawn together, one line per ``series``, with their bands;
- histograms of per-document values (``evidence["per_document"]`` or ``["values"]``);
- confusion matrices (``evidence["confusion_matrix"]``), as heat-map tables;
- the worst slices of each sliced metric, worst first.

A chart that cannot be drawn costs that chart (a note says why), never the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from audit.curves import confusion_matrix_of, curves_of
from audit.findings import Finding
from audit.render.format import format_interval, format_number, format_value, slice_label
from audit.render.svg import histogram, interval_panels, line_chart

__all__ = ["MAX_CHARTS_PER_PROBE", "Chart", "confusion_tables", "probe_charts", "worst_slices"]

MAX_CHARTS_PER_PROBE = 12
"""Curves and histograms drawn per probe; the rest are listed, not drawn (keeps pages small)."""
MAX_ROWS_PER_PANEL = 40
MAX_PANELS = 12
WORST_SHOWN = 5


@dataclass(frozen=True)
class Chart:
    title: str
    svg: Markup | None = None
    note: str = ""


@dataclass
class _CurveGroup:
    title: str
    x_label: str
    y_label: str
    curves: list[dict[str, Any]] = field(default_factory=list)


def _draw(caption: str, drawer: Any, *args: Any, **kwargs: Any) -> Chart:
    try:
        return Chart(caption, svg=Markup(drawer(*args, **kwargs)))
    except Exception as exc:  # noqa: BLE001 - any drawing failure degrades to a note
        return Chart(caption, note=f"chart could not be drawn: {type(exc).__name__}: {exc}")


def _values_of(evidence: Mapping[str, Any]) -> tuple[str, list[float]] | None:
    """Per-document values (``per_document`` or ``values``), finite ones only, or None."""
    for key in ("per_document", "values"):
        vals = evidence.get(key)
        if (isinstance(vals, Sequence) and not isinstance(vals, (str, bytes))
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)):
            finite = [float(v) for v in vals if math.isfinite(float(v))]
            if finite:
                return key, finite
    return None


def _panels(findings: Sequence[Finding]) -> list[tuple[str, list[tuple[str, float, float | None, float | None]]]]:
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.metric, []).append(f)
    panels = []
    for metric, group in list(groups.items())[:MAX_PANELS]:
        unit = f" ({group[0].unit})" if group[0].unit else ""
        better = "higher is better" if group[0].higher_is_better else "lower is better"
        title = f"{metric}{unit}, {better}"
        if len(group) > MAX_ROWS_PER_PANEL:
            title += f" (first {MAX_ROWS_PER_PANEL} of {len(group)} slices)"
        rows = [(slice_label(f), f.value, f.ci.low if f.ci else None, f.ci.high if f.ci else None)
                for f in group[:MAX_ROWS_PER_PANEL]]
        panels.append((title, rows))
    return panels


def _curve_groups(findings: Sequence[Finding]) -> list[_CurveGroup]:
    groups: dict[str, _CurveGroup] = {}
    for f in findings:
        for i, c in enumerate(curves_of(f.evidence)):
            key = c["chart"] or f"{f.key}#{i}"
            if key not in groups:
                title = (f"{c['y_label']} against {c['x_label']}" if c["chart"] and c["y_label"] and c["x_label"]
                         else f.key)
                groups[key] = _CurveGroup(title, c["x_label"], c["y_label"] or f.metric)
            if not c["series"] and c["chart"]:
                c = {**c, "series": slice_label(f)}
            groups[key].curves.append(c)
    return list(groups.values())


def probe_charts(probe_id: str, findings: Sequence[Finding]) -> list[Chart]:
    """The charts of one probe's section, in the order they are shown."""
    out: list[Chart] = []
    if len(findings) >= 2:
        out.append(_draw(f"{probe_id}: values and intervals", interval_panels, _panels(findings)))
    drawn = 0

    def budget(title: str) -> bool:
        nonlocal drawn
        if drawn >= MAX_CHARTS_PER_PROBE:
            out.append(Chart(title, note=f"not drawn: more than {MAX_CHARTS_PER_PROBE} charts in this probe"))
            return False
        drawn += 1
        return True

    for g in _curve_groups(findings):
        if budget(g.title):
            out.append(_draw(g.title, line_chart, g.curves, title="", x_label=g.x_label, y_label=g.y_label))
    for f in findings:
        values = _values_of(f.evidence)
        if values is None:
            continue
        key, vals = values
        title = f"{f.key}: distribution per document"
        if budget(title):
            what = "per document" if key == "per_document" else "values"
            out.append(_draw(title, histogram, vals, marker=f.value if math.isfinite(f.value) else None,
                             title=f"{f.key} (n={len(vals):,})",
                             x_label=f"{f.metric} {what}" + (f" ({f.unit})" if f.unit else ""),
                             marker_label=f"{f.metric} = {format_number(f.value)}"))
    return out


def confusion_tables(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """Each well-formed confusion matrix as rows of cells with a shade (share of its row)."""
    out = []
    for f in findings:
        cm = confusion_matrix_of(f.evidence)
        if cm is None:
            continue
        rows = []
        for label, counts in zip(cm["labels"], cm["counts"]):
            total = sum(counts)
            cells = [{"count": f"{c:,}", "share": c / total if total else 0.0,
                      "alpha": f"{(c / total if total else 0.0) * 0.85:.3f}"} for c in counts]
            rows.append({"label": label, "cells": cells, "total": f"{total:,}"})
        out.append({"title": f.key, "labels": cm["labels"], "rows": rows,
                    "row_name": cm["rows"], "col_name": cm["columns"]})
    return out


def _badness(f: Finding) -> float:
    return -f.value if f.higher_is_better else f.value


def worst_slices(findings: Sequence[Finding], anchors: Mapping[int, str]) -> list[dict[str, Any]]:
    """Per metric with three sliced findings or more: its worst slices first (NaN last).

    Args:
        findings: one probe's findings.
        anchors: the finding's position in ``findings`` -> the id of its table row.
    """
    by_metric: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        if f.slice:
            by_metric.setdefault(f.metric, []).append(i)
    out = []
    for metric, idx in by_metric.items():
        if len(idx) < 3:
            continue
        ranked = sorted(idx, key=lambda i: (math.isnan(findings[i].value), -_badness(findings[i])
                                            if not math.isnan(findings[i].value) else 0.0))
        rows = [{"slice": slice_label(findings[i]), "value": format_value(findings[i]),
                 "ci": format_interval(findings[i].ci), "anchor": anchors[i]} for i in ranked[:WORST_SHOWN]]
        better = "higher" if findings[idx[0]].higher_is_better else "lower"
        out.append({"metric": metric, "n": len(idx), "rows": rows, "better": better})
    return out
