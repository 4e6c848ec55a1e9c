"""Benchmark: the cost of one paired delta (audit.units) per statistic, and the unpaired one.

For ``--units`` units and ``--resamples`` resamples it times :func:`audit.units.paired_delta_interval`
for ``mean``, ``ratio``, ``exp_ratio``, ``auroc`` and ``auroc_pairs``, and the unpaired bootstrap
of ``exp_ratio``, and prints the min and median over ``--repeats`` runs. Beside it: the existing
unpaired interval of one finding (``audit.stats.bootstrap_ratio_ci``), which every probe already
pays once per finding. On a shared machine the figures are noisy: give the load beside them.

Usage::

    .venv/bin/python bench/bench_units.py --units 10000 --resamples 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from audit.findings import Units  # noqa: E402
from audit.stats import bootstrap_ratio_ci  # noqa: E402
from audit.units import paired_delta_interval, unpaired_delta_interval  # noqa: E402


def _units(n: int, rng: np.random.Generator) -> dict[str, tuple[Units, Units]]:
    ids = [f"d{i}" for i in range(n)]
    tokens = rng.integers(20, 500, n).astype(float)
    nll = rng.lognormal(1.0, 0.5, n) * tokens
    score, label = rng.normal(0, 1, n), rng.integers(0, 2, n)
    pairs = {"negative": rng.normal(0, 1, n), "positive": rng.normal(0.5, 1, n)}
    noisy = {"negative": pairs["negative"] + 0.1, "positive": pairs["positive"] - 0.1}
    return {
        "mean": (Units("mean", ids, {"x": nll / tokens}), Units("mean", ids, {"x": nll / tokens + 0.01})),
        "ratio": (Units("ratio", ids, {"num": nll, "den": tokens}), Units("ratio", ids, {"num": nll * 1.01, "den": tokens})),
        "exp_ratio": (Units("exp_ratio", ids, {"num": nll, "den": tokens}),
                      Units("exp_ratio", ids, {"num": nll * 1.01, "den": tokens})),
        "auroc": (Units("auroc", ids, {"score": score, "label": label}),
                  Units("auroc", ids, {"score": score + rng.normal(0, 0.1, n), "label": label})),
        "auroc_pairs": (Units("auroc_pairs", ids, pairs), Units("auroc_pairs", ids, noisy)),
    }


def _time(fn, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"min_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    cases = _units(args.units, rng)
    out: dict = {"units": args.units, "resamples": args.resamples, "load": os.getloadavg()[0], "paired": {}}
    for name, (b, v) in cases.items():
        out["paired"][name] = _time(lambda b=b, v=v: paired_delta_interval(b, v, n_resamples=args.resamples),
                                    args.repeats)
    b, v = cases["exp_ratio"]
    out["unpaired_exp_ratio"] = _time(lambda: unpaired_delta_interval(b, v, n_resamples=args.resamples),
                                      args.repeats)
    num, den = np.asarray(b.columns["num"]), np.asarray(b.columns["den"])
    out["one_finding_bootstrap_ratio_ci"] = _time(
        lambda: bootstrap_ratio_ci(num, den, transform=np.exp, n_resamples=args.resamples), args.repeats)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
