"""The demo, end to end on the real SmolLM2-135M from the offline bundle (slow: ~1 min)."""

from __future__ import annotations

import pytest

from audit.cli import main
from audit.findings import AuditReport
from audit.store import ReportStore


@pytest.mark.slow
def test_demo_audits_smollm2_end_to_end(smollm2_conversion, tmp_path, monkeypatch, capsys):
    cache = smollm2_conversion[0]
    monkeypatch.setenv("GENAI_AUDIT_CACHE", str(cache))  # reuse the session's conversion
    out, store = tmp_path / "demo", tmp_path / "store.db"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(out), "--store", str(store)])
    printed = capsys.readouterr().out
    assert exc.value.code == 0, printed
    text_out = out / "smollm2-135m-instruct-demo"
    for name in ("audit.yaml", "report.json", "report.html", "report.md", "junit.xml"):
        assert (text_out / name).is_file(), name
    report = AuditReport.load(text_out / "report.json")
    ppl = report.finding("quality.perplexity/perplexity")
    bpb = report.finding("quality.perplexity/bits_per_byte")
    # A 135M instruct model on plain English prose: perplexity in the tens, about 1 bit/byte.
    assert 5 < ppl.value < 100 and ppl.ci.low < ppl.value < ppl.ci.high and ppl.n == 24
    assert 0.6 < bpb.value < 2.0
    assert {f.slice.get("genre") for f in report.findings if f.slice and f.probe == "quality.perplexity"} == {
        "news", "fiction", "technical", "encyclopedic", "conversational", "legal-admin"}
    assert report.subject.files[0].path.endswith(".gguf") and len(report.subject.files[0].sha256) == 64
    perplexity_gates = [g.status for g in report.gates if g.metric.startswith("quality.perplexity/")]
    assert perplexity_gates == ["passed", "passed", "skipped"]
    assert report.exit_code == 0, [g.message for g in report.gates if g.status == "failed"]
    assert "PASSED" in printed and "report.html" in printed
    with ReportStore(f"sqlite:///{store}") as st:
        assert report.run_id in [a.run_id for a in st.list_audits()]
