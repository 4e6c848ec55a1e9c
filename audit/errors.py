"""Exceptions that carry the exit code of the ``genai-audit`` command.

Exit codes (the contract CI relies on):
    0  every gate passed
    1  a gate failed
    2  the spec or an input is invalid (nothing was run, or the input could not be read)
    3  a probe crashed (its error is in the report; the other probes finished)
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_INVALID = 2
EXIT_PROBE_CRASHED = 3

__all__ = [
    "EXIT_GATE_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_PROBE_CRASHED",
    "AuditError",
    "InputError",
    "MissingDependencyError",
    "ReportError",
    "SpecError",
    "model_not_found",
    "require",
]


class AuditError(Exception):
    """Base class of the errors genai-audit reports to users; ``exit_code`` is the CLI's."""

    exit_code: int = EXIT_INVALID


class SpecError(AuditError, ValueError):
    """The audit spec (or a probe's parameters) is invalid. Names the file and key."""


class InputError(AuditError, ValueError):
    """An input the audit needs (model file, corpus, report) is missing or unreadable."""


class ReportError(InputError):
    """A report file is not a valid genai-audit report (wrong schema or version)."""


class MissingDependencyError(AuditError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed. "
            f"Install it with: pip install 'genai-audit[{extra}]'"
        )
        self.package = package
        self.extra = extra


def model_not_found(path: os.PathLike[str] | str, *, given: str, base_dir: os.PathLike[str] | str,
                    what: str = "subject.path") -> InputError:
    """The error for a model path that does not exist, with the absolute path it was looked for
    at (a relative ``base_dir`` such as ``.`` says nothing in a CI log)."""
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    folder = os.path.abspath(os.fspath(base_dir))
    return InputError(f"model path not found: {absolute} ({what} {given!r}, relative to the spec's folder {folder})")


def require(module: str, *, extra: str, purpose: str):
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
