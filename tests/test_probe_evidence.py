"""The evidence the robustness and detectability probes record: curves with Wilson bands, the
clean confusion matrix, and per-sample rows from which the findings can be rebuilt."""

from __future__ import annotations

import json

import pytest
import torch

from audit.curves import curves_of, validate_curve
from audit.probe import ProbeContext, build_probe
from audit.stats import wilson_interval
from probes.robustness.classifier import load_labelled_inputs
from tests.robustness_support import digits_subject, write_digits

EPS = (0.05, 0.1, 0.3)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def robustness_run(tmp_path_factory):
    path = write_digits(tmp_path_factory.mktemp("d") / "digits.pt", 120)
    subject = digits_subject()
    probe = build_probe("robustness.classifier", {"eps": list(EPS), "steps": 3, "n_resamples": 200,
                                                  "attacks": ["fgsm", "pgd"], "per_class": False})
    ctx = ProbeContext(device="cpu", seed=3, data={"images": path}, probe_id="robustness.classifier")
    findings = {f.key: f for f in probe.run(subject, ctx)}
    return findings, ctx, subject, path


def test_robust_accuracy_and_attack_success_curves_have_wilson_bands(robustness_run):
    got, *_ = robustness_run
    n = 120
    for attack in ("fgsm", "pgd"):
        area = got[f"robustness.classifier/robust_accuracy_area[attack={attack}]"]
        curves = {c["chart"]: c for c in curves_of(area.evidence)}
        assert set(curves) == {"robust_accuracy_vs_eps", "attack_success_vs_eps"}
        ra = curves["robust_accuracy_vs_eps"]
        assert ra["series"] == attack and ra["x"] == [0.0, *EPS] and ra["x_ticks"] == ["0", "0.05", "0.1", "0.3"]
        clean = got["robustness.classifier/clean_accuracy"]
        assert ra["y"][0] == pytest.approx(clean.value)
        for eps, y, lo, hi in zip(EPS, ra["y"][1:], ra["y_low"][1:], ra["y_high"][1:]):
            f = got[f"robustness.classifier/robust_accuracy[attack={attack},eps={eps:g}]"]
            k = round(f.value * n)
            assert y == pytest.approx(f.value)
            assert (lo, hi) == pytest.approx((wilson_interval(k, n).low, wilson_interval(k, n).high))
        asr = curves["attack_success_vs_eps"]
        assert asr["y"][0] == 0.0
        for eps, y in zip(EPS, asr["y"][1:]):
            assert y == pytest.approx(got[f"robustness.classifier/attack_success_rate[attack={attack},eps={eps:g}]"].value)
        assert validate_curve(json.loads(json.dumps(ra))) == ra  # survives the JSON round trip


def test_clean_confusion_matrix_matches_a_direct_count(robustness_run):
    got, _, subject, path = robustness_run
    x, y = load_labelled_inputs(path, input_range=(0.0, 1.0))
    pred = subject.logits(x).argmax(1)
    cm = got["robustness.classifier/clean_accuracy"].evidence["confusion_matrix"]
    assert cm["labels"] == [str(i) for i in range(10)] and cm["rows"] == "true"
    for t in range(10):
        for p in range(10):
            assert cm["counts"][t][p] == int(((y == t) & (pred == p)).sum())
    diagonal = sum(cm["counts"][i][i] for i in range(10))
    assert diagonal / 120 == pytest.approx(got["robustness.classifier/clean_accuracy"].value)


def test_samples_rebuild_the_robust_accuracy(robustness_run):
    got, ctx, *_ = robustness_run
    rows = ctx.samples.rows
    assert ctx.samples.offered == len(rows) == 120 * (1 + 2 * len(EPS))
    clean = [r for r in rows if r["metric"] == "clean_correct"]
    assert sum(r["score"] for r in clean) / 120 == pytest.approx(got["robustness.classifier/clean_accuracy"].value)
    for attack in ("fgsm", "pgd"):
        for j, eps in enumerate(EPS):
            s = json.dumps({"attack": attack, "eps": f"{eps:g}"}, sort_keys=True)
            mine = [r for r in rows if r["slice"] == s]
            assert len(mine) == 120
            value = got[f"robustness.classifier/robust_accuracy[attack={attack},eps={eps:g}]"].value
            assert sum(r["score"] for r in mine) / 120 == pytest.approx(value)
            seeds = {r["seed"] for r in mine}
            # PGD's random starts come from the attack's seed and the sample's id; FGSM draws none.
            assert seeds == ({ctx.child_seed(f"pgd:{j}")} if attack == "pgd" else {None})
            extra = json.loads(mine[0]["extra"])
            assert set(extra) >= {"data_index", "sample_id", "attack_success", "perturbation"}
            assert extra["perturbation"] <= eps * (1 + 1e-5)


# -- deepfake.image_detectability -----------------------------------------------------------------
@pytest.fixture(scope="module")
def detectability_run(tmp_path_factory):
    from tests.deepfake_fakes import generator_subject, write_real

    tmp = tmp_path_factory.mktemp("det")
    real = write_real(tmp / "real", 24)
    subject = generator_subject(shift=0.7)
    probe = build_probe("deepfake.image_detectability", {
        "feature": "tests.image_fakes:tiny_feature_net", "folds": 3, "n_samples": 24, "batch_size": 8,
        "postprocess": ["jpeg:80", "jpeg:40", "blur:1"], "eps": ["2/255", "8/255"], "attack_steps": 2,
        "n_resamples": 200})
    ctx = ProbeContext(data={"reference": real}, probe_id="deepfake.image_detectability", seed=5,
                       cache_dir=tmp / "cache")
    findings = {f.key: f for f in probe.run(subject, ctx)}
    return findings, probe, ctx, subject


def _det_key(metric, **sl):
    return "deepfake.image_detectability/" + metric + "[" + ",".join(f"{k}={sl[k]}" for k in sorted(sl)) + "]"


def test_detectability_samples_rebuild_the_auroc_and_name_the_seeds(detectability_run):
    from sklearn.metrics import roc_auc_score

    got, probe, ctx, subject = detectability_run
    rows = [r for r in ctx.samples.rows if r["metric"] == "detector_score"]
    assert len(rows) == 48 * 4  # 24 real + 24 generated images, clean and after 3 steps
    for step in ("none", "jpeg:80", "jpeg:40", "blur:1"):
        mine = [r for r in rows if json.loads(r["slice"]) == {"detector": "linear_probe", "postprocess": step}]
        y = [r["label"] == "generated" for r in mine]
        auroc = got[_det_key("auroc", detector="linear_probe", postprocess=step)].value
        assert roc_auc_score(y, [r["score"] for r in mine]) == pytest.approx(auroc)
        assert {r["fold"] for r in mine} == {0, 1, 2}
    real_rows = [r for r in rows if r["label"] == "real"]
    assert all(r["thumbnail"] and r["thumbnail"].endswith(".png") and r["seed"] is None for r in real_rows)
    # A generated image is made again from its recorded seed: batch i of a callable comes from seed + i.
    fake, _ = probe._generated_images(subject, 24, "RGB", (16, 16), ctx)
    for r in [r for r in rows if r["label"] == "generated"][:24:7]:
        extra = json.loads(r["extra"])
        again = next(iter(subject.generate(8, seed=r["seed"], batch_size=8)))[extra["in_batch"]]
        j = int(r["item"].removeprefix("generated[").removesuffix("]"))
        assert torch.equal(again, fake[j])


def test_detectability_curves_under_post_processing_and_attack(detectability_run):
    got, _, ctx, _ = detectability_run
    auroc = got[_det_key("auroc", detector="linear_probe", postprocess="none")]
    curves = {c["chart"]: c for c in curves_of(auroc.evidence)}
    assert set(curves) == {"auroc_under_jpeg", "auroc_under_blur"}
    jpeg = curves["auroc_under_jpeg"]
    assert jpeg["x_ticks"] == ["none", "jpeg:80", "jpeg:40"] and jpeg["series"] == "linear_probe"
    for label, y, lo, hi in zip(jpeg["x_ticks"], jpeg["y"], jpeg["y_low"], jpeg["y_high"]):
        f = got[_det_key("auroc", detector="linear_probe", postprocess=label)]
        assert (y, lo, hi) == pytest.approx((f.value, f.ci.low, f.ci.high))
    det = got[_det_key("detection_rate", detector="linear_probe")]
    attack = {c["chart"]: c for c in curves_of(det.evidence)}
    evasion = attack["evasion_rate_vs_eps"]
    assert evasion["x_ticks"] == ["0", "2/255", "8/255"] and evasion["y"][0] == 0.0
    for eps, y in zip(("2/255", "8/255"), evasion["y"][1:]):
        f = got[_det_key("evasion_rate", detector="linear_probe", eps=eps)]
        assert y == pytest.approx(f.value, nan_ok=True)
        evaded = [r for r in ctx.samples.rows if r["metric"] == "evaded"
                  and json.loads(r["slice"]) == {"detector": "linear_probe", "eps": eps}]
        detected = [r for r in evaded if json.loads(r["extra"])["detected_clean"]]
        assert len(evaded) == det.n
        if detected:
            assert sum(r["score"] for r in detected) / len(detected) == pytest.approx(f.value)
