"""The runner: isolation of failing probes, skips, resume, atomic reports, the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.probes_for_tests as tp
from audit.errors import InputError
from audit.findings import AuditReport
from audit.runner import run_audit
from audit.spec import spec_from_dict
from tests.fakes import tiny_text_generator


def fake_loader(spec, **kw):
    return tiny_text_generator()


def make_spec(tmp_path: Path, probes, gates=(), data=None):
    return spec_from_dict({
        "name": "runner-test",
        "subject": {"kind": "text-generator", "source": "python", "path": "tests.fakes:make_text_generator"},
        "data": data or {},
        "probes": [{"id": p} if isinstance(p, str) else p for p in probes],
        "gates": list(gates),
        "settings": {"device": "cpu"},
    }, base_dir=tmp_path)


def run(spec, out, **kw):
    kw.setdefault("subject_loader", fake_loader)
    return run_audit(spec, out_dir=out, cache_dir=out.parent / "cache", **kw)


def test_a_crashing_probe_is_recorded_and_the_others_finish(tmp_path):
    spec = make_spec(tmp_path, ["test.crash", "test.constant", "test.image_only"],
                     gates=[{"metric": "test.constant/score", "min": 5}])
    res = run(spec, tmp_path / "out")
    r = res.report
    assert r.probes["test.crash"].status == "failed"
    assert "RuntimeError: boom" in r.probes["test.crash"].error
    assert "Traceback" in r.probes["test.crash"].traceback
    assert r.probes["test.constant"].status == "ok" and r.finding("test.constant/score").value == 10.0
    assert r.probes["test.image_only"].status == "skipped"
    assert "image-generator" in r.probes["test.image_only"].reason
    assert r.status == "crashed" and r.exit_code == 3
    assert [g.status for g in r.gates] == ["passed"]
    # All four reports written, the partial state removed, the JSON loads back identically.
    for name in ("report.json", "report.html", "report.md", "junit.xml"):
        assert (tmp_path / "out" / name).is_file()
    assert not (tmp_path / "out" / ".partial").exists()
    assert AuditReport.load(tmp_path / "out" / "report.json").to_json() == r.to_json()


def test_exit_codes_follow_the_contract(tmp_path):
    ok = run(make_spec(tmp_path, ["test.constant"], [{"metric": "test.constant/score", "min": 5}]), tmp_path / "a")
    assert ok.report.exit_code == 0
    gate = run(make_spec(tmp_path, ["test.constant"], [{"metric": "test.constant/score", "min": 50}]), tmp_path / "b")
    assert gate.report.exit_code == 1 and gate.report.status == "failed"
    bad = run(make_spec(tmp_path, ["test.bad_input", "test.constant"]), tmp_path / "c")
    assert bad.report.exit_code == 2
    assert bad.report.probes["test.bad_input"].error_kind == "input"


def test_missing_data_input_fails_before_loading(tmp_path):
    calls = []
    spec = make_spec(tmp_path, ["test.constant"], data={"texts": "nope.jsonl"})
    with pytest.raises(InputError, match="data input 'texts' not found"):
        run(spec, tmp_path / "out", subject_loader=lambda *a, **k: calls.append(1))
    assert calls == []


def test_resume_reuses_finished_probes(tmp_path):
    tp.CALLS.clear()
    spec = make_spec(tmp_path, ["test.constant", "test.interrupt"])
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(spec, out)
    assert tp.CALLS["test.constant"] == 1
    partial = json.loads((out / ".partial" / "run.json").read_text())
    assert (out / ".partial" / "probes" / "test.constant.json").is_file()
    res = run(spec, out, resume=True)
    assert tp.CALLS["test.constant"] == 1  # reused, not rerun
    assert res.report.run_id == partial["run_id"]
    assert res.report.probes["test.interrupt"].status == "ok"
    assert res.report.finding("test.constant/score").value == 10.0


def test_resume_refuses_a_different_spec(tmp_path):
    tp.CALLS["interrupt-armed"] = 1
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(make_spec(tmp_path, ["test.constant", "test.interrupt"]), out)
    other = make_spec(tmp_path, [{"id": "test.constant", "params": {"value": 3.0}}, "test.interrupt"])
    with pytest.raises(InputError, match="different spec"):
        run(other, out, resume=True)


def test_without_resume_a_partial_run_is_discarded(tmp_path):
    tp.CALLS.clear()
    out = tmp_path / "out"
    spec = make_spec(tmp_path, ["test.constant", "test.interrupt"])
    with pytest.raises(KeyboardInterrupt):
        run(spec, out)
    run(spec, out)
    assert tp.CALLS["test.constant"] == 2


def test_report_is_ingested_into_the_store(tmp_path):
    from audit.store import ReportStore

    url = f"sqlite:///{tmp_path / 's.db'}"
    res = run(make_spec(tmp_path, ["test.constant"]), tmp_path / "out", store_url=url)
    assert res.stored_in == url and res.store_error is None
    with ReportStore(url) as st:
        assert [a.run_id for a in st.list_audits()] == [res.report.run_id]


def test_a_broken_store_does_not_lose_the_report(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = run(make_spec(tmp_path, ["test.constant"]), tmp_path / "out", store_url=f"sqlite:///{blocker}/x/s.db")
    assert res.store_error is not None
    assert (tmp_path / "out" / "report.json").is_file()


def test_energy_and_timings_are_recorded(tmp_path):
    r = run(make_spec(tmp_path, ["test.constant"]), tmp_path / "out").report
    st = r.probes["test.constant"]
    assert st.wall_s is not None and st.wall_s >= 0
    assert st.energy["kind"] in ("measured", "unavailable", "estimate")
    if st.energy["kind"] == "unavailable":
        assert st.energy["joules"] is None  # never a silent zero
    assert r.timings["total_s"] > 0
    assert r.environment["packages"]["torch"]


def test_reports_are_readable_by_others(tmp_path):
    # mkstemp makes 0600 files; reports must get the umask's mode like any written file.
    import os
    import stat

    old = os.umask(0o022)
    try:
        run(make_spec(tmp_path, ["test.constant"]), tmp_path / "out", use_store=False)
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out" / "report.json").stat().st_mode)
    assert mode == 0o644


def test_resume_refuses_changed_data(tmp_path):
    tp.CALLS["interrupt-armed"] = 1
    data = tmp_path / "texts.txt"
    data.write_text("one\n\ntwo\n")
    spec = make_spec(tmp_path, ["test.constant", "test.interrupt"], data={"texts": "texts.txt"})
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(spec, out)
    data.write_text("one\n\ntwo changed\n")
    with pytest.raises(InputError, match="data input.*texts changed"):
        run(spec, out, resume=True)


def test_resume_refuses_changed_weights(tmp_path):
    import dataclasses

    from audit.findings import FileHash

    tp.CALLS["interrupt-armed"] = 1
    spec = make_spec(tmp_path, ["test.constant", "test.interrupt"])
    out = tmp_path / "out"

    def loader_with(digest):
        def load(s, **kw):
            lm = tiny_text_generator()
            lm.identity = dataclasses.replace(lm.identity, files=(FileHash("w.safetensors", digest, 1),))
            return lm
        return load

    with pytest.raises(KeyboardInterrupt):
        run(spec, out, subject_loader=loader_with("a" * 64))
    with pytest.raises(InputError, match="weight files changed"):
        run(spec, out, resume=True, subject_loader=loader_with("b" * 64))


def test_audit_energy_is_labelled_partial_when_part_was_not_measured():
    from audit.findings import ProbeStatus
    from audit.runner import _audit_energy

    statuses = {
        "a": ProbeStatus("ok", energy={"joules": 5.0, "kind": "measured"}),
        "b": ProbeStatus("ok", energy={"joules": None, "kind": "unavailable"}),
        "c": ProbeStatus("skipped", reason="n/a"),
    }
    e = _audit_energy(statuses)
    assert e["joules"] == 5.0 and e["kind"] == "partial" and e["unmeasured"] == ["b"]
    e = _audit_energy({"b": statuses["b"]})
    assert e["joules"] is None and e["kind"] == "unavailable"
    e = _audit_energy({"a": statuses["a"]})
    assert e["kind"] == "measured"


def test_invalid_input_status_and_gate_message(tmp_path):
    spec = make_spec(tmp_path, ["test.bad_input"], gates=[{"metric": "test.bad_input/score", "min": 1}])
    r = run(spec, tmp_path / "out").report
    assert r.status == "invalid" and r.exit_code == 2
    (g,) = r.gates
    assert g.status == "failed" and "probe test.bad_input failed: corpus.txt: no documents" in g.message


def test_probe_input_checks_run_before_the_model_loads(tmp_path):
    from dataclasses import dataclass

    from audit.probe import registry

    @dataclass(frozen=True)
    class Checked:
        """Checks its inputs first (test probe)."""

        applies_to = ("text-generator",)

        def check_inputs(self, ctx):
            raise InputError("texts: empty corpus")

        def run(self, subject, ctx):
            return []

    registry.register("test.checked", Checked, replace=True)
    loaded = []
    with pytest.raises(InputError, match="empty corpus"):
        run(make_spec(tmp_path, ["test.checked"]), tmp_path / "out",
            subject_loader=lambda *a, **k: loaded.append(1))
    assert loaded == []
