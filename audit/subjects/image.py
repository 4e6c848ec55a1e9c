"""Image-generator subjects: a folder of images, a Python callable, or a torch module z -> x.

=================  =======  ===================================================================
kind               source   ``path`` and ``options``
=================  =======  ===================================================================
image-generator    folder   a folder of images; an optional ``prompts.jsonl`` beside them
                            (``{"file": "0001.png", "prompt": "..."}`` per line, or one
                            ``{"prompt": ...}`` per image in sorted file order)
image-generator    python   ``module:function`` called as ``function(n, seed=...)`` or, with
                            ``options: {text_to_image: true}``, ``function(prompts, seed=...)``;
                            returns images (uint8/float tensor or array, or PIL images). Other
                            options are passed to every call as keyword arguments.
image-generator    torch    ``module:factory`` returning a ``torch.nn.Module`` that maps latents
                            to images. ``options``: ``latent_shape`` (required, e.g. ``[128]`` or
                            ``[4, 8, 8]``), ``weights`` (a ``.safetensors`` file),
                            ``output_range`` (default ``[-1, 1]``), ``factory_kwargs``.
=================  =======  ===================================================================

Example (spec):
    subject:
      kind: image-generator
      source: torch
      path: my_pkg.gan:Generator
      options: {latent_shape: [128], weights: g.safetensors, output_range: [-1, 1]}
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from audit.errors import InputError, SpecError
from audit.findings import FileHash, SubjectIdentity
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images, read_prompts, to_uint8_nchw
from audit.spec import SubjectSpec
from audit.subjects import ImageGenerator

#: A latent module's latents are drawn from its seeded stream in chunks of this many (sharding
#: over ranks cuts the same stream: :func:`probes.sharding.torch_latent_shard`).
LATENT_CHUNK = 256

__all__ = [
    "CallableImageGenerator",
    "FolderImageGenerator",
    "TorchImageGenerator",
    "load_folder_image_generator",
    "load_python_image_generator",
    "load_torch_image_generator",
]


class FolderImageGenerator(ImageGenerator):
    """A folder of already generated images (and, optionally, the prompts that made them).

    ``generate`` streams the folder's images in sorted order; unreadable files are skipped
    and counted in :attr:`read_log` (reset at each call).
    """

    def __init__(self, folder: Path, identity: SubjectIdentity, *, prompts: list[str] | None = None,
                 device: Any = "cpu"):
        self.folder = folder
        self.paths = list_images(folder)
        self.identity = identity
        self.device = device
        self.num_images = len(self.paths)
        self.prompts = prompts
        self.read_log = ImageReadLog()
        if prompts is not None:
            self.capabilities = frozenset({"generate_images", "prompts"})

    def generate(self, n: int | None = None, *, prompts: Sequence[str] | None = None, seed: int = 0,
                 batch_size: int = 64, mode: str = "RGB", size: tuple[int, int] | None = None) -> Iterator[Any]:
        """The first ``n`` readable images (all by default), as uint8 [B, C, H, W] batches.

        ``prompts`` must be the folder's own prompts (or a prefix of them): a folder cannot
        make new images.
        """
        if prompts is not None:
            own = self.prompts or []
            if list(prompts) != own[:len(prompts)]:
                raise InputError(f"{self.folder}: a folder of images cannot generate for new prompts; "
                                 "use the prompts of its prompts.jsonl")
            n = len(prompts)
        self.read_log = ImageReadLog()
        yield from iter_image_batches(self.paths, batch_size=batch_size, mode=mode, size=size,
                                      log=self.read_log, limit=n)

    def iter_with_index(self, *, batch_size: int = 64, mode: str = "RGB",
                        size: tuple[int, int] | None = None) -> Iterator[tuple[Any, list[int]]]:
        """Batches with the index of each image in :attr:`paths` (to pair images with prompts)."""
        self.read_log = ImageReadLog()
        yield from iter_image_batches(self.paths, batch_size=batch_size, mode=mode, size=size,
                                      log=self.read_log, with_index=True)


def _folder_prompts(folder: Path, paths: list[Path]) -> list[str] | None:
    pfile = folder / "prompts.jsonl"
    if not pfile.is_file():
        return None
    records = read_prompts(pfile)
    if all("file" in r for r in records):
        by_name = {r["file"]: r["prompt"] for r in records}
        out = []
        missing = []
        for p in paths:
            rel = p.relative_to(folder).as_posix()
            prompt = by_name.get(rel, by_name.get(p.name))
            if prompt is None:
                missing.append(rel)
            out.append(prompt)
        if missing:
            raise InputError(f"{pfile}: no prompt for {len(missing)} image(s) of the folder "
                             f"(e.g. {', '.join(missing[:3])}); give one line per image")
        return out
    if any("file" in r for r in records):
        raise InputError(f"{pfile}: either every line names its \"file\" or none does")
    if len(records) != len(paths):
        raise InputError(f"{pfile}: {len(records)} prompts for {len(paths)} images; without \"file\" keys the "
                         "prompts are matched to the images in sorted order, so the counts must be equal")
    return [r["prompt"] for r in records]


def load_folder_image_generator(spec: SubjectSpec, base_dir: Path, device: Any, cache_dir: Path) -> ImageGenerator:
    """Loader for ``(image-generator, folder)``."""
    if spec.options:
        raise SpecError(f"subject.options: source 'folder' takes no options, got {sorted(spec.options)}")
    p = Path(spec.path).expanduser()
    folder = p if p.is_absolute() else base_dir / p
    paths = list_images(folder)  # InputError on a missing or empty folder
    if len(paths) < 2:
        raise InputError(f"{folder}: only {len(paths)} image file; image fidelity needs at least 2 samples")
    prompts = _folder_prompts(folder, paths)
    identity = SubjectIdentity(
        name=spec.name or folder.resolve().name, kind=spec.kind, source=spec.source, path=spec.path,
        revision=spec.revision,
        details={"images": len(paths), "prompts": prompts is not None, "folder": str(folder.resolve())},
    )
    return FolderImageGenerator(folder, identity, prompts=prompts, device=device)


class CallableImageGenerator(ImageGenerator):
    """A Python function ``fn(n or prompts, seed=...) -> images``, called once per batch.

    Batch ``i`` is generated with ``seed + i``, so a run is reproducible and a batch does not
    depend on the batch size of the others.
    """

    def __init__(self, fn: Any, identity: SubjectIdentity, *, text_to_image: bool = False,
                 kwargs: dict[str, Any] | None = None, value_range: tuple[float, float] | None = None,
                 device: Any = "cpu"):
        self.fn = fn
        self.identity = identity
        self.text_to_image = text_to_image
        self.kwargs = dict(kwargs or {})
        self.value_range = value_range
        self.device = device
        if text_to_image:
            self.capabilities = frozenset({"generate_images", "prompts"})

    def generate(self, n: int | None = None, *, prompts: Sequence[str] | None = None, seed: int = 0,
                 batch_size: int = 64) -> Iterator[Any]:
        if self.text_to_image:
            if prompts is None:
                raise InputError(f"{self.identity.path}: a text-to-image generator needs prompts")
            work: list[Any] = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
        else:
            if prompts is not None:
                raise InputError(f"{self.identity.path}: this generator takes no prompts; set "
                                 "`options: {text_to_image: true}` if it does")
            if n is None or n < 1:
                raise InputError(f"{self.identity.path}: how many images to generate was not given")
            work = [min(batch_size, n - i) for i in range(0, n, batch_size)]
        for i, arg in enumerate(work):
            try:
                out = self.fn(arg, seed=seed + i, **self.kwargs)
            except Exception as exc:  # user code: a failure is a problem with the input
                raise InputError(f"image generator {self.identity.path!r} failed on batch {i}: "
                                 f"{type(exc).__name__}: {exc}") from exc
            images = to_uint8_nchw(out, value_range=self.value_range)
            want = len(arg) if isinstance(arg, list) else arg
            if images.shape[0] != want:
                raise InputError(f"image generator {self.identity.path!r} returned {images.shape[0]} images "
                                 f"for a batch of {want}")
            yield images


def load_python_image_generator(spec: SubjectSpec, base_dir: Path, device: Any, cache_dir: Path) -> ImageGenerator:
    """Loader for ``(image-generator, python)``."""
    from audit.subjects.files import import_callable

    options = dict(spec.options)
    text_to_image = options.pop("text_to_image", False)
    value_range = options.pop("output_range", None)
    if not isinstance(text_to_image, bool):
        raise SpecError(f"subject.options.text_to_image: expected true or false, got {text_to_image!r}")
    fn, attr = import_callable(spec.path, base_dir)
    identity = SubjectIdentity(name=spec.name or attr.rsplit(".", 1)[-1], kind=spec.kind, source=spec.source,
                               path=spec.path, revision=spec.revision,
                               details={"text_to_image": text_to_image, "device": str(device)})
    return CallableImageGenerator(fn, identity, text_to_image=text_to_image, kwargs=options,
                                  value_range=_range(value_range, "output_range") if value_range else None,
                                  device=device)


class TorchImageGenerator(ImageGenerator):
    """A torch module mapping standard-normal latents [B, *latent_shape] to images in
    ``output_range``; latents are drawn on the CPU from the seed (the same images on any device)."""

    def __init__(self, module: Any, identity: SubjectIdentity, *, latent_shape: tuple[int, ...],
                 output_range: tuple[float, float] = (-1.0, 1.0), device: Any = "cpu"):
        self.module = module
        self.identity = identity
        self.latent_shape = tuple(latent_shape)
        self.output_range = output_range
        self.device = device

    def generate(self, n: int | None = None, *, prompts: Sequence[str] | None = None, seed: int = 0,
                 batch_size: int = 64) -> Iterator[Any]:
        import torch

        if prompts is not None:
            raise InputError(f"{self.identity.path}: a latent-to-image module takes no prompts")
        if n is None or n < 1:
            raise InputError(f"{self.identity.path}: how many images to generate was not given")
        g = torch.Generator().manual_seed(seed)
        lo, hi = self.output_range
        # Latents are drawn in fixed chunks, so the images do not depend on the batch size.
        buffer = torch.empty((0, *self.latent_shape))
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            while buffer.shape[0] < b:
                buffer = torch.cat([buffer, torch.randn((LATENT_CHUNK, *self.latent_shape), generator=g)])
            # Drawn in float32 whatever the module's dtype (a `dtype: bfloat16` variant sees the same latents).
            z, buffer = buffer[:b].to(self.device, dtype=self._dtype(), non_blocking=True), buffer[b:]
            with torch.inference_mode():
                x = self.module(z)
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != b:
                raise InputError(f"torch image generator {self.identity.path!r} returned "
                                 f"{getattr(x, 'shape', type(x).__name__)}; expected images [{b}, C, H, W]")
            # Stays on the device: the feature extractor reads it there.
            yield ((x.float() - lo) / (hi - lo)).clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    def _dtype(self) -> Any:
        import torch

        first = next(iter(self.module.parameters()), None) if hasattr(self.module, "parameters") else None
        return first.dtype if first is not None and first.is_floating_point() else torch.float32

    def close(self) -> None:
        self.module = None


def load_torch_image_generator(spec: SubjectSpec, base_dir: Path, device: Any, cache_dir: Path) -> ImageGenerator:
    """Loader for ``(image-generator, torch)``."""
    import torch

    from audit.subjects.files import import_callable, load_module_weights

    options = dict(spec.options)
    known = {"latent_shape", "weights", "output_range", "factory_kwargs"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpecError(f"subject.options: unknown option(s) {unknown} for source 'torch'; "
                        f"expected {sorted(known)}")
    shape = options.get("latent_shape")
    if isinstance(shape, int):
        shape = [shape]
    if not isinstance(shape, (list, tuple)) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise SpecError("subject.options.latent_shape: expected a list of positive integers such as [128] or "
                        f"[4, 8, 8] (the latent of one image), got {shape!r}")
    out_range = _range(options.get("output_range", [-1.0, 1.0]), "output_range")
    fkw = options.get("factory_kwargs") or {}
    if not isinstance(fkw, dict):
        raise SpecError(f"subject.options.factory_kwargs: expected a mapping, got {fkw!r}")
    factory, attr = import_callable(spec.path, base_dir)
    try:
        module = factory(**fkw)
    except Exception as exc:
        raise InputError(f"subject factory {spec.path!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"subject factory {spec.path!r} returned a {type(module).__name__}; "
                         "expected a torch.nn.Module mapping latents to images")
    files: tuple[FileHash, ...] = ()
    weights = options.get("weights")
    if weights is not None:
        files = load_module_weights(module, weights, base_dir=base_dir, kind="torch image generator")
    if spec.dtype not in ("auto", "float32"):
        module = module.to(getattr(torch, spec.dtype))
    module = module.to(device).eval()
    n_params = sum(p.numel() for p in module.parameters())
    identity = SubjectIdentity(
        name=spec.name or attr.rsplit(".", 1)[-1], kind=spec.kind, source=spec.source, path=spec.path,
        revision=spec.revision, files=files,
        details={"latent_shape": list(shape), "output_range": list(out_range), "n_parameters": n_params,
                 "dtype": spec.dtype, "device": str(device)},
    )
    return TorchImageGenerator(module, identity, latent_shape=tuple(shape), output_range=out_range, device=device)


def _range(value: Any, name: str) -> tuple[float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value[0] < value[1])
    if not ok:
        raise SpecError(f"subject.options.{name}: expected [low, high] with low < high, e.g. [-1, 1], got {value!r}")
    return float(value[0]), float(value[1])
