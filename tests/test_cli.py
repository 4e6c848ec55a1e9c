"""The genai-audit command: end to end on a tiny model, exit codes, and one clear message
(no traceback) for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from audit.cli import main
from audit.findings import AuditReport
from tests.fakes import save_tiny_gguf, save_tiny_model

CORPUS = [
    {"id": f"d{i}", "genre": "a" if i % 2 else "b",
     "text": f"The quick brown fox number {i} jumps over the lazy dog. A café serves naïve coffee."}
    for i in range(6)
]


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def write_spec(tmp_path: Path, *, subject=None, gates=None, params=None, corpus=CORPUS,
               name="audit.yaml", extra="") -> Path:
    import yaml

    data = tmp_path / "corpus.jsonl"
    if corpus is not None and not data.exists():
        data.write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    spec = {
        "name": "cli-test",
        "subject": subject or {"kind": "text-generator", "source": "python",
                               "path": "tests.fakes:make_text_generator"},
        "data": {"texts": "corpus.jsonl"},
        "probes": [{"id": "quality.perplexity", "params": params or {"max_length": 16, "stride": 8}}],
        "gates": gates if gates is not None else [
            {"metric": "quality.perplexity/perplexity", "max": 1e9, "use": "ci_high"},
            {"metric": "quality.perplexity/perplexity", "max_rise": 0.5, "relative": True},
        ],
        "settings": {"device": "cpu"},
    }
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec) + extra, encoding="utf-8")
    return p


def test_run_check_diff_and_store_end_to_end(tmp_path, capsys):
    spec = write_spec(tmp_path)
    store = tmp_path / "store.db"
    code, out, err = invoke(capsys, "run", spec, "--out", tmp_path / "a", "--store", store)
    assert code == 0, err
    assert "PASSED" in out and "quality.perplexity/perplexity" in out
    report = AuditReport.load(tmp_path / "a" / "report.json")
    assert report.subject.name == "tiny-llama"
    assert report.finding("quality.perplexity/perplexity").ci is not None
    assert [g.status for g in report.gates] == ["passed", "skipped"]
    junit = ElementTree.parse(tmp_path / "a" / "junit.xml").getroot()
    assert junit.find(".//testsuite").get("tests") == "2"

    # A second run against the first as baseline: the regression gate is now evaluated.
    code, out, err = invoke(capsys, "run", spec, "--out", tmp_path / "b", "--store", store,
                            "--baseline", tmp_path / "a" / "report.json")
    assert code == 0, err
    b = AuditReport.load(tmp_path / "b" / "report.json")
    assert [g.status for g in b.gates] == ["passed", "passed"]

    code, out, _ = invoke(capsys, "store", "list", "--store", store, "--json")
    assert code == 0 and {r["run_id"] for r in json.loads(out)} == {report.run_id, b.run_id}

    code, out, _ = invoke(capsys, "diff", tmp_path / "a" / "report.json", tmp_path / "b" / "report.json",
                          "--markdown")
    assert code == 0 and "quality.perplexity/perplexity" in out

    # check: re-gate without rerunning, with a stricter spec -> exit 1 and JUnit written.
    strict = write_spec(tmp_path, name="strict.yaml",
                        gates=[{"metric": "quality.perplexity/perplexity", "max": 1.0}])
    code, out, _ = invoke(capsys, "check", tmp_path / "a" / "report.json", "--spec", strict,
                          "--junit", tmp_path / "j.xml")
    assert code == 1 and "FAILED" in out
    assert ElementTree.parse(tmp_path / "j.xml").getroot().find(".//failure") is not None
    code, _, _ = invoke(capsys, "check", tmp_path / "a" / "report.json")
    assert code == 0


def test_a_failing_gate_exits_1(tmp_path, capsys):
    spec = write_spec(tmp_path, gates=[{"metric": "quality.perplexity/perplexity", "max": 1.0}])
    code, out, _ = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store")
    assert code == 1 and "FAILED" in out


def corrupt_gguf(tmp_path: Path) -> dict:
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUF" + b"\x00" * 64)
    return {"kind": "text-generator", "source": "gguf", "path": str(p)}


def corrupt_safetensors(tmp_path: Path) -> dict:
    folder = save_tiny_model(tmp_path / "m")
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return {"kind": "text-generator", "source": "hf", "path": str(folder)}


BAD_INPUTS = {
    "missing spec": (lambda t: t / "nope.yaml", "spec file not found"),
    "invalid yaml": (lambda t: _text(t, "name: [x\n"), "invalid YAML at line"),
    "unknown probe": (lambda t: _text(t, write_spec(t).read_text().replace("id: quality.perplexity", "id: quality.perplex")),
                      "unknown probe 'quality.perplex'. Did you mean 'quality.perplexity'?"),
    "unknown parameter": (lambda t: write_spec(t, params={"max_len": 8}),
                          "unknown parameter for probe 'quality.perplexity'. Did you mean 'max_length'?"),
    "wrong type": (lambda t: write_spec(t, params={"max_length": "long"}),
                   "params.max_length: expected an integer, got 'long'"),
    "missing model path": (lambda t: write_spec(t, subject={"kind": "text-generator", "source": "hf",
                                                            "path": str(t / "no-model")}),
                           "model path not found"),
    "corrupt gguf": (lambda t: write_spec(t, subject=corrupt_gguf(t)), "not a valid GGUF file"),
    "corrupt safetensors": (lambda t: write_spec(t, subject=corrupt_safetensors(t)),
                            "corrupt safetensors file"),
    "missing corpus": (lambda t: _text(t, write_spec(t).read_text().replace("corpus.jsonl", "gone.jsonl")),
                       "data input 'texts' not found"),
    "empty corpus": (lambda t: write_spec(t, corpus=[]), "corpus.jsonl: empty corpus"),
    "undecodable corpus": (lambda t: _bad_bytes(t), "not UTF-8 text: byte 0xe9"),
    "unwritable output": (lambda t: write_spec(t), "cannot create the output folder"),
}


def _text(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "given.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _bad_bytes(tmp_path: Path) -> Path:
    spec = write_spec(tmp_path, corpus=None)
    (tmp_path / "corpus.jsonl").write_bytes(b'{"text": "caf\xe9 au lait"}\n')
    return spec


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_clear_message(tmp_path, capsys, case):
    make, expected = BAD_INPUTS[case]
    spec = make(tmp_path)
    out_dir = tmp_path / "out"
    if case == "unwritable output":
        (tmp_path / "blocker").write_text("a file where a folder must go")
        out_dir = tmp_path / "blocker" / "out"
    code, out, err = invoke(capsys, "run", spec, "--out", out_dir, "--no-store", "-q")
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]


def test_debug_adds_the_traceback(tmp_path, capsys):
    code, _, err = invoke(capsys, "--debug", "run", tmp_path / "nope.yaml")
    assert code == 2 and "Traceback" in err and "spec file not found" in err


def test_check_refuses_a_report_that_is_not_one(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"schema_version": "9.0"}))
    code, _, err = invoke(capsys, "check", bad)
    assert code == 2 and "schema_version '9.0' is not supported" in err
    bad.write_text("{not json")
    code, _, err = invoke(capsys, "check", bad)
    assert code == 2 and "not valid JSON" in err


def test_probes_lists_parameters(capsys):
    code, out, _ = invoke(capsys, "probes")
    assert code == 0 and "quality.perplexity" in out and "max_length" in out and "text-generator" in out
    code, out, _ = invoke(capsys, "probes", "--json")
    info = {p["id"]: p for p in json.loads(out)}["quality.perplexity"]
    assert {"name": "stride", "type": "int", "default": 512} .items() <= {
        k: v for p in info["params"] if p["name"] == "stride" for k, v in p.items()}.items()
    by_id = {p["id"]: p for p in json.loads(out)}
    assert by_id["quality.text_diversity"]["generations_only"] is True
    assert by_id["quality.perplexity"]["generations_only"] is False
    code, out, _ = invoke(capsys, "probes")
    block = out.split("quality.text_diversity", 1)[1].split("\n\n", 1)[0]
    assert "needs only generations" in block


def test_schema_and_empty_store(tmp_path, capsys):
    code, out, _ = invoke(capsys, "schema")
    assert code == 0 and json.loads(out)["title"] == "genai-audit report"
    code, out, _ = invoke(capsys, "store", "list", "--store", tmp_path / "empty.db")
    assert code == 0 and "No audits" in out


def test_the_installed_command_fails_cleanly(tmp_path):
    # A real process: the console script's exit code and stderr, not just main()'s.
    r = subprocess.run([sys.executable, "-m", "audit", "run", str(tmp_path / "nope.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: spec file not found: {tmp_path / 'nope.yaml'}"


def test_gguf_subject_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENAI_AUDIT_CACHE", str(tmp_path / "cache"))
    gguf = save_tiny_gguf(tmp_path / "tiny.gguf")
    spec = write_spec(tmp_path, subject={"kind": "text-generator", "source": "gguf", "path": str(gguf)})
    code, _, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store", "-q")
    assert code == 0, err
    r = AuditReport.load(tmp_path / "o" / "report.json")
    assert r.subject.files and r.subject.files[0].path.endswith("tiny.gguf")
