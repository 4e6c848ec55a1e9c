"""Audits against each other: comparison of runs, a metric's trend, the leaderboard (no Streamlit).

Example:
    >>> change_counts([])["unchanged"]
    0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from audit.findings import AuditReport, Finding
from audit.render import format_interval, format_value, gate_label
from audit.store import MetricPoint, ReportStore, StoredAudit

if TYPE_CHECKING:
    from audit.compare import FindingChange

__all__ = [
    "GateChange",
    "change_counts",
    "changes_frame",
    "compare_reports",
    "default_baseline",
    "gate_bounds",
    "gate_changes",
    "leaderboard_frame",
    "latest_per_model",
    "metric_keys",
    "runs_values_frame",
    "shared_keys",
    "trend_frame",
]


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


def _by_key(report: AuditReport) -> dict[str, Finding]:
    """The subject's findings by key (the first of a repeated key; variants' findings left out,
    so that a variant never stands in for the subject in a history or a leaderboard)."""
    out: dict[str, Finding] = {}
    for f in report.findings:
        if f.variant is None:
            out.setdefault(f.key, f)
    return out


def compare_reports(baseline: AuditReport, candidate: AuditReport) -> list[FindingChange]:
    """Each finding's change from ``baseline`` to ``candidate`` (see :func:`audit.compare.diff_reports`)."""
    # Imported here: audit.compare pulls in SciPy, which the list page does not need.
    from audit.compare import diff_reports

    return diff_reports(baseline, candidate)


def change_counts(changes: Iterable[FindingChange]) -> dict[str, int]:
    """Counts by direction; ``changed`` (better, worse or not comparable), ``unchanged``
    (the same value), and ``worse_beyond``/``better_beyond`` (beyond the two intervals)."""
    changes = list(changes)
    counts = Counter(c.direction for c in changes)
    out = {d: counts.get(d, 0) for d in ("better", "worse", "same", "added", "removed", "n/a")}
    out["changed"] = out["better"] + out["worse"] + out["n/a"]
    out["unchanged"] = out["same"]
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
            c.label, side(c.before), side(c.after),
            math.nan if c.delta is None else c.delta,
            math.nan if c.relative is None else 100 * c.relative,
            c.direction, {True: "yes", False: "no", None: "—"}[c.beyond_intervals],
        )
        for c in changes
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["finding", "before", "after", "delta", "change %", "direction", "beyond CIs"])


@dataclass(frozen=True, slots=True)
class GateChange:
    """A gate whose status differs between two audits (``—`` where one audit lacks it)."""

    gate: str
    metric: str
    before: str
    after: str


def gate_changes(baseline: AuditReport, candidate: AuditReport) -> list[GateChange]:
    """The gates (matched by name and metric) whose status changed, was added or was removed."""

    def by_key(report: AuditReport) -> dict[tuple[str, str], str]:
        return {(gate_label(g), g.metric): g.status for g in report.gates}

    before, after = by_key(baseline), by_key(candidate)
    keys = list(dict.fromkeys([*before, *after]))
    return [
        GateChange(k[0], k[1], before.get(k, "—"), after.get(k, "—"))
        for k in keys
        if before.get(k) != after.get(k)
    ]


def runs_values_frame(reports: Sequence[tuple[str, AuditReport]], keys: Sequence[str]) -> pd.DataFrame:
    """Findings ``keys`` of several runs (``(label, report)``, baseline first) relative to the
    baseline's value, in %: ``finding``, ``run``, ``order``, ``change``, ``low``, ``high`` (the
    run's interval on the same scale; NaN without one). Findings whose baseline value is 0 or
    not finite have no relative scale and are left out.

    Example:
        >>> from audit.findings import AuditReport, Finding, SubjectIdentity
        >>> s = SubjectIdentity("m", "classifier", "python")
        >>> a = AuditReport("a", s, findings=(Finding("p", "acc", 0.8, True),))
        >>> b = AuditReport("b", s, findings=(Finding("p", "acc", 0.6, True),))
        >>> list(runs_values_frame([("a", a), ("b", b)], ["p/acc"])["change"].round(6))
        [0.0, -25.0]
    """
    if not reports:
        return pd.DataFrame(columns=["finding", "run", "order", "change", "low", "high"])
    base = _by_key(reports[0][1])
    rows = []
    for order, (label, report) in enumerate(reports):
        found = _by_key(report)
        for key in keys:
            b, f = base.get(key), found.get(key)
            if b is None or f is None or not math.isfinite(b.value) or b.value == 0 or not math.isfinite(f.value):
                continue
            scale = 100 / abs(b.value)

            def rel(x: float) -> float:
                return (x - b.value) * scale

            low, high = (rel(f.ci.low), rel(f.ci.high)) if f.ci else (math.nan, math.nan)
            rows.append((key, label, order, rel(f.value), low, high))
    return pd.DataFrame(rows, columns=["finding", "run", "order", "change", "low", "high"])


# -- trend ---------------------------------------------------------------------------------


def metric_keys(store: ReportStore, rows: Sequence[StoredAudit], model: str | None, *, recent: int = 20) -> list[str]:
    """Finding keys (``probe/metric[slice]``) found in the ``recent`` newest audits of
    ``model`` (of any model when None), sorted."""
    keys: set[str] = set()
    seen = 0
    for r in rows:
        if model is not None and r.subject_name != model:
            continue
        keys.update(f.key for f in store.findings(r.run_id) if f.variant is None)
        seen += 1
        if seen >= recent:
            break
    return sorted(keys)


def trend_frame(points: Sequence[MetricPoint]) -> pd.DataFrame:
    """A metric's history as a table, oldest first: ``run`` (1, 2, ...), ``created`` (UTC,
    naive), ``value``, ``low``, ``high`` (NaN where not finite or absent), ``run id``."""
    return pd.DataFrame(
        [
            (
                i + 1,
                p.created_at.replace(tzinfo=None),
                math.nan if p.value is None else p.value,
                math.nan if p.ci_low is None else p.ci_low,
                math.nan if p.ci_high is None else p.ci_high,
                p.run_id,
            )
            for i, p in enumerate(points)
        ],
        columns=["run", "created", "value", "low", "high", "run id"],
    )


def gate_bounds(report: AuditReport, key: str) -> list[tuple[str, float]]:
    """The absolute bounds the gates of ``report`` set on finding ``key``: ``("min", x)`` /
    ``("max", x)`` (regression gates have no fixed bound and are left out)."""
    out = []
    for g in report.gates:
        if g.metric != key or not isinstance(g.gate, Mapping):
            continue
        for side in ("min", "max"):
            v = g.gate.get(side)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append((side, float(v)))
    return list(dict.fromkeys(out))


# -- leaderboard ---------------------------------------------------------------------------


def latest_per_model(rows: Sequence[StoredAudit]) -> list[StoredAudit]:
    """The newest audit of each model (``rows`` newest first), in that order."""
    seen: dict[str, StoredAudit] = {}
    for r in rows:
        seen.setdefault(r.subject_name, r)
    return list(seen.values())


def leaderboard_frame(latest: Sequence[tuple[StoredAudit, AuditReport]], keys: Sequence[str]) -> pd.DataFrame:
    """Models x metrics: one row per model (its latest audit), for each finding key a value
    column and a ``<key> CI`` column (the interval as text), then the link to the audit."""
    rows = []
    for row, report in latest:
        found = _by_key(report)
        rec: dict[str, object] = {"model": row.subject_name, "audit": row.name, "status": row.status,
                                  "created": row.created_at.replace(tzinfo=None)}  # fmt: skip
        for key in keys:
            f = found.get(key)
            rec[key] = math.nan if f is None else f.value
            rec[f"{key} CI"] = "" if f is None or f.ci is None else format_interval(f.ci)
        rec["open"] = f"?view=Scorecard&run={row.run_id}"
        rows.append(rec)
    columns = ["model", "open", "audit", "status", "created", *[c for k in keys for c in (k, f"{k} CI")]]
    return pd.DataFrame(rows, columns=columns)


def shared_keys(reports: Iterable[AuditReport], *, limit: int = 12) -> list[str]:
    """Finding keys by how many of ``reports`` have them (most first), then by name; at
    most ``limit``."""
    counts: Counter[str] = Counter()
    for r in reports:
        counts.update({f.key for f in r.findings if f.variant is None and math.isfinite(f.value)})
    return [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]
