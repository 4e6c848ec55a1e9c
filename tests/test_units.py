"""Paired deltas (audit.units) and the unit statistics (audit.unitstats), against independent references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from audit.findings import Finding, Interval, Units
from audit.units import (
    STATISTICS,
    attach_deltas,
    evaluate_units,
    normal_delta_interval,
    paired_delta_interval,
    register_statistic,
    unpaired_delta_interval,
)
from audit.unitstats import statistic_info


def _finding(units: Units | None, value: float | None = None, *, variant: str | None = None,
             ci: Interval | None = None, metric: str = "loss") -> Finding:
    if value is None:
        value = evaluate_units(units)
    return Finding(probe="p", metric=metric, value=value, higher_is_better=False, variant=variant, ci=ci,
                   units=units)


def _ids(n: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# -- (a) pairing narrows the interval ----------------------------------------------------------------
def test_paired_interval_is_strictly_narrower_than_unpaired_for_correlated_units() -> None:
    rng = np.random.default_rng(1)
    n = 200
    # Per-document losses that vary a lot between documents; the variant is the same model,
    # slightly worse on every document, with small per-document noise.
    base = rng.lognormal(1.0, 0.8, n)
    var = base + 0.05 + rng.normal(0, 0.02, n)
    bu, vu = Units("mean", _ids(n), {"x": base}), Units("mean", _ids(n), {"x": var})
    paired, _, n_pairs = paired_delta_interval(bu, vu, seed=3)
    unpaired, _ = unpaired_delta_interval(bu, vu, seed=3)
    assert n_pairs == n
    assert paired.method == "paired-bootstrap-percentile-95"
    assert unpaired.method == "unpaired-bootstrap-percentile-95"
    assert paired.high - paired.low < 0.1 * (unpaired.high - unpaired.low)
    assert paired.contains(float(np.mean(var - base)))
    assert paired.low > 0 > unpaired.low  # pairing finds the regression that two intervals hide

    # The same through attach_deltas, for a perplexity-like ratio statistic.
    tokens = rng.integers(20, 400, n).astype(float)
    nll_b = base * tokens
    nll_v = nll_b * 1.01 + rng.normal(0, 0.5, n)
    fb = _finding(Units("exp_ratio", _ids(n), {"num": nll_b, "den": tokens}))
    fv = _finding(Units("exp_ratio", _ids(n), {"num": nll_v, "den": tokens}), variant="int8")
    d = attach_deltas([fb, fv])[1].delta
    assert d.paired and d.n_pairs == n and d.ci.method == "paired-bootstrap-percentile-95"
    u_ci, _ = unpaired_delta_interval(fb.units, fv.units)
    assert d.ci.high - d.ci.low < 0.2 * (u_ci.high - u_ci.low)
    assert d.ci.contains(d.value) and d.ci_relative.contains(d.relative)


# -- (b) against hand computation ---------------------------------------------------------------------
def test_paired_bootstrap_matches_the_exact_bootstrap_distribution_at_tiny_n() -> None:
    base = np.array([3.0, 1.0, 4.0, 1.5])
    d = np.array([0.0, 1.0, 3.0, 9.0])  # per-unit differences; the paired mean difference is mean(d[draw])
    n = d.size
    # Every one of the n^n equally likely draws of unit indices.
    means = np.array([d[list(draw)].mean() for draw in itertools.product(range(n), repeat=n)])
    values, counts = np.unique(means, return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()

    def exact_quantile(q: float) -> float:
        return float(values[np.searchsorted(cdf, q)])

    ci, _, n_pairs = paired_delta_interval(Units("mean", _ids(n), {"x": base}),
                                           Units("mean", _ids(n), {"x": base + d}),
                                           n_resamples=40_000, seed=0)
    assert n_pairs == n
    # The Monte Carlo percentile lies within the exact distribution's quantiles a little either side.
    assert exact_quantile(0.015) <= ci.low <= exact_quantile(0.035)
    assert exact_quantile(0.965) <= ci.high <= exact_quantile(0.985)
    # By hand: P(mean = 0) = 1/256 (unit 0 drawn 4 times), P(mean = 1/4) = 4/256 (unit 1 once), so
    # P(mean <= 1/4) = 5/256 < 0.025 <= P(mean <= 1/2) = (5 + 6) / 256 (unit 1 twice, unit 0 twice).
    assert exact_quantile(0.025) == 0.5 and 5 / 256 < 0.025 <= 11 / 256
    assert ci.low == pytest.approx(0.5, abs=0.25)
    # The whole distribution, through the bounds at other levels (same resamples: same seed).
    for level in (0.5, 0.8, 0.9):
        lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
        ci, _, _ = paired_delta_interval(Units("mean", _ids(n), {"x": base}), Units("mean", _ids(n), {"x": base + d}),
                                         n_resamples=40_000, seed=0, confidence=level)
        assert exact_quantile(lo_q - 0.01) <= ci.low <= exact_quantile(lo_q + 0.01), level
        assert exact_quantile(hi_q - 0.01) <= ci.high <= exact_quantile(hi_q + 0.01), level


def test_paired_bootstrap_se_matches_normal_theory_at_large_n() -> None:
    rng = np.random.default_rng(7)
    n = 2000
    base = rng.normal(10, 3, n)
    var = base + rng.normal(0.2, 0.5, n)
    ci, ci_rel, _ = paired_delta_interval(Units("mean", _ids(n), {"x": base}), Units("mean", _ids(n), {"x": var}),
                                          n_resamples=4000, seed=1)
    dd = var - base
    se = dd.std() / math.sqrt(n)
    z = sps.norm.ppf(0.975)
    assert (ci.high - ci.low) / (2 * z) == pytest.approx(se, rel=0.06)
    assert (ci.low + ci.high) / 2 == pytest.approx(dd.mean(), abs=0.1 * se)
    # Relative: close to the absolute interval over the base mean (the base mean's own spread is small).
    assert ci_rel.low == pytest.approx(ci.low / base.mean(), rel=0.05)


def test_relative_interval_of_a_proportional_change_is_exact() -> None:
    x = np.arange(1.0, 31.0)
    ci, ci_rel, _ = paired_delta_interval(Units("ratio", _ids(30), {"num": x, "den": np.ones(30)}),
                                          Units("ratio", _ids(30), {"num": 1.1 * x, "den": np.ones(30)}))
    assert ci_rel.low == pytest.approx(0.1) and ci_rel.high == pytest.approx(0.1)
    assert ci.low < ci.high  # the absolute change scales with the resampled base


# -- (c) statistics against references ---------------------------------------------------------------
def test_statistics_with_unit_weights_match_their_formulas_and_integer_weights_match_repetition() -> None:
    rng = np.random.default_rng(0)
    n = 40
    x, den = rng.normal(2, 1, n), rng.integers(1, 50, n).astype(float)
    score, label = np.round(rng.normal(0, 1, n), 1), rng.integers(0, 2, n)  # rounded: ties
    w = rng.integers(0, 4, n).astype(float)
    rep = np.repeat(np.arange(n), w.astype(int))
    ones = np.ones(n)
    cases = [
        ("mean", {"x": x}, lambda i: sps.tmean(x[i])),
        ("ratio", {"num": x, "den": den}, lambda i: x[i].sum() / den[i].sum()),
        ("exp_ratio", {"num": x, "den": den}, lambda i: math.exp(x[i].sum() / den[i].sum())),
        ("auroc", {"score": score, "label": label}, lambda i: roc_auc_score(label[i], score[i])),
    ]
    for name, cols, ref in cases:
        fn = STATISTICS[name]
        assert float(fn(cols, ones)) == pytest.approx(ref(np.arange(n)), rel=1e-12), name
        assert float(fn(cols, w)) == pytest.approx(ref(rep), rel=1e-12), name
        # The vectorized form: one value per row of a weight matrix.
        many = np.stack([ones, w, w[::-1]])
        assert np.allclose(fn(cols, many), [fn(cols, r) for r in many], rtol=1e-12), name
    # AUROC against the Mann-Whitney U of SciPy too (ties count one half).
    u = sps.mannwhitneyu(score[label == 1], score[label == 0]).statistic
    assert float(STATISTICS["auroc"]({"score": score, "label": label}, ones)) == pytest.approx(
        u / ((label == 1).sum() * (label == 0).sum()))
    # AUROC weights are sklearn's sample weights.
    assert float(STATISTICS["auroc"]({"score": score, "label": label}, w)) == pytest.approx(
        roc_auc_score(label, score, sample_weight=w))


def test_auroc_pairs_is_auroc_over_both_texts_of_each_pair() -> None:
    rng = np.random.default_rng(2)
    neg, pos = rng.normal(0, 1, 25), rng.normal(0.7, 1, 25)
    pos[3] = np.nan  # left out, as the detectability probe leaves non-finite scores out
    w = rng.integers(0, 3, 25).astype(float)
    keep = np.isfinite(np.r_[neg, pos])
    labels = np.r_[np.zeros(25), np.ones(25)]
    got = STATISTICS["auroc_pairs"]({"negative": neg, "positive": pos}, w)
    assert float(got) == pytest.approx(roc_auc_score(labels[keep], np.r_[neg, pos][keep],
                                                     sample_weight=np.r_[w, w][keep]))


def test_non_finite_values_poison_only_resamples_that_draw_them() -> None:
    x = np.array([1.0, np.nan, 3.0])
    assert math.isnan(STATISTICS["mean"]({"x": x}, np.ones(3)))
    assert float(STATISTICS["mean"]({"x": x}, np.array([1.0, 0.0, 3.0]))) == pytest.approx(2.5)


def test_register_statistic_adds_one_and_refuses_a_taken_name() -> None:
    @register_statistic("test.weighted_median", replace=True)
    def _median(cols, w):
        return float(np.median(np.repeat(cols["x"], np.asarray(w, dtype=int))))

    u = Units("test.weighted_median", _ids(5), {"x": [5.0, 1.0, 3.0, 2.0, 4.0]})
    assert evaluate_units(u) == 3.0 and evaluate_units(u, [0, 3, 0, 0, 1]) == 1.0
    assert not statistic_info("test.weighted_median").vectorized
    # A non-vectorized statistic is looped over resamples and still pairs.
    d = attach_deltas([_finding(u), _finding(Units("test.weighted_median", _ids(5), {"x": [6.0, 2, 4, 3, 5]}),
                                             variant="v")])[1].delta
    assert d.paired and d.ci.low == d.ci.high == 1.0
    with pytest.raises(ValueError, match="already registered"):
        register_statistic("mean")(lambda c, w: 0.0)


# -- (d) fallbacks, mismatched ids, bad units ----------------------------------------------------------
def test_mismatched_ids_pair_over_the_intersection_and_warn() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 30)
    bu = Units("mean", _ids(30), {"x": x})
    keep = [i for i in range(30) if i % 5]  # the variant lost 6 documents and gained 2 others
    vu = Units("mean", [f"d{i}" for i in keep] + ["n1", "n2"], {"x": [x[i] + 0.3 for i in keep] + [9.0, 9.0]})
    out = attach_deltas([_finding(bu), _finding(vu, variant="v")])
    d = out[1].delta
    assert d.paired and d.n_pairs == 24
    assert any("are over the 24 both saw (6 only in the base, 2 only in the variant)" in w
               for w in out[1].warnings)
    # The interval is the paired bootstrap on the shared units (shifted by exactly 0.3).
    assert d.ci.low == pytest.approx(0.3) and d.ci.high == pytest.approx(0.3)
    # ...and so is the point delta, so that the interval holds it (the findings' own difference
    # would count the units only one side saw).
    assert d.value == pytest.approx(0.3) and d.value != pytest.approx(out[1].value - out[0].value)
    assert d.base_value == pytest.approx(float(np.mean([x[i] for i in keep])))


def test_unpaired_fallbacks() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(1, 1, 50)
    units = Units("mean", _ids(50), {"x": x})
    base = _finding(units, ci=Interval(0.8, 1.2, "bootstrap-percentile-95"))
    # Different statistics: two independent bootstraps.
    other = Units("ratio", _ids(50), {"num": x + 1, "den": np.ones(50)})
    d = attach_deltas([base, _finding(other, variant="v")])[1].delta
    assert not d.paired and d.n_pairs is None and d.ci.method == "unpaired-bootstrap-percentile-95"
    # Windows are not pairable even with equal ids.
    wb, wv = Units("window_mean", _ids(50, "w"), {"x": x}), Units("window_mean", _ids(50, "w"), {"x": x + 1})
    d = attach_deltas([_finding(wb), _finding(wv, variant="v")])[1].delta
    assert not d.paired and d.ci.method == "unpaired-bootstrap-percentile-95" and d.ci.contains(1.0)
    # Only one side has units, both have intervals: normal approximation, by hand.
    var = _finding(None, 1.5, variant="v", ci=Interval(1.0, 1.6, "wilson-95"))
    d = attach_deltas([base, var])[1].delta
    half = 1.959963984540054 * math.hypot(0.4 / (2 * 1.959963984540054), 0.6 / (2 * 1.959963984540054))
    diff = 1.5 - base.value
    assert d.ci.method == "unpaired-normal-from-intervals-95" and not d.paired
    assert (d.ci.low, d.ci.high) == pytest.approx((diff - half, diff + half))
    assert (d.ci_relative.low, d.ci_relative.high) == pytest.approx(((diff - half) / base.value,
                                                                     (diff + half) / base.value))
    # An interval at another level is read at its own level.
    ci90, _ = normal_delta_interval(_finding(None, 0.0, ci=Interval(-1, 1, "x-90")),
                                    _finding(None, 0.0, ci=Interval(-1, 1, "x-90")))
    assert ci90.high == pytest.approx(1.959963984540054 * math.sqrt(2) / 1.6448536269514722)
    # No units and no interval on one side: the point delta only.
    d = attach_deltas([base, _finding(None, 2.0, variant="v")])[1].delta
    assert d.value == pytest.approx(2.0 - base.value) and d.ci is None and d.ci_relative is None


def test_nan_values_bad_units_and_reproducibility() -> None:
    x = np.linspace(0, 1, 20)
    u = Units("mean", _ids(20), {"x": x})
    # A NaN finding: the point delta is NaN and there is no interval.
    d = attach_deltas([_finding(u), _finding(u, math.nan, variant="v")])[1].delta
    assert math.isnan(d.value) and d.ci is None
    # Units that do not reproduce the value, an unknown statistic, repeated ids: warned, not used.
    for bad, needle in [(u, "not the finding's"), (Units("meen", _ids(20), {"x": x}), "Did you mean 'mean'"),
                        (Units("mean", ["a"] * 20, {"x": x}), "ids repeat")]:
        value = 7.0 if needle == "not the finding's" else float(x.mean())
        out = attach_deltas([_finding(u), _finding(bad, value, variant="v")])
        assert any(needle in w for w in out[1].warnings), (needle, out[1].warnings)
        assert not out[1].delta.paired
    # Same findings, same intervals; findings without a base match are unchanged.
    v = _finding(Units("mean", _ids(20), {"x": x ** 2}), variant="v")
    lonely = _finding(u, variant="v", metric="other")
    a, b = attach_deltas([_finding(u), v, lonely]), attach_deltas([_finding(u), v, lonely])
    assert a[1].delta == b[1].delta and a[1].delta.paired
    assert a[0].delta is None and a[2] == lonely and a[2].delta is None


def test_parameters_are_checked() -> None:
    u = Units("mean", _ids(5), {"x": np.arange(5.0)})
    with pytest.raises(ValueError, match="confidence"):
        paired_delta_interval(u, u, confidence=1.5)
    with pytest.raises(ValueError, match="one statistic"):
        paired_delta_interval(u, Units("ratio", _ids(5), {"num": np.arange(5.0), "den": np.ones(5)}))
    with pytest.raises(KeyError, match="needs column"):
        evaluate_units(Units("ratio", _ids(5), {"num": np.arange(5.0)}))
    with pytest.raises(ValueError, match="one value per unit"):
        evaluate_units(u, [1, 2])
    ci, rel, n = paired_delta_interval(u, Units("mean", ["z"], {"x": [1.0]}))
    assert ci is None and rel is None and n == 0
    ci90, _, _ = paired_delta_interval(u, Units("mean", _ids(5), {"x": np.arange(5.0) ** 1.5}), confidence=0.9)
    assert ci90.method == "paired-bootstrap-percentile-90"


def test_window_and_group_statistics_against_references() -> None:
    from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio

    import probes.bias.row_units  # noqa: F401  (registers the group gap statistics)

    rng = np.random.default_rng(9)
    n = 60
    num, den = rng.normal(5, 1, n), rng.integers(1, 9, n).astype(float)
    w = rng.integers(0, 3, n).astype(float)
    assert float(STATISTICS["window_ratio"]({"num": num, "den": den}, w)) == pytest.approx(
        float(STATISTICS["ratio"]({"num": num, "den": den}, w)))
    assert float(STATISTICS["window_mean"]({"x": num}, w)) == pytest.approx(np.average(num, weights=w))
    assert not statistic_info("window_ratio").pairable and statistic_info("ratio").pairable
    # Between-groups gaps of selection rates: Fairlearn's demographic parity, on the repeated rows.
    y, pred, group = rng.integers(0, 2, n), rng.integers(0, 2, n), rng.integers(0, 3, n)
    cols = {"num": pred.astype(float), "den": np.ones(n), "group": group.astype(float)}
    rep = np.repeat(np.arange(n), w.astype(int))
    for name, ref in (("group_rate_difference", demographic_parity_difference),
                      ("group_rate_ratio", demographic_parity_ratio)):
        assert float(STATISTICS[name](cols, np.ones(n))) == pytest.approx(ref(y, pred, sensitive_features=group))
        assert float(STATISTICS[name](cols, w)) == pytest.approx(ref(y[rep], pred[rep], sensitive_features=group[rep]))


def test_paired_exp_ratio_matches_its_exact_bootstrap_distribution() -> None:
    # Perplexity-like: per-document NLL sums and token counts; the variant changes some documents.
    num_b, den = np.array([4.0, 9.0, 2.0, 7.0]), np.array([2.0, 5.0, 1.0, 3.0])
    num_v = num_b + np.array([0.5, 0.0, 0.3, 2.0])
    n = 4
    draws = [list(t) for t in itertools.product(range(n), repeat=n)]
    diffs = np.array([math.exp(num_v[i].sum() / den[i].sum()) - math.exp(num_b[i].sum() / den[i].sum())
                      for i in draws])
    rels = np.array([x / math.exp(num_b[i].sum() / den[i].sum()) for x, i in zip(diffs, draws)])
    bu = Units("exp_ratio", _ids(n), {"num": num_b, "den": den})
    vu = Units("exp_ratio", _ids(n), {"num": num_v, "den": den})
    ci, ci_rel, _ = paired_delta_interval(bu, vu, n_resamples=40_000, seed=2)
    for got, exact in ((ci, diffs), (ci_rel, rels)):
        values = np.sort(exact)  # each of the 256 draws has probability 1/256
        lo_range = values[[int(0.015 * 256), int(0.035 * 256)]]
        hi_range = values[[int(0.965 * 256), int(0.985 * 256)]]
        assert lo_range[0] <= got.low <= lo_range[1]
        assert hi_range[0] <= got.high <= hi_range[1]


def test_a_failing_statistic_degrades_to_the_intervals_not_the_audit() -> None:
    calls = {"n": 0}

    @register_statistic("test.fails_when_resampled", replace=True)
    def _fragile(cols, w):
        calls["n"] += 1
        if calls["n"] > 2:  # the two reproduction checks pass, the resamples fail
            raise RuntimeError("boom")
        return float(np.mean(cols["x"]))

    u = Units("test.fails_when_resampled", _ids(4), {"x": [1.0, 2.0, 3.0, 4.0]})
    iv = Interval(2.0, 3.0, "bootstrap-percentile-95")
    out = attach_deltas([_finding(u, 2.5, ci=iv), _finding(u, 2.5, variant="v", ci=iv)])
    assert out[1].delta.ci.method == "unpaired-normal-from-intervals-95"
    assert any("RuntimeError: boom" in w for w in out[1].warnings)
    from audit.units import delta_of

    assert delta_of(_finding(u, 2.5), _finding(u, 2.5, variant="v")).value == 0.0
