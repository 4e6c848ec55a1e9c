"""What the ``genai-audit`` commands share: the console they print to and the ``--store`` option."""

from __future__ import annotations

import sys

import click

__all__ = ["console", "store_option"]


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Logs (CI, pipes) get 120 columns rather than rich's 80, so tables stay readable.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 120)


def store_option(f):
    return click.option(
        "--store", "store_url", metavar="URL", envvar="GENAI_AUDIT_STORE",
        help="SQLAlchemy URL or SQLite file of the audit store [env GENAI_AUDIT_STORE; "
             "default: ~/.local/share/genai-audit/audits.db].",
    )(f)
