"""The demo, end to end: every part's audit from the offline bundles, run once (slow: ~3-4 min).

One ``genai-audit demo`` run (module fixture) feeds one test per part, so a failure names the
part. The SmolLM2 conversion is shared with the loading tests (``smollm2_conversion``).
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from audit.cli import main
from audit.findings import AuditReport
from audit.store import ReportStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(smollm2_conversion, tmp_path_factory):
    cache = smollm2_conversion[0]
    root = tmp_path_factory.mktemp("demo")
    out, store = root / "demo", root / "store.db"
    old = os.environ.get("GENAI_AUDIT_CACHE")
    os.environ["GENAI_AUDIT_CACHE"] = str(cache)  # reuse the session's conversion
    buf = io.StringIO()
    try:
        with redirect_stdout(buf), pytest.raises(SystemExit) as exc:
            main(["demo", "--out", str(out), "--store", str(store)])
    finally:
        if old is None:
            os.environ.pop("GENAI_AUDIT_CACHE", None)
        else:
            os.environ["GENAI_AUDIT_CACHE"] = old
    return {"code": exc.value.code, "printed": buf.getvalue(), "out": out, "store": store}


def _report(demo, name: str) -> AuditReport:
    folder = Path(demo["out"]) / name
    for f in ("audit.yaml", "report.json", "report.html", "report.md", "junit.xml", "MODEL_CARD.md"):
        assert (folder / f).is_file(), f"{name}/{f}"
    report = AuditReport.load(folder / "report.json")
    assert all(p.status == "ok" for p in report.all_statuses()), {k: p.error for k, p in report.probes.items()}
    assert report.exit_code == 0, [(g.metric, g.message) for g in report.gates if g.status == "failed"]
    return report


def test_the_demo_passes_and_stores_every_audit(demo):
    assert demo["code"] == 0, demo["printed"][-4000:]
    assert "PASSED" in demo["printed"] and "report.html" in demo["printed"]
    names = sorted(p.name for p in Path(demo["out"]).iterdir() if (p / "report.json").is_file())
    assert names == ["adult-income-fairness-demo", "digits-classifier-robustness-demo", "digits-cvae-demo",
                     "digits-ddpm-demo", "minilm-association-demo", "smollm2-135m-instruct-demo",
                     "smollm2-privacy-base-demo", "smollm2-privacy-lora-demo", "smollm2-variants-demo"]
    with ReportStore(f"sqlite:///{demo['store']}") as st:
        stored = {a.run_id for a in st.list_audits()}
    for name in names:
        assert AuditReport.load(Path(demo["out"]) / name / "report.json").run_id in stored


def test_smollm2_part(demo):
    report = _report(demo, "smollm2-135m-instruct-demo")
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
    # The energy per 1k tokens is measured or, without a counter, NaN with a labelled estimate beside it.
    e = report.finding("energy.inference/energy_j_per_1k_tokens[operation=score]")
    if e.value != e.value:  # NaN: not measured on this machine
        assert report.finding("energy.inference/energy_estimate_j_per_1k_tokens[operation=score]").value > 0
    radii = [f for f in report.findings if f.probe == "robustness.text_embedding" and f.metric == "attack_success_rate"]
    assert [f.slice["radius"] for f in radii] == ["0.1", "0.3"] and all(0 <= f.value <= 1 for f in radii)
    for pid in ("quality.text_diversity", "deepfake.text_detectability", "bias.stereotype_pairs",
                "bias.counterfactual_generation"):
        assert report.probes[pid].n_findings > 0, pid
    # Sampled answers per prompt (text_diversity's), as a table in the HTML report.
    html = (Path(demo["out"]) / "smollm2-135m-instruct-demo" / "report.html").read_text(encoding="utf-8")
    assert "Sampled generations" in html


def test_digits_generator_part(demo):
    report = _report(demo, "digits-cvae-demo")
    fid = report.finding("quality.image_fidelity/fid")
    assert fid.n == 1000 and fid.evidence["n_reference"] == 539
    assert any("not the standard FID Inception" in w for w in fid.warnings)
    prec, rec = report.finding("quality.image_fidelity/precision"), report.finding("quality.image_fidelity/recall")
    assert 0.5 < prec.value <= 1 and 0.3 < rec.value <= 1
    assert 5 < report.finding("quality.image_fidelity/inception_score").value <= 10
    # Detectability on the same domain features: measured 0.65 [0.62, 0.69] on 539 + 539 digits.
    key = "deepfake.image_detectability/{}[detector=linear_probe{}]"
    auroc = report.finding(key.format("auroc", ",postprocess=none"))
    assert auroc.n == 1078 and 0.55 < auroc.value < 0.85 and auroc.ci.low < auroc.value < auroc.ci.high
    assert any("domain extractor" in w for w in auroc.warnings)
    assert set(auroc.evidence["detectability_curves"]) == {"jpeg", "resize", "blur", "noise"}
    for label, eps in (("1/255", 1 / 255), ("4/255", 4 / 255)):
        assert report.finding(key.format("max_perturbation", f",eps={label}")).value <= eps + 1e-6
        assert 0 <= report.finding(key.format("evasion_rate", f",eps={label}")).value <= 1
    assert report.probes["energy.inference"].n_findings > 0
    # Replication of the training digits, with the threshold calibrated on the held-out digits:
    # measured 1.6% [1.0, 2.6] generated, 1.1% [0.5, 2.4] held-out real digits above it.
    rep = report.finding("privacy.image_replication/replication_rate")
    held = report.finding("privacy.image_replication/heldout_rate")
    assert rep.n == 1000 and rep.evidence["n_train"] == 1258 and held.n == 539
    assert rep.value < 0.05 and 0 < held.value < 0.05
    # The contact sheet and the top pairs are embedded in the report, never linked.
    html = (Path(demo["out"]) / "digits-cvae-demo" / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 24 + 12 + 2 * 6 and "not found" not in html
    card = (Path(demo["out"]) / "digits-cvae-demo" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "privacy.image_replication/replication_rate" in card
    swd = report.finding("quality.sliced_wasserstein/swd_avg")
    assert swd.evidence["resolutions"] == [16] and swd.n == 539 and 0 < swd.value < 100
    assert swd.ci.low <= swd.value <= swd.ci.high and any("upsampled" in w for w in swd.warnings)


def test_digits_ddpm_part(demo):
    report = _report(demo, "digits-ddpm-demo")
    assert report.subject.source == "diffusers" and report.subject.details["pipeline"] == "DDPMPipeline"
    assert report.subject.details["scheduler"] == "DDIMScheduler"
    assert report.subject.details["training_scheduler"] == "DDPMScheduler"
    fid = report.finding("quality.image_fidelity/fid")
    assert fid.n == 1000 and fid.evidence["n_reference"] == 539 and fid.value > 0
    assert report.finding("quality.image_fidelity/gaussian_kl").value > 0
    nll = report.finding("quality.diffusion_likelihood/nll_bpd")
    terms = [report.finding(f"quality.diffusion_likelihood/{m}").value for m in ("prior_bpd", "diffusion_bpd",
                                                                                 "decoder_bpd")]
    # 8x8 digits with 17 grey levels in 256 bins: far below the 8 bits/dim of a uniform model.
    assert nll.n == 539 and 0 < nll.value < 8 and nll.value == pytest.approx(sum(terms))
    assert nll.ci.low < nll.value < nll.ci.high and nll.evidence["timesteps_per_image"] == 21
    assert report.probes["deepfake.image_detectability"].n_findings > 0
    assert report.probes["quality.visual_inspection"].status == "ok"
    assert report.probes["energy.inference"].n_findings > 0


def test_digits_robustness_part(demo):
    report = _report(demo, "digits-classifier-robustness-demo")
    curve = report.finding("robustness.classifier/robust_accuracy_area[attack=pgd]").evidence["points"]
    accs = [p["robust_accuracy"] for p in curve]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.9 and accs[-1] < 0.2
    # The int8 variant under the same attacks from the same starts, attacked with the float model's
    # gradients (straight-through): paired over the same 539 digits, robust accuracy barely moves.
    (int8,) = report.variants
    assert int8.name == "int8" and int8.overrides == {"quantization": "int8-dynamic"}
    assert any("straight-through" in note for note in int8.notes)
    key = "robustness.classifier/robust_accuracy[attack=pgd,eps=0.05]"
    base, q = report.finding(key), report.finding(key, "int8")
    assert q.delta.paired and q.delta.n_pairs == base.n == 539
    assert q.delta.value == pytest.approx(q.value - base.value) and abs(q.delta.value) < 0.05
    assert q.delta.ci.low <= q.delta.value <= q.delta.ci.high


def test_adult_fairness_part_equals_fairlearn(demo):
    import torch
    from fairlearn.metrics import demographic_parity_difference

    from audit.demo.fairness import adult_income_classifier, load_adult
    from audit.spec import load_spec

    report = _report(demo, "adult-income-fairness-demo")
    spec = load_spec(Path(demo["out"]) / "adult-income-fairness-demo" / "audit.yaml")
    clf = adult_income_classifier(**spec.subject.options)
    test = load_adult("test")
    with torch.no_grad():
        pred = (clf.logits(clf.table_inputs(test)).argmax(1) == 1).numpy().astype(int)
    y = (test["income"] == ">50K").to_numpy().astype(int)
    assert 0.82 < (pred == y).mean() < 0.88  # a plain MLP on Adult: about 0.85
    dp = report.finding("bias.classifier/demographic_parity_difference[attribute=sex]")
    assert dp.value == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=test["sex"]))
    assert dp.ci.low <= dp.value <= dp.ci.high
    assert [g.status for g in report.gates] == ["passed", "skipped"]


def test_minilm_association_part(demo):
    report = _report(demo, "minilm-association-demo")
    control = report.finding("bias.embedding_association/effect_size[test=flowers_insects_pleasantness]")
    assert control.value > 1.0 and control.evidence["p_value"] < 0.01  # measured: 1.70, p < 1e-3


def test_privacy_parts_show_what_the_fine_tune_memorised(demo):
    base = _report(demo, "smollm2-privacy-base-demo")
    lora = _report(demo, "smollm2-privacy-lora-demo")
    extraction = "privacy.extraction/exact_extraction_rate"
    assert base.finding(extraction).n == lora.finding(extraction).n == 10
    assert lora.finding(extraction).value > base.finding(extraction).value
    # Exposure: chance (about 1.2 bits) before, near the maximum log2(16) = 4 bits after.
    before, after = base.finding("privacy.extraction/exposure"), lora.finding("privacy.extraction/exposure")
    assert before.evidence["inserted"] and after.value > before.value + 1.0 and after.value <= 4 + 1e-9
    ratio = lora.finding("privacy.membership_inference/auroc[score=loss_ratio]")
    assert ratio.n == 20 and ratio.value > 0.8
    pii = [f for f in base.findings if f.probe == "privacy.pii_leakage"]
    assert {f.slice["entity"] for f in pii} == {"email", "phone", "card", "iban", "national_id", "any"}
    assert all(f.n == 12 and 0 <= f.value <= 1 for f in pii)
    assert any(f.path.startswith("adapter/") for f in lora.subject.files)


def test_smollm2_variants_part_pairs_every_variant_with_the_base(demo):
    report = _report(demo, "smollm2-variants-demo")
    lora, int8 = report.variants
    assert (lora.name, int8.name) == ("lora", "int8")
    assert lora.overrides["merge"] is True and int8.overrides == {"quantization": "int8-dynamic"}
    # Identified by their hashes: the same GGUF file, plus the adapter's files for the fine-tune.
    gguf = report.subject.files[0]
    assert [f.sha256 for f in lora.subject.files if f.path == gguf.path] == [gguf.sha256]
    assert any(f.path.startswith("adapter/") for f in lora.subject.files)
    assert any("GGUF" in note for note in int8.notes)
    base_ppl = report.finding("quality.perplexity/perplexity")
    assert base_ppl.n == 12 and base_ppl.variant is None and base_ppl.delta is None
    for name in ("lora", "int8"):
        ppl = report.finding("quality.perplexity/perplexity", name)
        d = ppl.delta
        assert d.paired and d.n_pairs == 12 and d.base_value == base_ppl.value
        assert d.value == pytest.approx(ppl.value - base_ppl.value) and d.ci.low <= d.value <= d.ci.high
        # Measured here: both raise perplexity far beyond the noise (the fine-tune on tickets forgot
        # general prose; dynamic int8 activations lose SmolLM2's outliers).
        assert d.ci.low > 0, (name, d)
        pairs = report.finding("bias.stereotype_pairs/stereotype_preference", name).delta
        assert pairs.paired and pairs.n_pairs == 47
        auroc = report.finding("deepfake.text_detectability/auroc[score=log_likelihood]", name)
        assert auroc.delta is not None and auroc.delta.ci is not None
        assert report.finding("quality.text_diversity/distinct_2", name).delta.n_pairs > 0
        assert report.probes["energy.inference"].status == "ok"
    memory = "energy.footprint/weight_bytes_memory"
    assert report.finding(memory, "int8").value < 0.6 * report.finding(memory).value
    # The adapter's own parameters (LoRA rank 16 on the last 6 blocks): under 1% of the model's.
    total = report.finding("energy.footprint/parameters_total").value
    assert 0 < report.finding("energy.footprint/parameters_trainable", "lora").value < 0.01 * total
    assert [g.status for g in report.gates] == ["passed", "passed", "passed"]
    # The reports show the variants side by side: each cell its value, delta and the delta's interval
    # (the HTML names the paired bootstrap in the cell's tooltip).
    folder = Path(demo["out"]) / "smollm2-variants-demo"
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "Variants side by side" in md and "| Finding | base | lora | int8 |" in md and "<br>Δ +" in md
    assert "paired-bootstrap" in (folder / "report.html").read_text(encoding="utf-8")
