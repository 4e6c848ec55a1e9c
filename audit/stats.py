"""Confidence intervals and comparisons used by probes and gates.

Every headline number in a report carries an interval. Resampling is over the unit that
was sampled (documents, images, prompts), not over tokens or pixels inside one unit.

Example:
    >>> iv = wilson_interval(45, 50)
    >>> round(iv.low, 3), round(iv.high, 3)
    (0.786, 0.957)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from audit.findings import Interval

__all__ = [
    "DEFAULT_CONFIDENCE",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "intervals_overlap",
    "wilson_interval",
]

DEFAULT_CONFIDENCE = 0.95


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _method(name: str, confidence: float) -> str:
    return f"{name}-{round(confidence * 100, 2):g}"


def bootstrap_ratio_ci(
    numerators: Any,
    denominators: Any,
    *,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = 2000,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval | None:
    """Percentile bootstrap interval of ``transform(sum(num) / sum(den))`` over units.

    Used for corpus perplexity, where a document contributes its summed negative
    log-likelihood (numerator) and its token count (denominator): resampling documents
    keeps each document's tokens together. The resample counts are drawn once as a
    multinomial matrix, so the whole bootstrap is two matrix-vector products.

    Returns None when there are fewer than 2 units (no interval can be formed).

    Example:
        >>> iv = bootstrap_ratio_ci([10.0, 12.0, 9.0, 11.0], [5, 6, 4, 5], transform=np.exp)
        >>> iv.low < math.exp(42 / 20) < iv.high
        True
    """
    _check_confidence(confidence)
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerators and denominators must be 1-D of equal length, got {num.shape} and {den.shape}")
    n = num.size
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    den_b = counts @ den
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (counts @ num) / den_b
    if transform is not None:
        ratio = transform(ratio)
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size == 0:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratio, [alpha, 1 - alpha])
    return Interval(float(lo), float(hi), _method("bootstrap-percentile", confidence))


def bootstrap_ci(
    values: Any,
    statistic: Callable[..., Any] = np.mean,
    *,
    n_resamples: int = 2000,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    method: str = "percentile",
) -> Interval | None:
    """Bootstrap interval of ``statistic`` over the units in ``values`` (SciPy's bootstrap).

    ``statistic`` must accept ``axis=-1`` (NumPy reductions do). ``method`` is
    ``"percentile"`` or ``"BCa"``. Returns None for fewer than 2 values or a degenerate
    sample (all equal), where no interval can be formed.
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None
    if np.all(x == x[0]):
        v = float(statistic(x))
        return Interval(v, v, _method(f"bootstrap-{method.lower()}", confidence))
    from scipy import stats as _sps  # here, not at import: scipy.stats costs ~0.5-1 s and most audits never call it

    res = _sps.bootstrap(
        (x,), statistic, n_resamples=n_resamples, confidence_level=confidence,
        method=method, vectorized=True, random_state=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return Interval(float(lo), float(hi), _method(f"bootstrap-{method.lower()}", confidence))


def wilson_interval(successes: int, n: int, *, confidence: float = DEFAULT_CONFIDENCE) -> Interval | None:
    """Wilson score interval for a proportion ``successes / n`` (None when n is 0)."""
    _check_confidence(confidence)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return None
    from scipy.special import ndtri  # the normal quantile, without importing all of scipy.stats

    z = float(ndtri(1 - (1 - confidence) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, centre - half), min(1.0, centre + half), _method("wilson", confidence))


def intervals_overlap(a: Interval | None, b: Interval | None) -> bool | None:
    """Whether two intervals overlap; None when either is missing."""
    if a is None or b is None:
        return None
    return a.low <= b.high and b.low <= a.high
