"""The disaggregation engine against Fairlearn's own functions, and hand-derived numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, f1_score

from audit.errors import InputError, SpecError
from probes.bias.engine import (
    POLICIES,
    binary_labels,
    disaggregate,
    evaluate_policy,
    holm,
    policy_from_dict,
)
from tests.bias_fakes import synthetic_table

ALL4 = ["selection_rate", "accuracy", "true_positive_rate", "false_positive_rate"]


@pytest.fixture(scope="module")
def table():
    return synthetic_table(n=3000, seed=1)


def test_values_equal_fairlearn_per_column_and_intersectional(table):
    y, p = table["label"].to_numpy(), table["pred"].to_numpy()
    for cols in (["sex"], ["race"], ["sex", "race"]):
        sf = table[cols] if len(cols) > 1 else table[cols[0]]
        d = disaggregate(y, p, table[cols], metrics=ALL4, min_group_size=1, n_resamples=200, seed=0)
        mf = MetricFrame(metrics={"sr": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate,
                                  "acc": accuracy_score}, y_true=y, y_pred=p, sensitive_features=sf)
        for ours, theirs in (("selection_rate", "sr"), ("true_positive_rate", "tpr"),
                             ("false_positive_rate", "fpr"), ("accuracy", "acc")):
            by = d.by_group(ours)
            for key, v in by.items():
                ref = mf.by_group[theirs].loc[key if len(cols) > 1 else key[0]]
                assert v == pytest.approx(ref, abs=1e-12)
            assert d.overall(ours)[0] == pytest.approx(mf.overall[theirs], abs=1e-12)
        assert d.gap("selection_rate", "difference").value == pytest.approx(
            demographic_parity_difference(y, p, sensitive_features=sf), abs=1e-12)
        assert d.gap("selection_rate", "ratio").value == pytest.approx(
            demographic_parity_ratio(y, p, sensitive_features=sf), abs=1e-12)
        assert d.gap("selection_rate", "difference_to_overall").value == pytest.approx(
            demographic_parity_difference(y, p, sensitive_features=sf, method="to_overall"), abs=1e-12)
        assert d.gap("selection_rate", "ratio_to_overall").value == pytest.approx(
            demographic_parity_ratio(y, p, sensitive_features=sf, method="to_overall"), abs=1e-12)
        eo = d.combined_gap("eo", ["true_positive_rate", "false_positive_rate"], "difference", "max")
        assert eo.value == pytest.approx(equalized_odds_difference(y, p, sensitive_features=sf), abs=1e-12)
        eor = d.combined_gap("eor", ["true_positive_rate", "false_positive_rate"], "ratio", "min")
        assert eor.value == pytest.approx(equalized_odds_ratio(y, p, sensitive_features=sf), abs=1e-12)
        # the intervals hold the point values
        for m in ALL4:
            g = d.gap(m, "difference")
            assert g.ci.low <= g.value <= g.ci.high
        assert eo.ci.low <= eo.value <= eo.ci.high


def test_any_callable_metric_by_group_equals_metricframe(table):
    y, p = table["label"].to_numpy(), table["pred"].to_numpy()
    d = disaggregate(y, p, table["race"], metrics={"f1": f1_score}, min_group_size=1, n_resamples=40)
    mf = MetricFrame(metrics=f1_score, y_true=y, y_pred=p, sensitive_features=table["race"])
    for (g,), v in d.by_group("f1").items():
        assert v == pytest.approx(mf.by_group.loc[g])
    assert d.gap("f1", "difference").value == pytest.approx(mf.difference())
    assert d.gap("f1", "ratio").value == pytest.approx(mf.ratio())
    for gv in d.groups("f1"):
        assert gv.ci.low <= gv.value <= gv.ci.high


def test_wilson_intervals_for_rates_and_bootstrap_coverage():
    # Hand check: group 'a' has 45 of 50 selected; Wilson 95% is (0.786, 0.957).
    y = np.zeros(100, dtype=int)
    p = np.r_[np.ones(45), np.zeros(5), np.ones(20), np.zeros(30)].astype(int)
    sf = pd.Series(["a"] * 50 + ["b"] * 50, name="g")
    d = disaggregate(y, p, sf, metrics=["selection_rate"], min_group_size=1, n_resamples=2000)
    a = d.groups("selection_rate")[0]
    assert (round(a.ci.low, 3), round(a.ci.high, 3)) == (0.786, 0.957) and a.ci.method == "wilson-95"
    # The difference 0.9 - 0.4 = 0.5; its normal-approximation sd is sqrt(.9*.1/50 + .4*.6/50) = 0.0812,
    # so the 95% bootstrap interval is about 0.5 +- 0.16.
    g = d.gap("selection_rate", "difference")
    assert g.value == pytest.approx(0.5)
    assert g.ci.low == pytest.approx(0.5 - 1.96 * 0.0812, abs=0.03)
    assert g.ci.high == pytest.approx(0.5 + 1.96 * 0.0812, abs=0.03)


def test_small_groups_are_flagged_not_hidden_and_left_out_of_gaps():
    y = np.r_[np.ones(100), np.ones(5)].astype(int)
    p = np.r_[np.ones(50), np.zeros(50), np.zeros(5)].astype(int)  # group 'tiny' has rate 0
    sf = pd.Series(["big"] * 100 + ["tiny"] * 5)
    sf2 = pd.Series(["x"] * 50 + ["y"] * 50 + ["x"] * 5)
    d = disaggregate(y, p, pd.DataFrame({"a": sf, "b": sf2}), metrics=["selection_rate"], min_group_size=10,
                     n_resamples=100)
    groups = {g.group: g for g in d.groups("selection_rate")}
    assert groups[("tiny", "x")].small and groups[("tiny", "x")].n == 5
    assert any("small group" in w for w in groups[("tiny", "x")].warnings)
    gap = d.gap("selection_rate", "difference")
    assert gap.value == pytest.approx(1.0)  # big+x (1.0) vs big+y (0.0)
    assert gap.excluded_small == (("tiny", "x"),)
    assert any("tiny+x" in w for w in gap.warnings)


def test_single_group_gives_nan_gap_with_warning():
    d = disaggregate([0, 1, 1], [0, 1, 0], pd.Series(["a", "a", "a"]), metrics=["selection_rate"],
                     min_group_size=1, n_resamples=100)
    gap = d.gap("selection_rate", "difference")
    assert math.isnan(gap.value) and gap.ci is None
    assert any("fewer than 2 groups" in w for w in gap.warnings)


def test_group_with_no_positives_is_nan_with_warning_not_zero():
    y = np.array([0, 0, 0, 1, 1, 0])
    p = np.array([0, 1, 0, 1, 0, 0])
    sf = pd.Series(["a", "a", "a", "b", "b", "b"])
    d = disaggregate(y, p, sf, metrics=["true_positive_rate", "selection_rate"], min_group_size=1, n_resamples=100)
    a = d.groups("true_positive_rate")[0]
    assert math.isnan(a.value) and any("no positives" in w for w in a.warnings)
    assert true_positive_rate(y[:3], p[:3]) == 0.0  # Fairlearn says 0: we refuse to
    gap = d.gap("true_positive_rate", "difference")
    assert math.isnan(gap.value) and any("undefined" in w for w in gap.warnings)
    # all selection rates 0: the ratio is 0/0, nan with a warning, no crash
    d0 = disaggregate(y, np.zeros(6, dtype=int), sf, metrics=["selection_rate"], min_group_size=1, n_resamples=100)
    r = d0.gap("selection_rate", "ratio")
    assert math.isnan(r.value) and any("ratio undefined" in w for w in r.warnings)


def test_non_binary_labels_for_rate_metrics_is_a_clear_error():
    with pytest.raises(InputError, match="binary values"):
        disaggregate([0, 1, 2], [0, 1, 1], pd.Series(["a", "b", "b"]), metrics=["selection_rate"])
    with pytest.raises(InputError, match="positive_label"):
        binary_labels(["low", "mid", "high"], what="label")
    assert binary_labels(["low", "high"], what="label", positive="high").tolist() == [0, 1]
    with pytest.raises(InputError, match="no value equals"):
        binary_labels(["low", "high"], what="label", positive="HIGH")


def test_holm_matches_hand_derived_values():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max-acc 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.2])
    assert math.isnan(out[1]) and out[[0, 2]].tolist() == pytest.approx([0.5, 0.4])
    # sorted (0.8, 0.9): 0.8 * 2 = 1.6 -> capped at 1; 0.9 * 1 = 0.9, raised to the running max 1
    assert holm([0.9, 0.8]).tolist() == pytest.approx([1.0, 1.0])
    assert holm([0.04]).tolist() == pytest.approx([0.04])


def test_group_vs_rest_tests_are_fisher_exact_with_holm():
    from scipy.stats import fisher_exact

    y = np.zeros(120, dtype=int)
    p = np.r_[np.ones(30), np.zeros(10), np.ones(10), np.zeros(30), np.ones(20), np.zeros(20)].astype(int)
    sf = pd.Series(["a"] * 40 + ["b"] * 40 + ["c"] * 40)
    d = disaggregate(y, p, sf, metrics=["selection_rate"], min_group_size=1, n_resamples=0)
    tests = {t.group[0]: t for t in d.tests()}
    ref_a = fisher_exact([[30, 10], [30, 50]]).pvalue
    assert tests["a"].p_value == pytest.approx(ref_a)
    assert tests["a"].difference == pytest.approx(0.75 - 30 / 80)
    raw = [tests[g].p_value for g in "abc"]
    assert [tests[g].p_holm for g in "abc"] == pytest.approx(holm(raw).tolist())


def test_clustered_bootstrap_keeps_clusters_together():
    # Two groups scored on the same 6 templates; the paired per-template difference is always 1,
    # so a cluster bootstrap gives a degenerate interval at 1 (a row bootstrap would not).
    rng = np.random.default_rng(0)
    base = rng.normal(size=6)
    scores = np.r_[base + 1.0, base]
    groups = pd.Series(["f"] * 6 + ["m"] * 6)
    clusters = np.r_[np.arange(6), np.arange(6)]
    d = disaggregate(None, scores, groups, metrics={"mean": lambda yt, yp: float(np.mean(yp))}, min_group_size=1,
                     n_resamples=200, clusters=clusters)
    g = d.gap("mean", "difference")
    assert g.value == pytest.approx(1.0) and g.ci.low == pytest.approx(1.0) and g.ci.high == pytest.approx(1.0)


def test_policies_four_fifths_is_labelled_a_heuristic_and_custom_ones_validate():
    ff = POLICIES["four_fifths"]
    assert ff.kind == "legal-heuristic" and "not a verdict" in ff.note and ff.min == 0.8
    from audit.findings import Interval

    assert evaluate_policy(ff, 0.9, Interval(0.85, 0.95, "x")) == {"met": True, "confidence": "met",
                                                                   "bound": "demographic_parity_ratio >= 0.8"}
    assert evaluate_policy(ff, 0.7, Interval(0.6, 0.75, "x"))["confidence"] == "not met"
    assert evaluate_policy(ff, float("nan"), None)["met"] is None
    p = policy_from_dict("team", {"metric": "demographic_parity_difference", "max": 0.05})
    assert p.kind == "policy" and evaluate_policy(p, 0.04, None)["met"]
    with pytest.raises(SpecError, match="exactly one of min or max"):
        policy_from_dict("bad", {"metric": "x"})
    with pytest.raises(SpecError, match="unknown keys"):
        policy_from_dict("bad", {"metric": "x", "max": 1, "maximum": 2})


def _adult_like():
    """Two big groups, and two groups of more than 30 rows with only 3 and 5 positives (TPR 0/3
    and 4/5): the sex+race cells that made equalized odds 0.80 on Adult with no warning."""
    rng = np.random.default_rng(0)
    parts = []
    for name, n, pos, tp, fp in (("a", 1000, 400, 200, 60), ("b", 1000, 500, 300, 50), ("c", 40, 3, 0, 4),
                                 ("d", 35, 5, 4, 3)):
        y = np.r_[np.ones(pos), np.zeros(n - pos)].astype(int)
        p = np.r_[np.ones(tp), np.zeros(pos - tp), np.ones(fp), np.zeros(n - pos - fp)].astype(int)
        order = rng.permutation(n)
        parts.append((y[order], p[order], [name] * n))
    y, p, g = (np.concatenate([x[i] for x in parts]) for i in range(3))
    return y, p, pd.Series(g, name="group")


def test_rates_on_too_few_positives_are_flagged_and_left_out_of_the_gaps():
    from fairlearn.metrics import equalized_odds_difference

    y, p, sf = _adult_like()
    d = disaggregate(y, p, sf, metrics=["true_positive_rate", "false_positive_rate", "selection_rate"],
                     min_group_size=30, n_resamples=200)
    tpr = {g.group[0]: g for g in d.groups("true_positive_rate")}
    assert tpr["c"].value == 0.0 and tpr["d"].value == pytest.approx(0.8)  # 0/3 and 4/5, reported
    for k, positives in (("c", 3), ("d", 5)):
        assert tpr[k].small and tpr[k].n > 30 and tpr[k].denominator == positives
        assert any(f"rests on {positives} positives (label 1)" in w for w in tpr[k].warnings), tpr[k].warnings
    # The same groups have enough rows and negatives: selection rate and FPR keep them.
    assert not any(g.small for g in d.groups("selection_rate"))
    assert not any(g.small for g in d.groups("false_positive_rate"))
    gap = d.gap("true_positive_rate", "difference")
    assert gap.value == pytest.approx(0.6 - 0.5) and set(gap.excluded_small) == {("c",), ("d",)}
    assert gap.value_all_groups == pytest.approx(0.8)  # what Fairlearn reports over every group
    eo = d.combined_gap("equalized_odds_difference", ("true_positive_rate", "false_positive_rate"))
    fpr = {k: fp / neg for k, fp, neg in (("a", 60, 600), ("b", 50, 500), ("c", 4, 37), ("d", 3, 30))}
    assert eo.value == pytest.approx(max(0.1, max(fpr.values()) - min(fpr.values())))
    assert eo.value_all_groups == pytest.approx(equalized_odds_difference(y, p, sensitive_features=sf))
    # Two sentences, one per rate, each saying which gap it is.
    tpr_w = [w for w in eo.warnings if "true_positive_rate difference is 0.8" in w]
    assert len(tpr_w) == 1 and "or fewer positives (label 1)" in tpr_w[0]
    assert all("over all groups the difference" not in w for w in eo.warnings)

