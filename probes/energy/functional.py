"""The maths and measurements of ``energy.inference``: intervals, PSNR, peak host memory."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.findings import Interval
from audit.stats import bootstrap_ci

__all__ = ["host_peak_rss_bytes", "percentile_ci", "psnr_db", "reset_host_peak"]


# -- memory -----------------------------------------------------------------------------------


def reset_host_peak() -> bool:
    """Reset this process's peak resident memory (Linux: ``/proc/self/clear_refs``); False if it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_peak_rss_bytes() -> int | None:
    """Peak resident memory of this process since the last reset (``VmHWM``), else its lifetime peak."""
    try:
        m = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
        if m:
            return int(m.group(1)) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux
    except (ImportError, OSError):
        return None


# -- maths ----------------------------------------------------------------------------------


def percentile_ci(values: Sequence[float], q: float, *, n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> tuple[float, Interval | None]:
    """The ``q``-th percentile of ``values`` (linear interpolation, NumPy's default) and its
    percentile-bootstrap interval.

    Example:
        >>> value, ci = percentile_ci([1.0, 2.0, 3.0, 4.0, 5.0], 50)
        >>> value, ci.low <= value <= ci.high
        (3.0, True)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, None
    value = float(np.percentile(x, q))
    ci = bootstrap_ci(x, lambda s, axis=-1: np.percentile(s, q, axis=axis), n_resamples=n_resamples,
                      confidence=confidence, seed=seed)
    return value, ci


def psnr_db(images: Any, reference: Any) -> np.ndarray:
    """PSNR in dB of each uint8 image against the reference (inf where identical).

    Example:
        >>> import torch
        >>> a = torch.zeros(1, 1, 2, 2, dtype=torch.uint8); b = a.clone(); b[0, 0, 0, 0] = 255
        >>> round(float(psnr_db(b, a)[0]), 2)    # MSE = 255^2 / 4
        6.02
    """
    a = np.asarray(images, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images and reference differ in shape: {a.shape} != {b.shape}")
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)
