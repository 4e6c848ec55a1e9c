"""The variants of a report side by side, in the HTML, Markdown and terminal reports.

The layout comes from :mod:`audit.variant_view`; this module only writes it. Each cell of a
variant shows its value and interval and its delta to the base with the delta's interval,
as a percentage of the base where that reads better (:func:`audit.variant_view.reads_relative`:
not for rates in [0, 1], whose change reads in points). A cell is flagged when the delta is
worse and its interval excludes 0 on the worse side. Reports without variants get nothing
from here, so they render exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup

from audit.findings import AuditReport, Delta, Finding, Interval
from audit.render.format import format_interval, format_number, format_value
from audit.render.sections import Section, register_section
from audit.variant_view import (
    QualityCost,
    Row,
    SideBySide,
    diff_quality_cost,
    report_quality_cost,
    side_by_side,
    variant_names,
)

__all__ = ["FLAG", "MAX_ROWS", "delta_text", "diff_html", "overview_html", "pareto_html", "value_text"]

MAX_ROWS = 60
"""Rows of one probe's side-by-side table in the HTML report (the rest are counted)."""
FLAG = "worse (significant)"


def _signed(x: float, *, percent: bool) -> str:
    if math.isnan(x):
        return "n/a"
    text = f"{format_number(100 * x, digits=3)}%" if percent else format_number(x)
    return ("+" if x > 0 else "") + text


def value_text(f: Finding | None) -> str:
    """``value [low, high]`` of a finding, ``—`` without one."""
    if f is None:
        return "—"
    return f"{format_value(f)} {format_interval(f.ci)}".removesuffix(" —")


def _delta_ci(d: Delta, relative: bool) -> Interval | None:
    if not relative:
        return d.ci
    if d.ci_relative is not None:
        return d.ci_relative
    if d.ci is not None and d.base_value:  # the relative interval of a fixed base
        s = abs(d.base_value)
        return Interval(d.ci.low / s, d.ci.high / s, d.ci.method)
    return None


def delta_text(row: Row, d: Delta | None, *, with_ci: bool = True) -> str:
    """``Δ +5.2% [+1.9%, +8.4%]`` (relative where the row reads better so) or ``Δ +0.3 [...]``."""
    if d is None:
        return ""
    rel = row.relative and d.relative is not None
    text = "Δ " + _signed(d.relative if rel else d.value, percent=rel)  # type: ignore[arg-type]
    ci = _delta_ci(d, rel)
    if with_ci and ci is not None:
        text += f" [{_signed(ci.low, percent=rel)}, {_signed(ci.high, percent=rel)}]"
    return text


def _method(d: Delta | None) -> str:
    if d is None or d.ci is None:
        return "" if d is None else "no interval"
    return d.ci.method + (f", {d.n_pairs:,} pairs" if d.paired and d.n_pairs else "")


# -- HTML ----------------------------------------------------------------------------------

_STYLE = Markup(
    "<style>table.variants td.flag{background:#ffebe9;box-shadow:inset 3px 0 #cf222e}"
    "table.variants .flagword{color:#cf222e;font-weight:600}"
    "table.variants td{font-variant-numeric:tabular-nums}</style>"
)


def _table_html(view: SideBySide, rows: Sequence[Row]) -> Markup:
    head = Markup("<th>Metric</th><th>Slice</th><th>{}</th>").format(view.base_label)
    for c in view.columns:
        head += Markup("<th>{}</th>").format(c)
    body = Markup()
    for r in rows:
        slice_ = ", ".join(f"{k}={r.slice[k]}" for k in sorted(r.slice)) or "overall"
        arrow = "↑" if r.higher_is_better else "↓"
        tr = Markup('<td><span title="{}">{}</span> {}</td><td class="mono">{}</td><td class="num">{}</td>').format(
            "higher is better" if r.higher_is_better else "lower is better", arrow, r.metric, slice_,
            value_text(r.base))
        for cell in r.cells:
            cls = "num flag" if cell.flagged else "num"
            inner = Markup("{}").format(value_text(cell.finding))
            if cell.delta is not None:
                inner += Markup('<br><span title="{}">{}</span>').format(_method(cell.delta), delta_text(r, cell.delta))
            if cell.flagged:
                inner += Markup('<br><span class="flagword">{}</span>').format(FLAG)
            tr += Markup('<td class="{}">{}</td>').format(cls, inner)
        body += Markup("<tr>{}</tr>").format(tr)
    return Markup('<table class="variants"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>').format(head, body)


def _probe_table_html(view: SideBySide, probe_id: str) -> Markup | None:
    table = next((t for t in view.tables if t.probe == probe_id), None)
    if table is None:
        return None
    html = _table_html(view, table.rows[:MAX_ROWS])
    if len(table.rows) > MAX_ROWS:
        html += Markup('<p class="note">… {} more rows in report.json</p>').format(len(table.rows) - MAX_ROWS)
    what = ("paired deltas (same units on both sides)" if view.pairing == "paired"
            else "unpaired deltas (normal approximation, the two runs assumed independent)")
    return html + Markup('<p class="note small">Δ: {} minus {}, {}; flagged: worse and the interval excludes 0.'
                         "</p>").format(", ".join(view.columns), view.base_label, what)


@register_section
def variants_section(probe_id: str, findings: list[Finding], report: AuditReport) -> list[Section]:
    """This probe's findings on every variant beside the base's (a report with variants only)."""
    view = side_by_side(report)
    if view is None:
        return []
    html = _probe_table_html(view, probe_id)
    return [] if html is None else [Section("Variants side by side", html)]


def pareto_html(qc: QualityCost | None, why_none: str) -> Markup:
    """A figure with the quality-versus-cost chart, or a note saying why there is none."""
    from audit.render.pareto import pareto_chart

    if qc is None:
        return Markup('<p class="note">{}</p>').format(why_none)
    try:
        svg = Markup(pareto_chart(qc))
    except Exception as exc:  # noqa: BLE001 - a chart that cannot be drawn costs the chart only
        return Markup('<p class="note">quality-versus-cost chart could not be drawn: {}</p>').format(exc)
    front = ", ".join(p.label for p in qc.points if p.on_front)
    return Markup('<figure style="max-width:760px"><figcaption>{} · Pareto front: {}</figcaption>{}</figure>').format(
        qc.title, front, svg)


_NO_POINTS = ("No quality-versus-cost chart: it needs an unsliced quality finding and a cost finding "
              "(energy.footprint, or energy.inference J per unit) measured on every variant.")


def overview_html(report: AuditReport) -> Markup:
    """The report-level part: the variants (overrides, hashed weights, probe statuses), the
    number of flagged cells and the quality-versus-cost chart; empty without variants."""
    names = variant_names(report)
    if not names:
        return Markup()
    rows = Markup()
    records = {v.name: v for v in report.variants}
    for n in names:
        v = records.get(n)
        if v is None:
            rows += Markup('<tr><td class="mono">{}</td><td colspan="4" class="note">no record</td></tr>').format(n)
            continue
        overrides = ", ".join(f"{k}={v.overrides[k]}" for k in v.overrides) or "—"
        files = Markup("<br>").join(Markup('<span class="mono">{}</span> <span class="muted small">{}…</span>').format(
            fh.path, fh.sha256[:12]) for fh in v.subject.files) or Markup("—")
        st = [p.status for p in v.probes.values()]
        counts = f"{st.count('ok')} ok, {st.count('failed')} failed, {st.count('skipped')} skipped"
        rows += Markup('<tr><td class="mono">{}</td><td class="mono">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>').format(
            n, overrides, files, counts, "; ".join(v.notes))
    view = side_by_side(report)
    flagged = view.n_flagged if view else 0
    out = Markup('<h2 id="variants">Variants</h2><table><thead><tr><th>Variant</th><th>Overrides</th>'
                 "<th>Weights (sha256)</th><th>Probes</th><th>Notes</th></tr></thead><tbody>{}</tbody></table>"
                 '<p>{} finding{} of the variants {} worse than the base beyond {} interval '
                 "(flagged in each probe's side-by-side table).</p>").format(
        rows, flagged, "" if flagged == 1 else "s", "is" if flagged == 1 else "are", "its" if flagged == 1 else "their")
    return _STYLE + out + pareto_html(report_quality_cost(report), _NO_POINTS)


def diff_html(a: AuditReport, b: AuditReport, views: Sequence[SideBySide]) -> str:
    """A self-contained page for ``genai-audit diff A B --html``: the side-by-side views and the chart."""
    parts = _STYLE
    for view in views:
        parts += Markup("<h2>{}</h2>").format(view.title)
        for t in view.tables:
            parts += Markup("<h3><code>{}</code></h3>").format(t.probe) + _probe_table_html(view, t.probe)
    parts += Markup("<h2>Quality against cost</h2>") + pareto_html(diff_quality_cost(a, b), _NO_POINTS)
    css = ("body{font:14px/1.5 system-ui,sans-serif;max-width:1180px;margin:0 auto;padding:24px}"
           "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 9px;"
           "border-bottom:1px solid #d0d7de;vertical-align:top}td.num{text-align:right}.mono,code{font-family:"
           "ui-monospace,monospace}.note{color:#656d76;font-style:italic}figure{margin:0}svg{width:100%;height:auto}")
    return str(Markup('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>genai-audit diff: {} against '
                      "{}</title><style>{}</style></head><body><h1>{} (A) against {} (B)</h1><p>A: run {} · B: run {}"
                      "</p>{}</body></html>\n").format(a.name, b.name, Markup(css), a.name, b.name, a.run_id, b.run_id,
                                                       parts))
