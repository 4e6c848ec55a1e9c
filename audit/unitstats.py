"""The statistics that recompute a finding from its per-unit values (:class:`audit.findings.Units`).

A statistic takes ``(columns, weights)``: ``columns`` maps a column name to a 1-D array with
one value per unit, ``weights`` says how often each unit is drawn (all ones: the finding's
own value; a bootstrap resample: multinomial counts). Statistics registered as
``vectorized`` also accept a ``[B, n]`` weight matrix and return ``B`` values, which is how
:mod:`audit.units` evaluates thousands of resamples as a few matrix products.

Probes add their own with :func:`register_statistic`.

Example:
    >>> cols = {"num": np.array([2.0, 4.0]), "den": np.array([1.0, 3.0])}
    >>> float(STATISTICS["ratio"](cols, np.ones(2)))    # (2 + 4) / (1 + 3)
    1.5
    >>> float(STATISTICS["ratio"](cols, np.array([2.0, 0.0])))   # the first unit twice
    2.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["STATISTICS", "StatisticInfo", "register_statistic", "statistic_info"]

Columns = Mapping[str, np.ndarray]
StatisticFn = Callable[[Columns, np.ndarray], Any]

#: name -> fn(columns, weights) -> float (or ``[B]`` values for a ``[B, n]`` weight matrix when vectorized).
STATISTICS: dict[str, StatisticFn] = {}


@dataclass(frozen=True, slots=True)
class StatisticInfo:
    """How a registered statistic may be used.

    ``vectorized``: accepts a ``[B, n]`` weight matrix. ``pairable``: units of equal id on
    the base and a variant are the same unit (documents, images, pairs); False for units that
    only happen to share an index, such as measurement windows, whose deltas are unpaired.
    ``columns``: the columns it reads (checked when a delta is made).
    """

    vectorized: bool = False
    pairable: bool = True
    columns: tuple[str, ...] = ()


_INFO: dict[str, StatisticInfo] = {}


def register_statistic(name: str, *, vectorized: bool = False, pairable: bool = True,
                       columns: tuple[str, ...] = (), replace: bool = False) -> Callable[[StatisticFn], StatisticFn]:
    """Register ``fn(columns, weights)`` under ``name`` in :data:`STATISTICS`.

    Raises:
        ValueError: ``name`` is taken (pass ``replace=True`` to override on purpose).

    Example:
        >>> @register_statistic("example.max_weighted", replace=True)
        ... def _max(cols, w):
        ...     return float(np.max(cols["x"][np.asarray(w) > 0]))
        >>> STATISTICS["example.max_weighted"]({"x": np.array([1.0, 5.0])}, np.array([1.0, 0.0]))
        1.0
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register_statistic: the name must be a non-empty string, got {name!r}")

    def deco(fn: StatisticFn) -> StatisticFn:
        if name in STATISTICS and not replace and STATISTICS[name] is not fn:
            raise ValueError(f"register_statistic: {name!r} is already registered (replace=True overrides it)")
        STATISTICS[name] = fn
        _INFO[name] = StatisticInfo(vectorized=vectorized, pairable=pairable, columns=tuple(columns))
        return fn

    return deco


def statistic_info(name: str) -> StatisticInfo:
    """The :class:`StatisticInfo` of a registered statistic (defaults for one put in
    :data:`STATISTICS` directly: not vectorized, pairable)."""
    return _INFO.get(name, StatisticInfo())


def _w(weights: np.ndarray) -> np.ndarray:
    return np.asarray(weights, dtype=np.float64)


def _wsum(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_i w_i v_i`` per row of ``w`` (1-D or ``[B, n]``); units with weight 0 are left
    out entirely, so a non-finite value on an undrawn unit does not poison the sum."""
    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        # Drawn non-finite units make the result non-finite; undrawn ones do not count.
        drawn_bad = (w[..., bad] > 0).any(axis=-1)
        out = w @ np.where(bad, 0.0, v)
        return np.where(drawn_bad, np.nan, out)
    return w @ v


@register_statistic("mean", vectorized=True, columns=("x",))
def weighted_mean(columns: Columns, weights: np.ndarray) -> Any:
    """``sum w x / sum w`` of column ``x`` (a rate when ``x`` is 0/1)."""
    w = _w(weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _wsum(columns["x"], w) / w.sum(axis=-1)


@register_statistic("window_mean", vectorized=True, pairable=False, columns=("x",))
def window_mean(columns: Columns, weights: np.ndarray) -> Any:
    """The mean of column ``x`` over measurement windows: like ``mean``, but windows of two
    runs with the same index are not the same unit, so deltas of it are unpaired."""
    return weighted_mean(columns, weights)


@register_statistic("ratio", vectorized=True, columns=("num", "den"))
def weighted_ratio(columns: Columns, weights: np.ndarray) -> Any:
    """``sum w num / sum w den`` (e.g. NLL per token over documents)."""
    w = _w(weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _wsum(columns["num"], w) / _wsum(columns["den"], w)


@register_statistic("window_ratio", vectorized=True, pairable=False, columns=("num", "den"))
def window_ratio(columns: Columns, weights: np.ndarray) -> Any:
    """``sum w num / sum w den`` over measurement windows (e.g. joules over tokens per window):
    like ``ratio``, but windows of two runs are not the same unit, so deltas of it are unpaired."""
    return weighted_ratio(columns, weights)


@register_statistic("exp_ratio", vectorized=True, columns=("num", "den"))
def weighted_exp_ratio(columns: Columns, weights: np.ndarray) -> Any:
    """``exp(sum w num / sum w den)``: corpus perplexity from per-document NLL sums and token counts."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(weighted_ratio(columns, weights))


def _auroc(neg: np.ndarray, w_neg: np.ndarray, pos: np.ndarray, w_pos: np.ndarray, chunk: int = 256) -> Any:
    """Weighted Mann-Whitney AUROC, ties counted one half; non-finite scores are left out.

    ``sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)``, from one
    sort of the negatives: per distinct negative score its weight, a cumulative sum of it,
    and for each positive the weight strictly below and equal to its score (two gathers).
    The weights are 1-D or ``[B, n]`` (one row per resample).
    """
    neg, pos = np.asarray(neg, dtype=np.float64), np.asarray(pos, dtype=np.float64)
    kn, kp = np.isfinite(neg), np.isfinite(pos)
    neg, pos, w_neg, w_pos = neg[kn], pos[kp], w_neg[..., kn], w_pos[..., kp]
    one = w_neg.ndim == 1
    w_neg, w_pos = np.atleast_2d(w_neg), np.atleast_2d(w_pos)
    out = np.full(w_neg.shape[0], np.nan)
    if neg.size and pos.size:
        order = np.argsort(neg, kind="mergesort")
        sorted_neg = neg[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_neg)) + 1]
        distinct = sorted_neg[starts]
        left = np.searchsorted(distinct, pos, side="left")    # distinct negative scores below each positive
        right = np.searchsorted(distinct, pos, side="right")  # ... below or equal
        for lo in range(0, w_neg.shape[0], chunk):
            wn, wp = w_neg[lo:lo + chunk], w_pos[lo:lo + chunk]
            per = np.add.reduceat(wn[:, order], starts, axis=1)
            cum = np.concatenate([np.zeros((per.shape[0], 1)), np.cumsum(per, axis=1)], axis=1)
            below, upto = cum[:, left], cum[:, right]
            num = np.einsum("bi,bi->b", wp, below + upto) / 2  # below + equal / 2 = (below + upto) / 2
            with np.errstate(invalid="ignore", divide="ignore"):
                out[lo:lo + chunk] = num / (wp.sum(axis=1) * cum[:, -1])
    return out[0] if one else out


@register_statistic("auroc", vectorized=True, columns=("score", "label"))
def weighted_auroc(columns: Columns, weights: np.ndarray) -> Any:
    """AUROC of column ``score`` (higher: positive) for column ``label`` (1 positive, 0
    negative), each unit counted ``weight`` times; non-finite scores are left out."""
    w = _w(weights)
    y = np.asarray(columns["label"]).astype(bool)
    s = np.asarray(columns["score"], dtype=np.float64)
    return _auroc(s[~y], w[..., ~y], s[y], w[..., y])


@register_statistic("auroc_pairs", vectorized=True, columns=("negative", "positive"))
def paired_units_auroc(columns: Columns, weights: np.ndarray) -> Any:
    """AUROC where each unit is a pair of one negative and one positive sample (e.g. the human
    and the generated continuation of one prompt): columns ``negative`` and ``positive`` hold
    their scores, and a drawn pair brings both. Non-finite scores are left out."""
    w = _w(weights)
    return _auroc(columns["negative"], w, columns["positive"], w)
