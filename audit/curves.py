"""One shape for the curves findings carry in their evidence, and one for confusion matrices.

A curve is a line of points with an optional pointwise band: robust accuracy against eps
(one line per attack), detectability under each post-processing level, quality against cost
across variants. Probes build it with :func:`curve` (which validates it), store it under
``evidence["curves"]`` (a list; :func:`curves_evidence`), and the HTML report and the
dashboard draw it. Curves of one probe that share a ``chart`` id are drawn in one chart,
one line per ``series``.

The shape (JSON; every list as long as ``x``)::

    {"x": [0.0, 0.0039, 0.0078],          # numbers, finite
     "y": [0.91, 0.62, 0.20],             # numbers (NaN allowed: a gap)
     "y_low": [...], "y_high": [...],     # optional band (both or neither; NaN: no band there)
     "x_ticks": ["0", "1/255", "2/255"],  # optional labels of the x values
     "series": "pgd",                     # the line's name in the legend
     "chart": "robust_accuracy_vs_eps",   # curves with the same id share a chart
     "x_label": "eps (linf)", "y_label": "robust accuracy",
     "x_scale": "linear",                 # or "log" (x > 0)
     "y_range": [0, 1],                   # optional fixed y axis
     "interval": "wilson-95"}             # how the band was made, "" without a band

A confusion matrix (``evidence["confusion_matrix"]``, :func:`confusion_matrix_evidence`)::

    {"labels": ["cat", "dog"], "counts": [[40, 2], [5, 53]],   # rows: true, columns: predicted
     "rows": "true", "columns": "predicted"}

Example:
    >>> c = curve([0, 1], [0.9, 0.5], series="pgd", chart="ra", x_label="eps", y_label="acc")
    >>> curves_of({"curves": [c]})[0]["series"]
    'pgd'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "confusion_matrix_evidence",
    "confusion_matrix_of",
    "curve",
    "curves_evidence",
    "curves_of",
    "proportion_curve",
    "validate_curve",
]

_SCALES = ("linear", "log")
_OPTIONAL_TEXT = ("series", "chart", "x_label", "y_label", "interval")


def _numbers(name: str, xs: Any, n: int | None, *, finite: bool) -> list[float]:
    if isinstance(xs, (str, bytes, Mapping)) or not isinstance(xs, Sequence):
        raise ValueError(f"curve: {name} must be a list of numbers, got {type(xs).__name__}")
    out = []
    for v in xs:
        if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):  # jsonable's encoding
            v = float(v.replace("Infinity", "inf"))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (v is None):
            raise ValueError(f"curve: {name} must hold numbers only, got {v!r}")
        v = float(v)
        if finite and not math.isfinite(v):
            raise ValueError(f"curve: {name} must be finite, got {v!r}")
        out.append(v)
    if n is not None and len(out) != n:
        raise ValueError(f"curve: {name} has {len(out)} values; expected {n}, one per x")
    return out


def validate_curve(data: Mapping[str, Any]) -> dict[str, Any]:
    """The curve ``data`` checked and normalised (floats, defaults filled in).

    Raises:
        ValueError: naming the key that is wrong and what was expected.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"curve: expected a mapping with x and y, got {type(data).__name__}")
    x = _numbers("x", data.get("x"), None, finite=True)
    if not x:
        raise ValueError("curve: x is empty; a curve needs at least one point")
    out: dict[str, Any] = {"x": x, "y": _numbers("y", data.get("y"), len(x), finite=False)}
    low, high = data.get("y_low"), data.get("y_high")
    if (low is None) != (high is None):
        raise ValueError("curve: give both y_low and y_high (the band), or neither")
    if low is not None:
        out["y_low"] = _numbers("y_low", low, len(x), finite=False)
        out["y_high"] = _numbers("y_high", high, len(x), finite=False)
    ticks = data.get("x_ticks")
    if ticks is not None:
        if isinstance(ticks, (str, bytes)) or not isinstance(ticks, Sequence) or len(ticks) != len(x):
            raise ValueError(f"curve: x_ticks must be a list of {len(x)} labels, one per x")
        out["x_ticks"] = [str(t) for t in ticks]
    for key in _OPTIONAL_TEXT:
        value = data.get(key, "")
        if not isinstance(value, str):
            raise ValueError(f"curve: {key} must be text, got {value!r}")
        out[key] = value
    scale = data.get("x_scale", "linear")
    if scale not in _SCALES:
        raise ValueError(f"curve: x_scale must be one of {list(_SCALES)}, got {scale!r}")
    if scale == "log" and any(v <= 0 for v in x):
        raise ValueError("curve: x_scale 'log' needs positive x values")
    out["x_scale"] = scale
    y_range = data.get("y_range")
    if y_range is not None:
        r = _numbers("y_range", y_range, 2, finite=True)
        if not r[0] < r[1]:
            raise ValueError(f"curve: y_range must be [low, high] with low < high, got {r}")
        out["y_range"] = r
    return out


def curve(x: Sequence[float], y: Sequence[float], *, y_low: Sequence[float] | None = None,
          y_high: Sequence[float] | None = None, series: str = "", chart: str = "", x_label: str = "",
          y_label: str = "", x_scale: str = "linear", x_ticks: Sequence[str] | None = None,
          y_range: Sequence[float] | None = None, interval: str = "") -> dict[str, Any]:
    """A validated curve record for ``evidence["curves"]`` (see the module docstring).

    Raises:
        ValueError: a malformed curve (lengths differ, non-numbers, a log scale over x <= 0).
    """
    data: dict[str, Any] = {"x": list(x), "y": list(y), "series": series, "chart": chart, "x_label": x_label,
                            "y_label": y_label, "x_scale": x_scale, "interval": interval}
    if y_low is not None or y_high is not None:
        data["y_low"] = None if y_low is None else list(y_low)
        data["y_high"] = None if y_high is None else list(y_high)
    if x_ticks is not None:
        data["x_ticks"] = list(x_ticks)
    if y_range is not None:
        data["y_range"] = list(y_range)
    return validate_curve(data)


def proportion_curve(x: Sequence[float], successes: Sequence[int], totals: Sequence[int], *,
                     confidence: float = 0.95, **kwargs: Any) -> dict[str, Any]:
    """A curve of proportions ``successes / totals`` with Wilson bands (NaN where a total is 0).

    Example:
        >>> c = proportion_curve([0, 1], [9, 5], [10, 10], series="pgd")
        >>> c["y"], round(c["y_low"][0], 3), c["interval"]
        ([0.9, 0.5], 0.596, 'wilson-95')
    """
    from audit.stats import wilson_interval

    if not len(x) == len(successes) == len(totals):
        raise ValueError("proportion_curve: x, successes and totals must have one value per point")
    ys, lows, highs = [], [], []
    for k, n in zip(successes, totals):
        iv = wilson_interval(int(k), int(n), confidence=confidence)
        ys.append(k / n if n else math.nan)
        lows.append(iv.low if iv else math.nan)
        highs.append(iv.high if iv else math.nan)
    kwargs.setdefault("y_range", (0.0, 1.0))
    return curve(x, ys, y_low=lows, y_high=highs, interval=f"wilson-{round(confidence * 100, 2):g}", **kwargs)


def curves_evidence(*curves: Mapping[str, Any]) -> dict[str, Any]:
    """``{"curves": [...]}``, each validated, to merge into a finding's evidence."""
    return {"curves": [validate_curve(c) for c in curves]}


def curves_of(evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The valid curves of a finding's evidence: ``evidence["curves"]`` (a list) and the older
    single ``evidence["curve"]`` in the same shape; malformed ones are left out, never raised."""
    if not isinstance(evidence, Mapping):
        return []
    found = []
    many = evidence.get("curves")
    if isinstance(many, Sequence) and not isinstance(many, (str, bytes)):
        found.extend(many)
    if isinstance(evidence.get("curve"), Mapping):
        found.append(evidence["curve"])
    out = []
    for c in found:
        try:
            out.append(validate_curve(c))
        except ValueError:
            continue
    return out


def confusion_matrix_evidence(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
                              ) -> dict[str, Any]:
    """``{"confusion_matrix": ...}`` from true and predicted class indices (rows: true class).

    Example:
        >>> confusion_matrix_evidence([0, 0, 1], [0, 1, 1], ["a", "b"])["confusion_matrix"]["counts"]
        [[1, 1], [0, 1]]
    """
    k = len(labels)
    counts = [[0] * k for _ in range(k)]
    for t, p in zip(y_true, y_pred):
        t, p = int(t), int(p)
        if not (0 <= t < k and 0 <= p < k):
            raise ValueError(f"confusion matrix: class index out of range 0..{k - 1}: true {t}, predicted {p}")
        counts[t][p] += 1
    return {"confusion_matrix": {"labels": [str(v) for v in labels], "counts": counts,
                                 "rows": "true", "columns": "predicted"}}


def confusion_matrix_of(evidence: Mapping[str, Any]) -> dict[str, Any] | None:
    """The evidence's confusion matrix if well formed (square, non-negative integers), else None."""
    cm = evidence.get("confusion_matrix") if isinstance(evidence, Mapping) else None
    if not isinstance(cm, Mapping):
        return None
    labels, counts = cm.get("labels"), cm.get("counts")
    if not isinstance(labels, Sequence) or isinstance(labels, (str, bytes)) or not labels:
        return None
    if not isinstance(counts, Sequence) or len(counts) != len(labels):
        return None
    for row in counts:
        if not isinstance(row, Sequence) or len(row) != len(labels):
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row):
            return None
    return {"labels": [str(v) for v in labels], "counts": [list(r) for r in counts],
            "rows": str(cm.get("rows", "true")), "columns": str(cm.get("columns", "predicted"))}
