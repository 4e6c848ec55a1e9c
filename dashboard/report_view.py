"""What the scorecard shows of one report: tables, curves, matrices and the status line (no Streamlit).

Findings of any probe, known to the dashboard or not, are shown from the report alone.
Evidence is read defensively: a curve or a matrix is drawn only when its evidence is well
formed, and everything else is still listed (and shown raw in the drill-down).

Evidence read here (all optional, per finding):

* ``evidence["curve"]`` (one line) or ``evidence["curves"]`` (a list of lines): ``x``
  (numbers, or names such as post-processing steps), ``y``, optional ``y_low``/``y_high``
  (pointwise bounds, e.g. Wilson), ``x_label``, ``y_label``, ``x_scale`` (``log``) and
  ``series`` (or ``label``/``name``: the line's name, e.g. the attack), ``chart`` (lines with
  the same ``chart`` id are one chart; without one, lines that share their axis labels are)
  and ``x_ticks`` (names for the x positions, e.g. post-processing steps).
* ``evidence["confusion_matrix"]``: ``{"labels": [...], "counts": [[...]]}`` (rows: true
  class, columns: predicted; ``matrix`` is accepted for ``counts``, ``classes`` for
  ``labels``).

Example:
    >>> from audit.findings import Finding
    >>> f = Finding("p", "m", 0.5, True, evidence={"curve": {"x": [0, 1], "y": [0.9, 0.5], "series": "fgsm"}})
    >>> [c.series for c in curves_of(f)]
    ['fgsm']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from audit.findings import AuditReport, Finding, ProbeStatus
from audit.render import (
    describe_bound,
    findings_by_probe,
    first_line,
    format_energy,
    format_number,
    gate_label,
    slice_label,
)
from dashboard.text import clean_text, status_style

__all__ = [
    "ConfusionMatrix",
    "Curve",
    "CurveSet",
    "GateCounts",
    "GroupSet",
    "ProbeFailure",
    "ProbeSection",
    "confusion_of",
    "curves_of",
    "energy_frame",
    "failures_of",
    "findings_frame",
    "gate_counts",
    "gates_frame",
    "probe_sections",
    "skipped_of",
    "status_reason",
    "values_frame",
    "worst_first",
]


# -- gates and status ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateCounts:
    passed: int
    failed: int
    skipped: int
    other: int

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped + self.other


def gate_counts(report: AuditReport) -> GateCounts:
    """How many gates passed, failed, were skipped, or have a status unknown here."""
    statuses = [g.status for g in report.gates]
    known = {"passed", "failed", "skipped"}
    return GateCounts(
        statuses.count("passed"), statuses.count("failed"), statuses.count("skipped"),
        sum(s not in known for s in statuses),
    )  # fmt: skip


def status_reason(status: str, report: AuditReport) -> str:
    """The line after the status in the scorecard's banner; skipped gates are said, never
    counted as passed.

    Example:
        >>> from tests.report_factory import passing_report
        >>> status_reason("passed", passing_report())
        '2 gates passed, 1 skipped (not checked)'
    """
    g = gate_counts(report)
    failed_probes = [p for p in report.probes.values() if p.status == "failed"]
    n_input = sum(p.error_kind == "input" for p in failed_probes)
    skipped = f", {g.skipped} skipped (not checked)" if g.skipped else ""
    if status == "passed":
        if g.total == 0:
            return "no gate was set"
        if g.passed == 0:
            return f"no gate was checked: {g.skipped} skipped"
        return f"{g.passed} gate{'s' if g.passed != 1 else ''} passed{skipped}"
    if status == "failed":
        return f"{g.failed} of {g.total} gate(s) failed{skipped}"
    if status == "invalid":
        return f"{n_input} probe(s) failed on invalid input"
    if status == "crashed":
        return f"{len(failed_probes) - n_input} probe(s) crashed" + (
            f", {n_input} failed on invalid input" if n_input else "")
    if not status_style(status).known:
        return "a status this dashboard does not know; see the gates and probes below"
    return ""


def gates_frame(report: AuditReport) -> pd.DataFrame:
    """The gate results: gate, metric, status, value, what it requires and the message."""
    return pd.DataFrame(
        [
            (gate_label(g), g.metric, g.status, format_number(g.value), describe_bound(g), clean_text(g.message))
            for g in report.gates
        ],
        columns=["gate", "metric", "status", "value", "requires", "message"],
    )


# -- findings ------------------------------------------------------------------------------


def worst_first(findings: Sequence[Finding]) -> list[Finding]:
    """``findings`` grouped by metric (first appearance), each metric's slices worst first
    (lowest first where higher is better); NaN values last."""
    order: dict[str, list[Finding]] = {}
    for f in findings:
        order.setdefault(f.metric, []).append(f)

    def badness(f: Finding) -> tuple[int, float]:
        if math.isnan(f.value):
            return (1, 0.0)
        return (0, f.value if f.higher_is_better else -f.value)

    return [f for fs in order.values() for f in sorted(fs, key=badness)]


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """Findings as a table, numbers kept as numbers (NaN where not computed) so that the
    table sorts; any probe's findings fit, known to the dashboard or not."""
    return pd.DataFrame(
        [
            (
                f.probe, f.metric, slice_label(f), f.value, f.unit,
                f.ci.low if f.ci else math.nan, f.ci.high if f.ci else math.nan, f.ci.method if f.ci else "",
                f.n, "higher" if f.higher_is_better else "lower", " | ".join(clean_text(w) for w in f.warnings),
            )
            for f in findings
        ],
        columns=["probe", "metric", "slice", "value", "unit", "ci low", "ci high", "interval", "n", "better", "warnings"],
    ).astype({"n": "Int64"})  # fmt: skip


def values_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """Findings as points with intervals: ``finding``, ``value``, ``low``, ``high``, ``unit``."""
    return pd.DataFrame(
        [
            (f.metric + (f" [{slice_label(f)}]" if f.slice else ""), f.value,
             f.ci.low if f.ci else math.nan, f.ci.high if f.ci else math.nan, f.unit)
            for f in findings
        ],
        columns=["finding", "value", "low", "high", "unit"],
    )  # fmt: skip


# -- evidence: curves and matrices ---------------------------------------------------------


def _numbers(xs: Any) -> tuple[float, ...] | None:
    if not isinstance(xs, Sequence) or isinstance(xs, (str, bytes)) or not xs:
        return None
    out = []
    for v in xs:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if v is None:
                v = math.nan
            elif isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
                v = float(v.replace("Infinity", "inf"))
            else:
                return None
        out.append(float(v))
    return tuple(out)


def _names(xs: Any) -> tuple[str, ...] | None:
    if not isinstance(xs, Sequence) or isinstance(xs, (str, bytes)) or not xs:
        return None
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in xs):
        return None
    return tuple(clean_text(v) for v in xs)


@dataclass(frozen=True, slots=True)
class Curve:
    """One line from a finding's evidence (e.g. robust accuracy versus eps for one attack).

    ``x`` holds numbers, or names (``x_kind == "names"``, e.g. post-processing steps);
    ``low``/``high`` are the pointwise bounds when the evidence has them, else None.
    """

    key: str
    series: str
    chart: str
    x: tuple[Any, ...]
    y: tuple[float, ...]
    x_label: str
    y_label: str
    x_scale: str
    x_kind: str = "numbers"
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def frame(self) -> pd.DataFrame:
        data: dict[str, Any] = {"x": self.x, "y": self.y, "series": self.series, "finding": self.key}
        data["low"] = self.low if self.low is not None else [math.nan] * len(self.x)
        data["high"] = self.high if self.high is not None else [math.nan] * len(self.x)
        return pd.DataFrame(data)


@dataclass(frozen=True, slots=True)
class CurveSet:
    """Lines that share their axes (one chart): e.g. one line per attack."""

    x_label: str
    y_label: str
    x_scale: str
    x_kind: str
    curves: tuple[Curve, ...]

    @property
    def title(self) -> str:
        return f"{self.y_label} versus {self.x_label}"

    def frame(self) -> pd.DataFrame:
        return pd.concat([c.frame() for c in self.curves], ignore_index=True)


def _curve(f: Finding, raw: Any, index: int) -> Curve | None:
    if not isinstance(raw, Mapping):
        return None
    y = _numbers(raw.get("y"))
    x: tuple[Any, ...] | None = _numbers(raw.get("x"))
    kind = "numbers"
    ticks = _names(raw.get("x_ticks"))
    if x is not None and ticks is not None and len(ticks) == len(x) and any(not _is_number_text(t) for t in ticks):
        x, kind = ticks, "names"  # e.g. post-processing steps at x = 0, 1, 2
    if x is None:
        x, kind = _names(raw.get("x")), "names"
    if x is None or y is None or len(x) != len(y):
        return None
    low, high = _numbers(raw.get("y_low")), _numbers(raw.get("y_high"))
    if low is None or high is None or len(low) != len(x) or len(high) != len(x):
        low = high = None
    log = str(raw.get("x_scale", "linear")) == "log" and kind == "numbers" and all(v > 0 for v in x)
    series = next((raw[k] for k in ("series", "label", "name") if isinstance(raw.get(k), (str, int, float))), None)
    if series is None:
        series = f.metric + (f" [{slice_label(f)}]" if f.slice else "") + (f" #{index + 1}" if index else "")
    chart = raw.get("chart")
    return Curve(
        key=f.key, series=clean_text(series), x=x, y=y,
        chart=clean_text(chart) if isinstance(chart, (str, int)) and not isinstance(chart, bool) else "",
        x_label=clean_text(raw.get("x_label", "x")) or "x",
        y_label=clean_text(raw.get("y_label", f.metric)) or f.metric,
        x_scale="log" if log else "linear", x_kind=kind, low=low, high=high,
    )  # fmt: skip


def curves_of(f: Finding) -> list[Curve]:
    """The well-formed curves in ``f.evidence`` (``curve`` and ``curves``); malformed ones are left out."""
    ev = f.evidence if isinstance(f.evidence, Mapping) else {}
    raws: list[Any] = [ev.get("curve")] if "curve" in ev else []
    more = ev.get("curves")
    if isinstance(more, Sequence) and not isinstance(more, (str, bytes)):
        raws.extend(more)
    out = [_curve(f, raw, i) for i, raw in enumerate(raws)]
    return [c for c in out if c is not None]


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _curve_sets(curves: Sequence[Curve]) -> tuple[CurveSet, ...]:
    # Curves that name the same ``chart`` are one chart; without a name, those that share axes.
    by_chart: dict[tuple[str, ...], list[Curve]] = {}
    for c in curves:
        key = ("chart", c.chart, c.x_kind) if c.chart else ("axes", c.x_label, c.y_label, c.x_kind)
        by_chart.setdefault(key, []).append(c)
    sets = []
    for cs in by_chart.values():
        scale = "log" if all(c.x_scale == "log" for c in cs) else "linear"
        sets.append(CurveSet(cs[0].x_label, cs[0].y_label, scale, cs[0].x_kind, tuple(cs)))
    return tuple(sets)


@dataclass(frozen=True, slots=True)
class ConfusionMatrix:
    """A classifier's confusion matrix: rows are the true class, columns the predicted one."""

    key: str
    labels: tuple[str, ...]
    counts: tuple[tuple[float, ...], ...]

    def frame(self) -> pd.DataFrame:
        """Long form: ``true``, ``predicted``, ``count`` and ``share`` of the true class's row."""
        rows = []
        for i, t in enumerate(self.labels):
            total = sum(self.counts[i])
            for j, p in enumerate(self.labels):
                c = self.counts[i][j]
                rows.append((t, p, c, c / total if total else math.nan))
        return pd.DataFrame(rows, columns=["true", "predicted", "count", "share"])


def confusion_of(f: Finding) -> ConfusionMatrix | None:
    """The confusion matrix in ``f.evidence["confusion_matrix"]``, or None when absent or malformed."""
    raw = f.evidence.get("confusion_matrix") if isinstance(f.evidence, Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    matrix = raw.get("counts", raw.get("matrix"))
    if not isinstance(matrix, Sequence) or isinstance(matrix, (str, bytes)) or not matrix:
        return None
    rows = [_numbers(r) for r in matrix]
    if any(r is None or len(r) != len(matrix) for r in rows):
        return None
    labels = _names(raw.get("labels", raw.get("classes")))
    if labels is None or len(labels) != len(matrix):
        labels = tuple(str(i) for i in range(len(matrix)))
    return ConfusionMatrix(f.key, labels, tuple(rows))  # type: ignore[arg-type]


# -- sections per probe --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupSet:
    """Findings of one metric of one probe that differ only by slice (per-group values)."""

    probe: str
    metric: str
    unit: str
    higher_is_better: bool
    findings: tuple[Finding, ...]

    def frame(self) -> pd.DataFrame:
        """One row per group, worst first: ``group`` (the whole slice), ``value``, ``low``,
        ``high`` (NaN without interval), ``n``."""
        return pd.DataFrame(
            [
                (slice_label(f), f.value, f.ci.low if f.ci else math.nan, f.ci.high if f.ci else math.nan, f.n)
                for f in worst_first(self.findings)
            ],
            columns=["group", "value", "low", "high", "n"],
        )


@dataclass(frozen=True, slots=True)
class ProbeSection:
    """What the scorecard shows for one probe: its status, findings and the charts they allow."""

    probe: str
    status: ProbeStatus | None
    findings: tuple[Finding, ...]
    curves: tuple[CurveSet, ...]
    matrices: tuple[ConfusionMatrix, ...]
    groups: tuple[GroupSet, ...]
    values: tuple[Finding, ...]
    """Unsliced findings with a finite value and an interval (e.g. FID and KID), drawn as
    points with their intervals."""


def probe_sections(report: AuditReport) -> list[ProbeSection]:
    """The report's findings grouped by probe (spec order), with the charts each allows:
    curves and confusion matrices from evidence, per-group bars where several sliced
    findings share a metric, and values with intervals for unsliced findings."""
    sections = []
    for probe, findings in findings_by_probe(report).items():
        by_metric: dict[str, list[Finding]] = {}
        for f in findings:
            if f.slice:
                by_metric.setdefault(f.metric, []).append(f)
        groups = tuple(
            GroupSet(probe, metric, fs[0].unit, fs[0].higher_is_better, tuple(fs))
            for metric, fs in by_metric.items()
            if len(fs) >= 2
        )
        curves = _curve_sets([c for f in findings for c in curves_of(f)])
        matrices = tuple(m for m in (confusion_of(f) for f in findings) if m is not None)
        values = tuple(f for f in findings if not f.slice and f.ci is not None and math.isfinite(f.value))
        sections.append(
            ProbeSection(probe, report.probes.get(probe), tuple(findings), curves, matrices, groups, values)
        )
    return sections


# -- energy and failures -------------------------------------------------------------------


def energy_frame(report: AuditReport) -> pd.DataFrame:
    """Energy by probe: ``probe``, ``joules`` (NaN where unavailable), ``kind`` and a
    ``detail`` line (how it was measured, or why it is unavailable)."""
    rows = []
    for probe, st in report.probes.items():
        if st.status == "skipped" and not st.energy:
            continue
        e = st.energy or {}
        joules = e.get("joules")
        try:
            value = float(joules) if joules is not None and e.get("kind") != "unavailable" else math.nan
        except (TypeError, ValueError):
            value = math.nan
        rows.append((probe, value, str(e.get("kind") or "not recorded"), clean_text(format_energy(e))))
    return pd.DataFrame(rows, columns=["probe", "joules", "kind", "detail"])


@dataclass(frozen=True, slots=True)
class ProbeFailure:
    """A failed probe: its id, the error's first line, ``input`` or ``crash``, the traceback."""

    probe: str
    error: str
    kind: str
    traceback: str


def failures_of(report: AuditReport) -> list[ProbeFailure]:
    """The report's failed probes, with their errors (control characters removed)."""
    return [
        ProbeFailure(
            probe=pid,
            error=clean_text(first_line(st.error) or "failed (no error recorded)"),
            kind=st.error_kind or "crash",
            traceback=clean_text(st.traceback or st.error or ""),
        )
        for pid, st in report.probes.items()
        if st.status == "failed"
    ]


def skipped_of(report: AuditReport) -> list[tuple[str, str]]:
    """``(probe, reason)`` for each skipped probe."""
    return [
        (pid, clean_text(st.reason or "no reason recorded"))
        for pid, st in report.probes.items()
        if st.status == "skipped"
    ]
