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
"database is locked" that escapes is retried a bounded number of times. The tables and the
records handed out are in :mod:`audit.store_schema`; URLs and the engine's settings in
:mod:`audit.store_db`.

Example:
    >>> from audit.findings import AuditReport, SubjectIdentity
    >>> report = AuditReport(name="rc1", subject=SubjectIdentity(name="m", kind="classifier", source="python"))
    >>> with ReportStore("sqlite://") as store:   # in memory
    ...     row = store.ingest(report)
    ...     store.get(row.run_id) == report
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from audit.errors import InputError
from audit.findings import AuditReport, Finding
from audit.store_db import (
    BUSY_TIMEOUT_S,
    LOCK_RETRIES,
    db_reason,
    default_store_url,
    is_locked,
    parse_url,
    sqlite_file,
    sqlite_on_begin,
    sqlite_on_connect,
)
from audit.store_schema import (
    AuditRow,
    Base,
    FindingRow,
    MetricPoint,
    StoredAudit,
    audit_row,
    migrate,
    parse_created_at,
    to_stored,
)

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
BUSY_TIMEOUT_S = 30.0
LOCK_RETRIES = 6
# A run id becomes a folder name under reports/; anything else could escape that folder.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")






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
        self._url = parse_url(raw)
        self.url = self._url.render_as_string(hide_password=True)
        self._sqlite_path = sqlite_file(self._url)
        self._engine = self._open()
        # Same pool and events, but transactions begin with BEGIN IMMEDIATE on SQLite (see sqlite_on_begin).
        self._write_engine = self._engine.execution_options(genai_audit_write=True)
        try:
            # The first connection is made here, so this is where a bad file or server shows.
            self._retry(lambda: Base.metadata.create_all(self._write_engine), what="open")
            self._retry(lambda: migrate(self._write_engine), what="open")  # columns newer than the store
        except BaseException:
            self._engine.dispose()
            raise

    # -- setup ------------------------------------------------------------------------------
    def _open(self) -> Engine:
        kwargs: dict[str, Any] = {}
        if self._url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
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
            from audit.store_db import driver_hint

            raise InputError(f"cannot open the audit store {self.url}: {db_reason(exc)}"
                             f"{driver_hint(self._url, exc)}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", sqlite_on_connect)
            event.listen(engine, "begin", sqlite_on_begin)
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
        created_at = parse_created_at(report)
        existing = self._lookup(report.run_id)
        if existing is not None and (report_dir is None or existing.report_dir is not None):
            _warn_if_different(existing, sha)
            return existing

        stored_dir = self._place_report_files(report.run_id, Path(report_dir)) if report_dir is not None else None
        row_dir = self._dir_to_db(stored_dir)

        refused = ""

        def insert() -> StoredAudit | None:
            nonlocal refused
            with Session(self._write_engine, expire_on_commit=False) as session:
                try:
                    with session.begin():
                        row = audit_row(report, sha256=sha, created_at=created_at, report_dir=row_dir)
                        session.add(row)
                except IntegrityError as exc:
                    # Most often another process stored the same run between our look-up and
                    # this insert: the unique run_id refused the second copy. Anything else
                    # that the database refused is reported below.
                    refused = db_reason(exc)
                    return None
                return to_stored(row, self._base)

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
                    update(AuditRow)
                    .where(AuditRow.run_id == run_id, AuditRow.report_dir.is_(None))
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
        query = select(AuditRow).order_by(AuditRow.created_at.desc(), AuditRow.id.desc())
        if subject is not None:
            query = query.where(AuditRow.subject_name == subject)
        if name is not None:
            query = query.where(AuditRow.name == name)
        if status is not None:
            query = query.where(AuditRow.status == status)
        query = query.limit(limit).offset(offset)
        rows = self._read(lambda s: s.scalars(query).all(), what="list audits")
        return [to_stored(row, self._base) for row in rows]

    def get(self, run_id: str) -> AuditReport:
        """The stored report with this run id, exactly as ingested.

        Raises:
            InputError: no report with this run id is stored.
        """
        text = self._read(
            lambda s: s.scalars(select(AuditRow.report_json).where(AuditRow.run_id == run_id)).first(),
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

    def metric_history(self, subject_name: str, metric_key: str, *, variant: str | None = None) -> list[MetricPoint]:
        """The values of one metric of one subject across stored audits, oldest first.

        Args:
            subject_name: the subject's name (``report.subject.name``).
            metric_key: the finding key, ``probe/metric`` or ``probe/metric[k=v,...]``.
            variant: the variant's findings (``spec.variants``) instead of the subject's own.

        Returns:
            ``(created_at, value, ci_low, ci_high, run_id)`` tuples; value and bounds are None
            where the reported number was not finite.
        """
        query = (
            select(AuditRow.created_at, FindingRow.value, FindingRow.ci_low, FindingRow.ci_high, AuditRow.run_id)
            .join(AuditRow, FindingRow.audit_id == AuditRow.id)
            .where(FindingRow.subject_name == subject_name, FindingRow.key == metric_key,
                   FindingRow.variant.is_(None) if variant is None else FindingRow.variant == variant)
            .order_by(AuditRow.created_at, AuditRow.id)
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
        return self._read(lambda s: s.scalar(select(func.count(AuditRow.id))), what="count audits") or 0

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
            lambda s: s.scalars(select(AuditRow).where(AuditRow.run_id == run_id)).first(),
            what=f"read run {run_id}",
        )
        return to_stored(row, self._base) if row is not None else None

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
        for attempt in range(LOCK_RETRIES):
            try:
                return fn()
            except OperationalError as exc:
                if not is_locked(exc) or attempt == LOCK_RETRIES - 1:
                    raise self._error(what, exc) from None
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            except SQLAlchemyError as exc:
                if isinstance(exc, IntegrityError):
                    raise
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, what: str, exc: BaseException) -> InputError:
        if what == "open":
            return InputError(f"cannot open the audit store {self.url}: {db_reason(exc)}")
        return InputError(f"cannot {what} in the audit store {self.url}: {db_reason(exc)}")


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
