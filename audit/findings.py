"""Finding and AuditReport records, and the versioned JSON form of a report.

A report round-trips exactly: ``AuditReport.from_json(r.to_json()).to_json() == r.to_json()``.
Non-finite floats (a metric that could not be computed is ``nan`` with a warning) are
written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` so that the file stays
standard JSON that browsers and ``jq`` read.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

from audit.errors import ReportError

SCHEMA_VERSION = "1.1"
"""Major.minor. Readers accept any report with the same major version."""

__all__ = [
    "SCHEMA_VERSION",
    "AuditReport",
    "Delta",
    "FileHash",
    "Finding",
    "GateResult",
    "Interval",
    "ProbeStatus",
    "SubjectIdentity",
    "Units",
    "VariantRecord",
    "atomic_write_text",
    "format_slice",
    "json_schema",
    "jsonable",
]


@dataclass(frozen=True, slots=True)
class Interval:
    """A confidence interval: ``low`` and ``high`` bounds and the ``method`` that made it
    (e.g. ``"bootstrap-percentile-95"``, ``"wilson-95"``)."""

    low: float
    high: float
    method: str

    def __post_init__(self) -> None:
        # Coerce so that an int bound written by a probe serialises like the float it reads back as.
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True, slots=True)
class Units:
    """The per-unit values behind a finding (documents, images, pairs), so that the same
    finding on a variant can be compared with the base's by a *paired* bootstrap over the
    units both saw (:mod:`audit.units`).

    ``statistic`` names a function in :data:`audit.units.STATISTICS` that computes the
    finding's value from ``columns`` weighted by how often each unit is drawn (``"mean"``,
    ``"ratio"``, ``"exp_ratio"``, ``"auroc"``, ...). ``ids`` name the units in the same
    order as every column; two findings pair on equal ids. Units stay in memory and in the
    ``.partial`` record of a run (so a resumed run still pairs); ``report.json`` keeps only
    the deltas made from them.
    """

    statistic: str
    ids: tuple[str, ...]
    columns: Mapping[str, tuple[Any, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        cols = {str(k): tuple(v) for k, v in self.columns.items()}
        bad = [k for k, v in cols.items() if len(v) != len(self.ids)]
        if bad:
            raise ValueError(f"Units: column(s) {bad} do not have one value per id ({len(self.ids)} ids)")
        object.__setattr__(self, "columns", cols)


@dataclass(frozen=True, slots=True)
class Delta:
    """A variant's finding against the same finding of the base subject.

    ``value`` is variant minus base; ``relative`` is that over ``|base_value|`` (None when the
    base is 0 or not finite). ``ci``/``ci_relative`` come from a paired bootstrap over the
    units both findings saw when ``paired`` (``n_pairs`` of them), else from two independent
    resamplings (the method says which), or are None when neither finding had units.
    """

    base_value: float
    value: float
    relative: float | None = None
    ci: Interval | None = None
    ci_relative: Interval | None = None
    paired: bool = False
    n_pairs: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_value", float(self.base_value))
        object.__setattr__(self, "value", float(self.value))
        if self.relative is not None:
            object.__setattr__(self, "relative", float(self.relative))


@dataclass(frozen=True, slots=True)
class Finding:
    """One measured number: what was measured, on which slice, how sure we are of it.

    Example:
        >>> f = Finding(probe="quality.perplexity", metric="perplexity", value=12.5,
        ...             higher_is_better=False, n=20)
        >>> f.key
        'quality.perplexity/perplexity'
    """

    probe: str
    metric: str
    value: float
    higher_is_better: bool
    unit: str = ""
    ci: Interval | None = None
    n: int | None = None
    slice: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: The variant of the subject this was measured on (``spec.variants``); None for the subject itself.
    variant: str | None = None
    #: Against the subject itself (variants' findings only, once the audit has run them all).
    delta: Delta | None = None
    #: Per-unit values for paired deltas; not written to ``report.json`` (see :class:`Units`).
    units: Units | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "slice", {str(k): str(v) for k, v in self.slice.items()})
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def key(self) -> str:
        """``probe/metric`` plus ``[k=v,...]`` for a slice; the name gates use."""
        return f"{self.probe}/{self.metric}{format_slice(self.slice)}"


def format_slice(slice_: Mapping[str, str]) -> str:
    if not slice_:
        return ""
    return "[" + ",".join(f"{k}={slice_[k]}" for k in sorted(slice_)) + "]"


@dataclass(frozen=True, slots=True)
class GateResult:
    """The verdict of one gate. ``status`` is ``passed``, ``failed`` or ``skipped``
    (a skipped gate, e.g. a regression gate run without a baseline, does not fail CI)."""

    metric: str
    passed: bool
    message: str
    status: Literal["passed", "failed", "skipped"] = "passed"
    value: float | None = None
    bound: float | None = None
    gate: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("value", "bound"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, float(v))


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    """What happened to one probe: ``ok``, ``failed`` (with the error) or ``skipped``
    (with the reason), with its wall time and energy."""

    status: Literal["ok", "failed", "skipped"]
    error: str | None = None
    #: ``input`` when the probe failed on invalid input (exit 2), ``crash`` for any other error (exit 3).
    error_kind: Literal["input", "crash"] | None = None
    traceback: str | None = None
    reason: str | None = None
    wall_s: float | None = None
    energy: Mapping[str, Any] = field(default_factory=dict)
    n_findings: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FileHash:
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True, slots=True)
class SubjectIdentity:
    """Which model was audited: enough to tell two releases apart."""

    name: str
    kind: str
    source: str
    path: str = ""
    revision: str | None = None
    files: tuple[FileHash, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VariantRecord:
    """One variant of the subject (``spec.variants``): what it overrides, which weights it
    is (hashed like the subject), and what happened to each probe on it."""

    name: str
    subject: SubjectIdentity
    overrides: Mapping[str, Any] = field(default_factory=dict)
    probes: Mapping[str, ProbeStatus] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Everything one audit produced. Serialised as ``report.json``."""

    name: str
    subject: SubjectIdentity
    findings: tuple[Finding, ...] = ()
    gates: tuple[GateResult, ...] = ()
    probes: Mapping[str, ProbeStatus] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    energy: Mapping[str, Any] = field(default_factory=dict)
    #: The variants audited beside the subject, in spec order (their findings carry ``variant``).
    variants: tuple[VariantRecord, ...] = ()
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=_now)
    schema_version: str = SCHEMA_VERSION

    # -- derived views -------------------------------------------------------------------
    @property
    def status(self) -> Literal["passed", "failed", "invalid", "crashed"]:
        """``crashed`` if a probe crashed, ``invalid`` if a probe failed on invalid input,
        else ``failed`` if a gate failed, else ``passed`` (the order of :attr:`exit_code`)."""
        failed = [p for p in self.all_statuses() if p.status == "failed"]
        if any(p.error_kind != "input" for p in failed):
            return "crashed"
        if failed or self.nothing_measured:
            return "invalid"
        if any(g.status == "failed" for g in self.gates):
            return "failed"
        return "passed"

    @property
    def nothing_measured(self) -> bool:
        """Every probe was skipped as not applicable, and the spec did not allow that
        (``settings.allow_empty``): an audit that measured nothing must not pass."""
        if not self.probes or any(p.status != "skipped" for p in self.probes.values()):
            return False
        settings = self.spec.get("settings") if isinstance(self.spec, Mapping) else None
        return not (isinstance(settings, Mapping) and settings.get("allow_empty") is True)

    @property
    def exit_code(self) -> int:
        """The exit code of ``genai-audit run``/``check`` for this report (see audit.errors)."""
        failed = [p for p in self.all_statuses() if p.status == "failed"]
        if any(p.error_kind != "input" for p in failed):
            return 3
        if failed or self.nothing_measured:
            return 2
        if any(g.status == "failed" for g in self.gates):
            return 1
        return 0

    def all_statuses(self) -> list[ProbeStatus]:
        """Every probe status: the subject's and each variant's."""
        return [*self.probes.values(), *(s for v in self.variants for s in v.probes.values())]

    def finding(self, key: str, variant: str | None = None) -> Finding | None:
        """The finding named ``probe/metric[k=v]`` (of ``variant``, None for the subject), or None."""
        for f in self.findings:
            if f.key == key and f.variant == variant:
                return f
        return None

    def with_gates(self, gates: tuple[GateResult, ...]) -> AuditReport:
        return replace(self, gates=tuple(gates))

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # Per-unit values stay out of the file (they can be large; the deltas made from them stay).
        lean = replace(self, findings=tuple(f if f.units is None else replace(f, units=None) for f in self.findings))
        data = asdict(lean)
        for f in data["findings"]:
            f.pop("units", None)
        return _encode(data)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<report>") -> AuditReport:
        if not isinstance(data, Mapping):
            raise ReportError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
        version = data.get("schema_version")
        if not isinstance(version, str) or version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ReportError(
                f"{source}: schema_version {version!r} is not supported; this genai-audit "
                f"reads version {SCHEMA_VERSION.split('.')[0]}.x reports"
            )
        try:
            return _REPORT_ADAPTER.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ReportError(
                f"{source}: not a valid genai-audit report: {where}: {first['msg']}"
                + (f" ({exc.error_count() - 1} more errors)" if exc.error_count() > 1 else "")
            ) from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "<report>") -> AuditReport:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{source}: not valid JSON: {exc}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuditReport:
        p = Path(path)
        if p.is_dir():
            hint = f" (did you mean {p / 'report.json'}?)" if (p / "report.json").is_file() else ""
            raise ReportError(f"{p}: is a folder; expected a report.json file{hint}")
        if not p.is_file():
            raise ReportError(f"report file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"{p}: cannot read the report: {exc}") from None
        return cls.from_json(text, source=str(p))

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_json() + "\n")


# Unknown keys are an error on load: a typo in a hand-edited baseline must not pass silently.
for _cls in (Interval, Units, Delta, Finding, GateResult, ProbeStatus, FileHash, SubjectIdentity, VariantRecord,
             AuditReport):
    _cls.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
_REPORT_ADAPTER = TypeAdapter(AuditReport)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` (for other tools; loading validates with it)."""
    schema = TypeAdapter(AuditReport).json_schema(mode="serialization")
    schema["$id"] = f"https://genai-audit.dev/schema/report-{SCHEMA_VERSION}.json"
    schema["title"] = "genai-audit report"
    return schema


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings, ready for strict JSON (see module doc)."""
    return _encode(obj)


def _encode(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half.

    The text goes to a temporary file in the same folder, is flushed to disk, and replaces
    the target with :func:`os.replace` (atomic on POSIX and Windows).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (reports are read
        # by CI uploaders and dashboards running as other users).
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p
