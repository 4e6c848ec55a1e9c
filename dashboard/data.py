"""Data access and shaping for the dashboard: plain functions over the store and its reports.

Everything the Streamlit pages show is computed here, without Streamlit, so that it can be
tested directly. The dashboard reads only the audit store (:class:`audit.store.ReportStore`)
and the report files the store copied into its own folder (:meth:`ReportStore.report_file`);
it never imports ``probes``, so findings of any probe, known or not, are shown from the
report alone.

Example:
    >>> from audit.store import ReportStore
    >>> with ReportStore("sqlite://") as store:
    ...     rows = all_audits(store)
    ...     audits_markdown(rows).count("\\n")  # the header and its rule: no audit yet
    1
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from audit.errors import InputError
from audit.findings import AuditReport, Finding, ProbeStatus
from audit.render import (
    describe_bound,
    findings_by_probe,
    first_line,
    format_energy,
    format_interval,
    format_number,
    format_value,
    gate_label,
    slice_label,
)
from audit.store import MetricPoint, ReportStore, StoredAudit, default_store_url

if TYPE_CHECKING:
    from audit.compare import FindingChange

__all__ = [
    "DOWNLOADS",
    "LIST_PAGE_ROWS",
    "MAX_AUDITS",
    "STATUSES",
    "Curve",
    "Download",
    "GroupSet",
    "ProbeFailure",
    "ProbeSection",
    "all_audits",
    "audit_label",
    "audits_markdown",
    "change_counts",
    "counts_markdown",
    "changes_frame",
    "clean_text",
    "compare_reports",
    "curve_of",
    "default_baseline",
    "energy_frame",
    "failures_of",
    "filter_audits",
    "findings_frame",
    "gates_frame",
    "md_escape",
    "metric_keys",
    "models_of",
    "probe_sections",
    "report_bytes",
    "report_downloads",
    "skipped_of",
    "status_counts",
    "store_failures",
    "store_url",
    "trend_frame",
    "values_frame",
]

STATUSES = ("passed", "failed", "crashed")
"""Audit statuses, as :attr:`AuditReport.status` gives them."""

MAX_AUDITS = 20_000
"""The most audit summaries the dashboard reads for its list (newest first)."""

LIST_PAGE_ROWS = 25
"""Rows of the audit list shown at a time (the list pages through the rest)."""

_PAGE = 1000


# -- text safety ---------------------------------------------------------------------------

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping all of
# them also defuses Streamlit's own markup (``:red[...]``, ``:material/x:``, ``$math$``).
_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")
# ANSI colour codes (tracebacks captured from a terminal) and other control characters.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def md_escape(text: object) -> str:
    """``text`` for a Markdown string: every punctuation character backslash-escaped and line
    breaks flattened, so report text shows literally and never becomes markup, a link or HTML.

    Example:
        >>> md_escape("<b>x</b> :red[y]")
        '\\\\<b\\\\>x\\\\<\\\\/b\\\\> \\\\:red\\\\[y\\\\]'
    """
    flat = " ".join(clean_text(text).split())
    return _MD_SPECIAL.sub(r"\\\1", flat)


def clean_text(text: object) -> str:
    """``text`` without ANSI escape sequences and control characters (tabs and newlines kept).

    Example:
        >>> clean_text("\\x1b[31mred\\x1b[0m\\x07")
        'red'
    """
    return _CONTROL.sub("", _ANSI.sub("", str(text)))


# -- the store -----------------------------------------------------------------------------


def store_url(environ: Mapping[str, str] | None = None) -> str:
    """The store the dashboard shows: ``$GENAI_AUDIT_STORE`` or the default store.

    Example:
        >>> store_url({"GENAI_AUDIT_STORE": "sqlite:///tmp/a.db"})
        'sqlite:///tmp/a.db'
    """
    env = os.environ if environ is None else environ
    url = env.get("GENAI_AUDIT_STORE", "").strip()
    return url or default_store_url()


def all_audits(store: ReportStore, *, limit: int = MAX_AUDITS) -> list[StoredAudit]:
    """Up to ``limit`` stored audit summaries, newest first.

    Example:
        >>> with ReportStore("sqlite://") as s:
        ...     all_audits(s)
        []
    """
    rows: list[StoredAudit] = []
    while len(rows) < limit:
        page = store.list_audits(limit=min(_PAGE, limit - len(rows)), offset=len(rows))
        rows.extend(page)
        if len(page) < _PAGE:
            break
    return rows


def filter_audits(
    rows: Iterable[StoredAudit],
    *,
    model: str | None = None,
    status: str | None = None,
    since: _dt.date | None = None,
    until: _dt.date | None = None,
) -> list[StoredAudit]:
    """The audits of ``model`` with ``status``, created (UTC) between ``since`` and ``until``
    inclusive; a None criterion matches everything.

    Raises:
        InputError: ``status`` is not one of :data:`STATUSES`, or ``since`` is after ``until``.

    Example:
        >>> filter_audits([], model="m", status="passed")
        []
    """
    if status is not None and status not in STATUSES:
        raise InputError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if since is not None and until is not None and since > until:
        raise InputError(f"the start date {since} is after the end date {until}")
    out = []
    for r in rows:
        day = r.created_at.date()
        if model is not None and r.subject_name != model:
            continue
        if status is not None and r.status != status:
            continue
        if since is not None and day < since:
            continue
        if until is not None and day > until:
            continue
        out.append(r)
    return out


def models_of(rows: Iterable[StoredAudit]) -> list[str]:
    """The audited models (subject names), sorted."""
    return sorted({r.subject_name for r in rows})


def status_counts(rows: Iterable[StoredAudit]) -> dict[str, int]:
    """How many audits have each status (every status present, zeros included)."""
    counts = Counter(r.status for r in rows)
    return {s: counts.get(s, 0) for s in STATUSES}


def audit_label(row: StoredAudit) -> str:
    """One line naming an audit in a picker: name, model, UTC time, status and short run id.

    Example:
        >>> from tests.report_factory import make_report            # doctest: +SKIP
        >>> audit_label(store.stored(make_report().run_id))         # doctest: +SKIP
        'smollm2-release-candidate · SmolLM2-135M-Instruct · 2025-11-20 14:03 · crashed · 5d1c0b3a'
    """
    when = row.created_at.strftime("%Y-%m-%d %H:%M")
    return " · ".join((clean_text(row.name), clean_text(row.subject_name), when, row.status, row.run_id[:8]))


def counts_markdown(rows: Sequence[StoredAudit]) -> str:
    """One Markdown line: how many audits ``rows`` holds, and how many have each status.

    Example:
        >>> counts_markdown([])
        '**0** audits: :green[**0** passed] · :red[**0** failed] · :orange[**0** crashed]'
    """
    counts = status_counts(rows)
    parts = (f":{_STATUS_COLOUR[s]}[**{counts[s]}** {s}]" for s in STATUSES)
    return f"**{len(rows)}** audit{'' if len(rows) == 1 else 's'}: " + " · ".join(parts)


_STATUS_COLOUR = {"passed": "green", "failed": "red", "crashed": "orange"}
_STATUS_MARKUP = {s: f":{colour}[{s}]" for s, colour in _STATUS_COLOUR.items()}
_LIST_COLUMNS = (  # (header, right-aligned)
    ("created (UTC)", False), ("audit", False), ("model", False), ("status", False),
    ("findings", True), ("gates failed", True), ("probes failed", True), ("run id", False),
)  # fmt: skip


def audits_markdown(rows: Sequence[StoredAudit]) -> str:
    """The audit list as a Markdown (GFM) table, one row per audit in the order given.

    The run id is cut to its first 8 characters, as :func:`audit_label` shows it in the
    pickers; the subject's kind is left out (the scorecard shows it), so that the table fits
    a laptop's screen without wrapping. Every cell taken from a report goes through
    :func:`md_escape` (``|`` included), so a name cannot end its cell or become markup or
    HTML; only the status, one of :data:`STATUSES`, is coloured. The dashboard draws it with
    ``st.markdown``, which needs no script beyond the page's own (a data grid loads ~1.5 MB
    of JavaScript first).

    Example:
        >>> print(audits_markdown([]).splitlines()[0])
        | created (UTC) | audit | model | status | findings | gates failed | probes failed | run id |
    """
    lines = [
        "| " + " | ".join(name for name, _ in _LIST_COLUMNS) + " |",
        "|" + "|".join("---:" if right else "---" for _, right in _LIST_COLUMNS) + "|",
    ]
    for r in rows:
        cells = (
            md_escape(f"{r.created_at:%Y-%m-%d %H:%M}"),
            md_escape(r.name),
            md_escape(r.subject_name),
            _STATUS_MARKUP.get(r.status) or md_escape(r.status),
            str(int(r.n_findings)),
            str(int(r.n_gates_failed)),
            str(int(r.n_probes_failed)),
            md_escape(r.run_id[:8]),  # as the pickers show it (audit_label)
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- one audit -----------------------------------------------------------------------------


def gates_frame(report: AuditReport) -> pd.DataFrame:
    """The gate results: gate, metric, status, value, what it requires and the message."""
    return pd.DataFrame(
        [
            (gate_label(g), g.metric, g.status, format_number(g.value), describe_bound(g), clean_text(g.message))
            for g in report.gates
        ],
        columns=["gate", "metric", "status", "value", "requires", "message"],
    )


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """Findings as a table, numbers kept as numbers (NaN where not computed) so that the
    table sorts; any probe's findings fit, known to the dashboard or not."""
    return pd.DataFrame(
        [
            (
                f.probe,
                f.metric,
                slice_label(f),
                f.value,
                f.unit,
                f.ci.low if f.ci else math.nan,
                f.ci.high if f.ci else math.nan,
                f.ci.method if f.ci else "",
                f.n,
                "higher" if f.higher_is_better else "lower",
                " | ".join(clean_text(w) for w in f.warnings),
            )
            for f in findings
        ],
        columns=["probe", "metric", "slice", "value", "unit", "ci low", "ci high", "interval", "n", "better", "warnings"],
    ).astype({"n": "Int64"})


@dataclass(frozen=True, slots=True)
class Curve:
    """A curve from a finding's ``evidence["curve"]`` (e.g. robust accuracy versus eps).

    ``low``/``high`` are the pointwise interval bounds when the evidence has them
    (``y_low``/``y_high``), else None.
    """

    key: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    x_label: str
    y_label: str
    x_scale: str
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def frame(self) -> pd.DataFrame:
        data: dict[str, Any] = {"x": self.x, "y": self.y}
        if self.low is not None and self.high is not None:
            data["low"], data["high"] = self.low, self.high
        return pd.DataFrame(data)


@dataclass(frozen=True, slots=True)
class GroupSet:
    """Findings of one metric of one probe that differ only by slice (per-group values)."""

    probe: str
    metric: str
    unit: str
    higher_is_better: bool
    findings: tuple[Finding, ...]

    def frame(self) -> pd.DataFrame:
        """One row per group: ``group``, ``value``, ``low``, ``high`` (NaN without interval), ``n``."""
        return pd.DataFrame(
            [
                (
                    slice_label(f),
                    f.value,
                    f.ci.low if f.ci else math.nan,
                    f.ci.high if f.ci else math.nan,
                    f.n,
                )
                for f in self.findings
            ],
            columns=["group", "value", "low", "high", "n"],
        )


@dataclass(frozen=True, slots=True)
class ProbeSection:
    """What the scorecard shows for one probe: its status, findings and the charts they allow."""

    probe: str
    status: ProbeStatus | None
    findings: tuple[Finding, ...]
    curves: tuple[Curve, ...]
    groups: tuple[GroupSet, ...]
    values: tuple[Finding, ...]
    """Unsliced findings with a finite value and an interval (e.g. FID and KID), drawn as
    points with their intervals."""


def _numbers(xs: Any) -> tuple[float, ...] | None:
    if not isinstance(xs, Sequence) or isinstance(xs, (str, bytes)) or not xs:
        return None
    out = []
    for v in xs:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
                v = float(v.replace("Infinity", "inf"))
            else:
                return None
        out.append(float(v))
    return tuple(out)


def curve_of(f: Finding) -> Curve | None:
    """The curve in ``f.evidence["curve"]`` (``x``, ``y``, optional ``x_label``, ``y_label``,
    ``x_scale`` and ``y_low``/``y_high``), or None when absent or malformed."""
    curve = f.evidence.get("curve") if isinstance(f.evidence, Mapping) else None
    if not isinstance(curve, Mapping):
        return None
    x, y = _numbers(curve.get("x")), _numbers(curve.get("y"))
    if x is None or y is None or len(x) != len(y):
        return None
    low, high = _numbers(curve.get("y_low")), _numbers(curve.get("y_high"))
    if low is None or high is None or len(low) != len(x) or len(high) != len(x):
        low = high = None
    scale = "log" if str(curve.get("x_scale", "linear")) == "log" and all(v > 0 for v in x) else "linear"
    return Curve(
        key=f.key,
        x=x,
        y=y,
        x_label=clean_text(curve.get("x_label", "x")) or "x",
        y_label=clean_text(curve.get("y_label", f.metric)) or f.metric,
        x_scale=scale,
        low=low,
        high=high,
    )


def probe_sections(report: AuditReport) -> list[ProbeSection]:
    """The report's findings grouped by probe (spec order), with the charts each allows:
    curves from evidence, per-group bars where several sliced findings share a metric, and
    values with intervals for unsliced findings."""
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
        curves = tuple(c for c in (curve_of(f) for f in findings) if c is not None)
        values = tuple(f for f in findings if not f.slice and f.ci is not None and math.isfinite(f.value))
        sections.append(ProbeSection(probe, report.probes.get(probe), tuple(findings), curves, groups, values))
    return sections


def values_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """Findings as points with intervals: ``finding``, ``value``, ``low``, ``high``, ``unit``."""
    return pd.DataFrame(
        [
            (f.metric + (f" [{slice_label(f)}]" if f.slice else ""), f.value,
             f.ci.low if f.ci else math.nan, f.ci.high if f.ci else math.nan, f.unit)
            for f in findings
        ],
        columns=["finding", "value", "low", "high", "unit"],
    )


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


def store_failures(
    store: ReportStore, rows: Iterable[StoredAudit], *, limit: int = 200
) -> list[tuple[StoredAudit, ProbeFailure]]:
    """Probe failures across audits (newest first), at most ``limit`` of them."""
    out: list[tuple[StoredAudit, ProbeFailure]] = []
    for row in rows:
        if row.n_probes_failed == 0:
            continue
        for failure in failures_of(store.get(row.run_id)):
            out.append((row, failure))
            if len(out) >= limit:
                return out
    return out


# -- downloads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Download:
    """A report file offered for download. ``stored`` is False when the store holds no copy
    of the file and it is rendered from the stored report instead."""

    label: str
    name: str
    mime: str
    stored: bool


DOWNLOADS: tuple[tuple[str, str, str], ...] = (
    ("HTML", "report.html", "text/html"),
    ("Markdown", "report.md", "text/markdown"),
    ("JSON", "report.json", "application/json"),
    ("JUnit XML", "junit.xml", "application/xml"),
)


def report_downloads(store: ReportStore, run_id: str) -> list[Download]:
    """The four report files of a run, each marked as stored or to be rendered."""
    return [
        Download(label, name, mime, store.report_file(run_id, name) is not None) for label, name, mime in DOWNLOADS
    ]


def report_bytes(store: ReportStore, run_id: str, name: str) -> bytes:
    """The content of report file ``name`` of a run.

    The copy the store keeps in its report folder is served when there is one
    (:meth:`ReportStore.report_file` never returns a path outside that folder); otherwise the
    file is rendered from the stored report, so stores without a folder (server databases)
    offer every format too.

    Raises:
        InputError: unknown file name, or no such run.
    """
    if name not in {n for _, n, _ in DOWNLOADS}:
        raise InputError(f"unknown report file {name!r}; expected one of {', '.join(n for _, n, _ in DOWNLOADS)}")
    path = store.report_file(run_id, name)
    if path is not None:
        return path.read_bytes()
    report = store.get(run_id)
    if name == "report.json":
        return (report.to_json() + "\n").encode("utf-8")
    if name == "report.html":
        from audit.render.html import render_html

        return render_html(report).encode("utf-8")
    if name == "report.md":
        from audit.render.markdown import render_markdown

        return render_markdown(report).encode("utf-8")
    from audit.render.junit import render_junit

    return render_junit(report).encode("utf-8")


# -- comparison ----------------------------------------------------------------------------


def default_baseline(rows: Sequence[StoredAudit], candidate: str) -> str | None:
    """The run to compare ``candidate`` against: the previous audit of the same model, else
    the previous audit of any model, else None. ``rows`` are newest first."""
    ids = [r.run_id for r in rows]
    if candidate not in ids:
        return None
    i = ids.index(candidate)
    model = rows[i].subject_name
    older = rows[i + 1 :]
    for r in older:
        if r.subject_name == model:
            return r.run_id
    return older[0].run_id if older else None


def compare_reports(baseline: AuditReport, candidate: AuditReport) -> list[FindingChange]:
    """Each finding's change from ``baseline`` to ``candidate`` (see :func:`audit.compare.diff_reports`)."""
    # Imported here: audit.compare pulls in SciPy, which the list page does not need.
    from audit.compare import diff_reports

    return diff_reports(baseline, candidate)


def change_counts(changes: Iterable[FindingChange]) -> dict[str, int]:
    """Counts by direction, plus ``worse_beyond`` and ``better_beyond`` (changes beyond the
    two intervals)."""
    changes = list(changes)
    counts = Counter(c.direction for c in changes)
    out = {d: counts.get(d, 0) for d in ("better", "worse", "same", "added", "removed", "n/a")}
    out["worse_beyond"] = sum(c.direction == "worse" and c.beyond_intervals is True for c in changes)
    out["better_beyond"] = sum(c.direction == "better" and c.beyond_intervals is True for c in changes)
    return out


def changes_frame(changes: Sequence[FindingChange]) -> pd.DataFrame:
    """The comparison as a table: finding, before and after (value and interval), delta,
    relative change in %, direction and whether the change is beyond the intervals."""

    def side(f: Finding | None) -> str:
        if f is None:
            return "—"
        return f"{format_value(f)} {format_interval(f.ci)}".removesuffix(" —")

    rows = [
        (
            c.key,
            side(c.before),
            side(c.after),
            math.nan if c.delta is None else c.delta,
            math.nan if c.relative is None else 100 * c.relative,
            c.direction,
            {True: "yes", False: "no", None: "—"}[c.beyond_intervals],
        )
        for c in changes
    ]
    return pd.DataFrame(rows, columns=["finding", "before", "after", "delta", "change %", "direction", "beyond CIs"])


# -- trend ---------------------------------------------------------------------------------


def metric_keys(store: ReportStore, rows: Sequence[StoredAudit], model: str, *, recent: int = 20) -> list[str]:
    """Finding keys (``probe/metric[slice]``) found in the ``recent`` newest audits of ``model``, sorted."""
    keys: set[str] = set()
    seen = 0
    for r in rows:
        if r.subject_name != model:
            continue
        keys.update(f.key for f in store.findings(r.run_id))
        seen += 1
        if seen >= recent:
            break
    return sorted(keys)


def trend_frame(points: Sequence[MetricPoint]) -> pd.DataFrame:
    """A metric's history as a table: ``created`` (UTC, naive), ``value``, ``low``, ``high``
    (NaN where not finite or absent), ``run id``."""
    return pd.DataFrame(
        [
            (
                p.created_at.replace(tzinfo=None),
                math.nan if p.value is None else p.value,
                math.nan if p.ci_low is None else p.ci_low,
                math.nan if p.ci_high is None else p.ci_high,
                p.run_id,
            )
            for p in points
        ],
        columns=["created", "value", "low", "high", "run id"],
    )
