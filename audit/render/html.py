"""The HTML report: one self-contained page a reviewer can open offline or attach to a ticket.

Everything is inline: the CSS is in the page, the charts are SVG written by
:mod:`audit.render.svg`, and nothing refers to another host (no CDN, web fonts or scripts).
All text that came from the report is escaped by jinja2's autoescaping; the only markup
inserted unescaped is the charts' SVG (which escapes every text it draws) and the HTML of
the per-probe sections registered with :func:`register_section`.

Per-probe extra sections (a gallery of kept images, say) plug in through
:func:`register_section`: a function ``(probe_id, findings, report) -> list[Section]``
called for every probe; its sections are shown at the end of that probe's part of the page.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import jinja2
from markupsafe import Markup

from audit.findings import AuditReport, Finding, ProbeStatus
from audit.render.format import (
    describe_bound,
    direction_arrow,
    findings_by_probe,
    first_line,
    format_emissions,
    format_energy,
    format_interval,
    format_number,
    format_value,
    gate_label,
    slice_label,
    total_joules,
)

from audit.render.charts import MAX_CHARTS_PER_PROBE, confusion_tables, probe_charts, worst_slices
from audit.render.sections import SECTION_HOOKS, Section, SectionHook, register_section  # noqa: F401 - re-exported

__all__ = ["MAX_CHARTS_PER_PROBE", "Section", "register_section", "render_html"]

_EVIDENCE_PREVIEW_CHARS = 2000
_DRAWN_EVIDENCE = ("curve", "curves", "per_document", "values", "confusion_matrix")


# The registry of extra sections lives in audit/render/sections.py (no renderer imports), so that
# section providers such as audit/render/gallery.py need not import this module.
_SECTION_HOOKS = SECTION_HOOKS


def render_html(report: AuditReport) -> str:
    """Render the report as a self-contained HTML page.

    The page has the audit's status and subject, the gate table, the findings grouped by
    probe with a chart per probe (values with their intervals, curves and per-document
    histograms from the findings' evidence), the probes' status, wall time and energy,
    the environment and the spec as run.

    Args:
        report: the audit to render.

    Returns:
        The page, as text (UTF-8 when written).

    Example:
        >>> from audit.findings import AuditReport, SubjectIdentity
        >>> r = AuditReport(name="demo", subject=SubjectIdentity(name="m", kind="classifier", source="python"))
        >>> "<title>genai-audit: demo" in render_html(r)
        True
    """
    return _environment().get_template("report.html.j2").render(**_page(report))


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("audit.render", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env


# -- the page's data -----------------------------------------------------------------------


def _page(report: AuditReport) -> dict[str, Any]:
    gates = report.gates
    probes = report.probes
    by_probe = findings_by_probe(report)
    energy_total, n_measured, n_estimated = total_joules([p.energy for p in probes.values()])
    sections = [_probe_section(pid, findings, probes.get(pid), report) for pid, findings in by_probe.items()]
    return {
        "r": report,
        "status": report.status,
        "summary": {
            "gates": {s: sum(g.status == s for g in gates) for s in ("passed", "failed", "skipped")},
            "probes": {s: sum(p.status == s for p in probes.values()) for s in ("ok", "failed", "skipped")},
            "findings": len(report.findings),
            "warnings": sum(len(f.warnings) for f in report.findings),
        },
        "gates": [
            {
                "status": g.status,
                "label": gate_label(g),
                "metric": g.metric,
                "value": format_number(g.value),
                "bound": describe_bound(g),
                "message": g.message,
            }
            for g in gates
        ],
        "probe_sections": sections,
        "variants": _variants.overview_html(report),  # empty without variants
        "probe_rows": [_probe_row(pid, p) for pid, p in probes.items()],
        "environment": _flatten(report.environment),
        "subject_details": _flatten(report.subject.details),
        "timings": [(k, format_number(v)) for k, v in report.timings.items()],
        "audit_energy": format_energy(report.energy),
        "audit_emissions": format_emissions(report.energy),
        "probe_energy": {
            "total": format_number(energy_total) if energy_total is not None else None,
            "measured": n_measured,
            "estimated": n_estimated,
        },
        "spec_json": json.dumps(report.spec, indent=2, ensure_ascii=False, default=str) if report.spec else "",
    }


def _finding_row(f: Finding, anchor: str) -> dict[str, Any]:
    return {
        "anchor": anchor,
        "metric": f.metric,
        "key": f.key,
        "arrow": direction_arrow(f.higher_is_better),
        "direction": "higher is better" if f.higher_is_better else "lower is better",
        "slice": slice_label(f),
        "value": format_value(f),
        "is_nan": math.isnan(f.value),
        "ci": format_interval(f.ci),
        "ci_method": f.ci.method if f.ci else "",
        "n": "—" if f.n is None else f"{f.n:,}",
        "warnings": list(f.warnings),
        "evidence": _evidence_preview(f.evidence),
    }


def _probe_section(
    probe_id: str, findings: list[Finding], status: ProbeStatus | None, report: AuditReport
) -> dict[str, Any]:
    anchor = "probe-" + "".join(c if c.isalnum() else "-" for c in probe_id)
    anchors = {i: f"{anchor}-f{i}" for i in range(len(findings))}
    extras: list[Section] = []
    for hook in _SECTION_HOOKS:
        try:
            extras.extend(hook(probe_id, findings, report))
        except Exception as exc:  # noqa: BLE001 - a broken extra costs its section, not the report
            extras.append(Section(f"{getattr(hook, '__name__', 'section')} failed",
                                  Markup('<p class="note">{}</p>').format(f"{type(exc).__name__}: {exc}")))
    return {
        "id": probe_id,
        "anchor": anchor,
        "status": status.status if status else "",  # findings of a probe the report has no status for
        "error": first_line(status.error) if status else "",
        "traceback": (status.traceback or status.error or "") if status and status.status == "failed" else "",
        "reason": status.reason if status else "",
        "n_warnings": sum(len(f.warnings) for f in findings),
        "findings": [_finding_row(f, anchors[i]) for i, f in enumerate(findings)],
        "worst": worst_slices(findings, anchors),
        "confusion": confusion_tables(findings),
        "charts": probe_charts(probe_id, findings),
        "extras": extras,
    }


def _probe_row(probe_id: str, p: ProbeStatus) -> dict[str, Any]:
    if p.status == "failed":
        detail = first_line(p.error) or "failed (no error recorded)"
    elif p.status == "skipped":
        detail = p.reason or "skipped (no reason recorded)"
    else:
        detail = ""
    return {
        "id": probe_id,
        "status": p.status,
        "detail": detail,
        "n_findings": p.n_findings,
        "wall": "—" if p.wall_s is None else f"{format_number(p.wall_s, digits=3)} s",
        "energy": format_energy(p.energy),
        "params": json.dumps(p.params, ensure_ascii=False, default=str, sort_keys=True) if p.params else "",
    }


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings as ``(dotted.key, text)`` rows for a two-column table."""
    rows: list[tuple[str, str]] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_flatten(v, key + "."))
        elif isinstance(v, str):
            rows.append((key, v))
        elif isinstance(v, float):
            rows.append((key, format_number(v, digits=6)))
        else:
            rows.append((key, json.dumps(v, ensure_ascii=False, default=str)))
    return rows


def _evidence_preview(evidence: Mapping[str, Any]) -> str:
    """The evidence that is not drawn (example ids, artefact paths), as short JSON."""
    rest = {k: v for k, v in evidence.items() if k not in _DRAWN_EVIDENCE}
    if not rest:
        return ""
    text = json.dumps(rest, indent=1, ensure_ascii=False, default=str)
    if len(text) > _EVIDENCE_PREVIEW_CHARS:
        text = text[:_EVIDENCE_PREVIEW_CHARS] + f"\n… ({len(text) - _EVIDENCE_PREVIEW_CHARS:,} more characters)"
    return text


# The galleries of kept thumbnails and text samples (audit/render/gallery.py) register a section.
from audit.render import gallery as _gallery  # noqa: E402,F401
# The variants' side-by-side tables (audit/render/variants.py) register a section too.
from audit.render import variants as _variants  # noqa: E402
