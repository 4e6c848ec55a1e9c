"""probes.deepfake.metrics against scikit-learn and SciPy on the same scores.

References: ``sklearn.metrics.roc_auc_score``, ``average_precision_score``, ``roc_curve``
(with ``drop_intermediate=False``), the EER found with ``scipy.optimize.brentq`` on the
interpolated ROC (the usual recipe), and hand-derived numbers for the threshold and the
accuracies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from audit.errors import InputError
from audit.findings import AuditReport, SubjectIdentity
from probes.deepfake.metrics import (
    MIN_PER_CLASS,
    accuracy_at_threshold,
    auroc,
    average_precision,
    calibrate_threshold,
    calibration_split,
    check_classes,
    detection_findings,
    equal_error_rate,
    roc_curve,
    stratified_bootstrap,
    summarize_detection,
    tpr_at_fpr,
)


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for k in range(12):
        n_real, n_fake = rng.integers(5, 80, size=2)
        y = np.r_[np.zeros(n_real, int), np.ones(n_fake, int)]
        s = np.r_[rng.normal(0, 1, n_real), rng.normal(rng.uniform(-0.5, 2.5), 1, n_fake)]
        if k % 3 == 0:
            s = np.round(s, 1)  # ties
        if k % 4 == 1:
            perm = rng.permutation(y.size)
            y, s = y[perm], s[perm]
        out.append((y, s))
    out.append((np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])))  # all tied
    out.append((np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])))  # perfectly wrong
    return out


CASES = _cases()


@pytest.mark.parametrize(("y", "s"), CASES)
def test_roc_auroc_and_ap_equal_scikit_learn(y, s):
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert math.isinf(thr[0])
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def _eer_reference(y, s):
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0)


@pytest.mark.parametrize(("y", "s"), CASES[:12])
def test_eer_equals_the_brentq_recipe(y, s):
    assert equal_error_rate(y, s) == pytest.approx(_eer_reference(y, s), abs=1e-9)


def test_eer_by_hand():
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 1.0
    # ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): FPR = FNR = 0.5 on the horizontal segment
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == pytest.approx(0.5)


@pytest.mark.parametrize(("y", "s"), CASES)
@pytest.mark.parametrize("target", [0.0, 0.01, 0.1, 0.3])
def test_tpr_at_fpr_equals_scikit_learn_roc(y, s, target):
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    assert tpr_at_fpr(y, s, target) == pytest.approx(sk_tpr[sk_fpr <= target].max())


def test_calibrated_threshold_and_accuracies_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    # ROC points: thr .9 (0,1/3), .7 (0,2/3), .6 (1/3,2/3), .5 (1/3,1), ...; J best 2/3 at .7 and .5;
    # the first (higher) wins, halfway to the next score .6.
    assert calibrate_threshold(y, s) == pytest.approx(0.65)
    assert accuracy_at_threshold(y, s, 0.65) == pytest.approx((1.0, 2 / 3, 5 / 6))
    assert accuracy_at_threshold(y, s, 0.45) == pytest.approx((2 / 3, 1.0, 5 / 6))
    assert accuracy_at_threshold(y, s, 0.55) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # perfectly separated: halfway between the top real and the lowest generated score
    assert calibrate_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9]) == pytest.approx(0.5)
    # no threshold helps: nothing is called generated
    t = calibrate_threshold([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert t > 0.9 and accuracy_at_threshold([0, 1], [0.9, 0.1], t) == (1.0, 0.0, 0.5)


def test_threshold_is_fixed_on_calibration_only():
    # Same test data, two calibration sets: the test accuracies follow the calibration threshold.
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    s = np.r_[rng.normal(0, 1, 40), rng.normal(1.5, 1, 40)]
    cal = calibration_split(list(range(40)) * 2, 0.5, np.random.default_rng(2))
    summary = summarize_detection(y, s, cal, n_resamples=200)
    expected = calibrate_threshold(y[cal], s[cal])
    assert summary.threshold == expected
    real, fake, bal = accuracy_at_threshold(y[~cal], s[~cal], expected)
    m = summary.metrics
    assert (m["real_accuracy"].value, m["fake_accuracy"].value, m["balanced_accuracy"].value) == (real, fake, bal)
    assert m["balanced_accuracy"].n == int((~cal).sum()) == summary.n_test
    assert m["auroc"].value == pytest.approx(roc_auc_score(y, s))
    assert m["auroc"].n == 80


def test_calibration_split_keeps_groups_together():
    groups = [f"p{i // 2}" for i in range(40)]
    cal = calibration_split(groups, 0.3, np.random.default_rng(0))
    assert cal.sum() == 12
    for k in range(0, 40, 2):
        assert cal[k] == cal[k + 1]
    with pytest.raises(ValueError):
        calibration_split(groups, 1.0, np.random.default_rng(0))


def test_stratified_bootstrap_keeps_class_sizes_and_covers_the_value():
    seen = []

    def stat(y, s):
        seen.append((int(y.sum()), y.size))
        return auroc(y, s)

    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(30, int), np.ones(12, int)]
    s = np.r_[rng.normal(0, 1, 30), rng.normal(1, 1, 12)]
    iv = stratified_bootstrap(y, s, stat, n_resamples=300, seed=0)
    assert set(seen) == {(12, 42)}
    assert iv.low < auroc(y, s) < iv.high
    assert iv == stratified_bootstrap(y, s, auroc, n_resamples=300, seed=0)  # reproducible


def test_summary_intervals_and_findings_round_trip():
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    s = np.r_[rng.normal(0, 1, 30), rng.normal(1.2, 1, 30)]
    cal = calibration_split(list(range(30)) * 2, 1 / 3, rng)
    summary = summarize_detection(y, s, cal, n_resamples=200, seed=5)
    names = ["auroc", "average_precision", "eer", "tpr_at_fpr_1e-02", "tpr_at_fpr_1e-03",
             "balanced_accuracy", "real_accuracy", "fake_accuracy"]
    assert list(summary.metrics) == names
    for name, m in summary.metrics.items():
        assert m.ci is not None and m.ci.low <= m.value <= m.ci.high, name
    assert summary.metrics["real_accuracy"].ci.method == "wilson-95"
    # 30 real samples cannot resolve 1% or 0.1%: said so
    assert any("cannot resolve an FPR of 0.01" in w for w in summary.warnings)
    findings = detection_findings("deepfake.test", summary, slice={"score": "x"}, evidence={"extra": 1})
    assert [f.metric for f in findings] == names
    assert findings[0].evidence["extra"] == 1 and len(findings[0].evidence["roc"]["fpr"]) <= 101
    assert findings[2].higher_is_better is False and findings[0].higher_is_better is True
    report = AuditReport(name="m", subject=SubjectIdentity(name="s", kind="text-generator", source="python"),
                         findings=tuple(findings))
    assert AuditReport.from_json(report.to_json()).to_json() == report.to_json()


def test_too_few_samples_is_an_input_error_and_imbalance_warns():
    with pytest.raises(InputError, match=f"at least {MIN_PER_CLASS} real and {MIN_PER_CLASS} generated"):
        check_classes([0] * 50 + [1] * (MIN_PER_CLASS - 1))
    warnings = check_classes([0] * 100 + [1] * 20)
    assert any("strong class imbalance (100 real, 20 generated)" in w for w in warnings)
    assert not any("imbalance" in w for w in check_classes([0] * 30 + [1] * 20))
    y = np.r_[np.zeros(100, int), np.ones(20, int)]
    s = np.r_[np.random.default_rng(0).normal(0, 1, 100), np.random.default_rng(1).normal(1, 1, 20)]
    cal = np.zeros(120, bool)
    with pytest.raises(InputError, match="calibration split has 0 real and 0 generated"):
        summarize_detection(y, s, cal, n_resamples=100)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [([0, 1], [0.1], "equal length"), ([0, 2], [0.1, 0.2], "0 \\(real\\) or 1"),
     ([1, 1], [0.1, 0.2], "both classes"), ([0, 1], [0.1, float("nan")], "finite")],
)
def test_bad_inputs_raise_value_errors(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        auroc(labels, scores)
