"""Hostile and careless input (issue 15): every case here was mishandled once, or is a case
beyond the issue's list that a hostile user would try next. Each gets exit 2 (or a warning)
with a message that names the problem, a bounded message size, and no traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

import tests.probes_for_tests as tp
from audit.errors import InputError, SpecError
from audit.findings import AuditReport
from audit.spec import load_spec, spec_from_dict
from tests.test_cli import invoke, write_spec
from tests.test_runner import make_spec, run


def spec_text(tmp_path: Path, text: str, name: str = "audit.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


GOOD = """\
name: hard
subject: {kind: text-generator, source: python, path: "tests.fakes:make_text_generator"}
probes:
  - id: quality.perplexity
    params: {max_length: 16, stride: 8}
"""


# -- item 1: gates that cannot pass by accident -------------------------------------------------


@pytest.mark.parametrize("bound", ["max: .nan", "min: .nan", "max: .inf", "min: -.inf", "max_rise: .inf",
                                   "max_drop: .nan"])
def test_non_finite_gate_bounds_are_spec_errors(tmp_path, bound):
    p = spec_text(tmp_path, GOOD + f"gates:\n  - {{metric: quality.perplexity/perplexity, {bound}}}\n")
    with pytest.raises(SpecError, match=r"gates\[0\]\.\w+: Input should be a finite number"):
        load_spec(p)


def test_an_audit_where_every_probe_was_skipped_exits_2(tmp_path, capsys):
    spec = spec_text(tmp_path, GOOD.replace("quality.perplexity\n    params: {max_length: 16, stride: 8}",
                                            "test.image_only") + "settings: {device: cpu}\n")
    code, _, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store", "-q")
    assert code == 2 and "nothing was measured" in err and "settings.allow_empty: true" in err
    report = AuditReport.load(tmp_path / "o" / "report.json")
    assert report.status == "invalid" and report.exit_code == 2
    code, _, err = invoke(capsys, "check", tmp_path / "o" / "report.json")
    assert code == 2 and "nothing was measured" in err
    tp.CALLS.clear()
    allowed = make_spec(tmp_path, ["test.image_only"])
    allowed = spec_from_dict({**allowed.as_dict(), "settings": {"device": "cpu", "allow_empty": True}},
                             base_dir=tmp_path)
    assert run(allowed, tmp_path / "o2").report.exit_code == 0


def _report(tmp_path: Path, name: str, subject: str, folder: str) -> Path:
    from tests.report_factory import passing_report

    from dataclasses import replace

    r = passing_report()
    r = replace(r, name=name, subject=replace(r.subject, name=subject, path=subject))
    out = tmp_path / folder
    out.mkdir()
    r.save(out / "report.json")
    return out / "report.json"


def test_baseline_and_diff_of_another_audit_or_subject_warn_naming_both(tmp_path, capsys):
    a = _report(tmp_path, "release", "model-a", "a")
    other_audit = _report(tmp_path, "fairness", "model-a", "b")
    other_subject = _report(tmp_path, "release", "model-z", "c")
    same = _report(tmp_path, "release", "model-a", "d")
    _, out, err = invoke(capsys, "diff", a, other_audit)
    assert "warning:" in err and "'release'" in err and "'fairness'" in err and "another audit" in err
    _, _, err = invoke(capsys, "check", a, "--baseline", other_subject)
    assert "another subject" in err and "'model-a'" in err and "'model-z'" in err
    _, _, err = invoke(capsys, "diff", a, same)
    assert "warning" not in err
    spec = write_spec(tmp_path, gates=[])  # audit "cli-test" of tests.fakes:make_text_generator
    code, _, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store", "-q", "--baseline", a)
    assert code == 0, err
    assert "another audit and another subject" in err and "'cli-test'" in err and "'release'" in err


def test_slice_by_a_field_no_document_has_warns(tmp_path, capsys):
    spec = write_spec(tmp_path, params={"max_length": 16, "stride": 8, "slice_by": "genr"})
    code, _, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store", "-q")
    assert code == 0, err
    head = AuditReport.load(tmp_path / "o" / "report.json").finding("quality.perplexity/perplexity")
    assert any("no document has the metadata field 'genr'" in w and "Did you mean 'genre'?" in w
               for w in head.warnings), head.warnings


def test_default_slice_by_on_a_corpus_without_metadata_stays_quiet(tmp_path, capsys):
    corpus = [{"text": f"Plain document number {i} with a few words."} for i in range(4)]
    spec = write_spec(tmp_path, corpus=corpus)
    code, _, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store", "-q")
    assert code == 0, err
    head = AuditReport.load(tmp_path / "o" / "report.json").finding("quality.perplexity/perplexity")
    assert not any("slice_by" in w for w in head.warnings)


# -- item 2: specs that cannot exhaust the machine ----------------------------------------------

BOMB = "\n".join(
    ["name: bomb", "a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
       f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    + ["probes: *i"]
) + "\n"


def test_an_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path, capsys):
    assert len(BOMB) < 700  # 9**9 = 387 million strings once expanded
    p = spec_text(tmp_path, BOMB)
    t0 = time.perf_counter()
    code, out, err = invoke(capsys, "run", p)
    assert time.perf_counter() - t0 < 10  # generous: it is milliseconds; unbounded, it ran out of memory
    assert code == 2 and "alias" in err and "more than 100000 values" in err
    assert len(err) + len(out) < 1000


def test_a_merge_key_bomb_is_refused(tmp_path):
    lines = ["name: m", "a0: &a0 {k: v}"] + [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i}: {i}}}"
                                              for i in range(1, 40)]
    with pytest.raises(SpecError, match="alias bomb"):
        load_spec(spec_text(tmp_path, "\n".join(lines) + "\n"))


def test_merge_keys_may_still_override(tmp_path):
    text = GOOD.replace("    params: {max_length: 16, stride: 8}",
                        "    params: {<<: &p {max_length: 16, stride: 8}, stride: 4}")
    assert load_spec(spec_text(tmp_path, text)).probes[0].params == {"max_length": 16, "stride": 4}


def test_a_recursive_alias_is_refused(tmp_path):
    with pytest.raises(SpecError, match="refers to itself"):
        load_spec(spec_text(tmp_path, "name: &n [*n]\n"))


@pytest.mark.parametrize("suffix, text", [(".yaml", "name: " + "[" * 3000 + "]" * 3000),
                                          (".json", '{"name": ' + "[" * 300000 + "]" * 300000 + "}")])
def test_deep_nesting_is_a_spec_error(tmp_path, suffix, text):
    with pytest.raises(SpecError, match="nested too deeply"):
        load_spec(spec_text(tmp_path, text, "deep" + suffix))


def test_a_huge_spec_file_is_refused_unread(tmp_path):
    p = tmp_path / "huge.yaml"
    with open(p, "wb") as fh:
        fh.truncate(11 * 1024 * 1024)
    with pytest.raises(SpecError, match="a spec is at most"):
        load_spec(p)


def test_values_quoted_in_messages_are_cut(tmp_path, capsys):
    huge = "x" * 100_000
    cases = [GOOD.replace("kind: text-generator", f"kind: {huge}"),  # pydantic literal error
             GOOD.replace("max_length: 16", f"max_length: {huge}"),  # probe parameter type error
             GOOD.replace("quality.perplexity\n", f"quality.{huge}\n")]  # unknown probe id
    for i, text in enumerate(cases):
        code, out, err = invoke(capsys, "run", spec_text(tmp_path, text, f"s{i}.yaml"))
        assert code == 2 and "characters)" in err, err[:300]
        assert len(err) < 2000, len(err)


def _bounded_params() -> list[tuple[str, str, int]]:
    import dataclasses

    from audit.limits import limits_for
    from audit.probe import registry

    out = []
    for pid in registry.ids():
        if pid.startswith(("test.", "example.")):
            continue
        cls = registry.get(pid)
        for name, limit in limits_for(cls).items():
            if name in {f.name for f in dataclasses.fields(cls)}:
                out.append((pid, name, limit))
    return out


@pytest.mark.parametrize("probe_id, param, limit", _bounded_params())
def test_numeric_parameters_have_upper_bounds(probe_id, param, limit):
    from audit.probe import build_probe

    # The probe's own, stricter check may answer first (folds: 2..10); either way it is a spec error.
    with pytest.raises(SpecError, match=rf"{param} must be an integer .*got 1000000000000"):
        build_probe(probe_id, {param: 1_000_000_000_000})
    try:  # the bound itself passes the shared check (the probe's own checks may still refuse it)
        build_probe(probe_id, {param: limit})
    except SpecError as exc:
        assert "audit/limits.py" not in str(exc)


def test_huge_n_resamples_fails_before_the_model_loads(tmp_path, capsys):
    spec = write_spec(tmp_path, params={"max_length": 16, "stride": 8, "n_resamples": 1_000_000_000_000})
    code, out, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store")
    assert code == 2 and "n_resamples must be an integer <= 100_000" in err
    assert "loading" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["top", "nested"])
def test_duplicate_keys_are_errors(tmp_path, where):
    text = GOOD + "name: again\n" if where == "top" else GOOD.replace("stride: 8}", "stride: 8, max_length: 32}")
    with pytest.raises(SpecError, match=r"duplicate key '(name|max_length)' \(first at line \d+\)"):
        load_spec(spec_text(tmp_path, text))


def test_all_spec_errors_are_listed_at_once(tmp_path):
    text = GOOD.replace("quality.perplexity\n", "quality.perplex\n") + """\
  - id: quality.text_diversity
    params: {n_resamples: -1}
gates:
  - {metric: quality.perplexity/perplexity, max: .nan}
settings: {seed: many}
"""
    with pytest.raises(SpecError) as err:
        load_spec(spec_text(tmp_path, text))
    msg = str(err.value)
    assert msg.splitlines()[0].endswith("problems:")
    for part in ("unknown probe 'quality.perplex'", "gates[0].max", "settings.seed", "n_resamples"):
        assert part in msg, (part, msg)
    assert "which this spec does not run" not in msg  # it follows from the typo


# -- item 3: exit codes as documented -----------------------------------------------------------


def test_a_folder_where_a_file_is_expected(tmp_path, capsys):
    good = _report(tmp_path, "release", "model-a", "out")
    folder = good.parent
    for args in (["check", folder], ["check", good, "--junit", folder], ["check", good, "--baseline", folder],
                 ["diff", good, folder], ["run", write_spec(tmp_path), "--baseline", folder, "--no-store"],
                 ["card", good, "--out", folder], ["card", folder]):
        code, _, err = invoke(capsys, *args)
        assert code == 2 and "is a folder" in err and "Traceback" not in err, (args, err)
    assert "did you mean" in invoke(capsys, "check", folder)[2]


def test_a_pickle_refused_with_allow_pickle_is_exit_2(tmp_path, capsys):
    import os

    import torch

    from tests.fakes import save_tiny_model

    folder = save_tiny_model(tmp_path / "m")
    for w in folder.glob("*.safetensors"):
        w.unlink()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, folder / "pytorch_model.bin")
    spec = write_spec(tmp_path, subject={"kind": "text-generator", "source": "hf", "path": str(folder),
                                         "allow_pickle": True})
    code, _, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--no-store", "-q")
    assert code == 2 and "refused by the safe loader" in err and "internal error" not in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1:1/db", "mysql://u@h/db", "nosuchdb://x", "DIR"])
def test_a_bad_store_url_fails_before_running(tmp_path, capsys, url):
    url = str(tmp_path) if url == "DIR" else url  # a folder given as the SQLite file
    spec = write_spec(tmp_path)
    code, _, err = invoke(capsys, "run", spec, "--out", tmp_path / "o", "--store", url)
    assert code == 2 and "cannot open the audit store" in err, err
    assert "loading" not in err and not (tmp_path / "o").exists()


def test_after_a_kill_the_previous_report_is_set_aside(tmp_path):
    tp.CALLS["interrupt-armed"] = 1
    out = tmp_path / "out"
    first = run(make_spec(tmp_path, ["test.constant"]), out).report
    assert AuditReport.load(out / "report.json").run_id == first.run_id
    spec = make_spec(tmp_path, ["test.constant", "test.interrupt"])
    with pytest.raises(KeyboardInterrupt):  # as good as a kill: the run never reaches its reports
        run(spec, out)
    assert not (out / "report.json").exists()
    assert AuditReport.load(out / ".previous" / "report.json").run_id == first.run_id
    assert "earlier run" in (out / ".previous" / "STALE.txt").read_text()
    resumed = run(spec, out, resume=True).report
    assert resumed.run_id != first.run_id
    assert AuditReport.load(out / "report.json").run_id == resumed.run_id
    assert not (out / ".previous").exists()


# -- item 5: YAML 1.1 pitfalls -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["[no, recid]", "[yes, 'no']", "[on, off]", "[1e3, x]"])
def test_yaml_words_in_class_names_say_to_quote_them(tmp_path, value):
    from audit.subjects.classifier import _input_options
    from audit.spec import SubjectSpec

    data = yaml.load(f"class_names: {value}", Loader=__import__("audit.yamlsafe").yamlsafe.SpecLoader)
    s = SubjectSpec(kind="classifier", source="python", path="m:f",
                    options={"input_shape": [3], **data})
    with pytest.raises(SpecError, match="quote each such value"):
        _input_options(s)


@pytest.mark.parametrize("params, key", [
    ({"sensitive_columns": [True, "race"]}, "sensitive_columns"),        # sensitive_columns: [yes, race]
    ({"groups": {False: ["he"], "b": ["she"]}}, "groups"),              # groups: {no: [he], b: [she]}
    ({"metrics": ["selection_rate", 1000.0]}, "metrics"),               # metrics: [selection_rate, 1e3]
])
def test_yaml_words_in_probe_params_say_to_quote_them(params, key):
    from audit.probe import build_probe

    probe = "bias.counterfactual_generation" if key == "groups" else "bias.classifier"
    with pytest.raises(SpecError, match=rf"params\.{key}: .*quote each such value"):
        build_probe(probe, params)


def test_a_boolean_positive_label_says_to_quote_it():
    from probes.bias.engine import binary_labels

    with pytest.raises(InputError, match="quote each such value"):
        binary_labels(["yes", "no", "yes"], what="label", positive=True)  # positive_label: yes


def test_python_tags_are_refused(tmp_path):
    p = spec_text(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(p)


# -- item 6: a spec is code ------------------------------------------------------------------------


def _confined(tmp_path: Path, **over) -> dict:
    d = {"name": "c", "subject": {"kind": "text-generator", "source": "gguf", "path": "model.gguf"},
         "data": {"texts": "corpus.txt"}, "probes": [{"id": "quality.perplexity"}],
         "settings": {"confine_paths": True}}
    d.update(over)
    return d


@pytest.mark.parametrize("over, expected", [
    ({"data": {"texts": "../elsewhere/corpus.txt"}}, "data.texts: '../elsewhere/corpus.txt' resolves to"),
    ({"data": {"texts": "/etc/passwd"}}, "data.texts: '/etc/passwd' resolves to /etc/passwd"),
    ({"subject": {"kind": "text-generator", "source": "gguf", "path": "/tmp/x.gguf"}}, "subject.path: '/tmp/x.gguf'"),
    ({"subject": {"kind": "text-generator", "source": "python", "path": "tests.fakes:make_text_generator"}},
     "imports the module 'tests'"),
    ({"subject": {"kind": "text-generator", "source": "python", "path": "../evil.py:make"}},
     "runs code from"),
    ({"probes": [{"id": "quality.image_fidelity", "params": {"feature": "os.path:join"}}]},
     "probes[0].params.feature: 'os.path:join' imports the module 'os'"),
])
def test_confine_paths_refuses_what_leaves_the_folder(tmp_path, over, expected):
    with pytest.raises(SpecError, match="settings.confine_paths|outside the spec's folder|only code in") as err:
        spec_from_dict(_confined(tmp_path, **over), base_dir=tmp_path)
    assert expected in str(err.value), str(err.value)


def test_confine_paths_allows_what_is_inside(tmp_path):
    (tmp_path / "mine.py").write_text("def make():\n    return None\n")
    (tmp_path / "sub").mkdir()
    ok = _confined(tmp_path, data={"texts": "sub/corpus.txt"},
                   subject={"kind": "text-generator", "source": "python", "path": "mine.py:make"})
    assert spec_from_dict(ok, base_dir=tmp_path).settings.confine_paths
    hub = _confined(tmp_path, subject={"kind": "text-generator", "source": "hf", "path": "HuggingFaceTB/SmolLM2"})
    assert spec_from_dict(hub, base_dir=tmp_path).subject.path == "HuggingFaceTB/SmolLM2"  # a hub id, not a path
    off = _confined(tmp_path, data={"texts": "/etc/passwd"}, settings={})
    assert spec_from_dict(off, base_dir=tmp_path).data["texts"] == "/etc/passwd"  # off by default


def test_a_symlink_out_of_the_folder_is_outside(tmp_path):
    inside = tmp_path / "spec"
    inside.mkdir()
    (inside / "link.txt").symlink_to("/etc/hostname")
    with pytest.raises(SpecError, match="resolves to /etc/hostname"):
        spec_from_dict(_confined(inside, data={"texts": "link.txt"}), base_dir=inside)


def test_model_not_found_shows_the_absolute_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, subject={"kind": "text-generator", "source": "gguf", "path": "nope/model.gguf"})
    code, _, err = invoke(capsys, "run", "audit.yaml", "--out", "o", "--no-store", "-q")
    assert code == 2 and f"model path not found: {tmp_path.resolve()}/nope/model.gguf" in err, err
    assert "relative to ." not in err and spec.exists()


# -- the message size of any error ---------------------------------------------------------------


def test_cli_bounds_any_error_message(capsys):
    from audit.cli import _bounded

    text = _bounded("\n".join(["x" * 5000] * 500))
    assert len(text) < 80_000 and text.endswith("... and 440 more lines")
    assert json.dumps(text)  # printable
