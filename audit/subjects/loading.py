"""Load the model under audit from its :class:`~audit.spec.SubjectSpec`: the dispatch.

One entry point, :func:`load_subject`, dispatches on ``(kind, source)`` through the table
``_LOADERS`` at the end of this module; the loaders live one module per kind:

===============  ===============================  =====================================
kind             sources                          module
===============  ===============================  =====================================
text-generator   hf, gguf, python                 :mod:`audit.subjects.text`
text-generator   openai-compatible                :mod:`audit.subjects.remote`
text-generator   generations                      :mod:`audit.subjects.generations`
image-generator  folder, python, torch            :mod:`audit.subjects.image`
classifier       python, torchscript, hf          :mod:`audit.subjects.classifier`
encoder          hf, open_clip, python            :mod:`audit.subjects.encoder`
===============  ===============================  =====================================

Their shared file helpers (hashes, weight checks, hub snapshots, users' callables) are in
:mod:`audit.subjects.files`.

Untrusted files load safely: safetensors by default; pickled weights (``*.bin``, ``*.pt``) only
with ``allow_pickle: true`` and remote code only with ``trust_remote_code: true`` in the spec.
Every problem with the input (missing path, corrupt file, hub id not reachable) is an
:class:`~audit.errors.InputError` whose message names the file; an unsupported kind or source is a
:class:`~audit.errors.SpecError`.

Example:
    >>> from audit.spec import SubjectSpec
    >>> spec = SubjectSpec(kind="text-generator", source="python", path="tests.fakes:make_text_generator")
    >>> lm = load_subject(spec, device="cpu", cache_dir=Path(".cache"))   # doctest: +SKIP
    >>> lm.identity.name                                                  # doctest: +SKIP
    'tiny-llama'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from audit.errors import SpecError
from audit.spec import SubjectSpec
from audit.subjects.base import Subject
from audit.subjects.files import WEIGHT_SUFFIXES, sha256_file
from audit.subjects.text import GGUF_CACHE_MARKER, convert_gguf

if TYPE_CHECKING:
    import torch

__all__ = ["GGUF_CACHE_MARKER", "WEIGHT_SUFFIXES", "convert_gguf", "load_subject", "resolve_device", "sha256_file"]

Loader = Callable[[SubjectSpec, Path, "torch.device", Path], Subject]


def resolve_device(name: str) -> torch.device:
    """The torch device a spec names: ``auto`` is CUDA when present, else the CPU.

    Raises:
        SpecError: the name is not a torch device, or names one this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    text = (name or "auto").strip()
    if text.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise SpecError(f"device {name!r} is not a valid device; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"device {name!r} was asked for, but CUDA is not available here; use 'auto' or 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SpecError(f"device {name!r} does not exist: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SpecError(f"device {name!r} was asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return device


def load_subject(spec: SubjectSpec, *, base_dir: Path = Path("."), device: str = "auto", cache_dir: Path) -> Subject:
    """Load the model a :class:`SubjectSpec` describes, on its device, in eval mode.

    Args:
        spec: what to load. ``spec.device``, when set, overrides ``device``.
        base_dir: folder that relative paths in ``spec.path`` are resolved against
            (the spec file's folder).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        cache_dir: where converted models are kept between runs (GGUF -> safetensors).

    Returns:
        A subject adapter (e.g. :class:`~audit.subjects.HFTextGenerator`) whose ``identity``
        records the name, source, revision and SHA-256 of each weight file.

    Raises:
        SpecError: the kind/source pair is not supported, or the device is invalid.
        InputError: the model cannot be found or read (the message names the file).
        MissingDependencyError: an optional package the source needs is not installed.
    """
    loader = _LOADERS.get((spec.kind, spec.source))
    if loader is None:
        supported = ", ".join(
            f"{kind} from {', '.join(src for k, src in _LOADERS if k == kind)}"
            for kind in dict.fromkeys(k for k, _ in _LOADERS)
        )
        raise SpecError(
            f"subject kind '{spec.kind}' with source '{spec.source}' is not supported yet; supported: {supported}"
        )
    if spec.device is not None:
        try:
            torch_device = resolve_device(spec.device)
        except SpecError as exc:
            raise SpecError(f"subject.device: {exc}") from None
    else:
        torch_device = resolve_device(device)
    if spec.quantization is not None:  # refused before the (slow) load when the device or source cannot take it
        from audit.subjects.quantize import check_quantization

        check_quantization(spec.quantization, kind=spec.kind, source=spec.source, device=torch_device)
    if isinstance(loader, str):  # lazy "module:function": other subject kinds live in their own modules
        module_name, _, attr = loader.partition(":")
        loader = getattr(importlib.import_module(module_name), attr)
    subject = loader(spec, Path(base_dir), torch_device, Path(cache_dir))
    if getattr(spec, "adapter", None) is not None:  # a peft adapter on top (audit.subjects.adapters)
        from audit.subjects.adapters import apply_adapter

        subject = apply_adapter(subject, spec, Path(base_dir))
    if spec.quantization is not None:  # after the adapter: QLoRA's base is quantized at load, int8 here
        from audit.subjects.quantize import apply_quantization

        subject = apply_quantization(subject, spec)
    return subject


# (kind, source) -> loader, or a lazy "module:function" naming one. Each subject kind's
# loaders may live in their own module; add one line here per (kind, source).
_LOADERS: dict[tuple[str, str], Loader | str] = {
    ("text-generator", "hf"): "audit.subjects.text:load_hf_text_generator",
    ("text-generator", "gguf"): "audit.subjects.text:load_gguf_text_generator",
    ("text-generator", "python"): "audit.subjects.text:load_python_text_generator",
    ("text-generator", "openai-compatible"): "audit.subjects.remote:load_openai_compatible",
    ("text-generator", "generations"): "audit.subjects.generations:load_generations",
    ("classifier", "python"): "audit.subjects.classifier:_load_python_classifier",
    ("classifier", "torchscript"): "audit.subjects.classifier:_load_torchscript_classifier",
    ("classifier", "hf"): "audit.subjects.classifier:_load_hf_classifier",
    ("image-generator", "folder"): "audit.subjects.image:load_folder_image_generator",
    ("image-generator", "python"): "audit.subjects.image:load_python_image_generator",
    ("image-generator", "torch"): "audit.subjects.image:load_torch_image_generator",
    ("image-generator", "diffusers"): "audit.subjects.diffusion:load_diffusers_image_generator",
    ("encoder", "hf"): "audit.subjects.encoder:load_hf_encoder",
    ("encoder", "open_clip"): "audit.subjects.encoder:load_open_clip_encoder",
    ("encoder", "python"): "audit.subjects.encoder:load_python_encoder",
}
