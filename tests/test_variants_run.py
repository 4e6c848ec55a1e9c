"""Audits over variants of the subject (``spec.variants``): every probe on the base and on each
variant with the same seeds and data, tagged findings with deltas, per-variant statuses and
resume, the shared set-up memo, the store, and the bad inputs (an adapter for another base,
bitsandbytes on a CPU). Quantized and overridden subjects: tests/test_variant_loading.py."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit.errors import InputError, SpecError
from audit.findings import AuditReport, Finding, Units
from audit.probe import ProbeContext, registry
from audit.runner import run_audit
from audit.spec import spec_from_dict
from audit.variants_run import FOOTPRINT_NOTE
from tests.fakes import TRAIN_TEXT, tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CALLS: dict[str, int] = {}


def make_lm(seed: int = 0):
    """``tests.test_variants_run:make_lm``: the tiny Llama and its tokenizer (another seed for
    another 'fine-tune'); the loader names it after the spec (``tiny [seed1]`` for a variant)."""
    return tiny_causal_lm(seed=seed), tiny_tokenizer()


@dataclass(frozen=True)
class PerVariant:
    """Counts its calls per subject; crashes on subjects whose name holds ``crash_on``, and is
    interrupted once on those holding ``interrupt_on`` (test probe)."""

    applies_to = ("text-generator",)
    crash_on: str = ""
    interrupt_on: str = ""

    def run(self, subject, ctx):
        name = subject.identity.name
        CALLS[name] = CALLS.get(name, 0) + 1
        ctx.shared(("set-up",), lambda: CALLS.__setitem__("set-up", CALLS.get("set-up", 0) + 1))
        if self.crash_on and self.crash_on in name:
            raise RuntimeError(f"boom on {name}")
        if self.interrupt_on and self.interrupt_on in name and CALLS.pop("armed", 0):
            raise KeyboardInterrupt
        ids = ("d0", "d1", "d2")
        return [Finding(probe=self.id, metric="seed_hash", value=float(ctx.child_seed("x") % 1000),
                        higher_is_better=True,
                        units=Units("mean", ids, {"x": (1.0, math.nan, float(len(name)))}))]


registry.register("test.per_variant", PerVariant, replace=True)


def _write_data(tmp_path: Path) -> dict[str, str]:
    docs = [{"id": f"doc{i}", "text": line} for i, line in enumerate(TRAIN_TEXT.strip().splitlines() * 2)]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
    prompts = [{"id": f"p{i}", "text": t} for i, t in enumerate(["The quick brown", "Perplexity measures"])]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in prompts), encoding="utf-8")
    return {"texts": "texts.jsonl", "prompts": "prompts.jsonl"}


#: energy.footprint at its cheapest: the runner appends it (default parameters) to a spec with
#: variants that lacks it; tests that are not about it list it like this to stay fast.
FAST_FOOTPRINT = {"id": "energy.footprint", "params": {"warmup_calls": 0, "repeats": 2, "min_window_s": 0.0,
                                                       "max_calls_per_window": 1, "n_resamples": 100}}


def fast(probes):
    """``probes`` and, where it is installed, a cheap energy.footprint."""
    return [*probes, FAST_FOOTPRINT] if "energy.footprint" in registry else list(probes)


def make_spec(tmp_path: Path, probes, variants, *, footprint: bool = False, **extra):
    """The tiny text generator's spec; ``footprint`` False lists a cheap energy.footprint
    (else the runner appends it with default parameters)."""
    probes = list(probes) if footprint else fast(probes)
    return spec_from_dict({
        "name": "variants-test",
        "subject": {"kind": "text-generator", "source": "python", "path": "tests.test_variants_run:make_lm",
                    "name": "tiny"},
        "data": _write_data(tmp_path),
        "probes": probes,
        "variants": variants,
        "settings": {"device": "cpu", "seed": 3},
        **extra,
    }, base_dir=tmp_path)


def run(spec, out, **kw):
    return run_audit(spec, out_dir=out, cache_dir=out.parent / "cache", use_store=False, **kw)


REAL_PROBES = [
    {"id": "quality.perplexity", "params": {"n_resamples": 100, "max_length": 64, "stride": 32}},
    {"id": "quality.text_diversity", "params": {"samples_per_prompt": 2, "max_new_tokens": 6,
                                                "n_resamples": 100}},
]
VARIANTS = [{"name": "seed1", "options": {"seed": 1}}, {"name": "int8", "quantization": "int8-dynamic"}]


@pytest.fixture(scope="module")
def two_variant_audit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    spec = make_spec(tmp, REAL_PROBES, VARIANTS, footprint=True)  # appended by the runner, if installed
    return spec, run(spec, tmp / "out")


def test_every_probe_runs_on_the_base_and_on_each_variant(two_variant_audit):
    spec, res = two_variant_audit
    r = res.report
    assert [v.name for v in r.variants] == ["seed1", "int8"]
    ran = [p["id"] for p in REAL_PROBES]
    if "energy.footprint" in registry:  # appended for the variants, and said so
        ran.append("energy.footprint")
        assert all(FOOTPRINT_NOTE in v.notes for v in r.variants)
    assert [p["id"] for p in r.spec["probes"]] == ran
    for v in r.variants:
        assert {pid: st.status for pid, st in v.probes.items()} == dict.fromkeys(ran, "ok")
    assert list(r.probes) == ran  # the base's
    by_variant = {name: [f for f in r.findings if f.variant == name] for name in (None, "seed1", "int8")}
    base_keys = [f.key for f in by_variant[None]]
    assert base_keys and all([f.key for f in fs] == base_keys for fs in by_variant.values())
    for name in ("seed1", "int8"):
        for f in by_variant[name]:  # every variant finding has its delta to the base's
            b = r.finding(f.key)
            assert f.delta is not None and f.delta.base_value == pytest.approx(b.value, nan_ok=True)
            if math.isfinite(b.value) and math.isfinite(f.value):
                assert f.delta.value == pytest.approx(f.value - b.value)
    ppl = {name: r.finding("quality.perplexity/perplexity", name).value for name in (None, "seed1", "int8")}
    int8_ppl = r.finding("quality.perplexity/perplexity", "int8")
    assert int8_ppl.delta.paired and int8_ppl.delta.ci is not None  # units reach the deltas through the runner
    assert ppl["seed1"] != ppl[None]  # another model
    assert ppl["int8"] == pytest.approx(ppl[None], rel=0.05) and ppl["int8"] != ppl[None]  # int8 rounds a little
    # Findings in probe-major order: each probe's base findings, then each variant's.
    order = [(f.probe, f.variant) for f in r.findings]
    assert order == sorted(order, key=lambda pv: (ran.index(pv[0]), [None, "seed1", "int8"].index(pv[1])))
    assert r.exit_code == 0


def test_variant_records_identity_overrides_and_notes(two_variant_audit):
    spec, res = two_variant_audit
    seed1, int8 = res.report.variants
    assert seed1.overrides == {"options": {"seed": 1}} and int8.overrides == {"quantization": "int8-dynamic"}
    assert seed1.subject.name == "tiny [seed1]" and int8.subject.details["quantization"] == "int8-dynamic"
    assert int8.subject.details["quantized_linear_layers"] == 2 * 7 + 1  # 7 Linear per layer, and the head
    assert any("int8-dynamic" in n for n in int8.notes)
    # Artefacts per variant, and report.json round-trips with the variants and deltas.
    loaded = AuditReport.load(res.out_dir / "report.json")
    assert loaded.to_json() == res.report.to_json()
    assert loaded.variants[1].probes["quality.perplexity"].status == "ok"
    assert all(f.delta is not None for f in loaded.findings if f.variant is not None)


def test_same_seed_per_probe_on_every_variant_and_shared_set_up_once(tmp_path):
    CALLS.clear()
    spec = make_spec(tmp_path, [{"id": "test.per_variant"}], VARIANTS[:1] + [{"name": "seed2", "options": {"seed": 2}}])
    r = run(spec, tmp_path / "out").report
    values = {f.variant: f.value for f in r.findings if f.probe == "test.per_variant"}
    assert set(values) == {None, "seed1", "seed2"} and len(set(values.values())) == 1  # same child seed
    assert CALLS["set-up"] == 1  # ctx.shared: once per audit, not per variant
    assert {CALLS[n] for n in ("tiny", "tiny [seed1]", "tiny [seed2]")} == {1}


def test_a_crash_on_one_variant_is_recorded_while_the_rest_finish(tmp_path):
    CALLS.clear()
    spec = make_spec(tmp_path, [{"id": "test.per_variant", "params": {"crash_on": "[seed1]"}}],
                     VARIANTS[:1] + [{"name": "seed2", "options": {"seed": 2}}])
    r = run(spec, tmp_path / "out").report
    st = {v.name: v.probes["test.per_variant"] for v in r.variants}
    assert st["seed1"].status == "failed" and "boom on tiny [seed1]" in st["seed1"].error
    assert st["seed2"].status == "ok" and r.probes["test.per_variant"].status == "ok"
    assert r.finding("test.per_variant/seed_hash", "seed2") is not None
    assert r.status == "crashed" and r.exit_code == 3


def test_resume_reuses_what_each_variant_finished_and_units_survive(tmp_path):
    CALLS.clear()
    CALLS["armed"] = 1
    spec = make_spec(tmp_path, [{"id": "test.per_variant", "params": {"interrupt_on": "[seed2]"}}],
                     VARIANTS[:1] + [{"name": "seed2", "options": {"seed": 2}}])
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(spec, out)
    assert (out / ".partial" / "probes" / "test.per_variant@seed1.json").is_file()
    from audit.resume import Partial, params_hash

    status, kept = Partial(out).load_probe("test.per_variant@seed1", params_hash(spec.build_probes()[0]))
    assert kept[0].variant == "seed1" and kept[0].units.ids == ("d0", "d1", "d2")
    x = kept[0].units.columns["x"]
    assert x[0] == 1.0 and math.isnan(x[1]) and x[2] == len("tiny [seed1]")  # NaN back as a float
    r = run(spec, out, resume=True).report
    assert CALLS["tiny"] == 1 and CALLS["tiny [seed1]"] == 1 and CALLS["tiny [seed2]"] == 2  # only seed2 reran
    assert [v.probes["test.per_variant"].status for v in r.variants] == ["ok", "ok"]
    assert r.finding("test.per_variant/seed_hash", "seed1").delta is not None


def test_footprint_is_added_when_variants_are_audited_and_registered(tmp_path, monkeypatch):
    from audit import variants_run

    spec = make_spec(tmp_path, [{"id": "test.per_variant"}], VARIANTS[:1], footprint=True)
    monkeypatch.setattr(variants_run, "FOOTPRINT_PROBE", "test.per_variant")  # listed already: nothing added
    assert variants_run.with_default_footprint(spec) == (spec, False)
    monkeypatch.setattr(variants_run, "FOOTPRINT_PROBE", "test.constant_for_footprint")
    assert variants_run.with_default_footprint(spec) == (spec, False)  # not registered: nothing added
    from dataclasses import dataclass

    from tests.probes_for_tests import Constant

    # A subclass: the registry names the class it registers, and Constant must stay test.constant.
    registry.register("test.constant_for_footprint", dataclass(frozen=True)(type("FootprintStandIn", (Constant,), {})),
                      replace=True)
    added, yes = variants_run.with_default_footprint(spec)
    assert yes and [p.id for p in added.probes] == ["test.per_variant", "test.constant_for_footprint"]
    assert added.base_dir == spec.base_dir
    r = run(added, tmp_path / "out").report  # the runner does the same: here with the stand-in probe
    assert r.finding("test.constant_for_footprint/score", "seed1") is not None
    no_variants = make_spec(tmp_path, [{"id": "test.per_variant"}], [], footprint=True)
    assert variants_run.with_default_footprint(no_variants) == (no_variants, False)


def test_variant_artefacts_go_to_their_own_folder():
    from audit.variants_run import Target, targets

    spec = spec_from_dict({"name": "a", "subject": {"kind": "text-generator", "source": "python", "path": "m:f"},
                           "probes": [{"id": "test.per_variant"}], "variants": [{"name": "q", "dtype": "float16"}]})
    base, q = targets(spec)
    assert base.artefacts("p.x") == Path("artefacts/p.x") and q.artefacts("p.x") == Path("artefacts/q/p.x")
    assert q.subject.dtype == "float16" and isinstance(q, Target) and q.label == "q" and base.label == "base"


# -- quantization -----------------------------------------------------------------------------------


def test_bnb_variant_on_a_cpu_fails_before_any_model_loads(tmp_path):
    CALLS.clear()
    spec = make_spec(tmp_path, [{"id": "test.per_variant"}], [{"name": "qlora", "quantization": "bnb-nf4"}])
    with pytest.raises(SpecError, match=r"variants\[0\] \('qlora'\): quantization bnb-nf4"):
        run(spec, tmp_path / "out")
    assert "tiny" not in CALLS


def test_unknown_quantization_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="quantization"):
        make_spec(tmp_path, [{"id": "test.per_variant"}], [{"name": "q", "quantization": "int4"}])


# -- adapters -------------------------------------------------------------------------------------


def test_adapter_variant_for_another_base_names_both_models_before_loading(tmp_path):
    from tests.fakes import save_tiny_model
    from tests.test_adapters import _make_adapter

    base = save_tiny_model(tmp_path / "tiny-llama")
    _make_adapter(tmp_path / "lora", "HuggingFaceTB/SmolLM2-360M")
    spec = spec_from_dict({
        "name": "adapter-test", "subject": {"kind": "text-generator", "source": "hf", "path": str(base)},
        "probes": fast([{"id": "test.per_variant"}]), "variants": [{"name": "lora", "adapter": "lora"}],
        "settings": {"device": "cpu"}}, base_dir=tmp_path)
    with pytest.raises(InputError) as err:
        run(spec, tmp_path / "out")
    msg = str(err.value)
    assert "variants[0] ('lora')" in msg and "'HuggingFaceTB/SmolLM2-360M'" in msg and str(base) in msg


def test_adapter_variant_runs_and_hashes_its_files(tmp_path):
    from tests.fakes import save_tiny_model
    from tests.test_adapters import _make_adapter

    base = save_tiny_model(tmp_path / "tiny-llama")
    _make_adapter(tmp_path / "lora", str(base))
    spec = spec_from_dict({
        "name": "adapter-test", "subject": {"kind": "text-generator", "source": "hf", "path": str(base)},
        "probes": fast([{"id": "test.per_variant"}]), "variants": [{"name": "lora", "adapter": "lora"}],
        "settings": {"device": "cpu"}}, base_dir=tmp_path)
    r = run(spec, tmp_path / "out").report
    files = {f.path for f in r.variants[0].subject.files}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model.safetensors"} <= files
    assert {f.path for f in r.subject.files} == {"model.safetensors"}


# -- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_lora_against_qlora_on_a_tiny_model(tmp_path):
    """LoRA on the float base against the same adapter on the bnb-nf4 base (QLoRA), on a GPU."""
    pytest.importorskip("bitsandbytes")
    from tests.fakes import save_tiny_model
    from tests.test_adapters import _make_adapter

    base = save_tiny_model(tmp_path / "tiny-llama")
    _make_adapter(tmp_path / "lora", str(base))
    spec = make_spec(tmp_path, REAL_PROBES[:1], [
        {"name": "lora", "source": "hf", "path": str(base), "adapter": "lora"},
        {"name": "qlora", "source": "hf", "path": str(base), "adapter": "lora", "quantization": "bnb-nf4"},
    ], settings={"device": "cuda", "seed": 3})
    r = run(spec, tmp_path / "out").report
    lora = r.finding("quality.perplexity/perplexity", "lora")
    qlora = r.finding("quality.perplexity/perplexity", "qlora")
    assert r.variants[1].subject.details["quantization"] == "bnb-nf4"
    assert qlora.delta is not None and lora.delta is not None
    assert qlora.value == pytest.approx(lora.value, rel=0.2) and qlora.value != lora.value


# -- store, gates, diff: the subject's findings unless a variant is named ---------------------------


def _report_with_variant(run_id: str, created: str, base: float, var: float):
    from audit.findings import SubjectIdentity

    s = SubjectIdentity(name="m", kind="text-generator", source="python")
    fs = (Finding("quality.perplexity", "perplexity", base, False),
          Finding("quality.perplexity", "perplexity", var, False, variant="int8"))
    return AuditReport("a", s, findings=fs, run_id=run_id, created_at=created)


def test_store_keeps_variants_apart_and_an_old_store_is_migrated(tmp_path):
    import sqlite3

    from audit.store import ReportStore

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with ReportStore(url) as st:
        st.ingest(_report_with_variant("r1", "2025-01-01T00:00:00+00:00", 10.0, 11.0))
    con = sqlite3.connect(tmp_path / "old.db")  # make it a store from before variants
    con.execute("ALTER TABLE findings DROP COLUMN variant")
    con.commit()
    assert "variant" not in {r[1] for r in con.execute("PRAGMA table_info(findings)")}
    con.close()
    with ReportStore(url) as st:  # opens, gains the column; its rows read as the subject's
        st.ingest(_report_with_variant("r2", "2025-02-01T00:00:00+00:00", 12.0, 13.0))
        key = "quality.perplexity/perplexity"
        assert [(p.run_id, p.value) for p in st.metric_history("m", key)] == [("r1", 10.0), ("r1", 11.0),
                                                                              ("r2", 12.0)]
        assert [(p.run_id, p.value) for p in st.metric_history("m", key, variant="int8")] == [("r2", 13.0)]
        assert st.get("r2").finding(key, "int8").value == 13.0
    con = sqlite3.connect(tmp_path / "old.db")
    assert con.execute("SELECT variant FROM findings ORDER BY id").fetchall() == [(None,), (None,), (None,),
                                                                                  ("int8",)]
    con.close()


def test_gates_and_diff_read_the_subjects_findings_unless_a_variant_is_named():
    from audit.compare import diff_reports
    from audit.gates import evaluate_gates
    from audit.spec import GateSpec

    a = _report_with_variant("a", "2025-01-01T00:00:00+00:00", 10.0, 30.0)
    b = _report_with_variant("b", "2025-02-01T00:00:00+00:00", 10.5, 31.0)
    gates = [GateSpec(metric="quality.perplexity/perplexity", max=20),
             GateSpec(metric="quality.perplexity/perplexity", variant="int8", max=20)]
    assert [g.passed for g in evaluate_gates(gates, b.findings)] == [True, False]
    base, int8 = diff_reports(a, b)  # variant by variant, never a variant against the subject
    assert (base.variant, base.before.value, base.after.value) == (None, 10.0, 10.5)
    assert (int8.variant, int8.before.value, int8.after.value) == ("int8", 30.0, 31.0)


def test_reference_features_are_computed_once_per_audit(tmp_path, monkeypatch):
    """Two image-generator 'variants' through quality.image_fidelity and quality.sliced_wasserstein
    (same extractor): the real set's features are made once, and the findings do not change."""
    import probes.quality.image_fidelity as fidelity
    from audit.probe import build_probe
    from tests.image_fakes import write_image_folder
    from tests.test_image_fidelity import PARAMS, _folder_subject

    ref = write_image_folder(tmp_path / "ref", 24, seed=2)
    gens = [_folder_subject(write_image_folder(tmp_path / f"gen{i}", 20, seed=i, shift=0.3 * i)) for i in (1, 2)]
    calls = []
    real_reader = fidelity.reference_from_folder
    monkeypatch.setattr(fidelity, "reference_from_folder", lambda *a, **k: calls.append(1) or real_reader(*a, **k))
    probes = [build_probe("quality.image_fidelity", {**PARAMS, "max_features": 5000}),
              build_probe("quality.sliced_wasserstein", {"feature": PARAMS["feature"], "n_directions": 16,
                                                         "n_resamples": 20, "batch_size": 16, "max_features": 5000})]

    def one(subject, probe, memo):
        ctx = ProbeContext(device="cpu", seed=0, data={"reference": ref}, probe_id=probe.id, memo=memo)
        return [(f.metric, f.value) for f in probe.run(subject, ctx)]

    memo: dict = {}
    shared = [one(g, p, memo) for g in gens for p in probes]
    assert len(calls) == 1  # 2 subjects x 2 probes, one reading of the reference set
    calls.clear()
    alone = [one(g, p, {}) for g in gens for p in probes]  # a fresh memo each: read each time
    assert len(calls) == 4 and shared == alone


def test_gguf_export_as_a_variant_of_the_transformers_folder(tmp_path):
    """The tiny model's float32 GGUF beside its transformers folder: the same model, so the same
    perplexity (delta 0 up to rounding); the note says what a dequantized GGUF does not measure."""
    from audit.variants_run import GGUF_NOTE
    from tests.fakes import save_tiny_gguf, save_tiny_model

    base = save_tiny_model(tmp_path / "tiny-llama")
    save_tiny_gguf(tmp_path / "tiny.gguf")
    spec = spec_from_dict({
        "name": "gguf-test", "subject": {"kind": "text-generator", "source": "hf", "path": str(base)},
        "data": _write_data(tmp_path), "probes": fast(REAL_PROBES[:1]),
        "variants": [{"name": "f32-gguf", "source": "gguf", "path": "tiny.gguf"}],
        "settings": {"device": "cpu"}}, base_dir=tmp_path)
    r = run(spec, tmp_path / "out").report
    (v,) = r.variants
    assert GGUF_NOTE in v.notes and [f.path for f in v.subject.files] == ["tiny.gguf"]
    f = r.finding("quality.perplexity/perplexity", "f32-gguf")
    assert f.delta.value == pytest.approx(0.0, abs=1e-4 * f.value)


def test_cli_names_the_variant_a_probe_failed_on(tmp_path, capsys):
    import yaml

    from audit.cli import main

    spec = {"name": "cli-variants", "subject": {"kind": "text-generator", "source": "python",
                                                "path": "tests.test_variants_run:make_lm", "name": "tiny"},
            "probes": fast([{"id": "test.per_variant", "params": {"crash_on": "[seed1]"}}]),
            "variants": [{"name": "seed1", "options": {"seed": 1}}], "settings": {"device": "cpu"}}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "audit.yaml"), "--out", str(tmp_path / "out"), "--no-store"])
    assert exc.value.code == 3
    assert "probe test.per_variant failed on variant seed1: RuntimeError: boom on tiny [seed1]" in capsys.readouterr().err
