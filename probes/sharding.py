"""Helpers for probes that shard their work over ranks (``ctx.dist``, :mod:`audit.distributed`).

* :func:`image_shard`: this rank's images of an image-generator subject, each with its index,
  exactly the images a single process would make for those indices (folder files, a
  callable's batch ``i`` from ``seed + i``, latents cut from the one seeded stream).
* :func:`merge_read_logs`: the image read logs of every rank added up.
* :func:`shard_map`: ``fn`` over this rank's items, results gathered in item order.
* :func:`torch_latent_shard`: a latent module's images for this rank's indices, from the
  latents a single process would draw for them.

In one process each helper does what a plain loop would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from audit.errors import InputError
from audit.subjects.imagedata import ImageReadLog, iter_image_batches

__all__ = ["first_size", "image_shard", "merge_read_logs", "shard_map", "torch_latent_shard"]


def shard_map(ctx: Any, items: Sequence[Any], fn: Callable[[Any], Any]) -> list[Any]:
    """``[fn(item) for item in items]``, each rank calling ``fn`` on its contiguous share only;
    the results (picklable) are gathered in item order on every rank.

    Example:
        >>> from audit.probe import ProbeContext
        >>> shard_map(ProbeContext(), [1, 2, 3], lambda v: v * v)
        [1, 4, 9]
    """
    mine = ctx.dist.shard(len(items))
    return ctx.dist.gather([fn(items[i]) for i in mine], mine)


def merge_read_logs(logs: Sequence[ImageReadLog]) -> ImageReadLog:
    """One :class:`ImageReadLog` for the reads of every rank (in rank order)."""
    out = ImageReadLog()
    for lg in logs:
        out.read += lg.read
        out.n_skipped += lg.n_skipped
        out.skipped.extend(lg.skipped[:max(0, 20 - len(out.skipped))])
        out.converted.update(lg.converted)
        out.resized += lg.resized
        out.sizes.update(lg.sizes)
        out.size = out.size or lg.size
        out.mode = lg.mode
    return out


def first_size(paths: Sequence[Path]) -> tuple[int, int] | None:
    """The size of the first readable image: what a single process resizes the others to."""
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as img:
                return img.size
        except Exception:  # unreadable: the single-process reader skips it too
            continue
    return None


def image_shard(subject: Any, ctx: Any, n: int, *, batch_size: int, seed: int,
                prompts: Sequence[str] | None = None, mode: str = "RGB", size: tuple[int, int] | None = None,
                log: ImageReadLog | None = None) -> Iterator[tuple[Any, list[int]]]:
    """This rank's share of the subject's first ``n`` images: ``(uint8 batch, image indices)``.

    A folder's images are its first ``n`` files (an unreadable one is skipped and recorded in
    ``log``; the common size is the first readable file's, as for one process); a text-to-image
    subject takes ``prompts[:n]``. The cut points fall on whole batches, so a callable's batch
    ``i`` is generated from ``seed + i`` on whichever rank makes it. A subject of another kind is
    run whole on every rank (same seed) and each rank keeps its own indices.
    """
    from audit.subjects.image import CallableImageGenerator, FolderImageGenerator, TorchImageGenerator

    bs = batch_size
    mine = ctx.dist.shard(n, block=bs)
    if isinstance(subject, FolderImageGenerator):
        paths = subject.paths[:n]
        mine = ctx.dist.shard(len(paths), block=bs)
        if not len(mine):
            return
        size = size or first_size(paths)
        for b, idx in iter_image_batches(paths[mine.start:mine.stop], batch_size=bs, mode=mode, size=size,
                                         log=log, with_index=True):
            yield b, [mine.start + int(i) for i in idx]
        return
    if not len(mine):
        return
    if isinstance(subject, CallableImageGenerator):
        first = mine.start // bs
        batches = (subject.generate(prompts=list(prompts[mine.start:mine.stop]), seed=seed + first, batch_size=bs)
                   if subject.text_to_image else subject.generate(len(mine), seed=seed + first, batch_size=bs))
        at = mine.start
        for b in batches:
            yield b, list(range(at, at + b.shape[0]))
            at += b.shape[0]
        return
    if isinstance(subject, TorchImageGenerator):
        at = mine.start
        for b in torch_latent_shard(subject, mine, seed, bs):
            yield b, list(range(at, at + b.shape[0]))
            at += b.shape[0]
        return
    takes_prompts = prompts is not None and "prompts" in getattr(subject, "capabilities", ())
    batches = (subject.generate(prompts=list(prompts[:n]), batch_size=bs, seed=seed) if takes_prompts
               else subject.generate(n, batch_size=bs, seed=seed))
    at = 0
    for b in batches:
        lo, hi = max(mine.start - at, 0), min(mine.stop - at, b.shape[0])
        if hi > lo:
            yield b[lo:hi], list(range(at + lo, at + hi))
        at += b.shape[0]
        if at >= mine.stop:
            break


def torch_latent_shard(subject: Any, mine: range, seed: int, bs: int) -> Iterator[Any]:
    """Images ``mine`` of a latent module: the latents a single process draws for them (the
    stream is drawn in the same chunks and cut), pushed through the module batch by batch."""
    import torch

    from audit.subjects.image import LATENT_CHUNK

    if not len(mine):
        return
    g = torch.Generator().manual_seed(seed)
    drawn = -(-mine.stop // LATENT_CHUNK) * LATENT_CHUNK
    z_all = torch.randn((drawn, *subject.latent_shape), generator=g)[mine.start:mine.stop]
    lo, hi = subject.output_range
    for start in range(0, len(mine), bs):
        z = z_all[start:start + bs].to(subject.device, non_blocking=True)
        with torch.inference_mode():
            x = subject.module(z)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != z.shape[0]:
            raise InputError(f"torch image generator {subject.identity.path!r} returned "
                             f"{getattr(x, 'shape', type(x).__name__)}; expected images [{z.shape[0]}, C, H, W]")
        yield ((x.float() - lo) / (hi - lo)).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
