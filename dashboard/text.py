"""Text safety and status display for the dashboard (no Streamlit).

Report text reaches a page only escaped (:func:`md_escape`) or through elements that show
text as text. Audit statuses are styled from one table, :data:`STATUS_STYLES`, with a default
for a status this dashboard does not know (a report of a newer genai-audit), so that every
status renders and every count adds up.

Example:
    >>> status_style("invalid").colour, status_style("quarantined").known
    ('violet', False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["OTHER", "STATUSES", "STATUS_STYLES", "StatusStyle", "clean_text", "md_escape", "status_markup", "status_style"]

STATUSES = ("passed", "failed", "invalid", "crashed")
"""Audit statuses, as :attr:`AuditReport.status` gives them (the order of their exit codes)."""

OTHER = "other"
"""The filter and count of every status not in :data:`STATUSES`."""


@dataclass(frozen=True, slots=True)
class StatusStyle:
    """How a status shows: Streamlit colour name, Material icon, banner kind and whether known."""

    colour: str
    icon: str
    banner: str  # success | error | warning | info
    known: bool = True


STATUS_STYLES = {
    "passed": StatusStyle("green", ":material/check_circle:", "success"),
    "failed": StatusStyle("red", ":material/cancel:", "error"),
    "invalid": StatusStyle("violet", ":material/report:", "warning"),
    "crashed": StatusStyle("orange", ":material/error:", "warning"),
}
_UNKNOWN = StatusStyle("gray", ":material/help:", "info", known=False)


def status_style(status: str) -> StatusStyle:
    """The style of ``status``; a status this dashboard does not know gets a grey default."""
    return STATUS_STYLES.get(status, _UNKNOWN)


def status_markup(status: str) -> str:
    """``status`` coloured in Streamlit markup; an unknown status is escaped first."""
    return f":{status_style(status).colour}[{md_escape(status)}]"


# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping all of
# them also defuses Streamlit's own markup (``:red[...]``, ``:material/x:``, ``$math$``).
_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")
# ANSI colour codes (tracebacks captured from a terminal) and other control characters.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def md_escape(text: object) -> str:
    """``text`` for a Markdown string: every punctuation character backslash-escaped and line
    breaks flattened, so report text shows literally and never becomes markup, a link or HTML.

    Example:
        >>> md_escape("<b>x</b> :red[y]")
        '\\\\<b\\\\>x\\\\<\\\\/b\\\\> \\\\:red\\\\[y\\\\]'
    """
    flat = " ".join(clean_text(text).split())
    return _MD_SPECIAL.sub(r"\\\1", flat)


def clean_text(text: object) -> str:
    """``text`` without ANSI escape sequences and control characters (tabs and newlines kept).

    Example:
        >>> clean_text("\\x1b[31mred\\x1b[0m\\x07")
        'red'
    """
    return _CONTROL.sub("", _ANSI.sub("", str(text)))
