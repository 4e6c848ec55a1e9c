"""Variants side by side: the tables and the quality-versus-cost points the reports draw.

Pure functions over findings (no rendering, no probes), shared by the HTML, Markdown and
terminal writers, ``genai-audit diff`` and the dashboard.

* :func:`side_by_side` lays out a report with variants as one table per probe: a row per
  base finding (metric and slice), the base value with its interval, then per variant its
  value, its delta to the base and the delta's interval. A cell is *flagged* when the delta
  is worse (by the metric's direction) and its interval excludes 0 on the worse side.
* :func:`diff_side_by_side` gives the same view for two runs, A as the base and B as the
  other, with **unpaired** deltas (:func:`unpaired_delta`); when both runs have variants,
  one view per variant both have.
* :func:`quality_cost` picks a quality metric and a cost and makes one point per variant;
  :func:`pareto_front` marks the points no other point beats on both.

Example:
    >>> pareto_front([(10.0, 1.0), (12.0, 0.5), (11.0, 2.0)], quality_higher_is_better=False)
    [True, True, False]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from audit.findings import AuditReport, Delta, Finding, Interval
from audit.units import normal_delta_interval, point_delta

__all__ = [
    "BASE_LABEL",
    "COST_PROBES",
    "Cell",
    "ProbeTable",
    "QualityCost",
    "QualityPoint",
    "Row",
    "SideBySide",
    "base_findings",
    "delta_badness",
    "diff_quality_cost",
    "diff_side_by_side",
    "has_variants",
    "pareto_front",
    "point_delta",
    "quality_cost",
    "reads_relative",
    "report_quality_cost",
    "side_by_side",
    "significantly_worse",
    "tradeoff_settings",
    "unpaired_delta",
    "variant_names",
]

BASE_LABEL = "base"
"""How tables name the subject itself beside its variants (``audit.spec.BASE_VARIANT``)."""

COST_PROBES = ("energy.footprint", "energy.inference")
"""Probes whose findings are costs on the quality-versus-cost chart (never a quality)."""

# Cost metrics in the order they are preferred when the spec names none: memory first (it is
# measured for every variant without a power meter), then energy per unit, then FLOPs.
_COST_PREFERENCE = (
    ("energy.footprint", re.compile(r"bytes.*(memory|mem)|(memory|mem).*bytes")),
    ("energy.footprint", re.compile(r"^energy_j_per_|j_per_")),
    ("energy.footprint", re.compile(r"flops")),
    ("energy.footprint", re.compile(r"bytes")),
    ("energy.inference", re.compile(r"^energy_j_per_")),
)


def base_findings(findings: Sequence[Finding]) -> list[Finding]:
    """The subject's own findings (``variant is None``), in order: what a report without
    variants shows, and what key-matching code (history, regression gates) must look at."""
    return [f for f in findings if f.variant is None]


def variant_names(report: AuditReport) -> list[str]:
    """The variants of ``report``: its records in spec order, then any other name its findings carry."""
    names = [v.name for v in report.variants]
    for f in report.findings:
        if f.variant is not None and f.variant not in names:
            names.append(f.variant)
    return names


def has_variants(report: AuditReport) -> bool:
    return bool(variant_names(report))


# -- deltas --------------------------------------------------------------------------------


def unpaired_delta(base: Finding, other: Finding, *, confidence: float = 0.95) -> Delta:
    """``other - base`` for two findings measured on separate runs, with the normal-approximation
    interval of :func:`audit.units.normal_delta_interval` (the two taken as independent, each
    standard error read from its interval at its own level); none without an interval on either side.

    Example:
        >>> a = Finding("p", "m", 10.0, False, ci=Interval(9.0, 11.0, "x-95"))
        >>> b = Finding("p", "m", 12.0, False, ci=Interval(11.0, 13.0, "x-95"))
        >>> d = unpaired_delta(a, b)
        >>> d.value, round(d.ci.low, 4), round(d.ci.high, 4), d.ci.method
        (2.0, 0.5858, 3.4142, 'unpaired-normal-from-intervals-95')
    """
    ci, ci_rel = normal_delta_interval(base, other, confidence=confidence)
    return replace(point_delta(base, other), ci=ci, ci_relative=ci_rel, paired=False)


def delta_badness(delta: Delta, higher_is_better: bool, *, relative: bool = False) -> float | None:
    """How much worse the other is than the base, in the metric's bad direction (positive =
    worse, negative = better); relative: as a fraction of the base. None when undefined."""
    x = delta.relative if relative else delta.value
    if x is None or math.isnan(x):
        return None
    return -x if higher_is_better else x


def significantly_worse(delta: Delta, higher_is_better: bool, *, relative: bool = False) -> bool | None:
    """True when the delta's interval lies wholly on the worse side of 0, False when it does
    not, None when there is no interval to tell."""
    ci = delta.ci_relative if relative and delta.ci_relative is not None else delta.ci
    if ci is None or math.isnan(ci.low) or math.isnan(ci.high):
        return None
    return ci.high < 0 if higher_is_better else ci.low > 0


def reads_relative(base_value: float, unit: str = "") -> bool:
    """Whether a delta reads better as a percentage of the base: not for rates and shares
    (a base in [0, 1] or a unit of %: their change reads in points), yes for the rest."""
    if not math.isfinite(base_value) or base_value == 0 or unit.strip() == "%":
        return False
    return not 0 <= base_value <= 1


# -- the side-by-side view ------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One variant's finding in a row, with its delta to the row's base finding."""

    finding: Finding | None
    delta: Delta | None
    #: The delta is worse and its interval excludes 0 on the worse side.
    flagged: bool = False


@dataclass(frozen=True)
class Row:
    probe: str
    metric: str
    slice: Mapping[str, str]
    key: str
    higher_is_better: bool
    unit: str
    base: Finding | None
    cells: tuple[Cell, ...]

    @property
    def relative(self) -> bool:
        """Show the deltas of this row as percentages of the base (:func:`reads_relative`)."""
        return self.base is not None and reads_relative(self.base.value, self.unit)


@dataclass(frozen=True)
class ProbeTable:
    probe: str
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class SideBySide:
    """A base column and the columns compared with it, one table per probe."""

    title: str
    base_label: str
    columns: tuple[str, ...]
    tables: tuple[ProbeTable, ...]
    #: How the deltas were made: "paired" (within one audit) or "unpaired" (two runs).
    pairing: str = "paired"

    @property
    def n_flagged(self) -> int:
        return sum(c.flagged for t in self.tables for r in t.rows for c in r.cells)


def _cell(base: Finding | None, other: Finding | None, delta_fn: Any) -> Cell:
    if other is None or base is None:
        return Cell(other, None)
    delta = delta_fn(base, other)
    flagged = (
        (delta_badness(delta, base.higher_is_better) or 0) > 0
        and significantly_worse(delta, base.higher_is_better) is True
    )
    return Cell(other, delta, flagged)


def _build(title: str, base_label: str, base: Sequence[Finding], others: Mapping[str, Sequence[Finding]],
           probe_order: Sequence[str], delta_fn: Any, pairing: str) -> SideBySide:
    def by_key(fs: Sequence[Finding]) -> dict[str, Finding]:
        out: dict[str, Finding] = {}
        for f in fs:
            out.setdefault(f.key, f)  # a repeated key: the first one, as AuditReport.finding does
        return out

    base_map = by_key(base)
    other_maps = {name: by_key(fs) for name, fs in others.items()}
    keys = list(base_map)
    for m in other_maps.values():
        keys += [k for k in m if k not in keys]
    probes = list(dict.fromkeys([*probe_order, *(k.split("/", 1)[0] for k in keys)]))
    tables = []
    for probe in probes:
        rows = []
        for k in keys:
            first = base_map.get(k) or next(m[k] for m in other_maps.values() if k in m)
            if first.probe != probe:
                continue
            b = base_map.get(k)
            cells = tuple(_cell(b, m.get(k), delta_fn) for m in other_maps.values())
            rows.append(Row(first.probe, first.metric, dict(first.slice), k, first.higher_is_better, first.unit, b,
                            cells))
        if rows:
            tables.append(ProbeTable(probe, tuple(rows)))
    return SideBySide(title, base_label, tuple(others), tuple(tables), pairing)


def _attached(base: Finding, other: Finding) -> Delta:
    return other.delta if other.delta is not None else point_delta(base, other)


def side_by_side(report: AuditReport) -> SideBySide | None:
    """The report's variants against its base, one table per probe; None without variants.

    The deltas are the ones the audit attached (paired where the probes gave units); a
    variant finding without one gets a point delta with no interval.
    """
    names = variant_names(report)
    if not names:
        return None
    others = {n: [f for f in report.findings if f.variant == n] for n in names}
    return _build("Variants side by side", BASE_LABEL, base_findings(report.findings), others,
                  list(report.probes), _attached, "paired")


def diff_side_by_side(a: AuditReport, b: AuditReport) -> list[SideBySide]:
    """Run ``a`` as the base and run ``b`` as the other, with unpaired deltas: one view for the
    two subjects, and one more per variant both runs have (variant by variant)."""
    order = list(dict.fromkeys([*a.probes, *b.probes]))
    views = [_build("A (base) against B", "A", base_findings(a.findings), {"B": base_findings(b.findings)},
                    order, unpaired_delta, "unpaired")]
    shared = [n for n in variant_names(a) if n in variant_names(b)]
    for n in shared:
        fa = [f for f in a.findings if f.variant == n]
        fb = [f for f in b.findings if f.variant == n]
        views.append(_build(f"variant {n}: A against B", f"A {n}", fa, {f"B {n}": fb}, order, unpaired_delta,
                            "unpaired"))
    return views


# -- quality against cost ------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]], *, quality_higher_is_better: bool,
                 cost_higher_is_better: bool = False) -> list[bool]:
    """Which ``(quality, cost)`` points are on the Pareto front: no other point is at least as
    good on both and strictly better on one. Equal points do not dominate each other (both
    stay on the front); a point with a NaN coordinate is never on it and dominates nothing.

    Example:
        >>> pareto_front([(0.9, 3.0), (0.9, 3.0), (0.8, 1.0), (0.7, 2.0)], quality_higher_is_better=True)
        [True, True, True, False]
    """
    qs = 1.0 if quality_higher_is_better else -1.0
    cs = 1.0 if cost_higher_is_better else -1.0
    goods = [(qs * q, cs * c) if math.isfinite(q) and math.isfinite(c) else None for q, c in points]
    out = []
    for i, p in enumerate(goods):
        if p is None:
            out.append(False)
            continue
        dominated = any(
            o is not None and o[0] >= p[0] and o[1] >= p[1] and (o[0] > p[0] or o[1] > p[1])
            for j, o in enumerate(goods) if j != i
        )
        out.append(not dominated)
    return out


@dataclass(frozen=True)
class QualityPoint:
    label: str
    quality: float
    cost: float
    quality_ci: Interval | None
    on_front: bool


@dataclass(frozen=True)
class QualityCost:
    """One quality metric against one cost, one point per variant, the front marked."""

    quality_key: str
    cost_key: str
    quality_higher_is_better: bool
    quality_unit: str
    cost_unit: str
    points: tuple[QualityPoint, ...]
    #: Other choices the groups allow (for pickers): unsliced quality keys and cost keys.
    quality_options: tuple[str, ...] = ()
    cost_options: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return f"{self.quality_key} against {self.cost_key}"


def _unsliced(fs: Sequence[Finding]) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    for f in fs:
        if not f.slice and math.isfinite(f.value):
            out.setdefault(f.key, f)
    return out


def _in_every(groups: Mapping[str, dict[str, Finding]]) -> list[str]:
    maps = list(groups.values())
    return [k for k in maps[0] if all(k in m for m in maps[1:])] if maps else []


def _default_cost(options: Sequence[str]) -> str | None:
    for probe, pattern in _COST_PREFERENCE:
        for k in options:
            p, metric = k.split("/", 1)
            if p == probe and pattern.search(metric):
                return k
    return options[0] if options else None


def tradeoff_settings(spec: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``settings.tradeoff.quality`` / ``.cost`` of a spec as run (a report's ``spec``), if set."""
    settings = spec.get("settings") if isinstance(spec, Mapping) else None
    t = settings.get("tradeoff") if isinstance(settings, Mapping) else None
    if not isinstance(t, Mapping):
        return None, None
    q, c = t.get("quality"), t.get("cost")
    return (q if isinstance(q, str) else None), (c if isinstance(c, str) else None)


def _canonical(ref: str | None) -> str | None:
    if ref is None:
        return None
    from audit.findings import format_slice
    from audit.spec import parse_metric_ref

    try:
        probe, metric, slice_ = parse_metric_ref(ref)
    except ValueError:
        return ref
    return f"{probe}/{metric}{format_slice(slice_)}"


def quality_cost(groups: Mapping[str, Sequence[Finding]], *, quality: str | None = None, cost: str | None = None,
                 probe_order: Sequence[str] = ()) -> QualityCost | None:
    """One point per group (a variant, or a run) of a quality finding against a cost finding.

    Both must be unsliced, finite and present in every group. Costs are the findings of
    :data:`COST_PROBES` (lower is better); qualities are the others. Without ``quality``,
    perplexity when present, else the first such finding of the first probe in
    ``probe_order``; without ``cost``, weight bytes in memory, then J per unit, then FLOPs
    (``energy.footprint``), then ``energy.inference`` J per unit. None when either is missing
    or fewer than two groups have both.
    """
    maps = {label: _unsliced(fs) for label, fs in groups.items()}
    shared = _in_every(maps)
    costs = [k for k in shared if k.split("/", 1)[0] in COST_PROBES]
    quals = [k for k in shared if k.split("/", 1)[0] not in COST_PROBES]
    order = {p: i for i, p in enumerate(probe_order)}
    quals.sort(key=lambda k: order.get(k.split("/", 1)[0], len(order)))  # stable: findings order within a probe
    quality, cost = _canonical(quality), _canonical(cost)
    if quality is None:
        quality = next((k for k in quals if k.split("/", 1)[1] == "perplexity"), quals[0] if quals else None)
    if cost is None:
        cost = _default_cost(costs)
    if quality is None or cost is None or quality not in shared or cost not in shared or len(maps) < 2:
        return None
    first = next(iter(maps.values()))
    hib = first[quality].higher_is_better
    coords = [(m[quality].value, m[cost].value) for m in maps.values()]
    front = pareto_front(coords, quality_higher_is_better=hib,
                         cost_higher_is_better=first[cost].higher_is_better)
    points = tuple(QualityPoint(label, m[quality].value, m[cost].value, m[quality].ci, on)
                   for (label, m), on in zip(maps.items(), front))
    return QualityCost(quality, cost, hib, first[quality].unit, first[cost].unit, points, tuple(quals), tuple(costs))


def report_quality_cost(report: AuditReport, *, quality: str | None = None,
                        cost: str | None = None) -> QualityCost | None:
    """:func:`quality_cost` over the base and every variant of ``report``; the keys default to
    the spec's ``settings.tradeoff`` when it names them."""
    if not has_variants(report):
        return None
    q, c = tradeoff_settings(report.spec)
    groups = {BASE_LABEL: base_findings(report.findings),
              **{n: [f for f in report.findings if f.variant == n] for n in variant_names(report)}}
    return quality_cost(groups, quality=quality or q, cost=cost or c, probe_order=list(report.probes))


def diff_quality_cost(a: AuditReport, b: AuditReport) -> QualityCost | None:
    """The quality-versus-cost points of two runs: ``A`` and ``B`` (their subjects), and
    ``A name`` / ``B name`` for each of their variants."""
    groups: dict[str, list[Finding]] = {}
    for tag, r in (("A", a), ("B", b)):
        groups[tag if not has_variants(r) else f"{tag} {BASE_LABEL}"] = base_findings(r.findings)
        for n in variant_names(r):
            groups[f"{tag} {n}"] = [f for f in r.findings if f.variant == n]
    q, c = tradeoff_settings(b.spec)
    return quality_cost(groups, quality=q, cost=c, probe_order=list(dict.fromkeys([*a.probes, *b.probes])))
