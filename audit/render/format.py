"""Display helpers shared by the renderers, :mod:`audit.compare` and the dashboard: numbers,
intervals, gate labels, energy. Re-exported by :mod:`audit.render`; the renderers import them
from here, so that ``audit.render`` (which loads the renderers lazily) and its renderers do
not import each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from audit.findings import AuditReport, Finding, GateResult, Interval

__all__ = ['describe_bound', 'direction_arrow', 'findings_by_probe', 'first_line', 'format_emissions', 'format_energy', 'format_interval', 'format_number', 'format_value', 'gate_label', 'slice_label', 'total_joules']


def format_number(x: float | None, *, digits: int = 4) -> str:
    """A number for people: ``digits`` significant digits, ``n/a`` for NaN, ``—`` for None.

    Example:
        >>> format_number(12.8431), format_number(float("nan")), format_number(123456.7)
        ('12.84', 'n/a', '123,457')
    """
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(x)
    if a == 0:
        return "0"
    if 10 ** (digits - 1) <= a < 1e12:
        return f"{x:,.0f}"
    if a < 1e-3:
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"


def format_value(f: Finding) -> str:
    """The finding's value with its unit, e.g. ``"12.84 ppl"`` (``"n/a"`` when NaN)."""
    text = format_number(f.value)
    return f"{text} {f.unit}" if f.unit and text != "n/a" else text


def format_interval(ci: Interval | None) -> str:
    """``"[low, high]"``, or ``"—"`` when there is no interval."""
    if ci is None:
        return "—"
    return f"[{format_number(ci.low)}, {format_number(ci.high)}]"


def direction_arrow(higher_is_better: bool) -> str:
    """``↑`` when higher is better, ``↓`` when lower is better."""
    return "↑" if higher_is_better else "↓"


def slice_label(f: Finding) -> str:
    """The slice as ``k=v, k=v`` in key order, or ``"overall"`` for an unsliced finding."""
    if not f.slice:
        return "overall"
    return ", ".join(f"{k}={f.slice[k]}" for k in sorted(f.slice))


def gate_label(g: GateResult) -> str:
    """The gate's name from the spec, else the metric it bounds."""
    name = g.gate.get("name") if isinstance(g.gate, Mapping) else None
    variant = g.gate.get("variant") if isinstance(g.gate, Mapping) else None
    if name:
        return str(name)
    return f"{g.metric} · variant {variant}" if variant else g.metric


def describe_bound(g: GateResult) -> str:
    """What the gate requires, e.g. ``"≤ 30 (ci_high)"`` or ``"rise ≤ 0.5"``.

    Built from the gate as specified when the report carries it, else from ``bound``.
    """
    spec = g.gate if isinstance(g.gate, Mapping) else {}
    use = spec.get("use")
    side = f" ({use})" if use and use != "value" else ""
    parts = []
    if spec.get("min") is not None:
        parts.append(f"≥ {format_number(spec['min'])}{side}")
    if spec.get("max") is not None:
        parts.append(f"≤ {format_number(spec['max'])}{side}")
    for key, word in (("max_drop", "drop"), ("max_rise", "rise")):
        if spec.get(key) is not None:
            limit = f"{format_number(100 * spec[key])}%" if spec.get("relative") else format_number(spec[key])
            parts.append(f"{word} ≤ {limit}")
    if spec.get("max_delta") is not None:
        limit = (f"{format_number(100 * spec['max_delta'])}%" if spec.get("relative")
                 else format_number(spec["max_delta"]))
        parts.append(f"worse by ≤ {limit}")
    if spec.get("significant_only"):
        parts.append("if significant")
    if parts:
        return ", ".join(parts)
    return format_number(g.bound) if g.bound is not None else "—"


def format_energy(energy: Mapping[str, Any] | None) -> str:
    """One line for an energy record (keys ``joules``, ``kind``, ``source``, ``reason`` or ``note``):
    ``"1,234 J (measured, nvml)"``, ``"≈ 12.5 J (estimate, tdp x time)"`` or
    ``"unavailable: no NVML"``; ``"—"`` when nothing was recorded.

    Example:
        >>> format_energy({"joules": 1843.2, "kind": "measured", "source": "nvml"})
        '1,843 J (measured, nvml)'
    """
    if not energy:
        return "—"
    kind = energy.get("kind")
    joules = energy.get("joules")
    source = energy.get("source")
    note = energy.get("reason") or energy.get("note")
    if joules is None or kind == "unavailable":
        why = note or source
        return f"unavailable: {why}" if why else "unavailable"
    try:
        text = f"{format_number(float(joules))} J"
    except (TypeError, ValueError):
        return f"unreadable: {joules!r}"
    if kind == "estimate":
        text = "≈ " + text
    detail = ", ".join(str(x) for x in (kind, source) if x)
    if note and kind != "estimate":  # an estimate's reason (e.g. "no NVML") is implied by "≈"
        detail = f"{detail}: {note}" if detail else str(note)
    return f"{text} ({detail})" if detail else text


def format_emissions(energy: Mapping[str, Any] | None) -> str | None:
    """One line for the audit's emissions (``energy["emissions"]``), or None when the spec
    set no grid intensity: measured and estimated grams are never added together.

    Example:
        >>> format_emissions({"emissions": {"g_co2e": 1.25, "estimate_g_co2e": None,
        ...                   "describe": "grid 56 gCO2e/kWh (France, 2023; OWID), PUE 1.2"}})
        '1.25 gCO2e (of measured energy; grid 56 gCO2e/kWh (France, 2023; OWID), PUE 1.2)'
    """
    em = (energy or {}).get("emissions")
    if not em:
        return None
    parts = []
    if em.get("g_co2e") is not None:
        parts.append(f"{format_number(float(em['g_co2e']))} gCO2e (of measured energy")
    if em.get("estimate_g_co2e") is not None:
        parts.append(f"≈ {format_number(float(em['estimate_g_co2e']))} gCO2e (ESTIMATE, of estimated energy")
    if not parts:
        return f"no energy measured or estimated, so no emissions ({em.get('describe', '')})"
    return " + ".join(f"{x}; {em.get('describe', '')})" for x in parts)


def total_joules(energies: list[Mapping[str, Any]]) -> tuple[float | None, int, int]:
    """Sum of the joules of several energy records: (total, n measured, n estimated).

    Unavailable records are left out; the total is None when no record has a number.
    """
    total, measured, estimated = 0.0, 0, 0
    for e in energies:
        j = e.get("joules") if e else None
        if j is None or e.get("kind") == "unavailable":
            continue
        try:
            j = float(j)
        except (TypeError, ValueError):
            continue
        if math.isnan(j):
            continue
        total += j
        if e.get("kind") == "estimate":
            estimated += 1
        else:
            measured += 1
    return (total if measured + estimated else None), measured, estimated


def findings_by_probe(report: AuditReport) -> dict[str, list[Finding]]:
    """The subject's findings grouped by probe, probes in spec (``report.probes``) order,
    then any probe that has findings but no status. Variants' findings (``variant`` set) are
    left out: they are shown side by side with these (:mod:`audit.variant_view`)."""
    groups: dict[str, list[Finding]] = {pid: [] for pid in report.probes}
    for f in report.findings:
        if f.variant is None:
            groups.setdefault(f.probe, []).append(f)
    return groups


def first_line(text: str | None) -> str:
    """The first non-empty line of an error text (the message without a traceback)."""
    if not text:
        return ""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""
