"""Reading folders of images: listing, decoding, mode conversion, resizing, streaming in batches.

Images are decoded with Pillow in a small thread pool (decoding releases the GIL) and handed
out as uint8 NCHW tensors, one batch at a time, so a folder larger than memory streams
through. Every deviation from "a clean image of the expected mode and size" is counted in an
:class:`ImageReadLog` that probes copy into their findings:

* unreadable or corrupt files are skipped (never the run) and listed with the reason;
* other modes are converted: grayscale is repeated to RGB, the alpha channel of RGBA/LA
  images is dropped (Pillow's ``convert``, as torch-fidelity and Clean-FID do), palette
  images are expanded, 16-bit images are scaled to 8 bits;
* images whose size differs from the batch size (the first readable image's, unless given)
  are resized with Pillow's bicubic filter (antialiased when shrinking).

Example:
    >>> log = ImageReadLog()
    >>> for batch in iter_image_batches(list_images("samples/"), batch_size=64, log=log):  # doctest: +SKIP
    ...     print(batch.shape, batch.dtype)                                                  # doctest: +SKIP
    torch.Size([64, 3, 256, 256]) torch.uint8
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadLog",
    "iter_image_batches",
    "list_images",
    "read_image",
    "read_prompts",
    "to_uint8_nchw",
]

#: File suffixes read as images (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_MAX_LISTED = 20


@dataclass
class ImageReadLog:
    """What happened while reading images: counts that findings record.

    Attributes:
        read: images decoded and handed out.
        skipped: files that could not be decoded, as ``(name, reason)`` (the first 20 kept).
        n_skipped: how many files were skipped in all.
        converted: source mode -> count of images converted to the target mode.
        resized: images resized to the common size.
        sizes: source ``(width, height)`` -> count.
        size: the common ``(width, height)`` of the batches, once known.
    """

    read: int = 0
    n_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: Counter = field(default_factory=Counter)
    resized: int = 0
    sizes: Counter = field(default_factory=Counter)
    size: tuple[int, int] | None = None
    mode: str = "RGB"

    def skip(self, name: str, reason: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < _MAX_LISTED:
            self.skipped.append((name, reason))

    def as_evidence(self) -> dict[str, Any]:
        """A small JSON-ready summary for a finding's evidence."""
        return {
            "images_read": self.read,
            "files_skipped": self.n_skipped,
            "skipped_examples": [f"{n}: {r}" for n, r in self.skipped],
            "converted_to_" + self.mode: dict(sorted(self.converted.items())),
            "resized": self.resized,
            "size": list(self.size) if self.size else None,
            "source_sizes": {f"{w}x{h}": c for (w, h), c in self.sizes.most_common(10)},
        }

    def warnings(self, what: str = "images") -> list[str]:
        """Warnings for a finding: skipped files, conversions and resizing, in words."""
        out = []
        if self.n_skipped:
            names = ", ".join(n for n, _ in self.skipped[:5])
            out.append(f"{self.n_skipped} unreadable or corrupt {what} file(s) skipped ({names}"
                       f"{' and more' if self.n_skipped > 5 else ''})")
        if self.converted:
            modes = ", ".join(f"{c} {m}" for m, c in sorted(self.converted.items()))
            out.append(f"{sum(self.converted.values())} {what} converted to {self.mode} ({modes})")
        if self.resized:
            w, h = self.size or (0, 0)
            out.append(f"{self.resized} {what} of another size resized to {w}x{h} (bicubic, antialiased)")
        return out


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under ``folder`` (recursively, hidden folders skipped), sorted by path.

    Raises:
        InputError: the folder does not exist or holds no image files.

    Example:
        >>> list_images("/no/such/folder")
        Traceback (most recent call last):
        ...
        audit.errors.InputError: image folder not found: /no/such/folder
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(f"image folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"{root}: expected a folder of images, got a file")
    found: list[Path] = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(dirpath) / n for n in names
                     if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES))
    if not found:
        raise InputError(f"{root}: no image files found (expected {', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


def _to_mode(img: Any, mode: str, log: ImageReadLog | None) -> Any:
    from PIL import Image

    src = img.mode
    if src == mode:
        return img
    if log is not None:
        log.converted[src] += 1
    if src in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits by the type's range, not by clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if src.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")
    elif src == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).round().astype(np.uint8), mode="L")
    elif src == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Drop the alpha channel (no compositing), as torch-fidelity and Clean-FID do, so that
        # features match the tools users compare with.
        img = img.convert("RGB") if mode == "RGB" else img.convert("L")
    return img.convert(mode)


def read_image(path: str | os.PathLike[str], *, mode: str = "RGB", size: tuple[int, int] | None = None,
               log: ImageReadLog | None = None) -> np.ndarray:
    """One image as a uint8 array [C, H, W] in ``mode`` (``"RGB"`` or ``"L"``), resized to
    ``size`` = ``(width, height)`` when given and different.

    Raises:
        OSError / ValueError: the file cannot be decoded (callers skip and count it).
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode now: truncated files fail here, not later
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        if log is not None:
            log.sizes[im.size] += 1
        img = _to_mode(im, mode, log)
        if size is not None and img.size != tuple(size):
            img = img.resize(tuple(size), Image.Resampling.BICUBIC)
            if log is not None:
                log.resized += 1
        arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _decode(path: Path, mode: str) -> tuple[Any, str | None]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy(), None
    except Exception as exc:  # any decoding failure: skip and count this one file
        return None, f"{type(exc).__name__}: {str(exc)[:120]}"


def iter_image_batches(paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 64, mode: str = "RGB",
                       size: tuple[int, int] | None = None, log: ImageReadLog | None = None,
                       limit: int | None = None, workers: int | None = None,
                       with_index: bool = False) -> Iterator[Any]:
    """Stream ``paths`` as uint8 tensors [B, C, H, W]; never more than two batches in memory.

    Args:
        paths: image files, in order.
        batch_size: images per batch.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        size: common ``(width, height)``; default the first readable image's size.
        log: receives the counts of skipped, converted and resized images.
        limit: stop after this many readable images.
        workers: decoding threads (default: up to 8).
        with_index: yield ``(batch, indices into paths)`` instead of the batch alone.
    """
    import torch

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    log = log if log is not None else ImageReadLog()
    log.mode = mode
    if size is not None:
        log.size = (int(size[0]), int(size[1]))
    paths = [Path(p) for p in paths]
    workers = workers or min(8, (os.cpu_count() or 2))
    chunk = max(batch_size, 1)

    def prepare(item: tuple[int, Any]) -> tuple[int, np.ndarray | None]:
        i, img = item
        if img is None:
            return i, None
        try:
            if img.mode != mode:
                log.converted[img.mode] += 1
                img = _to_mode(img, mode, None)
            if img.size != log.size:
                from PIL import Image

                img = img.resize(log.size, Image.Resampling.BICUBIC)
                log.resized += 1
            arr = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # a decodable file in a mode Pillow cannot convert
            log.skip(paths[i].name, f"{type(exc).__name__}: {exc}")
            return i, None
        return i, (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))

    emitted = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = None
        starts = list(range(0, len(paths), chunk))
        for k, start in enumerate(starts):
            if pending is None:
                pending = pool.map(lambda p: _decode(p, mode), paths[start:start + chunk])
            decoded = list(pending)
            # Prefetch the next chunk while this one is converted and consumed.
            pending = (pool.map(lambda p: _decode(p, mode), paths[starts[k + 1]:starts[k + 1] + chunk])
                       if k + 1 < len(starts) else None)
            items = []
            for j, (img, err) in enumerate(decoded):
                i = start + j
                if err is not None:
                    log.skip(paths[i].name, err)
                    continue
                log.sizes[img.size] += 1
                if log.size is None:
                    log.size = img.size
                items.append((i, img))
            arrays = [(i, a) for i, a in map(prepare, items) if a is not None]
            if limit is not None:
                arrays = arrays[:max(0, limit - emitted)]
            if arrays:
                emitted += len(arrays)
                log.read += len(arrays)
                batch = torch.from_numpy(np.stack([a for _, a in arrays]))
                yield (batch, [i for i, _ in arrays]) if with_index else batch
            if limit is not None and emitted >= limit:
                break


def to_uint8_nchw(images: Any, *, value_range: tuple[float, float] | None = None) -> Any:
    """Normalise what a user's generator returns to a uint8 tensor [N, C, H, W].

    Accepts a uint8 tensor/array (NCHW, or NHWC when the last axis has 1, 3 or 4 channels),
    a float tensor/array in ``value_range`` (default ``(0, 1)``), or a list of PIL images
    or arrays.

    Raises:
        InputError: anything else, naming what was received.

    Example:
        >>> to_uint8_nchw(np.ones((2, 4, 4, 3), dtype=np.float32)).shape
        torch.Size([2, 3, 4, 4])
    """
    import torch

    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("the generator returned an empty list of images")
        parts = []
        for im in images:
            if hasattr(im, "mode") and hasattr(im, "size"):  # PIL
                rgb = im.convert("RGB") if im.mode not in ("RGB", "L") else im
                a = np.asarray(rgb, dtype=np.uint8)
                parts.append(torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()))
            else:
                parts.append(to_uint8_nchw(np.asarray(im)[None] if np.asarray(im).ndim == 3 else im,
                                           value_range=value_range)[0])
        return torch.stack(parts)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise InputError(f"the generator returned a {type(images).__name__}; expected a uint8 or float tensor "
                         "[N, C, H, W], an array, or a list of PIL images")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise InputError(f"the generator returned images of shape {tuple(images.shape)}; expected [N, C, H, W]")
    # Channels first when axis 1 is 1 or 3; else channels last when the last axis is 1, 3 or 4.
    if images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3, 4):
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] == 4:
        images = images[:, :3]
    if images.shape[1] not in (1, 3):
        raise InputError(f"the generator returned {images.shape[1]} channels; expected 1 (grey) or 3 (RGB)")
    if images.dtype == torch.uint8:
        return images.contiguous()
    if not images.is_floating_point():
        return images.clamp(0, 255).to(torch.uint8).contiguous()
    lo, hi = value_range or (0.0, 1.0)
    x = (images.float() - lo) / (hi - lo)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).contiguous()


def read_prompts(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Prompts from a ``.jsonl`` file (``{"prompt": ..., "file": ...}`` per line; ``text`` is
    accepted for ``prompt``, ``image`` for ``file``) or a ``.txt`` file (one prompt per line).

    Raises:
        InputError: the file is missing, a line is not JSON, or a record has no prompt.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompts file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the prompts: {exc}") from None
    out: list[dict[str, Any]] = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if p.suffix.lower() != ".jsonl":
            out.append({"prompt": line.strip()})
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{no}: not valid JSON ({exc.msg})") from None
        if isinstance(rec, str):
            rec = {"prompt": rec}
        prompt = rec.get("prompt", rec.get("text")) if isinstance(rec, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{p}:{no}: expected an object with a non-empty \"prompt\" string")
        item = {"prompt": prompt}
        f = rec.get("file", rec.get("image"))
        if f is not None:
            item["file"] = str(f)
        out.append(item)
    if not out:
        raise InputError(f"{p}: no prompts in the file")
    return out
