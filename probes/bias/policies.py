"""Threshold policies: named bounds on gap metrics (the four-fifths rule is one, labelled as the
legal heuristic it is), a team's own policies from a spec, and whether a gap meets one.

Example:
    >>> POLICIES["four_fifths"].describe()
    'demographic_parity_ratio >= 0.8'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from audit.errors import SpecError
from audit.findings import Interval

__all__ = ["POLICIES", "ThresholdPolicy", "evaluate_policy", "policy_from_dict"]


@dataclass(frozen=True)
class ThresholdPolicy:
    """A named bound on a gap metric, e.g. ``demographic_parity_ratio >= 0.8``.

    ``kind`` says what the bound is: ``legal-heuristic`` (a rule of thumb from a legal
    context, such as the four-fifths rule; meeting it is not a finding of fairness, failing
    it is not a finding of discrimination), or ``policy`` (a threshold a team chose).
    """

    name: str
    metric: str
    min: float | None = None
    max: float | None = None
    kind: Literal["legal-heuristic", "policy"] = "policy"
    note: str = ""

    def __post_init__(self) -> None:
        if (self.min is None) == (self.max is None):
            raise SpecError(f"threshold policy '{self.name}': give exactly one of min or max "
                            f"(got min={self.min!r}, max={self.max!r})")

    def describe(self) -> str:
        bound = f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"
        return f"{self.metric} {bound}"


_FOUR_FIFTHS_NOTE = (
    "The four-fifths rule (US EEOC Uniform Guidelines on Employee Selection Procedures, "
    "29 CFR 1607.4(D)) is a legal rule of thumb for flagging possible adverse impact in "
    "selection rates. It is a heuristic, not a verdict: meeting it does not show a model is "
    "fair, failing it does not show discrimination; it ignores sampling error, base rates "
    "and error-rate disparities, and it has legal meaning only in the contexts it was written for."
)

POLICIES: dict[str, ThresholdPolicy] = {p.name: p for p in (
    ThresholdPolicy("four_fifths", "demographic_parity_ratio", min=0.8, kind="legal-heuristic",
                    note=_FOUR_FIFTHS_NOTE),
    ThresholdPolicy("demographic_parity_0.1", "demographic_parity_difference", max=0.1,
                    note="selection rates of all groups within 10 percentage points (a common policy choice)"),
    ThresholdPolicy("equalized_odds_0.1", "equalized_odds_difference", max=0.1,
                    note="TPR and FPR of all groups within 10 percentage points (a common policy choice)"),
)}
"""Named threshold policies; specs add their own with :func:`policy_from_dict`."""


def policy_from_dict(name: str, d: Mapping[str, Any]) -> ThresholdPolicy:
    """A policy from a spec mapping ``{metric, min|max, note?}`` (a team's own threshold).

    Example:
        >>> policy_from_dict("strict", {"metric": "demographic_parity_difference", "max": 0.05}).describe()
        'demographic_parity_difference <= 0.05'
    """
    if not isinstance(d, Mapping):
        raise SpecError(f"threshold policy '{name}': expected a mapping with metric and min or max, got {d!r}")
    unknown = set(d) - {"metric", "min", "max", "note"}
    if unknown:
        raise SpecError(f"threshold policy '{name}': unknown keys {sorted(unknown)}; expected metric, min|max, note")
    if not isinstance(d.get("metric"), str):
        raise SpecError(f"threshold policy '{name}': 'metric' must name a gap metric, "
                        f"e.g. demographic_parity_difference, got {d.get('metric')!r}")
    for key in ("min", "max"):
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SpecError(f"threshold policy '{name}': {key} must be a number, got {v!r}")
    return ThresholdPolicy(name, d["metric"], min=d.get("min"), max=d.get("max"), kind="policy",
                           note=str(d.get("note", "")))


def evaluate_policy(policy: ThresholdPolicy, value: float, ci: Interval | None) -> dict[str, Any]:
    """Whether ``value`` meets ``policy``, and whether its interval is clear of the bound.

    Returns ``{"met": bool | None, "confidence": "met" | "not met" | "inconclusive" | "unknown", ...}``
    where ``confidence`` compares the whole interval with the bound.

    Example:
        >>> evaluate_policy(POLICIES["four_fifths"], 0.85, Interval(0.75, 0.95, "x"))["confidence"]
        'inconclusive'
    """
    if not math.isfinite(value):
        return {"met": None, "confidence": "unknown", "bound": policy.describe()}
    ok = (lambda v: v >= policy.min) if policy.min is not None else (lambda v: v <= policy.max)
    met = bool(ok(value))
    confidence = "unknown"
    if ci is not None:
        lo_ok, hi_ok = ok(ci.low), ok(ci.high)
        confidence = "met" if lo_ok and hi_ok else "not met" if not lo_ok and not hi_ok else "inconclusive"
    return {"met": met, "confidence": confidence, "bound": policy.describe()}

