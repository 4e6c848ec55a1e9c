"""Reference statistics files: a real image set's feature mean and covariance, computed once.

A statistics file is a NumPy ``.npz`` (read with ``allow_pickle=False``) holding ``mean``
[D], ``cov`` [D, D] (float64), ``n``, optionally ``features`` [M, D] (float32; a subsample
used for KID and precision/recall), and ``meta``, a JSON string with the format version,
the feature extractor's description (name, weights SHA-256, input size, resize, antialias,
channels: see :meth:`probes.quality.features.FeatureExtractor.describe`), the image
preprocessing, the source folder and its read log. A file built with another extractor or
preprocessing is refused with the differences spelled out.

Example:
    >>> ref = load_stats("reference.npz")                 # doctest: +SKIP
    >>> check_compatible(ref, extractor.describe())       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.errors import InputError

__all__ = ["STATS_FORMAT", "ReferenceStats", "check_compatible", "load_stats", "save_stats"]

STATS_FORMAT = "genai-audit-image-stats/1"


@dataclass
class ReferenceStats:
    """A reference set's features or their moments (from a folder or a statistics file)."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int
    extractor: dict[str, Any]
    features: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def save_stats(path: str | os.PathLike[str], *, mean: torch.Tensor, cov: torch.Tensor, n: int,
               extractor: dict[str, Any], features: torch.Tensor | None = None,
               meta: dict[str, Any] | None = None) -> Path:
    """Write a statistics file atomically (a temporary file renamed into place)."""
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_name(p.name + ".npz")
    p.parent.mkdir(parents=True, exist_ok=True)
    info = {"format": STATS_FORMAT, "n": int(n), "extractor": extractor, **(meta or {})}
    arrays: dict[str, np.ndarray] = {
        "mean": mean.detach().double().cpu().numpy(), "cov": cov.detach().double().cpu().numpy(),
        "n": np.asarray(int(n)), "meta": np.asarray(json.dumps(info, sort_keys=True)),
    }
    if features is not None:
        arrays["features"] = features.detach().float().cpu().numpy()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp.npz", dir=p.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def load_stats(path: str | os.PathLike[str]) -> ReferenceStats:
    """Read a statistics file written by :func:`save_stats` (``genai-audit stats build``).

    Raises:
        InputError: not a readable statistics file (the message says what is wrong).
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ("mean", "cov", "n", "meta") if k not in z.files]
            if missing:
                raise InputError(f"{p}: not a genai-audit statistics file (missing {', '.join(missing)}); "
                                 "build one with `genai-audit stats build`")
            meta = json.loads(str(z["meta"]))
            mean, cov, n = z["mean"], z["cov"], int(z["n"])
            feats = z["features"] if "features" in z.files else None
    except InputError:
        raise
    except (OSError, ValueError, json.JSONDecodeError, EOFError) as exc:
        raise InputError(f"{p}: cannot read the statistics file: {exc}") from None
    if meta.get("format") != STATS_FORMAT:
        raise InputError(f"{p}: statistics format {meta.get('format')!r} is not supported (expected {STATS_FORMAT})")
    d = mean.shape[0] if mean.ndim == 1 else -1
    if mean.ndim != 1 or cov.shape != (d, d) or (feats is not None and (feats.ndim != 2 or feats.shape[1] != d)):
        raise InputError(f"{p}: inconsistent shapes (mean {mean.shape}, cov {cov.shape})")
    return ReferenceStats(
        mean=torch.from_numpy(mean).double(), cov=torch.from_numpy(cov).double(), n=n,
        extractor=dict(meta.get("extractor") or {}), meta=meta, source=str(p),
        features=torch.from_numpy(feats).float() if feats is not None else None,
    )


def check_compatible(stats: ReferenceStats, extractor: dict[str, Any], *, dim: int | None = None) -> None:
    """Refuse reference statistics computed with another feature extractor or preprocessing.

    Raises:
        InputError: naming each field that differs, what the file has and what the audit uses.
    """
    diffs = []
    for key in sorted(set(stats.extractor) | set(extractor)):
        a, b = stats.extractor.get(key), extractor.get(key)
        if a != b:
            diffs.append(f"{key}: file {a!r}, audit {b!r}")
    if dim is not None and stats.mean.shape[0] != dim:
        diffs.append(f"feature dimension: file {stats.mean.shape[0]}, audit {dim}")
    if diffs:
        raise InputError(
            f"{stats.source}: the reference statistics were built with another feature extractor or "
            f"preprocessing, so their FID would be meaningless: {'; '.join(diffs)}. Rebuild them with "
            "`genai-audit stats build` and the same feature settings as the probe, or change the probe's."
        )
