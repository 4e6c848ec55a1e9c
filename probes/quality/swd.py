"""Probe ``quality.sliced_wasserstein``: the Sliced Wasserstein Distance of generated images.

Two modes under one probe:

* ``feature: pyramid`` (default) -- SWD as Karras et al. (2018) define it for ProGAN: 7x7
  patches from every level of a Laplacian pyramid of the images, random unit directions,
  W1 of the sorted projections, per pyramid level and averaged, x1e3 (their units).
  Images smaller than ``min_resolution`` (16, the reference's smallest level) are first
  upsampled to it by pixel repetition (an 8x8 digit becomes 16x16, one level) and the finding
  says so; such values compare only with others computed the same way.
* ``feature: inception | clip | module:factory`` -- the sliced p-Wasserstein distance between
  the generated and real feature sets of that extractor (as ``quality.image_fidelity``
  extracts them, sharded under torchrun), in feature units.

Intervals are percentile bootstraps over images (both sets resampled, directions fixed).

Example (spec):
    probes:
      - id: quality.sliced_wasserstein
        params: {feature: pyramid, n_samples: 4096}
    gates:
      - {metric: quality.sliced_wasserstein/swd_avg, max: 20, use: ci_high}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from audit.errors import InputError
from audit.findings import Finding, Interval
from audit.probe import ParamCheck, ProbeContext, register
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images
from probes.quality.image_functional import percentile_interval
from probes.quality.swd_functional import (
    laplacian_pyramid,
    normalize_descriptors,
    patch_descriptors,
    pyramid_levels,
    random_directions,
    resorted,
    sliced_wasserstein,
    sorted_wasserstein,
)

__all__ = ["SlicedWasserstein"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@register("quality.sliced_wasserstein")
@dataclass(frozen=True)
class SlicedWasserstein:
    """Sliced Wasserstein Distance of generated to real images (ProGAN's SWD, or on features).

    ``feature: pyramid``: Laplacian-pyramid 7x7 patch SWD of Karras et al. (2018), one finding
    per level (``swd_<resolution>``) and ``swd_avg``, x1e3. Any other ``feature`` (inception,
    clip, module:factory): ``sliced_wasserstein`` between the two feature sets. Lower is
    better; intervals are bootstraps over images.
    """

    id: ClassVar[str] = "quality.sliced_wasserstein"
    applies_to: ClassVar[tuple[str, ...]] = ("image-generator",)
    requires: ClassVar[tuple[str, ...]] = ("generate_images",)

    reference: str = field(default="reference", metadata={"help": "data input with the real images (a folder)"})
    feature: str = field(default="pyramid", metadata={"help": "pyramid (ProGAN SWD on pixels), inception, clip, or module:factory"})
    feature_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "options of a module:factory extractor"})
    inception_weights: str | None = field(default=None, metadata={"help": "local FID Inception weights (feature: inception)"})
    clip_model: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture (feature: clip)"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag or weights file (feature: clip)"})
    n_samples: int | None = field(default=None, metadata={"help": "generated images (default: all of a folder, else 10000)"})
    batch_size: int = field(default=128, metadata={"help": "images per batch"})
    image_size: int | None = field(default=None, metadata={"help": "common side length for folders of mixed sizes"})
    n_directions: int = field(default=128, metadata={"help": "random directions per repeat (ProGAN: 128)"})
    n_repeats: int = field(default=4, metadata={"help": "repeats with fresh directions, averaged (ProGAN: 4)"})
    patches_per_image: int = field(default=128, metadata={"help": "pyramid: 7x7 patches per image and level (ProGAN: 128)"})
    patch_size: int = field(default=7, metadata={"help": "pyramid: patch side (ProGAN: 7)"})
    min_resolution: int = field(default=16, metadata={"help": "pyramid: coarsest level; smaller images are upsampled to it"})
    normalize: str = field(default="separate", metadata={"help": "pyramid: descriptor normalisation per set (separate, as ProGAN's code) or over both sets (joint)"})
    p: int = field(default=1, metadata={"help": "features: the p of the sliced p-Wasserstein distance (1 or 2)"})
    max_features: int = field(default=10000, metadata={"help": "features: most samples per side kept"})
    n_resamples: int = field(default=50, metadata={"help": "bootstrap resamples over images (0: no interval)"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail = check.fail
        if not isinstance(self.reference, str) or not self.reference.strip():
            fail("reference", "the name of a data input (e.g. 'reference')")
        if not isinstance(self.feature, str) or not (self.feature in ("pyramid", "inception", "clip")
                                                     or ":" in self.feature):
            fail("feature", "'pyramid', 'inception', 'clip' or 'module:factory'")
        if not isinstance(self.feature_options, dict) or (self.feature_options and ":" not in self.feature):
            fail("feature_options", "a mapping, empty unless feature is a module:factory")
        if self.n_samples is not None and (not _is_int(self.n_samples) or self.n_samples < 2):
            fail("n_samples", "an integer >= 2 (or null: all of a folder)")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            fail("image_size", "a positive integer or null")
        for name, low in (("batch_size", 1), ("n_directions", 1), ("n_repeats", 1), ("patches_per_image", 1),
                          ("patch_size", 1), ("min_resolution", 1), ("max_features", 2), ("n_resamples", 0)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                fail(name, f"an integer >= {low}")
        if self.patch_size % 2 == 0:
            fail("patch_size", "an odd integer (a patch has a centre pixel)")
        if self.min_resolution < self.patch_size:
            fail("min_resolution", f"at least patch_size ({self.patch_size})")
        if self.normalize not in ("separate", "joint"):
            fail("normalize", "'separate' or 'joint'")
        if self.p not in (1, 2):
            fail("p", "1 or 2")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        if self.feature == "pyramid":
            return self._run_pyramid(subject, ctx)
        return self._run_features(subject, ctx)

    # -- features ----------------------------------------------------------------------------------
    def _fidelity(self) -> Any:
        from probes.quality.image_fidelity import ImageFidelity

        return ImageFidelity(reference=self.reference, feature=self.feature, feature_options=self.feature_options,
                             inception_weights=self.inception_weights, clip_model=self.clip_model,
                             clip_pretrained=self.clip_pretrained, n_samples=self.n_samples,
                             batch_size=self.batch_size, image_size=self.image_size, metrics=("fid",),
                             max_features=self.max_features)

    def _run_features(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        from probes.quality.features import build_extractor
        from probes.quality.image_fidelity import (
            _generated_shard,
            _reference_shard,
            reference_from_folder,
            shared_reference,
        )

        fid = self._fidelity()
        ref_path = ctx.input_path(self.reference)
        if not ref_path.is_dir():
            raise InputError(f"{self.id}: the reference {ref_path} must be a folder of images (sliced Wasserstein "
                             "needs the real features, which a statistics file does not keep in full)")
        fx = build_extractor(self.feature, self.feature_options, device=torch.device(ctx.device),
                             inception_weights=self.inception_weights, clip_model=self.clip_model,
                             clip_pretrained=self.clip_pretrained)
        size = (self.image_size, self.image_size) if self.image_size else None
        mode = "L" if fx.channels == 1 else "RGB"
        progress = lambda it: ctx.progress(it, desc=f"{self.id}: features")  # noqa: E731
        n_wanted = self.n_samples or getattr(subject, "num_images", None) or 10000
        if ctx.dist.active:
            fake = fid._with_backoff_agreed(ctx, fx, lambda bs: _generated_shard(
                subject, n_wanted, bs, mode, size, ctx, fx, progress))
            real = shared_reference(ctx, fx, ref_path, size, None, lambda: fid._with_backoff_agreed(
                ctx, fx, lambda bs: _reference_shard(ref_path, fx, bs, size, ctx, progress)))
        else:
            fake = fid._with_backoff(lambda bs: fid._generated(subject, n_wanted, bs, mode, size, ctx, fx, progress))
            real = shared_reference(ctx, fx, ref_path, size, self.max_features, lambda: fid._with_backoff(
                lambda bs: reference_from_folder(ref_path, fx, batch_size=bs, size=size,
                                                 keep_features=self.max_features, progress=progress)))
        a, b = fake.features.double(), real.features.double()
        self._check_counts(a.shape[0], b.shape[0], fake.log.n_skipped, ref_path)
        dirs = random_directions(a.shape[1], self.n_directions * self.n_repeats, generator=ctx.rng("directions"))
        value = float(sliced_wasserstein(a, b, dirs, p=self.p))
        sa, sb = _sorted(a, dirs), _sorted(b, dirs)
        na, nb = a.shape[0], b.shape[0]
        boot = self._bootstrap(lambda ia, ib: _w(sa, sb, torch.bincount(ia, minlength=na),
                                                 torch.bincount(ib, minlength=nb), self.p) ** (1 / self.p),
                               na, nb, ctx)
        warns = []
        if fx.name != "inception-v3-fid":
            warns.append(f"features of {fx.name}: the value compares models under this extractor only")
        if a.shape[0] < fake.n or b.shape[0] < real.n:
            warns.append(f"computed on the first {self.max_features} features per side")
        evidence = {"n_generated": fake.n, "n_reference": real.n, "reference": str(ref_path),
                    "extractor": {**fx.describe(), "dim": int(a.shape[1])}, "p": self.p,
                    "n_directions": self.n_directions * self.n_repeats,
                    "generated_images": fake.log.as_evidence(), "reference_images": real.log.as_evidence()}
        return [Finding(probe=self.id, metric="sliced_wasserstein", value=value, higher_is_better=False,
                        ci=self._interval(value, boot), n=int(a.shape[0]), warnings=tuple(warns), evidence=evidence)]

    # -- pyramid -----------------------------------------------------------------------------------
    def _run_pyramid(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        ref_path = ctx.input_path(self.reference)
        if not ref_path.is_dir():
            raise InputError(f"{self.id}: the reference {ref_path} must be a folder of images (feature: pyramid "
                             "reads the real pixels)")
        size = (self.image_size, self.image_size) if self.image_size else None
        n_wanted = self.n_samples or getattr(subject, "num_images", None) or 10000
        fake_batches, fake_log = self._generated_batches(subject, n_wanted, size, ctx)
        fake = _Descriptors(self, ctx.rng("patches-generated"))
        real = _Descriptors(self, ctx.rng("patches-reference"))
        for b in ctx.progress(fake_batches, desc=f"{self.id}: generated"):
            fake.add(b)
        real_log = ImageReadLog()  # the real images read in the generated images' mode (grey or colour)
        real_batches = iter_image_batches(list_images(ref_path), batch_size=self.batch_size,
                                          mode="L" if fake.channels == 1 else "RGB", size=size, log=real_log)
        for b in ctx.progress(real_batches, desc=f"{self.id}: reference"):
            real.add(b)
        self._check_counts(fake.n, real.n, fake_log.n_skipped, ref_path)
        if fake.resolutions != real.resolutions or fake.channels != real.channels:
            raise InputError(f"{self.id}: generated images give pyramid levels {fake.resolutions} with "
                             f"{fake.channels} channel(s), the reference {real.resolutions} with {real.channels}; "
                             "set image_size so both are resized alike")
        # Equal numbers of images per side (sorted projections pair up one to one).
        n = min(fake.n, real.n)
        g = ctx.rng("subsample")
        keep_a = torch.randperm(fake.n, generator=g)[:n].sort().values
        keep_b = torch.randperm(real.n, generator=g)[:n].sort().values
        pp = self.patches_per_image
        rows = lambda keep: (keep[:, None] * pp + torch.arange(pp)[None, :]).reshape(-1)  # noqa: E731
        levels = list(zip(fake.levels(), real.levels()))

        def normalized(lv: int) -> tuple[torch.Tensor, torch.Tensor]:  # one level at a time (memory)
            da, db = levels[lv][0][rows(keep_a)], levels[lv][1][rows(keep_b)]
            if self.normalize == "joint":
                return tuple(normalize_descriptors(da, db))  # type: ignore[return-value]
            return normalize_descriptors(da)[0], normalize_descriptors(db)[0]

        dim = fake.channels * self.patch_size ** 2
        gd = ctx.rng("directions")
        dirs = [random_directions(dim, self.n_directions, generator=gd) for _ in range(self.n_repeats)]

        # One level and repeat at a time (memory: one pair of sorted projections): the value and
        # every resample's, the resamples re-weighting the sorted projections (no new sort).
        counts = [(torch.bincount(ia, minlength=n).repeat_interleave(pp),
                   torch.bincount(ib, minlength=n).repeat_interleave(pp)) for ia, ib in self._resamples(n, n, ctx)]
        values = [0.0] * len(levels)
        boots = torch.zeros(len(counts), len(levels), dtype=torch.float64)
        for lv in range(len(levels)):
            da, db = normalized(lv)
            for d in dirs:
                a, b = _sorted(da, d), _sorted(db, d)
                values[lv] += 1e3 * _w(a, b, None, None, 1) / len(dirs)
                for r, (ca, cb) in enumerate(counts):
                    boots[r, lv] += 1e3 * _w(a, b, ca, cb, 1) / len(dirs)
        return self._pyramid_findings(values, boots, fake, real, fake_log, real_log, n, ref_path)

    def _pyramid_findings(self, values: list[float], boots: torch.Tensor, fake: Any, real: Any, fake_log: Any,
                          real_log: Any, n: int, ref_path: Any) -> list[Finding]:
        warns: list[str] = []
        if fake.upsampled_from is not None or real.upsampled_from is not None:
            src = fake.upsampled_from or real.upsampled_from
            warns.append(f"images of {src[0]}x{src[1]} pixels are below the pyramid's coarsest level "
                         f"{self.min_resolution}: upsampled by pixel repetition to {fake.resolutions[0]} "
                         f"({len(fake.resolutions)} level(s)); compare only with SWDs computed the same way")
        if fake.n != real.n:
            warns.append(f"{fake.n} generated and {real.n} real images: both sides use {n} (a random subset)")
        evidence = {"n_generated": fake.n, "n_reference": real.n, "n_used": n, "reference": str(ref_path),
                    "resolutions": list(fake.resolutions), "units": "x1e3 (Karras et al. 2018)",
                    "patches_per_image": self.patches_per_image, "patch_size": self.patch_size,
                    "n_directions": self.n_directions, "n_repeats": self.n_repeats, "normalize": self.normalize,
                    "generated_images": fake_log.as_evidence(), "reference_images": real_log.as_evidence()}
        findings = []
        for i, res in enumerate(fake.resolutions):
            col = boots[:, i] if boots.numel() else boots
            findings.append(Finding(probe=self.id, metric=f"swd_{res}", value=values[i], higher_is_better=False,
                                    ci=self._interval(values[i], col), n=n, warnings=tuple(warns),
                                    evidence={"resolution": res, "n_used": n}))
        avg = sum(values) / len(values)
        col = boots.mean(dim=1) if boots.numel() else boots
        findings.insert(0, Finding(probe=self.id, metric="swd_avg", value=avg, higher_is_better=False,
                                   ci=self._interval(avg, col), n=n, warnings=tuple(warns), evidence=evidence))
        return findings

    # -- shared ------------------------------------------------------------------------------------
    def _generated_batches(self, subject: Any, n: int, size: Any, ctx: ProbeContext) -> tuple[Any, ImageReadLog]:
        kwargs: dict[str, Any] = {"batch_size": self.batch_size, "seed": ctx.child_seed("generate")}
        if hasattr(subject, "read_log"):
            kwargs.update(mode="RGB", size=size)
        prompts = getattr(subject, "prompts", None)
        if "prompts" in getattr(subject, "capabilities", ()) and prompts is None:
            from audit.subjects.imagedata import read_prompts

            prompts = [r["prompt"] for r in read_prompts(ctx.input_path("prompts"))]
        if prompts is not None and not hasattr(subject, "read_log"):
            batches = subject.generate(prompts=prompts[:n], **kwargs)
        else:
            batches = subject.generate(n, **kwargs)
        log = getattr(subject, "read_log", None) or ImageReadLog()
        return batches, log

    def _check_counts(self, n_fake: int, n_real: int, skipped: int, ref_path: Any) -> None:
        if n_fake < 2:
            raise InputError(f"{self.id}: only {n_fake} readable generated image(s); at least 2 are needed "
                             f"({skipped} skipped as unreadable)")
        if n_real < 2:
            raise InputError(f"{self.id}: only {n_real} readable reference image(s) in {ref_path}; "
                             "at least 2 are needed")

    def _resamples(self, na: int, nb: int, ctx: ProbeContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = ctx.rng("bootstrap")
        return [(torch.randint(0, na, (na,), generator=g), torch.randint(0, nb, (nb,), generator=g))
                for _ in range(self.n_resamples)]

    def _bootstrap(self, stat: Any, na: int, nb: int, ctx: ProbeContext) -> torch.Tensor:
        return torch.tensor([stat(ia, ib) for ia, ib in self._resamples(na, nb, ctx)], dtype=torch.float64)

    def _interval(self, value: float, boot: torch.Tensor) -> Interval | None:
        """Bias-corrected percentile interval (as quality.image_fidelity's FID): a resample with
        duplicates sits further from the other set, so the plain percentile would sit above."""
        if boot.numel() < 2 or not math.isfinite(value):
            return None
        iv = percentile_interval(boot, self.confidence)
        if iv is None:
            return None
        centre = float(boot[torch.isfinite(boot)].mean())
        lo, hi = value - (centre - iv[0]), value + (iv[1] - centre)
        return Interval(max(0.0, lo), hi, f"bootstrap-bias-corrected-{round(self.confidence * 100, 2):g}")


def _sorted(x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections of ``x`` ([n, D]) on ``dirs`` ([K, D]), sorted per direction: values, order ([K, n])."""
    proj = (x.double() @ dirs.to(device=x.device, dtype=torch.float64).T).T.contiguous()
    out = proj.sort(dim=1)
    return out.values, out.indices


def _w(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], ca: torch.Tensor | None,
       cb: torch.Tensor | None, p: int) -> float:
    """Mean over directions of W_p^p, from sorted projections; ``ca``/``cb``: bootstrap counts per row."""
    xa = a[0] if ca is None else resorted(a[0], a[1], ca)
    xb = b[0] if cb is None else resorted(b[0], b[1], cb)
    return float(sorted_wasserstein(xa, xb, p=p).mean())


class _Descriptors:
    """Streams batches of uint8 images into per-level 7x7 patch descriptors (float32)."""

    def __init__(self, probe: SlicedWasserstein, generator: torch.Generator) -> None:
        self.p, self.g = probe, generator
        self.parts: list[list[torch.Tensor]] = []
        self.n = 0
        self.resolutions: list[int] = []
        self.channels = 0
        self.upsampled_from: tuple[int, int] | None = None

    def add(self, batch: torch.Tensor) -> None:
        x = batch.float()
        h, w = x.shape[2:]
        side = min(h, w)
        if side < self.p.min_resolution:
            factor = -(-self.p.min_resolution // side)
            self.upsampled_from = (int(h), int(w))
            x = F.interpolate(x, scale_factor=factor, mode="nearest")
            side *= factor
        res = pyramid_levels(side, self.p.min_resolution)
        if not self.resolutions:
            self.resolutions, self.channels = res, int(x.shape[1])
            self.parts = [[] for _ in res]
        for i, level in enumerate(laplacian_pyramid(x, len(self.resolutions))):
            self.parts[i].append(patch_descriptors(level, self.p.patches_per_image, size=self.p.patch_size,
                                                   generator=self.g))
        self.n += int(x.shape[0])

    def levels(self) -> list[torch.Tensor]:
        return [torch.cat(p) for p in self.parts]
