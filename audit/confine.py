"""``settings.confine_paths: true``: a spec may read data and run code only from its own folder.

A spec is code: ``source: python``, ``feature: module:factory`` and ``file.py:callable``
import and run Python, and data paths may point anywhere on the machine. For a spec from
someone else (a pull request, a shared folder), ``confine_paths`` refuses, before anything
loads or runs:

* a data input, model path or weights file that resolves (symlinks followed) outside the
  spec's folder;
* code given as ``file.py:callable`` outside the folder, and code given as
  ``module:callable`` whose module is not a file or package inside the folder (an installed
  module could be anything the machine has);
* any probe parameter whose value is such a code reference or an existing path outside.

Hub ids (``HuggingFaceTB/SmolLM2-135M``) are not paths and stay allowed; whether the hub may
be reached is the environment's business (``HF_HUB_OFFLINE=1``).

Example:
    >>> from audit.spec import AuditSpec
    >>> spec = AuditSpec.model_validate({"name": "x", "probes": [{"id": "quality.perplexity"}],
    ...     "subject": {"kind": "text-generator", "source": "gguf", "path": "/etc/passwd"},
    ...     "settings": {"confine_paths": True}})
    >>> confinement_errors(spec)[0].startswith("subject.path: '/etc/passwd' resolves to /etc/passwd")
    True
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit.yamlsafe import quote

__all__ = ["confinement_errors"]

_CODE_REF = re.compile(r"^(?P<target>[^:\s]+):(?P<attr>[A-Za-z_][\w.]*)$")
_CODE_SOURCES = {"python"}


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop is not inside anything
        return False


def _resolve(value: str, root: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else root / p


def _code_error(where: str, ref: str, root: Path) -> str | None:
    """A problem with ``module:callable`` / ``file.py:callable`` under confinement, or None."""
    m = _CODE_REF.match(ref.strip())
    if m is None:
        return None
    target = m.group("target")
    if target.endswith(".py") or "/" in target or "\\" in target:
        file = _resolve(target, root)
        if not _inside(file, root):
            return f"{where}: {quote(ref)} runs code from {file.resolve()}, outside the spec's folder {root}"
        return None
    top = target.split(".")[0]
    local = root / top
    if (local.with_suffix(".py")).is_file() or (local / "__init__.py").is_file():
        return None  # imported from the spec's folder, which the loader puts first on sys.path
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    origin = getattr(found, "origin", None) if found is not None else None
    where_from = f"from {origin}" if origin else "that is not a file in the spec's folder"
    return (f"{where}: {quote(ref)} imports the module '{top}' {where_from}; with confine_paths only code in "
            f"the spec's folder {root} may run (give it as 'file.py:callable' there)")


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def _param_error(where: str, value: str, root: Path) -> str | None:
    if _CODE_REF.match(value.strip()) and not value.startswith(("http:", "https:")):
        target = value.split(":", 1)[0]
        # A bare word before the colon (e.g. "ViT-B-32:openai") is not code unless it is importable.
        if target.endswith(".py") or "/" in target or _looks_like_module(target):
            return _code_error(where, value, root)
    if value.startswith(("/", "~", "..", "./")) or "/../" in value:
        p = _resolve(value, root)
        if not _inside(p, root):
            return f"{where}: {quote(value)} resolves to {p.resolve()}, outside the spec's folder {root}"
    return None


def _looks_like_module(target: str) -> bool:
    if not re.fullmatch(r"[A-Za-z_][\w.]*", target):
        return False
    try:
        return importlib.util.find_spec(target.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def confinement_errors(spec: Any) -> list[str]:
    """Every path or code reference of ``spec`` that leaves its folder, one message each."""
    root = Path(spec.base_dir).resolve()
    errors: list[str] = []
    for name, value in spec.data.items():
        p = _resolve(value, root)
        if not _inside(p, root):
            errors.append(f"data.{name}: {quote(value)} resolves to {p.resolve()}, outside the spec's folder "
                          f"{root} (settings.confine_paths is true)")
    subject = spec.subject
    if subject.source in _CODE_SOURCES or _CODE_REF.match(subject.path.strip()):
        err = _code_error("subject.path", subject.path, root)
        if err:
            errors.append(err)
    else:
        p = _resolve(subject.path, root)
        local = p.exists() or subject.path.startswith(("/", "~", ".")) or subject.source != "hf"
        if local and not _inside(p, root):
            errors.append(f"subject.path: {quote(subject.path)} resolves to {p.resolve()}, outside the spec's "
                          f"folder {root} (settings.confine_paths is true)")
    for where, value in _strings(dict(subject.options), "subject.options"):
        err = _param_error(where, value, root)
        if err:
            errors.append(err)
    for i, probe in enumerate(spec.probes):
        for where, value in _strings(dict(probe.params), f"probes[{i}].params"):
            err = _param_error(where, value, root)
            if err:
                errors.append(err)
    return errors
