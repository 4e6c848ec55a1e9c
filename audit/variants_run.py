"""The runner's side of ``spec.variants``: which subjects an audit runs, in which order, and
what the report records about each.

An audit runs every probe on the subject itself (the *base*) and on every variant
(:class:`audit.spec.VariantSpec`: the subject's spec with some keys replaced), with the same
:class:`~audit.probe.ProbeContext` seed, data and batch size, so that the units the probes
score (documents, prompts, images, attack starts) are the same on every variant and the
deltas pair (:func:`audit.units.attach_deltas`).

Loop order: **variant-major**. The base runs all its probes, then each variant in spec
order runs all of them. Each subject is loaded once, lazily (:class:`LazySubject`, through the
same loader as the subject, so ``subject_loader`` of :func:`audit.runner.run_audit` serves the
variants too), and closed before the next one loads: one model is in memory at a time (a
135M-parameter model and four variants need one model's memory, not five) and there are
N + 1 loads, not N + 1 per probe. What a probe-major order would have shared across variants,
the reference data and its features, is shared through the audit's memo instead
(:meth:`audit.probe.ProbeContext.shared`), so nothing is computed twice either way.
:func:`order_findings` then puts the report's findings in probe-major order (each probe's base
findings, then each variant's).

Artefacts of a variant go to ``OUT/artefacts/<variant>/<probe id>`` (the base's to
``OUT/artefacts/<probe id>``). ``.partial`` keeps each (probe, variant) apart
(:func:`audit.resume.partial_key`), so a resumed run reuses what each variant finished.
Per-sample rows (``samples.parquet``) are recorded for the base only.
"""

from __future__ import annotations

import dataclasses
import gc
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from audit.errors import InputError, SpecError
from audit.findings import Finding, ProbeStatus, SubjectIdentity, VariantRecord
from audit.spec import BASE_VARIANT, AuditSpec, ProbeSpec, SubjectSpec, VariantSpec

__all__ = ["FOOTPRINT_PROBE", "FOOTPRINT_NOTE", "GGUF_NOTE", "LazySubject", "Target", "check_variants",
           "order_findings", "tag_findings", "targets", "variant_records", "with_default_footprint"]

_IDENTITY = TypeAdapter(SubjectIdentity)

#: The probe that measures each variant's cost; added to a spec with variants that lacks it.
FOOTPRINT_PROBE = "energy.footprint"
FOOTPRINT_NOTE = (f"{FOOTPRINT_PROBE} was added to the spec's probes (default parameters): a spec with variants "
                  "measures each variant's footprint")
GGUF_NOTE = ("GGUF: the quantization error is measured; the runtime memory of the quantized format is not "
             "(transformers dequantizes GGUF to float32)")


def _still_held(subject: Any) -> list[Any]:
    """Weak references to a closed subject and its model, to tell whether dropping them freed
    them (plain reference counting) or a cycle holds them (a collection is needed)."""
    import weakref

    refs = []
    for obj in (subject, getattr(subject, "model", None), getattr(subject, "module", None)):
        if obj is None:
            continue
        try:
            refs.append(weakref.ref(obj))
        except TypeError:  # not weak-referenceable: collect to be safe
            refs.append(lambda: True)
    return refs


@dataclasses.dataclass(frozen=True)
class Target:
    """One subject the audit runs: the base (``name`` None) or a variant."""

    subject: SubjectSpec
    variant: VariantSpec | None = None
    index: int = -1  # the variant's position in spec.variants

    @property
    def name(self) -> str | None:
        return None if self.variant is None else self.variant.name

    @property
    def label(self) -> str:
        """How messages and tables name it (``base`` for the subject itself)."""
        return self.name or BASE_VARIANT

    @property
    def where(self) -> str:
        """The spec key it comes from, for error messages."""
        return "subject" if self.variant is None else f"variants[{self.index}] ('{self.name}')"

    def artefacts(self, probe_id: str) -> Path:
        """The artefact folder of ``probe_id`` on this subject, relative to the output folder."""
        return Path("artefacts", probe_id) if self.name is None else Path("artefacts", self.name, probe_id)


def targets(spec: AuditSpec) -> list[Target]:
    """The base, then every variant in spec order."""
    return [Target(spec.subject), *(Target(v.apply(spec.subject), v, i) for i, v in enumerate(spec.variants))]


def with_default_footprint(spec: AuditSpec) -> tuple[AuditSpec, bool]:
    """``spec`` with :data:`FOOTPRINT_PROBE` appended (default parameters) when it has variants,
    does not list the probe, and the probe is registered; and whether it was appended."""
    from audit.probe import registry

    if not spec.variants or any(p.id == FOOTPRINT_PROBE for p in spec.probes) or FOOTPRINT_PROBE not in registry:
        return spec, False
    return spec.model_copy(update={"probes": (*spec.probes, ProbeSpec(id=FOOTPRINT_PROBE))}), True


def check_variants(spec: AuditSpec, device: Any) -> None:
    """What can be refused before any model loads (exit 2): a quantization the device or the
    subject cannot take, an adapter trained on another base model.

    Raises:
        SpecError / InputError / MissingDependencyError: the message names the variant.
    """
    from audit.subjects.quantize import check_quantization

    for t in targets(spec):
        s = t.subject
        dev = s.device or device
        try:
            if s.quantization is not None:
                check_quantization(s.quantization, kind=s.kind, source=s.source, device=dev)
            if t.variant is not None and s.adapter is not None and s.source in ("hf", "gguf"):
                _check_adapter_base(s, Path(spec.base_dir))
        except (SpecError, InputError) as exc:
            raise type(exc)(f"{t.where}: {exc}") from None


def _check_adapter_base(s: SubjectSpec, base_dir: Path) -> None:
    """The adapter's ``base_model_name_or_path`` names the variant's model (hf/gguf, whose path
    names the model); :func:`audit.subjects.adapters.apply_adapter` checks it again at load."""
    import json

    from audit.subjects.adapters import adapter_base_matches

    p = Path(s.adapter).expanduser()
    config = (p if p.is_absolute() else base_dir / p) / "adapter_config.json"
    try:
        base = str(json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
    except (OSError, ValueError, AttributeError):
        return  # a missing or unreadable folder is reported, with its reason, when it loads
    if base and Path(base).expanduser().exists():
        return  # a local folder (e.g. a converted GGUF): the load-time check compares it with the model's own path
    if base and not adapter_base_matches(base, [s.path, s.name or ""]):
        raise InputError(f"the adapter {config.parent} was trained on '{base}', but the subject is '{s.path}'; "
                         f"apply an adapter to the base model it was trained on")


class LazySubject:
    """One target's subject, loaded on first use (a run whose probes are all reused from an
    unfinished run never loads it) and released by :meth:`close`."""

    def __init__(self, run: Any, target: Target, loader: Callable[..., Any] | None, timings: dict[str, float]):
        self._run = run
        self._target = target
        self._loader = loader
        self._timings = timings
        self._subject: Any = None
        saved = self._saved()
        self.identity = _IDENTITY.validate_python(saved) if saved is not None else None

    def _saved(self) -> Any:
        info = self._run.run_info
        return info.get("subject") if self._target.name is None else info.get("variants", {}).get(self._target.name)

    def get(self) -> Any:
        if self._subject is not None:
            return self._subject
        run, t, sspec = self._run, self._target, self._target.subject
        t0 = time.perf_counter()
        extra = f" [{t.name}]" if t.name else ""
        run.say(f"loading {sspec.kind}{extra} from {sspec.source}: {sspec.path}")
        loader = self._loader
        if loader is None:
            from audit.subjects.loading import load_subject as loader
        try:
            self._subject = loader(sspec, base_dir=Path(run.spec.base_dir), device=str(run.device),
                                   cache_dir=run.cache)
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused it: input, not a bug
            raise InputError(f"{t.where}: {sspec.path!r}: a pickled weights file was refused by the safe "
                             f"loader (it holds objects other than tensors, which could run code): "
                             f"{str(exc).splitlines()[0][:200]}. Convert the weights to safetensors.") from None
        except (SpecError, InputError) as exc:
            if t.name is None:
                raise
            raise type(exc)(f"{t.where}: {exc}") from None
        self._timings["load_subject_s" + (f":{t.name}" if t.name else "")] = time.perf_counter() - t0
        if self.identity is not None and self.identity.files != self._subject.identity.files:
            # Resumed findings were measured on other weights: mixing them would misreport.
            raise InputError(f"{run.out}: the model's weight files changed since the unfinished run ({t.label}: "
                             f"sha256 differs); run without --resume")
        self.identity = self._subject.identity
        if run.main:
            if t.name is None:
                run.run_info["subject"] = dataclasses.asdict(self.identity)
            else:
                run.run_info.setdefault("variants", {})[t.name] = dataclasses.asdict(self.identity)
            run.partial.save_run(run.run_info)
        return self._subject

    def close(self) -> None:
        if self._subject is not None:
            subject, self._subject = self._subject, None
            subject.close()
            held = _still_held(subject)
            del subject
            # The next variant loads next: free this one's memory first. A full collection costs
            # ~0.2-0.4 s in a process with torch and transformers imported (bench/bench_variants.py),
            # so it runs only when a reference cycle keeps the subject or its model alive.
            if any(ref() is not None for ref in held):
                gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover
                pass


def tag_findings(findings: Sequence[Finding], target: Target) -> list[Finding]:
    """The findings of a probe run on ``target``, each naming its variant."""
    if target.name is None:
        return list(findings)
    return [dataclasses.replace(f, variant=target.name) for f in findings]


def order_findings(findings: Sequence[Finding], spec: AuditSpec) -> list[Finding]:
    """Probe-major order: each probe's findings on the base, then on each variant (stable)."""
    probe_pos = {p.id: i for i, p in enumerate(spec.probes)}
    variant_pos = {v.name: i + 1 for i, v in enumerate(spec.variants)}

    def key(f: Finding) -> tuple[int, int]:
        return probe_pos.get(f.probe, len(probe_pos)), 0 if f.variant is None else variant_pos.get(f.variant, 0)

    return sorted(findings, key=key)


def variant_notes(target: Target, identity: SubjectIdentity | None, *, added_footprint: bool) -> tuple[str, ...]:
    """What a reader of the variant's findings must know about how it was measured."""
    s, notes = target.subject, []
    if s.source == "gguf":
        notes.append(GGUF_NOTE)
    details = identity.details if identity is not None else {}
    if details.get("gradients"):
        notes.append(f"gradients: {details['gradients']}")
    if s.quantization == "int8-dynamic":
        notes.append("int8-dynamic: torch dynamic quantization of the Linear layers (weights int8, activations "
                     "quantized per batch), on the CPU")
    elif s.quantization in ("bnb-8bit", "bnb-nf4"):
        notes.append(f"{s.quantization}: bitsandbytes quantization at load (transformers BitsAndBytesConfig)")
    if added_footprint:
        notes.append(FOOTPRINT_NOTE)
    return tuple(notes)


def variant_records(spec: AuditSpec, statuses: dict[str, dict[str, ProbeStatus]],
                    identities: dict[str | None, SubjectIdentity | None], *,
                    added_footprint: bool) -> tuple[VariantRecord, ...]:
    """One record per variant, in spec order: its identity, overrides, probe statuses, notes."""
    out = []
    for t in targets(spec)[1:]:
        ident = identities.get(t.name) or SubjectIdentity(
            name=t.subject.name or t.subject.path, kind=t.subject.kind, source=t.subject.source,
            path=t.subject.path, details={"loaded": False})
        out.append(VariantRecord(name=t.label, subject=ident, overrides=t.variant.overrides(),
                                 probes=dict(statuses.get(t.label, {})),
                                 notes=variant_notes(t, identities.get(t.name), added_footprint=added_footprint)))
    return tuple(out)
