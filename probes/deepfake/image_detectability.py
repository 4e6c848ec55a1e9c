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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from audit.errors import InputError, SpecError
from audit.findings import Finding, Units
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images
from audit.probe import ParamCheck, ProbeContext, register
from probes.deepfake.detectors import (
    Detector,
    DetectorScores,
    LinearProbeModule,
    ThresholdLogits,
    check_scores,
    cross_validated_scores,
    detector_score,
    pil_convert,
    stratified_calibration,
    stratified_folds,
)
from probes.deepfake.image_evasion import evasion_findings
from probes.deepfake.image_evidence import detectability_curves, postprocess_curves, score_rows
from probes.deepfake.metrics import DetectionSummary, check_classes, detection_findings, summarize_detection
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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

        real, real_log, real_paths = self._real_images(ctx, mode)
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
        detectors: list[Detector] = []
        if fx is not None:
            detectors.append(self._linear_probe(fx, labels, folds, ctx))
        if det is not None:
            detectors.append(self._user_detector(det, images, ctx))

        steps = [PostProcess("none"), *(parse_postprocess(p) for p in self.postprocess)]
        summaries: dict[str, dict[str, DetectionSummary]] = {d.name: {} for d in detectors}
        units: dict[tuple[str, str], Units] = {}  # the AUROC's per-image units, for paired deltas of variants
        unit_ids = [f"real:{p}" for p in real_paths] + [f"generated[{j}]" for j in range(fake.shape[0])]
        items = [*({"item": str(p), "thumbnail": str(p)} for p in real_paths),
                 *self._generation_records(subject, fake.shape[0], ctx)]
        for step in ctx.progress(steps, desc=f"{self.id}: post-processing"):
            x = step(images, seed=ctx.child_seed(f"postprocess-{step.label}"))
            for d in detectors:
                scores = d.scores(x)
                summary = summaries[d.name][step.label] = summarize_detection(
                    labels, scores, cal, n_resamples=self.n_resamples, confidence=self.confidence,
                    seed=ctx.child_seed(f"bootstrap-{d.name}-{step.label}"), what=self.id)
                ctx.record_samples(score_rows(d, step, scores, summary.threshold, labels, folds, cal, items, ctx))
                units[(d.name, step.label)] = Units("auroc", unit_ids, {"score": np.asarray(scores).tolist(),
                                                                        "label": labels.tolist()})

        common = {"n_real": int(real.shape[0]), "n_generated": int(fake.shape[0]),
                  "image_size": [size[0], size[1]], "mode": mode,
                  "real_images": real_log.as_evidence(), "generated_images": fake_log.as_evidence()}
        findings: list[Finding] = []
        for d in detectors:
            curves = detectability_curves(summaries[d.name], steps)
            for step in steps:
                ev: dict[str, Any] = {"postprocess": step.label}
                if step.kind == "none":
                    ev.update(common, detector=d.describe, detectability_curves=curves,
                              **postprocess_curves(d.name, summaries[d.name], steps, self.confidence))
                findings += [replace(f, units=units[(d.name, step.label)]) if f.metric == "auroc" else f
                             for f in detection_findings(self.id, summaries[d.name][step.label],
                                                         slice={"detector": d.name, "postprocess": step.label},
                                                         warnings=[*notes, *d.notes], evidence=ev)]
            if self.eps and d.attack is not None:
                findings += evasion_findings(self, d, fake, summaries[d.name]["none"].threshold, ctx, notes)
        return findings

    # -- images --------------------------------------------------------------------------------
    def _real_images(self, ctx: ProbeContext, mode: str) -> tuple[torch.Tensor, ImageReadLog, list[Path]]:
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
        batches, read = [], []
        for b, idx in iter_image_batches(paths, batch_size=self.batch_size, mode=mode, size=size, log=log,
                                         with_index=True):
            batches.append(b)
            read += [paths[int(i)] for i in idx]
        if not batches:
            raise InputError(f"{self.id}: no readable real image in {folder} ({log.n_skipped} files skipped)")
        return torch.cat(batches), log, read

    def _generation_records(self, subject: Any, n: int, ctx: ProbeContext) -> list[dict[str, Any]]:
        """How each generated image can be made again: its file, or its seed and place in the
        generation (as :func:`probes.sharding.image_shard` generates them), and its prompt."""
        from audit.subjects.image import CallableImageGenerator, TorchImageGenerator

        seed, bs = ctx.child_seed("generate"), self.batch_size
        prompts = getattr(subject, "prompts", None)
        out: list[dict[str, Any]] = []
        for j in range(n):
            if hasattr(subject, "read_log"):  # a folder: the file is the sample
                paths = getattr(subject, "paths", [])
                exact = not subject.read_log.n_skipped and j < len(paths)
                rec: dict[str, Any] = ({"item": str(paths[j]), "thumbnail": str(paths[j])} if exact
                                       else {"item": f"generated[{j}]"})
            elif isinstance(subject, CallableImageGenerator):  # batch i is generated from seed + i
                rec = {"item": f"generated[{j}]", "seed": seed + j // bs, "batch": j // bs, "in_batch": j % bs}
            elif isinstance(subject, TorchImageGenerator):  # one latent stream drawn from the seed
                rec = {"item": f"generated[{j}]", "seed": seed, "latent_index": j}
            else:
                rec = {"item": f"generated[{j}]", "seed": seed, "generation_index": j, "batch_size": bs}
            if prompts is not None and j < len(prompts):
                rec["text"] = prompts[j]
            out.append(rec)
        return out

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
                b = pil_convert(b, mode, size)
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

    def _linear_probe(self, fx: Any, labels: np.ndarray, folds: np.ndarray, ctx: ProbeContext) -> Detector:
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
        return Detector("linear_probe", scores, describe, attack, notes)

    def _user_detector(self, det: Any, images: torch.Tensor, ctx: ProbeContext) -> Detector:
        from probes.robustness.attacks import looks_like_probabilities
        from probes.robustness.detector_evasion import real_class_index

        name = (self.detector or {}).get("path", "detector")
        module = DetectorScores(det, 0)
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
            check_scores(self.id, name, r, s)
            return s

        def attack(threshold: float) -> list[tuple[nn.Module, np.ndarray]]:
            return [(ThresholdLogits(module, threshold), None)]

        ident = getattr(det, "identity", None)
        describe = {"kind": "classifier", "path": name, "input_shape": list(det.input_shape),
                    "input_range": list(det.input_range), "class_names": list(det.class_names or ()),
                    "real_class": real, "score": "logit" if out.shape[1] == 1 else "log-odds of not real",
                    "identity": ident.to_dict() if hasattr(ident, "to_dict") else None}
        return Detector("detector", scores, describe, attack, notes)
