"""Deltas of variants' findings against the subject's (``spec.variants``).

A variant's finding is matched with the subject's finding of the same probe, metric and
slice. :func:`attach_deltas` gives each matched variant finding a :class:`Delta`: the
difference, the relative difference, and (where both findings carry :class:`Units`) an
interval from a bootstrap over the units both saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from audit.findings import Delta, Finding

__all__ = ["attach_deltas", "delta_of"]


def delta_of(base: Finding, variant: Finding) -> Delta:
    """``variant`` against ``base`` (the same finding measured on the subject)."""
    diff = variant.value - base.value
    rel = diff / abs(base.value) if math.isfinite(base.value) and base.value != 0 else None
    return Delta(base_value=base.value, value=diff, relative=rel)


def attach_deltas(findings: Sequence[Finding]) -> list[Finding]:
    """``findings`` with a delta on every variant finding that the subject also has."""
    base = {f.key: f for f in findings if f.variant is None}
    out: list[Finding] = []
    for f in findings:
        ref = base.get(f.key) if f.variant is not None else None
        out.append(f if ref is None else replace(f, delta=delta_of(ref, f)))
    return out
