"""The disaggregation engine: any metric by group, with intervals, gaps and corrected tests.

Point values come from :class:`fairlearn.metrics.MetricFrame` (so ``overall``, ``by_group``,
``difference()`` and ``ratio()`` are Fairlearn's own), and this module adds what an audit
needs on top of them:

* **intersectional groups**: give several sensitive columns and every observed combination
  is a group (MetricFrame's multi-index);
* **minimum group size**: groups smaller than ``min_group_size`` are reported and flagged,
  never hidden; the gaps between groups are taken over the groups at or above the size
  (the flagged groups are named in the gap, and the gap over all groups is kept in
  :attr:`Gap.value_all_groups`, which is what Fairlearn's functions return);
* **bootstrap intervals** for every per-group value and every gap. Rate metrics (selection
  rate, TPR, FPR, accuracy, ...) are functions of a group's confusion counts, so a bootstrap
  resample of a group of ``n`` rows is exactly a multinomial draw of ``n`` over its four
  cells: the whole bootstrap is a handful of ``rng.multinomial`` calls. Any other metric
  (a callable ``metric(y_true, y_pred)``) is bootstrapped by resampling rows (or clusters
  of rows, e.g. all the completions of one prompt template) and calling it;
* **gaps** between groups (largest minus smallest, smallest over largest) and to the
  overall value, with intervals from the same resamples;
* **significance**: each group against the rest of the data, per rate metric, by Fisher's
  exact test, with Holm's step-down correction over all the tests reported together;
* **threshold policies**: named bounds on gap metrics; the four-fifths rule is one of them,
  labelled as the legal heuristic it is.

Example:
    >>> import numpy as np, pandas as pd
    >>> y = np.array([1, 0, 1, 0, 1, 0, 1, 0]); p = np.array([1, 0, 1, 1, 0, 0, 0, 0])
    >>> sex = pd.Series(["f", "f", "f", "f", "m", "m", "m", "m"], name="sex")
    >>> d = disaggregate(y, p, sex, metrics=["selection_rate"], min_group_size=1, n_resamples=200)
    >>> d.by_group("selection_rate")
    {('f',): 0.75, ('m',): 0.0}
    >>> d.gap("selection_rate", "difference").value
    0.75
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from audit.errors import InputError, SpecError
from audit.findings import Interval
from audit.stats import wilson_interval
from probes.bias.policies import POLICIES, ThresholdPolicy, evaluate_policy, policy_from_dict
from probes.bias.rates import RATE_METRICS, GapTest, RateMetric, binary_labels, fisher_tests, holm, proportions, some

from probes.bias.gaps import gap_statistic, percentile_interval, resample_indices, safe_metric

_percentile = percentile_interval  # the name other bias probes import

_ALL_CELLS = (0, 1, 2, 3)  # a rate over all four confusion cells is over all of a group's rows

# The rate metrics (probes.bias.rates) and policies (probes.bias.policies) live in their own
# modules; they are re-exported here, where the probes and users have always found them.
__all__ = [
    "POLICIES",
    "RATE_METRICS",
    "Disaggregation",
    "Gap",
    "GapTest",
    "GroupValue",
    "RateMetric",
    "ThresholdPolicy",
    "binary_labels",
    "disaggregate",
    "evaluate_policy",
    "holm",
    "policy_from_dict",
]


@dataclass(frozen=True)
class GroupValue:
    """One metric on one group: value, interval, size, and whether it is flagged as small: the
    group has fewer than ``min_group_size`` rows, or the rate's denominator (e.g. the group's
    positives for TPR) is under it. Flagged values are reported and left out of the gaps."""

    group: tuple[str, ...]
    value: float
    ci: Interval | None
    n: int
    small: bool
    warnings: tuple[str, ...] = ()
    #: Rows the rate is taken over (e.g. the group's positives for TPR); None for callables.
    denominator: int | None = None


@dataclass(frozen=True)
class Gap:
    """A gap of one metric: between groups (``difference``, ``ratio``) or to the overall
    value (``difference_to_overall``, ``ratio_to_overall``), as Fairlearn defines them.

    ``value`` is over the groups of at least ``min_group_size`` rows; ``value_all_groups``
    over every group (Fairlearn's value). ``low_group``/``high_group`` are the groups with
    the smallest and largest value (between-groups gaps).
    """

    metric: str
    kind: str
    value: float
    ci: Interval | None
    value_all_groups: float
    groups: tuple[tuple[str, ...], ...]
    excluded_small: tuple[tuple[str, ...], ...]
    low_group: tuple[str, ...] | None = None
    high_group: tuple[str, ...] | None = None
    warnings: tuple[str, ...] = ()



# -- the engine ----------------------------------------------------------------------------
MetricArg = "str | RateMetric | Callable[[np.ndarray, np.ndarray], float]"


@dataclass
class Disaggregation:
    """Results of :func:`disaggregate`: read with :meth:`overall`, :meth:`by_group`,
    :meth:`groups`, :meth:`gap`, :meth:`tests`; ``frame`` is the Fairlearn MetricFrame."""

    frame: Any
    metric_names: tuple[str, ...]
    higher_is_better: dict[str, bool]
    columns: tuple[str, ...]
    group_sizes: dict[tuple[str, ...], int]
    min_group_size: int
    _overall: dict[str, tuple[float, Interval | None, tuple[str, ...]]] = field(default_factory=dict)
    _groups: dict[str, list[GroupValue]] = field(default_factory=dict)
    _gaps: dict[tuple[str, str], Gap] = field(default_factory=dict)
    _tests: list[GapTest] = field(default_factory=list)
    _draws: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return int(sum(self.group_sizes.values()))

    @property
    def small_groups(self) -> tuple[tuple[str, ...], ...]:
        return tuple(g for g, n in self.group_sizes.items() if n < self.min_group_size)

    def overall(self, metric: str) -> tuple[float, Interval | None]:
        v, ci, _ = self._overall[metric]
        return v, ci

    def overall_warnings(self, metric: str) -> tuple[str, ...]:
        return self._overall[metric][2]

    def by_group(self, metric: str) -> dict[tuple[str, ...], float]:
        return {g.group: g.value for g in self._groups[metric]}

    def groups(self, metric: str) -> list[GroupValue]:
        return list(self._groups[metric])

    def gap(self, metric: str, kind: str = "difference") -> Gap:
        """``kind``: ``difference``, ``ratio``, ``difference_to_overall``, ``ratio_to_overall``."""
        return self._gaps[(metric, kind)]

    def tests(self) -> list[GapTest]:
        """Group-vs-rest tests of the rate metrics, with Holm's correction over all of them."""
        return list(self._tests)

    def combined_gap(self, name: str, metrics: Sequence[str], kind: str = "difference",
                     agg: Literal["max", "min"] = "max") -> Gap:
        """A gap that aggregates per-metric gaps per resample, e.g. Fairlearn's equalized odds
        difference = max(TPR difference, FPR difference) (``agg="max"``) or equalized odds
        ratio = min of the two ratios (``agg="min"``)."""
        parts = [self.gap(m, kind) for m in metrics]
        f = np.fmax if agg == "max" else np.fmin
        pick = (lambda vals: float(f.reduce(np.asarray(vals, dtype=np.float64))))
        value = pick([g.value for g in parts]) if all(math.isfinite(g.value) for g in parts) else math.nan
        value_all = pick([g.value_all_groups for g in parts]) \
            if all(math.isfinite(g.value_all_groups) for g in parts) else math.nan
        draws = [self._gap_draws(m, kind) for m in metrics]
        ci = None
        if all(d is not None for d in draws) and math.isfinite(value):
            stacked = np.stack(draws)  # NaN in any part makes the combined draw undefined
            combined = np.where(np.isnan(stacked).any(0), np.nan, f.reduce(stacked, axis=0))
            ci = percentile_interval(combined, self.confidence)
        warnings_ = tuple(dict.fromkeys(w for g in parts for w in g.warnings))
        excluded = tuple(dict.fromkeys(k for g in parts for k in g.excluded_small))  # left out of any part
        return Gap(name, kind, value, ci, value_all, parts[0].groups, excluded,
                   warnings=warnings_)

    def _gap_draws(self, metric: str, kind: str) -> np.ndarray | None:
        if metric not in self._draws:
            return None
        overall_b, groups_b = self._draws[metric]
        eligible = self._eligible_mask(metric)
        return gap_statistic(groups_b[:, eligible], overall_b, kind)

    def _eligible_mask(self, metric: str) -> np.ndarray:
        return np.array([not g.small and math.isfinite(g.value) for g in self._groups[metric]], dtype=bool)


def disaggregate(
    y_true: Any,
    y_pred: Any,
    sensitive: Any,
    *,
    metrics: Sequence[Any] | Mapping[str, Any] = ("selection_rate",),
    min_group_size: int = 30,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Any = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> Disaggregation:
    """Every metric overall and by group, with bootstrap intervals, gaps and group-vs-rest tests.

    Args:
        y_true: labels, 1-D (0/1 for the rate metrics; anything the callables accept otherwise;
            ``None`` when the metrics only read ``y_pred``, e.g. a mean score).
        y_pred: predictions or scores, 1-D, same length.
        sensitive: a Series (one sensitive feature) or DataFrame (several: intersectional groups).
        metrics: names of :data:`RATE_METRICS`, :class:`RateMetric` objects, or a mapping of
            name -> callable ``metric(y_true, y_pred) -> float`` (any metric).
        min_group_size: groups with fewer rows are reported and flagged; the gaps are taken
            over the other groups.
        n_resamples: bootstrap resamples (0: no intervals).
        confidence: of the intervals.
        seed: of the bootstrap.
        clusters: optional cluster id per row (e.g. the prompt template of a completion): the
            bootstrap then resamples clusters, keeping each cluster's rows of every group
            together, so that groups compared on the same clusters stay paired.
        higher_is_better: direction of callables (default True).

    Raises:
        InputError: lengths differ, a rate metric gets non-binary labels or predictions, or
            there is no row.
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    if not 0 < confidence < 1:
        raise SpecError(f"confidence must be in (0, 1), got {confidence!r}")
    sens = sensitive.to_frame() if isinstance(sensitive, pd.Series) else pd.DataFrame(sensitive)
    sens = sens.reset_index(drop=True).astype(str)
    # MetricFrame needs string column names; an unnamed Series gets Fairlearn's default name.
    sens.columns = [f"sensitive_feature_{i}" if c is None or isinstance(c, int) else str(c)
                    for i, c in enumerate(sens.columns)]
    y_pred = np.asarray(y_pred)
    n = len(y_pred)
    if n == 0:
        raise InputError("no rows to disaggregate")
    y_true = np.zeros(n, dtype=np.int64) if y_true is None else np.asarray(y_true)
    if len(y_true) != n or len(sens) != n:
        raise InputError(f"lengths differ: y_true {len(y_true)}, y_pred {n}, sensitive features {len(sens)}")

    rate, custom = _split_metrics(metrics)
    if rate:
        for arr, what in ((y_true, "y_true"), (y_pred, "y_pred")):
            vals = set(np.unique(arr).tolist())
            if not vals <= {0, 1, True, False}:
                raise InputError(f"{what}: the rate metrics ({', '.join(rate)}) need binary values in {{0, 1}}, "
                                 f"got {len(vals)} distinct values {some(sorted(map(str, vals)))}")
        y_true = y_true.astype(np.int64)
        y_pred = y_pred.astype(np.int64)

    fns = {name: m.fn() for name, m in rate.items()}
    fns |= custom
    if "base_rate" in rate:  # the share of positive labels: Fairlearn's mean_prediction of y_true
        from fairlearn.metrics import mean_prediction

        fns["base_rate"] = lambda yt, yp: mean_prediction(yp, yt)
    with warnings.catch_warnings():
        # sklearn warns on 0/0 rates (and returns 0); we report those as nan with our own warning.
        warnings.simplefilter("ignore")
        frame = MetricFrame(metrics=fns, y_true=y_true, y_pred=y_pred, sensitive_features=sens)

    codes, uniques = _group_codes(sens)
    group_keys = [tuple(str(v) for v in u) for u in uniques]
    sizes = np.bincount(codes, minlength=len(group_keys))
    d = Disaggregation(
        frame=frame, metric_names=tuple(fns), columns=tuple(sens.columns),
        higher_is_better={**{k: m.higher_is_better for k, m in rate.items()},
                          **{k: (higher_is_better or {}).get(k, True) for k in custom}},
        group_sizes={g: int(s) for g, s in zip(group_keys, sizes)}, min_group_size=min_group_size,
        confidence=confidence,
    )
    rng = np.random.default_rng(seed)
    groups = _Groups(codes, group_keys, sizes, len(sens.columns))
    if rate:
        _fill_rate_metrics(d, rate, frame, y_true, y_pred, groups, rng, n_resamples)
    if custom:
        _fill_custom_metrics(d, custom, frame, y_true, y_pred, groups, rng, n_resamples, clusters)
    return d


@dataclass(frozen=True)
class _Groups:
    """The groups of a disaggregation: group id per row, keys (sorted as MetricFrame sorts
    them), rows per group, and the number of sensitive columns."""

    codes: np.ndarray
    keys: list[tuple[str, ...]]
    sizes: np.ndarray
    ncols: int


def _split_metrics(metrics: Sequence[Any] | Mapping[str, Any]
                   ) -> tuple[dict[str, RateMetric], dict[str, Callable[..., float]]]:
    rate: dict[str, RateMetric] = {}
    custom: dict[str, Callable[..., float]] = {}
    items = metrics.items() if isinstance(metrics, Mapping) else [(None, m) for m in metrics]
    for name, m in items:
        if isinstance(m, str):
            if m not in RATE_METRICS:
                raise SpecError(f"unknown metric {m!r}; built-in rate metrics: {', '.join(RATE_METRICS)}, "
                                "or pass a callable")
            rate[m] = RATE_METRICS[m]
        elif isinstance(m, RateMetric):
            rate[name or m.name] = m
        elif callable(m):
            custom[name or getattr(m, "__name__", "metric")] = m
        else:
            raise SpecError(f"metric {name!r}: expected a name, a RateMetric or a callable, got {m!r}")
    return rate, custom


def _fill_rate_metrics(d: Disaggregation, rate: Mapping[str, RateMetric], frame: Any, y_true: np.ndarray,
                       y_pred: np.ndarray, groups: _Groups, rng: np.random.Generator, n_resamples: int) -> None:
    """Rate metrics: confusion counts per group; the bootstrap is one multinomial per group.

    A rate rests on its denominator (TPR on the group's positives, FPR on its negatives), so
    a group with enough rows but fewer than ``min_group_size`` in the denominator is flagged
    and left out of that metric's gaps, as a small group is."""
    keys, sizes = groups.keys, groups.sizes
    cells = y_true * 2 + y_pred  # tn=0, fp=1, fn=2, tp=3
    counts = np.zeros((len(keys), 4), dtype=np.int64)
    np.add.at(counts, (groups.codes, cells), 1)
    draws = None
    if n_resamples > 0:
        draws = np.stack([rng.multinomial(sizes[g], counts[g] / sizes[g], size=n_resamples)
                          for g in range(len(keys))], axis=1)  # [B, G, 4]
    for name, m in rate.items():
        group_vals = m.from_counts(counts)
        overall_val = float(m.from_counts(counts.sum(0)))
        # Fairlearn's point values, except that an empty denominator is nan (it says 0).
        fl = _frame_values(frame.by_group[name], keys, groups.ncols)
        group_vals = np.where(np.isnan(group_vals), np.nan, fl)
        if math.isfinite(overall_val):
            overall_val = float(frame.overall[name])
        boot_g = boot_o = None
        if draws is not None:
            boot_g = m.from_counts(draws)  # [B, G]
            boot_o = m.from_counts(draws.sum(1))
        props = proportions(m, counts)
        _fill_metric(d, name, keys, sizes, group_vals, overall_val, boot_g, boot_o,
                     undefined=f"no {m.den_label} in this group: {name} is undefined (nan), not 0",
                     overall_undefined=f"no {m.den_label} in the data: {name} is undefined",
                     proportions=props, den_label=None if m.den == _ALL_CELLS else m.den_label)
    d._tests = fisher_tests(rate, counts, keys)


def _fill_custom_metrics(d: Disaggregation, custom: Mapping[str, Callable[..., float]], frame: Any,
                         y_true: np.ndarray, y_pred: np.ndarray, groups: _Groups, rng: np.random.Generator,
                         n_resamples: int, clusters: Any) -> None:
    """Any other metric: resample rows (or clusters) and call it."""
    keys, codes = groups.keys, groups.codes
    group_vals = {name: _frame_values(frame.by_group[name], keys, groups.ncols) for name in custom}
    overall_vals = {name: float(frame.overall[name]) for name in custom}
    boot = {name: (np.full((n_resamples, len(keys)), np.nan), np.full(n_resamples, np.nan)) for name in custom}
    if n_resamples > 0:
        for b, idx in enumerate(resample_indices(codes, len(keys), rng, n_resamples, clusters)):
            c = codes[idx]
            for name, fn in custom.items():
                boot[name][1][b] = safe_metric(fn, y_true[idx], y_pred[idx])
                for g in range(len(keys)):
                    sel = idx[c == g]
                    if sel.size:
                        boot[name][0][b, g] = safe_metric(fn, y_true[sel], y_pred[sel])
    for name in custom:
        bg, bo = boot[name] if n_resamples > 0 else (None, None)
        _fill_metric(d, name, keys, groups.sizes, group_vals[name], overall_vals[name], bg, bo,
                     undefined=f"{name} is undefined (nan) on this group",
                     overall_undefined=f"{name} is undefined (nan) on the data")


def _fill_metric(d: Disaggregation, name: str, keys: list[tuple[str, ...]], sizes: np.ndarray,
                 values: np.ndarray, overall: float, boot_g: np.ndarray | None, boot_o: np.ndarray | None,
                 *, undefined: str, overall_undefined: str,
                 proportions: tuple[np.ndarray, np.ndarray] | None = None, den_label: str | None = None) -> None:
    """Record one metric's groups, overall value and gaps. ``proportions`` (successes and trials
    per group, last entry the overall) switches the per-value intervals to Wilson's, which
    hold at small n and at rates of 0 or 1, where a percentile bootstrap collapses.
    ``den_label`` (what the trials are, for a rate not taken over all rows) flags groups
    whose trials are under ``min_group_size`` like small groups."""
    conf = d.confidence
    row_small = sizes < d.min_group_size
    den_small = np.zeros(len(keys), dtype=bool)
    if proportions is not None and den_label is not None:
        den_small = (proportions[1][:-1] < d.min_group_size) & ~row_small
    small = row_small | den_small

    def wilson(i: int) -> Interval | None:
        s, t = proportions[0][i], proportions[1][i]
        return wilson_interval(int(s), int(t), confidence=conf) if t > 0 else None

    groups = []
    for g, key in enumerate(keys):
        w = []
        if row_small[g]:
            w.append(f"small group: n={int(sizes[g])} < min_group_size={d.min_group_size}; reported and flagged, "
                     "left out of the gaps")
        elif den_small[g]:
            w.append(f"small denominator: {name} rests on {int(proportions[1][g])} {den_label} of the group's "
                     f"{int(sizes[g])} rows, < min_group_size={d.min_group_size}; reported and flagged, "
                     "left out of the gaps")
        v = float(values[g])
        if not math.isfinite(v):
            w.append(undefined)
        ci = None
        if math.isfinite(v):
            ci = wilson(g) if proportions is not None else percentile_interval(boot_g[:, g], conf) if boot_g is not None else None
        den = int(proportions[1][g]) if proportions is not None else None
        groups.append(GroupValue(key, v, ci, int(sizes[g]), bool(small[g]), tuple(w), den))
    d._groups[name] = groups
    o_ci = None
    if math.isfinite(overall):
        o_ci = wilson(-1) if proportions is not None else percentile_interval(boot_o, conf) if boot_o is not None else None
    d._overall[name] = (overall, o_ci, () if math.isfinite(overall) else (overall_undefined,))
    if boot_g is not None:
        d._draws[name] = (boot_o, boot_g)

    vals = np.array([gv.value for gv in groups])
    eligible = d._eligible_mask(name)
    defined = np.isfinite(vals)
    excluded = tuple(k for k, s in zip(keys, small) if s)
    undefined_groups = [k for k, ok in zip(keys, defined) if not ok]
    for kind in ("difference", "ratio", "difference_to_overall", "ratio_to_overall"):
        w: list[str] = []
        value = float(gap_statistic(vals[eligible][None, :], np.array([overall]), kind)[0])
        value_all = float(gap_statistic(vals[defined][None, :], np.array([overall]), kind)[0])
        if undefined_groups:
            w.append(f"{name} is undefined on {some([_label(k) for k in undefined_groups])}: left out of the gap")
        if excluded:
            what = f"n < {d.min_group_size}" + (f", or fewer {den_label}" if den_small.any() else "")
            w.append(f"small groups left out of the {name} {kind} ({what}): "
                     f"{some([_label(k) for k in excluded])}; over all groups the {name} {kind} is {value_all:.4g}")
        if int(eligible.sum()) < 2 and not kind.endswith("to_overall"):
            w.append(f"fewer than 2 groups with n >= {d.min_group_size} and a defined {name} "
                     f"({int(eligible.sum())} of {len(keys)}): no gap between groups can be measured")
            value = math.nan
        elif int(eligible.sum()) < 1:
            w.append(f"no group with n >= {d.min_group_size} and a defined {name}")
            value = math.nan
        if kind.startswith("ratio") and math.isnan(value) and int(eligible.sum()) >= 2:
            w.append(f"ratio undefined: the largest {name} is 0 (0/0)")
        ci = None
        if boot_g is not None and math.isfinite(value):
            ci = percentile_interval(gap_statistic(boot_g[:, eligible], boot_o, kind), conf)
        lo = hi = None
        if eligible.any() and not kind.endswith("to_overall"):
            ek = [k for k, e in zip(keys, eligible) if e]
            ev = vals[eligible]
            lo, hi = ek[int(np.argmin(ev))], ek[int(np.argmax(ev))]
        d._gaps[(name, kind)] = Gap(name, kind, value, ci, value_all, tuple(keys), excluded, lo, hi, tuple(w))


def _group_codes(sens: Any) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Integer group id per row, and the groups in sorted order (as MetricFrame sorts them)."""
    keys = list(map(tuple, sens.to_numpy()))
    uniques = sorted(set(keys))
    lookup = {k: i for i, k in enumerate(uniques)}
    return np.fromiter((lookup[k] for k in keys), dtype=np.int64, count=len(keys)), uniques


def _frame_values(series: Any, keys: list[tuple[str, ...]], ncols: int) -> np.ndarray:
    out = np.full(len(keys), np.nan)
    for i, k in enumerate(keys):
        try:
            out[i] = float(series.loc[k if ncols > 1 else k[0]])
        except (KeyError, TypeError, ValueError):
            pass
    return out


def _label(key: tuple[str, ...]) -> str:
    return "+".join(key)
