"""Text-generator loaders: a transformers folder or hub id, a GGUF file, a Python callable.

=======  ===========================================================
source   ``path``
=======  ===========================================================
hf       a local transformers folder, or a hub id (``org/name``)
gguf     a ``.gguf`` file, converted once to a cached safetensors folder
python   ``"module:callable"`` or ``"path/to/file.py:callable"``
=======  ===========================================================

The loaders are dispatched by :func:`audit.subjects.loading.load_subject`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import InputError, SpecError, model_not_found, require
from audit.findings import FileHash, SubjectIdentity
from audit.spec import SubjectSpec
from audit.subjects.base import HFTextGenerator, Subject, TextGenerator
from audit.subjects.files import (
    check_local_weights,
    check_safetensors,
    describe,
    first_line,
    hash_files,
    hub_snapshot,
    import_callable,
    local_path,
    no_options,
    sha256_file,
    weight_files,
)

if TYPE_CHECKING:
    import torch

__all__ = ["GGUF_CACHE_MARKER", "convert_gguf", "load_gguf_text_generator", "load_hf_text_generator",
           "load_python_text_generator"]

logger = logging.getLogger("audit.subjects.loading")

#: Written last into a converted GGUF folder; a folder without it is never used.
GGUF_CACHE_MARKER = "genai_audit_gguf.json"

_GGUF_MAGIC = b"GGUF"


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


def load_hf_text_generator(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Subject:
    no_options(spec)
    require("transformers", extra="text", purpose="loading a text-generator")
    local = local_path(spec.path, base_dir)
    if local is not None:
        if local.is_file():
            hint = " (for a GGUF file use `source: gguf`)" if local.suffix == ".gguf" else ""
            raise InputError(f"{local}: expected a transformers model folder (config.json + weights), "
                             f"got a file{hint}")
        weights = check_local_weights(local, allow_pickle=spec.allow_pickle)
        folder, revision, source = local, spec.revision, str(local)
    else:
        folder, commit = hub_snapshot(spec)
        weights = None
        # The resolved commit tells two releases apart; a ref like "main" does not.
        revision, source = commit or spec.revision, spec.path

    model, tokenizer = _from_pretrained(
        source, spec=spec, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
        use_safetensors=None if spec.allow_pickle else True, folder=folder,
    )
    if weights is None:  # a hub snapshot: its weight files exist only now
        weights = weight_files(folder)
    name = spec.name or (local.resolve().name if local is not None else spec.path)
    return _wrap(model, tokenizer, spec, device, name=name, revision=revision,
                 files=hash_files(folder, weights))


def load_gguf_text_generator(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Subject:
    no_options(spec)
    require("transformers", extra="text", purpose="loading a text-generator")
    require("gguf", extra="text", purpose="reading a GGUF file")
    p = Path(spec.path).expanduser()
    path = p if p.is_absolute() else base_dir / p
    if not path.exists():
        raise model_not_found(path, given=spec.path, base_dir=base_dir)
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
        raise InputError(f"model path not found: {path.resolve()}")
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
        version, reason = transformers.__version__, first_line(exc)
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


def load_python_text_generator(spec: SubjectSpec, base_dir: Path, device: torch.device, cache_dir: Path) -> Subject:
    factory, attr = import_callable(spec.path, base_dir)
    try:
        result = factory(**spec.options)
    except Exception as exc:  # user code: any failure is a problem with the input
        given = f" with options {spec.options}" if spec.options else ""
        raise InputError(f"subject callable {spec.path!r} failed when called{given}: "
                         f"{type(exc).__name__}: {exc}") from exc
    name = spec.name or attr.rsplit(".", 1)[-1]
    if isinstance(result, TextGenerator):
        if spec.chat_template is not False:
            raise SpecError(f"subject.chat_template: {spec.path!r} returned its own TextGenerator, which formats "
                            "its prompts itself; set chat_template when it returns a (model, tokenizer) pair")
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
        f"subject callable {spec.path!r} returned {describe(result)}; expected a TextGenerator "
        "(audit.subjects) or a (model, tokenizer) pair of a torch causal LM and its tokenizer"
    )


def _from_pretrained(source: str, *, spec: SubjectSpec, revision: str | None, trust_remote_code: bool,
                     use_safetensors: bool | None, folder: Path | None = None) -> tuple[Any, Any]:
    """Model and tokenizer via transformers' Auto classes; their errors become InputErrors.

    ``folder`` is where the weight files are (once downloaded), to name a corrupt one.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype: Any = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
    quantized: dict[str, Any] = {}
    if spec.quantization in ("bnb-8bit", "bnb-nf4"):  # bitsandbytes quantizes while loading (CUDA only)
        from audit.subjects.quantize import bnb_config

        quantized = {"quantization_config": bnb_config(spec.quantization), "device_map": {"": torch.cuda.current_device()}}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors, **quantized,
        )
    except (OSError, ValueError, SafetensorError) as exc:
        if isinstance(exc, SafetensorError) and folder is not None:
            for weights in weight_files(folder):
                if weights.suffix == ".safetensors":
                    check_safetensors(weights)  # raises an InputError naming the file
        msg = first_line(exc)
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
    if getattr(model, "is_quantized", False):  # bitsandbytes placed it at load; .to() would refuse
        import torch

        device = next(model.parameters()).device if device.type == "cuda" and device.index is None else device
        model = model.eval()
    else:
        model = model.to(device).eval()
    identity = SubjectIdentity(
        name=name, kind=spec.kind, source=spec.source, path=spec.path, revision=revision, files=files,
        details={**_model_details(model), "device": str(device), **(details or {})},
    )
    return HFTextGenerator(model, tokenizer, identity, device=device, chat_template=spec.chat_template)


def _model_details(model: Any) -> dict[str, Any]:
    params = getattr(model, "parameters", None)
    if not callable(params):
        return {}
    first = next(iter(params()), None)
    return {
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
        "n_parameters": sum(p.numel() for p in params()),  # parameters() counts tied weights once
    }
