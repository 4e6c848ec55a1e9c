"""Post-processing applied to real and generated images alike before a detector scores them.

Each transform maps uint8 images ``[N, C, H, W]`` to uint8 images of the same shape, so a
detector with a fixed input size reads them unchanged, and is deterministic given ``seed``:

* ``jpeg:Q``: JPEG encode and decode at quality ``Q`` (Pillow, in memory, its default chroma
  subsampling for RGB);
* ``resize:F``: downscale by ``F`` (bilinear, antialiased) and back up to the original size
  (bilinear): the detail lost by a resize, at the same input size;
* ``blur:S``: Gaussian blur of standard deviation ``S`` pixels (kernel radius ``ceil(3 S)``,
  edges replicated);
* ``noise:S``: additive Gaussian noise of standard deviation ``S`` of the pixel range, rounded
  and clipped to 0..255;
* ``crop:F``: a crop of ``F`` of each side at a random offset, resized back up (bilinear);
* ``none``: the images unchanged.

Why both classes: a transform applied to one class only is a label in itself (a detector that
keys on JPEG artefacts would call every re-encoded image generated), so the sweep always runs
the same transform over the real and the generated images.

Example:
    >>> import torch
    >>> x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    >>> t = parse_postprocess("jpeg:75")
    >>> t.label, t(x, seed=0).shape, bool((t(x, seed=0) == t(x, seed=0)).all())
    ('jpeg:75', torch.Size([4, 3, 16, 16]), True)
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from audit.errors import SpecError

__all__ = [
    "DEFAULT_SWEEP",
    "PostProcess",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "parse_postprocess",
    "random_crop",
    "resize_down_up",
]

#: The sweep the probe runs by default: JPEG from 95 down to 30, half resolution, a blur,
#: noise of 2% of the pixel range, a 75% crop.
DEFAULT_SWEEP = ("jpeg:95", "jpeg:75", "jpeg:50", "jpeg:30", "resize:0.5", "blur:1", "noise:0.02", "crop:0.75")

# kind -> (what the level is, check, its range in words)
_KINDS = {
    "jpeg": ("quality", lambda v: v == int(v) and 1 <= v <= 100, "an integer quality in 1..100"),
    "resize": ("scale factor", lambda v: 0 < v < 1, "a factor in (0, 1), e.g. 0.5"),
    "blur": ("sigma in pixels", lambda v: 0 < v <= 10, "a sigma in pixels in (0, 10]"),
    "noise": ("std as a fraction of the pixel range", lambda v: 0 < v <= 0.5, "a std in (0, 0.5], e.g. 0.02"),
    "crop": ("fraction of each side kept", lambda v: 0 < v < 1, "a fraction in (0, 1), e.g. 0.75"),
}


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def jpeg(images: torch.Tensor, quality: int, *, workers: int | None = None) -> torch.Tensor:
    """JPEG round trip at ``quality`` (Pillow, in memory); grey images stay grey.

    Example:
        >>> x = torch.full((1, 1, 8, 8), 100, dtype=torch.uint8)
        >>> jpeg(x, 90).unique().tolist()      # a flat image survives JPEG exactly
        [100]
    """
    from PIL import Image

    arr = images.detach().cpu().numpy()

    def one(a: np.ndarray) -> np.ndarray:
        img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as out:
            b = np.asarray(out.convert(img.mode), dtype=np.uint8)
        return b[None] if b.ndim == 2 else b.transpose(2, 0, 1)

    if len(arr) == 0:
        return images.clone()
    # Pillow's encoder releases the GIL: a few threads help on large images.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        out = list(pool.map(one, arr))
    return torch.from_numpy(np.stack(out)).to(images.device)


def resize_down_up(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Downscale by ``factor`` (bilinear, antialiased), then back to the original size (bilinear)."""
    h, w = images.shape[-2:]
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    x = F.interpolate(images.float(), size=small, mode="bilinear", align_corners=False, antialias=True)
    return _as_uint8(F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False))


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of standard deviation ``sigma``, radius ``ceil(3 sigma)``.

    Example:
        >>> k = gaussian_kernel(1.0)
        >>> k.numel(), round(float(k.sum()), 6)
        (7, 1.0)
    """
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``sigma`` pixels, edges replicated."""
    k = gaussian_kernel(sigma).to(images.device)
    r = k.numel() // 2
    n, c, h, w = images.shape
    x = images.float().reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return _as_uint8(x.reshape(n, c, h, w))


def gaussian_noise(images: torch.Tensor, std: float, *, seed: int) -> torch.Tensor:
    """Add N(0, (255 std)^2) per pixel (seeded), round and clip to 0..255."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(images.shape, generator=g) * (255.0 * std)
    return _as_uint8(images.float() + noise.to(images.device))


def random_crop(images: torch.Tensor, fraction: float, *, seed: int) -> torch.Tensor:
    """Keep ``fraction`` of each side at a seeded random offset per image; resize back (bilinear)."""
    n, _, h, w = images.shape
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    g = torch.Generator().manual_seed(int(seed))
    tops = torch.randint(0, h - ch + 1, (n,), generator=g).tolist()
    lefts = torch.randint(0, w - cw + 1, (n,), generator=g).tolist()
    crops = torch.stack([images[i, :, t:t + ch, l:l + cw] for i, (t, l) in enumerate(zip(tops, lefts))])
    return _as_uint8(F.interpolate(crops.float(), size=(h, w), mode="bilinear", align_corners=False))


@dataclass(frozen=True)
class PostProcess:
    """One post-processing step: ``kind`` (``none``, ``jpeg``, ``resize``, ``blur``, ``noise``,
    ``crop``) at ``level``; call it on uint8 images with a seed."""

    kind: str
    level: float = 0.0

    @property
    def label(self) -> str:
        """``jpeg:75``, ``blur:1.5``, ``none``: the name used in finding slices."""
        return "none" if self.kind == "none" else f"{self.kind}:{self.level:g}"

    def __call__(self, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if self.kind == "none":
            return images
        if self.kind == "jpeg":
            return jpeg(images, int(self.level))
        if self.kind == "resize":
            return resize_down_up(images, self.level)
        if self.kind == "blur":
            return gaussian_blur(images, self.level)
        if self.kind == "noise":
            return gaussian_noise(images, self.level, seed=seed)
        if self.kind == "crop":
            return random_crop(images, self.level, seed=seed)
        raise ValueError(f"unknown post-processing {self.kind!r}")


def parse_postprocess(text: str) -> PostProcess:
    """``"jpeg:75"`` -> ``PostProcess("jpeg", 75.0)``; ``"none"`` -> no change.

    Raises:
        SpecError: an unknown kind or a level outside its range (the message gives the range).

    Example:
        >>> parse_postprocess("resize:0.5").label, parse_postprocess("blur:1.0").label
        ('resize:0.5', 'blur:1')
    """
    if not isinstance(text, str):
        raise SpecError(f"postprocess: expected strings such as 'jpeg:75', got {text!r}")
    s = text.strip().lower()
    if s == "none":
        return PostProcess("none")
    kind, sep, level = s.partition(":")
    if kind not in _KINDS:
        raise SpecError(f"postprocess {text!r}: unknown kind {kind!r}; expected one of none, "
                        f"{', '.join(f'{k}:<{v[0]}>' for k, v in _KINDS.items())}")
    what, ok, expected = _KINDS[kind]
    try:
        v = float(level) if sep else math.nan
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or not ok(v):
        raise SpecError(f"postprocess {text!r}: the {what} must be {expected}")
    return PostProcess(kind, v)
