"""The ``.partial`` folder of an unfinished run, and what a resumed run may reuse.

Each finished probe is saved under ``OUT/.partial/`` at once (rank 0 only), so a run
started again with ``resume=True`` on the same spec fingerprint and the same data inputs
reuses the finished probes and runs the rest. A probe is reused only when its parameters
hash to the same value; a resumed run refuses inputs that changed since it was interrupted.
A variant's outcome of a probe is kept apart from the subject's (:func:`partial_key`), with
the findings' per-unit values (:class:`~audit.findings.Units`), so a resumed run still pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from audit.errors import InputError
from audit.findings import AuditReport, Finding, ProbeStatus, atomic_write_text, jsonable
from audit.spec import AuditSpec

__all__ = ["Partial", "check_inputs", "inputs_digest", "params_hash", "partial_key", "start_run"]

_FINDINGS = TypeAdapter(list[Finding])
_STATUS = TypeAdapter(ProbeStatus)

#: What an interrupted run finished: :func:`partial_key` -> (its status, its findings).
Done = dict[str, tuple[ProbeStatus, list[Finding]]]
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def partial_key(probe_id: str, variant: str | None = None) -> str:
    """Where a probe's outcome on the subject (``variant`` None) or on a variant is kept.

    Example:
        >>> partial_key("quality.perplexity"), partial_key("quality.perplexity", "int8")
        ('quality.perplexity', 'quality.perplexity@int8')
    """
    return probe_id if variant is None else f"{probe_id}@{variant}"


def _decoded_units(findings: list[Finding]) -> list[Finding]:
    """Per-unit columns hold any JSON value, so their non-finite floats come back as the strings
    :func:`audit.findings.jsonable` wrote; put the floats back."""
    out = []
    for f in findings:
        if f.units is not None:
            cols = {k: tuple(_NON_FINITE.get(v, v) if isinstance(v, str) else v for v in col)
                    for k, col in f.units.columns.items()}
            f = dataclasses.replace(f, units=dataclasses.replace(f.units, columns=cols))
        out.append(f)
    return out


def params_hash(probe: Any) -> str:
    """A short hash of a probe's parameters: a resumed probe must have run with the same."""
    params = jsonable(dataclasses.asdict(probe))
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


class Partial:
    """The ``.partial`` folder of an unfinished run: one file per finished probe."""

    def __init__(self, out_dir: Path):
        self.root = out_dir / ".partial"

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def load_run(self) -> dict[str, Any] | None:
        p = self.root / "run.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def save_run(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.root / "run.json", json.dumps(jsonable(data), indent=1))

    def _probe_path(self, probe_id: str) -> Path:
        return self.root / "probes" / f"{probe_id}.json"

    def load_probe(self, probe_id: str, params_hash: str) -> tuple[ProbeStatus, list[Finding]] | None:
        try:
            data = json.loads(self._probe_path(probe_id).read_text(encoding="utf-8"))
            if data.get("params_hash") != params_hash:
                return None
            return _STATUS.validate_python(data["status"]), _decoded_units(_FINDINGS.validate_python(data["findings"]))
        except (OSError, ValueError, KeyError):
            return None

    def save_probe(self, probe_id: str, params_hash: str, status: ProbeStatus, findings: list[Finding]) -> None:
        data = {
            "params_hash": params_hash,
            "status": dataclasses.asdict(status),
            "findings": [dataclasses.asdict(f) for f in findings],
        }
        atomic_write_text(self._probe_path(probe_id), json.dumps(jsonable(data)))


def inputs_digest(spec: AuditSpec) -> dict[str, str]:
    """sha256 of each data input (a folder: of its files' names and contents), so that a
    resumed run can refuse inputs that changed since it was interrupted."""
    from audit.subjects.files import sha256_file

    out: dict[str, str] = {}
    for name, path in sorted(spec.data_paths().items()):
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
            out[name] = h.hexdigest()
        elif path.is_file():
            out[name] = sha256_file(path)
    return out


def check_inputs(spec: AuditSpec) -> None:
    """Fail before the (slow) model load when a named data input does not exist."""
    for name, path in spec.data_paths().items():
        if not path.exists():
            raise InputError(f"data input '{name}' not found: {path} (from the spec's `data.{name}`)")


def start_run(spec: AuditSpec, probes: Sequence[Any], out: Path, partial: Partial,
              resume: bool) -> tuple[dict[str, Any], Done]:
    """Create the output folder and the run record (or check the one being resumed); return it
    and the probes an interrupted run finished."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    from audit.outdir import set_aside_previous

    set_aside_previous(out)  # a killed run must not leave the last run's reports looking like its own
    fingerprint = spec.fingerprint()
    inputs = inputs_digest(spec)
    run_info = partial.load_run() if resume else None
    if run_info is not None and run_info.get("fingerprint") != fingerprint:
        raise InputError(
            f"{out}: the unfinished run there was made from a different spec (fingerprint "
            f"{run_info.get('fingerprint')} != {fingerprint}); run without --resume, or use another --out"
        )
    if run_info is not None and run_info.get("inputs") != inputs:
        changed = sorted(k for k in set(inputs) | set(run_info.get("inputs", {}))
                         if inputs.get(k) != run_info.get("inputs", {}).get(k))
        raise InputError(
            f"{out}: the data input(s) {', '.join(changed)} changed since the unfinished run; "
            f"its findings would not describe them. Run without --resume."
        )
    if run_info is None:
        partial.clear()
        run_info = {"run_id": uuid.uuid4().hex, "fingerprint": fingerprint, "inputs": inputs,
                    "created_at": AuditReport.__dataclass_fields__["created_at"].default_factory()}
        partial.save_run(run_info)
    done: Done = {}
    if resume:
        for variant in (None, *(v.name for v in spec.variants)):
            for pspec, probe in zip(spec.probes, probes):
                key = partial_key(pspec.id, variant)
                got = partial.load_probe(key, params_hash(probe))
                if got is not None:
                    done[key] = got
    return run_info, done
