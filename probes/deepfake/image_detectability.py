"""Probe ``deepfake.image_detectability``: can a detector tell the subject's images from real ones?

Two kinds of detector score the same real images (data input ``reference``, a folder) and the
subject's generated images:

- ``linear_probe``: a logistic regression on frozen features (``feature``: the FID Inception
  network, CLIP image features, or your ``module:factory``), standardised per fold, fitted
  with k-fold cross-validation; every image is scored by the fold model that did not see it
  (out-of-fold scores), so the metrics measure held-out detectability;
- ``detector``: your own detector, a classifier subject (``{source: python|torchscript|hf,
  path, options}``) with a "real" class; its score is the log-odds of "not real".

Each is measured with :mod:`probes.deepfake.metrics`: AUROC, average precision, EER and TPR at
FPR 1e-2 and 1e-3 over all images (stratified bootstrap intervals), and real / generated /
balanced accuracy on the test split at the threshold fixed on a stratified calibration split
(Wilson and bootstrap intervals; the linear probe's fold models learn from both splits, as
cross-validation does, but its threshold is chosen on the calibration split's out-of-fold
scores only). The same metrics are repeated after each post-processing
step of ``postprocess`` (JPEG 95..30, half resolution, blur, noise, crop; see
:mod:`probes.deepfake.postprocess`), applied to real and generated images alike: the
detectability curve per transform. Finally targeted PGD towards "real" at small ``eps``
(:func:`probes.robustness.detector_evasion.evasion_curve`) runs against each detector at its
calibrated threshold on the clean generated images: the linear probe through its
differentiable feature network (each image attacks the fold model that scored it).

Images: at most ``n_samples`` real images (a seeded subset of the folder) and as many
generated ones; all are brought to one size (``image_size``, else the first real image's),
resized with Pillow's bicubic filter where they differ, and counted in the findings.

Example (spec):
    subject: {kind: image-generator, source: folder, path: samples/}
    data: {reference: real-images/}
    probes:
      - id: deepfake.image_detectability
        params: {feature: clip, clip_pretrained: open_clip_vit_b32.bin, folds: 5,
                 detector: {source: torchscript, path: detector.pt,
                            options: {input_shape: [3, 256, 256], class_names: [real, fake]}}}
    gates:
      - {metric: "deepfake.image_detectability/auroc[detector=linear_probe,postprocess=none]", max: 0.9, use: ci_low}
"""

from __future__ import annotations

import math
import warnings as pywarnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import InputError, SpecError, require
from audit.findings import Finding
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import wilson_interval
from probes.deepfake.metrics import (
    DetectionSummary,
    calibration_split,
    check_classes,
    detection_findings,
    summarize_detection,
)
from probes.deepfake.postprocess import DEFAULT_SWEEP, PostProcess, parse_postprocess
from probes.sharding import image_shard, merge_read_logs

__all__ = [
    "ImageDetectability",
    "LinearProbeModule",
    "ThresholdLogits",
    "cross_validated_scores",
    "detector_score",
    "stratified_calibration",
    "stratified_folds",
]

_DETECTOR_KEYS = {"source", "path", "options", "name"}
_DETECTOR_SOURCES = ("python", "torchscript", "hf")
_OOM = (torch.cuda.OutOfMemoryError,)


# -- pure helpers ------------------------------------------------------------------------------
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


class _DetectorScores(nn.Module):
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


def _pil_convert(batch: torch.Tensor, mode: str, size: tuple[int, int] | None) -> torch.Tensor:
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class _Detector:
    name: str
    scores: Callable[[torch.Tensor], np.ndarray]     # uint8 images -> scores
    describe: dict[str, Any]
    attack: Callable[[float], list[tuple[nn.Module, np.ndarray]]] | None = None  # threshold -> (module, mask)
    notes: list[str] = field(default_factory=list)


# -- the probe ---------------------------------------------------------------------------------
@register("deepfake.image_detectability")
@dataclass(frozen=True)
class ImageDetectability:
    """Detectability of generated images against real ones, under post-processing and attack.

    Detectors: ``linear_probe`` (logistic regression on frozen features, k-fold out-of-fold
    scores) and, with ``detector``, your classifier. Per detector and ``postprocess`` step
    (``none`` first): AUROC, average precision, EER, TPR at FPR 1e-2 / 1e-3, and balanced /
    real / generated accuracy at a threshold fixed on a calibration split, with intervals.
    Per ``eps``: evasion rate and detection rate under targeted PGD, and the perturbation.
    """

    id: ClassVar[str] = "deepfake.image_detectability"
    applies_to: ClassVar[tuple[str, ...]] = ("image-generator",)
    requires: ClassVar[tuple[str, ...]] = ("generate_images",)

    reference: str = field(default="reference", metadata={"help": "data input with the real images (a folder)"})
    feature: str | None = field(default="inception", metadata={"help": "frozen features of the linear probe: inception, clip, or module:factory; null: no linear probe"})
    feature_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "options of a module:factory extractor (weights, input_size, channels, ...)"})
    inception_weights: str | None = field(default=None, metadata={"help": "local FID Inception weights (feature: inception)"})
    clip_model: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture or module:factory (feature: clip)"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag or local weights file (feature: clip)"})
    detector: dict[str, Any] | None = field(default=None, metadata={"help": "your detector, a classifier subject: {source: python|torchscript|hf, path, options: {input_shape, class_names, ...}}"})
    real_class: str | int = field(default="real", metadata={"help": "the detector's class for real images: its name or index"})
    n_samples: int = field(default=1000, metadata={"help": "most images per class (held in memory as uint8)"})
    image_size: int | None = field(default=None, metadata={"help": "common side length (default: the first real image's size)"})
    folds: int = field(default=5, metadata={"help": "cross-validation folds of the linear probe"})
    linear_probe_c: float = field(default=1.0, metadata={"help": "inverse L2 strength of the logistic regression (scikit-learn's C)"})
    postprocess: tuple[str, ...] = field(default=DEFAULT_SWEEP, metadata={"help": "post-processing steps applied to both classes: jpeg:Q, resize:F, blur:S, noise:S, crop:F"})
    eps: tuple[float | str, ...] = field(default=("1/255", "2/255", "4/255"), metadata={"help": "L-inf evasion budgets in pixel-range units, ascending; empty: no attack"})
    attack_steps: int = field(default=10, metadata={"help": "PGD steps of the evasion attack"})
    attack_samples: int = field(default=256, metadata={"help": "most generated images attacked (a seeded subset)"})
    calibration_fraction: float = field(default=1 / 3, metadata={"help": "share of each class whose scores fix the decision threshold"})
    batch_size: int = field(default=128, metadata={"help": "images per forward pass (halved on out-of-memory)"})
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail = check.fail
        from probes.robustness.classifier import parse_eps

        if not isinstance(self.reference, str) or not self.reference.strip():
            fail("reference", "the name of a data input (e.g. 'reference')")
        if self.feature is not None and (not isinstance(self.feature, str)
                                         or not (self.feature in ("inception", "clip") or ":" in self.feature)):
            fail("feature", "'inception', 'clip', 'module:factory' or null")
        if not isinstance(self.feature_options, dict) or (self.feature_options and ":" not in (self.feature or "")):
            fail("feature_options", "a mapping, empty unless feature is a module:factory")
        if self.feature is None and self.detector is None:
            raise SpecError(f"{self.id}: nothing to run: feature is null and no detector is given; set feature "
                            "(inception, clip or module:factory) for the linear probe, or a detector")
        if self.detector is not None:
            d = self.detector
            if not isinstance(d, dict) or set(d) - _DETECTOR_KEYS or "path" not in d:
                fail("detector", "a mapping {source: python|torchscript|hf, path: ..., options: {...}, name: ...}")
            if d.get("source", "python") not in _DETECTOR_SOURCES:
                fail("detector", f"a mapping whose source is one of {', '.join(_DETECTOR_SOURCES)}")
            if not isinstance(d["path"], str) or not d["path"].strip():
                fail("detector", "a mapping whose path is a file, folder, hub id or module:factory")
            if not isinstance(d.get("options", {}), dict):
                fail("detector", "a mapping whose options is a mapping")
        if not (_is_int(self.real_class) and self.real_class >= 0) and not (
                isinstance(self.real_class, str) and self.real_class.strip()):
            fail("real_class", "a class name or a non-negative class index")
        if not _is_int(self.n_samples) or self.n_samples < 10:
            fail("n_samples", "an integer >= 10")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            fail("image_size", "a positive integer or null")
        if not _is_int(self.folds) or not 2 <= self.folds <= 10:
            fail("folds", "an integer in 2..10")
        if not _is_num(self.linear_probe_c) or not 0 < self.linear_probe_c < math.inf:
            fail("linear_probe_c", "a positive number")
        if not isinstance(self.postprocess, tuple):
            fail("postprocess", "a list such as ['jpeg:75', 'resize:0.5']")
        labels = [parse_postprocess(p).label for p in self.postprocess]
        if "none" in labels or len(set(labels)) != len(labels):
            fail("postprocess", "distinct steps other than 'none' (the clean images are always measured)")
        if not isinstance(self.eps, tuple):
            fail("eps", "a list of budgets, e.g. ['1/255', '4/255']")
        values = [parse_eps(e, where=f"{self.id}: eps")[0] for e in self.eps]
        if any(b <= a for a, b in zip(values, values[1:])) or any(v > 1 for v in values):
            fail("eps", "strictly ascending budgets in (0, 1] (fractions of the pixel range)")
        if not _is_int(self.attack_steps) or self.attack_steps < 1:
            fail("attack_steps", "an integer >= 1")
        if not _is_int(self.attack_samples) or self.attack_samples < 1:
            fail("attack_samples", "an integer >= 1")
        if not _is_num(self.calibration_fraction) or not 0.1 <= self.calibration_fraction <= 0.9:
            fail("calibration_fraction", "a number in [0.1, 0.9]")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            fail("batch_size", "an integer >= 1")
        if not _is_int(self.n_resamples) or self.n_resamples < 100:
            fail("n_resamples", "an integer >= 100 (fewer gives unstable interval bounds)")
        if not _is_num(self.confidence) or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")

    # -- run -----------------------------------------------------------------------------------
    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        device = torch.device(ctx.device)
        fx = None
        if self.feature is not None:
            from probes.quality.features import build_extractor

            fx = build_extractor(self.feature, self.feature_options, device=device,
                                 inception_weights=self.inception_weights, clip_model=self.clip_model,
                                 clip_pretrained=self.clip_pretrained)
        det = self._load_detector(ctx) if self.detector is not None else None
        channels = {fx.channels} if fx is not None else set()
        if det is not None:
            channels.add(int(det.input_shape[0]) if det.input_shape else 3)
        mode = "L" if channels == {1} else "RGB"

        real, real_log = self._real_images(ctx, mode)
        size = (real.shape[-1], real.shape[-2])  # (width, height)
        fake, fake_log = self._generated_images(subject, real.shape[0], mode, size, ctx)
        labels = np.r_[np.zeros(real.shape[0], np.int64), np.ones(fake.shape[0], np.int64)]
        check_classes(labels, what=self.id)  # too few of a class: InputError before any work
        if min(real.shape[0], fake.shape[0]) < self.folds:
            raise InputError(f"{self.id}: {self.folds}-fold cross-validation needs at least {self.folds} images "
                             f"per class; lower folds")
        images = torch.cat([real, fake])
        notes = real_log.warnings("real") + fake_log.warnings("generated")
        real_sizes, fake_sizes = set(real_log.sizes), set(fake_log.sizes)
        if fake_sizes and real_sizes and fake_sizes != real_sizes:
            notes.append(
                f"real images ({', '.join(f'{w}x{h}' for w, h in sorted(real_sizes))}) and generated images "
                f"({', '.join(f'{w}x{h}' for w, h in sorted(fake_sizes))}) come at different sizes; all were brought "
                f"to {size[0]}x{size[1]}: the resampling of one class can itself be detectable, so compare the "
                "detectors on images of one size where you can")

        folds = stratified_folds(labels, self.folds, ctx.child_seed("folds"))
        cal = stratified_calibration(labels, self.calibration_fraction, ctx.child_seed("calibration"))
        detectors: list[_Detector] = []
        if fx is not None:
            detectors.append(self._linear_probe(fx, labels, folds, ctx))
        if det is not None:
            detectors.append(self._user_detector(det, images, ctx))

        steps = [PostProcess("none"), *(parse_postprocess(p) for p in self.postprocess)]
        summaries: dict[str, dict[str, DetectionSummary]] = {d.name: {} for d in detectors}
        for step in ctx.progress(steps, desc=f"{self.id}: post-processing"):
            x = step(images, seed=ctx.child_seed(f"postprocess-{step.label}"))
            for d in detectors:
                scores = d.scores(x)
                summaries[d.name][step.label] = summarize_detection(
                    labels, scores, cal, n_resamples=self.n_resamples, confidence=self.confidence,
                    seed=ctx.child_seed(f"bootstrap-{d.name}-{step.label}"), what=self.id)

        common = {"n_real": int(real.shape[0]), "n_generated": int(fake.shape[0]),
                  "image_size": [size[0], size[1]], "mode": mode,
                  "real_images": real_log.as_evidence(), "generated_images": fake_log.as_evidence()}
        findings: list[Finding] = []
        for d in detectors:
            curves = _curves(summaries[d.name], steps)
            for step in steps:
                ev: dict[str, Any] = {"postprocess": step.label}
                if step.kind == "none":
                    ev.update(common, detector=d.describe, detectability_curves=curves)
                findings += detection_findings(self.id, summaries[d.name][step.label],
                                               slice={"detector": d.name, "postprocess": step.label},
                                               warnings=[*notes, *d.notes], evidence=ev)
            if self.eps and d.attack is not None:
                findings += self._evasion(d, fake, summaries[d.name]["none"].threshold, ctx, notes)
        return findings

    # -- images --------------------------------------------------------------------------------
    def _real_images(self, ctx: ProbeContext, mode: str) -> tuple[torch.Tensor, ImageReadLog]:
        folder = ctx.input_path(self.reference)
        if not folder.is_dir():
            raise InputError(f"{self.id}: data input '{self.reference}' must be a folder of real images, got "
                             f"the file {folder}")
        paths = list_images(folder)
        if len(paths) > self.n_samples:
            g = np.random.default_rng(ctx.child_seed("real-subset"))
            paths = [paths[i] for i in np.sort(g.choice(len(paths), self.n_samples, replace=False))]
        log = ImageReadLog()
        size = (self.image_size, self.image_size) if self.image_size else None
        batches = list(iter_image_batches(paths, batch_size=self.batch_size, mode=mode, size=size, log=log))
        if not batches:
            raise InputError(f"{self.id}: no readable real image in {folder} ({log.n_skipped} files skipped)")
        return torch.cat(batches), log

    def _generated_images(self, subject: Any, n: int, mode: str, size: tuple[int, int],
                          ctx: ProbeContext) -> tuple[torch.Tensor, ImageReadLog]:
        kwargs: dict[str, Any] = {"batch_size": self.batch_size, "seed": ctx.child_seed("generate")}
        folder = hasattr(subject, "read_log")
        if folder:  # read as the real images are: same mode, same size, same resampler
            kwargs.update(mode=mode, size=size)
            n = min(n, getattr(subject, "num_images", n))  # n: as many as the real images read
        prompts = getattr(subject, "prompts", None)
        if "prompts" in getattr(subject, "capabilities", ()) and prompts is None:
            from audit.subjects.imagedata import read_prompts

            prompts = [r["prompt"] for r in read_prompts(ctx.input_path("prompts"))]
        mine = None
        if folder:
            batches = subject.generate(n, **kwargs)
        else:
            # Under torchrun each rank generates its share of the images (whole batches, seeded as
            # a single process seeds them); the images are gathered in order below.
            if prompts is not None:
                n = min(n, len(prompts))
            mine = ctx.dist.shard(n, block=self.batch_size)
            batches = (b for b, _ in image_shard(subject, ctx, n, batch_size=self.batch_size, seed=kwargs["seed"],
                                                 prompts=list(prompts) if prompts is not None else None))
        log = ImageReadLog(mode=mode, size=size)
        out = []
        want_c = 1 if mode == "L" else 3
        for b in batches:
            b = b.cpu()
            log.sizes[(int(b.shape[-1]), int(b.shape[-2]))] += b.shape[0]
            if b.shape[1] != want_c or (b.shape[-1], b.shape[-2]) != size:
                if b.shape[1] != want_c:
                    log.converted["L" if b.shape[1] == 1 else "RGB"] += b.shape[0]
                if (b.shape[-1], b.shape[-2]) != size:
                    log.resized += b.shape[0]
                b = _pil_convert(b, mode, size)
            out.append(b)
            log.read += b.shape[0]
        if folder:
            log = subject.read_log
        if mine is not None and ctx.dist.active:
            log = merge_read_logs(ctx.dist.all_gather_object(log))
            log.mode, log.size = mode, size
            mine_images = torch.cat(out) if out else torch.zeros((0, want_c, size[1], size[0]), dtype=torch.uint8)
            return ctx.dist.gather_tensor(mine_images, mine), log
        if not out:
            raise InputError(f"{self.id}: the subject produced no images")
        return torch.cat(out), log

    # -- detectors -----------------------------------------------------------------------------
    def _load_detector(self, ctx: ProbeContext) -> Any:
        from audit.subjects.loading import load_subject
        from audit.spec import SubjectSpec

        d = self.detector or {}
        spec = SubjectSpec(kind="classifier", source=d.get("source", "python"), path=d["path"],
                           name=d.get("name"), options=dict(d.get("options") or {}))
        device = str(ctx.device) if ctx.device is not None else "auto"
        det = load_subject(spec, base_dir=Path("."), device=device, cache_dir=Path(ctx.cache_dir))
        if not callable(getattr(det, "logits", None)) or not getattr(det, "input_shape", None):
            raise InputError(f"{self.id}: detector {d['path']!r} is not a classifier with logits and an input "
                             "shape (declare options.input_shape)")
        return det

    def _features(self, fx: Any, images: torch.Tensor, ctx: ProbeContext) -> np.ndarray:
        """Features of every image; under torchrun each rank extracts its share (whole batches),
        gathered in image order."""
        bs = self.batch_size
        mine = ctx.dist.shard(images.shape[0], block=bs)
        while True:
            try:
                feats = [fx(b)[0] for b in images[mine.start:mine.stop].split(bs)]
                break
            except _OOM:
                if bs == 1:
                    raise
                torch.cuda.empty_cache()
                bs = max(1, bs // 2)
        own = torch.cat(feats).double().cpu() if feats else torch.zeros((0, fx.dim or 0), dtype=torch.float64)
        if ctx.dist.active:
            width = max(ctx.dist.all_gather_object(int(own.shape[1]) if own.shape[0] else 0))
            own = own.reshape(own.shape[0], width)
            own = ctx.dist.gather_tensor(own, mine)
        return own.numpy()  # one transfer per pass

    def _linear_probe(self, fx: Any, labels: np.ndarray, folds: np.ndarray, ctx: ProbeContext) -> _Detector:
        state: dict[str, Any] = {}
        notes: list[str] = []
        if fx.name != "inception-v3-fid" and not fx.name.startswith("clip:"):
            notes.append(f"the linear probe reads the features of {fx.name}, a domain extractor chosen for this "
                         "audit: its detectability compares generators under this extractor only")

        def scores(x: torch.Tensor) -> np.ndarray:
            s, models, warn = cross_validated_scores(self._features(fx, x, ctx), labels, folds,
                                                    c=self.linear_probe_c)
            state.setdefault("models", models)  # the clean pass comes first: its fold models are attacked
            for w in warn:
                if w not in notes:
                    notes.append(w)
            return s

        def attack(threshold: float) -> list[tuple[nn.Module, np.ndarray]]:
            fake_folds = folds[labels == 1]
            return [(ThresholdLogits(LinearProbeModule(fx, m), threshold), fake_folds == k)
                    for k, m in enumerate(state["models"])]

        describe = {"kind": "linear_probe", "extractor": fx.describe(), "folds": self.folds,
                    "classifier": f"StandardScaler + LogisticRegression(C={self.linear_probe_c:g}, "
                                  "class_weight=balanced), out-of-fold decision scores"}
        return _Detector("linear_probe", scores, describe, attack, notes)

    def _user_detector(self, det: Any, images: torch.Tensor, ctx: ProbeContext) -> _Detector:
        from probes.robustness.attacks import looks_like_probabilities
        from probes.robustness.detector_evasion import real_class_index

        name = (self.detector or {}).get("path", "detector")
        module = _DetectorScores(det, 0)
        with torch.no_grad():
            out = module.raw(images[: min(8, images.shape[0])].float() / 255.0)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.is_floating_point():
            got = f"{out.dtype} of shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"{self.id}: detector {name!r} returned {got}; expected a score per image: float "
                             "logits [N, classes] with a 'real' class, or one score [N, 1] (higher: generated)")
        notes: list[str] = []
        real = 0
        if out.shape[1] >= 2:
            real = real_class_index(det.class_names, self.real_class, out.shape[1])
            if looks_like_probabilities(out):
                module.probabilities = True
                notes.append("the detector returns probabilities, not logits: scores are log-odds of its "
                             "probabilities, and the evasion attack works through saturating gradients "
                             "(it may understate evasion)")
        module.real = real

        def scores(x: torch.Tensor) -> np.ndarray:
            raw = []
            mine = ctx.dist.shard(x.shape[0], block=self.batch_size)  # each rank scores its share
            with torch.no_grad():
                for b in x[mine.start:mine.stop].split(self.batch_size):
                    raw.append(module.raw(b.float() / 255.0).float().cpu())
            r = torch.cat(raw) if raw else torch.zeros((0, out.shape[1]))
            r = ctx.dist.gather_tensor(r, mine)
            s = detector_score(r, real, probabilities=module.probabilities).double().cpu().numpy()
            _check_scores(self.id, name, r, s)
            return s

        def attack(threshold: float) -> list[tuple[nn.Module, np.ndarray]]:
            return [(ThresholdLogits(module, threshold), None)]

        ident = getattr(det, "identity", None)
        describe = {"kind": "classifier", "path": name, "input_shape": list(det.input_shape),
                    "input_range": list(det.input_range), "class_names": list(det.class_names or ()),
                    "real_class": real, "score": "logit" if out.shape[1] == 1 else "log-odds of not real",
                    "identity": ident.to_dict() if hasattr(ident, "to_dict") else None}
        return _Detector("detector", scores, describe, attack, notes)

    # -- evasion -------------------------------------------------------------------------------
    def _evasion(self, d: _Detector, fake: torch.Tensor, threshold: float, ctx: ProbeContext,
                 notes: list[str]) -> list[Finding]:
        from probes.robustness.attacks import NotDifferentiableError
        from probes.robustness.classifier import parse_eps
        from probes.robustness.detector_evasion import evasion_curve

        budgets = [parse_eps(e) for e in self.eps]
        n_all = fake.shape[0]
        idx = np.arange(n_all)
        warn = list(notes)
        if n_all > self.attack_samples:
            g = np.random.default_rng(ctx.child_seed("attack-subset"))
            idx = np.sort(g.choice(n_all, self.attack_samples, replace=False))
            warn.append(f"a seeded subset of {self.attack_samples} of the {n_all} generated images was attacked")
        x = fake[torch.from_numpy(idx)].float() / 255.0
        parts = d.attack(threshold)
        reason = _no_gradient(parts[0][0], x[:2])
        if reason is not None:
            return self._evasion_nan(d.name, [*warn, f"no evasion attack on {d.name}: {reason}"])
        detected, fooled, max_pert = [], [[] for _ in budgets], [0.0 for _ in budgets]
        try:
            for module, mask in parts:
                sel = np.ones(idx.size, bool) if mask is None else mask[idx]
                if not sel.any():
                    continue
                # Each rank attacks its shard of this part; an image's random start is seeded by its index.
                curve = evasion_curve(module, x[torch.from_numpy(sel)], 0, [v for v, _ in budgets],
                                      steps=self.attack_steps, batch_size=self.batch_size, device=module.device,
                                      seed=ctx.child_seed(f"pgd-{d.name}"),
                                      sample_ids=torch.from_numpy(np.flatnonzero(sel)), dist=ctx.dist)
                detected.append(curve["detected"])
                for j in range(len(budgets)):
                    fooled[j].append(curve["fooled"][j])
                    max_pert[j] = max(max_pert[j], curve["max_perturbation"][j])
        except NotDifferentiableError as exc:
            return self._evasion_nan(d.name, [*warn, f"no evasion attack on {d.name}: {exc}"])
        det_all = torch.cat(detected)
        n = det_all.numel()
        n_det = int(det_all.sum())
        ev = {"attack": "targeted pgd towards real at the calibrated threshold", "norm": "linf",
              "steps": self.attack_steps, "threshold": threshold, "eps_unit": "fraction of the pixel range",
              "perturbed": "the audited images (before each detector's own resizing), not re-quantised to uint8"}
        points = []
        out = []
        for (eps, label), fl, mp in zip(budgets, fooled, max_pert):
            f = torch.cat(fl)
            k_ev = int((f & det_all).sum())
            still = int((~f & det_all).sum())
            s = {"detector": d.name, "eps": label}
            extra = [] if n_det else ["no attacked image was detected to begin with: the evasion rate is nan"]
            out.append(Finding(probe=self.id, metric="evasion_rate", value=k_ev / n_det if n_det else math.nan,
                               higher_is_better=False, ci=wilson_interval(k_ev, n_det, confidence=self.confidence),
                               n=n_det, slice=s, warnings=(*warn, *extra),
                               evidence={**ev, "over": "initially detected images"}))
            out.append(Finding(probe=self.id, metric="detection_rate_under_attack", value=still / n,
                               higher_is_better=True, ci=wilson_interval(still, n, confidence=self.confidence),
                               n=n, slice=s, warnings=tuple(warn), evidence=ev))
            over = mp > eps * (1 + 1e-5) + 1e-7
            out.append(Finding(probe=self.id, metric="max_perturbation", value=mp, higher_is_better=False,
                               unit="linf, fraction of the pixel range", n=n, slice=s,
                               warnings=(f"the largest perturbation {mp:.6g} exceeds the budget {eps:.6g}",)
                               if over else (), evidence={"budget": eps, "within_budget": not over}))
            points.append({"eps": eps, "label": label, "evasion_rate": k_ev / n_det if n_det else None,
                           "detection_rate_under_attack": still / n})
        first = Finding(probe=self.id, metric="detection_rate", value=n_det / n, higher_is_better=True,
                        ci=wilson_interval(n_det, n, confidence=self.confidence), n=n,
                        slice={"detector": d.name}, warnings=tuple(warn),
                        evidence={**ev, "over": "attacked generated images, clean", "curve": points})
        return [first, *out]

    def _evasion_nan(self, name: str, warnings: list[str]) -> list[Finding]:
        from probes.robustness.classifier import parse_eps

        out = [Finding(probe=self.id, metric="detection_rate", value=math.nan, higher_is_better=True,
                       slice={"detector": name}, warnings=tuple(warnings), n=0)]
        for e in self.eps:
            s = {"detector": name, "eps": parse_eps(e)[1]}
            out += [Finding(probe=self.id, metric=m, value=math.nan, higher_is_better=h, slice=s,
                            warnings=tuple(warnings), n=0)
                    for m, h in (("evasion_rate", False), ("detection_rate_under_attack", True),
                                 ("max_perturbation", False))]
        return out


def _no_gradient(module: nn.Module, x: torch.Tensor) -> str | None:
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


def _check_scores(probe: str, name: str, raw: torch.Tensor, scores: np.ndarray) -> None:
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


def _curves(by_step: dict[str, DetectionSummary], steps: Sequence[PostProcess]) -> dict[str, list[dict[str, Any]]]:
    """Per transform kind: AUROC (and interval) at ``none`` and at each level, in the order given."""
    def point(label: str) -> dict[str, Any]:
        m = by_step[label].metrics["auroc"]
        return {"postprocess": label, "auroc": m.value,
                "ci": [m.ci.low, m.ci.high] if m.ci is not None else None,
                "balanced_accuracy": by_step[label].metrics["balanced_accuracy"].value}

    curves: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        if step.kind != "none":
            curves.setdefault(step.kind, [point("none")]).append({"level": step.level, **point(step.label)})
    return curves
