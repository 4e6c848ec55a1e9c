"""The probe protocol, the context probes run in, and the registry of probes.

A probe is a small frozen dataclass of parameters with ``run(subject, ctx) -> list[Finding]``.
The first line of its docstring is its summary in ``genai-audit probes``; ``applies_to``
names the subject kinds it audits and ``requires`` the capabilities it calls, so a probe
that does not fit a subject is skipped with a reason instead of crashing.

Probes are found in three places: the built-in table ``probes.BUILTIN_PROBES`` (lazy
``"module:attr"`` entries, imported on first use), the ``genai_audit.probes`` entry-point
group of installed packages, and :func:`register` calls.

Example:
    >>> from dataclasses import dataclass
    >>> @register("example.constant", replace=True)
    ... @dataclass(frozen=True)
    ... class Constant:
    ...     '''Reports one constant (an example).'''
    ...     applies_to = ("text-generator",)
    ...     value: float = 1.0
    ...     def run(self, subject, ctx):
    ...         return [Finding(probe=self.id, metric="value", value=self.value, higher_is_better=True)]
    >>> build_probe("example.constant", {"value": 2.0}).value
    2.0
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import random
import sys
import typing
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import TypeAdapter, ValidationError

from audit.errors import InputError, SpecError
from audit.findings import Finding

__all__ = [
    "ENTRY_POINT_GROUP",
    "Probe",
    "ProbeContext",
    "ProbeInfo",
    "ParamCheck",
    "Registry",
    "build_probe",
    "did_you_mean",
    "probe_info",
    "register",
    "registry",
]

ENTRY_POINT_GROUP = "genai_audit.probes"
log = logging.getLogger("genai_audit")


@runtime_checkable
class Probe(Protocol):
    """What the runner needs of a probe (a frozen dataclass of its parameters)."""

    id: ClassVar[str]
    applies_to: ClassVar[tuple[str, ...]]

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]: ...


@dataclass
class ProbeContext:
    """What a probe gets from the runner besides the subject.

    Attributes:
        device: the torch device to compute on ("cuda" when there is one, unless the spec says).
        seed: the audit's seed; :meth:`rng` derives a generator per probe and purpose from it.
        data: the spec's named inputs, as paths resolved against the spec's folder.
        cache_dir: a folder for work that later runs can reuse.
        artefact_dir: a folder for this probe's files (plots, samples) referenced by evidence.
        batch_size: the spec's batch size, or None to let the probe choose.
        show_progress: whether to draw progress bars.
        rank / world_size: this process's place in a distributed run (1 process by default).
        dist: the :class:`audit.distributed.Distributed` helper probes shard and gather with
            (``ctx.dist.shard(n)``, ``ctx.dist.gather(values, indices)``); no-ops in one process.
        memo: the audit's memo of :meth:`shared` work, one dict for every probe on every
            variant of one audit (a context made by hand gets its own).
    """

    device: Any = "cpu"
    seed: int = 0
    data: Mapping[str, Path] = field(default_factory=dict)
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "genai-audit")
    artefact_dir: Path | None = None
    batch_size: int | None = None
    show_progress: bool = False
    logger: logging.Logger = field(default_factory=lambda: log)
    meter: Any = None
    rank: int = 0
    world_size: int = 1
    probe_id: str = ""
    dist: Any = None
    samples: Any = None  # an audit.samples.SampleBuffer, made on the first record_samples call
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from audit.distributed import Distributed

        if self.dist is None:
            # A context made by hand with rank/world_size uses the default process group.
            self.dist = Distributed(self.rank, self.world_size)
        else:
            self.rank, self.world_size = self.dist.rank, self.dist.world_size

    def rng(self, purpose: str = "") -> Any:
        """A ``torch.Generator`` seeded from the audit seed, the probe id and ``purpose``,
        so that adding a probe does not change the random draws of another."""
        import torch

        g = torch.Generator(device="cpu")
        g.manual_seed(self.child_seed(purpose))
        return g

    def child_seed(self, purpose: str = "") -> int:
        return (self.seed * 1_000_003 + zlib.crc32(f"{self.probe_id}:{purpose}".encode())) % (2**63)

    def shared(self, key: Any, make: Any) -> Any:
        """``make()``, computed once per audit under ``key`` and reused by every probe on every
        variant (the reference images' features, a parsed corpus): set-up that does not depend
        on the model under audit. A key must therefore not depend on the subject, or must
        include its identity (e.g. ``subject.identity.files``); it should name the probe's
        inputs (data name, path, parameters that change the result), e.g.
        ``("image-features", "inception", str(path), n)``.

        Example:
            >>> ctx = ProbeContext()
            >>> ctx.shared(("answer",), lambda: 42), ctx.shared(("answer",), lambda: 0)
            (42, 42)
        """
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def record_samples(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Keep per-sample records for ``DIR/samples.parquet`` (optional; see :mod:`audit.samples`).

        Each row is a mapping with any of ``item``, ``metric``, ``score``, ``label``,
        ``prediction``, ``fold``, ``seed``, ``slice`` (a mapping), ``text``, ``thumbnail``;
        other keys go to the ``extra`` column as JSON. Bounded per probe; under torchrun only
        rank 0's rows are written, so record rows after gathering them.

        Raises:
            ValueError: a malformed row (the message names the key).
        """
        from audit.samples import SampleBuffer

        if self.samples is None:
            self.samples = SampleBuffer(self.probe_id)
        self.samples.add(rows)

    def input_path(self, name: str) -> Path:
        """The path of the named data input, or an :class:`InputError` saying how to give it."""
        if name not in self.data:
            have = ", ".join(sorted(self.data)) or "none"
            raise InputError(
                f"{self.probe_id or 'probe'}: needs the data input '{name}'; add it to the spec "
                f"as `data: {{{name}: PATH}}` (inputs given: {have})"
            )
        path = Path(self.data[name])
        if not path.exists():
            raise InputError(f"{self.probe_id or 'probe'}: data input '{name}' not found: {path}")
        return path

    def progress(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = ""):
        """A tqdm progress bar (drawn only when ``show_progress`` and on rank 0)."""
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=desc or self.probe_id,
            disable=not self.show_progress or self.rank != 0,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def seed_everything(self) -> None:
        """Seed Python's, NumPy's and torch's global generators from the audit seed."""
        import numpy as np
        import torch

        s = self.child_seed("global")
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)


class ParamCheck:
    """The checks a probe's ``__post_init__`` shares with the others; every failure is a
    :class:`SpecError` worded ``"<probe id>: <param> must be <expected>, got <value>"``.

    Example:
        >>> @dataclass(frozen=True)
        ... class P:
        ...     id: ClassVar[str] = "example.p"
        ...     steps: int = 0
        >>> ParamCheck(P()).int_at_least("steps", 1)
        Traceback (most recent call last):
        audit.errors.SpecError: example.p: steps must be an integer >= 1, got 0
    """

    def __init__(self, params: Any) -> None:
        self.params = params

    def fail(self, name: str, expected: str) -> typing.NoReturn:
        from audit.yamlsafe import quote

        raise SpecError(f"{self.params.id}: {name} must be {expected}, got {quote(getattr(self.params, name))}")

    def upper_bounds(self) -> None:
        """Refuse counts whose memory or time would exhaust the machine (``n_resamples:
        1000000000000``): every integer parameter named in :data:`audit.limits.PARAM_LIMITS`,
        or in the probe's own ``param_limits`` (a class attribute that overrides it), must be
        at most its limit. :func:`build_probe` calls it, so it holds before any model loads."""
        from audit.limits import limits_for

        for name, limit in limits_for(self.params).items():
            value = getattr(self.params, name, None)
            if self.is_int(value) and value > limit:
                self.fail(name, f"an integer <= {limit:_} (more would exhaust memory or time; "
                                f"this bound is set in audit/limits.py)")

    @staticmethod
    def is_int(value: Any) -> bool:
        """An integer, and not a boolean (YAML's ``true`` is not a count)."""
        return isinstance(value, int) and not isinstance(value, bool)

    @staticmethod
    def is_num(value: Any) -> bool:
        """A real number, and not a boolean."""
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def int_at_least(self, name: str, low: int) -> None:
        value = getattr(self.params, name)
        if not self.is_int(value) or value < low:
            self.fail(name, f"an integer >= {low}")

    def data_name(self, example: str) -> None:
        """``params.data`` names a data input of the spec."""
        data = self.params.data
        if not isinstance(data, str) or not data.strip():
            self.fail("data", f"the name of a data input of the spec (e.g. '{example}')")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry:
    """Probe ids to probe classes, with lazy ``"module:attr"`` entries."""

    def __init__(self, group: str = ENTRY_POINT_GROUP):
        self._group = group
        self._entries: dict[str, type | str] = {}
        self._discovered = False

    def register(self, probe_id: str, obj: type | str | None = None, *, replace: bool = False):
        """Register a class (or a lazy ``"module:attr"``) under ``probe_id``; usable as decorator."""
        if not isinstance(probe_id, str) or not probe_id or " " in probe_id:
            raise ValueError(f"probe id must be a non-empty string without spaces, got {probe_id!r}")

        def add(target: type | str) -> type | str:
            if not replace and probe_id in self._entries and self._entries[probe_id] is not target:
                existing = self._entries[probe_id]
                # A lazy entry being resolved to the class it names is not a clash.
                if not (isinstance(existing, str) and isinstance(target, type)
                        and existing == f"{target.__module__}:{target.__qualname__}"):
                    raise ValueError(f"probe id {probe_id!r} is already registered ({existing!r})")
            if isinstance(target, type):
                target.id = probe_id  # type: ignore[attr-defined]
            self._entries[probe_id] = target
            return target

        return add if obj is None else add(obj)

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        try:
            from probes import BUILTIN_PROBES
        except ImportError:  # pragma: no cover - the probes package ships with audit
            BUILTIN_PROBES = {}
        for pid, target in BUILTIN_PROBES.items():
            self._entries.setdefault(pid, target)
        from importlib.metadata import entry_points

        for ep in entry_points(group=self._group):
            self._entries.setdefault(ep.name, ep.value)

    def ids(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __contains__(self, probe_id: object) -> bool:
        self._discover()
        return probe_id in self._entries

    def __len__(self) -> int:
        return len(self.ids())

    def get(self, probe_id: str) -> type:
        """The probe class for ``probe_id``; an unknown id raises SpecError with a suggestion."""
        self._discover()
        if probe_id not in self._entries:
            raise SpecError(
                f"unknown probe '{probe_id}'.{did_you_mean(probe_id, self._entries)} "
                f"Run `genai-audit probes` to list them."
            )
        target = self._entries[probe_id]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise SpecError(f"probe '{probe_id}' could not be loaded from {target!r}: {exc}") from exc
            if not dataclasses.is_dataclass(obj):
                raise SpecError(f"probe '{probe_id}' ({target}) is not a dataclass of parameters")
            obj.id = probe_id
            self._entries[probe_id] = obj
            target = obj
        return target


registry = Registry()
register = registry.register


@dataclass(frozen=True)
class ProbeInfo:
    id: str
    summary: str
    applies_to: tuple[str, ...]
    params: tuple[tuple[str, str, Any, str], ...]  # (name, type, default, help)
    requires: tuple[str, ...] = ()  # the subject capabilities it calls

    @property
    def generations_only(self) -> bool:
        """Whether the probe reads only generations (runs on ``source: generations`` too)."""
        return tuple(self.requires) == ("generate",)


def probe_info(probe_id: str) -> ProbeInfo:
    cls = registry.get(probe_id)
    doc = (cls.__doc__ or "").strip().splitlines()
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        tname = getattr(hints.get(f.name), "__name__", None) or str(hints.get(f.name, "")).replace("typing.", "")
        params.append((f.name, tname, default, f.metadata.get("help", "")))
    return ProbeInfo(
        id=probe_id,
        summary=doc[0] if doc else "",
        applies_to=tuple(getattr(cls, "applies_to", ())),
        params=tuple(params),
        requires=tuple(getattr(cls, "requires", ()) or ()),
    )


def build_probe(probe_id: str, params: Mapping[str, Any] | None = None, *, where: str = "") -> Any:
    """Make a probe from its id and parameters, validated by the probe's own dataclass.

    Unknown parameters get a "did you mean"; wrong types and out-of-range values raise
    :class:`SpecError` naming ``where`` (e.g. ``"audit.yaml: probes[0]"``) and the key.
    """
    prefix = f"{where}: " if where else ""
    try:
        cls = registry.get(probe_id)
    except SpecError as exc:
        raise SpecError(f"{prefix}{exc}") from None
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in params.items():
        if key not in fields:
            from audit.yamlsafe import cut, yaml_word_hint

            known = ", ".join(sorted(fields)) or "none"
            name = cut(key) if isinstance(key, str) else repr(key)
            raise SpecError(
                f"{prefix}params.{name}: unknown parameter for probe '{probe_id}'."
                f"{did_you_mean(name, fields)}{yaml_word_hint(key)} Its parameters are: {known}"
            )
        try:
            values[key] = _validate_param(hints[key], value)
        except ValidationError as exc:
            from audit.yamlsafe import quote, yaml_word_hint

            first = exc.errors()[0]
            hint = yaml_word_hint(value) if first["type"] == "string_type" else ""
            raise SpecError(
                f"{prefix}params.{key}: expected {_type_name(hints[key])}, got {quote(value)} ({first['msg']}){hint}"
            ) from None
    missing = [n for n, f in fields.items()
               if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise SpecError(f"{prefix}params: probe '{probe_id}' needs the parameter(s) {', '.join(missing)}")
    from audit.limits import limits_for

    for name, limit in limits_for(cls).items():  # before the probe's own checks, which may combine values
        if ParamCheck.is_int(values.get(name)) and values[name] > limit:
            raise SpecError(f"{prefix}{probe_id}: {name} must be an integer <= {limit:_} (more would exhaust "
                            f"memory or time; this bound is set in audit/limits.py), got {values[name]!r}")
    try:
        probe = cls(**values)
        ParamCheck(probe).upper_bounds()
        return probe
    except SpecError as exc:
        raise SpecError(f"{prefix}{exc}") from None
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{prefix}params: invalid parameters for probe '{probe_id}': {exc}") from None


def _validate_param(tp: Any, value: Any) -> Any:
    # Lax mode, so that YAML's ints fill float parameters (eps: 1) and lists fill tuples;
    # but a string is never read as a number or a boolean ("512", "yes"): that is a typo
    # in a spec more often than an intent.
    if isinstance(value, str) and tp in (int, float, bool):
        TypeAdapter(tp).validate_python(value, strict=True)  # raises a ValidationError
    if tp is bool and not isinstance(value, bool):
        TypeAdapter(tp).validate_python(value, strict=True)  # 1/0 are not booleans here
    if tp in (int, float) and isinstance(value, bool):
        TypeAdapter(tp).validate_python(value, strict=True)  # `max_length: true` is a typo
    return TypeAdapter(tp).validate_python(value)


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    return str(tp).replace("typing.", "")
