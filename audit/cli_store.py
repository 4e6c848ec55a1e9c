"""``genai-audit store``: the store of audit reports, from the command line."""

from __future__ import annotations

import json
from typing import Any

import click

from audit.cli_common import console, store_option

__all__ = ["store"]


@click.group()
def store() -> None:
    """The store of audit reports (SQLite by default, any SQLAlchemy URL)."""


@store.command("list")
@store_option
@click.option("--subject", default=None, help="Only audits of this model.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def store_list(store_url: str | None, subject: str | None, limit: int, as_json: bool) -> None:
    """List the stored audits, newest first."""
    from audit.store import ReportStore, default_store_url

    url = store_url or default_store_url()
    with ReportStore(url) as st:
        rows = st.list_audits(subject=subject, limit=limit)
    if as_json:
        click.echo(json.dumps([_row_dict(r) for r in rows], indent=2, default=str))
        return
    from rich.table import Table

    con = console()
    if not rows:
        con.print(f"No audits in {url} yet. Run one with: genai-audit demo")
        return
    t = Table(title=f"Audits in {url}")
    for col in ("created", "name", "subject", "status", "findings", "gates failed", "run id"):
        t.add_column(col)
    for r in rows:
        d = _row_dict(r)
        t.add_row(str(d.get("created_at", "")), str(d.get("name", "")), str(d.get("subject_name", "")),
                  str(d.get("status", "")), str(d.get("n_findings", "")), str(d.get("n_gates_failed", "")),
                  str(d.get("run_id", ""))[:12])
    con.print(t)


def _row_dict(row: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(row):
        return dataclasses.asdict(row)
    return dict(row)
