"""Inter-rater agreement: Krippendorff's alpha (nominal, ordinal, interval) and Cohen's kappa.

Krippendorff's alpha from the coincidence matrix (Krippendorff, "Computing Krippendorff's
Alpha-Reliability", 2011): ``alpha = 1 - D_o / D_e`` with the observed disagreement over the
pairable values within units and the expected one over all pairable values. Units with fewer
than two ratings are not pairable and drop out; missing ratings are allowed.

Example:
    >>> krippendorff_alpha([[1, 1, 2], [1, 1, 2]], level="nominal")
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["krippendorff_alpha", "cohen_kappa"]

_LEVELS = ("nominal", "ordinal", "interval")


def _coincidences(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and coincidence matrix of a raters x units array (NaN = missing)."""
    values = np.unique(data[~np.isnan(data)])
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for col in data.T:
        vals = col[~np.isnan(col)]
        m = len(vals)
        if m < 2:
            continue
        counts = np.zeros(len(values))
        for v in vals:
            counts[index[v]] += 1
        # Pairs of distinct ratings within the unit, each weighted 1 / (m - 1).
        o += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    return values, o


def _delta2(values: np.ndarray, n_c: np.ndarray, level: str) -> np.ndarray:
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "interval":
        return np.subtract.outer(values, values) ** 2
    # Ordinal: (sum of n_g from c to k, minus half of n_c and n_k)^2.
    cum = np.concatenate([[0.0], np.cumsum(n_c)])
    i, k = np.meshgrid(np.arange(len(values)), np.arange(len(values)), indexing="ij")
    lo, hi = np.minimum(i, k), np.maximum(i, k)
    between = cum[hi + 1] - cum[lo]
    return (between - (n_c[i] + n_c[k]) / 2) ** 2


def krippendorff_alpha(data: Sequence[Sequence[Any]] | np.ndarray, *, level: str = "nominal") -> float:
    """Krippendorff's alpha of ``data``: one row per rater, one column per unit, NaN or None
    where a rater did not rate a unit; values are numbers (categories coded as numbers).

    Returns NaN when there is nothing to compare (fewer than two pairable values, or a single
    value used throughout, where the expected disagreement is 0).
    """
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {', '.join(_LEVELS)}, got {level!r}")
    arr = np.array([[np.nan if v is None else float(v) for v in row] for row in data], dtype=float)
    if arr.ndim != 2:
        raise ValueError("data must be raters x units")
    values, o = _coincidences(arr)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n < 2 or len(values) < 2:
        return math.nan
    d2 = _delta2(values, n_c, level)
    d_o = (o * d2).sum()
    d_e = (np.outer(n_c, n_c) * d2).sum() / (n - 1)
    return float(1.0 - d_o / d_e) if d_e > 0 else math.nan


def cohen_kappa(a: Sequence[Any], b: Sequence[Any], *, weights: str | None = None) -> float:
    """Cohen's kappa of two raters over the same items (``weights``: None, "linear" or
    "quadratic" for ordered categories, as scikit-learn's ``cohen_kappa_score``)."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"two raters need the same non-empty items, got {len(a)} and {len(b)} ratings")
    labels = sorted(set(a) | set(b))
    idx = {v: i for i, v in enumerate(labels)}
    k = len(labels)
    conf = np.zeros((k, k))
    for x, y in zip(a, b):
        conf[idx[x], idx[y]] += 1
    expected = np.outer(conf.sum(axis=1), conf.sum(axis=0)) / conf.sum()
    if weights is None:
        w = 1.0 - np.eye(k)
    elif weights in ("linear", "quadratic"):
        d = np.abs(np.subtract.outer(np.arange(k), np.arange(k))).astype(float)
        w = d if weights == "linear" else d ** 2
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    denom = (w * expected).sum()
    return float(1.0 - (w * conf).sum() / denom) if denom > 0 else math.nan
