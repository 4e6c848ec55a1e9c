"""Extra parts of a probe's section in the HTML report: :class:`Section` and the hooks that
make them (:func:`register_section`), e.g. the galleries of :mod:`audit.render.gallery`.
Apart from :mod:`audit.render.html` so that a section provider needs no renderer import."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from markupsafe import Markup

from audit.findings import AuditReport, Finding

__all__ = ["SECTION_HOOKS", "Section", "SectionHook", "register_section"]


@dataclass(frozen=True)
class Section:
    """An extra part of one probe's section: a title and its HTML, inserted as is when it is a
    ``markupsafe.Markup`` (build it with ``Markup(...).format(...)``, which escapes the values),
    escaped like any other text when it is a plain ``str``."""

    title: str
    html: Markup | str


SectionHook = Callable[[str, list[Finding], AuditReport], list[Section]]
SECTION_HOOKS: list[SectionHook] = []


def register_section(hook: SectionHook) -> SectionHook:
    """Add ``hook(probe_id, findings, report) -> list[Section]`` to every probe's section
    (usable as a decorator; registering the same function twice adds it once)."""
    if hook not in SECTION_HOOKS:
        SECTION_HOOKS.append(hook)
    return hook
