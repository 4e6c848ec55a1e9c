"""Probe ``quality.image_fidelity``: FID, KID, IS and precision/recall of generated images.

One pass of features over the generated images (and one over the reference folder, or a
statistics file read instead) feeds every metric. Features are computed in batches on the
device; their mean and covariance are accumulated there in float64 as the batches stream
(:class:`~probes.quality.image_functional.FeatureMoments`); images are never all in memory.
The features themselves (N x D floats) are kept for KID, precision/recall and the bootstrap.

Under torchrun each rank reads or generates its own whole batches of both image sets (the
batches a single process would make); the moments are summed over ranks around rank 0's
shift and the kept features and logits gathered in sample order, so every rank computes
the metrics and intervals of a single-process run.

Example (spec):
    subject: {kind: image-generator, source: folder, path: samples/}
    data: {reference: real-images/}            # or a file from `genai-audit stats build`
    probes:
      - id: quality.image_fidelity
        params: {feature: inception, inception_weights: pt_inception-2015-12-05.pth}
    gates:
      - {metric: quality.image_fidelity/fid, max: 30, use: ci_high}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from audit.errors import InputError
from audit.findings import Finding
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images
from audit.probe import ParamCheck, ProbeContext, register
from probes.quality.features import FeatureExtractor, build_extractor
from probes.quality.image_functional import FeatureMoments
from probes.quality.image_fidelity_findings import FID_MIN_SAMPLES, FidelityFindings  # noqa: F401 - FID_MIN_SAMPLES re-exported
from probes.quality.stats_file import ReferenceStats, check_compatible, load_stats
from probes.sharding import first_size, merge_read_logs, torch_latent_shard

__all__ = ["Collected", "ImageFidelity", "collect_features", "reference_from_folder", "shared_reference"]

_METRICS = ("fid", "kid", "inception_score", "precision", "recall", "gaussian_kl")
#: gaussian_kl is asked for by name: it needs more samples than feature dimensions.
_DEFAULT_METRICS = _METRICS[:5]
_OOM = (torch.cuda.OutOfMemoryError,)


@dataclass
class Collected:
    """Features of one image set: moments (streamed), the features and logits (kept), the read log."""

    moments: FeatureMoments
    features: torch.Tensor
    logits: torch.Tensor | None
    log: ImageReadLog = field(default_factory=ImageReadLog)

    @property
    def n(self) -> int:
        return self.moments.n


def collect_features(batches: Iterable[torch.Tensor], fx: FeatureExtractor, *,
                     keep_features: int | None = None, progress: Callable[[Any], Any] | None = None,
                     log: ImageReadLog | None = None) -> Collected:
    """Run ``fx`` over uint8 batches: moments accumulate on the device, features are kept
    (the first ``keep_features`` when given), no host sync inside the loop.

    Example:
        >>> col = collect_features(subject.generate(1000, batch_size=256), fx)   # doctest: +SKIP
        >>> col.moments.mean.shape                                               # doctest: +SKIP
        torch.Size([2048])
    """
    moments = FeatureMoments()
    feats: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    kept = 0
    it = progress(batches) if progress is not None else batches
    for batch in it:
        f, lg = fx(batch)
        if not fx.dim:
            fx.dim = int(f.shape[1])
        moments.update(f)
        if keep_features is None or kept < keep_features:
            take = f if keep_features is None else f[:keep_features - kept]
            feats.append(take)
            kept += take.shape[0]
        if lg is not None:
            logits.append(lg)
    features = torch.cat(feats) if feats else torch.empty(0, fx.dim or 0, device=fx.device)
    return Collected(moments, features, torch.cat(logits) if logits else None, log or ImageReadLog())


def reference_from_folder(folder: Path, fx: FeatureExtractor, *, batch_size: int = 128,
                          size: tuple[int, int] | None = None, keep_features: int | None = None,
                          progress: Callable[[Any], Any] | None = None) -> Collected:
    """Features of a folder of real images, streamed."""
    log = ImageReadLog()
    batches = iter_image_batches(list_images(folder), batch_size=batch_size,
                                 mode="L" if fx.channels == 1 else "RGB", size=size, log=log)
    return collect_features(batches, fx, keep_features=keep_features, progress=progress, log=log)


def shared_reference(ctx: ProbeContext, fx: FeatureExtractor, folder: Path, size: Any, keep: int | None,
                     compute: Callable[[], Collected]) -> Collected:
    """The reference folder's features, computed once per audit (:meth:`ProbeContext.shared`):
    every variant, and every probe with the same extractor, size and ``keep``, reuses them. The
    key names only inputs (the extractor, folder, size, how many features are kept, the shard),
    never the subject."""
    import json

    key = ("quality.reference-features", json.dumps(fx.describe(), sort_keys=True, default=str),
           str(Path(folder).resolve()), tuple(size) if size else None, keep, ctx.dist.rank, ctx.dist.world_size)
    return ctx.shared(key, compute)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@register("quality.image_fidelity")
@dataclass(frozen=True)
class ImageFidelity:
    """FID, KID, Inception Score and precision/recall of generated images against real ones.

    All metrics come from one pass of features (``feature``: the FID Inception network,
    CLIP image features, or your ``module:factory``). FID and KID carry bias-corrected
    percentile-bootstrap intervals over the samples; IS a bootstrap over images; precision and recall a
    Wilson interval (the manifolds held fixed). FID under 2048 samples gets a warning: it is
    biased upwards at small n, so compare FIDs only at equal n.
    """

    id: ClassVar[str] = "quality.image_fidelity"
    applies_to: ClassVar[tuple[str, ...]] = ("image-generator",)
    requires: ClassVar[tuple[str, ...]] = ("generate_images",)

    reference: str = field(default="reference", metadata={"help": "data input with the real images: a folder, or a .npz from `genai-audit stats build`"})
    feature: str = field(default="inception", metadata={"help": "feature extractor: inception, clip, or module:factory"})
    feature_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "options of a module:factory extractor (weights, input_size, channels, features, logits, ...)"})
    inception_weights: str | None = field(default=None, metadata={"help": "local FID Inception weights (.pth / .safetensors); default: torch hub cache, else download"})
    clip_model: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture (feature: clip), or module:factory"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag or local weights file (feature: clip)"})
    n_samples: int | None = field(default=None, metadata={"help": "generated images to score (default: all of a folder, else 10000)"})
    batch_size: int = field(default=128, metadata={"help": "images per feature batch (halved on out-of-memory)"})
    image_size: int | None = field(default=None, metadata={"help": "common side length for folders of mixed sizes (default: the first image's size)"})
    metrics: tuple[str, ...] = field(default=_DEFAULT_METRICS, metadata={"help": "which of fid, kid, inception_score, precision, recall, gaussian_kl (default: all but gaussian_kl)"})
    kid_subsets: int = field(default=100, metadata={"help": "KID: random subsets"})
    kid_subset_size: int = field(default=1000, metadata={"help": "KID: samples per subset (clamped to the smaller set)"})
    is_splits: int = field(default=10, metadata={"help": "Inception Score: splits"})
    pr_k: int = field(default=3, metadata={"help": "precision/recall: k of the k-NN manifolds"})
    max_features: int = field(default=10000, metadata={"help": "most samples per side kept for KID, precision/recall (memory)"})
    n_resamples: int = field(default=100, metadata={"help": "bootstrap resamples for the FID, KID and IS intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail = check.fail
        if not isinstance(self.reference, str) or not self.reference.strip():
            fail("reference", "the name of a data input (e.g. 'reference')")
        if not isinstance(self.feature, str) or not (self.feature in ("inception", "clip") or ":" in self.feature):
            fail("feature", "'inception', 'clip' or 'module:factory'")
        if not isinstance(self.feature_options, dict):
            fail("feature_options", "a mapping")
        if self.feature_options and ":" not in self.feature:
            fail("feature_options", "empty unless feature is a module:factory")
        if self.n_samples is not None and (not _is_int(self.n_samples) or self.n_samples < 2):
            fail("n_samples", "an integer >= 2 (or null: all of a folder)")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            fail("image_size", "a positive integer or null")
        for name, low in (("batch_size", 1), ("kid_subsets", 1), ("kid_subset_size", 2), ("is_splits", 1),
                          ("pr_k", 1), ("max_features", 2), ("n_resamples", 20)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                fail(name, f"an integer >= {low}")
        bad = [m for m in self.metrics if m not in _METRICS]
        if not self.metrics or bad:
            fail("metrics", f"a non-empty list of {', '.join(_METRICS)}")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")

    # -- run -------------------------------------------------------------------------------------
    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        ref_path = ctx.input_path(self.reference)
        device = torch.device(ctx.device)
        fx = build_extractor(self.feature, self.feature_options, device=device,
                             inception_weights=self.inception_weights, clip_model=self.clip_model,
                             clip_pretrained=self.clip_pretrained)
        size = (self.image_size, self.image_size) if self.image_size else None
        mode = "L" if fx.channels == 1 else "RGB"
        progress = lambda it: ctx.progress(it, desc=f"{self.id}: features")  # noqa: E731

        # Generated side.
        n_wanted = self.n_samples
        if n_wanted is None:
            n_wanted = getattr(subject, "num_images", None) or 10000
        if ctx.dist.active:
            fake = self._with_backoff_agreed(ctx, fx, lambda bs: _generated_shard(
                subject, n_wanted, bs, mode, size, ctx, fx, progress))
        else:
            fake = self._with_backoff(
                lambda bs: self._generated(subject, n_wanted, bs, mode, size, ctx, fx, progress))
        # Reference side: a statistics file, or a folder.
        stats: ReferenceStats | None = None
        if ref_path.is_file():
            stats = load_stats(ref_path)
            check_compatible(stats, fx.describe(), dim=fx.dim or None)
            real = None
        elif ctx.dist.active:
            real = shared_reference(ctx, fx, ref_path, size, None, lambda: self._with_backoff_agreed(
                ctx, fx, lambda bs: _reference_shard(ref_path, fx, bs, size, ctx, progress)))
        else:
            real = shared_reference(ctx, fx, ref_path, size, self.max_features, lambda: self._with_backoff(
                lambda bs: reference_from_folder(ref_path, fx, batch_size=bs, size=size,
                                                 keep_features=self.max_features, progress=progress)))
        n_fake = fake.n
        n_real = stats.n if stats is not None else real.n
        if n_fake < 2:
            raise InputError(f"{self.id}: only {n_fake} readable generated image(s); at least 2 are needed "
                             f"({fake.log.n_skipped} skipped as unreadable)")
        if n_real < 2:
            raise InputError(f"{self.id}: only {n_real} readable reference image(s) in {ref_path}; at least 2 "
                             "are needed")
        return self._findings(fx, fake, real, stats, ctx, ref_path)

    def _with_backoff(self, fn: Callable[[int], Collected]) -> Collected:
        bs = self.batch_size
        while True:
            try:
                return fn(bs)
            except _OOM:
                if bs == 1:
                    raise
                torch.cuda.empty_cache()
                bs = max(1, bs // 2)

    def _with_backoff_agreed(self, ctx: ProbeContext, fx: FeatureExtractor,
                             local: Callable[[int], Collected]) -> Collected:
        """:meth:`_with_backoff` for a sharded run: the shards are cut on multiples of the batch
        size, so the ranks must halve it together. Each rank computes its shard, the ranks add
        up their out-of-memory flags, and if any rank ran out every rank retries at half the
        batch size; only then are the shards reduced."""
        bs = self.batch_size
        while True:
            try:
                col, oom = local(bs), 0.0
            except _OOM:
                col, oom = None, 1.0
                torch.cuda.empty_cache()
            n_oom = int(ctx.dist.all_reduce_sum(torch.tensor([oom], device=ctx.device)).sum())
            if n_oom == 0:
                return _reduce(ctx, fx, col, self.max_features)
            if bs == 1:
                raise InputError(f"{self.id}: out of memory on {n_oom} rank(s) even at batch size 1")
            bs = max(1, bs // 2)

    def _generated(self, subject: Any, n: int, bs: int, mode: str, size: Any, ctx: ProbeContext,
                   fx: FeatureExtractor, progress: Any) -> Collected:
        kwargs: dict[str, Any] = {"batch_size": bs, "seed": ctx.child_seed("generate")}
        if hasattr(subject, "read_log"):  # a folder: read in the extractor's mode and common size
            kwargs.update(mode=mode, size=size)
        prompts = getattr(subject, "prompts", None)
        if "prompts" in getattr(subject, "capabilities", ()) and prompts is None:
            # A text-to-image callable: prompts come from the data input `prompts`.
            from audit.subjects.imagedata import read_prompts

            prompts = [r["prompt"] for r in read_prompts(ctx.input_path("prompts"))]
        if prompts is not None and not hasattr(subject, "read_log"):
            batches = subject.generate(prompts=prompts[:n], **kwargs)
        else:
            batches = subject.generate(n, **kwargs)
        col = collect_features(batches, fx, keep_features=self.max_features, progress=progress)
        col.log = getattr(subject, "read_log", None) or ImageReadLog(read=col.n)
        return col

    # -- findings --------------------------------------------------------------------------------
    def _findings(self, fx: FeatureExtractor, fake: Collected, real: Collected | None,
                  stats: ReferenceStats | None, ctx: ProbeContext, ref_path: Path) -> list[Finding]:
        return FidelityFindings(self, fx, fake, real, stats, ctx, ref_path).all()


# -- sharded collection (torchrun) ----------------------------------------------------------------


def _reference_shard(folder: Path, fx: FeatureExtractor, bs: int, size: Any, ctx: ProbeContext,
                     progress: Any) -> Collected:
    paths = list_images(folder)
    mine = ctx.dist.shard(len(paths), block=bs)
    log = ImageReadLog()
    batches = iter_image_batches(paths[mine.start:mine.stop], batch_size=bs,
                                 mode="L" if fx.channels == 1 else "RGB",
                                 size=size or first_size(paths), log=log)
    return collect_features(batches, fx, progress=progress, log=log)


def _generated_shard(subject: Any, n: int, bs: int, mode: str, size: Any, ctx: ProbeContext,
                     fx: FeatureExtractor, progress: Any) -> Collected:
    """This rank's whole batches of the generated images, made as a single process makes them:
    a folder's files by position, a callable's batch ``i`` from ``seed + i``, a latent
    module's latents cut from the one stream the seed draws."""
    from audit.subjects.image import CallableImageGenerator, FolderImageGenerator, TorchImageGenerator

    seed = ctx.child_seed("generate")
    mine = ctx.dist.shard(n, block=bs)
    prompts = getattr(subject, "prompts", None)
    if isinstance(subject, FolderImageGenerator):
        # The first n files (a single process takes the first n *readable* ones: the two differ
        # only when some of the first n files are unreadable).
        paths = subject.paths[:n]
        mine = ctx.dist.shard(len(paths), block=bs)
        log = ImageReadLog()
        batches = iter_image_batches(paths[mine.start:mine.stop], batch_size=bs, mode=mode,
                                     size=size or first_size(subject.paths), log=log)
        return collect_features(batches, fx, progress=progress, log=log)
    if isinstance(subject, CallableImageGenerator):
        first_batch = mine.start // bs
        if subject.text_to_image:
            if prompts is None:
                from audit.subjects.imagedata import read_prompts

                prompts = [r["prompt"] for r in read_prompts(ctx.input_path("prompts"))]
            prompts = list(prompts[:n])
            mine = ctx.dist.shard(len(prompts), block=bs)
            batches = (subject.generate(prompts=prompts[mine.start:mine.stop], seed=seed + first_batch,
                                        batch_size=bs) if len(mine) else iter(()))
        else:
            batches = (subject.generate(len(mine), seed=seed + first_batch, batch_size=bs)
                       if len(mine) else iter(()))
        col = collect_features(batches, fx, progress=progress)
        col.log = ImageReadLog(read=col.n)
        return col
    if isinstance(subject, TorchImageGenerator):
        col = collect_features(torch_latent_shard(subject, mine, seed, bs), fx, progress=progress)
        col.log = ImageReadLog(read=col.n)
        return col
    # Another generator: every rank makes all n images (same seed) and keeps its own batches.
    ctx.logger.warning("%s: cannot generate a shard with %s; every rank generates all images",
                       ctx.probe_id, type(subject).__name__)
    kwargs: dict[str, Any] = {"batch_size": bs, "seed": seed}
    batches = (subject.generate(prompts=prompts[:n], **kwargs) if prompts is not None
               else subject.generate(n, **kwargs))

    def own() -> Iterable[torch.Tensor]:
        at = 0
        for b in batches:
            lo, hi = max(mine.start - at, 0), min(mine.stop - at, b.shape[0])
            if hi > lo:
                yield b[lo:hi]
            at += b.shape[0]

    col = collect_features(own(), fx, progress=progress)
    col.log = ImageReadLog(read=col.n)
    return col


def _reduce(ctx: ProbeContext, fx: FeatureExtractor, col: Collected, keep: int) -> Collected:
    """One rank's :class:`Collected` -> the whole set's, identical on every rank: moments summed
    around rank 0's shift (float64), the first ``keep`` features and all logits in sample order,
    read logs added up."""
    d = ctx.dist
    infos = d.all_gather_object({"n": col.n, "dim": int(col.features.shape[1]) if col.features.ndim == 2
                                 and col.features.numel() else (fx.dim or 0),
                                 "logits": None if col.logits is None else int(col.logits.shape[1]),
                                 "log": col.log})
    dim = max(i["dim"] for i in infos)
    if not fx.dim:
        fx.dim = dim
    offset = sum(i["n"] for i in infos[:d.rank])
    device = col.features.device
    m = col.moments
    if m.shift is None:  # an empty shard adds nothing
        m.shift = torch.zeros(dim, dtype=torch.float64, device=device)
        m.s1 = torch.zeros_like(m.shift)
        m.s2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    first = next((r for r, i in enumerate(infos) if i["n"]), None)  # whose first batch a single process saw first
    if first is None:
        log = merge_read_logs([i["log"] for i in infos])
        raise InputError(f"{ctx.probe_id}: no image could be read or generated on any rank "
                         f"({log.read} read, {log.n_skipped} unreadable file(s) skipped); expected at least 2")
    shift = d.all_reduce_sum(m.shift if d.rank == first else torch.zeros_like(m.shift)).to(device)
    delta = m.shift - shift  # x - c0 = (x - c) + (c - c0)
    s2 = m.s2 + torch.outer(m.s1, delta) + torch.outer(delta, m.s1) + m.n * torch.outer(delta, delta)
    s1 = m.s1 + m.n * delta
    moments = FeatureMoments(n=sum(i["n"] for i in infos), shift=shift,
                             s1=d.all_reduce_sum(s1).to(device), s2=d.all_reduce_sum(s2).to(device))

    feats = col.features.reshape(-1, dim) if col.features.numel() else torch.zeros(0, dim, device=device)
    take = max(0, min(feats.shape[0], keep - offset))
    features = d.gather_tensor(feats[:take], range(offset, offset + take))
    logits = None
    width = next((i["logits"] for i in infos if i["logits"]), None)
    if width:
        lg = col.logits if col.logits is not None else torch.zeros(0, width, device=device)
        logits = d.gather_tensor(lg, range(offset, offset + lg.shape[0]))
    return Collected(moments, features, logits, merge_read_logs([i["log"] for i in infos]))
