"""The Markdown report: short enough for a pull-request comment, GitHub-flavoured tables.

Report text is untrusted: cells escape Markdown and HTML punctuation and turn newlines into
``<br>``, so a slice value or error message cannot break a table or inject markup.
"""

from __future__ import annotations

import re
from typing import Any

from audit.findings import AuditReport, Finding
from audit.render.format import (
    describe_bound,
    direction_arrow,
    first_line,
    format_emissions,
    format_energy,
    format_interval,
    format_number,
    format_value,
    gate_label,
    slice_label,
)

__all__ = ["code_span", "escape_cell", "render_markdown"]

_PUNCTUATION = re.compile(r"([\\`*_\[\]<>|~&#!])")
_NEWLINES = re.compile(r"\r\n|\r|\n")


def escape_cell(text: object) -> str:
    """Text for a Markdown table cell or list item: Markdown/HTML punctuation and ``|`` are
    backslash-escaped and newlines become ``<br>``.

    Example:
        >>> escape_cell("a|b\\n<i>")
        'a\\\\|b<br>\\\\<i\\\\>'
    """
    escaped = _PUNCTUATION.sub(r"\\\1", str(text))
    return _NEWLINES.sub("<br>", escaped.strip())


def code_span(text: object) -> str:
    """``text`` as an inline code span that is safe in a table cell (pipes escaped, newlines
    flattened, backticks in the text fenced by a longer run)."""
    s = " ".join(str(text).split()).replace("|", r"\|")
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    if longest:
        s = f" {s} "
    return f"{fence}{s}{fence}"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _status_word(status: str) -> str:
    return f"**{status.upper()}**" if status in ("failed", "invalid", "crashed") else status.upper()


def render_markdown(report: AuditReport, *, max_findings: int = 60) -> str:
    """Render the report as Markdown for a pull-request comment.

    Args:
        report: the audit to render.
        max_findings: findings listed in the table; the rest are counted and left to the
            HTML report (a PR comment has a size limit).

    Returns:
        Markdown text: a headline with the status word, the gate table, the findings table,
        crashed probes with their error message and skipped probes with their reason.

    Example:
        >>> from audit.findings import AuditReport, SubjectIdentity
        >>> r = AuditReport(name="demo", subject=SubjectIdentity(name="m", kind="classifier", source="python"))
        >>> render_markdown(r).splitlines()[0]
        '### genai-audit: PASSED · demo'
    """
    crashed = [(pid, p) for pid, p in report.probes.items() if p.status == "failed"]
    skipped = [(pid, p) for pid, p in report.probes.items() if p.status == "skipped"]
    lines = _headline(report, crashed, skipped)
    lines += _gates(report)
    lines += _findings(report, max_findings)
    lines += _variants(report)
    if crashed:
        lines += ["", "#### Failed probes", ""]
        for pid, p in crashed:
            lines.append(f"- {code_span(pid)}: {escape_cell(first_line(p.error) or 'no error recorded')}")
    if skipped:
        lines += ["", "#### Skipped probes", ""]
        for pid, p in skipped:
            lines.append(f"- {code_span(pid)}: {escape_cell(p.reason or 'no reason recorded')}")
    lines += _footprint(report)
    lines += ["", f"<sub>genai-audit report schema {escape_cell(report.schema_version)}</sub>", ""]
    return "\n".join(lines)


def _headline(report: AuditReport, crashed: list[Any], skipped: list[Any]) -> list[str]:
    gates, probes = report.gates, report.probes
    n_failed_gates = sum(g.status == "failed" for g in gates)
    n_skipped_gates = sum(g.status == "skipped" for g in gates)
    lines = [f"### genai-audit: {report.status.upper()} · {escape_cell(report.name)}", ""]
    summary = [f"{n_failed_gates} of {len(gates)} gate{'s' if len(gates) != 1 else ''} failed"]
    if n_skipped_gates:
        summary[-1] += f" ({n_skipped_gates} skipped)"
    summary.append(f"{len(crashed)} of {len(probes)} probe{'s' if len(probes) != 1 else ''} crashed")
    if skipped:
        summary[-1] += f" ({len(skipped)} skipped)"
    subj = report.subject
    ident = ", ".join(escape_cell(x) for x in (subj.kind, subj.source, subj.revision) if x)
    summary.append(f"subject {escape_cell(subj.name)} ({ident})")
    summary.append(f"run {code_span(report.run_id[:12])} at {escape_cell(report.created_at)}")
    lines.append(" · ".join(summary))
    return lines


def _gates(report: AuditReport) -> list[str]:
    lines = ["", "#### Gates", ""]
    if not report.gates:
        return lines + ["No gates in this audit."]
    lines.append(_row("Status", "Gate", "Value", "Bound", "Message"))
    lines.append(_row("---", "---", "---:", "---:", "---"))
    for g in report.gates:
        label = gate_label(g)
        gate_cell = escape_cell(label) if label != g.metric else ""
        gate_cell += ("<br>" if gate_cell else "") + code_span(g.metric)
        lines.append(_row(_status_word(g.status), gate_cell, escape_cell(format_number(g.value)),
                          escape_cell(describe_bound(g)), escape_cell(g.message)))
    return lines


def _findings(report: AuditReport, max_findings: int) -> list[str]:
    lines = ["", "#### Findings", ""]
    findings = [f for f in report.findings if f.variant is None]  # variants': in their own section
    if not findings:
        return lines + ["No findings."]
    lines.append(_row("Finding", "Value", "Interval", "n", "Slice", "Warnings"))
    lines.append(_row("---", "---:", "---:", "---:", "---", "---"))
    lines += [_finding_row(f) for f in findings[:max_findings]]
    if len(findings) > max_findings:
        lines += ["", f"… and {len(findings) - max_findings} more findings in the HTML report."]
    return lines


def _footprint(report: AuditReport) -> list[str]:
    timed = [(pid, p) for pid, p in report.probes.items() if p.status != "skipped" and p.wall_s is not None]
    if not timed:
        return []
    lines = ["", "#### Footprint", "", _row("Probe", "Wall time", "Energy"), _row("---", "---:", "---")]
    for pid, p in timed:
        lines.append(_row(code_span(pid), f"{p.wall_s:.1f} s", escape_cell(format_energy(p.energy))))
    total_s = report.timings.get("total_s")
    lines.append(_row("**audit**", "—" if total_s is None else f"{total_s:.1f} s",
                      escape_cell(format_energy(report.energy))))
    emissions = format_emissions(report.energy)
    if emissions:
        lines += ["", f"Emissions: {escape_cell(emissions)}"]
    return lines


def _finding_row(f: Finding) -> str:
    name = f"{direction_arrow(f.higher_is_better)} {code_span(f'{f.probe}/{f.metric}')}"
    interval = format_interval(f.ci)
    return _row(
        name,
        escape_cell(format_value(f)),
        interval,  # numbers only: nothing to escape
        "—" if f.n is None else f"{f.n:,}",
        escape_cell(slice_label(f)) if f.slice else "",
        escape_cell("\n".join(f.warnings)) if f.warnings else "",
    )


# -- variants side by side (reports with variants only) ------------------------------------

_VARIANT_ROWS = 40  # rows of all side-by-side tables together (a PR comment has a size limit)


def _variants(report: AuditReport) -> list[str]:
    from audit.variant_view import report_quality_cost, side_by_side

    view = side_by_side(report)
    if view is None:
        return []
    return variants_markdown([view]) + quality_cost_markdown(report_quality_cost(report))


def _variant_cell(r: Any, cell: Any) -> str:
    from audit.render.variants import FLAG, delta_text, value_text

    text = escape_cell(value_text(cell.finding))
    if cell.delta is not None:
        text += "<br>" + escape_cell(delta_text(r, cell.delta))
    return text + (f"<br>**{FLAG}**" if cell.flagged else "")


def variants_markdown(views: Any, max_rows: int = _VARIANT_ROWS) -> list[str]:
    """Markdown lines of :class:`audit.variant_view.SideBySide` views: per view a table with a
    row per finding and a column per variant (value, delta and its interval, the flag)."""
    from audit.render.variants import FLAG, value_text

    lines: list[str] = []
    shown = total = 0
    for view in views:
        lines += ["", f"#### {escape_cell(view.title)}", ""]
        if view.n_flagged:
            lines += [f"{view.n_flagged} cell(s) **{FLAG}**: worse and the delta's interval excludes 0.", ""]
        head = ["Finding", escape_cell(view.base_label), *(escape_cell(c) for c in view.columns)]
        lines += [_row(*head), _row("---", *("---:" for _ in head[1:]))]
        for r in (r for t in view.tables for r in t.rows):
            total += 1
            if shown < max_rows:
                shown += 1
                lines.append(_row(code_span(r.key), escape_cell(value_text(r.base)),
                                  *(_variant_cell(r, c) for c in r.cells)))
    if total > shown:
        lines += ["", f"… and {total - shown} more rows in the HTML report."]
    return lines


def quality_cost_markdown(qc: Any) -> list[str]:
    """The points of a :class:`audit.variant_view.QualityCost` as a table, the Pareto front marked."""
    if qc is None:
        return []
    lines = ["", f"Quality against cost: {code_span(qc.quality_key)} against {code_span(qc.cost_key)}", "",
             _row("Variant", "Quality", "Cost", "Pareto front"), _row("---", "---:", "---:", "---")]
    for p in qc.points:
        lines.append(_row(escape_cell(p.label), escape_cell(format_number(p.quality)),
                          escape_cell(format_number(p.cost)), "yes" if p.on_front else ""))
    return lines
