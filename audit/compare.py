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
from collections.abc import Sequence
from dataclasses import dataclass
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
    "intervals_overlap",
    "render_diff_table",
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
    """

    key: str
    before: Finding | None
    after: Finding | None
    delta: float | None
    relative: float | None
    direction: Direction
    beyond_intervals: bool | None


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
        finding is used, as :meth:`AuditReport.finding` does.

    Example:
        >>> changes = diff_reports(last_release, candidate)              # doctest: +SKIP
        >>> [c.key for c in changes if c.direction == "worse" and c.beyond_intervals]  # doctest: +SKIP
        ['bias.toxicity/toxicity_rate[group=nonbinary]']
    """
    before = _by_key(a.findings)
    after = _by_key(b.findings)
    keys = list(after) + [k for k in before if k not in after]
    return [compare_findings(before.get(k), after.get(k)) for k in keys]


def _by_key(findings: Sequence[Finding]) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    for f in findings:
        out.setdefault(f.key, f)
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


def render_diff_table(changes: Sequence[FindingChange], console: Console | None = None) -> None:
    """Print the changes as a rich table, coloured by direction.

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
    table = Table(title="Changes", title_justify="left", box=box.SIMPLE_HEAD, expand=True)
    table.add_column("Finding", overflow="fold", ratio=1)
    table.add_column("Before", justify="right")
    table.add_column("After", justify="right")
    table.add_column("Δ", justify="right", no_wrap=True)
    table.add_column("Δ%", justify="right", no_wrap=True)
    table.add_column("Change", no_wrap=True)
    table.add_column("Beyond CIs", no_wrap=True)
    for c in changes:
        before, after, delta, relative, beyond = _cells(c)
        style = _DIRECTION_STYLES[c.direction]
        table.add_row(
            Text(c.key),
            Text(before),
            Text(after),
            Text(delta),
            Text(relative),
            Text(c.direction, style=style),
            Text(beyond, style="bold" if c.beyond_intervals else "dim"),
        )
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
            f"| {code_span(c.key)} | {escape_cell(before)} | {escape_cell(after)} | {delta} | {relative} "
            f"| {change} | {beyond} |"
        )
    return "\n".join(lines) + "\n"
