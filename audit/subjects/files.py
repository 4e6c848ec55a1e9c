"""Shared helpers of the subject loaders: weight files, hashes, the hub, users' callables.

Every loader (text, image, classifier, encoder) finds and checks its files with these:
:func:`local_path` tells a path from a hub id, :func:`check_local_weights` refuses pickles
unless allowed and truncated safetensors, :func:`hash_files` gives the
:class:`~audit.findings.FileHash` records of a subject's identity, :func:`import_callable`
imports a user's ``"module:callable"`` or ``"file.py:callable"``. Problems with the input are
:class:`~audit.errors.InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from audit.errors import InputError, SpecError, model_not_found
from audit.findings import FileHash
from audit.probe import did_you_mean
from audit.spec import SubjectSpec

__all__ = [
    "HUB_ID",
    "PICKLE_SUFFIXES", "WEIGHT_SUFFIXES", "check_local_weights", "check_safetensors", "describe", "first_line",
    "hash_files", "hub_snapshot", "import_callable", "load_module_weights", "local_path", "no_options",
    "sha256_file", "weight_files",
]

#: Files whose hashes identify a model's weights.
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
#: Weight formats that are Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")

_CHUNK = 1 << 20
# huggingface_hub's repo id grammar: "name" or "namespace/name".
#: huggingface_hub's repo id grammar: "name" or "namespace/name".
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")
_HUB_ID = HUB_ID


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


def local_path(path: str, base_dir: Path) -> Path | None:
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
        raise model_not_found(resolved, given=path, base_dir=base_dir)
    return None


def check_local_weights(folder: Path, *, allow_pickle: bool) -> list[Path]:
    """The weight files of a local folder, after the safety and integrity checks."""
    weights = weight_files(folder)
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
        check_safetensors(w)
    return weights


def weight_files(folder: Path) -> list[Path]:
    """Weight files under ``folder``, sorted, skipping hidden folders (.cache, .git)."""
    found: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in names if n.endswith(WEIGHT_SUFFIXES))
    return sorted(found)


def hash_files(folder: Path, files: list[Path]) -> tuple[FileHash, ...]:
    return tuple(
        FileHash(f.relative_to(folder).as_posix(), sha256_file(f), f.stat().st_size) for f in files
    )


def check_safetensors(path: Path) -> None:
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
        raise InputError(f"weights file not found: {path.resolve()} (subject.options.weights {str(weights)!r})")
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: {kind} weights load from safetensors files only (a pickled "
                         f"{path.suffix} file can run arbitrary code); convert it with safetensors.torch.save_file")
    check_safetensors(path)
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: its tensors do not fit the module: {str(exc).splitlines()[0]}") from None
    return (FileHash(path.name, sha256_file(path), path.stat().st_size),)


def hub_snapshot(spec: SubjectSpec) -> tuple[Path, str | None]:
    """The local snapshot folder of a hub model (downloading config.json if online) and its commit."""
    from transformers.utils.hub import cached_file, extract_commit_hash

    try:
        config_file = cached_file(spec.path, "config.json", revision=spec.revision)
    except OSError as exc:
        raise InputError(hub_error(spec, exc)) from None
    if config_file is None:
        raise InputError(f"hub model {spec.path!r} has no config.json; is it a transformers model?")
    return Path(config_file).parent, extract_commit_hash(config_file, None)


def hub_error(spec: SubjectSpec, exc: BaseException) -> str:
    from huggingface_hub import constants

    rev = f" at revision {spec.revision!r}" if spec.revision else ""
    if constants.is_offline_mode():
        return (
            f"model {spec.path!r}{rev} is not a local folder and is not in the Hugging Face cache, and the "
            "hub cannot be reached (offline mode: HF_HUB_OFFLINE=1). Download it once with "
            f"`hf download {spec.path}`, or set subject.path to a local folder."
        )
    return f"cannot load model {spec.path!r}{rev} from the Hugging Face hub: {first_line(exc)}"


def import_callable(path: str, base_dir: Path) -> tuple[Callable[..., Any], str]:
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
        raise InputError(f"model path not found: {p.resolve()} (the Python file of subject.path)")
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


def describe(obj: Any) -> str:
    if isinstance(obj, tuple):
        return f"a tuple of {len(obj)} ({', '.join(type(x).__name__ for x in obj[:4])})"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}" if obj is not None else "None"


def no_options(spec: SubjectSpec) -> None:
    if spec.options:
        raise SpecError(f"subject.options: source '{spec.source}' takes no options, got {sorted(spec.options)}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
