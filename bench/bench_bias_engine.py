"""Benchmark: the disaggregation engine vs Fairlearn's own bootstrap (MetricFrame n_boot).

Both compute selection rate, TPR, FPR and accuracy by group (sex x race, 10 groups) with
bootstrap intervals on the same data; the engine's rate-metric bootstrap is one multinomial
draw per group, Fairlearn rebuilds a MetricFrame per resample. Prints seconds and the ratio,
and how close the two 95% intervals of the demographic parity difference are.

    .venv/bin/python bench/bench_bias_engine.py --rows 16000 --boot 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import accuracy_score

from probes.bias.engine import disaggregate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16000)
    ap.add_argument("--boot", type=int, default=200)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    sf = pd.DataFrame({"sex": rng.choice(["F", "M"], a.rows, p=[.35, .65]),
                       "race": rng.choice(list("ABCDE"), a.rows, p=[.6, .2, .1, .06, .04])})
    y = rng.integers(0, 2, a.rows)
    p = (rng.random(a.rows) < np.where(sf["sex"] == "M", 0.3, 0.15)).astype(int)

    t = time.perf_counter()
    d = disaggregate(y, p, sf, metrics=["selection_rate", "true_positive_rate", "false_positive_rate", "accuracy"],
                     min_group_size=1, n_resamples=a.boot)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    mf = MetricFrame(metrics={"sr": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate,
                              "acc": accuracy_score}, y_true=y, y_pred=p, sensitive_features=sf,
                     n_boot=a.boot, ci_quantiles=[0.025, 0.975], random_state=0)
    theirs = time.perf_counter() - t
    ci = d.gap("selection_rate", "difference").ci
    fl = mf.difference_ci()
    print(f"rows={a.rows} groups={len(d.group_sizes)} resamples={a.boot}")
    print(f"engine    {ours:8.2f} s   dp-difference 95% CI [{ci.low:.4f}, {ci.high:.4f}]")
    print(f"fairlearn {theirs:8.2f} s   dp-difference 95% CI [{fl[0]['sr']:.4f}, {fl[1]['sr']:.4f}]")
    print(f"speed-up  {theirs / ours:8.1f}x")


if __name__ == "__main__":
    main()
