"""The dashboard's queries over the audit store: the list of audits, its filters and sorting,
failures across audits, report files and per-sample records (no Streamlit).

The dashboard reads only the audit store (:class:`audit.store.ReportStore`) and the files the
store copied into its own folder (:meth:`ReportStore.report_file`); it never imports
``probes``. One report's tables and charts are shaped in :mod:`dashboard.report_view`,
comparisons, trends and the leaderboard in :mod:`dashboard.history`.

Example:
    >>> from audit.store import ReportStore
    >>> with ReportStore("sqlite://") as store:
    ...     counts_markdown(all_audits(store))
    '**0** audits: :green[**0** passed] · :red[**0** failed] · :violet[**0** invalid] · :orange[**0** crashed] · :gray[**0** other]'
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from audit.errors import InputError
from audit.findings import Finding
from audit.store import ReportStore, StoredAudit, default_store_url
from dashboard.report_view import ProbeFailure, failures_of
from dashboard.text import OTHER, STATUSES, clean_text, status_style

__all__ = [
    "DOWNLOADS",
    "LIST_COLUMNS",
    "LIST_PAGE_ROWS",
    "MAX_AUDITS",
    "SAMPLE_ROWS",
    "Download",
    "all_audits",
    "audit_label",
    "counts_markdown",
    "filter_audits",
    "list_records",
    "metric_values",
    "models_of",
    "report_bytes",
    "report_downloads",
    "samples_frame",
    "sort_audits",
    "status_counts",
    "store_failures",
    "store_url",
]

MAX_AUDITS = 20_000
"""The most audit summaries the dashboard reads for its list (newest first)."""

LIST_PAGE_ROWS = 100
"""Rows of the audit list shown at a time (the list pages through the rest)."""

SAMPLE_ROWS = 200
"""The most per-sample records the drill-down shows for one finding."""

_PAGE = 1000

LIST_COLUMNS = ("created", "audit", "model", "status", "findings", "gates failed", "probes failed", "run id")
"""The audit list's columns (a metric filtered on adds its own after ``status``)."""


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
    """Up to ``limit`` stored audit summaries, newest first."""
    rows: list[StoredAudit] = []
    while len(rows) < limit:
        page = store.list_audits(limit=min(_PAGE, limit - len(rows)), offset=len(rows))
        rows.extend(page)
        if len(page) < _PAGE:
            break
    return rows


# -- the list ------------------------------------------------------------------------------


def filter_audits(
    rows: Iterable[StoredAudit],
    *,
    name: str | None = None,
    model: str | None = None,
    status: str | None = None,
    since: _dt.date | None = None,
    until: _dt.date | None = None,
    values: Mapping[str, float] | None = None,
    low: float | None = None,
    high: float | None = None,
) -> list[StoredAudit]:
    """The audits matching every criterion given (a None criterion matches everything).

    Args:
        name: text the audit's name contains (case-insensitive).
        model: the subject's name, exactly.
        status: one of :data:`~dashboard.text.STATUSES`, or ``"other"`` for any status not among them.
        since, until: creation dates (UTC), inclusive.
        values: a metric's value per run id (:func:`metric_values`); with it, only the audits
            that have the metric, with a value between ``low`` and ``high`` inclusive.

    Raises:
        InputError: an unknown status, ``since`` after ``until``, or ``low`` above ``high``.
    """
    if status is not None and status not in (*STATUSES, OTHER):
        raise InputError(f"status must be one of {', '.join((*STATUSES, OTHER))}, got {status!r}")
    if since is not None and until is not None and since > until:
        raise InputError(f"the start date {since} is after the end date {until}")
    if low is not None and high is not None and low > high:
        raise InputError(f"the metric's lower bound {low:g} is above its upper bound {high:g}")
    needle = (name or "").strip().casefold()
    out = []
    for r in rows:
        day = r.created_at.date()
        if needle and needle not in r.name.casefold():
            continue
        if model is not None and r.subject_name != model:
            continue
        if status is not None and (r.status != status if status != OTHER else r.status in STATUSES):
            continue
        if (since is not None and day < since) or (until is not None and day > until):
            continue
        if values is not None:
            v = values.get(r.run_id)
            if v is None or (low is not None and v < low) or (high is not None and v > high):
                continue
        out.append(r)
    return out


_SORT_KEYS = {
    "created": lambda r: r.created_at,
    "audit": lambda r: r.name.casefold(),
    "model": lambda r: r.subject_name.casefold(),
    "status": lambda r: (STATUSES + (r.status,)).index(r.status),
    "findings": lambda r: r.n_findings,
    "gates failed": lambda r: r.n_gates_failed,
    "probes failed": lambda r: r.n_probes_failed,
    "run id": lambda r: r.run_id,
}


def sort_audits(
    rows: Sequence[StoredAudit], column: str, *, descending: bool, values: Mapping[str, float] | None = None
) -> list[StoredAudit]:
    """``rows`` sorted by one of :data:`LIST_COLUMNS` (or, with ``values``, by the metric),
    ties kept newest first; audits without the metric go last.

    Raises:
        InputError: an unknown column.
    """
    if values is not None and column not in _SORT_KEYS:
        have = [r for r in rows if r.run_id in values]
        rest = [r for r in rows if r.run_id not in values]
        return sorted(have, key=lambda r: values[r.run_id], reverse=descending) + rest
    if column not in _SORT_KEYS:
        raise InputError(f"cannot sort the list by {column!r}; expected one of {', '.join(_SORT_KEYS)}")
    return sorted(rows, key=_SORT_KEYS[column], reverse=descending)


def list_records(rows: Sequence[StoredAudit], *, metric: str | None = None,
                 values: Mapping[str, float] | None = None) -> list[dict[str, object]]:
    """The rows of the list as plain JSON records for the browser (which shows them as text).

    Example:
        >>> list_records([])
        []
    """
    out = []
    for r in rows:
        rec: dict[str, object] = {
            "run": r.run_id,
            "created": f"{r.created_at:%Y-%m-%d %H:%M}",
            "audit": clean_text(r.name),
            "model": clean_text(r.subject_name),
            "status": clean_text(r.status),
            "colour": status_style(r.status).colour,
            "findings": int(r.n_findings),
            "gates failed": int(r.n_gates_failed),
            "probes failed": int(r.n_probes_failed),
            "run id": r.run_id[:8],
        }
        if metric is not None and values is not None:
            v = values.get(r.run_id)
            rec[metric] = None if v is None else float(f"{v:.6g}")
        out.append(rec)
    return out


def models_of(rows: Iterable[StoredAudit]) -> list[str]:
    """The audited models (subject names), sorted."""
    return sorted({r.subject_name for r in rows})


def status_counts(rows: Iterable[StoredAudit]) -> dict[str, int]:
    """How many audits have each status, every known status present (zeros included), and
    ``other`` for statuses unknown here: the counts add up to the number of rows."""
    counts = Counter(r.status for r in rows)
    out = {s: counts.get(s, 0) for s in STATUSES}
    out[OTHER] = sum(c for s, c in counts.items() if s not in STATUSES)
    return out


def counts_markdown(rows: Sequence[StoredAudit]) -> str:
    """One Markdown line: how many audits ``rows`` holds, and how many have each status."""
    counts = status_counts(rows)
    parts = (f":{status_style(s).colour}[**{c}** {s}]" for s, c in counts.items())
    return f"**{len(rows)}** audit{'' if len(rows) == 1 else 's'}: " + " · ".join(parts)


def audit_label(row: StoredAudit) -> str:
    """One line naming an audit in a picker: name, model, UTC time, status and short run id."""
    when = row.created_at.strftime("%Y-%m-%d %H:%M")
    return " · ".join((clean_text(row.name), clean_text(row.subject_name), when, clean_text(row.status),
                       row.run_id[:8]))  # fmt: skip


def metric_values(store: ReportStore, rows: Sequence[StoredAudit], key: str) -> dict[str, float]:
    """The finite value of finding ``key`` (``probe/metric[slice]``) per run id, over the
    models of ``rows`` (one indexed query per model)."""
    out: dict[str, float] = {}
    for model in models_of(rows):
        for p in store.metric_history(model, key):
            if p.value is not None and math.isfinite(p.value):
                out[p.run_id] = p.value
    return out


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


# -- report files --------------------------------------------------------------------------


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


def _slice_matches(raw: object, want: Mapping[str, str]) -> bool:
    """Whether a record's ``slice`` (JSON text) agrees with ``want`` on every key it has."""
    import json

    try:
        got = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return True  # not JSON: the column says nothing about the slice
    if not isinstance(got, dict):
        return True
    return all(str(got[k]) == v for k, v in want.items() if k in got)


SAMPLES_FILE = "samples.parquet"
# The columns of samples.parquet the drill-down reads to pick a finding's records; every
# other column is shown as it is.
_SAMPLE_MATCH = ("probe", "metric")


def samples_frame(store: ReportStore, run_id: str, f: Finding, *, limit: int = SAMPLE_ROWS) -> pd.DataFrame | None:
    """The per-sample records behind finding ``f``, from the run's ``samples.parquet`` in the
    store's folder (None when the store holds no such file).

    Records are those of ``f``'s probe (and of its metric, where the file has a ``metric``
    column with that metric; and of its slice, where the file has a ``slice`` column of JSON
    objects or a column named after each slice key), at most ``limit`` of them.

    Raises:
        InputError: the file is there but cannot be read as Parquet.
    """
    path = store.report_file(run_id, SAMPLES_FILE)
    if path is None:
        return None
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; all mean "unreadable"
        raise InputError(f"cannot read {SAMPLES_FILE} of run {run_id}: {exc}") from None
    keep = pd.Series(True, index=frame.index)
    if "probe" in frame:
        keep &= frame["probe"].astype(str) == f.probe
    if "metric" in frame and (frame["metric"].astype(str) == f.metric).any():
        keep &= frame["metric"].astype(str) == f.metric
    for k, v in f.slice.items():
        if k in frame:
            keep &= frame[k].astype(str) == v
    if f.slice and "slice" in frame:
        keep &= frame["slice"].map(lambda raw: _slice_matches(raw, f.slice))
    picked = frame[keep]
    return picked.drop(columns=[c for c in _SAMPLE_MATCH if c in picked]).head(limit).reset_index(drop=True)
