"""The scorecard ``genai-audit run`` prints: status, gates, headline findings, probe trouble.

Every string from the report goes into a :class:`rich.text.Text`, never through rich's
markup parser, so a slice such as ``[eps=8/255]`` or a hostile ``[bold red]`` prints as is;
terminal control sequences in report text (an ANSI-coloured traceback, or worse) are removed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from audit.findings import AuditReport, Finding
from audit.render.format import (
    describe_bound,
    direction_arrow,
    first_line,
    format_interval,
    format_number,
    format_value,
    gate_label,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["STATUS_STYLES", "print_scorecard"]

STATUS_STYLES = {
    "passed": "bold green",
    "ok": "green",
    "failed": "bold red",
    "crashed": "bold magenta",
    "invalid": "bold magenta",
    "skipped": "yellow",
}

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _plain(text: object) -> str:
    """Report text made safe for a terminal: no escape sequences or other control characters."""
    return _CONTROL.sub("", _ANSI.sub("", str(text)))


def _t(text: object, style: str = "") -> Text:
    return Text(_plain(text), style=style)


def print_scorecard(report: AuditReport, console: Console | None = None, *, max_findings: int = 25) -> None:
    """Print the audit's scorecard to a terminal.

    Shows a status banner, the gates coloured by status, the headline findings (value,
    interval, n, number of warnings), and the probes that crashed or were skipped.

    Args:
        report: the audit to show.
        console: where to print; a new stdout console when None. Tests pass
            ``Console(record=True, width=100)`` and read ``console.export_text()``.
        max_findings: findings shown; when there are more, those named by a gate come
            first, then unsliced ones, and the rest are counted.

    Example:
        >>> from rich.console import Console
        >>> from audit.findings import AuditReport, SubjectIdentity
        >>> r = AuditReport(name="demo", subject=SubjectIdentity(name="m", kind="classifier", source="python"))
        >>> console = Console(record=True, width=100)
        >>> print_scorecard(r, console)                             # doctest: +SKIP
        >>> "PASSED" in console.export_text()                        # doctest: +SKIP
        True
    """
    console = console or Console()
    console.print(_banner(report))
    if report.gates:
        console.print(_gate_table(report))
    if report.findings:
        console.print(_findings_table(report, max_findings))
    view = _variants_view(report)
    if view is not None:
        console.print(variants_table(view))
    trouble = _probe_trouble(report)
    if trouble is not None:
        console.print(trouble)


def _styled(status: str) -> Text:
    return Text(status.upper(), style=STATUS_STYLES.get(status, ""))


def _banner(report: AuditReport) -> Panel:
    status = report.status
    gates = report.gates
    probes = report.probes.values()
    n_failed = sum(g.status == "failed" for g in gates)
    n_skipped = sum(g.status == "skipped" for g in gates)
    n_crashed = sum(p.status == "failed" for p in probes)
    n_probe_skipped = sum(p.status == "skipped" for p in probes)
    subj = report.subject
    body = Text.assemble(
        _styled(status),
        "  ",
        (_plain(report.name), "bold"),
        "\n",
        ("subject ", "dim"),
        _plain(subj.name),
        (_plain(f" ({', '.join(x for x in (subj.kind, subj.source, subj.revision) if x)})"), "dim"),
        "\n",
        (f"gates: {len(gates) - n_failed - n_skipped} passed, {n_failed} failed, {n_skipped} skipped", ""),
        ("  ·  ", "dim"),
        f"probes: {len(report.probes) - n_crashed - n_probe_skipped} ok, {n_crashed} crashed, {n_probe_skipped} skipped",
        "\n",
        (_plain(f"run {report.run_id}  {report.created_at}"), "dim"),
    )
    return Panel(body, title="genai-audit", title_align="left", border_style=STATUS_STYLES.get(status, ""), expand=True)


def _gate_table(report: AuditReport) -> Group:
    # The messages go under the table, not in a column: at 80 columns a message column
    # squeezes the gate names into unreadable fragments.
    table = Table(title="Gates", title_justify="left", box=box.SIMPLE_HEAD, expand=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Gate", overflow="fold", min_width=30, ratio=1)
    table.add_column("Value", justify="right", no_wrap=True)
    table.add_column("Bound", justify="right", no_wrap=True)
    notes: list[Text] = []
    for g in report.gates:
        style = {"failed": "red", "skipped": "dim"}.get(g.status, "")
        table.add_row(
            _styled(g.status),
            _t(gate_label(g)),
            Text(format_number(g.value)),
            _t(describe_bound(g)),
            style=style,
        )
        if g.status != "passed":
            notes.append(Text.assemble(_styled(g.status), " ", _plain(g.message), style=style))
    return Group(table, *notes) if notes else Group(table)


def _headline(report: AuditReport, limit: int) -> tuple[Sequence[Finding], int]:
    findings = [f for f in report.findings if f.variant is None]  # variants': in their own table
    if len(findings) <= limit:
        return findings, 0
    gated = {g.metric for g in report.gates}
    order = sorted(range(len(findings)), key=lambda i: (findings[i].key not in gated, bool(findings[i].slice), i))
    keep = sorted(order[:limit])
    return [findings[i] for i in keep], len(findings) - limit


def _findings_table(report: AuditReport, limit: int) -> Table:
    shown, hidden = _headline(report, limit)
    table = Table(title="Findings", title_justify="left", box=box.SIMPLE_HEAD, expand=True)
    table.add_column("", no_wrap=True, width=1)
    table.add_column("Finding", overflow="fold", ratio=5, min_width=36)
    table.add_column("Value", justify="right", no_wrap=True)
    table.add_column("Interval", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("Warn", justify="right", no_wrap=True)
    for f in shown:
        value = format_value(f)
        table.add_row(
            Text(direction_arrow(f.higher_is_better), style="dim"),
            _t(f.key),
            _t(value, style="dim italic" if value == "n/a" else "bold"),
            Text(format_interval(f.ci)),
            Text("—" if f.n is None else f"{f.n:,}"),
            Text(str(len(f.warnings)), style="yellow") if f.warnings else Text("0", style="dim"),
        )
    if hidden:
        table.caption = f"… {hidden} more findings in report.html"
    return table


def _probe_trouble(report: AuditReport) -> Group | None:
    lines: list[Text] = []
    for probe_id, p in report.probes.items():
        if p.status == "failed":
            lines.append(
                Text.assemble(
                    _styled("crashed"), " ", (_plain(probe_id), "bold"), ": ", _plain(first_line(p.error) or "no error recorded")
                )
            )
    for probe_id, p in report.probes.items():
        if p.status == "skipped":
            lines.append(
                Text.assemble(
                    _styled("skipped"), " ", (_plain(probe_id), "bold"), ": ", _plain(p.reason or "no reason recorded")
                )
            )
    if not lines:
        return None
    return Group(Text("Probes", style="italic"), *lines)


# -- variants side by side (reports with variants only) ------------------------------------

_VARIANT_ROWS = 12


def _variants_view(report: AuditReport) -> Any:
    if not report.variants and all(f.variant is None for f in report.findings):
        return None
    from audit.variant_view import side_by_side

    return side_by_side(report)


def _compact(f: Any) -> str:
    """A value in few characters: 3 significant digits, k/M/G/T from 10,000 up (540M bytes)."""
    x = f.value
    text = format_number(x, digits=3)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(x) >= scale and abs(x) < 1e15:
            text = f"{format_number(x / scale, digits=3)}{suffix}"
            break
    return f"{text} {f.unit}" if f.unit and text != "n/a" else text


def variants_table(view: Any, limit: int = _VARIANT_ROWS) -> Table:
    """A compact table of a :class:`audit.variant_view.SideBySide`: unsliced rows first, one
    cell per variant with its value and delta (intervals are left to report.html), ``▲`` where
    the delta is worse and its interval excludes 0."""
    from audit.render.variants import delta_text

    rows = [r for t in view.tables for r in t.rows]
    order = sorted(range(len(rows)), key=lambda i: (bool(rows[i].slice), i))
    keep = [rows[i] for i in sorted(order[:limit])]
    table = Table(title=_plain(view.title), title_justify="left", box=box.SIMPLE_HEAD, expand=True)
    table.add_column("Finding", overflow="fold", ratio=3, min_width=30)
    for name in (view.base_label, *view.columns):
        table.add_column(_plain(name), justify="right", no_wrap=True)
    for r in keep:
        cells = []
        for cell in r.cells:
            text = _compact(cell.finding) if cell.finding is not None else "—"
            if cell.delta is not None:
                text += " " + delta_text(r, cell.delta, with_ci=False).removeprefix("Δ ")
            cells.append(_t(text + (" ▲" if cell.flagged else ""), style="bold red" if cell.flagged else ""))
        table.add_row(_t(r.key), _t(_compact(r.base) if r.base is not None else "—"), *cells)
    notes = [f"{len(rows) - limit} more rows in report.html"] if len(rows) > limit else []
    notes.append("▲ worse, interval excludes 0" if view.n_flagged else "nothing worse beyond its interval")
    table.caption = " · ".join(notes)
    return table


def pareto_table(qc: Any) -> Table:
    """The points of a :class:`audit.variant_view.QualityCost`, the Pareto front marked ``●``."""
    better = "higher" if qc.quality_higher_is_better else "lower"
    table = Table(title=_plain(f"Quality against cost: {qc.title}"), title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Variant", no_wrap=True)
    table.add_column(_plain(f"{qc.quality_key.split('/', 1)[-1]} ({better} is better)"), justify="right")
    table.add_column(_plain(qc.cost_key.split("/", 1)[-1]), justify="right")
    table.add_column("Pareto front", justify="center")
    for p in qc.points:
        table.add_row(_t(p.label), Text(format_number(p.quality)), Text(format_number(p.cost)),
                      Text("●" if p.on_front else "", style="bold"))
    return table
