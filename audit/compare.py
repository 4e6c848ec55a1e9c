"""Compare two audit reports finding by finding (e.g. the last release against this one).

Findings are matched by :attr:`Finding.key` (``probe/metric[slice]``). For each key,
:func:`diff_reports` says how the value moved, whether that is better or worse given the
metric's direction, and whether the move is beyond the confidence intervals (the two
intervals do not overlap: a conservative sign that the change is not noise).

Example:
    >>> from audit.findings import Finding, Interval
    >>> before = Finding("p", "acc", 0.80, higher_is_better=True, ci=Interval(0.78, 0.82, "wilson-95"))
    >>> after = Finding("p", "acc", 0.70, higher_is_better=True, ci=Interval(0.68, 0.72, "wilson-95"))
    >>> c = compare_findings(before, after)
    >>> c.direction, round(c.delta, 2), round(c.relative, 3), c.beyond_intervals
    ('worse', -0.1, -0.125, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from audit.findings import AuditReport, Finding, Interval
from audit.stats import intervals_overlap
from audit.render import format_interval, format_number, format_value

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "Direction",
    "FindingChange",
    "compare_findings",
    "diff_markdown",
    "diff_reports",
    "diff_views_markdown",
    "intervals_overlap",
    "render_diff_table",
    "render_diff_views",
    "unrelated_reason",
    "write_diff_html",
]

Direction = Literal["better", "worse", "same", "added", "removed", "n/a"]


@dataclass(frozen=True, slots=True)
class FindingChange:
    """How one finding changed between two reports.

    Attributes:
        key: ``probe/metric[slice]``, the name both findings share.
        before: the finding in the first (baseline) report; None when it was added.
        after: the finding in the second report; None when it was removed.
        delta: ``after.value - before.value``; None when a side is missing or the difference
            is not a number (a NaN value, or infinity minus infinity).
        relative: ``delta / |before.value|``; None when ``delta`` is None or the baseline
            value is 0 or not finite.
        direction: ``better``/``worse`` by the metric's ``higher_is_better``, ``same`` when the
            values are equal, ``added``/``removed`` when one side is missing, ``n/a`` when a
            value is NaN.
        beyond_intervals: True when both findings have intervals and they do not overlap,
            False when they overlap, None when either lacks an interval.
        variant: the variant both findings were measured on (``spec.variants``); None for
            the subjects themselves.
    """

    key: str
    before: Finding | None
    after: Finding | None
    delta: float | None
    relative: float | None
    direction: Direction
    beyond_intervals: bool | None
    variant: str | None = None

    @property
    def label(self) -> str:
        """The key, with ``· variant NAME`` for a variant's finding."""
        return self.key if self.variant is None else f"{self.key} · variant {self.variant}"


def compare_findings(before: Finding | None, after: Finding | None) -> FindingChange:
    """The change from ``before`` to ``after``, two findings with the same key (either may be None).

    The direction uses ``after.higher_is_better`` (the metric as the newer report defines it).

    Raises:
        ValueError: if both are None, or their keys differ.
    """
    if before is None and after is None:
        raise ValueError("compare_findings needs at least one finding, got two None")
    if before is not None and after is not None and before.key != after.key:
        raise ValueError(f"cannot compare findings with different keys: {before.key!r} and {after.key!r}")
    key = (after or before).key  # type: ignore[union-attr]
    if before is None:
        return FindingChange(key, None, after, None, None, "added", None)
    if after is None:
        return FindingChange(key, before, None, None, None, "removed", None)

    delta: float | None = 0.0 if after.value == before.value else after.value - before.value
    if math.isnan(delta):  # a NaN side (inf - inf cannot happen: equal values give 0)
        delta = None
    relative = None
    if delta is not None and math.isfinite(before.value) and before.value != 0:
        relative = delta / abs(before.value)

    direction: Direction
    if delta is None:
        direction = "n/a"
    elif after.value == before.value:
        direction = "same"
    elif (after.value > before.value) == after.higher_is_better:
        direction = "better"
    else:
        direction = "worse"

    beyond: bool | None = None
    if before.ci is not None and after.ci is not None:
        bounds = (before.ci.low, before.ci.high, after.ci.low, after.ci.high)
        if not any(math.isnan(x) for x in bounds):
            beyond = not intervals_overlap(before.ci, after.ci)
    return FindingChange(key, before, after, delta, relative, direction, beyond)


def diff_reports(a: AuditReport, b: AuditReport) -> list[FindingChange]:
    """Compare report ``a`` (baseline) with report ``b``, finding by finding.

    Args:
        a: the baseline (e.g. the last release).
        b: the report to judge against it.

    Returns:
        One change per key in either report: the keys of ``b`` in its order, then the keys
        only ``a`` has (``removed``) in ``a``'s order. If a report repeats a key, its first
        finding is used, as :meth:`AuditReport.finding` does. Findings of variants are
        matched with the other report's findings of the same variant (``variant`` set on the
        change), never with the subject's.

    Example:
        >>> changes = diff_reports(last_release, candidate)              # doctest: +SKIP
        >>> [c.key for c in changes if c.direction == "worse" and c.beyond_intervals]  # doctest: +SKIP
        ['bias.toxicity/toxicity_rate[group=nonbinary]']
    """
    before = _by_key(a.findings)
    after = _by_key(b.findings)
    keys = list(after) + [k for k in before if k not in after]
    out = []
    for k in keys:
        c = compare_findings(before.get(k), after.get(k))
        out.append(c if k[0] is None else replace(c, variant=k[0]))
    return out


def _by_key(findings: Sequence[Finding]) -> dict[tuple[str | None, str], Finding]:
    out: dict[tuple[str | None, str], Finding] = {}
    for f in findings:
        out.setdefault((f.variant, f.key), f)
    return out


# -- display -------------------------------------------------------------------------------

_DIRECTION_STYLES = {
    "better": "green",
    "worse": "bold red",
    "same": "dim",
    "added": "cyan",
    "removed": "yellow",
    "n/a": "dim italic",
}


def _cells(c: FindingChange) -> tuple[str, str, str, str, str]:
    """Before, after, delta, relative change and the interval verdict, as text."""
    before = "—" if c.before is None else f"{format_value(c.before)} {format_interval(c.before.ci)}".removesuffix(" —")
    after = "—" if c.after is None else f"{format_value(c.after)} {format_interval(c.after.ci)}".removesuffix(" —")
    delta = "—" if c.delta is None else ("+" if c.delta > 0 else "") + format_number(c.delta)
    relative = "—" if c.relative is None else f"{'+' if c.relative > 0 else ''}{format_number(100 * c.relative, digits=3)}%"
    beyond = {True: "yes", False: "no", None: "—"}[c.beyond_intervals]
    return before, after, delta, relative, beyond


def unrelated_reason(a: tuple[str, str, str], b: tuple[str, str, str]) -> str | None:
    """Why two reports (or a spec and a report) are not two runs of the same audit, or None.

    Each side is ``(audit name, subject name, subject path)``. They are related when the
    audit names are equal and the subjects share a name or a path.

    Example:
        >>> unrelated_reason(("rc", "gpt2", "gpt2"), ("rc", "gpt2-v2", "gpt2"))
        >>> unrelated_reason(("rc", "m", "a"), ("fairness", "m", "a"))
        "audit 'rc' (subject 'm') against audit 'fairness' (subject 'm'): another audit; its findings may not be comparable"
    """
    (name_a, subj_a, path_a), (name_b, subj_b, path_b) = a, b
    other = []
    if name_a != name_b:
        other.append("another audit")
    if subj_a != subj_b and path_a != path_b:
        other.append("another subject")
    if not other:
        return None
    from audit.yamlsafe import quote

    return (f"audit {quote(name_a, 80)} (subject {quote(subj_a, 80)}) against audit {quote(name_b, 80)} "
            f"(subject {quote(subj_b, 80)}): {' and '.join(other)}; its findings may not be comparable")


#: Columns of the diff table besides Finding, and their overhead per column (padding + rule).
_COLUMNS = ("Before", "After", "Δ", "Change")
_MIN_FINDING_WIDTH = 16


def _key_lines(c: FindingChange, width: int) -> list[str]:
    """The finding's key in lines of at most ``width`` characters: ``probe/metric`` then the
    slice's ``key=value`` parts; a probe or metric name too long for a line is folded, a slice
    part abbreviated with ``…``."""
    f = c.after or c.before
    assert f is not None  # a change has at least one side (compare_findings checks)
    parts = [f"{f.probe}/", f.metric]
    slice_parts = [f"{k}={v}" for k, v in sorted(f.slice.items())]
    if slice_parts:
        slice_parts[0] = "[" + slice_parts[0]
        slice_parts = [p + "," for p in slice_parts[:-1]] + [slice_parts[-1] + "]"]
    if c.variant is not None:
        slice_parts.append(f"· variant {c.variant}")
    lines: list[str] = []
    line = ""
    joined = 2 + bool(f.slice)  # probe, metric and the slice's first part run together
    for i, part in enumerate(parts + slice_parts):
        sep = "" if i < joined or not line else " "
        if len(line) + len(sep) + len(part) <= width:
            line += sep + part
            continue
        if line:
            lines.append(line)
        if len(part) <= width:
            line = part
        elif i < 2:  # the probe and the metric are folded, never cut: they name the finding
            chunks = [part[j:j + width] for j in range(0, len(part), width)]
            lines.extend(chunks[:-1])
            line = chunks[-1]
        else:  # a slice part too long for the column: abbreviated
            line = part[: max(1, width - 1)] + "…"
    if line:
        lines.append(line)
    return lines


def _narrow_cells(c: FindingChange) -> tuple[str, str, str, str]:
    """Before, after, change (absolute and relative) and direction (with the interval verdict),
    each on at most two short lines."""
    def side(f: Finding | None) -> str:
        if f is None:
            return "—"
        if f.ci is None:
            return format_value(f)
        return f"{format_value(f)}\n[{format_number(f.ci.low, digits=3)}, {format_number(f.ci.high, digits=3)}]"

    _, _, delta, relative, _ = _cells(c)
    change = delta if relative == "—" else f"{delta}\n{relative}"
    verdict = {True: "beyond CIs", False: "within CIs", None: ""}[c.beyond_intervals]
    direction = c.direction if not verdict else f"{c.direction}\n{verdict}"
    return side(c.before), side(c.after), change, direction


def render_diff_table(changes: Sequence[FindingChange], console: Console | None = None) -> None:
    """Print the changes as a rich table, coloured by direction, fitted to the console's width.

    The value columns are as narrow as their contents (a value over its interval, a change
    over its relative change); the Finding column takes the rest, its key broken after the
    probe and between slice parts, and a part too long for it abbreviated with ``…``.

    Args:
        changes: from :func:`diff_reports`.
        console: where to print; a new stdout console when None.

    Example:
        >>> render_diff_table(diff_reports(last_release, candidate))    # doctest: +SKIP
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    rows = [_narrow_cells(c) for c in changes]
    widths = [max([len(h)] + [len(line) for r in rows for line in r[i].splitlines()])
              for i, h in enumerate(_COLUMNS)]
    # SIMPLE_HEAD: a space of padding each side of a cell and one rule character between and
    # around the cells: 3 per column, plus 1 (measured with rich 13/14).
    overhead = 3 * (len(_COLUMNS) + 1) + 1
    finding_w = max(_MIN_FINDING_WIDTH, console.width - overhead - sum(widths))
    longest = max((len(line) for c in changes for line in _key_lines(c, 10**6)), default=0)
    finding_w = min(finding_w, max(longest, len("Finding")))
    table = Table(title="Changes", title_justify="left", box=box.SIMPLE_HEAD, expand=False)
    table.add_column("Finding", width=finding_w, no_wrap=True, overflow="ellipsis")
    for name, w in zip(_COLUMNS, widths):
        table.add_column(name, width=w, no_wrap=True, overflow="ellipsis",
                         justify="right" if name != "Change" else "left")
    for c, (before, after, delta, direction) in zip(changes, rows):
        style = _DIRECTION_STYLES[c.direction]
        if c.beyond_intervals and c.direction == "worse":
            style = "bold red reverse"
        table.add_row(Text("\n".join(_key_lines(c, finding_w))), Text(before), Text(after), Text(delta),
                      Text(direction, style=style))
    if not changes:
        table.caption = "no findings in either report"
    console.print(table)


def diff_markdown(changes: Sequence[FindingChange]) -> str:
    """The changes as a GitHub-flavoured Markdown table (for a pull-request comment).

    Example:
        >>> from audit.findings import Finding
        >>> print(diff_markdown([compare_findings(None, Finding("p", "acc", 0.9, True))]), end="")
        | Finding | Before | After | Δ | Δ% | Change | Beyond CIs |
        | --- | ---: | ---: | ---: | ---: | --- | --- |
        | `p/acc` | — | 0.9 | — | — | added | — |
    """
    from audit.render.markdown import code_span, escape_cell

    lines = [
        "| Finding | Before | After | Δ | Δ% | Change | Beyond CIs |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for c in changes:
        before, after, delta, relative, beyond = _cells(c)
        change = f"**{c.direction}**" if c.direction == "worse" else c.direction
        lines.append(
            f"| {code_span(c.label)} | {escape_cell(before)} | {escape_cell(after)} | {delta} | {relative} "
            f"| {change} | {beyond} |"
        )
    return "\n".join(lines) + "\n"


# -- side by side: A as the base, B as the other (audit.variant_view) ----------------------


def diff_views_markdown(a: AuditReport, b: AuditReport) -> str:
    """Markdown of A (base) against B with unpaired deltas, variant by variant, and the
    quality-versus-cost points of both runs."""
    from audit.render.markdown import quality_cost_markdown, variants_markdown
    from audit.variant_view import diff_quality_cost, diff_side_by_side

    lines = [*variants_markdown(diff_side_by_side(a, b)), *quality_cost_markdown(diff_quality_cost(a, b))]
    return "\n".join(lines).lstrip("\n") + "\n"


def render_diff_views(a: AuditReport, b: AuditReport, console: Console | None = None) -> None:
    """Print A (base) against B as compact tables (one per variant both runs have) and the
    quality-versus-cost points."""
    from rich.console import Console

    from audit.render.terminal import pareto_table, variants_table
    from audit.variant_view import diff_quality_cost, diff_side_by_side

    console = console or Console()
    for view in diff_side_by_side(a, b):
        console.print(variants_table(view))
    qc = diff_quality_cost(a, b)
    if qc is not None:
        console.print(pareto_table(qc))


def write_diff_html(a: AuditReport, b: AuditReport, path: str | os.PathLike[str]) -> Path:
    """Write the side-by-side views and the quality-versus-cost chart of A and B as one page."""
    from audit.findings import atomic_write_text
    from audit.render.variants import diff_html
    from audit.variant_view import diff_side_by_side

    return atomic_write_text(path, diff_html(a, b, diff_side_by_side(a, b)))
