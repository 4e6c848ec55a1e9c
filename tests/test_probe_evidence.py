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
