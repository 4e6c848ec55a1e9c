"""Load the model under audit from its :class:`~audit.spec.SubjectSpec`.

One entry point, :func:`load_subject`, dispatches on ``(kind, source)``:

=================  =======  ===========================================================
kind               source   ``path``
=================  =======  ===========================================================
text-generator     hf       a local transformers folder, or a hub id (``org/name``)
text-generator     gguf     a ``.gguf`` file, converted once to a cached safetensors folder
text-generator     python   ``"module:callable"`` or ``"path/to/file.py:callable"``
text-generator     openai-compatible  a server's base URL (vLLM, llama.cpp, TGI): :mod:`audit.subjects.remote`
text-generator     generations        a JSONL of prompts and outputs, no model: :mod:`audit.subjects.generations`
=================  =======  ===========================================================

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

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import InputError, SpecError, require
from audit.findings import FileHash, SubjectIdentity
from audit.probe import did_you_mean
from audit.spec import SubjectSpec
from audit.subjects import HFTextGenerator, Subject, TextGenerator

if TYPE_CHECKING:
    import torch

__all__ = ["GGUF_CACHE_MARKER", "WEIGHT_SUFFIXES", "convert_gguf", "load_subject", "resolve_device", "sha256_file"]

logger = logging.getLogger(__name__)

#: Files whose hashes identify a model's weights.
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
#: Weight formats that are Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
#: Written last into a converted GGUF folder; a folder without it is never used.
GGUF_CACHE_MARKER = "genai_audit_gguf.json"

_CHUNK = 1 << 20
_GGUF_MAGIC = b"GGUF"
# huggingface_hub's repo id grammar: "name" or "namespace/name".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")

Loader = Callable[[SubjectSpec, Path, "torch.device", Path], Subject]


# -- public helpers --------------------------------------------------------------------------
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights can be larger than memory).

    Example:
        >>> sha256_file(__file__) == hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        True
    """
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


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
    if isinstance(loader, str):  # lazy "module:function": other subject kinds live in their own modules
        module_name, _, attr = loader.partition(":")
        loader = getattr(importlib.import_module(module_name), attr)
    return loader(spec, Path(base_dir), torch_device, Path(cache_dir))


def convert_gguf(gguf_file: str | os.PathLike[str], cache_dir: str | os.PathLike[str], *,
                 sha256: str | None = None) -> Path:
    """The transformers folder (safetensors, float32) converted from a GGUF file, made once.

    The folder is ``cache_dir/gguf/<first 16 hex digits of the file's SHA-256>``. It is built in a
    temporary sibling and renamed into place when complete, so a crashed or concurrent conversion
    never leaves a half-written folder under that name; a folder without a valid
    :data:`GGUF_CACHE_MARKER` (or whose files changed size) is rebuilt.

    Raises:
        InputError: the file is missing, not a GGUF file, or transformers cannot convert it.
    """
    path = Path(gguf_file)
    _check_gguf_file(path)
    digest = sha256 or sha256_file(path)
    root = Path(cache_dir) / "gguf"
    final = root / digest[:16]
    if _gguf_cache_complete(final, digest):
        return final
    if final.exists():
        logger.warning("discarding the incomplete or stale GGUF cache %s", final)
        _remove_tree(final)

    root.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes it 0700) so the cache can be shared under the usual umask.
    tmp = root / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        start = time.perf_counter()
        logger.info("converting %s to safetensors (once; cached in %s)", path, final)
        _convert_gguf_into(path, tmp)
        _write_gguf_marker(tmp, path, digest)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same conversion first: use its folder.
            if not _gguf_cache_complete(final, digest):
                raise
            _remove_tree(tmp)
        logger.info("converted %s in %.1f s", path.name, time.perf_counter() - start)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# -- text-generator from hf ------------------------------------------------------------------
def _load_hf_text_generator(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Subject:
    _no_options(spec)
    require("transformers", extra="text", purpose="loading a text-generator")
    local = _local_path(spec.path, base_dir)
    if local is not None:
        if local.is_file():
            hint = " (for a GGUF file use `source: gguf`)" if local.suffix == ".gguf" else ""
            raise InputError(f"{local}: expected a transformers model folder (config.json + weights), "
                             f"got a file{hint}")
        weights = _check_local_weights(local, allow_pickle=spec.allow_pickle)
        folder, revision, source = local, spec.revision, str(local)
    else:
        folder, commit = _hub_snapshot(spec)
        weights = None
        # The resolved commit tells two releases apart; a ref like "main" does not.
        revision, source = commit or spec.revision, spec.path

    model, tokenizer = _from_pretrained(
        source, spec=spec, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
        use_safetensors=None if spec.allow_pickle else True, folder=folder,
    )
    if weights is None:  # a hub snapshot: its weight files exist only now
        weights = _weight_files(folder)
    name = spec.name or (local.resolve().name if local is not None else spec.path)
    return _wrap(model, tokenizer, spec, device, name=name, revision=revision,
                 files=_hash_files(folder, weights))


def _local_path(path: str, base_dir: Path) -> Path | None:
    """The file or folder ``path`` names, or None when it is a hub id.

    Raises InputError when it looks like a path (``./``, ``/``, ``~``, a parent folder that
    exists, more than one ``/``) but nothing is there, rather than asking the hub about it.
    """
    p = Path(path).expanduser()
    resolved = p if p.is_absolute() else base_dir / p
    if resolved.exists():
        return resolved
    looks_local = (
        path.startswith((".", "/", "~", "\\")) or p.is_absolute() or not _HUB_ID.fullmatch(path)
        or (len(p.parts) > 1 and (base_dir / p.parts[0]).exists())
        or p.suffix in WEIGHT_SUFFIXES
    )
    if looks_local:
        raise InputError(f"model path not found: {resolved} (subject.path {path!r}, relative to {base_dir})")
    return None


def _check_local_weights(folder: Path, *, allow_pickle: bool) -> list[Path]:
    """The weight files of a local folder, after the safety and integrity checks."""
    weights = _weight_files(folder)
    safe = [w for w in weights if w.suffix == ".safetensors"]
    pickled = [w for w in weights if w.suffix in PICKLE_SUFFIXES]
    if not safe and not pickled:
        hint = " (it has a .gguf file: use `source: gguf` with the file as path)" if weights else ""
        raise InputError(f"{folder}: no model weights found (*.safetensors, *.bin, *.pt){hint}")
    if not safe and not allow_pickle:
        names = ", ".join(w.relative_to(folder).as_posix() for w in pickled)
        raise InputError(
            f"{folder}: only pickled weights found ({names}). Loading a pickle can run arbitrary code, so "
            "it is off by default: convert the weights to safetensors, or set `allow_pickle: true` in the "
            "subject if you trust where the file came from."
        )
    for w in safe:
        _check_safetensors(w)
    return weights


def _hub_snapshot(spec: SubjectSpec) -> tuple[Path, str | None]:
    """The local snapshot folder of a hub model (downloading config.json if online) and its commit."""
    from transformers.utils.hub import cached_file, extract_commit_hash

    try:
        config_file = cached_file(spec.path, "config.json", revision=spec.revision)
    except OSError as exc:
        raise InputError(_hub_error(spec, exc)) from None
    if config_file is None:
        raise InputError(f"hub model {spec.path!r} has no config.json; is it a transformers model?")
    return Path(config_file).parent, extract_commit_hash(config_file, None)


def _hub_error(spec: SubjectSpec, exc: BaseException) -> str:
    from huggingface_hub import constants

    rev = f" at revision {spec.revision!r}" if spec.revision else ""
    if constants.is_offline_mode():
        return (
            f"model {spec.path!r}{rev} is not a local folder and is not in the Hugging Face cache, and the "
            "hub cannot be reached (offline mode: HF_HUB_OFFLINE=1). Download it once with "
            f"`hf download {spec.path}`, or set subject.path to a local folder."
        )
    return f"cannot load model {spec.path!r}{rev} from the Hugging Face hub: {_first_line(exc)}"


# -- text-generator from gguf ----------------------------------------------------------------
def _load_gguf_text_generator(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Subject:
    _no_options(spec)
    require("transformers", extra="text", purpose="loading a text-generator")
    require("gguf", extra="text", purpose="reading a GGUF file")
    p = Path(spec.path).expanduser()
    path = p if p.is_absolute() else base_dir / p
    if not path.exists():
        raise InputError(f"model path not found: {path} (subject.path {spec.path!r}, relative to {base_dir})")
    if path.is_dir():
        raise InputError(f"{path}: expected a .gguf file, got a folder (for a transformers folder use `source: hf`)")
    _check_gguf_file(path)
    digest = sha256_file(path)
    folder = convert_gguf(path, cache_dir, sha256=digest)
    model, tokenizer = _from_pretrained(str(folder), spec=spec, revision=None, trust_remote_code=False,
                                        use_safetensors=True, folder=folder)
    files = (FileHash(path.name, digest, path.stat().st_size),)
    return _wrap(model, tokenizer, spec, device, name=spec.name or path.stem, revision=spec.revision,
                 files=files, details={"gguf_cache": str(folder)})


def _check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"model path not found: {path}")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read the GGUF file {path}: {exc.strerror or exc}") from None
    if magic != _GGUF_MAGIC:
        raise InputError(f"not a valid GGUF file: {path} (it starts with {magic!r}, not the GGUF magic b'GGUF')")


def _convert_gguf_into(gguf_path: Path, out: Path) -> None:
    """Dequantize ``gguf_path`` with transformers and save it (safetensors + tokenizer) into ``out``.

    Why not ``from_pretrained(folder, gguf_file=name)`` + ``save_pretrained``: in transformers 5 that
    needs ``accelerate`` and leaves a GGUF quantizer on the model that refuses ``save_pretrained``.
    The config, tokenizer and tensor conversion below are the same transformers code it runs.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with _skip_weight_init():  # every weight is overwritten below (checked), so skip the random init
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(
            str(gguf_path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
        )["tensors"]
    except (ValueError, OSError, KeyError, IndexError, TypeError, EOFError, struct.error) as exc:
        version, reason = transformers.__version__, _first_line(exc)
        if "not supported" in reason:  # a valid file of an architecture transformers cannot convert
            raise InputError(f"{gguf_path}: transformers {version} cannot convert this GGUF file: {reason}") from exc
        raise InputError(
            f"not a valid GGUF file: {gguf_path} (truncated or corrupt? transformers {version} could not read it: "
            f"{reason})"
        ) from exc
    # assign: the dequantized tensors become the parameters (no second copy of the model in memory).
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()  # e.g. lm_head <- embed_tokens when the file has no output.weight
    state = model.state_dict(keep_vars=True)
    loaded = {state[k].data_ptr() for k in tensors if k in state}
    del tensors
    untied = [k for k in missing if state[k].data_ptr() not in loaded]  # tied weights share storage
    if untied or unexpected:
        raise InputError(
            f"{gguf_path}: its tensors do not match the {config.model_type} model its metadata describes "
            f"(missing: {untied[:5]}, unexpected: {list(unexpected)[:5]})"
        )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _skip_weight_init() -> contextlib.AbstractContextManager[Any]:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: random init, only slower
        return contextlib.nullcontext()
    return no_init_weights()


def _write_gguf_marker(folder: Path, gguf_path: Path, digest: str) -> None:
    import transformers

    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    marker = {
        "format": 1, "gguf_file": gguf_path.name, "sha256": digest, "bytes": gguf_path.stat().st_size,
        "transformers": transformers.__version__, "files": files,
    }
    (folder / GGUF_CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _gguf_cache_complete(folder: Path, digest: str) -> bool:
    """Whether ``folder`` is a finished conversion of the GGUF whose SHA-256 is ``digest``."""
    try:
        marker = json.loads((folder / GGUF_CACHE_MARKER).read_text(encoding="utf-8"))
        if marker.get("sha256") != digest or not marker.get("files"):
            return False
        return all((folder / rel).stat().st_size == size for rel, size in marker["files"].items())
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _remove_tree(folder: Path) -> None:
    # Rename first, so no reader ever sees the folder half-deleted under its real name.
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.{time.monotonic_ns()}.old")
    try:
        os.rename(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


# -- text-generator from python --------------------------------------------------------------
def _load_python_text_generator(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Subject:
    factory, attr = _import_callable(spec.path, base_dir)
    try:
        result = factory(**spec.options)
    except Exception as exc:  # user code: any failure is a problem with the input
        given = f" with options {spec.options}" if spec.options else ""
        raise InputError(f"subject callable {spec.path!r} failed when called{given}: "
                         f"{type(exc).__name__}: {exc}") from exc
    name = spec.name or attr.rsplit(".", 1)[-1]
    if isinstance(result, TextGenerator):
        if not isinstance(getattr(result, "identity", None), SubjectIdentity):
            details = {**_model_details(getattr(result, "model", None)), "device": str(result.device)}
            result.identity = SubjectIdentity(
                name=name, kind=spec.kind, source=spec.source, path=spec.path, revision=spec.revision,
                details=details,
            )
        return result
    if isinstance(result, tuple) and len(result) == 2:
        import torch

        model, tokenizer = result
        if isinstance(model, torch.nn.Module) and callable(getattr(tokenizer, "encode", None)):
            if spec.dtype != "auto":
                model = model.to(getattr(torch, spec.dtype))
            return _wrap(model, tokenizer, spec, device, name=name, revision=spec.revision, files=())
    raise InputError(
        f"subject callable {spec.path!r} returned {_describe(result)}; expected a TextGenerator "
        "(audit.subjects) or a (model, tokenizer) pair of a torch causal LM and its tokenizer"
    )


def _import_callable(path: str, base_dir: Path) -> tuple[Callable[..., Any], str]:
    module_name, sep, attr = path.rpartition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"subject.path {path!r}: expected 'module:callable' or 'path/to/file.py:callable'")
    is_file = module_name.endswith(".py") or "/" in module_name or "\\" in module_name
    try:
        if is_file:
            module = _import_file(module_name, base_dir)
        else:
            with _on_sys_path(base_dir):
                module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as exc:  # user code runs on import: any failure is a problem with the input
        raise InputError(
            f"subject.path {path!r}: cannot import '{module_name}': {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise InputError(
                f"subject.path {path!r}: '{module_name}' has no attribute '{attr}'.{did_you_mean(part, names)} "
                "Expected a callable that returns a TextGenerator or a (model, tokenizer) pair."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"subject.path {path!r}: '{attr}' is a {type(obj).__name__}, not a callable")
    return obj, attr


def _import_file(file: str, base_dir: Path) -> Any:
    p = Path(file).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise InputError(f"model path not found: {p} (the Python file of subject.path)")
    digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", p.stem)
    mod_name = f"_genai_audit_subject_{stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(mod_name, p)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"{p}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look their module up here
    try:
        with _on_sys_path(p.parent):
            module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """Let modules next to the spec be imported, without leaving the folder on sys.path."""
    entry = str(folder.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _describe(obj: Any) -> str:
    if isinstance(obj, tuple):
        return f"a tuple of {len(obj)} ({', '.join(type(x).__name__ for x in obj[:4])})"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}" if obj is not None else "None"


# -- shared ----------------------------------------------------------------------------------
def _from_pretrained(source: str, *, spec: SubjectSpec, revision: str | None, trust_remote_code: bool,
                     use_safetensors: bool | None, folder: Path | None = None) -> tuple[Any, Any]:
    """Model and tokenizer via transformers' Auto classes; their errors become InputErrors.

    ``folder`` is where the weight files are (once downloaded), to name a corrupt one.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype: Any = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors,
        )
    except (OSError, ValueError, SafetensorError) as exc:
        if isinstance(exc, SafetensorError) and folder is not None:
            for weights in _weight_files(folder):
                if weights.suffix == ".safetensors":
                    _check_safetensors(weights)  # raises an InputError naming the file
        msg = _first_line(exc)
        hint = ""
        if "trust_remote_code" in str(exc):
            hint = (" This model ships its own code: set `trust_remote_code: true` in the subject only if you "
                    "trust its repository (the code runs on this machine).")
        elif "safetensors" in msg.lower() and use_safetensors:
            hint = (" If it only has pickled weights (*.bin), set `allow_pickle: true` in the subject to load them "
                    "(a pickle can run arbitrary code).")
        raise InputError(f"cannot load the text-generator {spec.path!r} from {source}: {msg}{hint}") from exc
    return model, tokenizer


def _wrap(model: Any, tokenizer: Any, spec: SubjectSpec, device: torch.device, *, name: str, revision: str | None,
          files: tuple[FileHash, ...], details: dict[str, Any] | None = None) -> HFTextGenerator:
    model = model.to(device).eval()
    identity = SubjectIdentity(
        name=name, kind=spec.kind, source=spec.source, path=spec.path, revision=revision, files=files,
        details={**_model_details(model), "device": str(device), **(details or {})},
    )
    return HFTextGenerator(model, tokenizer, identity, device=device)


def _model_details(model: Any) -> dict[str, Any]:
    params = getattr(model, "parameters", None)
    if not callable(params):
        return {}
    first = next(iter(params()), None)
    return {
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
        "n_parameters": sum(p.numel() for p in params()),  # parameters() counts tied weights once
    }


def _weight_files(folder: Path) -> list[Path]:
    """Weight files under ``folder``, sorted, skipping hidden folders (.cache, .git)."""
    found: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in names if n.endswith(WEIGHT_SUFFIXES))
    return sorted(found)


def _hash_files(folder: Path, files: list[Path]) -> tuple[FileHash, ...]:
    return tuple(
        FileHash(f.relative_to(folder).as_posix(), sha256_file(f), f.stat().st_size) for f in files
    )


def load_module_weights(module: Any, weights: Any, *, base_dir: Path, kind: str) -> tuple[FileHash, ...]:
    """Load ``subject.options.weights`` into a user's ``nn.Module`` (``strict``) and return its
    file hash; ``weights`` is a .safetensors path, relative to the spec's folder.

    Raises:
        SpecError: ``weights`` is not a path.
        InputError: the file is missing, is not safetensors (a pickle can run arbitrary code),
            is truncated, or its tensors do not fit the module.
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise SpecError(f"subject.options.weights: expected the path of a .safetensors file, got {weights!r}")
    path = Path(weights).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    if not path.is_file():
        raise InputError(f"weights file not found: {path} (subject.options.weights {str(weights)!r})")
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: {kind} weights load from safetensors files only (a pickled "
                         f"{path.suffix} file can run arbitrary code); convert it with safetensors.torch.save_file")
    _check_safetensors(path)
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: its tensors do not fit the module: {str(exc).splitlines()[0]}") from None
    return (FileHash(path.name, sha256_file(path), path.stat().st_size),)


def _check_safetensors(path: Path) -> None:
    """Cheap integrity check of a safetensors file: the header parses and the data is all there."""
    size = path.stat().st_size

    def bad(reason: str) -> InputError:
        return InputError(f"corrupt safetensors file: {path} ({reason}); re-download or re-export it")

    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise InputError(f"cannot read the weights file {path}: {exc.strerror or exc}") from None
    with fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise bad(f"the header claims {n} bytes but the file has {size}: truncated")
        try:
            header = json.loads(fh.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise bad("the JSON header is unreadable") from None
    data = size - 8 - n
    need = max(ends, default=0)
    if need != data:
        raise bad(f"its tensors need {need} bytes of data but the file holds {data}"
                  + (": truncated" if need > data else ""))


def _no_options(spec: SubjectSpec) -> None:
    if spec.options:
        raise SpecError(f"subject.options: source '{spec.source}' takes no options, got {sorted(spec.options)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# (kind, source) -> loader, or a lazy "module:function" naming one. Each subject kind's
# loaders may live in their own module; add one line here per (kind, source).
_LOADERS: dict[tuple[str, str], Loader | str] = {
    ("text-generator", "hf"): _load_hf_text_generator,
    ("text-generator", "gguf"): _load_gguf_text_generator,
    ("text-generator", "python"): _load_python_text_generator,
    ("text-generator", "openai-compatible"): "audit.subjects.remote:load_openai_compatible",
    ("text-generator", "generations"): "audit.subjects.generations:load_generations",
    ("classifier", "python"): "audit.subjects.classifier:_load_python_classifier",
    ("classifier", "torchscript"): "audit.subjects.classifier:_load_torchscript_classifier",
    ("classifier", "hf"): "audit.subjects.classifier:_load_hf_classifier",
    ("image-generator", "folder"): "audit.subjects.image:load_folder_image_generator",
    ("image-generator", "python"): "audit.subjects.image:load_python_image_generator",
    ("image-generator", "torch"): "audit.subjects.image:load_torch_image_generator",
    ("encoder", "hf"): "audit.subjects.encoder:load_hf_encoder",
    ("encoder", "open_clip"): "audit.subjects.encoder:load_open_clip_encoder",
    ("encoder", "python"): "audit.subjects.encoder:load_python_encoder",
}
