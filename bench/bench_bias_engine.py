"""Benchmark: the disaggregation engine's arithmetic against Fairlearn's MetricFrame, like with like.

Selection rate, TPR, FPR and accuracy by group (sex x race, 10 groups) on the same rows, in
two comparisons whose values must be equal:

1. **point values**: ``disaggregate(..., n_resamples=0)`` against ``MetricFrame`` without a
   bootstrap: every group's value and every between-groups difference;
2. **the same bootstrap**, point values included on both sides: Fairlearn's own (``MetricFrame(n_boot=B, random_state=seed)``,
   which resamples all rows and rebuilds a frame per resample) against the engine's
   count arithmetic (confusion counts per group per resample, the rate metrics'
   ``from_counts``, ``gap_statistic``) on *the very same resamples*, drawn here exactly as
   Fairlearn draws them (one ``RandomState(seed_b).choice`` per resample). The 95% intervals
   of every difference and of every group's value must be equal.

The engine's own bootstrap, as audits run it, is a different scheme (each group resampled
within itself, as one multinomial draw per group): its time and its interval of the
selection-rate difference are printed beside, with no ratio, since the two do not compute
the same thing.

The sides alternate in each of ``--repeats`` rounds; each round gives one ratio, and the min
and median are printed with the size and ``os.getloadavg()``.

    .venv/bin/python bench/bench_bias_engine.py --rows 16000 --boot 200
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate  # noqa: E402
from sklearn.metrics import accuracy_score  # noqa: E402

from probes.bias.engine import RATE_METRICS, disaggregate  # noqa: E402
from probes.bias.gaps import gap_statistic  # noqa: E402
from ratios import alternate, load_avg, ratio_line, ratio_stats  # noqa: E402

METRICS = {"selection_rate": selection_rate, "true_positive_rate": true_positive_rate,
           "false_positive_rate": false_positive_rate, "accuracy": accuracy_score}
QUANTILES = [0.025, 0.975]


def data(rows: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(0)
    sf = pd.DataFrame({"sex": rng.choice(["F", "M"], rows, p=[.35, .65]),
                       "race": rng.choice(list("ABCDE"), rows, p=[.6, .2, .1, .06, .04])})
    y = rng.integers(0, 2, rows)
    p = (rng.random(rows) < np.where(sf["sex"] == "M", 0.3, 0.15)).astype(int)
    return y, p, sf


def fairlearn_resamples(n_rows: int, n_boot: int, seed: int):
    """The row indices of Fairlearn's bootstrap resamples, as ``MetricFrame(random_state=seed)``
    draws them (fairlearn.metrics._bootstrap: one uint32 seed per resample from
    ``default_rng(seed)``, then ``DataFrame.sample(frac=1, replace=True, random_state=that)``)."""
    seeds = np.random.default_rng(seed).integers(0, np.iinfo(np.uint32).max, size=n_boot, dtype=np.uint32)
    for s in seeds:
        yield np.random.RandomState(s).choice(n_rows, size=n_rows, replace=True)


def engine_bootstrap(y, p, codes, n_groups, n_boot, seed) -> dict[str, dict]:
    """The engine's arithmetic on Fairlearn's resamples: counts [B, G, 4], then each rate metric's
    per-group values, between-groups difference and their 95% percentile intervals."""
    cells = y * 2 + p  # tn=0, fp=1, fn=2, tp=3, as in probes.bias.engine
    flat = np.empty((n_boot, len(y)), dtype=np.int64)
    for b, idx in enumerate(fairlearn_resamples(len(y), n_boot, seed)):
        flat[b] = codes[idx] * 4 + cells[idx]
    flat += (np.arange(n_boot) * n_groups * 4)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_boot * n_groups * 4).reshape(n_boot, n_groups, 4)
    out = {}
    for name in METRICS:
        by_group = RATE_METRICS[name].from_counts(counts)  # [B, G]
        diff = gap_statistic(by_group, np.zeros(n_boot), "difference")
        out[name] = {"difference_ci": np.quantile(diff, QUANTILES).tolist(),
                     "by_group_ci": np.nanquantile(by_group, QUANTILES, axis=0).tolist()}
    return out


def fairlearn_bootstrap(y, p, sf, n_boot, seed) -> dict[str, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = MetricFrame(metrics=METRICS, y_true=y, y_pred=p, sensitive_features=sf, n_boot=n_boot,
                         ci_quantiles=QUANTILES, random_state=seed)
    lo, hi = mf.difference_ci()
    glo, ghi = mf.by_group_ci
    return {name: {"difference_ci": [float(lo[name]), float(hi[name])],
                   "by_group_ci": [glo[name].to_numpy().tolist(), ghi[name].to_numpy().tolist()]}
            for name in METRICS}


def largest_difference(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(a[m][k], dtype=float) - np.asarray(b[m][k], dtype=float))))
               for m in METRICS for k in ("difference_ci", "by_group_ci"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16000)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds; min and median of the ratios")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args(argv)
    y, p, sf = data(a.rows)
    names = list(METRICS)
    # Group ids in MetricFrame's (sorted) order.
    keys = list(map(tuple, sf.astype(str).to_numpy()))
    uniques = sorted(set(keys))
    codes = pd.Series(keys).map({k: i for i, k in enumerate(uniques)}).to_numpy()

    def ours_point():
        d = disaggregate(y, p, sf, metrics=names, min_group_size=1, n_resamples=0)
        return {m: {"by_group": [d.by_group(m)[k] for k in uniques], "difference": d.gap(m).value} for m in names}

    def fl_point():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mf = MetricFrame(metrics=METRICS, y_true=y, y_pred=p, sensitive_features=sf)
        diff = mf.difference()
        return {m: {"by_group": mf.by_group[m].to_numpy().tolist(), "difference": float(diff[m])} for m in names}

    def ours_boot():  # point values and intervals, as MetricFrame(n_boot=...) computes both
        ours_point()
        return engine_bootstrap(y, p, codes, len(uniques), a.boot, a.seed)

    def fl_boot():
        return fairlearn_bootstrap(y, p, sf, a.boot, a.seed)

    def engine_own():
        d = disaggregate(y, p, sf, metrics=names, min_group_size=1, n_resamples=a.boot, seed=a.seed)
        ci = d.gap("selection_rate", "difference").ci
        return [ci.low, ci.high]

    times, out = alternate({"ours_point": ours_point, "fl_point": fl_point, "ours_boot": ours_boot,
                            "fl_boot": fl_boot, "engine_own": engine_own}, repeats=a.repeats)
    point_diff = max(abs(float(np.max(np.abs(np.subtract(out["ours_point"][m][k], out["fl_point"][m][k])))))
                     for m in names for k in ("by_group", "difference"))
    boot_diff = largest_difference(out["ours_boot"], out["fl_boot"])
    result = {
        "rows": a.rows, "groups": len(uniques), "resamples": a.boot, "repeats": a.repeats, "load_avg": load_avg(),
        "seconds": times,
        "point": {"ratio": ratio_stats(times["ours_point"], times["fl_point"]), "largest_difference": point_diff,
                  "equal_within_1e-12": point_diff <= 1e-12},
        "same_bootstrap": {"ratio": ratio_stats(times["ours_boot"], times["fl_boot"]), "largest_difference": boot_diff,
                           "equal_within_1e-12": boot_diff <= 1e-12,
                           "dp_difference_ci": {"engine": out["ours_boot"]["selection_rate"]["difference_ci"],
                                                "fairlearn": out["fl_boot"]["selection_rate"]["difference_ci"]}},
        "engine_own_bootstrap": {"scheme": "within groups (multinomial per group)", "dp_difference_ci": out["engine_own"],
                                 "seconds_min": min(times["engine_own"])},
    }
    print(f"rows={a.rows} groups={len(uniques)} resamples={a.boot} rounds={a.repeats}; load {result['load_avg']}")
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(ratio_line("point values", result["point"]["ratio"])
          + f"   ({med['ours_point']:.3f} s vs {med['fl_point']:.3f} s median), largest difference {point_diff:.1e}")
    print(ratio_line("same bootstrap (all rows)", result["same_bootstrap"]["ratio"])
          + f"   ({med['ours_boot']:.3f} s vs {med['fl_boot']:.3f} s median), largest difference {boot_diff:.1e}")
    fl_ci = result["same_bootstrap"]["dp_difference_ci"]
    print(f"  dp-difference 95% CI: engine arithmetic [{fl_ci['engine'][0]:.4f}, {fl_ci['engine'][1]:.4f}], "
          f"fairlearn [{fl_ci['fairlearn'][0]:.4f}, {fl_ci['fairlearn'][1]:.4f}]")
    print(f"  engine's own bootstrap (within groups, another scheme, no ratio): {min(times['engine_own']):.3f} s, "
          f"dp-difference CI [{out['engine_own'][0]:.4f}, {out['engine_own'][1]:.4f}]")
    equal = result["point"]["equal_within_1e-12"] and result["same_bootstrap"]["equal_within_1e-12"]
    result["values_equal"] = equal
    print(f"  values equal: {'yes' if equal else 'NO'}")
    if a.json_out:
        a.json_out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
