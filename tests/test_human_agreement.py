"""Krippendorff's alpha against the `krippendorff` package, Cohen's kappa against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probes.human.agreement import cohen_kappa, krippendorff_alpha


def _data(seed, raters=4, units=30, missing=0.2, k=5):
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, k + 1, units)
    noise = rng.integers(-1, 2, (raters, units)) * (rng.random((raters, units)) < 0.4)
    d = np.clip(truth + noise, 1, k).astype(float)
    d[rng.random((raters, units)) < missing] = np.nan
    return d


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_matches_the_krippendorff_package(level, seed):
    kd = pytest.importorskip("krippendorff")
    d = _data(seed)
    assert krippendorff_alpha(d, level=level) == pytest.approx(
        kd.alpha(reliability_data=d, level_of_measurement=level), abs=1e-10)


def test_alpha_known_cases():
    # Krippendorff (2011)'s worked nominal example: 4 raters, 12 units, alpha = 0.743.
    n = None
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
            [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    assert krippendorff_alpha(data, level="nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([[1, 2, 1], [1, 2, 1]]) == 1.0
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1]]))
    with pytest.raises(ValueError, match="level must be"):
        krippendorff_alpha([[1]], level="ratio-ish")


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_kappa_matches_sklearn(weights):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    a = rng.integers(1, 6, 60)
    b = np.clip(a + rng.integers(-1, 2, 60), 1, 5)
    assert cohen_kappa(list(a), list(b), weights=weights) == pytest.approx(
        cohen_kappa_score(a, b, weights=weights), abs=1e-12)
    labels = ["real", "fake"]
    x = [labels[i] for i in rng.integers(0, 2, 40)]
    y = [labels[i] for i in rng.integers(0, 2, 40)]
    assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
