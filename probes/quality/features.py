"""Feature extractors for image fidelity: FID Inception, CLIP image features, or a user's module.

Every extractor takes uint8 images [N, C, H, W] on its device and returns float32 features
[N, D] and, when it has a classifier head, logits [N, K] (Inception Score needs them). Its
:meth:`FeatureExtractor.describe` records what makes features comparable: the name, the
SHA-256 of the weights, the input size, the resize method and whether it antialiases.
A statistics file built with one description is refused by another.

* ``inception``: the standard FID network (TensorFlow InceptionV3 weights of 2015-12-05, as
  converted by torch-fidelity), pool3 features (2048-d) and the unbiased logits (1008
  classes) for IS; images resized to 299x299 with TensorFlow-1 compatible bilinear
  interpolation (no antialias), as the original FID code. Weights come from
  ``inception_weights: PATH`` (a ``.pth`` or ``.safetensors`` state dict), else torch's hub
  cache, else the usual download (skipped when ``HF_HUB_OFFLINE``/``GENAI_AUDIT_OFFLINE``
  is set).
* ``clip``: open_clip image embeddings (not normalised), images resized (bicubic,
  antialiased) and centre-cropped to the model's size and normalised with its mean/std.
* ``module:factory``: a user's ``torch.nn.Module``; see :func:`module_extractor`.

Example:
    >>> fx = build_extractor("audit.demo.digits:digits_classifier", {"channels": 1}, device="cpu")  # doctest: +SKIP
    >>> feats, logits = fx(images)                                                                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.errors import InputError, SpecError, require

__all__ = [
    "FeatureExtractor",
    "INCEPTION_URL",
    "build_extractor",
    "clip_extractor",
    "inception_extractor",
    "load_open_clip",
    "module_extractor",
    "state_dict_sha256",
]

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
_INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]


@dataclass
class FeatureExtractor:
    """A feature network with its preprocessing, on a device.

    Attributes:
        name: what it is (``inception-v3-fid``, ``clip:ViT-B-32``, ``module:pkg.mod:factory``).
        weights_sha256: SHA-256 of its weights (file, or of the state dict's tensors).
        input_size: ``(H, W)`` the images are resized to, or None (fed at their own size).
        resize: how images are resized (e.g. ``bilinear-tf1``, ``bicubic``).
        antialias: whether the resize antialiases.
        channels: 1 (grey) or 3 (RGB) input channels.
        dim: feature dimension.
        has_logits: whether :meth:`__call__` returns class logits.
    """

    name: str
    weights_sha256: str
    forward: Any  # (uint8 NCHW on device) -> (features, logits | None)
    device: torch.device
    input_size: tuple[int, int] | None
    resize: str
    antialias: bool
    channels: int = 3
    dim: int = 0
    has_logits: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.to(self.device, non_blocking=True)
        if x.shape[1] != self.channels:
            x = x.expand(-1, 3, -1, -1) if self.channels == 3 else _to_grey(x)
        feats, logits = self.forward(x)
        return feats.float(), (logits.float() if logits is not None else None)

    def describe(self) -> dict[str, Any]:
        """What must match for two sets of features to be comparable (stored in stats files)."""
        return {
            "name": self.name, "weights_sha256": self.weights_sha256,
            "input_size": list(self.input_size) if self.input_size else None,
            "resize": self.resize, "antialias": self.antialias, "channels": self.channels, **self.extra,
        }


def _to_grey(x: torch.Tensor) -> torch.Tensor:
    # ITU-R 601-2 luma, as Pillow's convert("L").
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, shapes, dtypes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or a torch file loaded with ``weights_only=True``."""
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from audit.subjects.files import check_safetensors
        from safetensors.torch import load_file

        check_safetensors(path)
        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, or a corrupt file
        raise InputError(f"{path}: cannot be loaded as a plain state dict (torch.load weights_only=True): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a state dict of tensors")
    return dict(state)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "GENAI_AUDIT_OFFLINE"))


_CHOICES = ("set `inception_weights: PATH` to a local copy of the FID Inception weights "
            f"({_INCEPTION_FILE}, from {INCEPTION_URL}), or use `feature: clip` (open_clip weights) or "
            "`feature: module:factory` (your own feature network)")


def _inception_state(weights: str | os.PathLike[str] | None) -> tuple[dict[str, torch.Tensor], str]:
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise InputError(f"inception_weights: file not found: {p}")
        return _load_state(p), str(p)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / _INCEPTION_FILE
    if cached.is_file():
        return _load_state(cached), str(cached)
    if _offline():
        raise InputError(f"the FID Inception weights are not cached ({cached}) and downloads are off "
                         f"(offline mode): {_CHOICES}")
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
    except Exception as exc:  # no network, proxy, HTTP error
        cached.unlink(missing_ok=True)
        raise InputError(f"cannot download the FID Inception weights ({type(exc).__name__}: {exc}); "
                         f"{_CHOICES}") from None
    return _load_state(cached), str(cached)


def inception_extractor(weights: str | os.PathLike[str] | None = None, *, device: Any = "cpu") -> FeatureExtractor:
    """The standard FID InceptionV3 (torch-fidelity's port): pool3 features and unbiased logits.

    Raises:
        InputError: no weights given, none cached and the download fails (the message names
            the choices: ``inception_weights: PATH``, ``feature: clip``, ``feature: module:factory``).
    """
    require("torch_fidelity", extra="image", purpose="the FID Inception feature extractor")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state, source = _inception_state(weights)
    sha = state_dict_sha256(state)

    # torch-fidelity's constructor reads a weights path with a full unpickler (code can run);
    # hand it the state dict we already loaded safely, through its download hook.
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *a, **k: state
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    except RuntimeError as exc:
        raise InputError(f"inception_weights {source}: not the FID InceptionV3 weights: "
                         f"{str(exc).splitlines()[0]}") from None
    finally:
        tfi.load_state_dict_from_url = original
    device = torch.device(device)
    net = net.to(device).eval()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = net(x)
        return feats, logits

    return FeatureExtractor(
        name="inception-v3-fid", weights_sha256=sha, forward=forward, device=device, input_size=(299, 299),
        resize="bilinear-tf1", antialias=False, channels=3, dim=2048, has_logits=True,
        extra={"layer": "pool3", "logits": "logits_unbiased (1008)"},
    )


def _import_factory(path: str) -> tuple[Any, str]:
    from audit.subjects.files import import_callable

    try:
        return import_callable(path, Path("."))
    except SpecError as exc:
        raise SpecError(f"feature {path!r}: {exc}") from None


def load_open_clip(model: str = "ViT-B-32", pretrained: str | None = None, *,
                   device: Any = "cpu") -> tuple[Any, Any, str]:
    """An open_clip model (eval, on ``device``), its tokenizer, and the SHA-256 of its weights.

    ``model`` is an open_clip architecture name (``ViT-B-32``) with ``pretrained`` a tag
    (``laion2b_s34b_b79k``, from the cache or the hub) or a local weights file; or
    ``module:factory`` returning an open_clip-compatible model (``encode_image``,
    ``encode_text``, ``visual.image_size``) or a ``(model, tokenizer)`` pair.

    Raises:
        InputError: the weights are neither local nor reachable (offline), naming what to set.
    """
    if ":" in model:
        factory, _ = _import_factory(model)
        out = factory()
        net, tok = out if isinstance(out, tuple) else (out, None)
        if tok is None:
            open_clip = require("open_clip", extra="image", purpose="CLIP features")
            tok = open_clip.get_tokenizer("ViT-B-32")
    else:
        open_clip = require("open_clip", extra="image", purpose="CLIP features")
        if pretrained is None:
            raise InputError(f"CLIP model {model!r} needs weights: set `clip_pretrained` to a local weights file "
                             "or an open_clip pretrained tag (e.g. laion2b_s34b_b79k, downloaded once into the "
                             "cache), or `clip_model: module:factory` for your own model")
        try:
            net = open_clip.create_model(model, pretrained=pretrained, device="cpu")
        except Exception as exc:  # offline hub, unknown tag, corrupt file
            raise InputError(f"cannot load the CLIP model {model!r} with pretrained={pretrained!r}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Offline, "
                             "set `clip_pretrained` to a local weights file, or use `feature: inception` with "
                             "`inception_weights: PATH`, or `feature: module:factory`") from None
        tok = open_clip.get_tokenizer(model)
    if not isinstance(net, nn.Module) or not hasattr(net, "encode_image"):
        raise InputError(f"CLIP model {model!r}: expected an open_clip-compatible module with encode_image")
    sha = state_dict_sha256(net.state_dict())
    return net.to(device).eval(), tok, sha


def clip_preprocess(net: Any) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
    """The model's input size and normalisation mean/std."""
    size = getattr(getattr(net, "visual", None), "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    cfg = getattr(getattr(net, "visual", None), "preprocess_cfg", None) or {}
    mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    return size, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def clip_image_input(x: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images -> CLIP input: resize the short side (bicubic, antialiased), centre-crop, normalise."""
    import torch.nn.functional as F

    x = x.float() / 255.0
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) != (th, tw):
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
    return (x - mean.to(x.device)) / std.to(x.device)


def clip_extractor(model: str = "ViT-B-32", pretrained: str | None = None, *, device: Any = "cpu") -> FeatureExtractor:
    """CLIP image embeddings (not normalised) through open_clip; see :func:`load_open_clip`."""
    device = torch.device(device)
    net, _, sha = load_open_clip(model, pretrained, device=device)
    size, mean, std = clip_preprocess(net)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return net.encode_image(clip_image_input(x, size, mean, std)), None

    dim = int(forward(torch.zeros(1, 3, *size, dtype=torch.uint8, device=device))[0].shape[1])
    return FeatureExtractor(name=f"clip:{model}" + (f":{Path(pretrained).name}" if pretrained else ""),
                            weights_sha256=sha, forward=forward, device=device, input_size=size,
                            resize="bicubic-shortside-centercrop", antialias=True, channels=3, dim=dim)


_MODULE_OPTIONS = {"weights", "factory_kwargs", "input_size", "channels", "features", "logits", "antialias",
                   "mean", "std", "input_range"}


def module_extractor(path: str, options: Mapping[str, Any] | None = None, *, device: Any = "cpu",
                     base_dir: Path = Path(".")) -> FeatureExtractor:
    """A user's feature network: ``module:factory`` returns a ``torch.nn.Module``.

    Options (``feature_options`` in the probe):
        weights: a ``.safetensors`` (or plain ``.pt`` state dict) file loaded into the module.
        factory_kwargs: keyword arguments for the factory.
        input_size: ``[H, W]`` to resize to (bilinear; ``antialias`` default true), or none.
        channels: 1 or 3 (default 3): grey images are repeated, RGB turned to luma.
        input_range: ``[low, high]`` the uint8 images are mapped to (default ``[0, 1]``),
            then ``mean``/``std`` (per channel) normalise when given.
        features: the method giving features (default ``features`` when the module has one,
            else ``forward``).
        logits: the method giving class logits (default ``forward`` when ``features`` is a
            separate method; ``false`` for none).
    """
    import torch.nn.functional as F

    opts = dict(options or {})
    unknown = sorted(set(opts) - _MODULE_OPTIONS)
    if unknown:
        raise SpecError(f"feature_options: unknown option(s) {unknown} for a module feature extractor; "
                        f"expected {sorted(_MODULE_OPTIONS)}")
    factory, attr = _import_factory(path)
    try:
        net = factory(**(opts.get("factory_kwargs") or {}))
    except Exception as exc:
        raise InputError(f"feature factory {path!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise InputError(f"feature factory {path!r} returned a {type(net).__name__}; expected a torch.nn.Module")
    if opts.get("weights"):
        wp = Path(str(opts["weights"])).expanduser()
        state = _load_state(wp if wp.is_absolute() else base_dir / wp)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(f"feature_options.weights {wp}: does not fit {path!r}: "
                             f"{str(exc).splitlines()[0]}") from None
    sha = state_dict_sha256(net.state_dict())
    device = torch.device(device)
    net = net.to(device).eval()
    channels = int(opts.get("channels", 3))
    if channels not in (1, 3):
        raise SpecError(f"feature_options.channels: expected 1 or 3, got {channels!r}")
    size = opts.get("input_size")
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    antialias = bool(opts.get("antialias", True))
    lo, hi = (float(v) for v in opts.get("input_range", (0.0, 1.0)))
    mean = torch.tensor(opts["mean"], dtype=torch.float32).view(1, -1, 1, 1).to(device) if "mean" in opts else None
    std = torch.tensor(opts["std"], dtype=torch.float32).view(1, -1, 1, 1).to(device) if "std" in opts else None
    feat_name = opts.get("features") or ("features" if callable(getattr(net, "features", None)) else "forward")
    default_logits = "forward" if feat_name != "forward" else False
    logit_name = opts.get("logits", default_logits)
    for what, name in (("features", feat_name), ("logits", logit_name)):
        if name and not callable(getattr(net, name, None)):
            raise SpecError(f"feature_options.{what}: the module from {path!r} has no method {name!r}")
    feat_fn = getattr(net, feat_name)
    logit_fn = getattr(net, logit_name) if logit_name else None

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if size is not None and tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
        x = x * ((hi - lo) / 255.0) + lo
        if mean is not None:
            x = x - mean
        if std is not None:
            x = x / std
        return x

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        xin = prep(x)
        feats = feat_fn(xin)
        logits = logit_fn(xin) if logit_fn is not None else None
        return feats.flatten(1), logits

    return FeatureExtractor(
        name=f"module:{path}", weights_sha256=sha, forward=forward, device=device, input_size=size,
        resize="bilinear" if size else "none", antialias=antialias if size else False, channels=channels,
        dim=0, has_logits=logit_fn is not None,
        extra={"input_range": [lo, hi], "features_method": feat_name, "logits_method": logit_name or None},
    )


def build_extractor(feature: str, options: Mapping[str, Any] | None = None, *, device: Any = "cpu",
                    inception_weights: str | None = None, clip_model: str = "ViT-B-32",
                    clip_pretrained: str | None = None, base_dir: Path = Path(".")) -> FeatureExtractor:
    """The extractor a probe's ``feature`` parameter names: ``inception``, ``clip`` or ``module:factory``."""
    if feature == "inception":
        return inception_extractor(inception_weights, device=device)
    if feature == "clip":
        return clip_extractor(clip_model, clip_pretrained, device=device)
    if ":" in feature:
        return module_extractor(feature, options, device=device, base_dir=base_dir)
    raise SpecError(f"feature: expected 'inception', 'clip' or 'module:factory', got {feature!r}")
