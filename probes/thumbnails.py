"""Small images that probes show in the report: thumbnails saved as PNG artefacts, and the
generated images (with their prompts) that visual probes sample.

A probe saves thumbnails under ``ctx.artefact_dir`` (``OUT/artefacts/<probe id>/``) and
names them in its finding's evidence by their path *relative to the report's folder*
(``artefacts/<probe id>/gen-000.png``), so a report folder that is moved or copied keeps
its pictures. The evidence key ``gallery`` follows the contract that
:mod:`audit.render.gallery` renders (HTML, embedded as ``data:`` URIs) and reads back for
the dashboard::

    {"gallery": {"sections": [
        {"title": "a cat", "columns": [{"title": "generated", "images": [{"src": ..., "caption": ...}]},
                                       {"title": "real", "images": [...]}]},
        {"title": "nearest real neighbour", "pairs": [{"a": {...}, "b": {...}, "caption": "cos 0.93"}]},
    ]}}

Example:
    >>> import torch
    >>> small = thumbnail_array(torch.zeros(3, 256, 128, dtype=torch.uint8), max_side=64)
    >>> small.shape
    (64, 32, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.subjects.imagedata import ImageReadLog, read_prompts

__all__ = ["ThumbnailWriter", "sample_generated", "thumbnail_array"]

#: Most thumbnails one probe saves (the report stays small).
MAX_THUMBNAILS = 64


def thumbnail_array(image: Any, *, max_side: int = 64) -> np.ndarray:
    """A uint8 image [C, H, W] (tensor or array) as an [h, w, C] array whose longer side is at
    most ``max_side`` (Pillow bicubic, antialiased), or at least 32 px for tiny images (nearest,
    so an 8x8 digit shows its pixels)."""
    from PIL import Image

    arr = np.asarray(image.cpu() if hasattr(image, "cpu") else image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    hwc = arr.transpose(1, 2, 0)
    img = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc[..., :3])
    w, h = img.size
    side = max(w, h)
    if side > max_side:
        s = max_side / side
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    elif side < 32:
        k = -(-32 // side)
        img = img.resize((w * k, h * k), Image.Resampling.NEAREST)
    out = np.asarray(img, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


class ThumbnailWriter:
    """Saves a bounded number of PNG thumbnails into a probe's artefact folder.

    Without an artefact folder (a context made by hand, e.g. in a notebook) nothing is
    written and :meth:`save` returns None; the gallery then says the images were not kept.
    """

    def __init__(self, artefact_dir: Path | None, *, max_side: int = 64, limit: int = MAX_THUMBNAILS) -> None:
        self.folder = Path(artefact_dir) if artefact_dir is not None else None
        self.max_side = max_side
        self.limit = limit
        self.saved = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def save(self, image: Any, name: str, caption: str = "") -> dict[str, str] | None:
        """Save one uint8 image [C, H, W]; returns ``{"src", "caption"}`` for the gallery, or
        None when there is no artefact folder or the limit is reached."""
        from PIL import Image

        if self.folder is None:
            return None
        if self.saved >= self.limit:
            self.dropped += 1
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        arr = thumbnail_array(image, max_side=self.max_side)
        path = self.folder / f"{name}.png"
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path, optimize=True)
        self.saved += 1
        # Relative to the report's folder: OUT/artefacts/<probe>/<name>.png -> artefacts/<probe>/<name>.png
        rel = path.relative_to(self.folder.parent.parent).as_posix()
        return {"src": rel, "caption": caption}

    def note(self) -> str:
        if self.folder is None:
            return "thumbnails not kept: the probe ran without an artefact folder"
        if self.dropped:
            return f"{self.dropped} more thumbnail(s) not kept (limit {self.limit})"
        return ""


def sample_generated(subject: Any, ctx: Any, n: int, *, mode: str = "RGB", size: tuple[int, int] | None = None,
                     prompts_input: str = "prompts", batch_size: int = 64,
                     purpose: str = "generate",
                     prompt_plan: Any = None) -> tuple[list[Any], list[str] | None, ImageReadLog]:
    """Up to ``n`` generated images (uint8 [C, H, W] each, on the CPU), with the prompt of each
    (None for an unconditional generator) and the read log of a folder subject.

    A folder gives its first readable files (paired with their prompts by file, so skipped
    files shift nothing); a text-to-image callable is given the data input ``prompts_input``;
    other generators draw ``n`` images from the seed of ``purpose``. ``prompt_plan`` (a
    function of the prompt list) picks the prompts a text-to-image callable is given.
    """
    seed = ctx.child_seed(purpose)
    if hasattr(subject, "iter_with_index"):  # a folder: index -> its own prompt
        images: list[Any] = []
        own_prompts: list[str] | None = [] if subject.prompts is not None else None
        for batch, idx in subject.iter_with_index(batch_size=batch_size, mode=mode, size=size):
            for img, i in zip(batch, idx):
                if len(images) < n:
                    images.append(img)
                    if own_prompts is not None:
                        own_prompts.append(subject.prompts[i])
            if len(images) >= n:
                break
        return images, own_prompts, subject.read_log
    prompts: Sequence[str] | None = getattr(subject, "prompts", None)
    if "prompts" in getattr(subject, "capabilities", ()) and prompts is None:
        prompts = [r["prompt"] for r in read_prompts(ctx.input_path(prompts_input))]
    if prompts is not None:
        prompts = list(prompt_plan(list(prompts)) if prompt_plan is not None else prompts[:n])
        batches = subject.generate(prompts=prompts, batch_size=batch_size, seed=seed)
    else:
        batches = subject.generate(n, batch_size=batch_size, seed=seed)
    images = [img.cpu() for b in batches for img in b][:n]
    log = ImageReadLog(read=len(images))
    return images, (list(prompts[:len(images)]) if prompts is not None else None), log
