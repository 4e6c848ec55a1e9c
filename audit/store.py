"""The store of audit reports: a SQLite file by default, any SQLAlchemy URL otherwise.

The dashboard reads only this store (and the report files it copied), so everything it shows
comes from here. Two tables:

* ``audits``: one row per report (``run_id`` unique), with the summary columns the history
  view filters on and the exact report JSON, from which :meth:`ReportStore.get` rebuilds the
  :class:`~audit.findings.AuditReport`.
* ``findings``: one row per finding, so that the trend of one metric over releases
  (:meth:`ReportStore.metric_history`) is one indexed query instead of parsing every report.

Several processes may ingest into the same SQLite file at once (CI shards, ``torchrun``
ranks): the file runs in WAL mode, every write transaction takes the write lock up front
(``BEGIN IMMEDIATE``) and waits for it up to a busy timeout, and the rare
"database is locked" that escapes is retried a bounded number of times.

Example:
    >>> from audit.findings import AuditReport, SubjectIdentity
    >>> report = AuditReport(name="rc1", subject=SubjectIdentity(name="m", kind="classifier", source="python"))
    >>> with ReportStore("sqlite://") as store:   # in memory
    ...     row = store.ingest(report)
    ...     store.get(row.run_id) == report
    True
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from audit.errors import InputError
from audit.findings import AuditReport, Finding

__all__ = [
    "REPORT_FILES",
    "MetricPoint",
    "ReportStore",
    "StoredAudit",
    "default_store_url",
]

log = logging.getLogger(__name__)

REPORT_FILES = ("report.json", "report.html", "report.md", "junit.xml", "samples.parquet")  # samples: when a probe recorded any
"""The files of a report folder that :meth:`ReportStore.ingest` copies into the store."""

_STATUSES = ("passed", "failed", "invalid", "crashed")
_BUSY_TIMEOUT_S = 30.0
_LOCK_RETRIES = 6
# A run id becomes a folder name under reports/; anything else could escape that folder.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_store_url() -> str:
    """The store used when none is named.

    ``$GENAI_AUDIT_STORE`` if set (a SQLAlchemy URL or a file path), else the SQLite file
    ``$XDG_DATA_HOME/genai-audit/audits.db`` (``XDG_DATA_HOME`` defaults to ``~/.local/share``).

    Example:
        >>> default_store_url().startswith("sqlite:///") or "GENAI_AUDIT_STORE" in os.environ
        True
    """
    env = os.environ.get("GENAI_AUDIT_STORE", "").strip()
    if env:
        return env
    data_home = os.environ.get("XDG_DATA_HOME", "").strip() or str(Path.home() / ".local" / "share")
    return _path_to_sqlite_url(Path(data_home) / "genai-audit" / "audits.db")


def _path_to_sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path.expanduser().resolve())


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


class _Base(DeclarativeBase):
    pass


class _AuditRow(_Base):
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

    findings: Mapped[list[_FindingRow]] = relationship(back_populates="audit", cascade="all, delete-orphan")


class _FindingRow(_Base):
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

    audit: Mapped[_AuditRow] = relationship(back_populates="findings")


# -- the store ------------------------------------------------------------------------------

_T = TypeVar("_T")


class ReportStore:
    """Audit reports in a database, newest first.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path/audits.db``, ``postgresql+psycopg://...``) or a
            bare file path (taken as a SQLite file). None means :func:`default_store_url`.

    Raises:
        InputError: the URL cannot be parsed, its driver is missing, or the database cannot be
            opened; the message names the URL (password hidden) and the reason.

    Example:
        >>> with ReportStore("sqlite://") as store:
        ...     store.count()
        0

    An instance is not meant to cross ``fork``; each process opens its own store.
    """

    def __init__(self, url: str | os.PathLike[str] | None = None) -> None:
        raw = default_store_url() if url is None else os.fspath(url)
        self._url = _parse_url(raw)
        self.url = self._url.render_as_string(hide_password=True)
        self._sqlite_path = _sqlite_file(self._url)
        self._engine = self._open()
        # Same pool and events, but transactions begin with BEGIN IMMEDIATE on SQLite (see _sqlite_on_begin).
        self._write_engine = self._engine.execution_options(genai_audit_write=True)
        try:
            # The first connection is made here, so this is where a bad file or server shows.
            self._retry(lambda: _Base.metadata.create_all(self._write_engine), what="open")
        except BaseException:
            self._engine.dispose()
            raise

    # -- setup ------------------------------------------------------------------------------
    def _open(self) -> Engine:
        kwargs: dict[str, Any] = {}
        if self._url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": _BUSY_TIMEOUT_S}
            if self._sqlite_path is not None:
                try:
                    self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise InputError(
                        f"cannot open the audit store {self.url}: cannot create the folder "
                        f"{self._sqlite_path.parent}: {exc.strerror or exc}"
                    ) from None
        try:
            engine = create_engine(self._url, **kwargs)
        except (ArgumentError, NoSuchModuleError, ImportError, TypeError) as exc:
            raise InputError(f"cannot open the audit store {self.url}: {_reason(exc)}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        return engine

    @property
    def _base(self) -> Path | None:
        return self._sqlite_path.parent if self._sqlite_path is not None else None

    def _dir_to_db(self, folder: Path | None) -> str | None:
        # Folders inside the store are kept relative to it, so that a store folder that is
        # moved or copied (a CI artefact, a backup) still finds its report files.
        if folder is None:
            return None
        base = self._base
        if base is not None and folder.is_relative_to(base):
            return folder.relative_to(base).as_posix()
        return str(folder)

    @property
    def reports_root(self) -> Path | None:
        """The folder that holds copied report files (``<sqlite folder>/reports``), or None
        for stores without a folder (in-memory SQLite, server databases)."""
        if self._sqlite_path is None:
            return None
        return self._sqlite_path.parent / "reports"

    # -- writing ----------------------------------------------------------------------------
    def ingest(self, report: AuditReport, *, report_dir: str | os.PathLike[str] | None = None) -> StoredAudit:
        """Store ``report``; a report already stored (same ``run_id``) is not stored twice.

        Args:
            report: the report to store.
            report_dir: the folder ``genai-audit run`` wrote the report files to. On a SQLite
                store, the files in :data:`REPORT_FILES` that exist there are copied to
                ``<store folder>/reports/<run_id>/`` (the folder appears complete or not at
                all); on other stores the folder is only recorded.

        Returns:
            The stored row: the new one, or the one already there. Re-ingesting a run id whose
            stored JSON differs (e.g. re-gated) keeps the stored report and logs a warning.

        Raises:
            InputError: the report cannot be stored (bad ``created_at``, a run id unfit for a
                folder name, a ``report_dir`` without report files or of another run, or a
                database error).

        Example:
            >>> from audit.findings import AuditReport, SubjectIdentity
            >>> r = AuditReport(name="a", subject=SubjectIdentity(name="m", kind="encoder", source="python"))
            >>> with ReportStore("sqlite://") as s:
            ...     s.ingest(r).run_id == s.ingest(r).run_id == r.run_id, s.count()
            (True, 1)
        """
        # The hash is of a canonical form (sorted keys, no spaces) so that the same report
        # written with other whitespace or key order hashes the same; the stored text keeps
        # the report's own order (probes run in spec order), so get() gives it back exactly.
        canonical = json.dumps(
            report.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        sha = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        report_json = report.to_json(indent=None)
        created_at = _parse_created_at(report)

        existing = self._lookup(report.run_id)
        if existing is not None and (report_dir is None or existing.report_dir is not None):
            _warn_if_different(existing, sha)
            return existing

        stored_dir = self._place_report_files(report.run_id, Path(report_dir)) if report_dir is not None else None

        def build() -> _AuditRow:
            row = _AuditRow(
                run_id=report.run_id,
                name=report.name,
                subject_name=report.subject.name,
                subject_kind=report.subject.kind,
                created_at=created_at,
                status=report.status,
                n_findings=len(report.findings),
                n_gates_failed=sum(g.status == "failed" for g in report.gates),
                n_probes_failed=sum(p.status == "failed" for p in report.probes.values()),
                report_json=report_json,
                report_sha256=sha,
                report_dir=self._dir_to_db(stored_dir),
                ingested_at=_dt.datetime.now(_dt.timezone.utc),
                schema_version=report.schema_version,
            )
            row.findings = [_finding_row(f, report.subject.name) for f in report.findings]
            return row

        refused = ""

        def insert() -> StoredAudit | None:
            nonlocal refused
            with Session(self._write_engine, expire_on_commit=False) as session:
                try:
                    with session.begin():
                        row = build()
                        session.add(row)
                except IntegrityError as exc:
                    # Most often another process stored the same run between our look-up and
                    # this insert: the unique run_id refused the second copy. Anything else
                    # that the database refused is reported below.
                    refused = _reason(exc)
                    return None
                return _to_stored(row, self._base)

        stored = self._retry(insert, what=f"store report {report.run_id}")
        if stored is not None:
            return stored
        stored = self._lookup(report.run_id)
        if stored is None:
            raise InputError(f"cannot store report {report.run_id} in {self.url}: {refused}")
        _warn_if_different(stored, sha)
        if stored.report_dir is None and stored_dir is not None:
            stored = self._set_report_dir(report.run_id, stored_dir)
        return stored

    def _set_report_dir(self, run_id: str, folder: Path) -> StoredAudit:
        def set_folder() -> None:
            with Session(self._write_engine) as session, session.begin():
                session.execute(
                    update(_AuditRow)
                    .where(_AuditRow.run_id == run_id, _AuditRow.report_dir.is_(None))
                    .values(report_dir=self._dir_to_db(folder))
                )

        self._retry(set_folder, what=f"record the report folder of run {run_id}")
        return self.stored(run_id)

    def _place_report_files(self, run_id: str, src: Path) -> Path:
        if not src.is_dir():
            raise InputError(f"report folder of run {run_id} not found: {src}")
        present = [name for name in REPORT_FILES if (src / name).is_file()]
        if not present:
            raise InputError(f"report folder {src} holds none of {', '.join(REPORT_FILES)}")
        if "report.json" in present:
            # A folder of another run would make the dashboard serve the wrong report.
            try:
                other = json.loads((src / "report.json").read_text(encoding="utf-8")).get("run_id")
            except (OSError, ValueError, AttributeError):
                other = None
            if other is not None and other != run_id:
                raise InputError(f"{src / 'report.json'} is run {other}, not the run being ingested ({run_id})")
        root = self.reports_root
        if root is None:
            return src.resolve()
        if not _SAFE_RUN_ID.match(run_id):
            raise InputError(f"run id {run_id!r} cannot name a report folder (letters, digits, '.', '_', '-' only)")
        final = root / run_id
        if final.is_dir():
            return final
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".tmp", dir=root))
        except OSError as exc:
            raise InputError(f"cannot copy the report files of run {run_id} into {root}: {exc}") from None
        try:
            for name in present:
                shutil.copy2(src / name, tmp / name)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the dashboard may run as another user
            try:
                # One rename: readers see no folder or the complete one.
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # A concurrent ingest of the same run put its copy there first; keep that one.
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(f"cannot copy the report files of run {run_id} into {root}: {exc}") from None
        return final

    # -- reading ----------------------------------------------------------------------------
    def list_audits(
        self,
        *,
        subject: str | None = None,
        name: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[StoredAudit]:
        """Stored audits, newest first (by the report's ``created_at``).

        Args:
            subject: only audits of this subject name.
            name: only audits with this audit name.
            status: only ``passed``, ``failed`` or ``crashed`` audits.
            limit: at most this many rows.
            offset: skip this many rows first (paging).

        Raises:
            InputError: an unknown status, or a negative limit or offset.
        """
        if status is not None and status not in _STATUSES:
            raise InputError(f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
        if limit < 0 or offset < 0:
            raise InputError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
        query = select(_AuditRow).order_by(_AuditRow.created_at.desc(), _AuditRow.id.desc())
        if subject is not None:
            query = query.where(_AuditRow.subject_name == subject)
        if name is not None:
            query = query.where(_AuditRow.name == name)
        if status is not None:
            query = query.where(_AuditRow.status == status)
        query = query.limit(limit).offset(offset)
        rows = self._read(lambda s: s.scalars(query).all(), what="list audits")
        return [_to_stored(row, self._base) for row in rows]

    def get(self, run_id: str) -> AuditReport:
        """The stored report with this run id, exactly as ingested.

        Raises:
            InputError: no report with this run id is stored.
        """
        text = self._read(
            lambda s: s.scalars(select(_AuditRow.report_json).where(_AuditRow.run_id == run_id)).first(),
            what=f"read report {run_id}",
        )
        if text is None:
            raise InputError(f"no audit with run id {run_id!r} in the store {self.url}")
        return AuditReport.from_json(text, source=f"{self.url} run {run_id}")

    def stored(self, run_id: str) -> StoredAudit:
        """The summary row of one run.

        Raises:
            InputError: no report with this run id is stored.
        """
        row = self._lookup(run_id)
        if row is None:
            raise InputError(f"no audit with run id {run_id!r} in the store {self.url}")
        return row

    def findings(self, run_id: str) -> list[Finding]:
        """The findings of one run, exactly as reported (non-finite values included).

        Raises:
            InputError: no report with this run id is stored.
        """
        return list(self.get(run_id).findings)

    def metric_history(self, subject_name: str, metric_key: str) -> list[MetricPoint]:
        """The values of one metric of one subject across stored audits, oldest first.

        Args:
            subject_name: the subject's name (``report.subject.name``).
            metric_key: the finding key, ``probe/metric`` or ``probe/metric[k=v,...]``.

        Returns:
            ``(created_at, value, ci_low, ci_high, run_id)`` tuples; value and bounds are None
            where the reported number was not finite.
        """
        query = (
            select(_AuditRow.created_at, _FindingRow.value, _FindingRow.ci_low, _FindingRow.ci_high, _AuditRow.run_id)
            .join(_AuditRow, _FindingRow.audit_id == _AuditRow.id)
            .where(_FindingRow.subject_name == subject_name, _FindingRow.key == metric_key)
            .order_by(_AuditRow.created_at, _AuditRow.id)
        )
        rows = self._read(lambda s: s.execute(query).all(), what="read metric history")
        return [MetricPoint(*row) for row in rows]

    def report_file(self, run_id: str, name: str) -> Path | None:
        """The stored copy of one report file, or None; never a path outside :attr:`reports_root`.

        Args:
            run_id: the run.
            name: one of :data:`REPORT_FILES`.
        """
        root = self.reports_root
        if root is None or name not in REPORT_FILES:
            return None
        row = self._lookup(run_id)
        if row is None or row.report_dir is None:
            return None
        path = (Path(row.report_dir) / name).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            return None
        return path

    def count(self) -> int:
        """How many audits are stored."""
        return self._read(lambda s: s.scalar(select(func.count(_AuditRow.id))), what="count audits") or 0

    def close(self) -> None:
        """Close the database connections (the store cannot be used afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> ReportStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReportStore({self.url!r})"

    # -- helpers ----------------------------------------------------------------------------
    def _lookup(self, run_id: str) -> StoredAudit | None:
        row = self._read(
            lambda s: s.scalars(select(_AuditRow).where(_AuditRow.run_id == run_id)).first(),
            what=f"read run {run_id}",
        )
        return _to_stored(row, self._base) if row is not None else None

    def _read(self, fn: Callable[[Session], _T], *, what: str) -> _T:
        def attempt() -> _T:
            # A fresh session per attempt: a failed one is left in a rolled-back state.
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                return fn(session)

        return self._retry(attempt, what=what)

    def _retry(self, fn: Callable[[], _T], *, what: str) -> _T:
        """Run ``fn``, retrying a bounded number of times when SQLite says it is locked.

        The busy timeout already waits for the lock; this catches what slips through it
        (e.g. the lock taken while switching the journal to WAL on a fresh file).
        """
        for attempt in range(_LOCK_RETRIES):
            try:
                return fn()
            except OperationalError as exc:
                if not _is_locked(exc) or attempt == _LOCK_RETRIES - 1:
                    raise self._error(what, exc) from None
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            except SQLAlchemyError as exc:
                if isinstance(exc, IntegrityError):
                    raise
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, what: str, exc: BaseException) -> InputError:
        if what == "open":
            return InputError(f"cannot open the audit store {self.url}: {_reason(exc)}")
        return InputError(f"cannot {what} in the audit store {self.url}: {_reason(exc)}")


# -- module helpers -------------------------------------------------------------------------


def _parse_url(raw: str) -> URL:
    text = raw.strip()
    if not text:
        raise InputError("the audit store URL is empty")
    if "://" not in text:
        # A bare path: what users type on the command line.
        text = _path_to_sqlite_url(Path(text))
    try:
        return make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise InputError(f"cannot parse the audit store URL {_mask_password(raw)!r}: {_reason(exc)}") from None


def _mask_password(raw: str) -> str:
    # The URL could not be parsed, so SQLAlchemy cannot hide its password for us.
    return re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", raw)


def _sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is deferred
    # and starts late, which turns concurrent writers into "database is locked" errors).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so that the journal switch below waits for other writers too.
        cursor.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL: readers (the dashboard) never block the writer and the writer never blocks them.
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    # Writers take the write lock at BEGIN, where the busy timeout applies; a deferred
    # transaction that reads then writes fails at once with SQLITE_BUSY instead of waiting.
    if conn.get_execution_options().get("genai_audit_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse_created_at(report: AuditReport) -> _dt.datetime:
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


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _finding_row(f: Finding, subject_name: str) -> _FindingRow:
    return _FindingRow(
        subject_name=subject_name,
        probe=f.probe,
        metric=f.metric,
        slice_json=json.dumps(dict(f.slice), sort_keys=True, ensure_ascii=False),
        key=f.key,
        value=_finite(f.value),
        unit=f.unit,
        higher_is_better=f.higher_is_better,
        ci_low=_finite(f.ci.low) if f.ci is not None else None,
        ci_high=_finite(f.ci.high) if f.ci is not None else None,
        ci_method=f.ci.method if f.ci is not None else None,
        n=f.n,
    )


def _to_stored(row: _AuditRow, base: Path | None) -> StoredAudit:
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


def _warn_if_different(stored: StoredAudit, sha: str) -> None:
    if stored.report_sha256 != sha:
        log.warning(
            "run %s is already stored with different content (sha256 %s, ingested %s); keeping the stored "
            "report and ignoring this one (sha256 %s)",
            stored.run_id,
            stored.report_sha256[:12],
            stored.ingested_at.isoformat(timespec="seconds"),
            sha[:12],
        )
