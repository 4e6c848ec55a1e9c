"""Gates: hand-built findings with known answers for every kind of gate."""

import math

import pytest

from audit.findings import Finding, Interval
from audit.gates import canonical_key, evaluate_gate, evaluate_gates
from audit.spec import GateSpec


def F(value, ci=None, hib=False, slice_=None, warnings=()):
    return Finding(probe="quality.perplexity", metric="perplexity", value=value, higher_is_better=hib,
                   ci=Interval(*ci, "bootstrap-percentile-95") if ci else None,
                   slice=slice_ or {}, warnings=warnings)


def G(**kw):
    return GateSpec(metric=kw.pop("metric", "quality.perplexity/perplexity"), **kw)


@pytest.mark.parametrize(
    "gate, finding, status, bound",
    [
        (G(max=30), F(25.0), "passed", 30.0),
        (G(max=30), F(31.0), "failed", 30.0),
        (G(max=30, use="ci_high"), F(25.0, (20.0, 32.0)), "failed", 30.0),   # value ok, ci_high not
        (G(max=30, use="ci_low"), F(31.0, (29.0, 33.0)), "passed", 30.0),    # fail only if sure
        (G(min=0.9, use="ci_low"), F(0.95, (0.91, 0.97), hib=True), "passed", 0.9),
        (G(min=0.9, use="ci_low"), F(0.95, (0.88, 0.97), hib=True), "failed", 0.9),
        (G(min=1, max=2), F(2.5), "failed", 2.0),
        (G(min=1, max=2), F(0.5), "failed", 1.0),
        (G(max=30), F(30.0), "passed", 30.0),                               # bounds are inclusive
    ],
)
def test_absolute_gates(gate, finding, status, bound):
    (r,) = evaluate_gate(gate, [finding])
    assert r.status == status and r.passed == (status == "passed")
    assert r.bound == bound


def test_ci_side_without_interval_uses_value_and_says_so():
    (r,) = evaluate_gate(G(max=30, use="ci_high"), [F(25.0)])
    assert r.status == "passed" and "no interval" in r.message


def test_nan_fails_with_the_warning():
    (r,) = evaluate_gate(G(max=30), [F(math.nan, warnings=("model returned NaN logits",))])
    assert r.status == "failed" and "NaN" in r.message and "model returned NaN logits" in r.message


def test_missing_metric_fails_with_suggestion():
    (r,) = evaluate_gate(G(metric="quality.perplexity/perplexty", max=3), [F(1.0)])
    assert r.status == "failed" and "Did you mean 'quality.perplexity/perplexity'" in r.message


def test_slices_are_matched_canonically():
    f = F(5.0, slice_={"genre": "news", "a": "b"})
    assert canonical_key("quality.perplexity/perplexity[genre=news,a=b]") == f.key
    (r,) = evaluate_gate(G(metric="quality.perplexity/perplexity[genre=news, a=b]", max=6), [f])
    assert r.status == "passed"


@pytest.mark.parametrize(
    "gate, cur, base, status",
    [
        (G(max_rise=0.5), F(10.4), F(10.0), "passed"),
        (G(max_rise=0.5), F(10.6), F(10.0), "failed"),
        (G(max_rise=0.05, relative=True), F(10.4), F(10.0), "passed"),   # +4%
        (G(max_rise=0.05, relative=True), F(10.6), F(10.0), "failed"),   # +6%
        (G(max_drop=0.01), F(0.90, hib=True), F(0.92, hib=True), "failed"),
        (G(max_drop=0.01), F(0.95, hib=True), F(0.92, hib=True), "passed"),  # improved
        # significant_only: a rise beyond the limit passes while the intervals overlap...
        (G(max_rise=0.5, significant_only=True), F(11.0, (10.2, 11.8)), F(10.0, (9.3, 10.6)), "passed"),
        # ...and fails once they do not.
        (G(max_rise=0.5, significant_only=True), F(11.0, (10.8, 11.2)), F(10.0, (9.8, 10.2)), "failed"),
        # without intervals it is judged on the values, and says so
        (G(max_rise=0.5, significant_only=True), F(11.0), F(10.0), "failed"),
    ],
)
def test_regression_gates(gate, cur, base, status):
    (r,) = evaluate_gate(gate, [cur], [base])
    assert r.status == status, r.message


def test_regression_without_baseline_is_skipped_not_failed():
    (r,) = evaluate_gate(G(max_rise=0.5), [F(10.0)], None)
    assert r.status == "skipped" and r.passed and "--baseline" in r.message
    (r,) = evaluate_gate(G(max_rise=0.5), [F(10.0)], [])
    assert r.status == "skipped" and "baseline has no such finding" in r.message


def test_relative_with_zero_baseline_and_nan_baseline_fail():
    (r,) = evaluate_gate(G(max_rise=0.1, relative=True), [F(1.0)], [F(0.0)])
    assert r.status == "failed" and "undefined" in r.message
    (r,) = evaluate_gate(G(max_rise=0.1), [F(1.0)], [F(math.nan)])
    assert r.status == "failed" and "baseline value is NaN" in r.message


def test_gate_with_bound_and_regression_gives_two_results():
    results = evaluate_gates([G(max=30, max_rise=1)], [F(12.0)], [F(10.0)])
    assert [r.status for r in results] == ["passed", "failed"]
