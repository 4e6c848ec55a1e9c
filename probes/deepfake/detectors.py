"""The detectors of ``deepfake.image_detectability`` and the maths they rest on.

Stratified folds and calibration splits, the cross-validated linear probe (scikit-learn's
pipeline, out-of-fold decision scores) and its torch twin for the attack, a detector's output
as one score per image, and the two-class wrapper the evasion attack runs against.
"""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import InputError, require
from probes.deepfake.metrics import calibration_split

__all__ = [
    "Detector",
    "DetectorScores",
    "LinearProbeModule",
    "ThresholdLogits",
    "check_scores",
    "cross_validated_scores",
    "detector_score",
    "no_gradient",
    "pil_convert",
    "stratified_calibration",
    "stratified_folds",
]


def stratified_folds(labels: Any, k: int, seed: int) -> np.ndarray:
    """A fold index in ``0..k-1`` per sample: each class shuffled (seeded) and dealt round-robin,
    so every fold holds ``n_class / k`` (rounded) of each class.

    Example:
        >>> f = stratified_folds([0] * 6 + [1] * 3, 3, seed=0)
        >>> sorted(np.bincount(f[:6]).tolist()), sorted(np.bincount(f[6:]).tolist())
        ([2, 2, 2], [1, 1, 1])
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    folds = np.empty(y.size, dtype=np.int64)
    offset = 0
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        folds[rng.permutation(idx)] = (np.arange(idx.size) + offset) % k
        offset += idx.size  # the next class starts where this one stopped: fold sizes stay even
    return folds


def stratified_calibration(labels: Any, fraction: float, seed: int) -> np.ndarray:
    """The calibration mask: ``fraction`` of each class (seeded, via
    :func:`~probes.deepfake.metrics.calibration_split`), so both splits hold both classes."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    cal = np.zeros(y.size, dtype=bool)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        cal[idx] = calibration_split(list(range(idx.size)), fraction, rng)
    return cal


def _pipeline(c: float) -> Any:
    require("sklearn", extra="image", purpose="the linear-probe detector (logistic regression)")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000))


def cross_validated_scores(features: Any, labels: Any, folds: Any, *, c: float = 1.0
                           ) -> tuple[np.ndarray, list[Any], list[str]]:
    """Out-of-fold logistic-regression scores of a linear probe on frozen features.

    Per fold: standardise the features on the training folds, fit an L2 logistic regression
    (inverse strength ``c``, classes weighted by their inverse frequency so an imbalanced set
    does not tilt the fit), and score the held-out fold with the decision function (log-odds of
    "generated"). Equal to scikit-learn's ``cross_val_predict(make_pipeline(StandardScaler(),
    LogisticRegression(C=c, class_weight="balanced")), X, y, cv=PredefinedSplit(folds),
    method="decision_function")``.

    Returns:
        ``(scores [N], fitted pipelines per fold, warnings)``.
    """
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    f = np.asarray(folds)
    scores = np.full(y.size, np.nan)
    models, notes = [], []
    for k in np.unique(f):
        test = f == k
        model = _pipeline(c)
        with pywarnings.catch_warnings(record=True) as caught:
            pywarnings.simplefilter("always", ConvergenceWarning)
            model.fit(x[~test], y[~test])
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            notes.append(f"the logistic regression of fold {int(k)} did not converge in 2000 iterations "
                         "(a lower linear_probe_c regularises more and converges faster)")
        scores[test] = model.decision_function(x[test])
        models.append(model)
    return scores, models, notes


def detector_score(out: torch.Tensor, real: int, *, probabilities: bool = False) -> torch.Tensor:
    """A detector's output -> one score per image, higher meaning generated.

    ``[N, 1]``: the output itself. ``[N, C]`` logits: ``logsumexp(other classes) - logit(real)``,
    the log-odds of "not real". Probabilities are taken to logs first (clamped at 1e-12).

    Example:
        >>> detector_score(torch.tensor([[2.0, 0.5]]), real=0).tolist()
        [-1.5]
    """
    if out.shape[1] == 1:
        return out[:, 0]
    if probabilities:
        out = out.clamp_min(1e-12).log()
    others = torch.cat([out[:, :real], out[:, real + 1:]], 1)
    return others.logsumexp(1) - out[:, real]


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Float images to ``channels``: grey repeated to RGB, RGB to ITU-R 601-2 luma (as Pillow's "L")."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


class LinearProbeModule(nn.Module):
    """A fitted linear probe as a torch module: images in [0, 1] -> frozen features ->
    standardisation -> logistic layer -> the decision score [N] (its log-odds of "generated").

    Built from a scikit-learn ``StandardScaler`` + ``LogisticRegression`` pipeline and a feature
    extractor whose ``forward`` takes float images in 0..255; differentiable when that is.
    """

    def __init__(self, fx: Any, pipeline: Any):
        super().__init__()
        scaler, lr = pipeline[0], pipeline[-1]
        dev = fx.device
        self.fx = fx
        self.device = torch.device(dev)
        self.register_buffer("mean", torch.as_tensor(scaler.mean_, dtype=torch.float32, device=dev))
        self.register_buffer("scale", torch.as_tensor(scaler.scale_, dtype=torch.float32, device=dev))
        self.register_buffer("coef", torch.as_tensor(lr.coef_[0], dtype=torch.float32, device=dev))
        self.bias = float(lr.intercept_[0])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feats, _ = self.fx.forward(_match_channels(x.to(self.fx.device), self.fx.channels) * 255.0)
        return feats.flatten(1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.features(x) - self.mean) / self.scale
        return z @ self.coef + self.bias


class DetectorScores(nn.Module):
    """A classifier subject seen from the audited images: [0, 1] images at the common size ->
    its channels, its input size (bilinear, antialiased), its input range -> a score [N]."""

    def __init__(self, detector: Any, real: int, *, probabilities: bool = False):
        super().__init__()
        self.detector = detector
        self.model = getattr(detector, "model", None)  # for eval_mode in the attack
        self.real = real
        self.probabilities = probabilities
        self.lo, self.hi = (float(v) for v in detector.input_range)
        self.shape = tuple(detector.input_shape)
        self.device = torch.device(getattr(detector, "device", None) or "cpu")

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = _match_channels(x.to(self.device).float(), self.shape[0])
        if len(self.shape) == 3 and tuple(x.shape[-2:]) != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False, antialias=True)
        return self.detector.logits(self.lo + x * (self.hi - self.lo))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return detector_score(self.raw(x).float(), self.real, probabilities=self.probabilities)


class ThresholdLogits(nn.Module):
    """``[threshold, score(x)]`` as two-class logits (class 0 = real), so that the argmax is the
    detector's decision at its calibrated threshold; what the evasion attack runs against.

    Example:
        >>> m = ThresholdLogits(nn.Sequential(nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0)), 0.0)
        >>> m.logits(torch.zeros(3, 1, 2, 2)).shape, m.input_range
        (torch.Size([3, 2]), (0.0, 1.0))
    """

    input_range = (0.0, 1.0)

    def __init__(self, score: nn.Module, threshold: float):
        super().__init__()
        self.score = score
        self.threshold = float(threshold)
        self.device = getattr(score, "device", torch.device("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x).float().reshape(-1)
        return torch.stack([torch.full_like(s, self.threshold), s], 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def pil_convert(batch: torch.Tensor, mode: str, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 images to ``mode`` and ``size`` (width, height) with Pillow (bicubic), as the real
    images are read, so both classes go through the same resampler."""
    from PIL import Image

    out = []
    for a in batch.cpu().numpy():
        img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        if img.mode != mode:
            img = img.convert(mode)
        if size is not None and img.size != tuple(size):
            img = img.resize(tuple(size), Image.Resampling.BICUBIC)
        b = np.asarray(img, dtype=np.uint8)
        out.append(b[None] if b.ndim == 2 else b.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


@dataclass
class Detector:
    name: str
    scores: Callable[[torch.Tensor], np.ndarray]     # uint8 images -> scores
    describe: dict[str, Any]
    attack: Callable[[float], list[tuple[nn.Module, np.ndarray]]] | None = None  # threshold -> (module, mask)
    notes: list[str] = field(default_factory=list)


def no_gradient(module: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``module``'s output has no gradient with respect to ``x`` (None when it has one)."""
    xg = x.to(module.device).clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            out = module(xg)
            if not out.requires_grad:
                return "its score does not depend differentiably on the image (no gradient)"
            (g,) = torch.autograd.grad(out[:, 1].sum(), xg, allow_unused=True)
    except Exception as exc:  # the feature network refuses float input (e.g. Inception wants uint8)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"its score cannot be differentiated with respect to the image ({type(exc).__name__}: {first})"
    if g is None:
        return "its score has no gradient with respect to the image (the input is detached inside the network)"
    return None


def check_scores(probe: str, name: str, raw: torch.Tensor, scores: np.ndarray) -> None:
    """Refuse detector outputs that are not scores: non-finite, constant, or hard decisions."""
    bad = ~np.isfinite(scores)
    if bad.any():
        raise InputError(f"{probe}: detector {name!r} returned non-finite outputs for {int(bad.sum())} of "
                         f"{scores.size} images; expected finite logits or scores")
    values = torch.unique(raw)
    if values.numel() <= 2 and bool((values == values.round()).all()):
        raise InputError(f"{probe}: detector {name!r} returns hard decisions ({values.tolist()}), not scores: "
                         "AUROC, EER and the TPR at a low FPR need a continuous score; return its logits "
                         "(or probabilities) instead of the predicted class")
    if np.unique(scores).size == 1:
        raise InputError(f"{probe}: detector {name!r} gives every image the same score ({scores[0]:.6g}); "
                         "expected a score that varies with the image")


