"""The HTML report: one self-contained page a reviewer can open offline or attach to a ticket.

Everything is inline: the CSS is in the page, the charts are SVG drawn with matplotlib,
and nothing refers to another host (no CDN, web fonts or scripts). All text that came
from the report is escaped by jinja2's autoescaping; the only markup inserted unescaped
is the SVG that matplotlib writes (which escapes the labels it draws).
"""

from __future__ import annotations

import functools
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

from audit.findings import AuditReport, Finding, ProbeStatus
from audit.render import (
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

__all__ = ["render_html"]

MAX_CHARTS_PER_PROBE = 12
"""Curves and histograms drawn per probe; the rest are listed, not drawn (keeps pages small)."""

_EVIDENCE_PREVIEW_CHARS = 2000
_LABEL_CHARS = 60
_ACCENT = "#3867d6"
_WIDTH_IN = 6.4
_CHAR_IN = 0.068  # average width of a 9 pt DejaVu Sans character, in inches


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
    charts = _ChartMaker()
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
        "probe_sections": [
            _probe_section(pid, findings, probes.get(pid), charts) for pid, findings in by_probe.items()
        ],
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


def _finding_row(f: Finding) -> dict[str, Any]:
    return {
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
    probe_id: str, findings: list[Finding], status: ProbeStatus | None, charts: _ChartMaker
) -> dict[str, Any]:
    return {
        "id": probe_id,
        "anchor": "probe-" + "".join(c if c.isalnum() else "-" for c in probe_id),
        "status": status.status if status else "",  # findings of a probe the report has no status for
        "error": first_line(status.error) if status else "",
        "traceback": (status.traceback or status.error or "") if status and status.status == "failed" else "",
        "reason": status.reason if status else "",
        "findings": [_finding_row(f) for f in findings],
        "charts": charts.for_probe(probe_id, findings),
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
    rest = {k: v for k, v in evidence.items() if k not in ("curve", "per_document", "values")}
    if not rest:
        return ""
    text = json.dumps(rest, indent=1, ensure_ascii=False, default=str)
    if len(text) > _EVIDENCE_PREVIEW_CHARS:
        text = text[:_EVIDENCE_PREVIEW_CHARS] + f"\n… ({len(text) - _EVIDENCE_PREVIEW_CHARS:,} more characters)"
    return text


# -- charts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chart:
    title: str
    svg: Markup | None = None
    note: str = ""


def _curve_of(evidence: Mapping[str, Any]) -> tuple[list[float], list[float], str, str, str] | None:
    """``evidence["curve"]`` as float lists, axis labels and x scale (``"log"`` if asked for),
    or None when absent or malformed."""
    curve = evidence.get("curve")
    if not isinstance(curve, Mapping):
        return None
    x, y = curve.get("x"), curve.get("y")
    if not _is_numbers(x) or not _is_numbers(y) or len(x) != len(y) or not x:
        return None
    return (
        [float(v) for v in x],
        [float(v) for v in y],
        str(curve.get("x_label", "")),
        str(curve.get("y_label", "")),
        str(curve.get("x_scale", "linear")),
    )


def _values_of(evidence: Mapping[str, Any]) -> tuple[str, list[float]] | None:
    """Per-document values (``per_document`` or ``values``), finite ones only, or None."""
    for key in ("per_document", "values"):
        vals = evidence.get(key)
        if _is_numbers(vals):
            finite = [float(v) for v in vals if math.isfinite(float(v))]
            if finite:
                return key, finite
    return None


def _is_numbers(xs: Any) -> bool:
    return (
        isinstance(xs, Sequence)
        and not isinstance(xs, (str, bytes))
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
    )


def _mpl_text(text: str) -> str:
    """Text for a matplotlib label: shortened, and ``$`` escaped so it is never read as mathtext
    (an unbalanced ``$`` in a slice name would otherwise fail the whole chart)."""
    text = " ".join(str(text).split())
    if len(text) > _LABEL_CHARS:
        text = text[: _LABEL_CHARS - 1] + "…"
    return text.replace("$", r"\$")


class _ChartMaker:
    """Draws the charts of one page; each chart gets its own SVG id salt so that the ids of
    several inline SVGs never collide."""

    def __init__(self) -> None:
        self._count = 0

    def for_probe(self, probe_id: str, findings: list[Finding]) -> list[_Chart]:
        out: list[_Chart] = []
        if len(findings) >= 2:
            out.append(self._draw(f"{probe_id}: values and intervals", _draw_intervals, findings))
        drawn = 0
        for f in findings:
            curve = _curve_of(f.evidence)
            values = _values_of(f.evidence)
            for kind, data in (("curve", curve), ("histogram", values)):
                if data is None:
                    continue
                title = f"{f.key}: {'curve' if kind == 'curve' else 'distribution per document'}"
                if drawn >= MAX_CHARTS_PER_PROBE:
                    out.append(_Chart(title, note=f"not drawn: more than {MAX_CHARTS_PER_PROBE} charts in this probe"))
                    continue
                drawer = _draw_curve if kind == "curve" else _draw_histogram
                out.append(self._draw(title, drawer, f, data))
                drawn += 1
        return out

    def _draw(self, title: str, drawer: Any, *args: Any) -> _Chart:
        # One bad evidence record costs its chart, not the report.
        self._count += 1
        try:
            return _Chart(title, svg=Markup(_to_svg(drawer, *args, salt=f"genai-audit-{self._count}")))
        except Exception as exc:  # noqa: BLE001 - any plotting failure degrades to a note
            return _Chart(title, note=f"chart could not be drawn: {type(exc).__name__}: {exc}")


def _to_svg(drawer: Any, *args: Any, salt: str) -> str:
    import matplotlib

    # The Figure API below needs no pyplot backend; select Agg for headless use unless the
    # caller has already set one up through pyplot (e.g. in a notebook), which we leave alone.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rc = {
        "svg.fonttype": "none",  # text stays text: smaller, selectable, no glyph defs
        "svg.hashsalt": salt,
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "text.usetex": False,
    }
    with matplotlib.rc_context(rc):
        fig = Figure(figsize=(_WIDTH_IN, 3.0))
        drawer(fig, *args)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    # Drop the XML prolog and DOCTYPE (it names a DTD on w3.org); inline SVG needs neither.
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("matplotlib wrote no <svg> element")
    return svg[start:]


def _place_axes(
    fig: Any,
    *,
    left_in: float,
    bottom_in: float = 0.5,
    top_in: float = 0.3,
    gap_in: float = 0.0,
    n_rows: int = 1,
) -> None:
    """Set margins in inches. Computed instead of constrained layout, which costs about
    four times the drawing itself and makes every report slower to write."""
    w, h = fig.get_size_inches()
    plot_h = max(h - bottom_in - top_in - gap_in * (n_rows - 1), 0.3 * n_rows)
    fig.subplots_adjust(
        left=min(left_in / w, 0.6),
        right=1 - 0.2 / w,
        bottom=bottom_in / h,
        top=1 - top_in / h,
        hspace=gap_in / (plot_h / n_rows) if n_rows > 1 else 0.2,
    )


def _draw_intervals(fig: Any, findings: list[Finding]) -> None:
    """One panel per metric: a dot per slice with its interval as a bar."""
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.metric, []).append(f)
    rows = [len(g) for g in groups.values()]
    gap_in = 0.65
    fig.set_size_inches(_WIDTH_IN, min(0.3 * sum(rows) + 0.35 * len(rows) + gap_in * (len(rows) - 1) + 0.8, 16))
    axes = fig.subplots(len(groups), 1, gridspec_kw={"height_ratios": [r + 1.2 for r in rows]}, squeeze=False)[:, 0]
    longest = 0
    for ax, (metric, group) in zip(axes, groups.items()):
        ys = list(range(len(group)))[::-1]
        labels = []
        for y, f in zip(ys, group):
            label = slice_label(f)
            if not math.isfinite(f.value):
                label += f" ({format_number(f.value)})"
            else:
                ax.plot([f.value], [y], "o", color=_ACCENT, markersize=5, zorder=3)
            if f.ci is not None and math.isfinite(f.ci.low) and math.isfinite(f.ci.high):
                ax.hlines(y, f.ci.low, f.ci.high, color=_ACCENT, linewidth=2, alpha=0.55)
            labels.append(_mpl_text(label))
        longest = max(longest, *(len(s) for s in labels))
        ax.set_yticks(ys, labels)
        ax.set_ylim(-0.7, len(group) - 0.3)
        unit = f" ({group[0].unit})" if group[0].unit else ""
        better = "higher is better" if group[0].higher_is_better else "lower is better"
        ax.set_title(_mpl_text(f"{metric}{unit}, {better}"), loc="left", fontsize=9)
        ax.grid(axis="y", visible=False)
    _place_axes(fig, left_in=0.25 + _CHAR_IN * longest, bottom_in=0.35, gap_in=gap_in, n_rows=len(groups))


def _draw_curve(fig: Any, f: Finding, curve: tuple[list[float], list[float], str, str, str]) -> None:
    x, y, x_label, y_label, x_scale = curve
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, color=_ACCENT)
    if x_scale == "log" and all(v > 0 for v in x):
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_number(v)))
    ax.set_xlabel(_mpl_text(x_label))
    ax.set_ylabel(_mpl_text(y_label or f.metric))
    ax.set_title(_mpl_text(f.key), loc="left", fontsize=9)
    _place_axes(fig, left_in=0.75)


def _draw_histogram(fig: Any, f: Finding, data: tuple[str, list[float]]) -> None:
    key, values = data
    ax = fig.add_subplot()
    bins = max(5, min(40, int(math.sqrt(len(values)))))
    ax.hist(values, bins=bins, color=_ACCENT, alpha=0.75)
    if math.isfinite(f.value):
        ax.axvline(f.value, color="#c0392b", linewidth=1.5, label=_mpl_text(f"{f.metric} = {format_number(f.value)}"))
        ax.legend(loc="upper right", frameon=False)
    what = "per document" if key == "per_document" else "values"
    ax.set_xlabel(_mpl_text(f"{f.metric} {what}" + (f" ({f.unit})" if f.unit else "")))
    ax.set_ylabel("count")
    ax.set_title(_mpl_text(f"{f.key} (n={len(values):,})"), loc="left", fontsize=9)
    _place_axes(fig, left_in=0.65)
