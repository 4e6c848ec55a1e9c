"""The statistics a gap is made of, per bootstrap resample: Fairlearn's difference and ratio
between groups and to the overall value, the row (or cluster) resampling for metrics that
are not rate metrics, and the percentile interval of the draws.

Example:
    >>> import numpy as np
    >>> gap_statistic(np.array([[0.2, 0.5, 0.4]]), np.array([0.4]), "difference").round(3).tolist()
    [0.3]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from audit.errors import InputError
from audit.findings import Interval

__all__ = ["gap_statistic", "percentile_interval", "resample_indices", "safe_metric"]


def gap_statistic(group_vals: np.ndarray, overall: np.ndarray, kind: str) -> np.ndarray:
    """Fairlearn's difference/ratio, per row of ``group_vals`` [B, G] (nan-aware)."""
    b = group_vals.shape[0]
    if group_vals.shape[1] == 0:
        return np.full(b, np.nan)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan rows give nan, as they should
        mx, mn = np.nanmax(group_vals, 1), np.nanmin(group_vals, 1)
        if kind == "difference":
            return mx - mn
        if kind == "ratio":
            return np.where(mx > 0, mn / np.where(mx > 0, mx, 1.0), np.nan)
        o = overall[:, None]
        if kind == "difference_to_overall":
            return np.nanmax(np.abs(group_vals - o), 1)
        if kind == "ratio_to_overall":
            # Fairlearn: min over groups of min(g/o, o/g); nan when a term is 0/0.
            r = np.fmin(group_vals / o, o / group_vals)
            r = np.where((group_vals == 0) & (o == 0), np.nan, r)
            r = np.where(np.isinf(r), 0.0, r)
            return np.nanmin(r, 1)
    raise ValueError(f"unknown gap kind {kind!r}")


def resample_indices(codes: np.ndarray, n_groups: int, rng: np.random.Generator, n_resamples: int,
                      clusters: Any):
    if clusters is None:
        # Stratified: each group resampled within itself, so group sizes stay fixed.
        members = [np.flatnonzero(codes == g) for g in range(n_groups)]
        for _ in range(n_resamples):
            yield np.concatenate([m[rng.integers(0, m.size, m.size)] for m in members if m.size])
    else:
        cl = np.asarray(clusters)
        if len(cl) != len(codes):
            raise InputError(f"clusters has {len(cl)} entries for {len(codes)} rows")
        ids, inverse = np.unique(cl, return_inverse=True)
        rows = [np.flatnonzero(inverse == i) for i in range(len(ids))]
        for _ in range(n_resamples):
            pick = rng.integers(0, len(ids), len(ids))
            yield np.concatenate([rows[i] for i in pick])


def safe_metric(fn: Callable[..., float], yt: np.ndarray, yp: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(fn(yt, yp))
        except (ValueError, ZeroDivisionError):
            return math.nan


def percentile_interval(draws: np.ndarray | None, confidence: float) -> Interval | None:
    if draws is None:
        return None
    x = np.asarray(draws, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(x, [alpha, 1 - alpha])
    return Interval(float(lo), float(hi), f"bootstrap-percentile-{round(confidence * 100, 2):g}")
