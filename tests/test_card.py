"""genai-audit card: a report as a Hugging Face model card, parsed back with huggingface_hub
offline (ModelCard, EvalResult); content, escaping, and what was not measured."""

from __future__ import annotations

import math

import pytest

from audit.cli import main
from audit.render.card import model_index, render_card
from audit.spec import spec_fingerprint
from tests.report_factory import CRASHED_PROBE, HOSTILE, NAN_FINDING, SKIPPED_PROBE, make_report

huggingface_hub = pytest.importorskip("huggingface_hub")


def test_model_index_parses_with_huggingface_hub():
    from huggingface_hub import ModelCard

    report = make_report()
    card = ModelCard(render_card(report))
    results = card.data.eval_results
    finite = [f for f in report.findings if math.isfinite(f.value)]
    assert len(results) == len(finite)
    by_name = {r.metric_name: r for r in results}
    for f in finite:
        r = by_name[f"{f.probe}/{f.key.split('/', 1)[1]}"]
        assert r.metric_type == f.metric and r.metric_value == pytest.approx(f.value)
        assert r.task_type == "text-generation" and r.task_name == f.probe
        assert r.verified is False and r.dataset_name
        if f.ci is not None:
            assert r.metric_args["ci_low"] == pytest.approx(f.ci.low)
            assert r.metric_args["ci_high"] == pytest.approx(f.ci.high)
            assert r.metric_args["ci_method"] == f.ci.method
        assert r.metric_args.get("n") == f.n
        if f.slice:
            assert r.metric_args["slice"] == dict(f.slice)
    assert card.data.model_name == report.subject.name
    # The round trip: the card's own serialisation parses to the same results.
    again = ModelCard(str(card))
    assert [(r.metric_name, r.metric_value) for r in again.data.eval_results] == \
        [(r.metric_name, r.metric_value) for r in results]


def test_content_tables_gates_energy_and_reproducibility():
    report = make_report()
    text = render_card(report)
    body = text.split("\n---\n", 1)[1]
    assert f"# Evaluation: {report.name}" in body
    assert "was audited with genai-audit" in body and report.status.upper() in body
    # Every finding in a table with value, interval and n.
    assert "| ↓ perplexity | overall | 12.84 ppl | \\[11.91, 13.89\\] | bootstrap-percentile-95 | 200 |" in body
    # Gates with their outcome.
    for g in report.gates:
        assert g.status.upper() in body
    assert "## Energy and emissions" in body
    # Reproducibility: fingerprint of the spec as run, subject hashes, versions.
    assert spec_fingerprint(dict(report.spec)) in body
    for fh in report.subject.files:
        assert fh.sha256 in body
    for pkg, version in report.environment["packages"].items():
        assert f"| {pkg} |" in body.replace("\\", "") and (version is None or str(version) in body.replace("\\", ""))


def test_failed_skipped_and_nan_are_reported_as_not_measured():
    report = make_report()
    text = render_card(report)
    section = text.split("## What was not measured, and why", 1)[1].split("## Reproducibility", 1)[0]
    assert f"`{CRASHED_PROBE}`: failed" in section
    assert f"`{SKIPPED_PROBE}`: did not apply: {report.probes[SKIPPED_PROBE].reason}" in section.replace("\\", "")
    assert f"`{NAN_FINDING}`: no value" in section
    # The families the audit left out (deepfake crashed: it measured nothing).
    assert "no robustness, deepfake or privacy probe measured anything" in section
    # A NaN never reaches the model-index (its value must be a number).
    metrics = [m for r in model_index(report)[0]["results"] for m in r["metrics"]]
    assert all(math.isfinite(m["value"]) for m in metrics)


def test_hostile_text_is_escaped():
    """The Markdown body escapes report text; the YAML metadata keeps it as data, verbatim."""
    import yaml

    text = render_card(make_report(hostile=True))
    _, front, body = text.split("---\n", 2)
    assert HOSTILE not in body
    slices = [m["args"].get("slice", {}) for r in yaml.safe_load(front)["model-index"][0]["results"]
              for m in r["metrics"]]
    assert any(HOSTILE in v for s in slices for v in s.values())


def test_report_without_findings_has_no_model_index():
    from huggingface_hub import ModelCard

    report = make_report(findings=(), gates=())
    text = render_card(report)
    assert "model-index" not in text.split("\n---\n", 1)[0]
    assert ModelCard(text).data.eval_results is None
    assert "No findings." in text and "The audit set no gates." in text


def test_cli_card_writes_the_file(tmp_path, capsys):
    report = make_report()
    path = report.save(tmp_path / "report.json")
    with pytest.raises(SystemExit) as exc:
        main(["card", str(path), "--out", str(tmp_path / "MODEL_CARD.md")])
    assert exc.value.code == 0
    assert (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8") == render_card(report)
    with pytest.raises(SystemExit) as exc:
        main(["card", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    assert "missing.json" in capsys.readouterr().err
