"""The team store on a real PostgreSQL server (Debian's binaries, initdb in a temporary folder,
127.0.0.1 only): ingest, list, history, two concurrent writers, the dashboard's data layer (dashboard/data.py, history.py) and
the CLI reading from it. Skipped, with the reason, when the server binaries are missing."""

from __future__ import annotations

import datetime
import sys

import pytest

from audit.errors import InputError
from audit.store import ReportStore
from tests.postgres_server import PostgresServer, find_binaries
from tests.report_factory import make_report

PPL = "quality.perplexity/perplexity"

_BIN, _WHY = find_binaries()


@pytest.fixture(scope="module")
def pg_url():
    if _BIN is None:
        pytest.skip(_WHY)
    pytest.importorskip("psycopg", reason="the [postgres] extra (psycopg) is not installed")
    server = PostgresServer.start(_BIN)
    try:
        yield server.url
    finally:
        server.stop()


def test_missing_driver_names_the_extra(monkeypatch):
    # No server needed: the driver is imported before any connection is tried.
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'genai-audit\[postgres\]'"):
        ReportStore("postgresql://u@127.0.0.1:1/db")


def test_plain_postgresql_url_uses_the_driver_of_the_extra():
    from audit.store_db import parse_url as _parse_url

    assert _parse_url("postgresql://u:secret@h/db").drivername == "postgresql+psycopg"
    assert _parse_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"  # as given


def test_ingest_list_get_and_history(pg_url):
    reports = [make_report(name="pg-rc", run_id=f"pg-{i}", created_at=f"2026-01-0{i + 1}T00:00:00Z")
               for i in range(3)]
    with ReportStore(pg_url) as s:
        for r in reports:
            s.ingest(r)
        assert s.ingest(reports[0]).run_id == "pg-0"  # idempotent
        rows = s.list_audits(name="pg-rc")
        assert [r.run_id for r in rows] == ["pg-2", "pg-1", "pg-0"]  # newest first
        assert rows[0].status == reports[2].status and rows[0].n_findings == len(reports[2].findings)
        assert s.get("pg-1").to_json() == reports[1].to_json()  # the exact report back (NaN != NaN: compare JSON)
        history = s.metric_history(reports[0].subject.name, PPL)
        assert [p.run_id for p in history if p.run_id.startswith("pg-")] == ["pg-0", "pg-1", "pg-2"]
        assert history[0].value == reports[0].finding(PPL).value


def test_two_processes_write_at_once(pg_url):
    from tests.test_store import _run_concurrently

    same = make_report(name="pg-same", run_id="pg-same").to_json()
    batches = [[same] + [make_report(name=f"pg-w{p}", run_id=f"pg-w{p}-{i:02d}").to_json() for i in range(10)]
               for p in range(2)]
    ran = _run_concurrently(pg_url, batches)
    assert sorted(sum(ran, [])) == sorted(["pg-same"] * 2 + [f"pg-w{p}-{i:02d}" for p in range(2) for i in range(10)])
    with ReportStore(pg_url) as s:
        assert len(s.list_audits(name="pg-w0")) == len(s.list_audits(name="pg-w1")) == 10
        assert len(s.list_audits(name="pg-same")) == 1


def test_dashboard_data_layer_reads_the_server(pg_url):
    from dashboard import data, history

    with ReportStore(pg_url) as s:
        s.ingest(make_report(name="pg-dash", run_id="pg-dash-1", created_at="2026-02-01T00:00:00Z"))
        s.ingest(make_report(name="pg-dash", run_id="pg-dash-2", created_at="2026-02-02T00:00:00Z"))
        rows = data.all_audits(s)
        mine = [r for r in data.filter_audits(rows, since=datetime.date(2026, 2, 1),
                                              until=datetime.date(2026, 2, 2))
                if r.name == "pg-dash"]
        assert [r.run_id for r in mine] == ["pg-dash-2", "pg-dash-1"]
        model = mine[0].subject_name
        assert model in data.models_of(rows)
        assert sum(data.status_counts(mine).values()) == 2
        assert PPL in history.metric_keys(s, mine, model)
        trend = history.trend_frame(s.metric_history(model, PPL))
        assert {"pg-dash-1", "pg-dash-2"} <= set(trend["run id"])
        changes = history.compare_reports(s.get("pg-dash-1"), s.get("pg-dash-2"))
        assert changes and {c.direction for c in changes} <= {"same", "n/a"}  # n/a: the NaN finding


def test_cli_lists_the_server(pg_url, capsys):
    import json

    from audit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["store", "list", "--store", pg_url, "--json", "--limit", "500"])
    assert exc.value.code == 0
    listed = {r["run_id"] for r in json.loads(capsys.readouterr().out)}
    assert {"pg-0", "pg-1", "pg-2"} <= listed
