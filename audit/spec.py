"""The audit spec: YAML or JSON in, a validated and frozen :class:`AuditSpec` out.

Errors name the file, the key, what was expected and what was found, e.g.::

    audit.yaml: probes[0].params.max_length: expected an integer, got 'long'

Example:
    >>> spec = AuditSpec.model_validate({
    ...     "name": "demo", "subject": {"kind": "text-generator", "source": "hf", "path": "gpt2"},
    ...     "probes": [{"id": "quality.perplexity", "params": {"max_length": 256, "stride": 128}}]})
    >>> spec.probes[0].id
    'quality.perplexity'
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from audit.errors import SpecError
from audit.probe import build_probe, did_you_mean
from audit.yamlsafe import SpecLoader, cut, quote, yaml_word_hint

__all__ = [
    "QUANTIZATIONS", "AuditSpec", "GateSpec", "ProbeSpec", "Settings", "SubjectSpec", "VariantSpec", "load_spec",
    "parse_metric_ref", "spec_fingerprint",
]

#: The largest spec file read (a spec names its inputs; it does not hold them).
MAX_SPEC_BYTES = 10 * 1024 * 1024
SUBJECT_KINDS = ("text-generator", "image-generator", "classifier", "encoder")
#: Quantizations a subject or variant may ask for: torch's dynamic int8 (CPU), bitsandbytes (CUDA).
QUANTIZATIONS = ("int8-dynamic", "bnb-8bit", "bnb-nf4")
#: The name the report gives the subject itself beside its variants (a variant may not take it).
BASE_VARIANT = "base"
_VARIANT_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_METRIC_RE = re.compile(r"^(?P<probe>[\w.\-]+)/(?P<metric>[\w.\-]+)(?:\[(?P<slice>[^\]]+)\])?$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SubjectSpec(_Frozen):
    """The model under audit."""

    kind: Literal["text-generator", "image-generator", "classifier", "encoder"]
    source: str = Field(description="hf | gguf | python | ... (which loader reads `path`)")
    path: str = Field(description="hub id, directory, file, or 'module:callable'")
    name: str | None = Field(default=None, description="display name (default: derived from path)")
    revision: str | None = Field(default=None, description="hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1 (default: cuda if present)")
    trust_remote_code: bool = Field(default=False, description="run code from the model repo (unsafe)")
    allow_pickle: bool = Field(default=False, description="load pickled weights (unsafe)")
    options: dict[str, Any] = Field(default_factory=dict, description="source-specific options")
    chat_template: bool | Literal["auto"] = Field(
        default=False, description="text generators: wrap prompts in the tokenizer's chat template for the "
        "generating probes (true, false, or auto: when the tokenizer has one); perplexity reads raw text")
    adapter: str | None = Field(default=None, description="a peft adapter folder (LoRA, ...) applied on top, "
                                "relative to the spec (text-generator)")
    merge: bool = Field(default=False, description="merge the adapter into the base weights after loading")
    quantization: Literal["int8-dynamic", "bnb-8bit", "bnb-nf4"] | None = Field(
        default=None, description="int8-dynamic (torch dynamic int8 of the Linear layers, CPU), bnb-8bit or "
        "bnb-nf4 (bitsandbytes, CUDA only)")

    @model_validator(mode="after")
    def _chat_template_kind(self) -> SubjectSpec:
        if self.chat_template is not False and self.kind != "text-generator":
            raise ValueError(f"chat_template applies to text-generator subjects; this subject is a {self.kind}")
        return self

    @model_validator(mode="after")
    def _merge_needs_adapter(self) -> SubjectSpec:
        if self.merge and self.adapter is None:
            raise ValueError("merge: true needs an adapter (subject.adapter: PATH of a peft adapter folder)")
        return self


class VariantSpec(_Frozen):
    """A named variant of the subject: the subject's spec with these keys replaced (a fine-tune's
    adapter, a quantization, another dtype, another weights file, a GGUF export). Every probe runs
    on every variant with the same inputs and seeds; each finding gets a paired delta to the base.
    """

    name: str = Field(pattern=_VARIANT_NAME_RE, description="how the report names the variant")
    source: str | None = None
    path: str | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None
    adapter: str | None = None
    merge: bool | None = None
    quantization: Literal["int8-dynamic", "bnb-8bit", "bnb-nf4"] | None = None
    weights: str | None = Field(default=None, description="another weights file (sets subject.options.weights)")
    options: dict[str, Any] = Field(default_factory=dict, description="merged into subject.options")

    @model_validator(mode="after")
    def _not_base(self) -> VariantSpec:
        if self.name == BASE_VARIANT:
            raise ValueError(f"variant name '{BASE_VARIANT}' is the subject itself; choose another name")
        if self.source is not None and self.path is None:
            raise ValueError(f"variant '{self.name}': a new source needs its path")
        return self

    def overrides(self) -> dict[str, Any]:
        """The subject keys this variant sets (what the report records)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k != "name" and k in self.model_fields_set}

    def apply(self, subject: SubjectSpec) -> SubjectSpec:
        """The subject spec of this variant (validated like the subject)."""
        data = subject.model_dump()
        given = self.overrides()
        options = {**data.get("options", {}), **given.pop("options", {})}
        if "weights" in given:
            options["weights"] = given.pop("weights")
        data.update(given)
        data["options"] = options
        data["name"] = f"{subject.name or subject.path} [{self.name}]"
        return SubjectSpec.model_validate(data)


class ProbeSpec(_Frozen):
    id: str
    params: dict[str, Any] = Field(default_factory=dict)


class GateSpec(_Frozen):
    """A bound on a metric (``min``/``max`` on the value or a side of its interval), or a
    regression limit against a baseline report (``max_drop``/``max_rise``)."""

    metric: str
    # A NaN bound compares false with everything, so a gate with one could never fail.
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)
    use: Literal["value", "ci_low", "ci_high"] = "value"
    max_drop: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_rise: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    variant: str | None = Field(default=None, description="the variant whose finding is gated (default: the subject)")
    max_delta: float | None = Field(
        default=None, ge=0, allow_inf_nan=False,
        description="the most the variant may be worse than the subject (needs variant; relative: a fraction)")
    relative: bool = Field(default=False, description="max_drop/max_rise/max_delta as a fraction of the reference")
    significant_only: bool = Field(
        default=False, description="fail a regression only when the intervals do not overlap"
    )
    name: str | None = None

    @field_validator("metric")
    @classmethod
    def _metric_ref(cls, v: str) -> str:
        parse_metric_ref(v)
        return v

    @model_validator(mode="after")
    def _has_bound(self) -> GateSpec:
        if all(b is None for b in (self.min, self.max, self.max_drop, self.max_rise, self.max_delta)):
            raise ValueError("a gate needs at least one of min, max, max_drop, max_rise or max_delta")
        if self.max_delta is not None and self.variant is None:
            raise ValueError("max_delta compares a variant with the subject: name the variant (variant: NAME)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def is_regression(self) -> bool:
        return self.max_drop is not None or self.max_rise is not None

    @property
    def label(self) -> str:
        return self.name or self.metric


class EmissionsSettings(_Frozen):
    """How the audit's energy becomes gCO2e: a grid intensity (an ISO country code looked up in
    the offline table of :mod:`audit.energy.emissions`, or a value with its source) and the PUE."""

    country: str | None = Field(default=None, description="ISO 3166 code, e.g. FR or FRA (offline table)")
    g_per_kwh: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                    description="grid intensity, gCO2e/kWh (instead of country)")
    source: str | None = Field(default=None, description="where g_per_kwh comes from (stated in the report)")
    pue: float = Field(default=1.0, ge=1.0, allow_inf_nan=False,
                       description="power usage effectiveness of the facility (>= 1)")

    @model_validator(mode="after")
    def _one_intensity(self) -> EmissionsSettings:
        if self.country is None and self.g_per_kwh is None:
            raise ValueError("give a country code (offline grid-intensity table) or g_per_kwh")
        try:  # build it now: a bad value must stop the audit before any probe runs
            self.factor()
        except KeyError as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise ValueError(msg.replace("grid_intensity_g_per_kwh", "g_per_kwh")) from None
        return self

    def factor(self) -> Any:
        """The :class:`audit.energy.emissions.EmissionsFactor` these settings describe."""
        from audit.energy.emissions import emissions_factor

        return emissions_factor(country=self.country, g_per_kwh=self.g_per_kwh, source=self.source, pue=self.pue)


class TradeoffSettings(_Frozen):
    """Which findings the quality-versus-cost chart of a report with variants plots (each
    ``probe/metric``, unsliced); unset keys are chosen by :func:`audit.variant_view.quality_cost`."""

    quality: str | None = Field(default=None, description="e.g. quality.perplexity/perplexity")
    cost: str | None = Field(default=None, description="e.g. energy.footprint/weight_bytes_memory")

    @field_validator("quality", "cost")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is not None:
            parse_metric_ref(v)
        return v


class Settings(_Frozen):
    seed: int = 0
    device: str = Field(default="auto", description="auto (cuda if present), cpu, cuda, cuda:N")
    batch_size: int | None = Field(default=None, gt=0)
    progress: bool = True
    threads: int | None = Field(default=None, gt=0, description="torch intra-op threads for the audit "
                                "(torch.set_num_threads; default: torch's own), recorded in the report")
    emissions: EmissionsSettings | None = Field(
        default=None, description="grid intensity and PUE: the report states the audit's gCO2e")
    allow_empty: bool = Field(
        default=False, description="accept an audit in which every probe was skipped (else exit 2)")
    confine_paths: bool = Field(
        default=False, description="refuse data, model and code paths outside the spec's folder")
    tradeoff: TradeoffSettings | None = Field(
        default=None, description="quality and cost of the quality-versus-cost chart (reports with variants)")


class AuditSpec(_Frozen):
    """A whole audit: what to audit, with which inputs and probes, and what must hold."""

    name: str = Field(min_length=1)
    subject: SubjectSpec
    data: dict[str, str] = Field(default_factory=dict)
    probes: tuple[ProbeSpec, ...] = Field(min_length=1)
    gates: tuple[GateSpec, ...] = ()
    settings: Settings = Field(default_factory=Settings)
    variants: tuple[VariantSpec, ...] = ()
    # The spec file's folder: relative paths are resolved against it. Not a key of the file.
    _base_dir: str = PrivateAttr(default=".")

    @property
    def base_dir(self) -> str:
        return self._base_dir

    @model_validator(mode="after")
    def _cross_checks(self) -> AuditSpec:
        seen: set[str] = set()
        for i, p in enumerate(self.probes):
            if p.id in seen:
                raise ValueError(f"probes[{i}]: probe '{p.id}' is listed twice")
            seen.add(p.id)
        names = [v.name for v in self.variants]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"variants[{i}]: variant name '{name}' is used twice")
        for i, v in enumerate(self.variants):
            try:
                v.apply(self.subject)
            except ValidationError as exc:
                raise ValueError(f"variants[{i}] ('{v.name}'): {exc.errors()[0]['msg']}") from None
        for i, g in enumerate(self.gates):
            if g.variant is not None and g.variant not in names:
                known = ", ".join(names) or "none"
                raise ValueError(f"gates[{i}].variant: '{g.variant}' is not a variant of this spec (variants: "
                                 f"{known}).{did_you_mean(g.variant, names)}")
            probe = parse_metric_ref(g.metric)[0]
            if probe not in seen:
                raise ValueError(
                    f"gates[{i}].metric: '{g.metric}' names probe '{probe}', which this spec does not run."
                    f"{did_you_mean(probe, seen)}"
                )
        return self

    def resolve(self, path: str) -> Path:
        """A path from the spec, relative to the spec's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)

    def data_paths(self) -> dict[str, Path]:
        return {k: self.resolve(v) for k, v in self.data.items()}

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """A hash of what determines the results (not the name or the gates)."""
        return spec_fingerprint(self.as_dict())

    def build_probes(self, *, source: str = "spec") -> list[Any]:
        return [build_probe(p.id, p.params, where=f"{source}: probes[{i}]") for i, p in enumerate(self.probes)]


def parse_metric_ref(ref: str) -> tuple[str, str, dict[str, str]]:
    """``"probe/metric[k=v,...]"`` -> (probe, metric, slice)."""
    m = _METRIC_RE.match(ref.strip())
    if not m:
        raise ValueError(f"expected 'probe/metric' or 'probe/metric[key=value]', got {ref!r}")
    slice_: dict[str, str] = {}
    if m.group("slice"):
        for part in m.group("slice").split(","):
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                raise ValueError(f"slice part {part!r} in {ref!r} is not key=value")
            slice_[k.strip()] = v.strip()
    return m.group("probe"), m.group("metric"), slice_


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = loc[:-1]
            field_names = _fields_at(parent)
            msg = f"unknown key.{did_you_mean(str(loc[-1]), field_names)}"
            if field_names:
                msg += f" Expected one of: {', '.join(field_names)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg}, got {quote(err['input'])}"
            if err["type"] == "string_type":
                msg += yaml_word_hint(err["input"])
        lines.append(f"{source}: {_loc(loc)}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: Any = AuditSpec
    for part in loc:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if f is None:
            return []
        ann = f.annotation
        inner = getattr(ann, "__args__", None)
        model = next((a for a in (inner or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields) if model is not None else []


def load_spec(path: str | Path) -> AuditSpec:
    """Read, validate and freeze an audit spec; probe parameters are checked by each probe."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file not found: {p}")
    if p.is_dir():
        raise SpecError(f"{p}: is a folder; expected a YAML or JSON spec file")
    if p.is_file() and p.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{p}: {p.stat().st_size:_} bytes; a spec is at most {MAX_SPEC_BYTES:_} bytes "
                        "(put large inputs in data files and name them under `data:`)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read: {exc.strerror}") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except RecursionError:
            raise SpecError(f"{p}: invalid JSON: nested too deeply to read") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{p}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    else:
        try:
            data = yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass
        except RecursionError:
            raise SpecError(f"{p}: invalid YAML: nested too deeply to read") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError(f"{p}: invalid YAML{where}: {cut(problem, 500)}") from None
    return spec_from_dict(data, source=str(p), base_dir=p.parent)


def spec_from_dict(data: Any, *, source: str = "<spec>", base_dir: str | Path = ".") -> AuditSpec:
    """Validate ``data`` (a parsed spec) into an :class:`AuditSpec`.

    Every problem found is listed in one :class:`SpecError`, one line each: unknown probe
    ids, the spec's own keys, and each known probe's parameters. Only the errors that follow
    from an unknown probe id (a gate naming it) are left out.
    """
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        raise SpecError(f"{source}: expected a mapping with name, subject and probes at the top level, got {got}")
    from audit.probe import registry

    errors: list[str] = []
    unknown: set[str] = set()
    probes = data.get("probes")
    raw_probes = probes if isinstance(probes, list) else []
    for i, p in enumerate(raw_probes):
        pid = p.get("id") if isinstance(p, dict) else None
        if isinstance(pid, str) and pid not in registry:
            unknown.add(pid)
            errors.append(f"{source}: probes[{i}].id: unknown probe {quote(pid)}."
                          f"{did_you_mean(pid, registry.ids())} Run `genai-audit probes` to list them.")
    spec: AuditSpec | None = None
    try:
        spec = AuditSpec.model_validate(data)
    except ValidationError as exc:
        lines = _format_validation_error(source, exc).splitlines()
        # A gate naming a probe "this spec does not run" follows from the unknown id: not listed.
        errors += [ln for ln in lines if not (unknown and "which this spec does not run" in ln)]
    # Each known probe checks its parameters, even when other keys are wrong.
    for i, p in enumerate(raw_probes):
        if not isinstance(p, dict) or not isinstance(p.get("id"), str) or p["id"] in unknown:
            continue
        params = p.get("params") or {}
        if not isinstance(params, dict):
            continue  # reported by the spec's own validation
        try:
            build_probe(p["id"], params, where=f"{source}: probes[{i}]")
        except SpecError as exc:
            errors.append(str(exc))
    if spec is not None:
        spec._base_dir = str(base_dir)
        if spec.settings.confine_paths:
            from audit.confine import confinement_errors

            errors += [f"{source}: {e}" for e in confinement_errors(spec)]
    if errors or spec is None:
        head = f"{source}: {len(errors)} problems:\n" if len(errors) > 1 else ""
        raise SpecError(head + "\n".join(errors))
    return spec


def spec_fingerprint(spec: dict[str, Any]) -> str:
    """:meth:`AuditSpec.fingerprint` of a spec as a dict (e.g. ``report.spec``, the spec as run)."""
    d = json.loads(json.dumps(spec, default=str))
    d.pop("gates", None)
    d.pop("name", None)
    (d.get("settings") or {}).pop("emissions", None)  # applied to the energy at the end, not to findings
    subject = d.get("subject") or {}
    for key, default in (("adapter", None), ("merge", False)):  # specs without an adapter keep their hash
        if key in subject and subject[key] == default:
            subject.pop(key)
    # they decide whether the audit runs or passes, or how it is drawn (tradeoff), not its findings
    for key in ("allow_empty", "confine_paths", "tradeoff"):
        (d.get("settings") or {}).pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
