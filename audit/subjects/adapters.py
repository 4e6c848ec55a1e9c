"""Adapters on top of a loaded subject: ``subject.adapter: PATH`` (a peft adapter folder).

A text-generator subject from any transformers-backed source (hf, gguf, python returning a
model and tokenizer) can carry a peft adapter (LoRA, IA3, ...): the base model loads as
usual, then :func:`apply_adapter` wraps it with :class:`peft.PeftModel`, or merges the adapter
into the weights with ``merge: true`` (faster inference, same outputs up to rounding). The
report's subject identity lists the adapter's files with their SHA-256, beside the base
model's, so two fine-tunes of one base are told apart.

The adapter must fit the base: its ``base_model_name_or_path`` must name the subject's
model (compared by the last path component, case and file extension aside, so a hub id,
its local folder and its GGUF file match), and its tensors must have the base's shapes.

Example (spec):
    subject:
      kind: text-generator
      source: hf
      path: HuggingFaceTB/SmolLM2-135M-Instruct
      adapter: adapters/my-lora        # relative to the spec's folder
      merge: false
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from audit.errors import InputError, SpecError, require
from audit.findings import FileHash

__all__ = ["adapter_base_matches", "apply_adapter"]

_ADAPTER_CONFIG = "adapter_config.json"


def _stem(name: str) -> str:
    last = re.split(r"[\\/]", name.rstrip("/\\"))[-1].lower()
    return re.sub(r"\.(gguf|safetensors|bin|pt|pth)$", "", last)


def adapter_base_matches(base_name: str, subject_names: list[str]) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names one of the subject's names:
    the last path components agree, one containing the other (``SmolLM2-135M-Instruct``
    matches ``SmolLM2-135M-Instruct.Q4_1.gguf`` and ``HuggingFaceTB/SmolLM2-135M-Instruct``).

    Example:
        >>> adapter_base_matches("HuggingFaceTB/SmolLM2-135M-Instruct", ["/m/SmolLM2-135M-Instruct.Q4_1.gguf"])
        True
        >>> adapter_base_matches("gpt2", ["/m/SmolLM2-135M-Instruct.Q4_1.gguf"])
        False
    """
    base = _stem(base_name)
    for name in subject_names:
        other = _stem(name)
        if other and base and (base in other or other in base):
            return True
    return False


def _adapter_files(folder: Path, allow_pickle: bool) -> list[Path]:
    config = folder / _ADAPTER_CONFIG
    if not folder.is_dir() or not config.is_file():
        raise InputError(f"subject.adapter: {folder} is not a peft adapter folder (expected {_ADAPTER_CONFIG} and "
                         f"adapter_model.safetensors in it)")
    weights = sorted(folder.glob("adapter_model.safetensors"))
    if not weights:
        pickled = sorted(folder.glob("adapter_model.bin"))
        if not pickled:
            raise InputError(f"subject.adapter: {folder} has no adapter_model.safetensors")
        if not allow_pickle:
            raise InputError(f"subject.adapter: {folder} has only a pickled adapter_model.bin; loading a pickle can "
                             f"run arbitrary code: convert it to safetensors, or set `allow_pickle: true` in the subject")
        weights = pickled
    return [config, *weights]


def apply_adapter(subject: Any, spec: Any, base_dir: Path) -> Any:
    """The subject with the peft adapter of ``spec.adapter`` applied (merged with ``spec.merge``).

    Raises:
        SpecError: the subject is not a transformers-backed text generator.
        InputError: the folder is not a peft adapter, names another base model, or its
            tensors do not fit the base model's shapes.
    """
    from audit.subjects.files import sha256_file

    model = getattr(subject, "model", None)
    if spec.kind != "text-generator" or model is None or not callable(getattr(model, "state_dict", None)):
        raise SpecError(f"subject.adapter: adapters apply to text-generator subjects backed by a transformers model "
                        f"(sources hf, gguf, or python returning (model, tokenizer)); this {spec.kind} from "
                        f"'{spec.source}' has none")
    p = Path(spec.adapter).expanduser()
    folder = p if p.is_absolute() else Path(base_dir) / p
    files = _adapter_files(folder, spec.allow_pickle)
    try:
        config = json.loads(files[0].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"subject.adapter: {files[0]} is not readable JSON ({exc})") from None
    base_name = str(config.get("base_model_name_or_path") or "")
    names = [spec.path, spec.name or "", str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""),
             subject.identity.name]
    if base_name and not adapter_base_matches(base_name, names):
        raise InputError(
            f"subject.adapter: {folder} was trained on '{base_name}', but the subject is '{spec.path}'; apply an "
            f"adapter to the base model it was trained on (or fix base_model_name_or_path in {_ADAPTER_CONFIG})"
        )
    require("peft", extra="adapters", purpose="loading a subject.adapter")
    from peft import PeftModel

    try:
        wrapped = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln), first[0])
        raise InputError(f"subject.adapter: {folder} does not fit the subject's model: {detail}") from None
    subject.model = (wrapped.merge_and_unload() if spec.merge else wrapped).eval()
    hashes = tuple(FileHash(f"adapter/{f.name}", sha256_file(f), f.stat().st_size) for f in files)
    details = {**subject.identity.details, "adapter": str(folder), "adapter_merged": bool(spec.merge),
               "adapter_type": config.get("peft_type"), "adapter_base": base_name or None}
    if config.get("r") is not None:
        details["adapter_rank"] = config["r"]
    subject.identity = dataclasses.replace(subject.identity, files=tuple(subject.identity.files) + hashes,
                                           details=details)
    return subject
