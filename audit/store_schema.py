"""The report store's schema: the records it hands out and the two tables behind them.

* ``audits``: one row per report (``run_id`` unique), with the summary columns the history
  view filters on and the exact report JSON.
* ``findings``: one row per finding, so that the trend of one metric over releases is one
  indexed query instead of parsing every report. ``variant`` names the variant of the
  subject a finding was measured on (``spec.variants``), NULL for the subject itself; the
  queries read the subject's findings unless asked for a variant.

Stores made before a column existed are brought up to date when opened (:func:`migrate`:
added columns only, nullable, so an older genai-audit still reads the store).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from audit.errors import InputError
from audit.findings import AuditReport, Finding

__all__ = ["AuditRow", "Base", "FindingRow", "MetricPoint", "StoredAudit", "audit_row", "finding_row",
           "migrate", "parse_created_at", "to_stored"]


# -- records handed out ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredAudit:
    """The summary of one stored report (one row of ``audits``); the report itself is
    :meth:`ReportStore.get`.

    ``created_at`` and ``ingested_at`` are timezone-aware UTC datetimes. ``report_dir`` is the
    folder holding the report files inside the store (SQLite stores), or the folder they were
    ingested from (other databases, where the store has no folder of its own), or None.
    """

    run_id: str
    name: str
    subject_name: str
    subject_kind: str
    created_at: _dt.datetime
    status: str
    n_findings: int
    n_gates_failed: int
    n_probes_failed: int
    report_sha256: str
    report_dir: Path | None
    ingested_at: _dt.datetime
    schema_version: str


class MetricPoint(NamedTuple):
    """One point of a metric's history; ``value`` and the bounds are None where not finite."""

    created_at: _dt.datetime
    value: float | None
    ci_low: float | None
    ci_high: float | None
    run_id: str


# -- schema ---------------------------------------------------------------------------------


class _UTCDateTime(TypeDecorator[_dt.datetime]):
    """Stores naive UTC, hands back aware UTC: SQLite keeps no offset, and mixed offsets
    would sort wrongly as text."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: _dt.datetime | None, dialect: Any) -> _dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: _dt.datetime | None, dialect: Any) -> _dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class AuditRow(Base):
    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(512), nullable=False, index=True)
    subject_name: Mapped[str] = mapped_column(String(512), nullable=False, index=True)
    subject_kind: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[_dt.datetime] = mapped_column(_UTCDateTime, nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    n_findings: Mapped[int] = mapped_column(Integer, nullable=False)
    n_gates_failed: Mapped[int] = mapped_column(Integer, nullable=False)
    n_probes_failed: Mapped[int] = mapped_column(Integer, nullable=False)
    report_json: Mapped[str] = mapped_column(Text, nullable=False)
    report_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    report_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    ingested_at: Mapped[_dt.datetime] = mapped_column(_UTCDateTime, nullable=False)
    schema_version: Mapped[str] = mapped_column(String(16), nullable=False)

    findings: Mapped[list[FindingRow]] = relationship(back_populates="audit", cascade="all, delete-orphan")


class FindingRow(Base):
    __tablename__ = "findings"
    # subject_name is copied from the audit so that the trend query is served by one index.
    __table_args__ = (Index("ix_findings_subject_key", "subject_name", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), nullable=False, index=True)
    subject_name: Mapped[str] = mapped_column(String(512), nullable=False)
    probe: Mapped[str] = mapped_column(String(256), nullable=False)
    metric: Mapped[str] = mapped_column(String(256), nullable=False)
    slice_json: Mapped[str] = mapped_column(Text, nullable=False)
    key: Mapped[str] = mapped_column(String(1024), nullable=False)
    # NULL where the value is nan or infinite; the report JSON keeps the exact number.
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    unit: Mapped[str] = mapped_column(String(64), nullable=False)
    higher_is_better: Mapped[bool] = mapped_column(Boolean, nullable=False)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_method: Mapped[str | None] = mapped_column(String(128), nullable=True)
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The variant of the subject (spec.variants); NULL for the subject itself and in stores from before 1.1.
    variant: Mapped[str | None] = mapped_column(String(64), nullable=True)

    audit: Mapped[AuditRow] = relationship(back_populates="findings")


def parse_created_at(report: AuditReport) -> _dt.datetime:
    text = report.created_at.strip()
    if text.endswith(("Z", "z")):  # fromisoformat accepts it only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"report {report.run_id}: created_at {report.created_at!r} is not an ISO 8601 timestamp"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)  # reports write UTC; a naive one came from a hand edit
    return value.astimezone(_dt.timezone.utc)



def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None



def finding_row(f: Finding, subject_name: str) -> FindingRow:
    return FindingRow(
        subject_name=subject_name,
        probe=f.probe,
        metric=f.metric,
        slice_json=json.dumps(dict(f.slice), sort_keys=True, ensure_ascii=False),
        key=f.key,
        value=finite(f.value),
        unit=f.unit,
        higher_is_better=f.higher_is_better,
        ci_low=finite(f.ci.low) if f.ci is not None else None,
        ci_high=finite(f.ci.high) if f.ci is not None else None,
        ci_method=f.ci.method if f.ci is not None else None,
        n=f.n,
        variant=f.variant,
    )


#: Columns added after a store's first release: (table, column, SQL type); nullable, no default.
_ADDED_COLUMNS = (("findings", "variant", "VARCHAR(64)"),)


def migrate(engine: Any) -> list[str]:
    """Add the columns of :data:`_ADDED_COLUMNS` that a store made by an older version lacks;
    returns ``table.column`` of each one added."""
    from sqlalchemy import inspect, text

    added = []
    with engine.begin() as conn:
        insp = inspect(conn)
        tables = set(insp.get_table_names())
        for table, column, sql_type in _ADDED_COLUMNS:
            if table in tables and column not in {c["name"] for c in insp.get_columns(table)}:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
                added.append(f"{table}.{column}")
    return added



def to_stored(row: AuditRow, base: Path | None) -> StoredAudit:
    report_dir = None
    if row.report_dir is not None:
        report_dir = Path(row.report_dir)
        if not report_dir.is_absolute() and base is not None:
            report_dir = base / report_dir
    return StoredAudit(
        run_id=row.run_id,
        name=row.name,
        subject_name=row.subject_name,
        subject_kind=row.subject_kind,
        created_at=row.created_at,
        status=row.status,
        n_findings=row.n_findings,
        n_gates_failed=row.n_gates_failed,
        n_probes_failed=row.n_probes_failed,
        report_sha256=row.report_sha256,
        report_dir=report_dir,
        ingested_at=row.ingested_at,
        schema_version=row.schema_version,
    )



def audit_row(report: AuditReport, *, sha256: str, created_at: _dt.datetime, report_dir: str | None) -> AuditRow:
    """The ``audits`` row of ``report`` (with its ``findings`` rows); ``sha256`` is of its
    canonical JSON, ``created_at`` its :func:`parse_created_at`."""
    row = AuditRow(
        run_id=report.run_id,
        name=report.name,
        subject_name=report.subject.name,
        subject_kind=report.subject.kind,
        created_at=created_at,
        status=report.status,
        n_findings=len(report.findings),
        n_gates_failed=sum(g.status == "failed" for g in report.gates),
        n_probes_failed=sum(p.status == "failed" for p in report.probes.values()),
        report_json=report.to_json(indent=None),
        report_sha256=sha256,
        report_dir=report_dir,
        ingested_at=_dt.datetime.now(_dt.timezone.utc),
        schema_version=report.schema_version,
    )
    # Every finding, variants' with their name: the queries read the subject's rows (variant NULL)
    # unless asked for a variant, so a variant's value never passes for the subject's.
    row.findings = [finding_row(f, report.subject.name) for f in report.findings]
    return row
