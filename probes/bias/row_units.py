"""Per-row units of the bias engine's rate metrics, so that a variant's rates and gaps pair with
the base's by table row (:mod:`audit.units`).

A rate metric is ``sum(num cells) / sum(den cells)`` of the confusion counts; per row, ``num``
and ``den`` are 0/1 indicators of the row's cell, so the rate is the ``ratio`` statistic. A
gap between groups (Fairlearn's difference or ratio over the groups the finding used) is the
statistic ``group_rate_difference`` / ``group_rate_ratio``, registered here: per group the
weighted ratio, then :func:`probes.bias.gaps.gap_statistic` (NaN-aware, like the engine).

Example:
    >>> cols = {"num": np.array([1.0, 0, 1, 1]), "den": np.ones(4), "group": np.array([0.0, 0, 1, 1])}
    >>> float(STATISTICS["group_rate_difference"](cols, np.ones(4)))   # 1.0 - 0.5
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from audit.findings import Units
from audit.unitstats import STATISTICS, register_statistic
from probes.bias.gaps import gap_statistic
from probes.bias.rates import RateMetric

__all__ = ["gap_units", "rate_units"]


def _group_rates(columns: Any, weights: np.ndarray) -> np.ndarray:
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    codes = np.asarray(columns["group"]).astype(np.int64)
    onehot = np.eye(int(codes.max()) + 1 if codes.size else 0)[codes]  # [n, G]
    num = w @ (np.asarray(columns["num"], dtype=np.float64)[:, None] * onehot)
    den = w @ (np.asarray(columns["den"], dtype=np.float64)[:, None] * onehot)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _gap(kind: str):
    def statistic(columns: Any, weights: np.ndarray) -> Any:
        rates = _group_rates(columns, weights)
        out = gap_statistic(rates, np.full(rates.shape[0], np.nan), kind)
        return out[0] if np.ndim(weights) == 1 else out

    statistic.__doc__ = f"Fairlearn's {kind} between the groups' rates sum(w num) / sum(w den) (column group: codes)."
    return statistic


register_statistic("group_rate_difference", vectorized=True, columns=("num", "den", "group"))(_gap("difference"))
register_statistic("group_rate_ratio", vectorized=True, columns=("num", "den", "group"))(_gap("ratio"))


def rate_units(metric: RateMetric, cells: np.ndarray, ids: Sequence[str], rows: np.ndarray) -> Units:
    """``ratio`` units of ``metric`` over the rows in the boolean mask ``rows`` (``cells``: each
    row's confusion cell, 0..3 in scikit-learn's order tn, fp, fn, tp)."""
    num = np.isin(cells, metric.num).astype(np.float64)
    den = np.isin(cells, metric.den).astype(np.float64)
    return Units("ratio", [i for i, r in zip(ids, rows) if r], {"num": num[rows].tolist(), "den": den[rows].tolist()})


def gap_units(metric: RateMetric, kind: str, cells: np.ndarray, ids: Sequence[str],
              membership: Sequence[np.ndarray]) -> Units:
    """Units of a between-groups gap (``difference`` or ``ratio``) over the rows of the groups in
    ``membership`` (one boolean row mask per group the gap was taken over)."""
    group = np.full(len(cells), -1, dtype=np.int64)
    for g, rows in enumerate(membership):
        group[rows] = g
    keep = group >= 0
    base = rate_units(metric, cells, ids, keep)
    return Units(f"group_rate_{kind}", base.ids, {**base.columns, "group": group[keep].astype(float).tolist()})

