"""The database under the report store: URLs, the SQLite engine's settings, lock retries.

Several processes may write one SQLite file at once (CI shards, ``torchrun`` ranks): the
file runs in WAL mode, every write transaction takes the write lock up front (``BEGIN
IMMEDIATE``) and waits for it up to :data:`BUSY_TIMEOUT_S`; :class:`audit.store.ReportStore`
retries the rare "database is locked" that escapes up to :data:`LOCK_RETRIES` times.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from audit.errors import InputError

__all__ = ["BUSY_TIMEOUT_S", "LOCK_RETRIES", "db_reason", "default_store_url", "is_locked", "parse_url",
           "path_to_sqlite_url", "sqlite_file", "sqlite_on_begin", "sqlite_on_connect"]

BUSY_TIMEOUT_S = 30.0
LOCK_RETRIES = 6


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
    return path_to_sqlite_url(Path(data_home) / "genai-audit" / "audits.db")



def path_to_sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path.expanduser().resolve())



def parse_url(raw: str) -> URL:
    text = raw.strip()
    if not text:
        raise InputError("the audit store URL is empty")
    if "://" not in text:
        # A bare path: what users type on the command line.
        text = path_to_sqlite_url(Path(text))
    try:
        return default_driver(make_url(text))
    except (ArgumentError, ValueError) as exc:
        raise InputError(f"cannot parse the audit store URL {mask_password(raw)!r}: {db_reason(exc)}") from None



#: Backends whose driver an extra of genai-audit installs: backend -> (SQLAlchemy driver, extra).
DRIVER_EXTRAS = {"postgresql": ("psycopg", "postgres")}


def default_driver(url: URL) -> URL:
    """``postgresql://`` means SQLAlchemy's default driver (psycopg2); the ``[postgres]`` extra
    installs psycopg 3, so a URL that names no driver gets that one."""
    known = DRIVER_EXTRAS.get(url.drivername)
    return url.set(drivername=f"{url.drivername}+{known[0]}") if known else url


def driver_hint(url: URL, exc: BaseException) -> str:
    """Which extra installs the missing database driver, for an import error at connect."""
    from sqlalchemy.exc import NoSuchModuleError

    if not isinstance(exc, (ImportError, NoSuchModuleError)):
        return ""
    known = DRIVER_EXTRAS.get(url.get_backend_name())
    if known is not None and url.get_driver_name() == known[0]:
        return f". Install the driver with: pip install 'genai-audit[{known[1]}]'"
    if known is not None:
        return (f". The genai-audit[{known[1]}] extra installs {known[0]}: write the URL as "
                f"{url.get_backend_name()}://... (or {url.get_backend_name()}+{known[0]}://...), or install "
                f"{url.get_driver_name()} yourself")
    return f". Install the Python driver for {url.drivername} (see SQLAlchemy's dialect documentation)"


def mask_password(raw: str) -> str:
    # The URL could not be parsed, so SQLAlchemy cannot hide its password for us.
    return re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", raw)



def sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()



def sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is deferred
    # and starts late, which turns concurrent writers into "database is locked" errors).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so that the journal switch below waits for other writers too.
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL: readers (the dashboard) never block the writer and the writer never blocks them.
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()



def sqlite_on_begin(conn: Any) -> None:
    # Writers take the write lock at BEGIN, where the busy timeout applies; a deferred
    # transaction that reads then writes fails at once with SQLITE_BUSY instead of waiting.
    if conn.get_execution_options().get("genai_audit_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")



def is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text



def db_reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
