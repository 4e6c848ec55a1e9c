"""audit.variant_view: Pareto fronts, unpaired deltas, significance and the side-by-side
layout, on hand-made numbers."""

import math
from dataclasses import replace

import pytest

from audit.findings import Delta, Finding, Interval
from audit.variant_view import (
    delta_badness,
    diff_quality_cost,
    diff_side_by_side,
    pareto_front,
    quality_cost,
    reads_relative,
    report_quality_cost,
    side_by_side,
    significantly_worse,
    unpaired_delta,
)
from tests.report_factory import make_report, make_variant_report

NAN = math.nan


# -- Pareto front ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "points, hib, cost_hib, front",
    [
        # lower quality is better (perplexity), lower cost is better: (10,3) dominates (11,4)
        ([(10, 3), (11, 4), (12, 1), (9, 5)], False, False, [True, False, True, True]),
        # the same points when higher quality is better: (12,1) dominates every point
        ([(10, 3), (11, 4), (12, 1), (9, 5)], True, False, [False, False, True, False]),
        # equal points do not dominate each other: both stay on the front
        ([(10, 3), (10, 3), (11, 3)], False, False, [True, True, False]),
        # a tie on one axis: better on the other dominates
        ([(10, 3), (10, 2)], False, False, [False, True]),
        ([(10, 3), (10, 2)], True, False, [False, True]),
        # higher cost "better" (e.g. throughput as the second axis) flips the cost comparison
        ([(10, 3), (10, 2)], False, True, [True, False]),
        # NaN: never on the front, dominates nothing
        ([(NAN, 0), (10, 3), (11, NAN)], False, False, [False, True, False]),
        ([], False, False, []),
        ([(5, 5)], True, False, [True]),
    ],
)
def test_pareto_front_by_hand(points, hib, cost_hib, front):
    assert pareto_front(points, quality_higher_is_better=hib, cost_higher_is_better=cost_hib) == front


# -- deltas ----------------------------------------------------------------------------------


def F(value, ci=None, method="bootstrap-percentile-95", hib=False, **kw):
    return Finding("quality.perplexity", kw.pop("metric", "perplexity"), value, hib,
                   ci=Interval(*ci, method) if ci else None, **kw)


def test_unpaired_delta_against_a_hand_computation():
    # se_a = 1 / 1.959964 = 0.510204, se_b = 2 / 1.959964 = 1.020408; se = sqrt(sum of squares) = 1.140839
    a, b = F(10.0, (9.0, 11.0)), F(13.0, (11.0, 15.0))
    d = unpaired_delta(a, b)
    z = 1.959963984540054
    se = math.hypot(1 / z, 2 / z)
    assert d.value == 3.0 and d.relative == pytest.approx(0.3)
    assert (d.ci.low, d.ci.high) == pytest.approx((3 - z * se, 3 + z * se))
    assert (d.ci.low, d.ci.high) == pytest.approx((0.763932, 5.236068), abs=1e-6)  # 3 -+ sqrt(5)
    assert d.ci.method == "unpaired-normal-from-intervals-95" and d.paired is False
    assert (d.ci_relative.low, d.ci_relative.high) == pytest.approx((0.0763932, 0.5236068), abs=1e-7)


def test_unpaired_delta_reads_each_intervals_level_and_needs_both():
    # a 90 % interval of half-width 1.644854 has se 1, like a 95 % one of half-width 1.959964
    a = F(0.0, (-1.6448536, 1.6448536), method="wilson-90")
    b = F(1.0, (1.0 - 1.959964, 1.0 + 1.959964), method="wilson-95")
    d = unpaired_delta(a, b)
    assert (d.ci.low, d.ci.high) == pytest.approx((1 - 1.959964 * math.sqrt(2), 1 + 1.959964 * math.sqrt(2)),
                                                  abs=1e-5)
    assert d.relative is None and d.ci_relative is None  # base 0: no relative scale
    assert unpaired_delta(F(1.0), F(2.0, (1.5, 2.5))).ci is None


def test_badness_and_significance_both_directions():
    worse_low = Delta(10.0, 0.8, 0.08, ci=Interval(0.2, 1.4, "p"))   # lower is better: a rise is worse
    assert delta_badness(worse_low, False) == 0.8 and delta_badness(worse_low, False, relative=True) == 0.08
    assert significantly_worse(worse_low, False) is True
    assert delta_badness(worse_low, True) == -0.8 and significantly_worse(worse_low, True) is False
    straddle = Delta(10.0, 0.8, 0.08, ci=Interval(-0.2, 1.4, "p"))
    assert significantly_worse(straddle, False) is False and significantly_worse(straddle, True) is False
    drop = Delta(0.8, -0.1, -0.125, ci=Interval(-0.15, -0.05, "p"))
    assert significantly_worse(drop, True) is True and significantly_worse(drop, False) is False
    assert significantly_worse(Delta(1.0, 0.5), False) is None
    assert delta_badness(Delta(0.0, 0.5, None), False, relative=True) is None


@pytest.mark.parametrize("base, unit, expected", [(12.0, "ppl", True), (0.8, "", False), (0.0, "", False),
                                                  (45.0, "%", False), (-3.0, "", True), (NAN, "", False)])
def test_reads_relative(base, unit, expected):
    assert reads_relative(base, unit) is expected


# -- side by side ----------------------------------------------------------------------------


def test_side_by_side_of_a_report_with_variants():
    view = side_by_side(make_variant_report())
    assert view.base_label == "base" and view.columns == ("int8", "lora") and view.pairing == "paired"
    assert [t.probe for t in view.tables] == ["quality.perplexity", "bias.toxicity", "energy.footprint"]
    (ppl,) = view.tables[0].rows
    assert ppl.base.value == 12.0 and [c.finding.value for c in ppl.cells] == [12.9, 11.4]
    assert [c.flagged for c in ppl.cells] == [True, False]  # int8 worse, [+0.5, +1.3] excludes 0; lora better
    assert ppl.relative
    (tox,) = view.tables[1].rows
    assert not tox.relative and not any(c.flagged for c in tox.cells)  # a rate; interval includes 0
    assert view.n_flagged == 1
    # memory of int8 is lower (better), and energy/1k tokens of int8 is lower with an interval below 0: not flagged
    assert not any(c.flagged for t in view.tables[2:] for r in t.rows for c in r.cells)


def test_side_by_side_without_variants_is_none_and_fills_gaps():
    assert side_by_side(make_report()) is None
    r = make_variant_report()
    # a variant finding without a delta gets the point delta; a key only a variant has is a row without base
    extra = Finding("quality.perplexity", "perplexity_extra", 3.0, False, variant="lora")
    stripped = tuple(replace(f, delta=None) for f in r.findings) + (extra,)
    view = side_by_side(replace(r, findings=stripped))
    ppl, only = view.tables[0].rows
    assert ppl.cells[0].delta.value == pytest.approx(0.9) and ppl.cells[0].delta.ci is None
    assert not ppl.cells[0].flagged  # no interval: cannot be flagged
    assert only.base is None and only.cells[0].finding is None and only.cells[1].finding.value == 3.0


def test_diff_side_by_side_unpaired_and_variant_by_variant():
    a = make_variant_report()
    b = replace(a, findings=tuple(replace(f, value=f.value + 1.0, delta=None) for f in a.findings))
    views = diff_side_by_side(a, b)
    assert [v.title for v in views] == ["A (base) against B", "variant int8: A against B", "variant lora: A against B"]
    assert all(v.pairing == "unpaired" for v in views)
    cell = views[1].tables[0].rows[0].cells[0]
    assert cell.finding.variant == "int8" and cell.delta.value == pytest.approx(1.0)
    assert cell.delta.ci.method == "unpaired-normal-from-intervals-95"
    # without variants: one view, A against B
    assert len(diff_side_by_side(make_report(), make_report())) == 1


# -- quality against cost ---------------------------------------------------------------------


def test_quality_cost_defaults_to_perplexity_against_memory():
    qc = report_quality_cost(make_variant_report())
    assert qc.quality_key == "quality.perplexity/perplexity"
    assert qc.cost_key == "energy.footprint/weight_bytes_memory"
    assert [(p.label, p.quality, p.cost, p.on_front) for p in qc.points] == [
        ("base", 12.0, 540e6, False), ("int8", 12.9, 180e6, True), ("lora", 11.4, 540e6, True)]
    assert "bias.toxicity/toxicity_rate[group=female]" not in qc.quality_options  # sliced: never a quality
    assert report_quality_cost(make_report()) is None


def test_quality_cost_follows_the_spec_and_explicit_keys():
    r = make_variant_report()
    spec = {**r.spec, "settings": {"tradeoff": {"cost": "energy.footprint/energy_j_per_1k_tokens"}}}
    qc = report_quality_cost(replace(r, spec=spec))
    assert qc.cost_key == "energy.footprint/energy_j_per_1k_tokens"
    # base (50 J) is cheaper than lora (51 J), int8 (42 J) cheaper still: no point dominates another
    assert [p.on_front for p in qc.points] == [True, True, True]
    groups = {"x": [F(0.7, hib=True, metric="acc"), Finding("energy.footprint", "flops_per_token", 2e6, False)],
              "y": [F(0.9, hib=True, metric="acc"), Finding("energy.footprint", "flops_per_token", 1e6, False)]}
    qc = quality_cost(groups)
    assert (qc.quality_key, qc.cost_key) == ("quality.perplexity/acc", "energy.footprint/flops_per_token")
    assert [p.on_front for p in qc.points] == [False, True]
    assert quality_cost(groups, cost="energy.inference/energy_j_per_1k_tokens") is None  # not measured
    assert quality_cost({"x": groups["x"]}) is None  # one point is no trade-off
    no_cost = {k: v[:1] for k, v in groups.items()}
    assert quality_cost(no_cost) is None


def test_diff_quality_cost_labels_runs_and_variants():
    a = make_variant_report()
    b = replace(a, findings=tuple(replace(f, value=f.value * 0.5) for f in a.findings))
    qc = diff_quality_cost(a, b)
    assert [p.label for p in qc.points] == ["A base", "A int8", "A lora", "B base", "B int8", "B lora"]
    assert [p.label for p in qc.points if p.on_front] == ["B int8", "B lora"]
