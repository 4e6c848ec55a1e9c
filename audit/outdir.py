"""The output folder of a run: the reports of an earlier run there are set aside at the start.

A run writes ``report.json`` (and html, md, junit.xml, samples.parquet) only at its end. If it is killed, the
folder would still hold the *previous* run's reports, which a CI step or a person would then
take for this run's. So, before the first probe runs, :func:`set_aside_previous` moves them to
``OUT/.previous/`` (replacing what an older run left there) together with ``STALE.txt`` saying
why; :func:`drop_previous` removes that folder once the new reports are written.

With ``--resume`` the same holds: the reports in ``OUT`` (if any) are from a finished earlier
run, never from the unfinished one being resumed (its finished probes live in ``.partial/``),
so they are set aside too, and the resumed run writes its own at the end.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> _ = (out / "report.json").write_text("{}")
    >>> set_aside_previous(out).name, (out / "report.json").exists()
    ('.previous', False)
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

__all__ = ["PREVIOUS_DIR", "REPORT_NAMES", "drop_previous", "set_aside_previous"]

log = logging.getLogger("genai_audit")

PREVIOUS_DIR = ".previous"
#: The files a run (or the demo, for MODEL_CARD.md) writes into its output folder at its end
#: (audit.render.write_reports, audit.samples).
REPORT_NAMES = ("report.json", "report.html", "report.md", "junit.xml", "samples.parquet", "MODEL_CARD.md")


def set_aside_previous(out: Path) -> Path | None:
    """Move an earlier run's reports from ``out`` to ``out/.previous``; return that folder,
    or None when there were none."""
    found = [out / n for n in REPORT_NAMES if (out / n).is_file()]
    if not found:
        return None
    target = out / PREVIOUS_DIR
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for f in found:
        os.replace(f, target / f.name)  # same folder tree: atomic, never a half-moved report
    (target / "STALE.txt").write_text(
        "These reports are from an earlier run into this folder. They were moved here when a new run\n"
        "started, so that a run that is interrupted never leaves them looking like its own.\n",
        encoding="utf-8")
    log.info("moved the reports of the earlier run in %s to %s", out, target)
    return target


def drop_previous(out: Path) -> None:
    """Remove ``out/.previous`` (the new reports are written)."""
    shutil.rmtree(out / PREVIOUS_DIR, ignore_errors=True)
