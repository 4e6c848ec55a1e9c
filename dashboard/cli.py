"""``genai-audit dashboard``: start the Streamlit app over an audit store.

The command checks the store first (a bad URL is a one-line error and exit code 2, not a
broken page), then runs ``streamlit run dashboard/app.py`` in a subprocess, headless, with
usage statistics off and the store passed through ``GENAI_AUDIT_STORE``. It listens on
127.0.0.1 unless ``--host`` says otherwise.

This module is imported by ``genai-audit`` at start-up, so it imports nothing heavy (no
Streamlit, no pandas) until the command runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

__all__ = ["APP", "dashboard", "streamlit_command"]

APP = Path(__file__).resolve().parent / "app.py"
"""The Streamlit script."""

_STOP_TIMEOUT_S = 10.0


def streamlit_command(*, host: str = "127.0.0.1", port: int = 8501, app: Path = APP) -> list[str]:
    """The command line that serves the dashboard (run with the store in ``GENAI_AUDIT_STORE``).

    Example:
        >>> cmd = streamlit_command(port=8600)
        >>> cmd[1:4], cmd[cmd.index("--server.address") + 1]
        (['-m', 'streamlit', 'run'], '127.0.0.1')
    """
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


@click.command()
@click.option(
    "--store", "store_url", metavar="URL", envvar="GENAI_AUDIT_STORE",
    help="SQLAlchemy URL or SQLite file of the audit store [env GENAI_AUDIT_STORE; "
         "default: ~/.local/share/genai-audit/audits.db].",
)  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="Port to listen on.")
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="Address to listen on; the default serves this machine only (0.0.0.0 serves every network).",
)  # fmt: skip
def dashboard(store_url: str | None, port: int, host: str) -> None:
    """Open the dashboard of stored audits (Streamlit, on http://HOST:PORT)."""
    from audit.store import ReportStore, default_store_url

    # Open (and create, for a new SQLite file) the store here, so that a bad URL is reported
    # as one line with exit code 2 instead of as an error page.
    with ReportStore(store_url) as store:
        url = store.url
        count = store.count()
    resolved = (store_url or "").strip() or default_store_url()
    if "://" not in resolved:  # a bare path: the server must find it whatever its folder
        resolved = str(Path(resolved).expanduser().resolve())
    env = dict(os.environ, GENAI_AUDIT_STORE=resolved)
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"genai-audit dashboard: {count} audit(s) in {url}", err=True)
    click.echo(f"Serving on http://{shown}:{port} (Ctrl+C stops it)", err=True)
    proc = subprocess.Popen(streamlit_command(host=host, port=port), env=env)

    def forward(signum: int, frame: object) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Streamlit got the Ctrl+C too (same process group); let it finish
        code = _stop(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            _stop(proc)
    # Streamlit exits with -SIGTERM / 1 when stopped; a stop asked for is not an error.
    sys.exit(0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
