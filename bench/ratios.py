"""Side-by-side timing for the benches: contenders alternate within each round, so a drift of a
shared machine's load hits all of them alike, and each round gives one ratio.

The ratio of a round is the other side's time over ours (above 1: ours is faster); the benches
print the min and the median over the rounds, the size, and ``os.getloadavg()``.

Example:
    >>> times, out = alternate({"a": lambda: 1, "b": lambda: 2}, repeats=3, warmup=False)
    >>> len(times["a"]), out["b"]
    (3, 2)
    >>> sorted(ratio_stats([1.0, 2.0, 1.0], [2.0, 2.0, 3.0]))
    ['median', 'min', 'per_round']
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["alternate", "load_avg", "ratio_line", "ratio_stats"]


def alternate(contenders: dict[str, Callable[[], Any]], *, repeats: int, warmup: bool = True,
              sync: Callable[[], None] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every contender once per round, in turn, ``repeats`` rounds (after one untimed
    warm-up call each); the seconds of each call, and each contender's last output."""
    sync = sync or (lambda: None)
    if warmup:
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for key, fn in contenders.items():
            sync()
            t0 = time.perf_counter()
            outputs[key] = fn()
            sync()
            times[key].append(time.perf_counter() - t0)
    return times, outputs


def ratio_stats(ours_s: list[float], other_s: list[float], *, ours_n: float = 1.0,
                other_n: float = 1.0) -> dict[str, Any]:
    """Per-round throughput ratio ours / other (``*_n``: the work of one call of each, e.g. images,
    when the two sides do different amounts), with its min and median over the rounds."""
    per_round = [(ours_n / o) / (other_n / t) for o, t in zip(ours_s, other_s)]
    return {"min": min(per_round), "median": statistics.median(per_round), "per_round": per_round}


def ratio_line(name: str, stats: dict[str, Any], goal: float | None = None) -> str:
    """``name  1.23x median, 1.20x min of 3``, with the goal when there is one."""
    text = (f"  {name:<28} {stats['median']:6.2f}x median, {stats['min']:6.2f}x min "
            f"of {len(stats['per_round'])}")
    return text + (f"   (goal >= {goal}x)" if goal else "")


def load_avg() -> list[float]:
    """``os.getloadavg()`` (1, 5, 15 min), rounded; empty where the platform has none."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []
