"""A throw-away PostgreSQL server for tests: Debian's binaries, ``initdb`` in a temporary folder,
listening on 127.0.0.1 only (its unix socket in that folder too), stopped and removed at the end.

PostgreSQL refuses to run as root, so under root (CI containers) the server runs as the
``postgres`` OS user that Debian's package creates, through ``runuser``; the temporary folder
is made outside pytest's (root-only) ``tmp_path`` and handed to that user. When the binaries
are missing, :func:`find_binaries` says why and the tests skip with that reason.

Example:
    >>> server = PostgresServer.start()          # doctest: +SKIP
    >>> server.url                               # doctest: +SKIP
    'postgresql://audit@127.0.0.1:54321/audits'
    >>> server.stop()                            # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "find_binaries"]

_USER = "audit"
_DB = "audits"


def find_binaries() -> tuple[Path | None, str]:
    """The folder of ``initdb``/``pg_ctl`` (newest Debian version first, then ``$PATH``), or None
    and the reason it was not found."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(which)
    for initdb in candidates:
        folder = Path(initdb).parent
        if (folder / "pg_ctl").is_file():
            return folder, ""
    return None, ("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on "
                  "PATH); install them with `apt-get install postgresql` (.ci/run does)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server; :meth:`stop` ends it and removes its folder."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{_DB}"

    @classmethod
    def start(cls, bin_dir: Path | None = None) -> PostgresServer:
        """initdb, start on a free port of 127.0.0.1, create the database; raise RuntimeError
        with the server's log when any step fails."""
        if bin_dir is None:
            bin_dir, why = find_binaries()
            if bin_dir is None:
                raise RuntimeError(why)
        run_as = None
        root = Path(tempfile.mkdtemp(prefix="genai-audit-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise RuntimeError("running as root and there is no 'postgres' OS user to run the server as") from None
            run_as = "postgres"
            os.chown(root, owner.pw_uid, owner.pw_gid)
        server = cls(bin_dir, root, _free_port(), run_as)
        try:
            server._initdb()
            server._pg_ctl("start", "-w", "-t", "60", "-l", str(root / "log"),
                           "-o", f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} "
                                 "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            server._create_database()
        except BaseException:
            server.stop()
            raise
        return server

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def _run(self, *args: str) -> None:
        r = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120, cwd=self.root)
        if r.returncode != 0:
            log = self.root / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()[-2000:]}\n{tail}")

    def _initdb(self) -> None:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.root / "data"), "-U", _USER, "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-locale")

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), args[0], "-D", str(self.root / "data"), *args[1:])

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=_USER, dbname="postgres",
                                     autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"CREATE DATABASE {_DB}")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder; safe to call twice."""
        if (self.root / "data" / "postmaster.pid").exists():
            try:
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
        shutil.rmtree(self.root, ignore_errors=True)
