"""audit.stats against independent references: SciPy's formulas and hand-derived numbers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from audit.stats import bootstrap_ci, bootstrap_ratio_ci, intervals_overlap, wilson_interval
from audit.findings import Interval


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (45, 50), (50, 50), (1, 1), (500, 1000)])
def test_wilson_matches_scipy(k, n):
    ours = wilson_interval(k, n)
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert ours.low == pytest.approx(ref.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.high, abs=1e-12)
    assert ours.method == "wilson-95"


def test_wilson_hand_derived():
    # p = 0.5, n = 100, z = 1.959964: centre 0.5, half-width z*sqrt(.25/100 + z^2/40000)/(1+z^2/100)
    z = sps.norm.ppf(0.975)
    half = z * math.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    iv = wilson_interval(50, 100)
    assert iv.low == pytest.approx(0.5 - half) and iv.high == pytest.approx(0.5 + half)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)
    assert wilson_interval(0, 0) is None


def test_bootstrap_ratio_matches_explicit_resampling():
    # The multinomial-count form must equal resampling documents one by one.
    rng = np.random.default_rng(3)
    num, den = rng.gamma(5, 2, size=30), rng.integers(5, 50, size=30).astype(float)
    iv = bootstrap_ratio_ci(num, den, n_resamples=4000, seed=1, transform=np.exp)
    boot = []
    r2 = np.random.default_rng(99)
    for _ in range(4000):
        idx = r2.integers(0, 30, size=30)
        boot.append(math.exp(num[idx].sum() / den[idx].sum()))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    # Two independent Monte Carlo runs of the same bootstrap: agree to Monte Carlo error.
    assert iv.low == pytest.approx(lo, rel=0.02) and iv.high == pytest.approx(hi, rel=0.02)
    point = math.exp(num.sum() / den.sum())
    assert iv.low < point < iv.high


def test_bootstrap_ratio_edge_cases():
    assert bootstrap_ratio_ci([1.0], [2.0]) is None
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_ratio_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ratio_ci([1.0, 2.0], [1.0, 1.0], confidence=1.5)


def test_bootstrap_mean_close_to_normal_theory():
    x = np.random.default_rng(0).normal(10, 2, size=400)
    iv = bootstrap_ci(x, n_resamples=4000)
    se = x.std(ddof=1) / math.sqrt(x.size)
    z = sps.norm.ppf(0.975)
    assert iv.low == pytest.approx(x.mean() - z * se, abs=0.03)
    assert iv.high == pytest.approx(x.mean() + z * se, abs=0.03)


def test_bootstrap_degenerate_and_tiny():
    assert bootstrap_ci([1.0]) is None
    iv = bootstrap_ci([2.0, 2.0, 2.0])
    assert (iv.low, iv.high) == (2.0, 2.0)
    assert bootstrap_ci([1.0, float("nan")]) is None  # NaNs dropped, one value left


def test_intervals_overlap():
    a, b, c = Interval(0, 1, "m"), Interval(0.5, 2, "m"), Interval(1.5, 3, "m")
    assert intervals_overlap(a, b) is True
    assert intervals_overlap(a, c) is False
    assert intervals_overlap(a, None) is None
