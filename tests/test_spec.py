"""Spec loading: valid specs freeze, invalid ones name the file, the key and what was expected."""

import json
from pathlib import Path

import pytest

from audit.errors import SpecError
from audit.spec import AuditSpec, load_spec, parse_metric_ref

GOOD = """
name: rc-1
subject: {kind: text-generator, source: python, path: "tests.fakes:make_text_generator"}
data: {texts: corpus.txt}
probes:
  - id: quality.perplexity
    params: {max_length: 64, stride: 32}
gates:
  - {metric: quality.perplexity/perplexity, max: 30, use: ci_high}
  - {metric: "quality.perplexity/perplexity[genre=news]", max_rise: 0.5}
"""


def write(tmp_path: Path, text: str, name: str = "audit.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_good_spec_is_frozen_and_resolves_paths(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.name == "rc-1" and spec.probes[0].params == {"max_length": 64, "stride": 32}
    assert spec.data_paths()["texts"] == tmp_path / "corpus.txt"
    with pytest.raises(Exception):
        spec.name = "other"  # frozen
    assert spec.gates[1].is_regression and not spec.gates[0].is_regression
    # The fingerprint ignores names and gates (they do not change results) but not params.
    other = load_spec(write(tmp_path, GOOD.replace("rc-1", "rc-2").replace("max: 30", "max: 31"), "b.yaml"))
    assert other.fingerprint() == spec.fingerprint()
    changed = load_spec(write(tmp_path, GOOD.replace("stride: 32", "stride: 16"), "c.yaml"))
    assert changed.fingerprint() != spec.fingerprint()


def test_json_spec(tmp_path):
    import yaml

    p = write(tmp_path, json.dumps(yaml.safe_load(GOOD)), "audit.json")
    assert load_spec(p).name == "rc-1"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s.replace("quality.perplexity\n", "quality.perplexty\n"),
         "unknown probe 'quality.perplexty'. Did you mean 'quality.perplexity'?"),
        (lambda s: s.replace("max_length: 64", "max_lenght: 64"),
         "params.max_lenght: unknown parameter for probe 'quality.perplexity'. Did you mean 'max_length'?"),
        (lambda s: s.replace("max_length: 64", "max_length: long"),
         "probes[0]: params.max_length: expected an integer, got 'long'"),
        (lambda s: s.replace("max_length: 64", "max_length: '64'"),
         "params.max_length: expected an integer, got '64'"),
        (lambda s: s.replace("stride: 32", "stride: 0"), "stride"),
        (lambda s: s.replace("kind: text-generator", "kind: text-generater"),
         "subject.kind: Input should be 'text-generator', 'image-generator', 'classifier' or 'encoder'"),
        (lambda s: s.replace("source: python,", "sorce: python,"), "subject.sorce: unknown key. Did you mean 'source'?"),
        (lambda s: s.replace("name: rc-1\n", ""), "name: required key is missing"),
        (lambda s: s.replace("max: 30, use: ci_high", "use: ci_high"),
         "gates[0]: a gate needs at least one of min, max, max_drop, max_rise or max_delta"),
        (lambda s: s.replace("use: ci_high", "use: ci_hi"), "gates[0].use"),
        (lambda s: s.replace("metric: quality.perplexity/perplexity,", "metric: perplexity,"),
         "gates[0].metric: expected 'probe/metric'"),
        (lambda s: s.replace("metric: quality.perplexity/perplexity,", "metric: quality.perplexit/perplexity,"),
         "names probe 'quality.perplexit', which this spec does not run. Did you mean 'quality.perplexity'?"),
        (lambda s: s + "  - {metric: quality.perplexity/perplexity, max_drop: -1}\n", "gates[2].max_drop"),
    ],
)
def test_invalid_specs_name_the_key(tmp_path, mutate, expected):
    p = write(tmp_path, mutate(GOOD))
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert str(p) in str(err.value)
    assert expected in str(err.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match=r"invalid YAML at line \d+, column \d+"):
        load_spec(write(tmp_path, "name: x\nsubject: [unclosed\n"))
    with pytest.raises(SpecError, match="invalid JSON at line 1"):
        load_spec(write(tmp_path, "{nope", "bad.json"))
    with pytest.raises(SpecError, match="got an empty file"):
        load_spec(write(tmp_path, ""))
    with pytest.raises(SpecError, match="got list"):
        load_spec(write(tmp_path, "- a\n- b\n"))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(bad)
    with pytest.raises(SpecError, match="is a folder"):
        load_spec(tmp_path)


def test_duplicate_probe_is_refused(tmp_path):
    text = GOOD.replace("gates:", "  - id: quality.perplexity\ngates:")
    with pytest.raises(SpecError, match="listed twice"):
        load_spec(write(tmp_path, text))


def test_parse_metric_ref():
    assert parse_metric_ref("a.b/c") == ("a.b", "c", {})
    assert parse_metric_ref("a.b/c[eps=8/255,group=f]") == ("a.b", "c", {"eps": "8/255", "group": "f"})
    with pytest.raises(ValueError):
        parse_metric_ref("a.b/c[eps]")


def test_spec_from_python_dict():
    spec = AuditSpec.model_validate({
        "name": "x", "subject": {"kind": "encoder", "source": "hf", "path": "m"},
        "probes": [{"id": "quality.perplexity"}]})
    assert spec.settings.seed == 0 and spec.gates == ()


def test_yaml_floats_and_booleans(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; the spec loader reads it as the float it is.
    from audit.yamlsafe import SpecLoader as _SpecLoader
    import yaml

    assert yaml.load("eps: 1e-3", Loader=_SpecLoader) == {"eps": 0.001}
    p = write(tmp_path, GOOD.replace("max_length: 64", "max_length: true"))
    with pytest.raises(SpecError, match="params.max_length: expected an integer, got True"):
        load_spec(p)


def test_base_dir_is_not_a_spec_key(tmp_path):
    p = write(tmp_path, GOOD + "base_dir: /etc\n")
    with pytest.raises(SpecError, match="base_dir: unknown key"):
        load_spec(p)
    assert load_spec(write(tmp_path, GOOD, "ok.yaml")).base_dir == str(tmp_path)
