"""Tests of audit.store: the SQLAlchemy store of audit reports."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import multiprocessing
import sqlite3
import traceback
import uuid
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from audit import store as store_mod
from audit.errors import InputError
from audit.findings import AuditReport, Finding, GateResult, Interval, ProbeStatus, SubjectIdentity
from audit.store import REPORT_FILES, ReportStore, default_store_url

PPL = "quality.perplexity/perplexity"


def make_report(
    *,
    name: str = "rc",
    subject: str = "smollm2",
    created_at: str = "2025-01-01T00:00:00+00:00",
    value: float = 12.5,
    run_id: str | None = None,
    gate_failed: bool = False,
    probe_failed: bool = False,
) -> AuditReport:
    findings = (
        Finding(
            probe="quality.perplexity",
            metric="perplexity",
            value=value,
            higher_is_better=False,
            ci=Interval(value - 1, value + 1, "bootstrap-percentile-95"),
            n=20,
        ),
        Finding(
            probe="bias.text",
            metric="gap",
            value=0.1,
            higher_is_better=False,
            slice={"group": "female"},
            ci=Interval(0.0, 0.2, "wilson-95"),
        ),
        Finding(probe="quality.fid", metric="fid", value=math.nan, higher_is_better=False, warnings=("no images",)),
    )
    gates = (
        GateResult(
            metric=PPL,
            passed=not gate_failed,
            message="perplexity vs 30",
            status="failed" if gate_failed else "passed",
            value=value,
            bound=30,
        ),
    )
    probes = {
        "quality.perplexity": ProbeStatus(status="ok", n_findings=1),
        "quality.fid": ProbeStatus(status="failed", error="boom") if probe_failed else ProbeStatus(status="ok"),
    }
    kwargs = {} if run_id is None else {"run_id": run_id}
    return AuditReport(
        name=name,
        subject=SubjectIdentity(name=subject, kind="text-generator", source="gguf"),
        findings=findings,
        gates=gates,
        probes=probes,
        created_at=created_at,
        **kwargs,
    )


@pytest.fixture
def store(tmp_path: Path):
    with ReportStore(tmp_path / "audits.db") as s:
        yield s


def write_report_dir(folder: Path, report: AuditReport, names=REPORT_FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "report.json":
            report.save(folder / name)
        else:
            (folder / name).write_text(f"{name} of {report.run_id}\n", encoding="utf-8")
    return folder


# -- the store URL ------------------------------------------------------------------------


def test_default_store_url_env_wins(monkeypatch):
    monkeypatch.setenv("GENAI_AUDIT_STORE", "postgresql://db.example/audits")
    assert default_store_url() == "postgresql://db.example/audits"


def test_default_store_url_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("GENAI_AUDIT_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_store_url() == f"sqlite:///{tmp_path}/data/genai-audit/audits.db"


def test_default_store_url_home(monkeypatch, tmp_path):
    monkeypatch.delenv("GENAI_AUDIT_STORE", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_url() == f"sqlite:///{tmp_path}/.local/share/genai-audit/audits.db"


def test_none_uses_default_and_creates_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("GENAI_AUDIT_STORE", str(tmp_path / "deep" / "er" / "a.db"))
    with ReportStore() as s:
        assert s.count() == 0
        assert s.reports_root == tmp_path / "deep" / "er" / "reports"
    assert (tmp_path / "deep" / "er" / "a.db").is_file()


def test_bare_path_is_sqlite_in_wal_mode(tmp_path):
    with ReportStore(str(tmp_path / "a.db")) as s:
        assert s.url == f"sqlite:///{tmp_path}/a.db"
    con = sqlite3.connect(tmp_path / "a.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    con.close()
    assert {"audits", "findings"} <= tables
    assert "ix_findings_subject_key" in indexes


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nosuchdialect://x", "nosuchdialect"),
        ("postgresql://user:secret@host:notaport/db", "cannot parse"),
        ("postgresql+nosuchdriver://user:secret@localhost/db", "nosuchdriver"),
        ("   ", "empty"),
    ],
)
def test_bad_url_is_input_error(url, expected):
    with pytest.raises(InputError) as info:
        ReportStore(url)
    assert expected in str(info.value)
    assert "secret" not in str(info.value)
    assert info.value.exit_code == 2


def test_unopenable_database_is_input_error(tmp_path):
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(InputError, match=r"cannot open the audit store sqlite:///.*folder\.db: unable to open"):
        ReportStore(tmp_path / "folder.db")
    (tmp_path / "garbage.db").write_bytes(b"not sqlite" * 500)
    with pytest.raises(InputError, match="garbage.db: file is not a database"):
        ReportStore(tmp_path / "garbage.db")


# -- ingest and read back -----------------------------------------------------------------


def test_ingest_get_round_trip_exact(store):
    report = make_report()
    row = store.ingest(report)
    assert row.run_id == report.run_id
    assert (row.name, row.subject_name, row.subject_kind) == ("rc", "smollm2", "text-generator")
    assert row.created_at == dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    assert row.ingested_at.tzinfo is not None
    assert (row.status, row.n_findings, row.n_gates_failed, row.n_probes_failed) == ("passed", 3, 0, 0)
    assert row.schema_version == report.schema_version
    assert row.report_dir is None
    back = store.get(report.run_id)
    assert back.to_json() == report.to_json()
    assert math.isnan(back.finding("quality.fid/fid").value)
    got = store.findings(report.run_id)
    assert got[:2] == list(report.findings[:2])
    assert (got[2].key, got[2].warnings) == ("quality.fid/fid", ("no images",)) and math.isnan(got[2].value)
    assert store.stored(report.run_id) == row


def test_sha256_is_of_canonical_json(store):
    report = make_report()
    row = store.ingest(report)
    canonical = json.dumps(report.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert row.report_sha256 == hashlib.sha256(canonical.encode()).hexdigest()


def test_ingest_is_idempotent(store):
    report = make_report()
    first = store.ingest(report)
    again = store.ingest(AuditReport.from_json(report.to_json()))
    assert again == first
    assert store.count() == 1
    assert len(store.metric_history("smollm2", PPL)) == 1


def test_same_run_id_other_content_keeps_stored_and_warns(store, caplog):
    report = make_report(value=12.5, run_id="run-1")
    store.ingest(report)
    with caplog.at_level(logging.WARNING, logger="audit.store"):
        row = store.ingest(make_report(value=99.0, run_id="run-1"))
    assert "already stored with different content" in caplog.text
    assert store.get("run-1").finding(PPL).value == 12.5
    assert row.report_sha256 == store.stored("run-1").report_sha256
    assert store.count() == 1


def test_status_and_counts(store):
    store.ingest(make_report(run_id="ok"))
    store.ingest(make_report(run_id="gate", gate_failed=True))
    store.ingest(make_report(run_id="crash", gate_failed=True, probe_failed=True))
    rows = {r.run_id: r for r in store.list_audits()}
    assert rows["ok"].status == "passed"
    assert (rows["gate"].status, rows["gate"].n_gates_failed) == ("failed", 1)
    assert (rows["crash"].status, rows["crash"].n_probes_failed) == ("crashed", 1)
    assert [r.run_id for r in store.list_audits(status="failed")] == ["gate"]


def test_list_newest_first_filters_and_paging(store):
    # +02:00 at 01:30 is 23:30 UTC the day before: it must sort as that, not as text.
    store.ingest(make_report(run_id="a", created_at="2025-01-02T00:00:00+00:00"))
    store.ingest(make_report(run_id="b", created_at="2025-01-02T01:30:00+02:00", name="other"))
    store.ingest(make_report(run_id="c", created_at="2025-01-03T00:00:00Z"))
    store.ingest(make_report(run_id="d", created_at="2025-01-04T00:00:00", subject="other-model"))
    assert [r.run_id for r in store.list_audits()] == ["d", "c", "a", "b"]
    assert [r.run_id for r in store.list_audits(subject="smollm2")] == ["c", "a", "b"]
    assert [r.run_id for r in store.list_audits(name="other")] == ["b"]
    assert [r.run_id for r in store.list_audits(limit=2, offset=1)] == ["c", "a"]
    assert store.list_audits(subject="nobody") == []
    assert store.count() == 4


@pytest.mark.parametrize("kwargs", [{"status": "ok"}, {"limit": -1}, {"offset": -3}])
def test_list_rejects_bad_arguments(store, kwargs):
    with pytest.raises(InputError):
        store.list_audits(**kwargs)


def test_get_missing_names_run_id(store):
    with pytest.raises(InputError, match="no audit with run id 'nope'"):
        store.get("nope")
    with pytest.raises(InputError, match="'nope'"):
        store.findings("nope")


def test_bad_created_at_is_input_error(store):
    with pytest.raises(InputError, match="created_at 'yesterday'"):
        store.ingest(make_report(created_at="yesterday"))
    assert store.count() == 0


def test_metric_history(store):
    store.ingest(make_report(run_id="r2", created_at="2025-02-01T00:00:00+00:00", value=11.0))
    store.ingest(make_report(run_id="r1", created_at="2025-01-01T00:00:00+00:00", value=12.0))
    store.ingest(make_report(run_id="r3", created_at="2025-03-01T00:00:00+00:00", value=math.inf))
    store.ingest(make_report(run_id="x", subject="other", value=1.0))
    history = store.metric_history("smollm2", PPL)
    assert [p.run_id for p in history] == ["r1", "r2", "r3"]
    first = history[0]
    assert first == (dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), 12.0, 11.0, 13.0, "r1")
    # Non-finite numbers are NULL in the table; the report keeps them exactly.
    assert history[2].value is None and history[2].ci_low is None and history[2].ci_high is None
    assert math.isinf(store.get("r3").finding(PPL).value)
    sliced = store.metric_history("smollm2", "bias.text/gap[group=female]")
    assert [(p.value, p.ci_low, p.ci_high) for p in sliced] == [(0.1, 0.0, 0.2)] * 3
    assert [p.value for p in store.metric_history("smollm2", "quality.fid/fid")] == [None, None, None]
    assert store.metric_history("smollm2", "no/such") == []


def test_findings_rows(tmp_path, store):
    store.ingest(make_report(run_id="r"))
    con = sqlite3.connect(tmp_path / "audits.db")
    rows = con.execute(
        "SELECT probe, metric, slice_json, key, value, unit, higher_is_better, ci_method, n, subject_name "
        "FROM findings ORDER BY id"
    ).fetchall()
    con.close()
    assert rows == [
        ("quality.perplexity", "perplexity", "{}", PPL, 12.5, "", 0, "bootstrap-percentile-95", 20, "smollm2"),
        ("bias.text", "gap", '{"group": "female"}', "bias.text/gap[group=female]", 0.1, "", 0, "wilson-95", None, "smollm2"),
        ("quality.fid", "fid", "{}", "quality.fid/fid", None, "", 0, None, None, "smollm2"),
    ]


# -- report files -------------------------------------------------------------------------


def test_report_dir_is_copied_into_the_store(tmp_path, store):
    report = make_report(run_id="run-42")
    src = write_report_dir(tmp_path / "out", report, names=("report.json", "report.html", "junit.xml"))
    (src / "secret.txt").write_text("not a report file")
    row = store.ingest(report, report_dir=src)
    dest = tmp_path / "reports" / "run-42"
    assert row.report_dir == dest
    assert sorted(p.name for p in dest.iterdir()) == ["junit.xml", "report.html", "report.json"]
    assert AuditReport.load(dest / "report.json").to_json() == report.to_json()
    # Nothing half-copied or temporary is left beside it.
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["run-42"]
    assert store.report_file("run-42", "report.html") == dest / "report.html"
    assert store.report_file("run-42", "report.md") is None
    assert store.report_file("run-42", "secret.txt") is None
    assert store.report_file("nope", "report.html") is None
    # Re-ingesting keeps the copy.
    assert store.ingest(report, report_dir=src) == row


def test_store_folder_can_be_moved(tmp_path):
    report = make_report(run_id="moved")
    with ReportStore(tmp_path / "a" / "audits.db") as s:
        s.ingest(report, report_dir=write_report_dir(tmp_path / "out", report))
    con = sqlite3.connect(tmp_path / "a" / "audits.db")
    assert con.execute("SELECT report_dir FROM audits").fetchone() == ("reports/moved",)
    con.close()
    (tmp_path / "a").rename(tmp_path / "b")
    with ReportStore(tmp_path / "b" / "audits.db") as s:
        assert s.stored("moved").report_dir == tmp_path / "b" / "reports" / "moved"
        assert s.report_file("moved", "report.md") == tmp_path / "b" / "reports" / "moved" / "report.md"


def test_report_dir_added_to_a_row_stored_without_one(tmp_path, store):
    report = make_report(run_id="late")
    assert store.ingest(report).report_dir is None
    row = store.ingest(report, report_dir=write_report_dir(tmp_path / "out", report))
    assert row.report_dir == tmp_path / "reports" / "late"
    assert store.stored("late").report_dir == row.report_dir
    assert store.count() == 1


def test_report_dir_of_another_run_is_refused(tmp_path, store):
    src = write_report_dir(tmp_path / "out", make_report(run_id="other"))
    with pytest.raises(InputError, match="is run other, not the run being ingested"):
        store.ingest(make_report(run_id="mine"), report_dir=src)
    assert store.count() == 0


def test_report_dir_without_files_or_missing_is_refused(tmp_path, store):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds none of"):
        store.ingest(make_report(), report_dir=tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        store.ingest(make_report(), report_dir=tmp_path / "missing")


def test_run_id_that_would_escape_the_reports_folder(tmp_path, store):
    report = make_report(run_id="../../etc")
    src = write_report_dir(tmp_path / "out", report, names=("report.html",))
    with pytest.raises(InputError, match="cannot name a report folder"):
        store.ingest(report, report_dir=src)
    assert not (tmp_path / "etc").exists()


def test_in_memory_store_records_the_given_folder(tmp_path):
    report = make_report()
    src = write_report_dir(tmp_path / "out", report)
    with ReportStore("sqlite://") as s:
        assert s.reports_root is None
        assert s.ingest(report, report_dir=src).report_dir == src.resolve()
        assert s.report_file(report.run_id, "report.json") is None


# -- concurrency --------------------------------------------------------------------------


def _ingest_worker(url: str, reports_json: list[str], barrier, results) -> None:
    """Runs in a spawned process: wait for the sibling, then ingest as fast as possible."""
    try:
        reports = [AuditReport.from_json(t) for t in reports_json]
        barrier.wait(timeout=30)
        with ReportStore(url) as s:
            rows = [s.ingest(r) for r in reports]
        results.put(("ok", [r.run_id for r in rows]))
    except BaseException:  # noqa: BLE001 - the parent test reports it
        results.put(("error", traceback.format_exc()))


def _run_concurrently(url: str, batches: list[list[str]]) -> list[list[str]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(batches))
    results = ctx.Queue()
    procs = [ctx.Process(target=_ingest_worker, args=(url, batch, barrier, results)) for batch in batches]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [detail for status, detail in out if status != "ok"]
    assert not errors, "\n".join(errors)
    return [detail for _, detail in out]


def test_two_processes_ingest_at_once(tmp_path):
    """2 processes x 15 reports into one fresh SQLite file, at once.

    The file is new, so the processes also race to create the tables and switch to WAL. Both
    start with the same report, so they also race to insert one run id (one process's insert
    is refused by the unique run_id and counts as "already there"). One spawn pair serves both
    races: starting processes is most of this test's time.
    """
    url = f"sqlite:///{tmp_path}/shared.db"
    same = make_report(run_id="same").to_json()
    batches = [
        [same] + [make_report(name=f"p{p}", run_id=f"p{p}-{i:02d}").to_json() for i in range(15)] for p in range(2)
    ]
    ran = _run_concurrently(url, batches)
    assert sorted(sum(ran, [])) == sorted(["same", "same"] + [f"p{p}-{i:02d}" for p in range(2) for i in range(15)])
    with ReportStore(url) as s:
        assert s.count() == 31
        assert len(s.list_audits(name="p0")) == len(s.list_audits(name="p1")) == 15
        assert len(s.list_audits(name="rc")) == 1
        # 30 + 1 audits, each with its one perplexity finding: no duplicate finding rows either.
        assert len(s.metric_history("smollm2", PPL)) == 31


def test_unique_conflict_after_lookup_counts_as_already_there(tmp_path, monkeypatch):
    """The race the look-up cannot see: another writer lands between look-up and insert."""
    report = make_report(run_id="raced")
    with ReportStore(tmp_path / "a.db") as first:
        original = first.ingest(report)
    with ReportStore(tmp_path / "a.db") as second:
        real_lookup = second._lookup
        calls = []

        def stale_lookup(run_id):
            calls.append(run_id)
            return None if len(calls) == 1 else real_lookup(run_id)

        monkeypatch.setattr(second, "_lookup", stale_lookup)
        assert second.ingest(report) == original
        assert len(calls) == 2
        assert second.count() == 1


def test_locked_database_is_retried_then_reported(store, monkeypatch):
    monkeypatch.setattr(store_mod.time, "sleep", lambda s: None)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return "done"

    assert store._retry(flaky, what="test") == "done"
    assert len(attempts) == 3

    def always_locked():
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    with pytest.raises(InputError, match="cannot test in the audit store .*database is locked"):
        store._retry(always_locked, what="test")


def test_run_ids_are_unique_across_reports(store):
    ids = {store.ingest(make_report()).run_id for _ in range(3)}
    assert len(ids) == 3 and all(uuid.UUID(i) for i in ids)
