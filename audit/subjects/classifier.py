"""Classifier subjects: a torch module, TorchScript, or transformers image classification.

=============  ============  ==================================================================
kind           source        ``path``
=============  ============  ==================================================================
classifier     python        ``"module:factory"`` (or ``file.py:factory``) returning an
                             ``nn.Module`` (weights from ``options.weights``, a safetensors
                             file) or a ready :class:`~audit.subjects.Classifier`
classifier     torchscript   a TorchScript file (``torch.jit.save``), usually ``.pt``
classifier     hf            a transformers image-classification folder (or hub id)
=============  ============  ==================================================================

The spec declares the input space in ``subject.options``: ``input_shape`` (e.g. ``[3, 32, 32]``,
without the batch), ``input_range`` (default ``[0, 1]``), ``mean`` / ``std`` (a number or one per
channel; the normalisation is applied inside the subject, so attacks and budgets live in the
declared input space), ``class_names``. For ``hf`` these default to the image processor's size,
mean and std and the config's labels. Any other option of a ``python`` source is passed to the
factory as a keyword argument.

Why TorchScript loads without ``allow_pickle``: ``torch.jit.load`` reads a TorchScript archive
(code as TorchScript source, constants and tensors through a restricted unpickler that builds only
tensors and TorchScript types); it never imports Python modules or calls arbitrary ``__reduce__``
hooks as ``torch.load`` of a pickled ``nn.Module`` does. A plain ``torch.save`` pickle is refused
with a message. What remains: the program itself runs TorchScript ops when called, so load models
whose origin you know.

Example (spec):
    subject:
      kind: classifier
      source: python
      path: audit.demo.digits:digits_classifier
      options: {weights: model.safetensors, input_shape: [1, 8, 8], input_range: [0, 1],
                class_names: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.errors import InputError, SpecError, model_not_found, require
from audit.findings import FileHash, SubjectIdentity
from audit.spec import SubjectSpec
from audit.subjects import Classifier

__all__ = ["InputSpaceModel", "TorchClassifier", "classifier_from_module"]

#: Options every classifier source reads; a python source passes the others to its factory.
_INPUT_OPTIONS = ("input_shape", "input_range", "mean", "std", "class_names")


class InputSpaceModel(nn.Module):
    """A classifier seen from its declared input space: normalisation inside, logits out.

    Inputs are float tensors ``[N, *input_shape]`` in ``input_range``; ``forward`` casts them to the
    model's dtype, applies ``(x - mean) / std`` (per channel, channel first), calls the model and
    returns float32 logits (``.logits`` of a transformers output, the first item of a tuple).
    Attack budgets are thus measured in the input space users reason about (e.g. 8/255 of a pixel).

    Example:
        >>> m = InputSpaceModel(nn.Linear(4, 3), input_range=(0.0, 1.0), mean=0.5, std=0.25)
        >>> m(torch.rand(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, model: Any, *, input_range: Sequence[float] = (0.0, 1.0),
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 input_ndim: int = 3):
        super().__init__()
        self.model = model
        self.input_range = (float(input_range[0]), float(input_range[1]))
        shape = (-1,) + (1,) * max(input_ndim - 1, 0)

        def stat(v: Any, default: float) -> torch.Tensor:
            t = torch.as_tensor(default if v is None else v, dtype=torch.float32)
            return t.reshape(shape) if t.ndim else t

        self.normalised = mean is not None or std is not None
        self.register_buffer("mean", stat(mean, 0.0), persistent=False)
        self.register_buffer("std", stat(std, 1.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalised:
            x = (x - self.mean) / self.std
        dtype = _param_dtype(self.model)
        if dtype is not None and x.dtype != dtype:
            x = x.to(dtype)
        out = self.model(x)
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()


class TorchClassifier(Classifier):
    """A :class:`~audit.subjects.Classifier` around an :class:`InputSpaceModel`.

    Example:
        >>> net = InputSpaceModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), input_ndim=3)
        >>> clf = TorchClassifier(net, input_shape=(1, 2, 2), num_classes=2,
        ...                       identity=SubjectIdentity(name="toy", kind="classifier", source="python"))
        >>> clf.logits(torch.zeros(5, 1, 2, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(self, model: InputSpaceModel, *, input_shape: Sequence[int], num_classes: int,
                 identity: SubjectIdentity, class_names: Sequence[str] | None = None, device: Any = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_range = model.input_range
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.identity = identity

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device))

    def close(self) -> None:
        self.model = None


def classifier_from_module(module: nn.Module, *, input_shape: Sequence[int], input_range: Sequence[float] = (0.0, 1.0),
                           mean: Any = None, std: Any = None, class_names: Sequence[str] | None = None,
                           name: str = "classifier", device: Any = "cpu", source: str = "python",
                           path: str = "", files: tuple[FileHash, ...] = ()) -> TorchClassifier:
    """Wrap a torch module (inputs in ``input_range``, logits out) as a classifier subject.

    The module is checked with one forward pass on zeros: it must return ``[N, C]`` logits with
    ``C == len(class_names)`` when names are given.

    Raises:
        InputError: the module fails on inputs of ``input_shape`` or returns another shape.

    Example:
        >>> clf = classifier_from_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), input_shape=(1, 8, 8))
        >>> clf.num_classes, clf.input_range
        (10, (0.0, 1.0))
    """
    shape = tuple(int(d) for d in input_shape)
    wrapped = InputSpaceModel(module, input_range=input_range, mean=mean, std=std, input_ndim=len(shape))
    wrapped = wrapped.to(device).eval()
    lo, hi = wrapped.input_range
    try:
        with torch.no_grad():
            out = wrapped(torch.full((2, *shape), (lo + hi) / 2, device=device))
    except Exception as exc:  # user code: any failure means the declared input does not fit it
        raise InputError(f"classifier {path or name!r} fails on inputs of the declared input_shape {list(shape)}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if out.ndim != 2 or out.shape[0] != 2:
        raise InputError(f"classifier {path or name!r} returned a tensor of shape {list(out.shape)} for 2 inputs; "
                         "expected logits of shape [N, num_classes]")
    n_classes = int(out.shape[1])
    if class_names is not None and len(class_names) != n_classes:
        raise SpecError(f"subject.options.class_names has {len(class_names)} names but the classifier "
                        f"{path or name!r} returns {n_classes} logits")
    identity = SubjectIdentity(
        name=name, kind="classifier", source=source, path=path, files=files,
        details={"input_shape": list(shape), "input_range": [lo, hi], "num_classes": n_classes,
                 "normalisation": {"mean": _plain(mean), "std": _plain(std)} if wrapped.normalised else None,
                 "n_parameters": sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else None,
                 "device": str(device)},
    )
    return TorchClassifier(wrapped, input_shape=shape, num_classes=n_classes, class_names=class_names,
                           identity=identity, device=device)


# -- options ---------------------------------------------------------------------------------------
def _input_options(spec: SubjectSpec, *, defaults: dict[str, Any] | None = None,
                   shape_required: bool = True) -> dict[str, Any]:
    """The validated input-space options of a classifier spec (with source defaults)."""
    o = {**(defaults or {}), **{k: v for k, v in spec.options.items() if k in _INPUT_OPTIONS}}

    def bad(key: str, expected: str) -> SpecError:
        from audit.yamlsafe import quote, yaml_word_hint

        hint = yaml_word_hint(o.get(key)) if key == "class_names" else ""
        return SpecError(f"subject.options.{key}: expected {expected}, got {quote(o.get(key))}{hint}")

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    shape = o.get("input_shape")
    if shape is None:
        if shape_required:
            raise SpecError("subject.options.input_shape: a classifier needs its input shape without the batch, "
                            "e.g. input_shape: [3, 32, 32]")
    elif not isinstance(shape, (list, tuple)) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise bad("input_shape", "a list of positive integers without the batch, e.g. [3, 32, 32]")
    rng = o.get("input_range", (0.0, 1.0))
    if not isinstance(rng, (list, tuple)) or len(rng) != 2 or not all(is_num(v) for v in rng) or not rng[0] < rng[1]:
        raise bad("input_range", "[low, high] with low < high, e.g. [0, 1] or [0, 255]")
    channels = shape[0] if shape else None
    for key in ("mean", "std"):
        v = o.get(key)
        if v is None:
            continue
        values = [v] if is_num(v) else v
        if not isinstance(values, (list, tuple)) or not values or not all(is_num(x) for x in values):
            raise bad(key, "a number or a list of numbers, one per channel")
        if len(values) not in (1, channels or len(values)):
            raise bad(key, f"1 or {channels} values (one per channel of input_shape {list(shape)})")
        if key == "std" and any(x <= 0 for x in values):
            raise bad(key, "positive numbers")
    names = o.get("class_names")
    if names is not None and (not isinstance(names, (list, tuple)) or not names
                              or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        raise bad("class_names", "a list of distinct class names (strings)")
    return {"input_shape": tuple(shape) if shape else None, "input_range": (float(rng[0]), float(rng[1])),
            "mean": o.get("mean"), "std": o.get("std"), "class_names": tuple(names) if names else None}


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


# -- classifier from python ------------------------------------------------------------------------
def _load_python_classifier(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Classifier:
    from audit.subjects.files import import_callable, load_module_weights

    factory, attr = import_callable(spec.path, base_dir)
    kwargs = {k: v for k, v in spec.options.items() if k not in (*_INPUT_OPTIONS, "weights")}
    try:
        result = factory(**kwargs)
    except Exception as exc:  # user code: any failure is a problem with the input
        given = f" with options {kwargs}" if kwargs else ""
        raise InputError(f"subject callable {spec.path!r} failed when called{given}: "
                         f"{type(exc).__name__}: {exc}") from exc
    name = spec.name or attr.rsplit(".", 1)[-1]
    if isinstance(result, Classifier):
        if not isinstance(getattr(result, "identity", None), SubjectIdentity):
            result.identity = SubjectIdentity(name=name, kind="classifier", source=spec.source, path=spec.path,
                                              details={"device": str(getattr(result, "device", device))})
        return result
    if not isinstance(result, nn.Module):
        raise InputError(f"subject callable {spec.path!r} returned a {type(result).__qualname__}; expected a torch "
                         "nn.Module mapping inputs to logits, or an audit.subjects.Classifier")
    opts = _input_options(spec)
    files: tuple[FileHash, ...] = ()
    weights = spec.options.get("weights")
    if weights is not None:
        files = load_module_weights(result, weights, base_dir=base_dir, kind="classifier")
    if spec.dtype not in ("auto", "float32"):
        result = result.to(getattr(torch, spec.dtype))
    return classifier_from_module(result, **opts, name=name, device=device, source=spec.source,
                                  path=spec.path, files=files)


# -- classifier from torchscript -------------------------------------------------------------------
def _load_torchscript_classifier(spec: SubjectSpec, base_dir: Path, device: torch.device,
                                 cache_dir: Path) -> Classifier:
    from audit.subjects.files import sha256_file

    unknown = sorted(set(spec.options) - set(_INPUT_OPTIONS))
    if unknown:
        raise SpecError(f"subject.options: source 'torchscript' takes {', '.join(_INPUT_OPTIONS)}; got {unknown}")
    opts = _input_options(spec)
    path = _resolve(spec.path, base_dir)
    if not path.is_file():
        raise model_not_found(path, given=spec.path, base_dir=base_dir)
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError / ValueError for anything that is not TorchScript
        raise InputError(
            f"{path}: not a TorchScript file ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}). "
            "Export the model with torch.jit.script(model).save(path) or torch.jit.trace; a torch.save pickle "
            "is not loaded because it can run arbitrary code (use source: python with safetensors weights)"
        ) from exc
    if spec.dtype not in ("auto", "float32"):
        module = module.to(getattr(torch, spec.dtype))
    files = (FileHash(path.name, sha256_file(path), path.stat().st_size),)
    return classifier_from_module(module, **opts, name=spec.name or path.stem, device=device,
                                  source=spec.source, path=spec.path, files=files)


# -- classifier from transformers ------------------------------------------------------------------
def _load_hf_classifier(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Classifier:
    from audit.subjects.files import check_local_weights, hash_files, hub_snapshot, local_path, weight_files

    require("transformers", extra="text", purpose="loading a transformers image classifier")
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    unknown = sorted(set(spec.options) - set(_INPUT_OPTIONS))
    if unknown:
        raise SpecError(f"subject.options: source 'hf' takes {', '.join(_INPUT_OPTIONS)}; got {unknown}")
    local = local_path(spec.path, base_dir)
    if local is not None:
        if local.is_file():
            raise InputError(f"{local}: expected a transformers model folder (config.json + weights), got a file")
        weights = check_local_weights(local, allow_pickle=spec.allow_pickle)
        folder, source = local, str(local)
    else:
        folder, _commit = hub_snapshot(spec)
        weights, source = None, spec.path
    dtype: Any = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
    try:
        model = AutoModelForImageClassification.from_pretrained(
            source, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code,
            use_safetensors=None if spec.allow_pickle else True)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the image classifier {spec.path!r} from {source}: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    try:
        processor = AutoImageProcessor.from_pretrained(source, revision=spec.revision)
    except (OSError, ValueError):
        processor = None  # no preprocessor_config.json: the spec must then give the input space
    defaults: dict[str, Any] = {}
    channels = int(getattr(model.config, "num_channels", 3))
    if processor is not None:
        size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        size = size or getattr(processor, "size", None) or {}
        h, w = size.get("height"), size.get("width")
        if h is None and "shortest_edge" in size:
            h = w = size["shortest_edge"]
        if h and w:
            defaults["input_shape"] = [channels, int(h), int(w)]
        if getattr(processor, "do_normalize", True):
            defaults["mean"] = _plain(getattr(processor, "image_mean", None))
            defaults["std"] = _plain(getattr(processor, "image_std", None))
    id2label = getattr(model.config, "id2label", None) or {}
    if id2label:
        defaults["class_names"] = [str(id2label[i]) for i in sorted(id2label)]
    opts = _input_options(spec, defaults=defaults)
    if weights is None:
        weights = weight_files(folder)
    name = spec.name or (local.resolve().name if local is not None else spec.path)
    return classifier_from_module(model, **opts, name=name, device=device, source=spec.source,
                                  path=spec.path, files=hash_files(folder, weights))


def _param_dtype(model: Any) -> torch.dtype | None:
    params = getattr(model, "parameters", None)
    if not callable(params):
        return None
    first = next(iter(params()), None)
    return first.dtype if first is not None and first.is_floating_point() else None


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (int, float)):
        return v
    return [float(x) for x in v]
