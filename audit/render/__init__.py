"""Writers that turn an :class:`~audit.findings.AuditReport` into what people and CI read.

One module per format: :mod:`audit.render.html` (a self-contained page for reviewers),
:mod:`audit.render.markdown` (a pull-request comment), :mod:`audit.render.junit` (per-gate
test results for CI) and :mod:`audit.render.terminal` (the scorecard ``genai-audit run``
prints). :func:`write_reports` writes the files ``genai-audit run --out DIR`` promises.

The renderers are imported on first use (PEP 562), so ``import audit.render`` stays cheap
for the CLI; the display helpers the renderers share live in :mod:`audit.render.format`
(re-exported here), which imports no renderer, so there is no import cycle.

Example:
    >>> from audit.render import write_reports          # doctest: +SKIP
    >>> paths = write_reports(report, "audit-out")      # doctest: +SKIP
    >>> sorted(paths)                                   # doctest: +SKIP
    ['html', 'json', 'junit', 'markdown']
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.findings import AuditReport, atomic_write_text
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

if TYPE_CHECKING:
    from audit.render.html import render_html
    from audit.render.junit import render_junit
    from audit.render.markdown import render_markdown
    from audit.render.terminal import print_scorecard

__all__ = [
    "REPORT_FILES",
    "describe_bound",
    "direction_arrow",
    "findings_by_probe",
    "first_line",
    "format_emissions",
    "format_energy",
    "format_interval",
    "format_number",
    "format_value",
    "gate_label",
    "slice_label",
    "total_joules",
    "print_scorecard",
    "render_html",
    "render_junit",
    "render_markdown",
    "write_reports",
]

REPORT_FILES: Mapping[str, str] = {
    "json": "report.json",
    "html": "report.html",
    "markdown": "report.md",
    "junit": "junit.xml",
}
"""The files :func:`write_reports` writes, by format (the names are part of the CLI contract)."""

_LAZY = {
    "render_html": "audit.render.html",
    "render_markdown": "audit.render.markdown",
    "render_junit": "audit.render.junit",
    "print_scorecard": "audit.render.terminal",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'audit.render' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def write_reports(report: AuditReport, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.html``, ``report.md`` and ``junit.xml`` into ``out_dir``.

    Every file is rendered first and then written atomically, so a reader (the dashboard, a
    CI step) sees either the previous file or the complete new one, and a renderer that
    raises leaves no file of this run half-written.

    Args:
        report: the audit to write.
        out_dir: the folder; created if missing.

    Returns:
        The written paths by format: ``json``, ``html``, ``markdown``, ``junit``.

    Example:
        >>> paths = write_reports(report, tmp_path)              # doctest: +SKIP
        >>> AuditReport.load(paths["json"]) == report            # doctest: +SKIP
        True
    """
    from audit.render.html import render_html
    from audit.render.junit import render_junit
    from audit.render.markdown import render_markdown

    out = Path(out_dir)
    # Render everything before writing anything: a failing renderer must not leave a new
    # report.json next to last run's report.html.
    from audit.render.gallery import images_from

    with images_from(out):  # the probes' thumbnails are embedded from the report's folder
        html = render_html(report)
    texts = {
        "html": html,
        "markdown": render_markdown(report),
        "junit": render_junit(report),
    }
    paths = {"json": report.save(out / REPORT_FILES["json"])}
    for fmt, text in texts.items():
        paths[fmt] = atomic_write_text(out / REPORT_FILES[fmt], text)
    return paths
