"""Image-generator subjects from diffusers pipelines (``source: diffusers``).

=================  =========  =================================================================
kind               source     ``path`` and ``options``
=================  =========  =================================================================
image-generator    diffusers  a local pipeline folder (``pipeline.save_pretrained``; it holds
                              ``model_index.json``) or a hub id (needs the hub, or the local
                              hub cache when offline). Unconditional pipelines (DDPMPipeline,
                              DDIMPipeline) and text-to-image ones (StableDiffusionPipeline
                              family). ``options``: ``num_inference_steps``,
                              ``guidance_scale``, ``negative_prompt``, ``height``/``width``
                              (text-to-image only), ``eta`` (DDIM), ``scheduler`` (a diffusers
                              scheduler class, made from the pipeline's scheduler config),
                              ``dtype`` (float32, float16, bfloat16, auto: float16 on CUDA),
                              ``batch_size`` (most images per pipeline call), ``prompts``
                              (a .jsonl/.txt file the subject carries as its own prompts).
=================  =========  =================================================================

Seeds are per image: image ``i`` of a call with ``seed`` is drawn from a CPU
``torch.Generator`` seeded with :func:`image_seed` ``(seed, i)`` (for text-to-image, ``i``
is the prompt's position), so any image can be regenerated alone and the images do not
depend on the batch size or the device. On CUDA out-of-memory the subject turns on attention
(and VAE) slicing, then halves the batch size, down to one image.

Only components from ``diffusers`` and ``transformers`` are loaded (``model_index.json`` is
checked first; another library needs ``trust_remote_code: true``), and weights from
safetensors files unless ``allow_pickle: true``.

Example (spec):
    subject:
      kind: image-generator
      source: diffusers
      path: pipelines/ddpm-digits
      options: {num_inference_steps: 20, scheduler: DDIMScheduler, batch_size: 64}
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from audit.errors import InputError, SpecError, require
from audit.findings import SubjectIdentity
from audit.spec import SubjectSpec
from audit.subjects import ImageGenerator

__all__ = ["DiffusersImageGenerator", "image_seed", "load_diffusers_image_generator"]

_OPTIONS = ("num_inference_steps", "guidance_scale", "negative_prompt", "height", "width", "eta", "scheduler",
            "dtype", "batch_size", "prompts")
_T2I_ONLY = ("guidance_scale", "negative_prompt", "height", "width")
_SAFE_LIBRARIES = ("diffusers", "transformers")


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` in a call made with ``seed`` (a 63-bit hash of both).

    Example:
        >>> image_seed(0, 3) == image_seed(0, 3) != image_seed(1, 3)
        True
    """
    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class DiffusersImageGenerator(ImageGenerator):
    """A diffusers pipeline as an :class:`~audit.subjects.ImageGenerator`.

    Capabilities: ``generate_images``; ``prompts`` for text-to-image pipelines;
    ``denoiser`` for unconditional pixel-space pipelines with a UNet (what
    ``quality.diffusion_likelihood`` needs: :meth:`predict` and :attr:`training_scheduler`).
    """

    def __init__(self, pipe: Any, identity: SubjectIdentity, *, task: str, call_kwargs: dict[str, Any],
                 max_batch: int, device: Any, training_scheduler: Any, prompts: list[str] | None = None):
        self.pipe = pipe
        self.identity = identity
        self.task = task
        self.call_kwargs = dict(call_kwargs)
        self.max_batch = max_batch
        self.device = device
        #: The scheduler the pipeline was saved with: its betas define the forward process.
        self.training_scheduler = training_scheduler
        self.prompts = prompts
        #: Whether out-of-memory has switched on attention/VAE slicing.
        self.slicing = False
        caps = {"generate_images"}
        if task == "text-to-image":
            caps.add("prompts")
        elif getattr(pipe, "unet", None) is not None:
            caps.add("denoiser")
        self.capabilities = frozenset(caps)

    # -- generation ------------------------------------------------------------------------------
    def generate(self, n: int | None = None, *, prompts: Sequence[str] | None = None, seed: int = 0,
                 batch_size: int = 64) -> Iterator[Any]:
        """uint8 [B, C, H, W] batches on the subject's device: ``n`` images, or one per prompt."""
        where = self.identity.path
        if self.task == "text-to-image":
            if prompts is None:
                raise InputError(f"{where}: a text-to-image pipeline needs prompts: give the data input "
                                 "`prompts` (a .jsonl or .txt file) or `subject.options.prompts`")
            prompts = [str(p) for p in prompts]
            total = len(prompts)
        else:
            if prompts is not None:
                raise InputError(f"{where}: an unconditional pipeline ({type(self.pipe).__name__}) takes no prompts")
            if n is None or n < 1:
                raise InputError(f"{where}: how many images to generate was not given")
            total = int(n)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
        step = min(batch_size, self.max_batch)
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            parts = []
            at = start
            while at < stop:
                b = min(step, stop - at)
                try:
                    parts.append(self._call(range(at, at + b), prompts, seed))
                except Exception as exc:
                    if not _is_oom(exc):
                        raise
                    step = self._back_off(b, exc)
                    continue
                at += b
            yield parts[0] if len(parts) == 1 else self._cat(parts)

    def regenerate(self, index: int, *, seed: int = 0, prompt: str | None = None) -> Any:
        """Image ``index`` of a call made with ``seed``, made alone (text-to-image: give its
        prompt): uint8 [1, C, H, W], the same as in the call, whatever its batch size."""
        prompts: Any = None
        if self.task == "text-to-image":
            if prompt is None:
                raise InputError(f"{self.identity.path}: regenerating an image of a text-to-image pipeline needs its prompt")
            prompts = {int(index): str(prompt)}
        return self._call(range(int(index), int(index) + 1), prompts, seed)

    def _back_off(self, b: int, exc: BaseException) -> int:
        """After out-of-memory at ``b`` images: slicing first, then half the batch."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not self.slicing:
            self.slicing = True
            for name in ("enable_attention_slicing", "enable_vae_slicing"):
                fn = getattr(self.pipe, name, None)
                if callable(fn):
                    fn()
            return b
        if b == 1:
            raise InputError(f"{self.identity.path}: out of memory generating a single image "
                             f"(with attention slicing on): {str(exc).splitlines()[0]}") from exc
        return max(1, b // 2)

    @staticmethod
    def _cat(parts: list[Any]) -> Any:
        import torch

        return torch.cat(parts)

    def _call(self, idx: range, prompts: list[str] | None, seed: int) -> Any:
        import torch

        gens = [torch.Generator().manual_seed(image_seed(seed, i)) for i in idx]
        kwargs = dict(self.call_kwargs)
        if self.task == "text-to-image":
            kwargs["prompt"] = [prompts[i] for i in idx]
            neg = kwargs.pop("negative_prompt", None)
            if neg is not None:
                kwargs["negative_prompt"] = [neg] * len(idx)
        else:
            kwargs["batch_size"] = len(idx)
        with torch.inference_mode():
            x = self.pipe(generator=gens, output_type="pt", return_dict=True, **kwargs).images
            if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != len(idx):
                raise InputError(f"{self.identity.path}: the pipeline returned "
                                 f"{getattr(x, 'shape', type(x).__name__)}; expected images [{len(idx)}, C, H, W]")
            # Stays on the device: the feature extractors read it there.
            x = x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return x.clone()  # a normal tensor: consumers may write into it

    # -- the denoiser (likelihood) ---------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the UNet denoises."""
        cfg = self.pipe.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(cfg.in_channels), int(h), int(w)

    def predict(self, x_t: Any, t: Any) -> Any:
        """The UNet's raw output for noisy images ``x_t`` [B, C, H, W] at training timesteps
        ``t`` [B] (0-based), as float32 on ``x_t``'s device."""
        import torch

        unet = self.pipe.unet
        dtype = next(unet.parameters()).dtype
        with torch.inference_mode():
            out = unet(x_t.to(self.device, dtype), t.to(self.device)).sample
        return out.float().to(x_t.device)

    def close(self) -> None:
        self.pipe = None


# -- loading --------------------------------------------------------------------------------------


def _task(pipe: Any, where: str) -> str:
    params = inspect.signature(pipe.__call__).parameters
    if "prompt" in params:
        required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                    and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"]
        if any(n in ("image", "init_image", "mask_image", "control_image") for n in list(params)[:4]) or required:
            raise InputError(f"{where}: {type(pipe).__name__} needs more than a prompt (an input image?); "
                             "source 'diffusers' takes unconditional (DDPM/DDIM) and text-to-image pipelines")
        return "text-to-image"
    if "batch_size" in params:
        return "unconditional"
    raise InputError(f"{where}: {type(pipe).__name__} is neither an unconditional (DDPMPipeline, DDIMPipeline) "
                     "nor a text-to-image pipeline (StableDiffusionPipeline family)")


def _check_model_index(folder: Path, trust_remote_code: bool) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise InputError(f"{folder}: not a diffusers pipeline folder: no model_index.json (expected the folder "
                         "that `pipeline.save_pretrained(folder)` writes, with model_index.json and one "
                         "subfolder per component)")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{index}: not readable JSON: {exc}") from None
    if not isinstance(data, dict) or "_class_name" not in data:
        raise InputError(f"{index}: not a diffusers model index (no _class_name)")
    foreign = sorted(f"{k} ({v[0]}.{v[1]})" for k, v in data.items()
                     if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None
                     and v[0] not in _SAFE_LIBRARIES)
    if foreign and not trust_remote_code:
        raise InputError(f"{index}: component(s) from outside diffusers/transformers: {', '.join(foreign)}; "
                         "loading them runs their library's code: set `trust_remote_code: true` if you trust it")
    return data


def _options(spec: SubjectSpec) -> dict[str, Any]:
    opts = dict(spec.options)
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise SpecError(f"subject.options: unknown option(s) {unknown} for source 'diffusers'; expected {list(_OPTIONS)}")

    def pos_int(name: str) -> None:
        v = opts.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SpecError(f"subject.options.{name}: expected a positive integer, got {v!r}")

    for name in ("num_inference_steps", "height", "width", "batch_size"):
        pos_int(name)
    for name in ("guidance_scale", "eta"):
        v = opts.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise SpecError(f"subject.options.{name}: expected a number >= 0, got {v!r}")
    for name in ("negative_prompt", "scheduler", "prompts"):
        v = opts.get(name)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise SpecError(f"subject.options.{name}: expected a string, got {v!r}")
    dtype = opts.get("dtype")
    if dtype is not None and dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise SpecError(f"subject.options.dtype: expected auto, float32, float16 or bfloat16, got {dtype!r}")
    if dtype is not None and spec.dtype not in ("float32", dtype):
        raise SpecError(f"subject.dtype {spec.dtype!r} and subject.options.dtype {dtype!r} disagree; give one")
    return opts


def _scheduler(pipe: Any, name: str, diffusers: Any) -> Any:
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        from audit.probe import did_you_mean

        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler")
                       and isinstance(getattr(diffusers, n, None), type))
        compatible = sorted(c.__name__ for c in getattr(pipe.scheduler, "compatibles", ()))
        raise SpecError(f"subject.options.scheduler: {name!r} is not a diffusers scheduler class."
                        f"{did_you_mean(name, known)} Compatible with this pipeline: {', '.join(compatible)}")
    return cls.from_config(pipe.scheduler.config)


def _load_pipeline(spec: SubjectSpec, base_dir: Path, torch_dtype: Any) -> tuple[Any, str, str | None]:
    """(pipeline, where it came from, revision)."""
    from audit.subjects.files import HUB_ID, first_line

    diffusers = require("diffusers", extra="diffusion", purpose="source 'diffusers'")
    p = Path(spec.path).expanduser()
    folder = p if p.is_absolute() else base_dir / p
    # Newer diffusers renamed torch_dtype to dtype; the old name still works there but warns.
    import diffusers.utils.deprecation_utils as dep

    dkey = "dtype" if hasattr(dep, "_resolve_dtype") else "torch_dtype"
    kwargs: dict[str, Any] = {dkey: torch_dtype, "use_safetensors": not spec.allow_pickle}
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"{folder}: a diffusers pipeline is a folder (with model_index.json), not a file")
        _check_model_index(folder, spec.trust_remote_code)
        source, revision = str(folder.resolve()), spec.revision
    elif HUB_ID.fullmatch(spec.path) and not spec.path.startswith((".", "/", "~")):
        source, revision = spec.path, spec.revision
        kwargs["revision"] = spec.revision
    else:
        raise InputError(f"diffusers pipeline not found: {folder} is not a folder, and {spec.path!r} is not a hub id")
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(source, **kwargs)
    except Exception as exc:
        import os

        offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE",
                                                                                      "GENAI_AUDIT_OFFLINE"))
        hint = ""
        if source == spec.path:
            hint = (" (HF_HUB_OFFLINE is set and the pipeline is not in the local hub cache: download it once, "
                    "e.g. `huggingface-cli download " + spec.path + "`, or give a local folder)") if offline else \
                " (is the hub id right, and the hub reachable?)"
        elif not spec.allow_pickle and "safetensors" in str(exc).lower():
            hint = " (weights load from safetensors only unless `allow_pickle: true`)"
        raise InputError(f"cannot load the diffusers pipeline {spec.path!r}: {type(exc).__name__}: "
                         f"{first_line(exc)}{hint}") from None
    if source == spec.path:  # a hub snapshot: check what it holds, as for a folder
        root = getattr(pipe.config, "_name_or_path", None)
        if root and Path(root).is_dir():
            _check_model_index(Path(root), spec.trust_remote_code)
    return pipe, source, revision


def load_diffusers_image_generator(spec: SubjectSpec, base_dir: Path, device: Any, cache_dir: Path) -> ImageGenerator:
    """Loader for ``(image-generator, diffusers)``."""
    import torch

    opts = _options(spec)
    dtype_name = opts.pop("dtype", None) or spec.dtype
    if dtype_name == "auto":
        dtype_name = "float16" if getattr(device, "type", str(device)) == "cuda" else "float32"
    pipe, source, revision = _load_pipeline(spec, base_dir, getattr(torch, dtype_name))
    where = spec.path
    task = _task(pipe, where)
    if task == "unconditional":
        given = sorted(k for k in _T2I_ONLY if k in opts)
        if given or "prompts" in opts:
            raise SpecError(f"subject.options: {given + (['prompts'] if 'prompts' in opts else [])} apply to "
                            f"text-to-image pipelines; {type(pipe).__name__} is unconditional "
                            "(its image size is the UNet's sample_size)")
    training_scheduler = pipe.scheduler
    diffusers = require("diffusers", extra="diffusion", purpose="source 'diffusers'")
    if "scheduler" in opts:
        pipe.scheduler = _scheduler(pipe, opts.pop("scheduler"), diffusers)
    max_batch = int(opts.pop("batch_size", 8 if task == "text-to-image" else 64))
    prompts_file = opts.pop("prompts", None)
    call = {k: v for k, v in opts.items() if v is not None}
    if "eta" in call and "eta" not in inspect.signature(pipe.__call__).parameters:
        raise SpecError(f"subject.options.eta: {type(pipe).__name__} takes no eta (DDIMPipeline does)")
    prompts = None
    if prompts_file is not None:
        from audit.subjects.imagedata import read_prompts

        pf = Path(prompts_file).expanduser()
        prompts = [r["prompt"] for r in read_prompts(pf if pf.is_absolute() else base_dir / pf)]
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    from audit.subjects.files import hash_files, weight_files

    files = hash_files(Path(source), weight_files(Path(source))) if Path(source).is_dir() else ()
    n_params = sum(p.numel() for c in pipe.components.values() if isinstance(c, torch.nn.Module)
                   for p in c.parameters())
    identity = SubjectIdentity(
        name=spec.name or Path(spec.path).name, kind=spec.kind, source=spec.source, path=spec.path,
        revision=revision, files=files,
        details={"pipeline": type(pipe).__name__, "task": task, "scheduler": type(pipe.scheduler).__name__,
                 "training_scheduler": type(training_scheduler).__name__, "dtype": dtype_name,
                 "n_parameters": n_params, "device": str(device), "options": dict(spec.options),
                 "safety_checker": getattr(pipe, "safety_checker", None) is not None,
                 "seeds": "per image: blake2b(seed:index), CPU torch.Generator"},
    )
    return DiffusersImageGenerator(pipe, identity, task=task, call_kwargs=call, max_batch=max_batch, device=device,
                                   training_scheduler=training_scheduler, prompts=prompts)
