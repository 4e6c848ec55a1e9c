"""Deltas of variants' findings against the subject's (``spec.variants``), with paired intervals.

A variant's finding is matched with the subject's (the *base*) finding of the same probe,
metric and slice. :func:`attach_deltas` gives each matched variant finding a
:class:`~audit.findings.Delta`: the difference ``variant - base``, the relative difference
``(variant - base) / |base|``, and an interval chosen in this order:

1. **Paired bootstrap** (``paired-bootstrap-percentile-95``): both findings carry
   :class:`~audit.findings.Units` with the same pairable statistic. Unit indices are drawn
   over the ids both saw (in the base's order; the variant finding is warned when the id
   sets differ), and the statistic is evaluated on the base and on the variant with the
   *same* multinomial weights, so what the two share (a hard document is hard for both)
   cancels out of the difference. Percentile intervals of ``var - base`` and of
   ``(var - base) / |base|`` over the resamples.
2. **Unpaired bootstrap** (``unpaired-bootstrap-percentile-95``): both have units, but the
   statistics differ, the statistic is not pairable (measurement windows) or fewer than 2
   ids are shared: each side is resampled independently.
3. **Normal approximation** (``unpaired-normal-from-intervals-95``): both findings have an
   interval but not both have units: each interval's half-width is read as ``z * se``, the
   two are taken as independent, and the relative interval divides by ``|base|`` (the base
   value taken as fixed).
4. Otherwise no interval.

The resampling is seeded from ``seed`` and the finding's key, so a report is reproducible.
Units that do not reproduce their finding's value, name an unknown statistic or make it fail
are not used (the variant finding says so); the runner calls this after every variant ran,
so nothing here may lose the audit.
The cost is a few matrix products per finding: see :func:`paired_delta_interval`.

Example:
    >>> from audit.findings import Finding, Units
    >>> ids = [f"d{i}" for i in range(50)]
    >>> base_x = [float(i % 7) for i in range(50)]
    >>> base = Finding(probe="p", metric="loss", value=np.mean(base_x), higher_is_better=False,
    ...                units=Units("mean", ids, {"x": base_x}))
    >>> var = Finding(probe="p", metric="loss", value=np.mean(base_x) + 0.5, higher_is_better=False,
    ...               variant="int8", units=Units("mean", ids, {"x": [x + 0.5 for x in base_x]}))
    >>> d = attach_deltas([base, var])[1].delta
    >>> d.value, d.paired, d.n_pairs, (d.ci.low, d.ci.high)   # every unit moved by exactly 0.5
    (0.5, True, 50, (0.5, 0.5))
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import ndtri  # the normal quantile, without importing all of scipy.stats

from audit.findings import Delta, Finding, Interval, Units
from audit.unitstats import STATISTICS, StatisticInfo, register_statistic, statistic_info

__all__ = [
    "DEFAULT_N_RESAMPLES",
    "STATISTICS",
    "attach_deltas",
    "delta_of",
    "evaluate_units",
    "paired_delta_interval",
    "register_statistic",
    "point_delta",
    "unpaired_delta_interval",
]

DEFAULT_N_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
#: Resamples evaluated per block (bounds the memory of the weight matrix: block x units floats).
_BLOCK = 250
#: Fewest finite resamples (as a share of all) for an interval to be reported.
_MIN_FINITE = 0.5
#: Relative tolerance of the check that the units reproduce the finding's value.
_RTOL = 1e-6


def _method(name: str, confidence: float) -> str:
    return f"{name}-{round(confidence * 100, 2):g}"


@dataclass(frozen=True)
class _Side:
    """One finding's units as arrays, ready to be resampled."""

    name: str
    fn: Any
    info: StatisticInfo
    ids: tuple[str, ...]
    columns: dict[str, np.ndarray]

    @classmethod
    def of(cls, units: Units) -> _Side:
        if units.statistic not in STATISTICS:
            from audit.probe import did_you_mean

            raise KeyError(f"unknown unit statistic {units.statistic!r}{did_you_mean(units.statistic, STATISTICS)}")
        info = statistic_info(units.statistic)
        missing = [c for c in info.columns if c not in units.columns]
        if missing:
            raise KeyError(f"unit statistic {units.statistic!r} needs column(s) {missing}, the units have "
                           f"{sorted(units.columns)}")
        cols = {k: np.asarray(v, dtype=np.float64) for k, v in units.columns.items()}
        return cls(units.statistic, STATISTICS[units.statistic], info, units.ids, cols)

    def subset(self, index: np.ndarray) -> _Side:
        return replace(self, ids=tuple(self.ids[i] for i in index),
                       columns={k: v[index] for k, v in self.columns.items()})

    def evaluate(self, weights: np.ndarray) -> np.ndarray:
        """The statistic under each row of ``weights`` (``[B, n]``)."""
        if self.info.vectorized:
            return np.asarray(self.fn(self.columns, weights), dtype=np.float64).reshape(weights.shape[0])
        return np.array([float(self.fn(self.columns, w)) for w in weights], dtype=np.float64)


def evaluate_units(units: Units, weights: Any = None) -> float:
    """The statistic of ``units`` under ``weights`` (default all ones: the finding's value).

    Example:
        >>> evaluate_units(Units("mean", ["a", "b"], {"x": [1.0, 4.0]}), [3, 1])
        1.75
    """
    side = _Side.of(units)
    w = np.ones(len(units.ids)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(units.ids),):
        raise ValueError(f"weights must have one value per unit ({len(units.ids)}), got shape {w.shape}")
    return float(side.evaluate(w[None, :])[0])


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``[size, n]`` multinomial(n, 1/n) counts: how often each unit is drawn in each resample.

    Drawn as ``n`` uniform indices per resample and counted with one ``bincount`` (the same
    distribution as ``rng.multinomial``, about ten times faster for thousands of units)."""
    draws = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _percentile(diff: np.ndarray, confidence: float, method: str) -> Interval | None:
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diff, [alpha, 1 - alpha])
    return Interval(float(lo), float(hi), method)


def _intervals(base: np.ndarray, var: np.ndarray, n_resamples: int, confidence: float,
               name: str) -> tuple[Interval | None, Interval | None]:
    diff = var - base
    if np.isfinite(diff).sum() < _MIN_FINITE * n_resamples:
        return None, None
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(base != 0, diff / np.abs(base), np.nan)
    method = _method(name, confidence)
    ci_rel = _percentile(rel, confidence, method) if np.isfinite(rel).sum() >= _MIN_FINITE * n_resamples else None
    return _percentile(diff, confidence, method), ci_rel


def paired_delta_interval(base: Units, variant: Units, *, n_resamples: int = DEFAULT_N_RESAMPLES,
                          confidence: float = DEFAULT_CONFIDENCE,
                          seed: int = 0) -> tuple[Interval | None, Interval | None, int]:
    """Paired percentile-bootstrap intervals of ``variant - base`` and ``(variant - base) / |base|``.

    Both must use the same statistic. Units are matched by id (the ids both have, in the
    base's order); each resample draws multinomial counts over those ids and weights the
    base and the variant with the same counts. Vectorized statistics take the counts as
    ``[block, n]`` matrices (for ``mean``/``ratio`` two matrix-vector products per block).

    Returns:
        ``(ci, ci_relative, n_pairs)``; the intervals are None with fewer than 2 shared ids
        or when most resamples give a non-finite statistic.

    Raises:
        ValueError: the statistics differ, ids repeat, or ``confidence`` is not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if base.statistic != variant.statistic:
        raise ValueError(f"a paired delta needs one statistic, got {base.statistic!r} and {variant.statistic!r}")
    b, v = _Side.of(base), _Side.of(variant)
    if len(set(b.ids)) != len(b.ids) or len(set(v.ids)) != len(v.ids):
        raise ValueError("a paired delta needs unique unit ids on each side")
    where = {u: i for i, u in enumerate(v.ids)}
    shared = [(i, where[u]) for i, u in enumerate(b.ids) if u in where]
    n = len(shared)
    if n < 2:
        return None, None, n
    b = b.subset(np.array([i for i, _ in shared]))
    v = v.subset(np.array([j for _, j in shared]))
    rng = np.random.default_rng(seed)
    bs, vs = [], []
    for lo in range(0, n_resamples, _BLOCK):
        w = _counts(rng, n, min(_BLOCK, n_resamples - lo))
        bs.append(b.evaluate(w))
        vs.append(v.evaluate(w))
    ci, ci_rel = _intervals(np.concatenate(bs), np.concatenate(vs), n_resamples, confidence, "paired-bootstrap-percentile")
    return ci, ci_rel, n


def unpaired_delta_interval(base: Units, variant: Units, *, n_resamples: int = DEFAULT_N_RESAMPLES,
                            confidence: float = DEFAULT_CONFIDENCE,
                            seed: int = 0) -> tuple[Interval | None, Interval | None]:
    """Percentile intervals of ``variant - base`` (and relative) from two *independent*
    bootstraps, one over each side's own units (their statistics may differ)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    b, v = _Side.of(base), _Side.of(variant)
    if len(b.ids) < 2 or len(v.ids) < 2:
        return None, None
    rng_b, rng_v = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    bs, vs = [], []
    for lo in range(0, n_resamples, _BLOCK):
        size = min(_BLOCK, n_resamples - lo)
        bs.append(b.evaluate(_counts(rng_b, len(b.ids), size)))
        vs.append(v.evaluate(_counts(rng_v, len(v.ids), size)))
    return _intervals(np.concatenate(bs), np.concatenate(vs), n_resamples, confidence,
                      "unpaired-bootstrap-percentile")


def normal_delta_interval(base: Finding, variant: Finding, *,
                          confidence: float = DEFAULT_CONFIDENCE) -> tuple[Interval | None, Interval | None]:
    """``variant - base`` +- z * sqrt(se_b^2 + se_v^2), each se read from the finding's interval
    as ``(high - low) / (2 z)`` of *its* confidence level, the two taken as independent."""
    if base.ci is None or variant.ci is None:
        return None, None
    z = float(ndtri(1 - (1 - confidence) / 2))
    ses = []
    for f in (base, variant):
        level = _level_of(f.ci.method) or confidence
        width = f.ci.high - f.ci.low
        if not math.isfinite(width) or width < 0:
            return None, None
        ses.append(width / (2 * float(ndtri(1 - (1 - level) / 2))))
    diff = variant.value - base.value
    half = z * math.hypot(*ses)
    if not math.isfinite(diff):
        return None, None
    method = _method("unpaired-normal-from-intervals", confidence)
    ci = Interval(diff - half, diff + half, method)
    rel = None
    if math.isfinite(base.value) and base.value != 0:
        rel = Interval(ci.low / abs(base.value), ci.high / abs(base.value), method)
    return ci, rel


def _level_of(method: str) -> float | None:
    """The confidence level a method name ends with (``"wilson-95"`` -> 0.95), if any."""
    tail = method.rsplit("-", 1)[-1]
    try:
        level = float(tail) / 100
    except ValueError:
        return None
    return level if 0 < level < 1 else None


def point_delta(base: Finding, variant: Finding) -> Delta:
    """``variant - base`` and its relative size, without an interval."""
    return _point(base.value, variant.value)


def _point(base: float, variant: float) -> Delta:
    diff = variant - base
    rel = diff / abs(base) if math.isfinite(base) and base != 0 else None
    return Delta(base_value=base, value=diff, relative=rel)


def delta_of(base: Finding, variant: Finding, *, n_resamples: int = DEFAULT_N_RESAMPLES,
             confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Delta:
    """``variant`` against ``base`` (the same finding measured on the subject), with the
    interval chosen as the module docstring says (the warnings :func:`attach_deltas` adds to
    the variant finding are dropped here)."""
    return _delta_and_warnings(base, variant, n_resamples=n_resamples, confidence=confidence, seed=seed)[0]


def _delta_and_warnings(base: Finding, variant: Finding, *, n_resamples: int, confidence: float,
                        seed: int) -> tuple[Delta, list[str]]:
    """The delta, and the warnings for the variant finding (ids that differ, units not used)."""
    point = point_delta(base, variant)
    if not (math.isfinite(base.value) and math.isfinite(variant.value)):
        return point, []
    warnings: list[str] = []
    bu, vu = (_checked_units(f, who, warnings) for f, who in ((base, "base"), (variant, "variant")))
    kw = {"n_resamples": n_resamples, "confidence": confidence,
          "seed": (seed * 1_000_003 + zlib.crc32(variant.key.encode())) % 2**63}
    try:
        got = _resampled(bu, vu, point, warnings, kw)
    except Exception as exc:  # noqa: BLE001  a probe's own statistic failing must not lose the audit
        warnings.append(f"delta: the resampled interval failed ({type(exc).__name__}: {exc}); "
                        f"from the findings' intervals instead")
        got = None
    if got is not None:
        return got, warnings
    ci, ci_rel = normal_delta_interval(base, variant, confidence=confidence)
    return replace(point, ci=ci, ci_relative=ci_rel), warnings


def _resampled(bu: Units | None, vu: Units | None, point: Delta, warnings: list[str],
               kw: dict[str, Any]) -> Delta | None:
    """The paired (else unpaired) bootstrap delta when both sides have usable units, else None."""
    if bu is not None and vu is not None:
        unique = len(set(bu.ids)) == len(bu.ids) and len(set(vu.ids)) == len(vu.ids)
        if not unique:
            warnings.append("delta: unit ids repeat within a finding, so they cannot pair; the interval is unpaired")
        elif bu.statistic == vu.statistic and statistic_info(bu.statistic).pairable:
            ci, ci_rel, n_pairs = paired_delta_interval(bu, vu, **kw)
            id_warnings = _id_warnings(bu, vu, n_pairs)
            warnings += id_warnings
            if ci is not None:
                # Units only one side saw: the paired delta (and its interval) is over the shared ones.
                at = _shared_point(bu, vu) if id_warnings else point
                return replace(at, ci=ci, ci_relative=ci_rel, paired=True, n_pairs=n_pairs)
        ci, ci_rel = unpaired_delta_interval(bu, vu, **kw)
        if ci is not None:
            return replace(point, ci=ci, ci_relative=ci_rel)
    return None


def _shared_point(base: Units, variant: Units) -> Delta:
    """The point delta over the units both sides saw (what a paired interval is centred on)."""
    b, v = _Side.of(base), _Side.of(variant)
    where = {u: i for i, u in enumerate(v.ids)}
    pairs = [(i, where[u]) for i, u in enumerate(b.ids) if u in where]
    ones = np.ones((1, len(pairs)))
    bv = float(b.subset(np.array([i for i, _ in pairs])).evaluate(ones)[0])
    vv = float(v.subset(np.array([j for _, j in pairs])).evaluate(ones)[0])
    return _point(bv, vv)


def _checked_units(f: Finding, who: str, warnings: list[str]) -> Units | None:
    """``f.units`` when they name a known statistic and reproduce ``f.value``, else None (warned)."""
    if f.units is None:
        return None
    try:
        again = evaluate_units(f.units)
    except Exception as exc:  # noqa: BLE001  unknown statistic, missing column, or a failing statistic
        warnings.append(f"delta: the {who}'s units were not used: {str(exc).strip(chr(39))}")
        return None
    if not math.isclose(again, f.value, rel_tol=_RTOL, abs_tol=1e-12):
        warnings.append(f"delta: the {who}'s units give {again:.6g}, not the finding's {f.value:.6g}; "
                        f"they were not used")
        return None
    return f.units


def _id_warnings(base: Units, variant: Units, n_pairs: int) -> list[str]:
    b, v = set(base.ids), set(variant.ids)
    if b == v:
        return []
    return [f"delta: the base and the variant saw different units; the delta and its interval are over the "
            f"{n_pairs} both saw ({len(b - v)} only in the base, {len(v - b)} only in the variant)"]


def attach_deltas(findings: Sequence[Finding], *, n_resamples: int = DEFAULT_N_RESAMPLES,
                  confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> list[Finding]:
    """``findings`` with a delta on every variant finding that the subject also has (same
    probe, metric and slice); the others unchanged, in the same order."""
    base = {f.key: f for f in findings if f.variant is None}
    out: list[Finding] = []
    for f in findings:
        ref = base.get(f.key) if f.variant is not None else None
        if ref is None:
            out.append(f)
            continue
        delta, warnings = _delta_and_warnings(ref, f, n_resamples=n_resamples, confidence=confidence, seed=seed)
        out.append(replace(f, delta=delta, warnings=(*f.warnings, *warnings)))
    return out
