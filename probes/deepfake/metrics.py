"""Detection metrics shared by the deepfake probes (pure NumPy: scores and labels in, numbers out).

Convention: ``labels`` are 1 for generated ("fake") samples and 0 for real ones; ``scores``
are higher for "more likely generated". Threshold-free metrics (AUROC, average precision,
EER, TPR at a fixed FPR) read the whole score distribution; the accuracies need a decision
threshold, which :func:`calibrate_threshold` fixes on a *calibration* split and which is
then applied, unchanged, to the test split: it is never chosen on the labels it is scored on.

Every function here is checked against scikit-learn (``roc_auc_score``,
``average_precision_score``, ``roc_curve``) in ``tests/test_detection_metrics.py``.

Example:
    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> scores = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
    >>> round(auroc(labels, scores), 4), round(equal_error_rate(labels, scores), 4)
    (0.7778, 0.3333)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.errors import InputError
from audit.findings import Finding, Interval
from audit.stats import wilson_interval

__all__ = [
    "MIN_PER_CLASS",
    "DetectionSummary",
    "MetricValue",
    "accuracy_at_threshold",
    "auroc",
    "average_precision",
    "calibrate_threshold",
    "calibration_split",
    "check_classes",
    "detection_findings",
    "equal_error_rate",
    "roc_curve",
    "stratified_bootstrap",
    "summarize_detection",
    "tpr_at_fpr",
]

#: Fewest samples of each class a detectability audit accepts: below it AUROC moves by
#: 1/n per sample and no interval means anything.
MIN_PER_CLASS = 10
#: A class more than this many times larger than the other is a strong imbalance.
IMBALANCE_RATIO = 4.0
#: The FPR targets reported as ``tpr_at_fpr_<target>``.
FPR_TARGETS = (0.01, 0.001)


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (generated)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    y = y.astype(np.int64)
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("labels must hold both classes (0 = real, 1 = generated)")
    return y, s


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`roc_curve` without the input checks (for bootstrap loops)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # The last index of each run of equal scores: one ROC point per distinct threshold.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    n_pos = tps[-1]
    return np.r_[0.0, fps / (y.size - n_pos)], np.r_[0.0, tps / n_pos], np.r_[np.inf, s[last]]


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    d = fpr - (1.0 - tpr)  # increases along the curve, from -1 to +1
    i = int(np.argmax(d >= 0))
    if d[i] == 0 or i == 0:
        return float(fpr[i])
    t = -d[i - 1] / (d[i] - d[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _threshold_free(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC, AP, EER and TPR at each FPR target from one ROC curve (unchecked inputs).

    AUROC is the trapezoid area under the ROC, which equals the Mann-Whitney statistic
    with ties counted one half (:func:`auroc`)."""
    fpr, tpr, _ = _roc(y, s)
    n_pos = tpr.size and y.sum()
    tps, fps = tpr[1:] * n_pos, fpr[1:] * (y.size - n_pos)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(tpr) * (tps / (tps + fps))))
    tprs = [float(tpr[fpr <= t + 1e-12].max()) for t in FPR_TARGETS]
    return np.array([area, ap, _eer(fpr, tpr), *tprs])


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, as scikit-learn's
    ``roc_curve(..., drop_intermediate=False)``: ``thresholds`` decrease from ``+inf`` and a
    sample is called generated when ``score >= threshold``.

    Example:
        >>> fpr, tpr, thr = roc_curve([0, 1, 1], [0.2, 0.7, 0.2])
        >>> fpr.tolist(), tpr.tolist(), thr.tolist()
        ([0.0, 0.0, 1.0], [0.0, 0.5, 1.0], [inf, 0.7, 0.2])
    """
    return _roc(*_check(labels, scores))


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve: the probability that a generated sample scores above a real
    one, ties counting one half (the Mann-Whitney U statistic over n_real * n_fake).

    Example:
        >>> auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])
        0.875
    """
    y, s = _check(labels, scores)
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks: ties count one half
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: Any, scores: Any) -> float:
    """``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds (scikit-learn's definition:
    a step function, no interpolation). Depends on the share of generated samples.

    Example:
        >>> round(average_precision([0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8]), 4)
        0.5833
    """
    y, s = _check(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    n_pos, n_neg = y.sum(), y.size - y.sum()
    tps, fps = tpr[1:] * n_pos, fpr[1:] * n_neg
    precision = tps / (tps + fps)
    return float(np.sum(np.diff(tpr) * precision))


def equal_error_rate(labels: Any, scores: Any) -> float:
    """The error rate where the false positive rate equals the false negative rate, read off
    the ROC polyline by linear interpolation between its two points around the crossing.

    Example:
        >>> equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])   # perfectly separated
        0.0
    """
    return _eer(*roc_curve(labels, scores)[:2])


def tpr_at_fpr(labels: Any, scores: Any, max_fpr: float) -> float:
    """The highest true positive rate at a threshold whose false positive rate is at most
    ``max_fpr`` (no interpolation: a threshold that exists on this sample).

    Example:
        >>> tpr_at_fpr([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9], 0.0)
        0.5
    """
    if not 0 <= max_fpr <= 1:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr!r}")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def calibrate_threshold(labels: Any, scores: Any) -> float:
    """The threshold that maximises balanced accuracy (Youden's J) on these (calibration)
    samples, placed halfway between the two scores it separates. Apply it to other data.

    Example:
        >>> calibrate_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9])
        0.5
    """
    y, s = _check(labels, scores)
    fpr, tpr, thr = roc_curve(y, s)
    j = tpr - fpr
    # The first (highest-threshold) of equal optima; 2/3 - 0 and 1 - 1/3 differ in the last bit.
    best = int(np.argmax(j >= j.max() - 1e-12))
    if best == 0:
        return float(np.nextafter(thr[1], np.inf))  # call nothing generated
    if best == thr.size - 1:
        return float(thr[best])  # call everything generated
    return float((thr[best] + thr[best + 1]) / 2)


def accuracy_at_threshold(labels: Any, scores: Any, threshold: float) -> tuple[float, float, float]:
    """``(real_accuracy, fake_accuracy, balanced_accuracy)`` when ``score >= threshold`` is
    called generated: true negative rate, true positive rate and their mean.

    Example:
        >>> accuracy_at_threshold([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9], 0.55)
        (0.5, 0.5, 0.5)
    """
    y, s = _check(labels, scores)
    called = s >= threshold
    real = float(np.mean(~called[y == 0]))
    fake = float(np.mean(called[y == 1]))
    return real, fake, (real + fake) / 2


def check_classes(labels: Any, *, min_per_class: int = MIN_PER_CLASS, what: str = "detectability") -> list[str]:
    """Refuse too few samples per class; warn on strong imbalance.

    Raises:
        InputError: a class has fewer than ``min_per_class`` samples (the message says how many).

    Returns:
        Warnings to attach to the findings (empty when the classes are balanced enough).
    """
    y = np.asarray(labels)
    n_fake, n_real = int((y == 1).sum()), int((y == 0).sum())
    if min(n_fake, n_real) < min_per_class:
        raise InputError(
            f"{what}: needs at least {min_per_class} real and {min_per_class} generated samples, got "
            f"{n_real} real and {n_fake} generated; give more inputs"
        )
    warnings = []
    if max(n_fake, n_real) > IMBALANCE_RATIO * min(n_fake, n_real):
        warnings.append(
            f"strong class imbalance ({n_real} real, {n_fake} generated): read balanced accuracy, AUROC and "
            f"EER, which do not depend on the class shares; average precision does"
        )
    for target in FPR_TARGETS:
        if n_real * target < 1:
            warnings.append(
                f"{n_real} real samples cannot resolve an FPR of {target:g} (needs {math.ceil(1 / target)}): "
                f"tpr_at_fpr_{target:.0e} is the TPR with no real sample flagged"
            )
    return warnings


def calibration_split(groups: Sequence[Any], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask over samples: True for the calibration split, drawn by ``group``
    (e.g. the prompt a real and a generated sample share, so a pair never straddles the split).

    Example:
        >>> int(calibration_split(["a", "a", "b", "b"], 0.5, np.random.default_rng(0)).sum())
        2
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    keys = list(dict.fromkeys(groups))
    n_cal = min(max(1, round(fraction * len(keys))), len(keys) - 1)
    chosen = {keys[i] for i in rng.permutation(len(keys))[:n_cal]}
    return np.array([g in chosen for g in groups], dtype=bool)


def stratified_bootstrap(
    labels: Any,
    scores: Any,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval | None:
    """Percentile bootstrap interval of ``statistic(labels, scores)``, resampling real and
    generated samples separately so that every resample keeps the class sizes.

    Example:
        >>> iv = stratified_bootstrap([0] * 20 + [1] * 20, np.r_[np.arange(20), np.arange(20) + 10.0], auroc)
        >>> iv.low < 0.875 < iv.high
        True
    """
    values = _bootstrap_values(labels, scores, statistic, n_resamples=n_resamples, seed=seed)
    return None if values is None else _percentile(values, confidence)


def _bootstrap_values(labels: Any, scores: Any, statistic: Callable[[np.ndarray, np.ndarray], Any], *,
                      n_resamples: int, seed: int) -> np.ndarray | None:
    """``statistic`` on each stratified resample: ``[n_resamples]`` or ``[n_resamples, k]``."""
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size < 2 or neg.size < 2:
        return None
    # All resample indices drawn at once; real first, then generated, in every row.
    idx = np.concatenate([neg[rng.integers(0, neg.size, (n_resamples, neg.size))],
                          pos[rng.integers(0, pos.size, (n_resamples, pos.size))]], axis=1)
    return np.array([statistic(y[row], s[row]) for row in idx], dtype=np.float64)


def _percentile(values: np.ndarray, confidence: float) -> Interval | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return Interval(float(lo), float(hi), f"bootstrap-stratified-percentile-{round(confidence * 100, 2):g}")


@dataclass(frozen=True)
class MetricValue:
    """One detection metric: value, interval, sample count and direction (the detector's)."""

    value: float
    ci: Interval | None
    n: int
    higher_is_better: bool
    unit: str = ""


@dataclass(frozen=True)
class DetectionSummary:
    """Every detection metric of one set of scores (see :func:`summarize_detection`)."""

    metrics: Mapping[str, MetricValue]
    threshold: float
    n_real: int
    n_fake: int
    n_calibration: int
    n_test: int
    warnings: tuple[str, ...] = ()
    roc: Mapping[str, list[float]] = field(default_factory=dict)


def summarize_detection(
    labels: Any,
    scores: Any,
    calibration: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_per_class: int = MIN_PER_CLASS,
    what: str = "detectability",
) -> DetectionSummary:
    """AUROC, average precision, EER, TPR at FPR 1% and 0.1% (on all samples: a zero-shot
    score has nothing fitted), and real / generated / balanced accuracy on the test split at
    the threshold calibrated on the ``calibration`` split, each with an interval.

    Intervals: stratified bootstrap for the threshold-free metrics and balanced accuracy,
    Wilson for the two per-class accuracies (each a proportion of independent samples).
    For a fitted detector, pass out-of-fold scores (cross-validation) instead.

    Args:
        labels: 1 generated, 0 real.
        scores: higher means more likely generated.
        calibration: boolean mask of the samples the threshold is fixed on; the others are the test split.

    Raises:
        InputError: fewer than ``min_per_class`` samples of a class overall, or fewer than 2 of
            a class in either split.
    """
    y, s = _check(labels, scores)
    cal = np.asarray(calibration, dtype=bool)
    if cal.shape != y.shape:
        raise ValueError(f"calibration mask has shape {cal.shape}, expected {y.shape}")
    warnings = check_classes(y, min_per_class=min_per_class, what=what)
    test = ~cal
    for name, part in (("calibration", cal), ("test", test)):
        k_fake, k_real = int(y[part].sum()), int((y[part] == 0).sum())
        if min(k_fake, k_real) < 2:
            raise InputError(f"{what}: the {name} split has {k_real} real and {k_fake} generated samples; "
                             f"each split needs at least 2 of each (give more inputs)")
    boot = {"n_resamples": n_resamples, "confidence": confidence}

    # The threshold-free metrics share one ROC curve per resample.
    names = ["auroc", "average_precision", "eer", *(f"tpr_at_fpr_{t:.0e}" for t in FPR_TARGETS)]
    higher = [True, True, False, *(True for _ in FPR_TARGETS)]
    point = _threshold_free(y, s)
    resampled = _bootstrap_values(y, s, _threshold_free, n_resamples=n_resamples, seed=seed + 1)
    metrics: dict[str, MetricValue] = {
        name: MetricValue(float(point[k]), None if resampled is None else _percentile(resampled[:, k], confidence),
                          y.size, higher[k])
        for k, name in enumerate(names)
    }

    threshold = calibrate_threshold(y[cal], s[cal])
    yt, st = y[test], s[test]
    real_acc, fake_acc, bal = accuracy_at_threshold(yt, st, threshold)
    n_real_t, n_fake_t = int((yt == 0).sum()), int(yt.sum())
    metrics["balanced_accuracy"] = MetricValue(
        bal, stratified_bootstrap(yt, st, lambda yy, ss: ((ss[yy == 0] < threshold).mean()
                                                          + (ss[yy == 1] >= threshold).mean()) / 2,
                                  seed=seed + 7, **boot), yt.size, True)
    metrics["real_accuracy"] = MetricValue(
        real_acc, wilson_interval(round(real_acc * n_real_t), n_real_t, confidence=confidence), n_real_t, True)
    metrics["fake_accuracy"] = MetricValue(
        fake_acc, wilson_interval(round(fake_acc * n_fake_t), n_fake_t, confidence=confidence), n_fake_t, True)

    fpr, tpr, _ = roc_curve(y, s)
    keep = np.unique(np.linspace(0, fpr.size - 1, min(fpr.size, 101)).round().astype(int))
    return DetectionSummary(
        metrics=metrics, threshold=threshold, n_real=int((y == 0).sum()), n_fake=int(y.sum()),
        n_calibration=int(cal.sum()), n_test=int(test.sum()), warnings=tuple(warnings),
        roc={"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist()},
    )


def detection_findings(
    probe: str,
    summary: DetectionSummary,
    *,
    slice: Mapping[str, str] | None = None,
    warnings: Sequence[str] = (),
    evidence: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """The findings of one :class:`DetectionSummary` (the first carries the ROC curve).

    Directions are the detector's: a higher AUROC means the subject's output is easier to
    tell from real data. Gate on the side you care about (``max`` to require that generated
    content blends in, ``min`` to require that it stays detectable).
    """
    notes = tuple(warnings) + tuple(summary.warnings)
    out = []
    for k, (name, m) in enumerate(summary.metrics.items()):
        ev: dict[str, Any] = {}
        if k == 0:
            ev = {"roc": dict(summary.roc), "threshold": summary.threshold, "n_real": summary.n_real,
                  "n_fake": summary.n_fake, "n_calibration": summary.n_calibration, "n_test": summary.n_test,
                  **(evidence or {})}
        elif name in ("balanced_accuracy", "real_accuracy", "fake_accuracy"):
            ev = {"threshold": summary.threshold, "split": "test"}
        out.append(Finding(probe=probe, metric=name, value=m.value, higher_is_better=m.higher_is_better,
                           unit=m.unit, ci=m.ci, n=m.n, slice=dict(slice or {}), warnings=notes, evidence=ev))
    return out
