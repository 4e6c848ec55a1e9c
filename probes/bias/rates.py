"""Rate metrics of binary classification as functions of confusion counts, the labels they
need, and the group-vs-rest tests on them (Fisher's exact test, Holm's correction).

A rate metric (selection rate, TPR, FPR, ...) is ``sum(cells in num) / sum(cells in den)`` of
a group's four confusion counts, which is what makes the engine's bootstrap a multinomial
draw per group (:mod:`probes.bias.engine`).

Example:
    >>> import numpy as np
    >>> RATE_METRICS["true_positive_rate"].from_counts(np.array([5, 1, 1, 3])).item()
    0.75
    >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.errors import InputError

__all__ = ["FN", "FP", "RATE_METRICS", "TN", "TP", "GapTest", "RateMetric", "binary_labels", "fisher_tests",
           "holm", "proportions"]


# Confusion cells in sklearn's ravel order: tn, fp, fn, tp.
TN, FP, FN, TP = 0, 1, 2, 3


@dataclass(frozen=True)
class RateMetric:
    """A metric that is a ratio of confusion counts: ``sum(cells in num) / sum(cells in den)``.

    ``fairlearn`` is the name of the Fairlearn (or scikit-learn) function with the same value,
    used for the point values through MetricFrame.
    """

    name: str
    num: tuple[int, ...]
    den: tuple[int, ...]
    higher_is_better: bool
    fairlearn: str
    #: What the denominator is, for the warning when it is empty ("no positives").
    den_label: str

    def from_counts(self, counts: np.ndarray) -> np.ndarray:
        """The metric from counts ``[..., 4]`` (nan where the denominator is 0)."""
        num = counts[..., list(self.num)].sum(-1).astype(np.float64)
        den = counts[..., list(self.den)].sum(-1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def successes_trials(self, counts: np.ndarray) -> tuple[int, int]:
        return int(counts[list(self.num)].sum()), int(counts[list(self.den)].sum())

    def fn(self) -> Callable[..., float]:
        import fairlearn.metrics as flm
        import sklearn.metrics as skm

        return getattr(flm, self.fairlearn, None) or getattr(skm, self.fairlearn)


_ALL = (TN, FP, FN, TP)
RATE_METRICS: dict[str, RateMetric] = {m.name: m for m in (
    RateMetric("selection_rate", (FP, TP), _ALL, True, "selection_rate", "rows"),
    RateMetric("accuracy", (TN, TP), _ALL, True, "accuracy_score", "rows"),
    RateMetric("true_positive_rate", (TP,), (FN, TP), True, "true_positive_rate", "positives (label 1)"),
    RateMetric("false_positive_rate", (FP,), (TN, FP), False, "false_positive_rate", "negatives (label 0)"),
    RateMetric("false_negative_rate", (FN,), (FN, TP), False, "false_negative_rate", "positives (label 1)"),
    RateMetric("true_negative_rate", (TN,), (TN, FP), True, "true_negative_rate", "negatives (label 0)"),
    RateMetric("precision", (TP,), (FP, TP), True, "precision_score", "predicted positives"),
    RateMetric("base_rate", (FN, TP), _ALL, True, "mean_prediction", "rows"),
)}
"""The built-in rate metrics (binary labels and predictions, 1 is the positive class)."""
# base_rate is the share of positive labels; MetricFrame gets it from y_true (see _point_fns).



@dataclass(frozen=True)
class GapTest:
    """One group against the rest of the data on one rate metric (Fisher's exact test)."""

    metric: str
    group: tuple[str, ...]
    value: float
    rest_value: float
    difference: float
    p_value: float
    p_holm: float = math.nan



def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), nan kept as nan.

    The i-th smallest of m p-values is multiplied by ``m - i + 1``, made monotone with a
    running maximum and capped at 1 (Holm 1979).

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def binary_labels(values: Any, *, what: str, positive: Any = None) -> np.ndarray:
    """``values`` as a 0/1 int array: equal to ``positive`` when given, else values in {0, 1}.

    Raises:
        InputError: the values are not binary (naming the values found) and no positive
            value was given, or ``positive`` does not occur.

    Example:
        >>> binary_labels([">50K", "<=50K"], what="label", positive=">50K").tolist()
        [1, 0]
    """
    import pandas as pd

    s = pd.Series(values)
    if s.isna().any():
        rows = s.index[s.isna()].tolist()
        raise InputError(f"{what}: {len(rows)} missing values (rows {some(rows)}); every row needs one")
    if positive is not None:
        match = s.astype(str) == str(positive)
        if not match.any():
            from audit.yamlsafe import yaml_word_hint

            raise InputError(f"{what}: no value equals the positive value {positive!r}; "
                             f"values found: {some(sorted(s.astype(str).unique()))}."
                             f"{yaml_word_hint(positive) if isinstance(positive, bool) else ''}")
        return match.to_numpy().astype(np.int64)
    uniq = pd.unique(s)
    if s.dtype == bool:
        return s.to_numpy().astype(np.int64)
    try:
        as_num = pd.to_numeric(s)
    except (ValueError, TypeError):
        as_num = None
    if as_num is None or not set(np.unique(as_num.to_numpy())) <= {0, 1}:
        raise InputError(
            f"{what}: binary metrics need labels in {{0, 1}} (1 = positive), got {len(uniq)} distinct values "
            f"{some([str(u) for u in uniq[:20]])}; say which value is the positive one (positive_label)"
        )
    return as_num.to_numpy().astype(np.int64)



def proportions(m: RateMetric, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    full = np.concatenate([counts, counts.sum(0, keepdims=True)])
    return full[:, list(m.num)].sum(1), full[:, list(m.den)].sum(1)



def fisher_tests(rate: Mapping[str, RateMetric], counts: np.ndarray, keys: list[tuple[str, ...]]) -> list[GapTest]:
    from scipy.stats import fisher_exact

    tests = []
    total = counts.sum(0)
    if len(keys) < 2:
        return tests
    for name, m in rate.items():
        for g, key in enumerate(keys):
            s_g, t_g = m.successes_trials(counts[g])
            s_r, t_r = m.successes_trials(total - counts[g])
            if t_g == 0 or t_r == 0:
                continue
            p = float(fisher_exact([[s_g, t_g - s_g], [s_r, t_r - s_r]]).pvalue)
            tests.append(GapTest(name, key, s_g / t_g, s_r / t_r, s_g / t_g - s_r / t_r, p))
    adjusted = holm([t.p_value for t in tests])
    return [GapTest(t.metric, t.group, t.value, t.rest_value, t.difference, t.p_value, float(a))
            for t, a in zip(tests, adjusted)]



def some(items: Sequence[Any], k: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")

